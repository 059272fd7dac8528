//! What berthd makes of pulled image content: a container's root filesystem from a
//! multi-layer image (whiteouts, opaque directories, hard links, symlinks, ownership), the
//! host's manifest out of a multi-platform index, zstd layers, the config's user, a registry
//! serving tampered bytes, and a kill -9 of berthd in the middle of a big pull.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::cri_images::{content_files, list, pull, pull_err, pull_ok, status};
use berth_tests::image::{self, busybox_layout, host_arch, ImageDef, LayerCompression, LayerTar};
use berth_tests::pod::{self, Pod};
use berth_tests::procs;
use berth_tests::registry::Registry;
use berth_tests::slow_proxy::SlowProxy;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;

fn sh(name: &str, image: &str, script: &str) -> berth_cri::v1::ContainerConfig {
    container_config(name, image, &["sh", "-c", script])
}

/// Runs `script` in a container of `image` in a fresh pod; its stdout.
async fn run_in(d: &Berthd, image: &str, script: &str) -> Result<String> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let (rs, _) = d.client().await?;
    let logs = d.dir.path().join(format!("logs-{n}"));
    let r: Result<String> = async {
        let pod = Pod::run(d, pod_config(&format!("img-{n}"), &logs)).await?;
        let out = pod.run_to_exit(sh("c", image, script)).await?;
        ensure!(
            out.status.exit_code == 0,
            "{script}: exit {}\nstdout: {}\nstderr: {}",
            out.status.exit_code,
            out.stdout,
            out.stderr
        );
        pod.remove().await?;
        Ok(out.stdout)
    }
    .await;
    pod::remove_all(&rs).await?;
    r
}

/// Every blob in berthd's content store hashes to its name.
fn blobs_verify(root: &Path) -> Result<()> {
    for (hex, _) in content_files(root, "blobs/sha256") {
        let data = std::fs::read(root.join("content/blobs/sha256").join(&hex))?;
        let got = format!("{:x}", Sha256::digest(&data));
        ensure!(got == hex, "blob {hex} holds content hashing to {got}");
    }
    Ok(())
}

#[test]
fn a_container_sees_the_layers_merged_with_whiteouts_opaque_dirs_and_links() -> Result<()> {
    let reg = Registry::start()?;
    let mut l2 = LayerTar::new();
    l2.dir("data", 0o755)?
        .file("data/keep", 0o644, b"v1\n")?
        .file("data/gone", 0o644, b"gone\n")?
        .dir("data/dir-gone", 0o755)?
        .file("data/dir-gone/x", 0o644, b"x\n")?
        .dir("opaque", 0o755)?
        .file("opaque/old1", 0o644, b"old\n")?
        .dir("opaque/old2", 0o755)?
        .file("opaque/old2/nested", 0o644, b"old\n")?;
    let mut l3 = LayerTar::new();
    l3.dir("data", 0o755)?
        .file("data/keep", 0o640, b"v2\n")?
        .whiteout("data/gone")?
        .whiteout("data/dir-gone")?
        .owned_file("data/owned", 0o600, 1234, 5678, b"mine\n")?
        .dir("opaque", 0o750)?
        .opaque("opaque")?
        .file("opaque/new", 0o644, b"new\n")?
        .dir("links", 0o755)?
        .file("links/orig", 0o644, b"linked\n")?
        .hardlink("links/hard", "links/orig")?
        .symlink("links/rel", "../data/keep")?
        .symlink("links/abs", "/data/keep")?;
    let img = image::layout(
        reg.dir.path(),
        "layers",
        "1",
        &[ImageDef::new(
            json!({"Cmd": ["sh"], "Env": [image::PATH]}),
            vec![image::busybox_layer()?, l2.finish()?, l3.finish()?],
        )],
        LayerCompression::Gzip,
    )?;
    reg.push(&img.path, "layers/test:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let name = reg.image("layers/test:1");
        let id = pull_ok(d, &is, &name, None).await?;
        ensure!(id == img.host().config);
        let script = "cd / && bb=/bin/busybox && \
            echo data=$(ls -A data | tr '\\n' ' ') && \
            echo opaque=$(ls -A opaque | tr '\\n' ' ') && \
            echo links=$(ls -A links | tr '\\n' ' ') && \
            echo keep=$(cat data/keep) rel=$(cat links/rel) abs=$(cat links/abs) && \
            echo rel-target=$($bb readlink links/rel) abs-target=$($bb readlink links/abs) && \
            echo orig=$($bb stat -c '%i/%h' links/orig) && \
            echo hard=$($bb stat -c '%i/%h' links/hard) && \
            echo modes=$($bb stat -c '%a' data/keep opaque data/owned | tr '\\n' ' ') && \
            echo owner=$($bb stat -c '%u:%g' data/owned) && \
            echo wh=$($bb find / -xdev -name '.wh.*' | wc -l)";
        let out = run_in(d, &name, script).await?;
        let get = |k: &str| -> String {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or("<missing>")
                .trim()
                .to_string()
        };
        ensure!(
            get("data") == "keep owned",
            "whiteouts not applied in /data:\n{out}"
        );
        ensure!(
            get("opaque") == "new",
            "opaque dir kept lower content:\n{out}"
        );
        ensure!(get("links") == "abs hard orig rel", "/links:\n{out}");
        ensure!(
            out.contains("keep=v2 rel=v2 abs=v2"),
            "upper file or symlinks wrong:\n{out}"
        );
        ensure!(
            out.contains("rel-target=../data/keep abs-target=/data/keep"),
            "{out}"
        );
        let (orig, hard) = (get("orig"), get("hard"));
        ensure!(
            orig == hard && orig.ends_with("/2"),
            "hard link: orig {orig}, hard {hard}"
        );
        ensure!(get("modes") == "640 750 600", "modes:\n{out}");
        ensure!(get("owner") == "1234:5678", "ownership:\n{out}");
        ensure!(get("wh") == "0", "whiteout files visible:\n{out}");
        Ok(())
    })
}

