//! PullImage against a real registry (Debian's docker-registry on 127.0.0.1, one per test)
//! and what kubelet sees of the pulled images through the CRI ImageService: by tag and by
//! digest, credentials, mirrors, concurrent pulls, removal and re-pull, images in use,
//! ImageFsInfo figures, content shared with `berthd image import`, and the errors of pulls
//! that cannot succeed.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::image::{self, busybox_layout, ImageDef, LayerCompression, LayerTar};
use berth_tests::pod::Pod;
use berth_tests::registry::{
    basic_auth, content_files, fs_info, list, pull_err, pull_ok, remove, status, DeadPort, Registry,
};
use k8s_cri::v1 as cri;
use serde_json::json;
use tonic::Code;

fn creds(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    })
}

#[test]
fn pull_by_tag_and_by_digest_records_the_tag_the_repo_digest_and_the_config_id() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    let pushed = reg.push(&img.path, "library/busybox:1")?;
    ensure!(
        pushed == img.digest,
        "skopeo pushed {pushed}, built {}",
        img.digest
    );
    let d = Berthd::builder().start()?;
    block_on(async {
        let (_, is) = d.client().await?;
        let tag = reg.image("library/busybox:1");
        let by_digest = format!("{}/library/busybox@{}", reg.host(), img.digest);

        // By digest first: the image has the repo digest and no tag.
        let id = pull_ok(&d, &is, &by_digest, None).await?;
        ensure!(
            id == img.host().config,
            "image ref {id}, config {}",
            img.host().config
        );
        let st = status(&is, &by_digest)
            .await?
            .context("ImageStatus of the pulled digest is empty")?;
        ensure!(st.id == id, "status id {}", st.id);
        ensure!(
            st.repo_digests == [by_digest.as_str()],
            "{:?}",
            st.repo_digests
        );
        ensure!(
            st.repo_tags.is_empty(),
            "tags after a digest pull: {:?}",
            st.repo_tags
        );
        ensure!(
            status(&is, &tag).await?.is_none(),
            "the tag is known before it was pulled"
        );

        // Then by tag: the same image gains the tag, one image in all.
        ensure!(pull_ok(&d, &is, &tag, None).await? == id);
        let st = status(&is, &tag)
            .await?
            .context("ImageStatus of the tag is empty")?;
        ensure!(st.id == id && st.repo_tags == [tag.as_str()], "{st:?}");
        ensure!(
            st.repo_digests == [by_digest.as_str()],
            "{:?}",
            st.repo_digests
        );
        let layer = img.host().layer_sizes[0];
        ensure!(st.size >= layer, "size {} < the layer's {layer}", st.size);
        let all = list(&is).await?;
        ensure!(all.len() == 1 && all[0].id == id, "ListImages: {all:?}");
        ensure!(all[0].repo_tags == [tag.as_str()] && all[0].repo_digests == [by_digest.as_str()]);
        // Found by id, id prefix and by the digest too.
        for r in [&id, &id[7..19].to_string(), &by_digest] {
            let st = status(&is, r)
                .await?
                .with_context(|| format!("ImageStatus {r}"))?;
            ensure!(st.id == id);
        }

        // The tag moves to a new image pushed under it; the old image keeps its digest.
        let v2 = busybox_layout(reg.dir.path(), "busybox-v2", json!({"Env": ["V=2"]}))?;
        reg.push(&v2.path, "library/busybox:1")?;
        let id2 = pull_ok(&d, &is, &tag, None).await?;
        ensure!(
            id2 == v2.host().config && id2 != id,
            "re-pulled tag gave {id2}"
        );
        let st = status(&is, &tag).await?.context("tag gone")?;
        ensure!(st.id == id2, "the tag still names {}", st.id);
        let old = status(&is, &id).await?.context("old image gone")?;
        ensure!(
            old.repo_tags.is_empty(),
            "old image keeps {:?}",
            old.repo_tags
        );
        ensure!(list(&is).await?.len() == 2);
        Ok(())
    })??;
    d.finish()
}

