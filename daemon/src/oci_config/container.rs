//! The app container spec, as containerd 1.6's `containerSpec`: process from the CRI config
//! and the image config, the pod's namespaces, mounts, devices, security context,
//! resources, cgroups path and the `io.kubernetes.cri.*` container annotations.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxDevice, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::caps::{capability_set, linux_capabilities};
use super::devices::{self, DeviceLookup};
use super::mounts::{container_mounts, Bind};
use super::resources::{linux_resources, oom_score_adj};
use super::security::{apparmor_profile, masked_and_readonly, seccomp_choice, seccomp_spec};
use super::{
    annotations as a, cgroups_path, clean_abs_path, invalid, merge_env, namespace, nofile_rlimit,
    oci, user, DEFAULT_PATH_ENV, OCI_VERSION,
};
use crate::error::{Error, Result};
use crate::workload::{ContainerSpec, NamespaceMode, PodSpec};

/// The parts of the OCI image config that shape a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

/// What the daemon knows about the container beyond its CRI config.
#[derive(Debug, Clone)]
pub struct ContainerOpts {
    pub id: String,
    pub sandbox_id: String,
    /// The infra process; the container joins its namespaces.
    pub sandbox_pid: u32,
    /// A pod without an infra process: its pinned namespaces, joined by path instead.
    pub pinned: Option<PinnedNs>,
    /// The target container's init pid for the TARGET pid namespace mode.
    pub target_pid: Option<u32>,
    pub rootfs: PathBuf,
    pub cgroup_parent: String,
    pub systemd_cgroup: bool,
    /// Give the container a private cgroup namespace (cgroup v2 hosts, as containerd).
    pub cgroupns: bool,
    /// Contents of the image's /etc/passwd and /etc/group.
    pub passwd: Option<String>,
    pub group: Option<String>,
    /// HOSTNAME when the pod has none (host network).
    pub node_hostname: String,
    /// The pod's /etc/hostname, /etc/resolv.conf, /etc/hosts and /dev/shm.
    pub sandbox_hostname: Option<PathBuf>,
    pub sandbox_resolv: Option<PathBuf>,
    pub sandbox_hosts: Option<PathBuf>,
    pub sandbox_shm: Option<PathBuf>,
    pub apparmor_available: bool,
    /// The loaded profile RuntimeDefault maps to (e.g. [`super::APPARMOR_DEFAULT_PROFILE`]).
    pub apparmor_default: Option<String>,
    pub image_name: String,
    /// A Localhost seccomp profile's contents (see [`super::seccomp_localhost_path`]).
    pub localhost_profile: Option<String>,
    /// Privileged containers get these device nodes (from [`super::host_devices`]).
    pub host_devices: Option<Vec<LinuxDevice>>,
    /// Resolves CRI device host paths.
    pub device_lookup: DeviceLookup,
    /// In a user-namespaced pod: the options each bind (by container path) must repeat
    /// because its source mount locks them ([`super::userns::locked_options`]).
    pub locked_options: std::collections::HashMap<PathBuf, Vec<String>>,
}

impl Default for ContainerOpts {
    fn default() -> Self {
        ContainerOpts {
            id: String::new(),
            sandbox_id: String::new(),
            sandbox_pid: 0,
            pinned: None,
            target_pid: None,
            rootfs: PathBuf::new(),
            cgroup_parent: String::new(),
            systemd_cgroup: false,
            cgroupns: false,
            passwd: None,
            group: None,
            node_hostname: String::new(),
            sandbox_hostname: None,
            sandbox_resolv: None,
            sandbox_hosts: None,
            sandbox_shm: None,
            apparmor_available: false,
            apparmor_default: None,
            image_name: String::new(),
            localhost_profile: None,
            host_devices: None,
            device_lookup: devices::device_from_path,
            locked_options: Default::default(),
        }
    }
}

