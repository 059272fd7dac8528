//! CreateContainer of images whose /etc/passwd is hostile (issue 12, finding 2): a FIFO,
//! /dev/zero as a device and as a symlink, `etc -> /etc` aimed at the host's files, and a
//! `..` symlink through /proc/self/root to the host's /etc/passwd. berthd used to read
//! those with the host's path resolution on one of its two async workers: a FIFO blocked
//! the worker for ever, /dev/zero ate memory, the symlinks read the host's users. Now each
//! create answers at once (InvalidArgument, or success with the image's own users only),
//! berthd keeps answering other calls, and no user of the host's /etc/passwd resolves.

use anyhow::{anyhow, bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd, Builder};
use berth_tests::cri::{secured, Rs};
use berth_tests::cri_calls::{Answer, CriCalls};
use berth_tests::image::{self, ImageDef, ImageTar, LayerCompression, LayerTar};
use berth_tests::pod::Pod;
use berth_tests::procs;
use std::time::{Duration, Instant};
use tonic::Code;

const FIFO_IMAGE: &str = "berth.test/passwd-fifo:1";
const ZERO_IMAGE: &str = "berth.test/passwd-zero:1";
const ZERO_LINK_IMAGE: &str = "berth.test/passwd-zero-link:1";
const HOST_ETC_IMAGE: &str = "berth.test/etc-host:1";
const PROC_ROOT_IMAGE: &str = "berth.test/passwd-proc-root:1";

/// How long a CreateContainer may take to answer. berthd's own deadline for the read is
/// 1 s; the rest is slack for a loaded machine. A blocked read never answers at all.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Prints the process' uid and gid as `uid=N`/`gid=N` lines without any name lookup (the
/// image's /etc/passwd is hostile in there too).
const IDS: &str = "awk '/^Uid:/{print \"uid=\"$2} /^Gid:/{print \"gid=\"$2}' /proc/self/status";

/// `b` with the busybox image plus a top layer made by `top`, imported as `name`.
fn with_top(
    b: Builder,
    name: &'static str,
    top: impl FnOnce(&mut LayerTar) -> Result<()> + 'static,
) -> Builder {
    b.image(move |dir| {
        let mut l = LayerTar::new();
        top(&mut l)?;
        let cfg = serde_json::json!({"Cmd": ["sh"], "Env": [image::PATH]});
        let out = image::layout(
            dir,
            &name.replace(['/', ':', '.'], "_"),
            name,
            &[ImageDef::new(
                cfg,
                vec![image::busybox_layer()?, l.finish()?],
            )],
            LayerCompression::Gzip,
        )?;
        Ok(ImageTar {
            path: out.path,
            name,
        })
    })
}

/// A user of the host's /etc/passwd the test images do not have (they have root and
/// nobody), with a gid other than 0: (name, uid, gid).
fn host_only_user() -> Result<(String, String, String)> {
    let text = std::fs::read_to_string("/etc/passwd")?;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.to_string(),
                f.get(3)?.to_string(),
            ))
        })
        .find(|(n, u, g)| {
            !["root", "nobody"].contains(&n.as_str())
                && u != "0"
                && !["0", "65534"].contains(&g.as_str())
        })
        .context("the host's /etc/passwd has no user but root and nobody")
}

fn by_name(name: &str) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        run_as_username: name.into(),
        ..Default::default()
    }
}

fn by_uid(uid: &str) -> Result<cri::LinuxContainerSecurityContext> {
    Ok(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value {
            value: uid.parse()?,
        }),
        ..Default::default()
    })
}

