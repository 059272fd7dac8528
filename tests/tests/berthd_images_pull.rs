//! PullImage against a real registry (Debian's docker-registry on 127.0.0.1, one per test):
//! by tag and by digest (the tag, the repo digest and the config id it records), concurrent
//! pulls of one image, and the errors of pulls that cannot succeed.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri_images::{list, pull_err, pull_ok, remove, status};
use berth_tests::image::{self, busybox_layout};
use berth_tests::registry::{DeadPort, Registry};
use serde_json::json;
use tonic::Code;

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
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let tag = reg.image("library/busybox:1");
        let by_digest = format!("{}/library/busybox@{}", reg.host(), img.digest);

        // By digest first: the image has the repo digest and no tag.
        let id = pull_ok(d, &is, &by_digest, None).await?;
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
        ensure!(pull_ok(d, &is, &tag, None).await? == id);
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
        let id2 = pull_ok(d, &is, &tag, None).await?;
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
    })
}

#[test]
fn concurrent_pulls_of_one_image_fetch_each_blob_once_and_yield_one_image() -> Result<()> {
    let reg = Registry::start()?;
    // A second layer of 8 MiB keeps the pulls in flight together.
    let img = image::with_own_layer(reg.dir.path(), "two-layers", "big.bin", 8 << 20, 7)?;
    reg.push(&img.path, "conc/image:1")?;
    berthd_test(Berthd::builder(), async |d| {
        let (_, is) = d.client().await?;
        let name = reg.image("conc/image:1");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let is = is.clone();
                let name = name.clone();
                tokio::spawn(async move { berth_tests::cri_images::pull(&is, &name, None).await })
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
    })
}

#[test]
fn pulls_that_cannot_succeed_say_why() -> Result<()> {
    let (reg, _img) = Registry::with_busybox("library/busybox:1")?;
    berthd_test(Berthd::builder(), async |d| {
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
    })
}