/// The namespaces of a pod without an infra process, by their pin files (None: the
/// host's).
#[derive(Debug, Clone, Default)]
pub struct PinnedNs {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// Kubernetes' rules: `command` replaces the entrypoint and drops the image cmd; `args`
/// replace the cmd. An entrypoint of `[""]` means none.
pub(crate) fn process_args(c: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>> {
    let mut command = c.command.clone();
    let mut args = c.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() || command[0].is_empty() {
        return Err(invalid("no command specified"));
    }
    Ok(command)
}

pub fn container_spec(
    c: &ContainerSpec,
    pod: &PodSpec,
    image: &ImageConfig,
    o: &ContainerOpts,
) -> Result<Spec> {
    let name = c.name.as_str();
    if name.is_empty() {
        return Err(invalid("container name is empty"));
    }
    if o.id.is_empty() || o.sandbox_id.is_empty() {
        return Err(invalid("container or sandbox id is empty"));
    }
    if o.sandbox_pid == 0 && o.pinned.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "sandbox {} has no running infra process",
            o.sandbox_id
        )));
    }
    let sc = &c.security;
    let privileged = sc.privileged;
    let pod_privileged = pod.security.privileged;
    if privileged && !pod_privileged {
        return Err(invalid(
            "no privileged container allowed in a non-privileged sandbox",
        ));
    }
    // A container lives in its pod's user namespace: it may repeat the pod's request (kubelet
    // and critest do) or say nothing, but not ask for another.
    let pod_userns = pod.security.namespaces.pod_userns();
    if let Some(u) = &sc.namespaces.userns {
        let same = match pod_userns {
            Some(p) => p == u,
            None => u.mode == NamespaceMode::Node,
        };
        if !same {
            return Err(invalid(
                "a container's user namespace must be its pod's (mode POD with the pod's mappings, or NODE in a pod without one)",
            ));
        }
    }

    // Process.
    let args = process_args(c, image)?;
    let hostname = if pod.hostname.is_empty() {
        &o.node_hostname
    } else {
        &pod.hostname
    };
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    merge_env(&mut env, [format!("HOSTNAME={hostname}")]);
    merge_env(&mut env, image.env.iter().cloned());
    for (key, value) in &c.envs {
        if key.is_empty() {
            return Err(invalid("environment variable with an empty name"));
        }
        merge_env(&mut env, [format!("{key}={value}")]);
    }
    let cwd = if !c.working_dir.is_empty() {
        clean_abs_path("working_dir", &c.working_dir)?
    } else if !image.working_dir.is_empty() {
        Path::new("/").join(&image.working_dir)
    } else {
        PathBuf::from("/")
    };
    let id = user::resolve(sc, &image.user, o.passwd.as_deref(), o.group.as_deref())?;
    let caps = capability_set(sc.capabilities.as_ref(), privileged)?;
    let seccomp = seccomp_spec(
        &seccomp_choice(sc.seccomp.as_ref())?,
        privileged,
        &caps,
        o.localhost_profile.as_deref(),
    )?;
    let apparmor = apparmor_profile(
        sc.apparmor.as_ref(),
        privileged,
        o.apparmor_available,
        o.apparmor_default.as_deref(),
    )?;
    let mut process = ProcessBuilder::default()
        .terminal(c.tty)
        .user(oci(UserBuilder::default()
            .uid(id.uid)
            .gid(id.gid)
            .additional_gids(id.additional_gids)
            .build())?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(linux_capabilities(&caps)?)
        .rlimits(nofile_rlimit()?)
        .no_new_privileges(sc.no_new_privs);
    if let Some(p) = apparmor {
        process = process.apparmor_profile(p);
    }
    if let Some(adj) = oom_score_adj(c.resources.as_ref())? {
        process = process.oom_score_adj(adj);
    }

    // Namespaces: the pod's network, IPC and UTS; PID per mode.
    let nso = &sc.namespaces;
    let proc_ns = |pid: u32, ns: &str| Some(PathBuf::from(format!("/proc/{pid}/ns/{ns}")));
    let sp = o.sandbox_pid;
    let pid_path = match (nso.pid, &o.pinned) {
        // POD in a pod that shares no PID namespace (and so has no infra): the pod has no
        // PID namespace of its own to join, the container gets one (as CRI-O does).
        (NamespaceMode::Container, _) | (NamespaceMode::Pod, Some(_)) => Some(None),
        // NODE: the host's, which is also where the infra (if any) lives.
        (NamespaceMode::Node, Some(_)) => None,
        (NamespaceMode::Pod | NamespaceMode::Node, None) => Some(proc_ns(sp, "pid")),
        (NamespaceMode::Target, _) => {
            let t = o.target_pid.ok_or_else(|| {
                invalid(format!(
                    "TARGET pid namespace {:?} is not running",
                    nso.target_id
                ))
            })?;
            Some(proc_ns(t, "pid"))
        }
    };
    let mut namespaces = Vec::new();
    if let Some(p) = pid_path {
        namespaces.push(namespace(LinuxNamespaceType::Pid, p)?);
    }
    namespaces.push(namespace(LinuxNamespaceType::Mount, None)?);
    match &o.pinned {
        None => {
            namespaces.push(namespace(LinuxNamespaceType::Ipc, proc_ns(sp, "ipc"))?);
            namespaces.push(namespace(LinuxNamespaceType::Uts, proc_ns(sp, "uts"))?);
            namespaces.push(namespace(LinuxNamespaceType::Network, proc_ns(sp, "net"))?);
        }
        // No entry for what the pod shares with the host: the runtime's own is kept.
        Some(p) => {
            for (ty, path) in [
                (LinuxNamespaceType::Ipc, &p.ipc),
                (LinuxNamespaceType::Uts, &p.uts),
                (LinuxNamespaceType::Network, &p.net),
            ] {
                if let Some(path) = path {
                    namespaces.push(namespace(ty, Some(path.clone()))?);
                }
            }
        }
    }
    if o.cgroupns && !privileged {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    let userns = match pod_userns {
        Some(u) => {
            let u = super::userns::userns_spec(u, proc_ns(sp, "user"))?;
            namespaces.insert(0, u.namespace.clone());
            Some(u)
        }
        None => None,
    };

    // Mounts, with the pod's files unless the container mounts over them.
    let ro = sc.readonly_rootfs;
    let shm = if nso.ipc == NamespaceMode::Node {
        Some(PathBuf::from("/dev/shm"))
    } else {
        o.sandbox_shm.clone()
    };
    let files: Vec<Bind> = [
        ("/etc/hostname", o.sandbox_hostname.as_deref(), ro),
        ("/etc/hosts", o.sandbox_hosts.as_deref(), ro),
        ("/etc/resolv.conf", o.sandbox_resolv.as_deref(), ro),
        ("/dev/shm", shm.as_deref(), false),
    ]
    .into_iter()
    .filter_map(|(dst, src, ro)| src.map(|s| Bind::private(dst, s, ro)))
    .collect();
    // Idmapped volumes: bound from where the shim attaches their idmapped clones.
    super::userns::check_mount_mappings(&c.mounts, pod_userns)?;
    let asked = match o.rootfs.parent() {
        Some(bundle) if pod_userns.is_some() => super::userns::point_idmapped(&c.mounts, bundle),
        _ => c.mounts.clone(),
    };
    let (mut mounts, rootfs_propagation) = container_mounts(&asked, files, privileged)?;
    if userns.is_some() {
        super::userns::adjust_mounts(&mut mounts, &o.locked_options)?;
    }

    // Devices and resources.
    let (mut nodes, mut rules) = devices::cri_devices(&c.devices, o.device_lookup)?;
    if privileged {
        if let Some(host) = &o.host_devices {
            nodes = host.clone();
        }
        rules = vec![devices::allow_all()?];
    } else {
        rules.insert(0, devices::deny_all()?);
    }
    let resources = linux_resources(c.resources.as_ref(), rules)?;

    let (masked, readonly) = masked_and_readonly(&sc.masked_paths, &sc.readonly_paths, privileged)?;
    let mut lb = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .devices(nodes)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(p) = cgroups_path(&o.cgroup_parent, &o.id, o.systemd_cgroup)? {
        lb = lb.cgroups_path(p);
    }
    if let Some(s) = seccomp {
        lb = lb.seccomp(s);
    }
    if let Some(p) = rootfs_propagation {
        lb = lb.rootfs_propagation(p);
    }
    if let Some(u) = userns {
        lb = lb.uid_mappings(u.uid_mappings).gid_mappings(u.gid_mappings);
    }

    let ann = super::string_map(&[
        (a::CONTAINER_TYPE, a::CONTAINER_TYPE_CONTAINER),
        (a::SANDBOX_ID, &o.sandbox_id),
        (a::SANDBOX_NAME, &pod.name),
        (a::SANDBOX_NAMESPACE, &pod.namespace),
        (a::SANDBOX_UID, &pod.uid),
        (a::CONTAINER_NAME, name),
        (a::IMAGE_NAME, &o.image_name),
    ]);
    let mut spec = oci(SpecBuilder::default()
        .version(OCI_VERSION)
        .root(oci(RootBuilder::default()
            .path(&o.rootfs)
            .readonly(ro)
            .build())?)
        .process(oci(process.build())?)
        .mounts(mounts)
        .annotations(ann)
        .linux(oci(lb.build())?)
        .build())?;
    // The builder fills unset fields from `Spec::default()`, hostname included; the
    // container shares the pod's UTS namespace and must not set one.
    spec.set_hostname(None);
    Ok(spec)
}
