//! ADD/DEL end to end: scripted fake plugins (ordering, chaining, rollback) and Debian's
//! real plugins in a private netns, bridge and subnet (ipMasq off, no outside address).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::error::Error;

const REAL_BIN_DIR: &str = "/usr/lib/cni";

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

fn parse_list(v: &Value) -> NetworkConfigList {
    NetworkConfigList::parse(v.to_string().as_bytes(), Path::new("test.conflist")).unwrap()
}

// ---- fake plugins: no root needed -------------------------------------------------------

/// A shell plugin that logs each call to `log`, keeps its stdin, and prints `result` on ADD
/// (or fails with a CNI error when `result` is None).
fn fake_plugin(dir: &Path, name: &str, result: Option<&Value>) {
    let log = dir.join("calls.log");
    let out = match result {
        Some(r) => format!("echo '{r}'"),
        None => r#"echo '{"code":11,"msg":"boom","details":"disk on fire"}'; exit 1"#.into(),
    };
    let body = format!(
        "#!/bin/sh\n\
         echo \"$CNI_COMMAND {name} $CNI_IFNAME netns=$CNI_NETNS $CNI_ARGS\" >> {log}\n\
         cat > {dir}/{name}.$CNI_COMMAND.json\n\
         [ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         {out}\n",
        log = log.display(),
        dir = dir.display(),
    );
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(" IgnoreUnknown").next().unwrap_or("").to_string())
        .collect()
}

fn stdin_of(dir: &Path, name: &str, cmd: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.{cmd}.json"))).unwrap()).unwrap()
}

fn fake_setup() -> (tempfile::TempDir, Cni, Value) {
    let d = tempfile::tempdir().unwrap();
    let a_result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
        "ips": [{"address": "fd00::5/64", "interface": 0}, {"address": "10.9.0.5/24", "interface": 0}]
    });
    fake_plugin(d.path(), "loopback", Some(&json!({"cniVersion": "0.3.1"})));
    fake_plugin(d.path(), "a", Some(&a_result));
    fake_plugin(d.path(), "b", Some(&a_result));
    fake_plugin(d.path(), "fail", None);
    let cni = Cni::new(d.path().join("net.d"), vec![d.path().to_path_buf()]);
    (d, cni, a_result)
}

#[tokio::test]
async fn fake_add_chains_results_and_del_reverses() {
    let (d, cni, a_result) = fake_setup();
    let list = parse_list(&json!({"cniVersion": "1.0.0", "name": "fake", "plugins": [
        {"type": "a"},
        {"type": "b", "capabilities": {"portMappings": true}}
    ]}));
    let mut args = pod_args("pod-1");
    args.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    let net = cni.add(&list, Path::new("/ns"), &args).await.unwrap();
    let v4: IpAddr = "10.9.0.5".parse().unwrap();
    let v6: IpAddr = "fd00::5".parse().unwrap();
    assert_eq!(net.ips, vec![v4, v6]);
    // Loopback runs beside the chain; the chain itself runs in order.
    let (lo, chain) = split_loopback(calls(d.path()));
    assert_eq!(lo, ["ADD loopback lo netns=/ns"]);
    assert_eq!(chain, ["ADD a eth0 netns=/ns", "ADD b eth0 netns=/ns"]);
    let log = std::fs::read_to_string(d.path().join("calls.log")).unwrap();
    assert!(log.contains(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=pod-1;K8S_POD_UID=uid-1"
    ));
    let a_in = stdin_of(d.path(), "a", "ADD");
    assert_eq!(a_in["name"], "fake");
    assert!(a_in.get("prevResult").is_none() && a_in.get("runtimeConfig").is_none());
    let b_in = stdin_of(d.path(), "b", "ADD");
    assert_eq!(b_in["prevResult"], a_result);
    assert_eq!(b_in["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);

    std::fs::remove_file(d.path().join("calls.log")).unwrap();
    // The netns is gone by now: CNI_NETNS is empty, DEL still runs every plugin.
    cni.del_with_result(
        &list,
        Some(&d.path().join("gone")),
        &args,
        Some(&net.result_json),
    )
    .await
    .unwrap();
    let (lo, chain) = split_loopback(calls(d.path()));
    assert_eq!(lo, ["DEL loopback lo netns="]);
    assert_eq!(chain, ["DEL b eth0 netns=", "DEL a eth0 netns="]);
    assert_eq!(stdin_of(d.path(), "a", "DEL")["prevResult"], a_result);
}

#[tokio::test]
async fn fake_failure_rolls_back_everything_that_ran() {
    let (d, cni, _) = fake_setup();
    let list = parse_list(&json!({"cniVersion": "1.0.0", "name": "fake", "plugins": [
        {"type": "a"}, {"type": "fail"}, {"type": "b"}
    ]}));
    let e = cni
        .add(&list, Path::new("/ns"), &pod_args("pod-2"))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Network(_)));
    assert!(
        msg.contains("\"fail\" ADD failed: boom: disk on fire"),
        "{msg}"
    );
    let (lo, chain) = split_loopback(calls(d.path()));
    assert_eq!(
        lo,
        ["ADD loopback lo netns=/ns", "DEL loopback lo netns=/ns"]
    );
    assert_eq!(
        chain,
        [
            "ADD a eth0 netns=/ns",
            "ADD fail eth0 netns=/ns",
            "DEL fail eth0 netns=/ns",
            "DEL a eth0 netns=/ns",
        ]
    );
}

