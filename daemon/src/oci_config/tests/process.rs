//! The process: command and args against the image, env, cwd, user, terminal.

use super::*;

#[test]
fn entrypoint_cmd_table() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let img = |ep: &[&str], cmd: &[&str]| ImageConfig {
        entrypoint: s(ep),
        cmd: s(cmd),
        ..Default::default()
    };
    let cases = [
        (
            "image only",
            s(&[]),
            s(&[]),
            img(&["/e"], &["c1", "c2"]),
            s(&["/e", "c1", "c2"]),
        ),
        (
            "args replace cmd",
            s(&[]),
            s(&["a"]),
            img(&["/e"], &["c1"]),
            s(&["/e", "a"]),
        ),
        (
            "command drops cmd",
            s(&["/x"]),
            s(&[]),
            img(&["/e"], &["c1"]),
            s(&["/x"]),
        ),
        (
            "command and args",
            s(&["/x"]),
            s(&["a", "b"]),
            img(&["/e"], &["c1"]),
            s(&["/x", "a", "b"]),
        ),
        (
            "cmd only image",
            s(&[]),
            s(&[]),
            img(&[], &["/bin/sh", "-c", "x"]),
            s(&["/bin/sh", "-c", "x"]),
        ),
        (
            "empty-string entrypoint",
            s(&[]),
            s(&[]),
            img(&[""], &["/c"]),
            s(&["/c"]),
        ),
        (
            "args only",
            s(&[]),
            s(&["/bin/true"]),
            img(&[], &[]),
            s(&["/bin/true"]),
        ),
    ];
    for (what, command, args, image, want) in cases {
        let c = ContainerSpec {
            command,
            args,
            ..Default::default()
        };
        assert_eq!(container::process_args(&c, &image).unwrap(), want, "{what}");
    }
    let c = ContainerSpec::default();
    assert!(matches!(
        container::process_args(&c, &img(&[], &[])),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn process_env_cwd_user_terminal() {
    let mut c = ctr(Default::default());
    c.tty = true;
    c.stdin = true;
    let s = build(&c);
    let p = s.process().as_ref().unwrap();
    assert_eq!(
        p.args().clone().unwrap(),
        vec!["/bin/entry", "serve", "--port=80"]
    );
    assert_eq!(
        p.env().clone().unwrap(),
        vec![
            "PATH=/opt/bin:/bin",
            "HOSTNAME=web-0",
            "LANG=C.UTF-8",
            "MODE=prod"
        ]
    );
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.user().additional_gids().clone().unwrap(), vec![10, 1000]);
    assert_eq!(p.no_new_privileges(), Some(false));
    assert_eq!(p.oom_score_adj(), Some(999));
    let rl = p.rlimits().clone().unwrap();
    assert_eq!(
        (rl[0].soft(), rl[0].hard()),
        (DEFAULT_NOFILE, DEFAULT_NOFILE)
    );
    assert!(s.hostname().is_none(), "the UTS namespace is the pod's");

    c.working_dir = "/work".into();
    c.security.no_new_privs = true;
    let s = build(&c);
    assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/work"));
    assert_eq!(
        s.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    c.working_dir = "work".into();
    assert!(is_invalid(container_spec(
        &c,
        &pod(false),
        &image(),
        &opts()
    )));

    // Host-network pods have no hostname in their config: HOSTNAME is the node's.
    let mut p = pod(false);
    p.hostname.clear();
    let s = container_spec(&ctr(Default::default()), &p, &image(), &opts()).unwrap();
    assert!(s
        .process()
        .as_ref()
        .unwrap()
        .env()
        .as_ref()
        .unwrap()
        .contains(&"HOSTNAME=node-a".to_string()));
}

#[test]
fn env_merge_rules() {
    let mut env = vec![
        "PATH=/bin".to_string(),
        "A=1".to_string(),
        "B=2".to_string(),
    ];
    merge_env(
        &mut env,
        [
            "A=3".to_string(),
            "C=4".to_string(),
            "B".to_string(),
            "D".to_string(),
        ],
    );
    assert_eq!(env, vec!["PATH=/bin", "A=3", "C=4"]);
}