#[test]
fn credentials_open_a_private_registry_and_missing_or_wrong_ones_are_unauthenticated() -> Result<()>
{
    let reg = Registry::with_auth("berth", "s3cret-pw")?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "private/busybox:1")?;
    let d = Berthd::builder().start()?;
    block_on(async {
        let (_, is) = d.client().await?;
        let name = reg.image("private/busybox:1");
        let refused = |s: &tonic::Status, what: &str| -> Result<()> {
            ensure!(
                s.code() == Code::Unauthenticated,
                "{what}: {:?} {}",
                s.code(),
                s.message()
            );
            ensure!(
                s.message().contains("authentication failed") && s.message().contains(&reg.host()),
                "{what}: the message does not say which registry refused: {}",
                s.message()
            );
            Ok(())
        };
        refused(&pull_err(&is, &name, None).await?, "no credentials")?;
        refused(
            &pull_err(&is, &name, creds("berth", "wrong")).await?,
            "wrong password",
        )?;
        refused(
            &pull_err(&is, &name, creds("nobody", "s3cret-pw")).await?,
            "unknown user",
        )?;
        ensure!(list(&is).await?.is_empty(), "a refused pull left an image");

        let id = pull_ok(&d, &is, &name, creds("berth", "s3cret-pw")).await?;
        ensure!(id == img.host().config);
        let st = status(&is, &name).await?.context("no status")?;
        ensure!(st.repo_tags == [name.as_str()]);

        // Each pull is judged by its own credentials: after the image is removed,
        // an anonymous or a wrong pull is refused again...
        remove(&is, &name).await?;
        let anonymous = pull_err(&is, &name, None).await.with_context(|| {
            format!(
                "an anonymous pull reused the credentials of an earlier pull; registry log:\n{}",
                reg.berth_log()
            )
        })?;
        refused(&anonymous, "no credentials after an authenticated pull")?;
        refused(
            &pull_err(&is, &name, creds("berth", "wrong")).await?,
            "wrong password after an authenticated pull",
        )?;
        // ...and the base64 `auth` field works as username/password do.
        let auth = Some(cri::AuthConfig {
            auth: basic_auth("berth", "s3cret-pw"),
            ..Default::default()
        });
        ensure!(pull_ok(&d, &is, &name, auth).await? == id);
        ensure!(
            !d.log().contains("s3cret-pw"),
            "berthd logged the password:\n{}",
            d.log()
        );
        Ok(())
    })??;
    d.finish()
}

#[test]
fn a_mirror_serves_its_registry_with_the_repository_path_kept() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "team/tools/busybox:1")?;
    // A mirror that is down comes first: the next one is tried.
    let dead = DeadPort::new()?;
    let d = Berthd::configure(&format!(
        "[registry.mirrors]\n\"mirror.berth.test\" = [\"http://127.0.0.1:{}\", \"http://{}\"]\n",
        dead.port,
        reg.host()
    ))?
    .start()?;
    block_on(async {
        let (_, is) = d.client().await?;
        let name = "mirror.berth.test/team/tools/busybox:1";
        let id = pull_ok(&d, &is, name, None).await?;
        ensure!(id == img.host().config);
        let st = status(&is, name).await?.context("no status")?;
        ensure!(st.repo_tags == [name], "tags {:?}", st.repo_tags);
        ensure!(
            st.repo_digests
                == [format!(
                    "mirror.berth.test/team/tools/busybox@{}",
                    img.digest
                )],
            "digests {:?}",
            st.repo_digests
        );
        ensure!(
            reg.requests("GET", "/v2/team/tools/busybox/manifests/1", 200) == 1,
            "the mirror was not asked for the same repository path:\n{}",
            reg.log()
        );
        // An image the mirror does not have is NotFound (the mirror's answer wins over the
        // unresolvable registry host behind it).
        let e = pull_err(&is, "mirror.berth.test/team/tools/missing:1", None).await?;
        ensure!(e.code() == Code::NotFound, "{:?} {}", e.code(), e.message());

        // A container runs from the mirrored image under its registry name.
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(&d, pod_config("mirror", &logs)).await?;
        let out = pod
            .run_to_exit(container_config("c", name, &["echo", "mirrored"]))
            .await?;
        ensure!(out.stdout == "mirrored\n", "{out:?}");
        pod.remove().await
    })??;
    d.finish()
}

