//! The pod sandbox (infra/pause process) spec, as containerd 1.6's `sandboxContainerSpec`:
//! read-only rootfs, the pod's namespaces (or the host's in NODE modes), sysctls, cgroup
//! parent, minimal cpu shares and the `io.kubernetes.cri.*` sandbox annotations.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::caps::{capability_set, linux_capabilities};
use super::mounts::{default_mounts, Bind};
use super::resources::SANDBOX_CPU_SHARES;
use super::security::{masked_and_readonly, seccomp_choice, seccomp_spec};
use super::{
    annotations as a, cgroups_path, devices, invalid, namespace, nofile_rlimit, oci,
    DEFAULT_PATH_ENV, OCI_VERSION,
};
use crate::error::Result;
use crate::workload::{NamespaceMode, PodSpec};
use oci_spec::runtime::LinuxCpuBuilder;
use oci_spec::runtime::LinuxResourcesBuilder;

/// What the daemon decided for a sandbox: paths and names the CRI config does not carry.
#[derive(Debug, Clone, Default)]
pub struct SandboxOpts {
    pub id: String,
    /// The pinned network namespace; None = host network.
    pub netns_path: Option<PathBuf>,
    pub rootfs: PathBuf,
    /// The pause program and its arguments.
    pub args: Vec<String>,
    pub cgroup_parent: String,
    pub systemd_cgroup: bool,
    pub hostname: String,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs the daemon mounted); None keeps a private tmpfs.
    pub shm: Option<PathBuf>,
    /// containerd writes -998; lowering the score needs CAP_SYS_RESOURCE, so it is a choice.
    pub oom_score_adj: Option<i32>,
    /// A Localhost seccomp profile's contents when the pod asks for one
    /// (see [`super::seccomp_localhost_path`]).
    pub localhost_profile: Option<String>,
}

