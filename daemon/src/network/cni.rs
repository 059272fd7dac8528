//! CNI ADD and DEL for a pod: loopback first, then the configured list with prevResult
//! chaining and capability args, rolled back on failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::conf::{self, NetworkConfigList};
use super::exec::{self, Call};
use super::result::PodNetwork;
use super::PodNetArgs;
use crate::error::{Error, Result};

/// How long one plugin call may take before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where berthd finds the network config and the plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// Bound on each plugin call (PLUGIN_TIMEOUT by default).
    pub timeout: Duration,
    /// Berth's built-in network (`builtin`): used for new pods while conf_dir holds no
    /// config and `builtin_enabled` is set; always known, so that a pod wired to it is
    /// unwired through it even after the operator's config arrived or it was switched off.
    pub builtin: Option<NetworkConfigList>,
    pub builtin_enabled: bool,
}

impl Cni {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>) -> Cni {
        Cni {
            conf_dir,
            bin_dirs,
            timeout: PLUGIN_TIMEOUT,
            builtin: None,
            builtin_enabled: false,
        }
    }

    /// Bounds each plugin call by `timeout` instead of PLUGIN_TIMEOUT.
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    /// Adds the built-in network, used for new pods only when `enabled`.
    pub fn with_builtin(mut self, list: NetworkConfigList, enabled: bool) -> Cni {
        self.builtin = Some(list);
        self.builtin_enabled = enabled;
        self
    }

    /// The network config a new pod gets: the first `*.conflist`, `*.conf` or `*.json` in
    /// conf_dir by file name (a `.conf` becomes a one-plugin list), read anew each time so
    /// that an operator's config wins as soon as it is there; else the built-in network
    /// when enabled. None when there is neither (NetworkReady=false then).
    pub fn load(&self) -> Result<Option<NetworkConfigList>> {
        match conf::load_dir(&self.conf_dir)? {
            Some(l) => Ok(Some(l)),
            None if self.builtin_enabled => Ok(self.builtin.clone()),
            None => Ok(None),
        }
    }

    /// The config to unwire a pod wired to network `network` ("" when unknown: a record
    /// from an older berthd): what `load` gives, unless that is another network and
    /// `network` is the built-in one (the operator's config came after the pod did).
    pub fn load_for(&self, network: &str) -> Result<Option<NetworkConfigList>> {
        let current = self.load();
        if let Ok(Some(l)) = &current {
            if network.is_empty() || l.name == network {
                return current;
            }
        }
        match self.builtin.as_ref().filter(|b| b.name == network) {
            Some(b) => Ok(Some(b.clone())),
            None => current,
        }
    }

    /// CNI ADD: `lo` up through the loopback plugin, then every plugin of `list` in order,
    /// each given the previous one's result. On failure every plugin already run is
    /// deleted again before the error returns, so nothing is left half-made.
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        netns: &Path,
        args: &PodNetArgs,
    ) -> Result<PodNetwork> {
        let cni_args = cni_args(args)?;
        let lo = loopback_list();
        // Every binary is found before anything runs: a missing plugin makes nothing.
        let lo_bins = self.find_all(&lo)?;
        let bins = self.find_all(list)?;
        let lo_call = self.call("ADD", Some(netns), "lo", args, &cni_args);
        let call = self.call("ADD", Some(netns), &args.ifname, args, &cni_args);
        // Loopback and the pod network touch different interfaces: wired side by side.
        let (lo_res, res) = tokio::join!(
            self.add_list(&lo, &lo_bins, &lo_call, args),
            self.add_list(list, &bins, &call, args)
        );
        let res = match (lo_res, res) {
            (Ok(_), r) => r,
            (Err(e), Ok(result)) => {
                let del = self.call("DEL", Some(netns), &args.ifname, args, &cni_args);
                let n = list.plugins.len();
                let _ = self.del_list(list, n, &del, Some(&result), args).await;
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        };
        let failure = match res {
            Ok(result) => match PodNetwork::from_result(result.clone(), &args.ifname) {
                Ok(net) => return Ok(net),
                Err(e) => {
                    // Wired but unreadable: undo it rather than keep a pod with no known IP.
                    let del = self.call("DEL", Some(netns), &args.ifname, args, &cni_args);
                    let n = list.plugins.len();
                    let _ = self.del_list(list, n, &del, Some(&result), args).await;
                    e
                }
            },
            Err(e) => e,
        };
        let lo_del = self.call("DEL", Some(netns), "lo", args, &cni_args);
        let _ = self
            .del_list(&lo, lo.plugins.len(), &lo_del, None, args)
            .await;
        Err(failure)
    }

    /// CNI DEL of `list` in reverse order, then loopback. Tolerant: a missing netns is
    /// passed as an empty CNI_NETNS (plugins still release IPAM and host rules), and every
    /// plugin is tried; the first error is returned.
    pub async fn del(
        &self,
        list: &NetworkConfigList,
        netns: Option<&Path>,
        args: &PodNetArgs,
    ) -> Result<()> {
        self.del_with_result(list, netns, args, None).await
    }

    /// `del`, also handing the plugins the ADD's result (`PodNetwork::result_json`) as
    /// prevResult, which CNI 0.4.0+ asks runtimes to do: prefer it when berthd kept it.
    pub async fn del_with_result(
        &self,
        list: &NetworkConfigList,
        netns: Option<&Path>,
        args: &PodNetArgs,
        prev_result: Option<&Value>,
    ) -> Result<()> {
        let cni_args = cni_args(args)?;
        let netns = netns.filter(|p| p.exists());
        let call = self.call("DEL", netns, &args.ifname, args, &cni_args);
        let lo = loopback_list();
        let lo_call = self.call("DEL", netns, "lo", args, &cni_args);
        // As for ADD: two interfaces, unwired side by side.
        let (listed, looped) = tokio::join!(
            self.del_list(list, list.plugins.len(), &call, prev_result, args),
            self.del_list(&lo, lo.plugins.len(), &lo_call, None, args)
        );
        listed.and(looped)
    }

    fn call<'a>(
        &'a self,
        command: &'static str,
        netns: Option<&'a Path>,
        ifname: &'a str,
        args: &'a PodNetArgs,
        cni_args: &'a str,
    ) -> Call<'a> {
        Call {
            command,
            container_id: &args.sandbox_id,
            netns,
            ifname,
            cni_args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        }
    }

    fn find_all(&self, list: &NetworkConfigList) -> Result<Vec<PathBuf>> {
        list.plugins
            .iter()
            .map(|p| exec::find_plugin(&self.bin_dirs, NetworkConfigList::plugin_type(p)))
            .collect()
    }

    /// ADD of each plugin with prevResult chaining; on failure DEL of plugins 0..=failed.
    async fn add_list(
        &self,
        list: &NetworkConfigList,
        bins: &[PathBuf],
        call: &Call<'_>,
        args: &PodNetArgs,
    ) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for (i, (plugin, bin)) in list.plugins.iter().zip(bins).enumerate() {
            let ptype = NetworkConfigList::plugin_type(plugin);
            let conf = plugin_conf(list, plugin, prev.as_ref(), args);
            let out = exec::run(call, ptype, bin, conf.to_string().as_bytes()).await;
            let parsed = out.and_then(|bytes| {
                serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        Error::Network(format!("CNI plugin {ptype:?} ADD printed no JSON result"))
                    })
            });
            match parsed {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    // The failed plugin may have made part of its changes: DEL it too.
                    let del = Call {
                        command: "DEL",
                        ..*call
                    };
                    if let Err(de) = self.del_list(list, i + 1, &del, prev.as_ref(), args).await {
                        tracing::warn!(
                            sandbox_id = %args.sandbox_id,
                            network = %list.name,
                            error = %de,
                            "CNI rollback after a failed ADD"
                        );
                    }
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| Error::Network(format!("CNI network {:?} has no plugins", list.name)))
    }

    /// DEL of the first `count` plugins in reverse; tries all, returns the first error.
    async fn del_list(
        &self,
        list: &NetworkConfigList,
        count: usize,
        call: &Call<'_>,
        prev_result: Option<&Value>,
        args: &PodNetArgs,
    ) -> Result<()> {
        let prev = prev_result.filter(|_| list.sends_prev_result_on_del());
        let mut first_err = None;
        for plugin in list.plugins[..count.min(list.plugins.len())].iter().rev() {
            let ptype = NetworkConfigList::plugin_type(plugin);
            let conf = plugin_conf(list, plugin, prev, args);
            let res = match exec::find_plugin(&self.bin_dirs, ptype) {
                Ok(bin) => exec::run(call, ptype, &bin, conf.to_string().as_bytes())
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::warn!(sandbox_id = %args.sandbox_id, error = %e, "CNI DEL");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The synthetic network that brings `lo` up, as containerd runs it.
fn loopback_list() -> NetworkConfigList {
    let mut plugin = Map::new();
    plugin.insert("type".into(), json!("loopback"));
    NetworkConfigList {
        name: "cni-loopback".into(),
        cni_version: "0.3.1".into(),
        plugins: vec![plugin],
        source: PathBuf::new(),
    }
}

/// One plugin's stdin: its config with the list's name and cniVersion, the previous
/// result, and `runtimeConfig` holding the capability args it declares (libcni's rules).
fn plugin_conf(
    list: &NetworkConfigList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    args: &PodNetArgs,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let declares = |cap: &str| {
        plugin
            .get("capabilities")
            .and_then(|c| c.get(cap))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut rc = Map::new();
    if declares("portMappings") {
        // As containerd: a mapping without a host port is not forwarded.
        let maps: Vec<Value> = args
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol.to_ascii_lowercase(),
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = json!(p.host_ip);
                }
                m
            })
            .collect();
        rc.insert("portMappings".into(), Value::Array(maps));
    }
    if let Some(dns) = args.dns.as_ref().filter(|_| declares("dns")) {
        rc.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    if declares("ipRanges") && !args.pod_cidr.is_empty() {
        rc.insert("ipRanges".into(), json!([[{"subnet": args.pod_cidr}]]));
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

/// CNI_ARGS as kubelet's runtimes send them. The values are checked because `;` and `=`
/// would split them into other keys.
fn cni_args(args: &PodNetArgs) -> Result<String> {
    let id_ok = !args.sandbox_id.is_empty()
        && args
            .sandbox_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !id_ok {
        return Err(Error::InvalidArgument(format!(
            "invalid CNI container id {:?}",
            args.sandbox_id
        )));
    }
    let if_ok = !args.ifname.is_empty()
        && args.ifname.len() <= 15
        && !args.ifname.contains(['/', ':', '\0'])
        && !args.ifname.contains(char::is_whitespace);
    if !if_ok {
        return Err(Error::InvalidArgument(format!(
            "invalid interface name {:?}",
            args.ifname
        )));
    }
    let pairs = [
        ("K8S_POD_NAMESPACE", &args.pod_namespace),
        ("K8S_POD_NAME", &args.pod_name),
        ("K8S_POD_INFRA_CONTAINER_ID", &args.sandbox_id),
        ("K8S_POD_UID", &args.pod_uid),
    ];
    let mut out = String::from("IgnoreUnknown=1");
    for (k, v) in pairs {
        if v.contains([';', '=', '\0']) {
            return Err(Error::InvalidArgument(format!("invalid {k} {v:?} for CNI")));
        }
        out.push_str(&format!(";{k}={v}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{DnsArgs, PortMapping};

    fn pod_args(id: &str) -> PodNetArgs {
        PodNetArgs {
            sandbox_id: id.into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "uid-1".into(),
            ifname: "eth0".into(),
            ..Default::default()
        }
    }

    fn list(plugins: Value) -> NetworkConfigList {
        let text = json!({"cniVersion": "1.0.0", "name": "net", "plugins": plugins});
        NetworkConfigList::parse(text.to_string().as_bytes(), Path::new("t.conflist")).unwrap()
    }

    #[test]
    fn cni_args_format_and_validation() {
        let a = pod_args("abc-1");
        assert_eq!(
            cni_args(&a).unwrap(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc-1;K8S_POD_UID=uid-1"
        );
        for bad in [
            PodNetArgs {
                pod_name: "a;b".into(),
                ..pod_args("x")
            },
            PodNetArgs {
                pod_uid: "a=b".into(),
                ..pod_args("x")
            },
            pod_args(""),
            pod_args("a/b"),
            PodNetArgs {
                ifname: "".into(),
                ..pod_args("x")
            },
            PodNetArgs {
                ifname: "much-too-long-name".into(),
                ..pod_args("x")
            },
        ] {
            assert!(
                matches!(cni_args(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn conf_gets_name_version_prev_and_only_declared_capabilities() {
        let l = list(json!([
            {"type": "bridge", "name": "other", "cniVersion": "0.3.1"},
            {"type": "portmap", "capabilities": {"portMappings": true, "dns": false},
             "runtimeConfig": {"stale": 1}},
            {"type": "x", "capabilities": {"dns": true, "ipRanges": true}}
        ]));
        let mut a = pod_args("c1");
        a.port_mappings = vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: "".into(),
            },
            PortMapping {
                host_port: 0,
                container_port: 81,
                protocol: "tcp".into(),
                host_ip: "".into(),
            },
            PortMapping {
                host_port: 53,
                container_port: 53,
                protocol: "UDP".into(),
                host_ip: "127.0.0.1".into(),
            },
        ];
        a.dns = Some(DnsArgs {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.local".into()],
            options: vec!["ndots:5".into()],
        });
        a.pod_cidr = "10.88.0.0/16".into();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});

        let c0 = plugin_conf(&l, &l.plugins[0], None, &a);
        assert_eq!(c0["name"], "net");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("prevResult").is_none());
        assert!(c0.get("runtimeConfig").is_none());

        let c1 = plugin_conf(&l, &l.plugins[1], Some(&prev), &a);
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(
            c1["runtimeConfig"],
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]})
        );

        let c2 = plugin_conf(&l, &l.plugins[2], None, &a);
        assert_eq!(
            c2["runtimeConfig"],
            json!({
                "dns": {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]},
                "ipRanges": [[{"subnet": "10.88.0.0/16"}]]
            })
        );
        a.pod_cidr.clear();
        a.dns = None;
        assert!(plugin_conf(&l, &l.plugins[2], None, &a)
            .get("runtimeConfig")
            .is_none());
    }
}