#[test]
fn concurrent_pulls_of_one_image_fetch_each_blob_once_and_yield_one_image() -> Result<()> {
    let reg = Registry::start()?;
    // A second layer of 8 MiB keeps the pulls in flight together.
    let mut big = LayerTar::new();
    big.file("big.bin", 0o644, &image::random_bytes(8 << 20, 7))?;
    let img = image::layout(
        reg.dir.path(),
        "two-layers",
        "1",
        &[ImageDef::new(
            json!({"Cmd": ["sh"], "Env": [image::PATH]}),
            vec![image::busybox_layer()?, big.finish()?],
        )],
        LayerCompression::GzipStored,
    )?;
    reg.push(&img.path, "conc/image:1")?;
    let d = Berthd::builder().start()?;
    block_on(async {
        let (_, is) = d.client().await?;
        let name = reg.image("conc/image:1");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let is = is.clone();
                let name = name.clone();
                tokio::spawn(async move { berth_tests::registry::pull(&is, &name, None).await })
            })
            .collect();
        for t in tasks {
            let id = t.await?.map_err(|s| {
                anyhow::anyhow!("{:?} {}\nberthd log:\n{}", s.code(), s.message(), d.log())
            })?;
            ensure!(id == img.host().config, "a pull returned {id}");
        }
        let all = list(&is).await?;
        ensure!(all.len() == 1, "ListImages: {all:?}");
        ensure!(all[0].repo_tags == [name.as_str()]);
        for blob in img.host().layers.iter().chain([&img.host().config]) {
            let n = reg.requests("GET", &format!("/blobs/{blob}"), 200);
            ensure!(n == 1, "blob {blob} was fetched {n} times:\n{}", reg.log());
        }
        Ok(())
    })??;
    d.finish()
}

#[test]
fn a_removed_image_is_gone_and_can_be_pulled_again() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "again/busybox:1")?;
    let d = Berthd::builder().start()?;
    let root = d.dir.path().join("root");
    block_on(async {
        let (_, is) = d.client().await?;
        let name = reg.image("again/busybox:1");
        let by_digest = format!("{}/again/busybox@{}", reg.host(), img.digest);
        let id = pull_ok(&d, &is, &name, None).await?;
        // Removed by each of its names in turn, re-pulled in between.
        for how in [name.clone(), id.clone(), by_digest.clone()] {
            remove(&is, &how)
                .await
                .with_context(|| format!("RemoveImage {how}"))?;
            for r in [&name, &id, &by_digest] {
                ensure!(
                    status(&is, r).await?.is_none(),
                    "ImageStatus {r} after RemoveImage {how}"
                );
            }
            ensure!(
                list(&is).await?.is_empty(),
                "listed after RemoveImage {how}"
            );
            let left = content_files(&root, "blobs/sha256");
            ensure!(
                left.is_empty(),
                "content left after RemoveImage {how}: {left:?}"
            );
            // Removing it again is not an error.
            remove(&is, &how).await?;
            ensure!(pull_ok(&d, &is, &name, None).await? == id);
            let st = status(&is, &name)
                .await?
                .context("re-pulled image missing")?;
            ensure!(st.repo_tags == [name.as_str()] && st.repo_digests == [by_digest.as_str()]);
        }
        Ok(())
    })??;
    d.finish()
}

