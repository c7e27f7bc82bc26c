//! Pod attribution on the real kernel: a real cgroup with a kubelet-like systemd path (nested
//! under a prefix of the test's own, as on kind or k3s nodes), a pod log directory naming its
//! pod, and real programs started inside that cgroup (a Python HTTP server and curl) making
//! connections in the test's namespace: an accepted server socket, a client, and a client
//! refused by a closed port (the RST arrives in softirq, where the current task is not the
//! socket's owner). Their flows, `flow <cookie>`, an anomaly and a metric series must name the
//! pod; the test's own sockets (outside the cgroup) must be `host`.
use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::process::{Background, Pipe};

use crate::{
    common::{
        api::Daemon, can_run_kernel_tests, cannot_run, http, netns::TestNetns,
        prometheus::promtool_check_metrics, workload,
    },
    KERNEL,
};

/// `promtool` is on PATH (set-up installs Debian's prometheus package).
fn which_promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

const UID: &str = "6f2a1c3e-9b4d-4e8f-a1b2-c3d4e5f60718";
const CONTAINER: &str = "9a8b7c6d5e4f30211a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
const SERVER_PORT: u16 = 8080;
/// The pod's server (`python3 -m http.server`); Debian's, not a version manager's shim.
const PYTHON3: &str = "/usr/bin/python3";
const CLOSED_PORT: u16 = 8081;

/// The cgroup2 mount, from /proc/mounts (a hybrid host has it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount")
}

/// The test's cgroup tree; dropping it moves every process left in it to the root cgroup and
/// removes the directories, deepest first, on every path (panics included).
struct PodCgroup {
    root: PathBuf,
    /// From the test's prefix down to the container scope.
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn create(root: &Path) -> PodCgroup {
        let prefix = root.join(format!("lpt-pods-{}", std::process::id()));
        let uid_ = UID.replace('-', "_");
        let levels = [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid_}.slice"),
            format!("cri-containerd-{CONTAINER}.scope"),
        ];
        let mut dirs = vec![prefix.clone()];
        let mut at = prefix;
        for l in levels {
            at = at.join(l);
            dirs.push(at.clone());
        }
        let cg = PodCgroup {
            root: root.to_path_buf(),
            dirs,
        };
        for d in &cg.dirs {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        cg
    }

    fn scope(&self) -> &Path {
        self.dirs.last().expect("levels")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            // A process that just exited may hold the directory for a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if d.exists() {
                eprintln!("could not remove cgroup {}", d.display());
            }
        }
    }
}

/// `argv` started in namespace `ns` as a process of cgroup `scope`: the shell moves itself
/// into the cgroup before it execs, so every socket the program creates is the pod's.
fn in_pod(scope: &Path, ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@""#)
        .arg(scope)
        .arg(ns)
        .args(argv);
    cmd
}

fn flows_of(flows: &Value) -> &Vec<Value> {
    flows.as_array().expect("flows array")
}

fn port(addr: &Value) -> u16 {
    addr.as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .expect("an address")
}

