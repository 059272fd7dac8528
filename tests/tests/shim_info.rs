//! `-info` as containerd 2.x reads it: for the same options on stdin, the shim answers the
//! `RuntimeInfo` that containerd 2.1's own Go shim answers (name, options, runc's features),
//! a minimal answer for an OCI binary without `features` (crun 1.8), and an error for one
//! that is not installed.

use anyhow::{ensure, Context, Result};
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::Message;
use berth_proto::shim::oci;
use berth_proto::types::introspection::RuntimeInfo;
use berth_tests::containerd::Containerd;
use berth_tests::{cmd, shim};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Runs `<bin> -info` with `stdin` (files for stdio: nothing to pump, nothing to deadlock);
/// the exit code, stdout and stderr.
fn info(bin: &Path, stdin: &[u8]) -> Result<(i32, Vec<u8>, String)> {
    let dir = tempfile::tempdir()?;
    let (i, o, e) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("err"),
    );
    std::fs::write(&i, stdin)?;
    let mut child = std::process::Command::new(bin)
        .arg("-info")
        .stdin(std::fs::File::open(&i)?)
        .stdout(std::fs::File::create(&o)?)
        .stderr(std::fs::File::create(&e)?)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let st = cmd::wait_bounded(&mut child, Duration::from_secs(20))?
        .with_context(|| format!("{} -info did not finish in 20 s", bin.display()))?;
    Ok((
        cmd::code_of(st),
        std::fs::read(&o)?,
        std::fs::read_to_string(&e)?,
    ))
}

fn runc_options(binary: &str) -> Vec<u8> {
    let mut o = oci::Options::new();
    o.binary_name = binary.into();
    o.root = "/run/containerd/runc".into();
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = o.write_to_bytes().expect("encode options");
    any.write_to_bytes().expect("encode Any")
}

/// What containerd reads from an answer: name, options and the features document.
#[derive(Debug, PartialEq)]
struct Seen {
    name: String,
    options: Option<(String, oci::Options)>,
    features: Option<serde_json::Value>,
}

fn seen(out: &[u8]) -> Result<Seen> {
    let i = RuntimeInfo::parse_from_bytes(out).context("stdout is not a RuntimeInfo")?;
    let options = match i.options.as_ref() {
        Some(a) => Some((
            a.type_url.clone(),
            oci::Options::parse_from_bytes(&a.value)?,
        )),
        None => None,
    };
    let features = match i.features.as_ref() {
        Some(a) => {
            ensure!(
                a.type_url == FEATURES_TYPE,
                "features type {:?}",
                a.type_url
            );
            Some(serde_json::from_slice(&a.value).context("features are not JSON")?)
        }
        None => None,
    };
    ensure!(i.version.is_some(), "no version in {i:?}");
    Ok(Seen {
        name: i.name,
        options,
        features,
    })
}

#[test]
fn info_answers_as_containerd_21s_go_shim() -> Result<()> {
    let go = Containerd::V2_1.reference_shim()?;
    let ours = shim::binary()?;
    // Installed as a drop-in, as containerd 2.x's CRI introspects runc-type handlers.
    let dir = tempfile::tempdir()?;
    let drop_in: PathBuf = dir.path().join("containerd-shim-runc-v2");
    std::os::unix::fs::symlink(&ours, &drop_in)?;

    for (what, stdin) in [
        ("no options", Vec::new()),
        ("runc options", runc_options("runc")),
        ("crun (no `features` command)", runc_options("crun")),
    ] {
        let (gc, gout, gerr) = info(&go, &stdin)?;
        let (oc, oout, oerr) = info(&drop_in, &stdin)?;
        ensure!(gc == 0, "{what}: Go shim -info failed: {gerr}");
        ensure!(oc == 0, "{what}: our -info failed: {oerr}");
        let (g, o) = (seen(&gout)?, seen(&oout)?);
        ensure!(g == o, "{what}: Go shim says\n{g:#?}\nours says\n{o:#?}");
        if what == "runc options" {
            let f = o.features.as_ref().context("runc's features missing")?;
            let opts = f["mountOptions"].as_array().context("mountOptions")?;
            ensure!(opts.iter().any(|v| v == "rro"), "runc 1.1 lists rro: {f}");
        }
        if what.starts_with("crun") {
            ensure!(o.features.is_none(), "crun 1.8 has no features: {o:?}");
        }
    }

    // Under its own name the runtime type is Berth's.
    let (code, out, err) = info(&ours, &[])?;
    ensure!(code == 0, "{err}");
    ensure!(
        seen(&out)?.name == "io.containerd.berth.v2",
        "{:?}",
        seen(&out)?
    );

    // The TOML options form (runtimeoptions.v1) comes back as runc options.
    let mut rt = berth_proto::runtimeoptions::Options::new();
    rt.config_body = b"BinaryName = \"runc\"\nSystemdCgroup = false\n".to_vec();
    let mut any = Any::new();
    any.type_url = "runtimeoptions.v1.Options".into();
    any.value = rt.write_to_bytes()?;
    let (code, out, err) = info(&drop_in, &any.write_to_bytes()?)?;
    ensure!(code == 0, "runtimeoptions: {err}");
    let s = seen(&out)?;
    ensure!(
        s.options
            .as_ref()
            .is_some_and(|(u, o)| u == "containerd.runc.v1.Options" && o.binary_name == "runc")
            && s.features.is_some(),
        "runtimeoptions: {s:?}"
    );

    // A binary that is not installed: both fail, naming it; ours prints nothing on stdout.
    let stdin = runc_options("no-such-oci-runtime");
    let (gc, _, _) = info(&go, &stdin)?;
    let (oc, oout, oerr) = info(&drop_in, &stdin)?;
    ensure!(gc != 0 && oc != 0, "missing binary: Go {gc}, ours {oc}");
    ensure!(
        oout.is_empty() && oerr.contains("no-such-oci-runtime"),
        "{oerr}"
    );
    // Garbage on stdin is an error, not a guess.
    let (oc, _, oerr) = info(&drop_in, b"\xff\xff\xff\xff")?;
    ensure!(oc != 0, "garbage options accepted: {oerr}");
    Ok(())
}
