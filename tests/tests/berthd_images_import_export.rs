//! Images off the network: `berthd image import` of an image a pull then shares (one
//! copy of its content), and `berthd image export` on one node imported and run on another.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::cri_images::{content_files, list, pull_ok, remove, status};
use berth_tests::image::{self};
use berth_tests::pod::Pod;
use berth_tests::registry::Registry;

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
    let (reg, _img) = Registry::with_busybox("export/busybox:1")?;
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
