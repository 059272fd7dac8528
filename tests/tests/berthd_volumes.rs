//! Image volumes (a CRI mount naming an image): the image's files appear read-only and
//! executable at the mount's container path, a writable request is refused, an unknown
//! image is NotFound, removing the image leaves the mount alone, and nothing stays mounted
//! once the container is gone. An `image_sub_path` mounts only that part of the image (a
//! missing or escaping one is InvalidArgument with nothing left mounted), and the status
//! reports the image's digest (`ImageSpec.image_ref`).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::pod::Pod;
use berth_tests::{image, leaks};

const VOLUME_IMAGE: &str = "berth.test/volume:1";

fn image_mount(image: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: "/mnt/img".into(),
        readonly,
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn an_image_volume_is_mounted_read_only_and_goes_with_its_container() -> Result<()> {
    let d = Berthd::builder()
        .busybox()
        .image(|dir| {
            let cfg = serde_json::json!({"Cmd": ["sh"], "Labels": {"volume": "yes"}});
            image::busybox_with(dir, VOLUME_IMAGE, cfg)
        })
        .start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, is) = d.client().await?;
        let pod = Pod::run(&d, pod_config("vol", &logs.join("vol"))).await?;
        let script = "ls /mnt/img/bin/busybox && echo listed; \
            touch /mnt/img/x 2>/dev/null; echo write=$?; \
            /mnt/img/bin/busybox true && echo exec-ok";
        let mut c = container_config("reader", image::BUSYBOX_IMAGE, &["sh", "-c", script]);
        c.mounts = vec![image_mount(VOLUME_IMAGE, true)];
        let e = pod.run_to_exit(c).await?;
        ensure!(
            e.stdout.contains("listed\n"),
            "image files not visible:\n{e:?}"
        );
        ensure!(
            e.stdout.contains("write=1\n"),
            "image volume writable:\n{e:?}"
        );
        ensure!(
            e.stdout.contains("exec-ok\n"),
            "image volume not executable:\n{e:?}"
        );
        // The status reports the mount as asked for (with its image).
        let m = e
            .status
            .mounts
            .iter()
            .find(|m| m.container_path == "/mnt/img");
        ensure!(
            m.and_then(|m| m.image.as_ref())
                .is_some_and(|i| i.image == VOLUME_IMAGE),
            "status mounts {:?}",
            e.status.mounts
        );
        ensure!(
            !leaks::mounts_under(d.dir.path()).is_empty(),
            "the image volume is not mounted while its container exists"
        );
        // Removing the image while it is mounted untags it; the mount is unaffected.
        is.clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: VOLUME_IMAGE.into(),
                    ..Default::default()
                }),
            })
            .await?;
        let again = pod
            .run_to_exit({
                let mut c = container_config("again", image::BUSYBOX_IMAGE, &["true"]);
                c.mounts = vec![image_mount(VOLUME_IMAGE, true)];
                c
            })
            .await
            .err()
            .context("a removed image mounted again")?;
        ensure!(again.to_string().contains("not found"), "{again:#}");

        let mut c = container_config("writer", image::BUSYBOX_IMAGE, &["true"]);
        c.mounts = vec![image_mount(VOLUME_IMAGE, false)];
        let err = pod
            .create(c)
            .await
            .err()
            .context("a writable image volume")?;
        ensure!(err.code() == tonic::Code::InvalidArgument, "{err}");
        let mut c = container_config("unknown", image::BUSYBOX_IMAGE, &["true"]);
        c.mounts = vec![image_mount("berth.test/absent:1", true)];
        let err = pod
            .create(c)
            .await
            .err()
            .context("an unknown image volume")?;
        ensure!(err.code() == tonic::Code::NotFound, "{err}");

        let mut rs2 = rs.clone();
        rs2.remove_container(cri::RemoveContainerRequest {
            container_id: e.id.clone(),
        })
        .await?;
        // Only the pod's own mounts remain (none under the containers' bundles).
        let left: Vec<_> = leaks::mounts_under(d.dir.path())
            .into_iter()
            .filter(|m| m.to_string_lossy().contains("imagevol"))
            .collect();
        ensure!(left.is_empty(), "image volume mounts left: {left:?}");
        pod.remove().await
    })??;
    d.finish()
}

#[test]
fn an_image_sub_path_mounts_only_that_directory_and_the_status_has_the_image_digest() -> Result<()>
{
    let d = Berthd::builder()
        .busybox()
        .image(|dir| {
            let cfg = serde_json::json!({"Cmd": ["sh"], "Labels": {"volume": "sub"}});
            image::busybox_with(dir, VOLUME_IMAGE, cfg)
        })
        .start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, is) = d.client().await?;
        let id = is
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: VOLUME_IMAGE.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner()
            .image
            .context("volume image not found")?
            .id;
        let pod = Pod::run(&d, pod_config("sub", &logs.join("sub"))).await?;
        let script = "/mnt/img/busybox true && echo busybox-at-root; \
            ls /mnt/img/bin >/dev/null 2>&1; echo bin=$?";
        let mut c = container_config("sub", image::BUSYBOX_IMAGE, &["sh", "-c", script]);
        let mut m = image_mount(VOLUME_IMAGE, true);
        m.image_sub_path = "bin".into();
        c.mounts = vec![m];
        let e = pod.run_to_exit(c).await?;
        ensure!(
            e.stdout.contains("busybox-at-root\n") && e.stdout.contains("bin=1\n"),
            "the sub path is not what is mounted:\n{e:?}"
        );
        let m = e
            .status
            .mounts
            .iter()
            .find(|m| m.container_path == "/mnt/img")
            .context("no image volume in the status")?;
        ensure!(m.image_sub_path == "bin", "status mount {m:?}");
        ensure!(
            m.image.as_ref().is_some_and(|i| i.image_ref == id),
            "status mount {m:?} lacks the image digest {id}"
        );
        for (sub, why) in [
            ("not-existing", "no such file"),
            ("../etc", "relative"),
            ("/etc", "relative"),
        ] {
            let mut c = container_config("bad", image::BUSYBOX_IMAGE, &["true"]);
            let mut m = image_mount(VOLUME_IMAGE, true);
            m.image_sub_path = sub.into();
            c.mounts = vec![m];
            let err = pod.create(c).await.err().context(sub.to_string())?;
            ensure!(
                err.code() == tonic::Code::InvalidArgument && err.message().contains(why),
                "{sub}: {err}"
            );
        }
        // Nothing of the refused creates is left: no container, no image volume mount.
        let listed = rs
            .clone()
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        ensure!(listed.len() == 1, "containers left: {listed:?}");
        let left: Vec<_> = leaks::mounts_under(d.dir.path())
            .into_iter()
            .filter(|m| {
                let m = m.to_string_lossy();
                m.contains("imagevol") && !m.contains(&e.id)
            })
            .collect();
        ensure!(left.is_empty(), "image volume mounts left: {left:?}");
        pod.remove().await
    })??;
    d.finish()
}