#[tokio::test]
async fn fake_unreadable_result_is_undone() {
    let (d, cni, _) = fake_setup();
    fake_plugin(
        d.path(),
        "garbled",
        Some(&json!({"cniVersion": "1.0.0", "ips": [{"address": "nope/24"}]})),
    );
    let list = parse_list(
        &json!({"cniVersion": "1.0.0", "name": "fake", "plugins": [{"type": "garbled"}]}),
    );
    let e = cni
        .add(&list, Path::new("/ns"), &pod_args("pod-4"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bad address"), "{e}");
    let (lo, chain) = split_loopback(calls(d.path()));
    assert_eq!(
        lo,
        ["ADD loopback lo netns=/ns", "DEL loopback lo netns=/ns"]
    );
    assert_eq!(
        chain,
        ["ADD garbled eth0 netns=/ns", "DEL garbled eth0 netns=/ns"]
    );
}

#[tokio::test]
async fn fake_missing_plugin_runs_nothing_and_del_keeps_going() {
    let (d, cni, _) = fake_setup();
    let list = parse_list(&json!({"cniVersion": "1.0.0", "name": "fake", "plugins": [
        {"type": "a"}, {"type": "berth-no-such-plugin"}
    ]}));
    let e = cni
        .add(&list, Path::new("/ns"), &pod_args("pod-3"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("\"berth-no-such-plugin\" not found"),
        "{e}"
    );
    assert!(calls(d.path()).is_empty());
    // DEL tries every plugin and reports the first failure.
    let e = cni.del(&list, None, &pod_args("pod-3")).await.unwrap_err();
    assert!(e.to_string().contains("berth-no-such-plugin"), "{e}");
    let (lo, chain) = split_loopback(calls(d.path()));
    assert_eq!(
        (lo.as_slice(), chain.as_slice()),
        (
            &["DEL loopback lo netns=".to_string()][..],
            &["DEL a eth0 netns=".to_string()][..]
        )
    );
}

// ---- real plugins: root, a private netns, bridge and subnet ------------------------------

/// Everything one real-plugin test makes, torn down on drop even when an assertion fails.
struct Fixture {
    dir: tempfile::TempDir,
    cni: Cni,
    list: NetworkConfigList,
    args: PodNetArgs,
    netns: NetNs,
    bridge: String,
    /// Third octet of 10.231.x.0/24.
    octet: u32,
    children: Vec<Child>,
}

impl Fixture {
    /// Test `n` (distinct per test) gets bridge `bt<pid%1000>-<n>` and a subnet of its own.
    /// `extra` plugins follow bridge+host-local; `extra_bin` is a second bin dir.
    fn new(n: u32, extra: Vec<Value>, extra_bin: Option<PathBuf>) -> Fixture {
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let octet = (pid * 4 + n) % 250 + 1;
        let bridge = format!("bt{}-{n}", pid % 1000);
        let net_name = format!("berth-test-{pid}-{n}");
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.231.{octet}.0/24")}]],
                "dataDir": dir.path().join("ipam"),
            }
        })];
        plugins.extend(extra);
        let list =
            parse_list(&json!({"cniVersion": "1.0.0", "name": net_name, "plugins": plugins}));
        let mut bin_dirs = vec![PathBuf::from(REAL_BIN_DIR)];
        bin_dirs.extend(extra_bin);
        let cni = Cni::new(dir.path().join("net.d"), bin_dirs);
        let netns = NetNs::create(&dir.path().join("netns"), "pod").unwrap();
        Fixture {
            args: pod_args(&format!("berthtest-{pid}-{n}")),
            dir,
            cni,
            list,
            netns,
            bridge,
            octet,
            children: Vec::new(),
        }
    }

    fn gateway(&self) -> IpAddr {
        format!("10.231.{}.1", self.octet).parse().unwrap()
    }

    /// The IPs host-local still holds for this network (one file per address).
    fn allocated(&self) -> Vec<String> {
        let d = self.dir.path().join("ipam").join(&self.list.name);
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn links_in_netns(&self) -> Vec<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path.display()))
            .args(["ip", "-o", "link"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    /// busybox httpd on port 8080 inside the netns; nsenter execs it, so the pid is ours.
    fn start_httpd(&mut self) {
        let www = self.dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "berth-ok\n").unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path.display()))
            .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
            .arg(&www)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // DEL again (idempotent) so a failed test leaves no portmap rules or veth. The test
        // runtime cannot block here, so a thread of its own runs it.
        let (cni, list, args, ns) = (
            self.cni.clone(),
            self.list.clone(),
            self.args.clone(),
            self.netns.path.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(cni.del(&list, Some(&ns), &args));
            }
        })
        .join();
        let _ = self.netns.remove();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// GET / over TCP, retried until `deadline` (httpd may still be starting).