#[test]
fn flows_anomalies_and_metrics_name_the_pod_of_a_real_cgroup() {
    if !can_run_kernel_tests("pods") {
        return;
    }
    let tools_missing = !Path::new(PYTHON3).exists()
        || !Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if tools_missing
        && !cannot_run(
            "pods",
            &format!("the pod's programs need {PYTHON3} and curl"),
        )
    {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let root = cgroup2_root();
    let cgroup = PodCgroup::create(&root);
    let ns = TestNetns::new("pods");

    // The kubelet's log directory for the pod, and a config that reads it.
    let tmp = TempDir(std::env::temp_dir().join(format!("lpt-podlogs-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    let logs = tmp.0.join("pods");
    std::fs::create_dir_all(logs.join(format!("shop_cart_{UID}"))).unwrap();
    // A hostile entry is rejected and counted, not fatal.
    std::fs::create_dir_all(logs.join("shop_bad\u{1b}[31m_name")).unwrap();
    let config = tmp.0.join("linkprobe.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "[kubernetes]\npods = \"logs\"\npod_log_dir = {:?}\npod_log_rescan_secs = 1\ncgroup_rescan_ms = 0",
        logs.display().to_string()
    )
    .unwrap();
    let metrics: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics_arg = metrics.to_string();
    let config_arg = config.display().to_string();
    let daemon = Daemon::start(
        &ns.name,
        "pods",
        &[
            "--config",
            &config_arg,
            "--metrics-addr",
            &metrics_arg,
            "--cgroup-root",
            root.to_str().unwrap(),
        ],
    );

    // The pod: a real HTTP server, a client fetching from it, a client refused by a closed port.
    let port_arg = SERVER_PORT.to_string();
    let mut server = Background::start(
        &mut in_pod(
            cgroup.scope(),
            &ns.name,
            &[
                PYTHON3,
                "-u",
                "-m",
                "http.server",
                &port_arg,
                "--bind",
                "127.0.0.1",
            ],
        ),
        Some("[http.server]"),
    )
    .expect("start python3 -m http.server");
    server
        .wait_for(Pipe::Stdout, Duration::from_secs(20), |l| {
            l.contains("Serving HTTP")
        })
        .expect("http.server ready");
    let url = format!("http://127.0.0.1:{SERVER_PORT}/");
    let fetched = in_pod(
        cgroup.scope(),
        &ns.name,
        &["curl", "-sf", "-o", "/dev/null", &url],
    )
    .status()
    .expect("curl");
    assert!(fetched.success(), "curl {url}: {fetched}");
    let closed = format!("http://127.0.0.1:{CLOSED_PORT}/");
    for _ in 0..3 {
        let refused = in_pod(
            cgroup.scope(),
            &ns.name,
            &["curl", "-s", "-o", "/dev/null", &closed],
        )
        .status()
        .expect("curl");
        // curl's exit code 7: failed to connect (refused).
        assert_eq!(refused.code(), Some(7), "curl {closed}: {refused}");
    }
    // A host process (this test) refused too: its flow is `host`.
    let host_refused = ns.enter(|| workload::refused_connects(CLOSED_PORT, 1));

    // Flows: the pod's three kinds of socket, found by their ports, all owned by shop/cart.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (pod_flows, all) = loop {
        let pod_flows = daemon.json(&[
            "flows",
            "--namespace",
            "shop",
            "--pod",
            "cart",
            "--limit",
            "1000",
        ]);
        let all = daemon.json(&["flows", "--limit", "1000"]);
        let list = flows_of(&pod_flows);
        let refused = list
            .iter()
            .filter(|f| port(&f["remote"]) == CLOSED_PORT && f["close"] == "refused")
            .count();
        let accepted = list
            .iter()
            .any(|f| f["role"] == "server" && port(&f["local"]) == SERVER_PORT);
        let client = list
            .iter()
            .any(|f| f["role"] == "client" && port(&f["remote"]) == SERVER_PORT);
        if (refused >= 3 && accepted && client) || Instant::now() > deadline {
            break (pod_flows, all);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // top --pods ranks this node's pods: the pod's refused connects and RSTs. Asked as soon as
    // the flows are in: its window is the last 10 s, which the checks below can outlast under
    // software emulation.
    let top = daemon.json(&["top", "--pods", "--once", "--by", "failure"]);
    let rows = top["rows"].as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["scope"] == "pod shop/cart")
        .unwrap_or_else(|| panic!("top --pods: {top:#}"));
    // At least one of each: the three refusals are seconds apart under software emulation and
    // may straddle the window. The exact counts are the metric series' below.
    assert!(row["failures"].as_u64() >= Some(1), "{row}");
    assert!(row["rsts"].as_u64() >= Some(1), "{row}");
    assert!(
        rows.iter()
            .all(|r| r["scope"].as_str().unwrap().starts_with("pod ")),
        "{top:#}"
    );
    eprintln!("== top --pods: {row}");

    let list = flows_of(&pod_flows);
    eprintln!(
        "== flows --namespace shop --pod cart -o json: {} flows",
        list.len()
    );
    let refused: Vec<&Value> = list
        .iter()
        .filter(|f| port(&f["remote"]) == CLOSED_PORT && f["close"] == "refused")
        .collect();
    assert!(
        refused.len() >= 3,
        "refused pod flows: {pod_flows:#}\nall flows: {all:#}"
    );
    assert!(
        list.iter()
            .any(|f| f["role"] == "server" && port(&f["local"]) == SERVER_PORT),
        "the accepted server socket: {pod_flows:#}"
    );
    assert!(
        list.iter()
            .any(|f| f["role"] == "client" && port(&f["remote"]) == SERVER_PORT),
        "curl's connection to the server: {pod_flows:#}"
    );
    for f in list {
        assert_eq!(f["namespace"], "shop", "{f:#}");
        assert_eq!(f["pod"], "cart", "{f:#}");
        assert_eq!(f["owner"], "shop/cart", "{f:#}");
        assert_eq!(f["pod_uid"], UID, "{f:#}");
        assert_eq!(f["container_id"], CONTAINER, "{f:#}");
        assert_eq!(f["runtime"], "containerd", "{f:#}");
    }
    for c in &host_refused {
        let f = flows_of(&all)
            .iter()
            .find(|f| f["cookie"].as_u64() == Some(*c))
            .unwrap_or_else(|| panic!("host flow {c}: {all:#}"));
        assert_eq!(f["owner"], "host", "{f:#}");
        assert!(f.get("pod").is_none(), "{f:#}");
    }
    assert!(
        flows_of(&daemon.json(&["flows", "--namespace", "other"])).is_empty(),
        "no flow of another namespace"
    );

    // flow <cookie>: the story names the pod and the container.
    let cookie = refused[0]["cookie"].as_u64().unwrap().to_string();
    let story = daemon.ok(&["flow", &cookie]);
    eprintln!("== linkprobe flow {cookie}\n{story}");
    assert!(
        story.contains(&format!(
            "pod      shop/cart    container {} (containerd)",
            &CONTAINER[..12]
        )),
        "{story}"
    );
    let table = daemon.ok(&["flows", "--pod", "cart"]);
    assert!(table.lines().next().unwrap().contains("POD"), "{table}");
    assert!(
        table.contains(&format!("shop/cart/{}", &CONTAINER[..12])),
        "{table}"
    );

    // The refused connects raise connect_refused on the closed port's peer, naming the pod.
    let deadline = Instant::now() + Duration::from_secs(10);
    let anomaly = loop {
        let all = daemon.json(&["anomalies"]);
        let found = all["active"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(all["recent"].as_array().into_iter().flatten())
            .find(|a| {
                a["kind"] == "connect_refused"
                    && a["pods"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p == "shop/cart"))
            })
            .cloned();
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no anomaly names shop/cart: {all:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("== anomaly naming the pod: {anomaly}");

    // The pod's metric series.
    let deadline = Instant::now() + Duration::from_secs(10);
    let series = |event: &str| {
        format!(
            "linkprobe_pod_tcp_events_total{{namespace=\"shop\",pod=\"cart\",event=\"{event}\"}}"
        )
    };
    let body = loop {
        let body = http::get(metrics, "/metrics").expect("GET /metrics").text();
        if body.contains(&series("connect_refused")) || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
    };
    assert!(value(&series("connect_refused")) >= 3.0);
    assert!(
        value(&series("connection")) >= 5.0,
        "3 refused + curl + the accepted one"
    );
    assert!(
        body.contains(
            "linkprobe_pod_tcp_events_total{namespace=\"\",pod=\"host\",event=\"connect_refused\"}"
        ),
        "{body}"
    );
    for l in body
        .lines()
        .filter(|l| l.starts_with("linkprobe_pod_tcp_events_total"))
    {
        eprintln!("== {l}");
    }
    // The new family passes Prometheus's own lint, with the rest of the exposition.
    if which_promtool() {
        promtool_check_metrics(&body).unwrap_or_else(|e| panic!("{e}"));
    } else {
        eprintln!("promtool not installed: exposition not linted");
    }

    // status: the source in use.
    let status = daemon.ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("pods:"))
        .unwrap_or_else(|| panic!("{status}"));
    eprintln!("== status: {line}");
    assert!(
        line.contains("source pod-log-dirs (synced: 1 pods, 1 names rejected)"),
        "{line}"
    );

    drop(server);
    daemon.stop();
    drop(cgroup);
}

/// A directory of the test's, removed on every path.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