pub fn sandbox_spec(cfg: &PodSpec, o: &SandboxOpts) -> Result<Spec> {
    if o.id.is_empty() {
        return Err(invalid("sandbox id is empty"));
    }
    if o.args.is_empty() || o.args[0].is_empty() {
        return Err(invalid("no sandbox command"));
    }
    let sc = &cfg.security;
    let nso = &sc.namespaces;
    let (net, pid, ipc) = (nso.network, nso.pid, nso.ipc);
    if pid == NamespaceMode::Target {
        return Err(invalid(
            "TARGET pid namespace mode is only valid for containers",
        ));
    }
    let host_network = net == NamespaceMode::Node || o.netns_path.is_none();
    let privileged = sc.privileged;

    // User: numeric only, the pause image has no /etc/passwd.
    let (uid, gid) = (sc.run_as_user, sc.run_as_group);
    if uid.is_none() && gid.is_some() {
        return Err(invalid("run_as_group is specified without run_as_user"));
    }
    let to_u32 = |what: &str, v: i64| {
        u32::try_from(v).map_err(|_| invalid(format!("{what} {v} is out of range")))
    };
    let uid = uid
        .map(|v| to_u32("run_as_user", v))
        .transpose()?
        .unwrap_or(0);
    let gid = gid
        .map(|v| to_u32("run_as_group", v))
        .transpose()?
        .unwrap_or(0);
    let mut gids = vec![gid];
    for g in &sc.supplemental_groups {
        gids.push(to_u32("supplemental group", *g)?);
    }
    gids.sort_unstable();
    gids.dedup();
    let user = oci(UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(gids)
        .build())?;

    let caps = capability_set(None, privileged)?;
    let choice = seccomp_choice(sc.seccomp.as_ref())?;
    let seccomp = seccomp_spec(&choice, privileged, &caps, o.localhost_profile.as_deref())?;

    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(o.args.clone())
        .env(vec![DEFAULT_PATH_ENV.to_string()])
        .cwd("/")
        .capabilities(linux_capabilities(&caps)?)
        .rlimits(nofile_rlimit()?)
        .no_new_privileges(true);
    if let Some(adj) = o.oom_score_adj {
        process = process.oom_score_adj(adj);
    }

    // Mounts: the defaults, with the pod's files bound read-only.
    let shm_src = if ipc == NamespaceMode::Node {
        Some(PathBuf::from("/dev/shm"))
    } else {
        o.shm.clone()
    };
    let files: Vec<(&str, Option<&Path>)> = vec![
        ("/dev/shm", shm_src.as_deref()),
        ("/etc/resolv.conf", o.resolv_conf.as_deref()),
        ("/etc/hosts", o.hosts.as_deref()),
        ("/etc/hostname", o.hostname_file.as_deref()),
    ];
    let mut mounts = default_mounts(privileged)?;
    for (dst, src) in files {
        let Some(src) = src else { continue };
        mounts.retain(|m| m.destination() != Path::new(dst));
        let mut m = Bind::private(dst, src, true).to_oci()?;
        m.set_options(Some(vec!["rbind".into(), "ro".into()]));
        mounts.push(m);
    }

    let mut namespaces = Vec::new();
    if pid != NamespaceMode::Node {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None)?);
    }
    if ipc != NamespaceMode::Node {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None)?);
    }
    if !host_network {
        namespaces.push(namespace(LinuxNamespaceType::Uts, None)?);
    }
    namespaces.push(namespace(LinuxNamespaceType::Mount, None)?);
    if !host_network {
        // A user-namespaced pod's infra makes its network namespace, which then belongs to
        // the pod's user namespace; berthd pins it at `netns_path` once the infra runs.
        let path = match nso.pod_userns() {
            Some(_) => None,
            None => o.netns_path.clone(),
        };
        namespaces.push(namespace(LinuxNamespaceType::Network, path)?);
    }

    // A user-namespaced pod: the infra makes the namespace (runc creates it first, so the
    // PID, IPC, UTS and mount namespaces above belong to it); containers join it.
    let userns = match nso.pod_userns() {
        Some(u) => {
            let u = super::userns::userns_spec(u, None)?;
            namespaces.insert(0, u.namespace.clone());
            super::userns::adjust_mounts(&mut mounts, &Default::default())?;
            Some(u)
        }
        None => None,
    };

    let resources = oci(LinuxResourcesBuilder::default()
        .devices(vec![devices::deny_all()?])
        .cpu(oci(LinuxCpuBuilder::default()
            .shares(SANDBOX_CPU_SHARES)
            .build())?)
        .build())?;
    let (masked, readonly) = masked_and_readonly(&[], &[], privileged)?;
    let mut lb = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(p) = cgroups_path(&o.cgroup_parent, &o.id, o.systemd_cgroup)? {
        lb = lb.cgroups_path(p);
    }
    if !cfg.sysctls.is_empty() {
        lb = lb.sysctl(cfg.sysctls.clone());
    }
    if let Some(s) = seccomp {
        lb = lb.seccomp(s);
    }
    if let Some(u) = userns {
        lb = lb.uid_mappings(u.uid_mappings).gid_mappings(u.gid_mappings);
    }

    let mut ann = super::string_map(&[
        (a::CONTAINER_TYPE, a::CONTAINER_TYPE_SANDBOX),
        (a::SANDBOX_ID, &o.id),
        (a::SANDBOX_NAME, &cfg.name),
        (a::SANDBOX_NAMESPACE, &cfg.namespace),
        (a::SANDBOX_UID, &cfg.uid),
        (a::SANDBOX_LOG_DIR, &cfg.log_directory),
    ]);
    if let Some(r) = &cfg.resources {
        for (k, v) in [
            (a::SANDBOX_CPU_PERIOD, r.cpu_period),
            (a::SANDBOX_CPU_QUOTA, r.cpu_quota),
            (a::SANDBOX_CPU_SHARES, r.cpu_shares),
            (a::SANDBOX_MEMORY, r.memory_limit_in_bytes),
        ] {
            ann.insert(k.to_string(), v.to_string());
        }
    }

    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(oci(RootBuilder::default()
            .path(&o.rootfs)
            .readonly(true)
            .build())?)
        .process(oci(process.build())?)
        .mounts(mounts)
        .annotations(ann)
        .linux(oci(lb.build())?);
    // A hostname needs a private UTS namespace, which host-network pods do not get.
    if !host_network && !o.hostname.is_empty() {
        spec = spec.hostname(o.hostname.clone());
    }
    let mut spec = oci(spec.build())?;
    if host_network || o.hostname.is_empty() {
        // oci-spec's defaults carry a hostname ("youki"); runc refuses it without a UTS ns.
        spec.set_hostname(None);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Namespaces, PodSecurity, Profile, Resources};

    pub(crate) fn pod(net: NamespaceMode, pid: NamespaceMode, ipc: NamespaceMode) -> PodSpec {
        PodSpec {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/default_web_uid-1".into(),
            cgroup_parent: "/kubepods/pod-uid-1".into(),
            sysctls: [(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            )]
            .into(),
            security: PodSecurity {
                namespaces: Namespaces {
                    network: net,
                    pid,
                    ipc,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn opts() -> SandboxOpts {
        SandboxOpts {
            id: "sb1".into(),
            netns_path: Some("/var/run/netns/cni-1".into()),
            rootfs: "/run/berth/sb1/rootfs".into(),
            args: vec!["/pause".into()],
            cgroup_parent: "/kubepods/pod-uid-1".into(),
            hostname: "web-0".into(),
            resolv_conf: Some("/var/lib/berth/sb1/resolv.conf".into()),
            shm: Some("/run/berth/sb1/shm".into()),
            ..Default::default()
        }
    }

    fn ns_types(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn pod_network_sandbox() {
        use NamespaceMode::*;
        let s = sandbox_spec(&pod(Pod, Pod, Pod), &opts()).unwrap();
        assert_eq!(s.hostname().as_deref(), Some("web-0"));
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            ns_types(&s),
            vec![
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
                (LinuxNamespaceType::Mount, None),
                (
                    LinuxNamespaceType::Network,
                    Some("/var/run/netns/cni-1".into())
                ),
            ]
        );
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod-uid-1/sb1"))
        );
        assert_eq!(
            linux.sysctl().as_ref().unwrap()["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        assert_eq!(
            linux
                .resources()
                .as_ref()
                .unwrap()
                .cpu()
                .as_ref()
                .unwrap()
                .shares(),
            Some(SANDBOX_CPU_SHARES)
        );
        assert!(
            linux.seccomp().is_none(),
            "no profile asked: unconfined like containerd"
        );
        assert!(!linux.masked_paths().as_ref().unwrap().is_empty());
        let ann = s.annotations().as_ref().unwrap();
        assert_eq!(ann[a::CONTAINER_TYPE], "sandbox");
        assert_eq!(ann[a::SANDBOX_ID], "sb1");
        assert_eq!(ann[a::SANDBOX_NAME], "web");
        assert_eq!(ann[a::SANDBOX_NAMESPACE], "default");
        assert_eq!(ann[a::SANDBOX_UID], "uid-1");
        assert_eq!(ann[a::SANDBOX_LOG_DIR], "/var/log/pods/default_web_uid-1");
        let mounts = s.mounts().as_ref().unwrap();
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(
            shm[0].source().as_deref(),
            Some(Path::new("/run/berth/sb1/shm"))
        );
        assert_eq!(shm[0].options().clone().unwrap(), vec!["rbind", "ro"]);
        assert!(mounts
            .iter()
            .any(|m| m.destination() == Path::new("/etc/resolv.conf")));
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().clone().unwrap(), vec!["/pause"]);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), None);
    }

    #[test]
    fn host_namespaces_table() {
        use NamespaceMode::*;
        let cases = [
            (
                Node,
                Pod,
                Pod,
                vec![
                    LinuxNamespaceType::Pid,
                    LinuxNamespaceType::Ipc,
                    LinuxNamespaceType::Mount,
                ],
            ),
            (
                Pod,
                Node,
                Pod,
                vec![
                    LinuxNamespaceType::Ipc,
                    LinuxNamespaceType::Uts,
                    LinuxNamespaceType::Mount,
                    LinuxNamespaceType::Network,
                ],
            ),
            (
                Pod,
                Pod,
                Node,
                vec![
                    LinuxNamespaceType::Pid,
                    LinuxNamespaceType::Uts,
                    LinuxNamespaceType::Mount,
                    LinuxNamespaceType::Network,
                ],
            ),
            (Node, Node, Node, vec![LinuxNamespaceType::Mount]),
        ];
        for (net, pid, ipc, want) in cases {
            let s = sandbox_spec(&pod(net, pid, ipc), &opts()).unwrap();
            let got: Vec<_> = ns_types(&s).into_iter().map(|(t, _)| t).collect();
            assert_eq!(got, want, "net={net:?} pid={pid:?} ipc={ipc:?}");
            assert_eq!(
                s.hostname().is_some(),
                net != Node,
                "hostname only with a private UTS ns"
            );
            if ipc == Node {
                let shm = s
                    .mounts()
                    .as_ref()
                    .unwrap()
                    .iter()
                    .find(|m| m.destination() == Path::new("/dev/shm"))
                    .unwrap();
                assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
            }
        }
        // No netns path also means host network.
        let mut o = opts();
        o.netns_path = None;
        let s = sandbox_spec(&pod(Pod, Pod, Pod), &o).unwrap();
        assert!(!ns_types(&s)
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Network));
    }

    #[test]
    fn sandbox_user_resources_and_seccomp() {
        use NamespaceMode::*;
        let mut cfg = pod(Pod, Pod, Pod);
        cfg.resources = Some(Resources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 102,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        });
        let sc = &mut cfg.security;
        sc.run_as_user = Some(65535);
        sc.run_as_group = Some(65535);
        sc.supplemental_groups = vec![1, 2];
        sc.seccomp = Some(Profile::RuntimeDefault);
        let mut o = opts();
        o.oom_score_adj = Some(-998);
        o.systemd_cgroup = true;
        o.cgroup_parent = "/kubepods.slice/kubepods-pod1.slice".into();
        let s = sandbox_spec(&cfg, &o).unwrap();
        let u = s.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (65535, 65535));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![1, 2, 65535]);
        assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(-998));
        let ann = s.annotations().as_ref().unwrap();
        assert_eq!(ann[a::SANDBOX_CPU_QUOTA], "20000");
        assert_eq!(ann[a::SANDBOX_MEMORY], (1u64 << 30).to_string());
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("kubepods-pod1.slice:berth:sb1"))
        );
    }

    #[test]
    fn bad_sandbox_input() {
        use NamespaceMode::*;
        let mut o = opts();
        o.args.clear();
        assert!(sandbox_spec(&pod(Pod, Pod, Pod), &o).is_err());
        assert!(sandbox_spec(&pod(Pod, Target, Pod), &opts()).is_err());
        let mut cfg = pod(Pod, Pod, Pod);
        cfg.security.run_as_group = Some(1);
        assert!(sandbox_spec(&cfg, &opts()).is_err());
        let mut o = opts();
        o.cgroup_parent = "/kubepods/../x".into();
        assert!(sandbox_spec(&pod(Pod, Pod, Pod), &o).is_err());
    }
}
