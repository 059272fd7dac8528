//! RemoveImage: by each of an image's names (content gone, re-pull works), of an image a
//! container uses (untagged, its layers kept until the container goes), and the
//! ImageFsInfo figures growing with a pull and shrinking after removal.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::cri_images::{content_files, fs_info, list, pull_ok, remove, status};
use berth_tests::image::{self};
use berth_tests::pod::Pod;
use berth_tests::registry::Registry;

#[test]
fn a_removed_image_is_gone_and_can_be_pulled_again() -> Result<()> {
    let (reg, img) = Registry::with_busybox("again/busybox:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let root = d.dir.path().join("root");
        let (_, is) = d.client().await?;
        let name = reg.image("again/busybox:1");
        let by_digest = format!("{}/again/busybox@{}", reg.host(), img.digest);
        let id = pull_ok(d, &is, &name, None).await?;
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
            ensure!(pull_ok(d, &is, &name, None).await? == id);
            let st = status(&is, &name)
                .await?
                .context("re-pulled image missing")?;
            ensure!(st.repo_tags == [name.as_str()] && st.repo_digests == [by_digest.as_str()]);
        }
        Ok(())
    })
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
    let (reg, _) = Registry::with_busybox("inuse/busybox:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, is) = d.client().await?;
        let name = reg.image("inuse/busybox:1");
        pull_ok(d, &is, &name, None).await?;
        let pod = Pod::run(d, pod_config("inuse", &logs)).await?;
        let cid = pod
            .start(container_config("c", &name, &["sleep", "1000"]))
            .await?;
        let layers = snapshot_dirs(d);
        ensure!(layers.len() == 1, "snapshots before: {layers:?}");
        // As containerd: the image goes (by name here), the container keeps running.
        remove(&is, &name).await?;
        ensure!(status(&is, &name).await?.is_none() && list(&is).await?.is_empty());
        ensure!(
            content_files(d.dir.path(), "blobs/sha256").is_empty(),
            "the removed image's content stayed"
        );
        ensure!(
            snapshot_dirs(d) == layers,
            "the container's layers were freed under it"
        );
        // The container is unaffected and can still exec from its rootfs.
        let out = rs.exec_sync_of(&cid, &["cat", "/etc/passwd"], 10).await?;
        ensure!(out.exit_code == 0 && String::from_utf8_lossy(&out.stdout).contains("root:"));
        // Once the container is removed its layers go too.
        pod.remove().await?;
        let left = snapshot_dirs(d);
        ensure!(
            left.is_empty(),
            "snapshots left after the container: {left:?}"
        );
        // And the image can be pulled again.
        pull_ok(d, &is, &name, None).await?;
        Ok(())
    })
}

#[test]
fn image_fs_info_grows_with_a_pull_and_shrinks_after_removal() -> Result<()> {
    let (reg, img) = Registry::with_busybox("fs/busybox:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let name = reg.image("fs/busybox:1");
        let (b0, i0) = fs_info(&is).await?;
        pull_ok(d, &is, &name, None).await?;
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
    })
}