#[test]
fn a_multi_platform_index_pulls_the_hosts_manifest_only() -> Result<()> {
    let reg = Registry::start()?;
    let other = image::other_arch();
    let arch_layer = |arch: &str, extra: usize| -> Result<Vec<u8>> {
        let mut l = LayerTar::new();
        l.file("arch", 0o644, format!("{arch}\n").as_bytes())?;
        if extra > 0 {
            l.file("filler", 0o644, &image::random_bytes(extra, 3))?;
        }
        l.finish()
    };
    let cfg = json!({"Cmd": ["sh"], "Env": [image::PATH]});
    let img = image::layout(
        reg.dir.path(),
        "multi",
        "1",
        &[
            ImageDef::new(
                cfg.clone(),
                vec![image::busybox_layer()?, arch_layer(host_arch(), 0)?],
            ),
            ImageDef {
                arch: other.to_string(),
                config: cfg,
                layers: vec![arch_layer(other, 4096)?],
            },
        ],
        LayerCompression::Gzip,
    )?;
    let pushed = reg.push(&img.path, "multi/arch:1")?;
    ensure!(
        pushed == img.digest,
        "pushed {pushed}, index {}",
        img.digest
    );
    ensure!(
        reg.manifest("multi/arch", "1")?["manifests"]
            .as_array()
            .map(Vec::len)
            == Some(2),
        "the registry does not serve an index of two"
    );
    let host = img.host().clone();
    let foreign = img
        .images
        .iter()
        .find(|i| i.arch == other)
        .context("no foreign image")?
        .clone();
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let name = reg.image("multi/arch:1");
        let id = pull_ok(d, &is, &name, None).await?;
        ensure!(
            id == host.config,
            "pulled {id}; {} is {}, {other} is {}",
            host_arch(),
            host.config,
            foreign.config
        );
        let st = status(&is, &name).await?.context("no status")?;
        ensure!(
            st.repo_digests == [format!("{}/multi/arch@{}", reg.host(), img.digest)],
            "repo digests {:?} (the index is {})",
            st.repo_digests,
            img.digest
        );
        for blob in foreign
            .layers
            .iter()
            .chain([&foreign.config, &foreign.manifest])
        {
            ensure!(
                reg.requests("GET", blob, 200) == 0,
                "{other} content {blob} was fetched:\n{}",
                reg.log()
            );
        }
        let out = run_in(d, &name, "cat /arch").await?;
        ensure!(out == format!("{}\n", host_arch()), "/arch: {out:?}");
        // The same image by the index digest and by the platform manifest's digest.
        for dg in [&img.digest, &host.manifest] {
            let r = format!("{}/multi/arch@{dg}", reg.host());
            ensure!(pull_ok(d, &is, &r, None).await? == id, "{r}");
        }
        ensure!(list(&is).await?.len() == 1);
        Ok(())
    })
}