fn http_get(addr: SocketAddr, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() >= deadline => return Err(format!("{addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(out.status.success(), "iptables: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn real_add_serves_pod_ip_and_port_mapping_then_del_releases_all() {
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let mut fx = Fixture::new(1, vec![portmap], None);
    let host_port = 38000 + (std::process::id() % 1000) as i32;
    fx.args.port_mappings = vec![PortMapping {
        host_port,
        container_port: 8080,
        protocol: "TCP".into(),
        host_ip: fx.gateway().to_string(),
    }];

    let net = fx
        .cni
        .add(&fx.list, &fx.netns.path, &fx.args)
        .await
        .unwrap();
    assert_eq!(net.ips.len(), 1, "{:?}", net.result_json);
    let ip = net.ips[0];
    assert!(
        ip.to_string().starts_with(&format!("10.231.{}.", fx.octet)),
        "{ip}"
    );
    assert_eq!(fx.allocated(), [ip.to_string()]);
    let mut links = fx.links_in_netns();
    links.sort();
    assert_eq!(links, ["eth0", "lo"]);
    let addr = Command::new("nsenter")
        .arg(format!("--net={}", fx.netns.path.display()))
        .args(["ip", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("inet {ip}/24")));
    let lo = Command::new("nsenter")
        .arg(format!("--net={}", fx.netns.path.display()))
        .args(["ip", "-o", "link", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains(",UP"),
        "lo is down"
    );

    // The portmap chain for this container exists, tagged with its id.
    let rules = nat_rules();
    let dn_chain = rules
        .lines()
        .filter(|l| l.contains(&fx.args.sandbox_id))
        .find_map(|l| {
            l.split(" -j ")
                .nth(1)
                .map(|c| c.split(' ').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("no portmap rule for the container:\n{rules}"));

    fx.start_httpd();
    let direct = http_get(SocketAddr::new(ip, 8080), Duration::from_secs(10)).unwrap();
    assert!(direct.contains("berth-ok"), "{direct}");
    let mapped = http_get(
        SocketAddr::new(fx.gateway(), host_port as u16),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(mapped.contains("berth-ok"), "{mapped}");

    fx.cni
        .del_with_result(
            &fx.list,
            Some(&fx.netns.path),
            &fx.args,
            Some(&net.result_json),
        )
        .await
        .unwrap();
    assert!(fx.allocated().is_empty(), "{:?}", fx.allocated());
    assert_eq!(fx.links_in_netns(), ["lo"]);
    let rules = nat_rules();
    assert!(!rules.contains(&fx.args.sandbox_id), "{rules}");
    assert!(!rules.contains(&format!("-N {dn_chain}\n")), "{rules}");
    // DEL twice is fine (kubelet retries).
    fx.cni
        .del(&fx.list, Some(&fx.netns.path), &fx.args)
        .await
        .unwrap();

    fx.netns.remove().unwrap();
    assert!(!fx.netns.path.exists());
    let del = Command::new("ip")
        .args(["link", "del", &fx.bridge])
        .status()
        .unwrap();
    assert!(del.success());
}

#[tokio::test]
async fn real_missing_second_plugin_errors_and_allocates_nothing() {
    let fx = Fixture::new(2, vec![json!({"type": "berth-no-such-plugin"})], None);
    let e = fx
        .cni
        .add(&fx.list, &fx.netns.path, &fx.args)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("berth-no-such-plugin"), "{e}");
    assert!(fx.allocated().is_empty());
    assert_eq!(fx.links_in_netns(), ["lo"]);
}

#[tokio::test]
async fn real_failing_second_plugin_releases_the_first_plugins_ip() {
    let bin = tempfile::tempdir().unwrap();
    fake_plugin(bin.path(), "berth-fail", None);
    let fx = Fixture::new(
        3,
        vec![json!({"type": "berth-fail"})],
        Some(bin.path().to_path_buf()),
    );
    let e = fx
        .cni
        .add(&fx.list, &fx.netns.path, &fx.args)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("\"berth-fail\" ADD failed: boom"),
        "{e}"
    );
    // The bridge plugin did run (it allocated, then was rolled back).
    assert_eq!(
        calls(bin.path())[0],
        format!("ADD berth-fail eth0 netns={}", fx.netns.path.display())
    );
    assert!(fx.allocated().is_empty(), "{:?}", fx.allocated());
    assert_eq!(fx.links_in_netns(), ["lo"]);
}

/// (loopback calls, the chain's calls): the two run side by side, each in its own order.
fn split_loopback(calls: Vec<String>) -> (Vec<String>, Vec<String>) {
    calls.into_iter().partition(|c| c.contains(" loopback lo "))
}

#[test]
fn a_pin_file_without_its_namespace_is_not_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::create(&dir.path().join("netns"), "pinned").unwrap();
    assert!(NetNs::is_pinned(&ns.path));
    // What a crash between the pin file's creation and its mount leaves.
    let bare = dir.path().join("netns").join("bare");
    std::fs::write(&bare, b"").unwrap();
    assert!(!NetNs::is_pinned(&bare));
    ns.remove().unwrap();
    assert!(!NetNs::is_pinned(&ns.path));
}