/// CreateContainer of `sh -c script` from `image` as `sc`, which must answer within
/// ANSWER_WITHIN; berthd's answer.
async fn create(
    pod: &Pod,
    name: &str,
    image: &str,
    sc: cri::LinuxContainerSecurityContext,
) -> Result<Answer<String>> {
    let t = Instant::now();
    let r = tokio::time::timeout(ANSWER_WITHIN, pod.create(secured(name, image, "true", sc)))
        .await
        .map_err(|_| {
            anyhow!("CreateContainer {name} of {image} did not answer in {ANSWER_WITHIN:?}")
        })?;
    let what = match &r {
        Ok(id) => format!("created {id}"),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    eprintln!(
        "CreateContainer {name} of {image}: {what} after {:?}",
        t.elapsed()
    );
    Ok(r)
}

/// The answer is InvalidArgument with `needle` in its message.
fn refused(r: Answer<String>, what: &str, needle: &str) -> Result<()> {
    match r {
        Err(s) if s.code() == Code::InvalidArgument && s.message().contains(needle) => Ok(()),
        Err(s) => bail!(
            "{what}: want InvalidArgument with {needle:?}, got {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(id) => bail!("{what}: want InvalidArgument with {needle:?}, got container {id}"),
    }
}

/// berthd answers Version and ListPodSandbox within 5 s.
async fn answers(rs: &Rs) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        rs.clone()
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await?;
        rs.list_pods(None).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("berthd did not answer Version and ListPodSandbox within 5 s")?
}

fn rss_kb(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    procs::field_kb(&status, "VmRSS:").context("no VmRSS")
}

#[test]
fn a_fifo_passwd_is_refused_at_once_and_berthd_keeps_answering() -> Result<()> {
    let b = with_top(Berthd::builder(), FIFO_IMAGE, |l| {
        l.fifo("etc/passwd")?;
        Ok(())
    });
    berthd_test(b, async |d| {
        let pod = Pod::run(d, d.pod_config("fifo")).await?;
        let (probe, _) = d.client().await?;
        // Two at once: each used to block one of berthd's two runtime workers in the FIFO's
        // open, for ever, and then berthd answered nothing. Other calls go on meanwhile.
        let (a, b, live) = tokio::join!(
            create(&pod, "a", FIFO_IMAGE, by_name("nobody")),
            create(&pod, "b", FIFO_IMAGE, by_name("nobody")),
            async {
                for _ in 0..5 {
                    answers(&probe).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok::<_, anyhow::Error>(())
            }
        );
        live?;
        let fifo = "the image's /etc/passwd is a FIFO, not a regular file";
        refused(a?, "named user, FIFO passwd", fifo)?;
        refused(b?, "named user, FIFO passwd", fifo)?;
        // A uid as well: containerd reads /etc/passwd for every container and fails the
        // create on any error but the file's absence.
        refused(
            create(&pod, "c", FIFO_IMAGE, by_uid("1234")?).await?,
            "numeric user, FIFO passwd",
            fifo,
        )?;
        answers(&probe).await?;
        ensure!(
            pod.list_all().await?.is_empty(),
            "a refused create left a container"
        );
        Ok(())
    })
}

#[test]
fn dev_zero_as_passwd_is_refused_and_a_symlink_to_it_stays_in_the_image() -> Result<()> {
    let b = with_top(Berthd::builder(), ZERO_IMAGE, |l| {
        l.char_device("etc/passwd", 1, 5)?;
        Ok(())
    });
    let b = with_top(b, ZERO_LINK_IMAGE, |l| {
        l.symlink("etc/passwd", "/dev/zero")?;
        Ok(())
    });
    berthd_test(b, async |d| {
        let pod = Pod::run(d, d.pod_config("zero")).await?;
        let rss_before = rss_kb(d.pid())?;
        refused(
            create(&pod, "dev", ZERO_IMAGE, by_name("nobody")).await?,
            "passwd a /dev/zero device",
            "the image's /etc/passwd is a character device, not a regular file",
        )?;
        // The symlink is the image's /dev/zero, which the image does not have: no passwd,
        // so a name is unknown. (A uid gets past berthd, but runc then reads the running
        // container's /etc/passwd, where /dev/zero exists, and refuses it with its own
        // bounded reader: nothing this test can make succeed.)
        refused(
            create(&pod, "link", ZERO_LINK_IMAGE, by_name("nobody")).await?,
            "passwd a symlink to /dev/zero",
            "user \"nobody\" not found in the image's /etc/passwd",
        )?;
        let grown = rss_kb(d.pid())?.saturating_sub(rss_before);
        ensure!(grown < 16 * 1024, "berthd's RSS grew by {grown} KiB");
        answers(&pod.rs).await
    })
}

#[test]
fn etc_as_a_symlink_to_the_hosts_etc_resolves_no_host_user() -> Result<()> {
    let (host_user, host_uid, _) = host_only_user()?;
    let b = with_top(Berthd::builder(), HOST_ETC_IMAGE, |l| {
        l.symlink("etc", "/etc")?;
        Ok(())
    });
    berthd_test(b, async |d| {
        let pod = Pod::run(d, d.pod_config("etc")).await?;
        // In the image, /etc -> /etc is itself: a loop, never the host's /etc.
        let looped = "the image's /etc/passwd: too many levels of symbolic links";
        refused(
            create(&pod, "name", HOST_ETC_IMAGE, by_name(&host_user)).await?,
            &format!("the host's user {host_user}"),
            looped,
        )?;
        refused(
            create(&pod, "uid", HOST_ETC_IMAGE, by_uid(&host_uid)?).await?,
            &format!("the host's uid {host_uid}"),
            looped,
        )?;
        answers(&pod.rs).await
    })
}

#[test]
fn a_dotdot_symlink_through_proc_self_root_resolves_no_host_user() -> Result<()> {
    let (host_user, host_uid, host_gid) = host_only_user()?;
    let b = with_top(Berthd::builder(), PROC_ROOT_IMAGE, |l| {
        let up = "../".repeat(20);
        l.symlink("etc/passwd", &format!("{up}proc/self/root/etc/passwd"))?;
        Ok(())
    });
    berthd_test(b, async |d| {
        let pod = Pod::run(d, d.pod_config("proc")).await?;
        // `..` stops at the image's root and the image's /proc is an empty dir: the image
        // has no /etc/passwd, so the host's user is unknown...
        refused(
            create(&pod, "name", PROC_ROOT_IMAGE, by_name(&host_user)).await?,
            &format!("the host's user {host_user}"),
            &format!("user {host_user:?} not found in the image's /etc/passwd"),
        )?;
        // ...and the host's uid runs with gid 0, not the host's gid for it.
        let e = pod
            .run_and_remove(secured("uid", PROC_ROOT_IMAGE, IDS, by_uid(&host_uid)?))
            .await?;
        ensure!(
            e.var("uid") == Some(host_uid.as_str()) && e.var("gid") == Some("0"),
            "uid {host_uid} must run with gid 0 (the host's passwd gives {host_gid}):\n{}",
            e.log
        );
        answers(&pod.rs).await
    })
}