#[test]
fn a_zstd_compressed_image_pulls_and_runs() -> Result<()> {
    let reg = Registry::start()?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push_with(
        &img.path,
        "zstd/busybox:1",
        &["--dest-compress-format", "zstd", "--format", "oci"],
    )?;
    let m = reg.manifest("zstd/busybox", "1")?;
    let media = m["layers"][0]["mediaType"].as_str().unwrap_or_default();
    ensure!(
        media == "application/vnd.oci.image.layer.v1.tar+zstd",
        "skopeo pushed a {media} layer"
    );
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let name = reg.image("zstd/busybox:1");
        // Recompression leaves the config (and so the image id) as it was.
        ensure!(pull_ok(d, &is, &name, None).await? == img.host().config);
        // The unpacked binary is byte for byte the host's.
        let want = format!("{:x}", Sha256::digest(std::fs::read(image::BUSYBOX)?));
        let out = run_in(d, &name, "busybox sha256sum /bin/busybox").await?;
        ensure!(
            out.split_whitespace().next() == Some(want.as_str()),
            "{out:?}, host busybox {want}"
        );
        Ok(())
    })
}

#[test]
fn image_status_reports_the_configs_numeric_or_named_user() -> Result<()> {
    let reg = Registry::start()?;
    let numeric = busybox_layout(reg.dir.path(), "numeric", json!({"User": "1234:5678"}))?;
    let named = busybox_layout(reg.dir.path(), "named", json!({"User": "nobody"}))?;
    reg.push(&numeric.path, "users/numeric:1")?;
    reg.push(&named.path, "users/named:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let (num, nam) = (reg.image("users/numeric:1"), reg.image("users/named:1"));
        pull_ok(d, &is, &num, None).await?;
        pull_ok(d, &is, &nam, None).await?;
        let st = status(&is, &num).await?.context("no status")?;
        ensure!(
            st.uid.as_ref().map(|u| u.value) == Some(1234) && st.username.is_empty(),
            "numeric user: uid {:?} username {:?}",
            st.uid,
            st.username
        );
        let st = status(&is, &nam).await?.context("no status")?;
        ensure!(
            st.uid.is_none() && st.username == "nobody",
            "named user: uid {:?} username {:?}",
            st.uid,
            st.username
        );
        // ListImages reports the same.
        let all = list(&is).await?;
        ensure!(all.len() == 2);
        ensure!(all
            .iter()
            .any(|i| i.uid.as_ref().map(|u| u.value) == Some(1234)));
        ensure!(all.iter().any(|i| i.username == "nobody"));
        // And containers run as that user.
        let out = run_in(d, &num, "id -u; id -g").await?;
        ensure!(out == "1234\n5678\n", "numeric user container: {out:?}");
        let out = run_in(d, &nam, "id -u; id -un").await?;
        ensure!(out == "65534\nnobody\n", "named user container: {out:?}");
        Ok(())
    })
}

#[test]
fn a_tampered_layer_is_refused_naming_its_digest_and_nothing_is_kept() -> Result<()> {
    let (reg, img) = Registry::with_busybox("tampered/busybox:1")?;
    let layer = img.host().layers[0].clone();
    let data = reg.blob_data(&layer);
    let good = std::fs::read(&data).with_context(|| format!("read {}", data.display()))?;
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&data, &bad)?;
    berthd_test(Berthd::builder(), async |d| {
        let root = d.dir.path().join("root");
        let (_, is) = d.client().await?;
        let name = reg.image("tampered/busybox:1");
        let e = pull_err(&is, &name, None).await?;
        // Every shortcoming is reported, not just the first.
        let mut wrong = Vec::new();
        if e.code() != Code::InvalidArgument || !e.message().contains(&layer) {
            wrong.push(format!(
                "PullImage: {:?} {} (want InvalidArgument naming {layer})",
                e.code(),
                e.message()
            ));
        }
        if !list(&is).await?.is_empty() {
            wrong.push("an image was recorded".to_string());
        }
        let blobs = content_files(&root, "blobs/sha256");
        if !blobs.is_empty() {
            wrong.push(format!("blobs left in the content store: {blobs:?}"));
        }
        let ingest = content_files(&root, "ingest");
        if !ingest.is_empty() {
            wrong.push(format!("ingest files left: {ingest:?}"));
        }
        ensure!(
            wrong.is_empty(),
            "a pull of tampered layer {layer}:\n{}\nberthd log:\n{}",
            wrong.join("\n"),
            d.log()
        );
        // Once the registry serves the right bytes the pull succeeds.
        std::fs::write(&data, &good)?;
        ensure!(pull_ok(d, &is, &name, None).await? == img.host().config);
        blobs_verify(&root)
    })
}

