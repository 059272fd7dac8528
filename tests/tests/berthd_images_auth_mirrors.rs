//! PullImage from a registry that wants credentials (each pull judged by its own, the
//! base64 `auth` field too, never logged) and through mirrors (a dead one skipped, the
//! repository path kept, a container run from the mirrored image).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::cri_images::{list, pull_err, pull_ok, remove, status};
use berth_tests::http::basic_auth;
use berth_tests::image::busybox_layout;
use berth_tests::pod::Pod;
use berth_tests::registry::{DeadPort, Registry};
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
fn credentials_open_a_private_registry_and_missing_or_wrong_ones_are_unauthenticated() -> Result<()>
{
    let reg = Registry::with_auth("berth", "s3cret-pw")?;
    let img = busybox_layout(reg.dir.path(), "busybox", json!({}))?;
    reg.push(&img.path, "private/busybox:1")?;
    berthd_test(Berthd::builder(), async |d| {
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

        let id = pull_ok(d, &is, &name, creds("berth", "s3cret-pw")).await?;
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
        ensure!(pull_ok(d, &is, &name, auth).await? == id);
        ensure!(
            !d.log().contains("s3cret-pw"),
            "berthd logged the password:\n{}",
            d.log()
        );
        Ok(())
    })
}

#[test]
fn a_mirror_serves_its_registry_with_the_repository_path_kept() -> Result<()> {
    let (reg, img) = Registry::with_busybox("team/tools/busybox:1")?;
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