/// The snapshot directories berthd keeps (one per unpacked layer).
fn snapshot_dirs(d: &Berthd) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(d.dir.path().join("root/snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("fs").is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_image_a_container_uses_is_untagged_and_its_layers_stay_until_the_container_goes() -> Result<()>
{
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "inuse/busybox:1")?;
    let d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, is) = d.client().await?;
        let name = reg.image("inuse/busybox:1");
        pull_ok(&d, &is, &name, None).await?;
        let pod = Pod::run(&d, pod_config("inuse", &logs)).await?;
        let cid = pod
            .start(container_config("c", &name, &["sleep", "1000"]))
            .await?;
        let layers = snapshot_dirs(&d);
        ensure!(layers.len() == 1, "snapshots before: {layers:?}");
        // As containerd: the image goes (by name here), the container keeps running.
        remove(&is, &name).await?;
        ensure!(status(&is, &name).await?.is_none() && list(&is).await?.is_empty());
        ensure!(
            content_files(d.dir.path(), "blobs/sha256").is_empty(),
            "the removed image's content stayed"
        );
        ensure!(
            snapshot_dirs(&d) == layers,
            "the container's layers were freed under it"
        );
        // The container is unaffected and can still exec from its rootfs.
        let out = rs
            .clone()
            .exec_sync(cri::ExecSyncRequest {
                container_id: cid.clone(),
                cmd: vec!["cat".into(), "/etc/passwd".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        ensure!(out.exit_code == 0 && String::from_utf8_lossy(&out.stdout).contains("root:"));
        // Once the container is removed its layers go too.
        pod.remove().await?;
        let left = snapshot_dirs(&d);
        ensure!(
            left.is_empty(),
            "snapshots left after the container: {left:?}"
        );
        // And the image can be pulled again.
        pull_ok(&d, &is, &name, None).await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn image_fs_info_grows_with_a_pull_and_shrinks_after_removal() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "fs/busybox:1")?;
    let d = Berthd::builder().start()?;
    block_on(async {
        let (_, is) = d.client().await?;
        let name = reg.image("fs/busybox:1");
        let (b0, i0) = fs_info(&is).await?;
        pull_ok(&d, &is, &name, None).await?;
        let (b1, i1) = fs_info(&is).await?;
        let layer = img.host().layer_sizes[0];
        let busybox = std::fs::metadata(image::BUSYBOX)?.len();
        // The compressed layer in the content store plus the unpacked busybox binary.
        ensure!(
            b1 >= b0 + layer + busybox,
            "bytes {b0} -> {b1} after pulling a {layer}-byte layer holding a {busybox}-byte file"
        );
        // Manifest, config, layer blobs and the layer's files (busybox, its applet links,
        // /etc files and directories).
        ensure!(i1 >= i0 + 3 + 20, "inodes {i0} -> {i1}");
        remove(&is, &name).await?;
        let (b2, i2) = fs_info(&is).await?;
        ensure!(
            b2 + layer + busybox <= b1,
            "bytes {b1} -> {b2} after removal"
        );
        ensure!(i2 + 3 + 20 <= i1, "inodes {i1} -> {i2} after removal");
        ensure!(
            i2 <= i0 && b2 <= b0 + (64 << 10),
            "before {b0}/{i0}, after removal {b2}/{i2}"
        );
        Ok(())
    })??;
    d.finish()
}

#[test]
fn pulls_that_cannot_succeed_say_why() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "library/busybox:1")?;
    let d = Berthd::builder().start()?;
    block_on(async {
        let (_, is) = d.client().await?;
        let zero = format!("sha256:{}", "0".repeat(64));
        for missing in [
            reg.image("nothing/here:1"),
            reg.image("library/busybox:2"),
            reg.image(&format!("library/busybox@{zero}")),
        ] {
            let e = pull_err(&is, &missing, None).await?;
            ensure!(
                e.code() == Code::NotFound,
                "{missing}: {:?} {}",
                e.code(),
                e.message()
            );
        }
        for bad in [
            String::new(),
            reg.image("Upper/Case:1"),
            reg.image("library/busybox:bad tag"),
            reg.image("library/busybox@sha256:abc"),
            "no//double:1".to_string(),
        ] {
            let e = pull_err(&is, &bad, None).await?;
            ensure!(
                e.code() == Code::InvalidArgument,
                "{bad:?}: {:?} {}",
                e.code(),
                e.message()
            );
        }
        // A registry that is not there is neither of those, and names the host.
        let dead_port = DeadPort::new()?;
        let dead = dead_port.port;
        let e = pull_err(&is, &format!("127.0.0.1:{dead}/x/y:1"), None).await?;
        ensure!(
            !matches!(e.code(), Code::NotFound | Code::InvalidArgument | Code::Ok)
                && e.message().contains(&format!("127.0.0.1:{dead}")),
            "unreachable registry: {:?} {}",
            e.code(),
            e.message()
        );
        ensure!(list(&is).await?.is_empty(), "a failed pull left an image");
        // Status and removal of an unknown image are not errors.
        ensure!(status(&is, &reg.image("nothing/here:1")).await?.is_none());
        remove(&is, &reg.image("nothing/here:1")).await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn an_imported_image_and_a_pull_of_it_share_one_copy_of_its_content() -> Result<()> {
    let reg = Registry::start()?;
    let d = Berthd::configure("")?;
    let tar = image::busybox(d.dir.path())?;
    d.import(&tar)?;
    reg.push(&tar.path, "library/busybox:1")?;
    let m = reg.manifest("library/busybox", "1")?;
    let layer = m["layers"][0]["digest"]
        .as_str()
        .context("no layer in the pushed manifest")?
        .to_string();
    let d = d.start()?;
    let root = d.dir.path().join("root");
    block_on(async {
        let (_, is) = d.client().await?;
        let imported = status(&is, tar.name)
            .await?
            .context("the imported image is not listed")?;
        let before = content_files(&root, "blobs/sha256");
        let name = reg.image("library/busybox:1");
        // The pull finds the layer and config in the content store: nothing is fetched
        // but the manifest, and the pull adds a name to the same image.
        ensure!(pull_ok(&d, &is, &name, None).await? == imported.id);
        for blob in [&layer, &imported.id] {
            let n = reg.requests("GET", &format!("/blobs/{blob}"), 200);
            ensure!(n == 0, "{blob} was fetched {n} times although stored");
        }
        ensure!(content_files(&root, "blobs/sha256") == before);
        let all = list(&is).await?;
        ensure!(all.len() == 1, "ListImages: {all:?}");
        let mut tags = all[0].repo_tags.clone();
        tags.sort();
        let mut want = vec![tar.name.to_string(), name.clone()];
        want.sort();
        ensure!(tags == want, "tags {tags:?}");
        // Untagging one name keeps the image and its content for the other.
        remove(&is, &name).await?;
        let st = status(&is, tar.name).await?.context("imported name lost")?;
        ensure!(st.id == imported.id && st.repo_tags == [tar.name]);
        ensure!(status(&is, &name).await?.is_none());
        ensure!(content_files(&root, "blobs/sha256") == before);
        Ok(())
    })??;
    d.finish()
}

/// The offline path both ways: a pulled image exported with `berthd image export` on one
/// node and imported with `berthd image import` on another runs there, same id and tag.
#[test]
fn an_exported_image_imports_and_runs_on_another_node() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "export/busybox:1")?;
    let name = reg.image("export/busybox:1");
    let mut a = Berthd::builder().start()?;
    let id = block_on(async {
        let (_, is) = a.client().await?;
        pull_ok(&a, &is, &name, None).await
    })??;
    a.stop()?;
    // Outside both nodes' dirs: the first node is gone when the second imports.
    let archive = reg.dir.path().join("exported.tar");
    let cli = |d: &Berthd, args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(berth_tests::berthd::binary()?)
            .arg("--config")
            .arg(&d.config)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "berthd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let printed = cli(
        &a,
        &[
            "image",
            "export",
            "-o",
            &archive.display().to_string(),
            &name,
        ],
    )?;
    ensure!(printed.contains(&id), "export printed {printed:?}");
    let missing = a.dir.path().join("missing.tar");
    ensure!(
        cli(
            &a,
            &[
                "image",
                "export",
                "-o",
                &missing.display().to_string(),
                "nope:1"
            ]
        )
        .is_err()
            && !missing.exists(),
        "exporting an unknown image made a file"
    );
    a.restart()?;
    a.finish()?;

    let b = Berthd::configure("")?;
    let printed = cli(&b, &["image", "import", &archive.display().to_string()])?;
    ensure!(
        printed.contains(&id) && printed.contains(&name),
        "import printed {printed:?}"
    );
    let b = b.start()?;
    let logs = b.dir.path().join("logs");
    block_on(async {
        let (_, is) = b.client().await?;
        let st = status(&is, &name)
            .await?
            .context("imported image not found")?;
        ensure!(st.id == id && st.repo_tags == [name.as_str()], "{st:?}");
        let pod = Pod::run(&b, pod_config("exported", &logs)).await?;
        let e = pod
            .run_to_exit(container_config("c", &name, &["echo", "moved"]))
            .await?;
        ensure!(e.stdout == "moved\n", "{e:?}");
        pod.remove().await
    })??;
    b.finish()
}