#[test]
fn a_kill9_in_the_middle_of_a_pull_leaves_no_partial_blob_and_the_pull_can_be_retried() -> Result<()>
{
    let reg = Registry::start()?;
    let img = image::with_own_layer(reg.dir.path(), "big", "big.bin", 64 << 20, 64)?;
    reg.push(&img.path, "big/image:1")?;
    let big_layer = img.host().layers[1].clone();
    let big_hex = big_layer.trim_start_matches("sha256:").to_string();
    // 8 MiB/s: the 64 MiB layer takes 8 s to arrive.
    let proxy = SlowProxy::start(reg.port, 8 << 20)?;
    let mut d = Berthd::builder().start()?;
    let root = d.dir.path().join("root");
    let name = format!("{}/big/image:1", proxy.host());
    block_on(async {
        let (_, is) = d.client().await?;
        let pulling = {
            let (is, name) = (is.clone(), name.clone());
            tokio::spawn(async move { pull(&is, &name, None).await })
        };
        let root2 = root.clone();
        let seen = tokio::task::spawn_blocking(move || {
            procs::poll(
                Duration::from_secs(60),
                "4 MiB of the big layer in ingest",
                || {
                    content_files(&root2, "ingest")
                        .into_iter()
                        .find(|(_, n)| *n >= 4 << 20)
                },
            )
        })
        .await??;
        d.kill9()?;
        let r = tokio::time::timeout(Duration::from_secs(30), pulling).await??;
        ensure!(
            r.is_err(),
            "the pull finished before the kill (ingest {seen:?})"
        );

        // While berthd is down: every visible blob is whole; the big layer is not there.
        let blobs = content_files(&root, "blobs/sha256");
        ensure!(
            blobs.iter().all(|(h, _)| *h != big_hex),
            "the interrupted layer is visible: {blobs:?}"
        );
        blobs_verify(&root)?;

        d.restart()?;
        let (_, is) = d.client().await?;
        // The socket accepts before the daemon has opened its stores: the first answered
        // call is the point from which the startup cleanup has run.
        ensure!(list(&is).await?.is_empty(), "an interrupted pull is listed");
        let ingest = content_files(&root, "ingest");
        ensure!(
            ingest.is_empty(),
            "ingest files left after the restart: {ingest:?}"
        );
        ensure!(content_files(&root, "blobs/sha256")
            .iter()
            .all(|(h, _)| *h != big_hex));
        blobs_verify(&root)?;
        ensure!(status(&is, &name).await?.is_none());

        proxy.set_rate(0);
        let id = pull_ok(&d, &is, &name, None).await?;
        ensure!(id == img.host().config);
        let st = status(&is, &name)
            .await?
            .context("no status after the re-pull")?;
        ensure!(st.repo_tags == [name.as_str()]);
        let size = img.host().layer_sizes[1];
        ensure!(
            content_files(&root, "blobs/sha256").contains(&(big_hex.clone(), size)),
            "the big layer is not stored whole"
        );
        let out = run_in(&d, &name, "wc -c < /big.bin").await?;
        ensure!(out.trim() == (64u64 << 20).to_string(), "/big.bin: {out:?}");
        Ok(())
    })??;
    drop(proxy);
    d.finish()
}

#[test]
fn an_unknown_platform_only_index_is_not_found() -> Result<()> {
    let reg = Registry::start()?;
    let other = image::other_arch();
    let cfg = json!({"Cmd": ["sh"], "Env": [image::PATH]});
    let layer = |arch: &str| -> Result<Vec<u8>> {
        let mut l = LayerTar::new();
        l.file("arch", 0o644, arch.as_bytes())?;
        l.finish()
    };
    let img = image::layout(
        reg.dir.path(),
        "foreign",
        "1",
        &[
            ImageDef {
                arch: other.to_string(),
                config: cfg.clone(),
                layers: vec![layer(other)?],
            },
            ImageDef {
                arch: "s390x".to_string(),
                config: cfg,
                layers: vec![layer("s390x")?],
            },
        ],
        LayerCompression::Gzip,
    )?;
    reg.push(&img.path, "foreign/arch:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let e = pull_err(&is, &reg.image("foreign/arch:1"), None).await?;
        ensure!(
            e.code() == Code::NotFound && e.message().contains(host_arch()),
            "{:?} {}",
            e.code(),
            e.message()
        );
        ensure!(list(&is).await?.is_empty());
        Ok(())
    })
}
