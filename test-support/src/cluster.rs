//! Local Redis Clusters: three primaries, optionally with a replica each, that a test can kill
//! and bring back.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::server::{ask_tcp, find_binary, unique_prefix, wait_until, HOW_TO_GET_REDIS};

/// How long a node may be silent before the cluster fails it over.
const NODE_TIMEOUT_MS: &str = "2000";

/// A local Redis Cluster this process started, killed on drop.
///
/// `REDIS_CLUSTER_URLS` (comma-separated) points [`TestCluster::start`] at a cluster you run
/// instead; [`TestCluster::start_with_replicas`] always starts its own, since it kills nodes.
pub struct TestCluster {
    urls: Vec<String>,
    nodes: Vec<Node>,
    binary: PathBuf,
    dir: Option<PathBuf>,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

impl TestCluster {
    /// `REDIS_CLUSTER_URLS`, else three spawned `redis-server --cluster-enabled yes` primaries
    /// joined with `redis-cli --cluster create`; panics with how to get Redis when neither works.
    pub fn start() -> Self {
        if let Some(urls) = std::env::var("REDIS_CLUSTER_URLS")
            .ok()
            .filter(|u| !u.is_empty())
        {
            return Self {
                urls: urls.split(',').map(str::to_owned).collect(),
                nodes: Vec::new(),
                binary: PathBuf::new(),
                dir: None,
            };
        }
        Self::spawn(0)
    }

    /// Three primaries with one replica each, on spawned nodes that fail over after
    /// 2 s of silence.
    pub fn start_with_replicas() -> Self {
        Self::spawn(1)
    }

    fn spawn(replicas: usize) -> Self {
        let binary = find_binary().unwrap_or_else(|| panic!("{HOW_TO_GET_REDIS}"));
        Self::try_spawn(binary, replicas)
            .unwrap_or_else(|e| panic!("the test cluster would not start: {e}"))
    }

    fn try_spawn(binary: PathBuf, replicas: usize) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(unique_prefix("cluster").replace(':', "-"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cluster = Self {
            urls: Vec::new(),
            nodes: Vec::new(),
            binary,
            dir: Some(dir.clone()),
        };
        for _ in 0..3 * (1 + replicas) {
            let taken: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
            let (child, port) = start_node(&cluster.binary, &dir, &taken)?;
            cluster.nodes.push(Node {
                port,
                child: Some(child),
            });
            cluster.urls.push(format!("redis://127.0.0.1:{port}"));
        }
        let output = Command::new(cli(&cluster.binary))
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            ));
        }
        for node in &cluster.nodes {
            wait_for_cluster_ok(node.port)?;
        }
        if replicas > 0 {
            for node in &cluster.nodes {
                wait_until(Duration::from_secs(30), "sync its replicas", || {
                    let info = ask_tcp(node.port, "INFO replication")?;
                    Ok(info.contains("role:master\r\nconnected_slaves:1")
                        || info.contains("master_link_status:up"))
                })?;
            }
        }
        Ok(cluster)
    }

    /// One URL per node.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The port of the primary that serves hash slot 0 now.
    pub fn primary_of_slot_zero(&self) -> u16 {
        slot_zero_owner(self.alive_port()).expect("a healthy primary serves slot 0")
    }

    /// Kills the node on `port` at once (SIGKILL: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        let node = self.node(port);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a replica has taken over the slots of the killed node on `port` and the
    /// cluster serves every slot again.
    pub fn wait_for_failover(&self, port: u16) {
        let alive = self.alive_port();
        let dead = format!("127.0.0.1:{port}@");
        wait_until(Duration::from_secs(60), "fail the node over", || {
            let nodes = ask_tcp(alive, "CLUSTER NODES")?;
            // `fail?` is one node's suspicion; `fail` is the cluster's verdict.
            let failed = nodes.lines().any(|line| {
                let mut fields = line.split(' ');
                fields.nth(1).is_some_and(|addr| addr.starts_with(&dead))
                    && fields
                        .next()
                        .is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
            });
            let info = ask_tcp(alive, "CLUSTER INFO")?;
            let moved = slot_zero_owner(alive).is_some_and(|owner| owner != port);
            Ok(failed && moved && info.contains("cluster_state:ok"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the killed node on `port` again, with its old cluster config: it rejoins as a
    /// replica of the node that took its place. Waits until its replication link is up.
    pub fn restart(&mut self, port: u16) {
        let dir = self.dir.clone().expect("a cluster this process started");
        let child = launch(&self.binary, &dir, port).unwrap_or_else(|e| panic!("{e}"));
        self.node(port).child = Some(child);
        let mut last = String::new();
        wait_until(Duration::from_secs(60), "rejoin as a replica", || {
            last = ask_tcp(port, "INFO replication")?;
            Ok(last.contains("role:slave") && last.contains("master_link_status:up"))
        })
        .unwrap_or_else(|e| panic!("{e}; last INFO replication: {last}"));
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on {port}"))
    }

    fn alive_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("a live node")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The healthy primary that serves hash slot 0, as `alive` sees the cluster.
fn slot_zero_owner(alive: u16) -> Option<u16> {
    let nodes = ask_tcp(alive, "CLUSTER NODES").ok()?;
    nodes
        .lines()
        .filter(|line| line.contains("master") && !line.contains("fail"))
        .find(|line| line.split(' ').skip(8).any(|range| range.starts_with("0-")))
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|addr| addr.split(['@', ':']).nth(1))
        .and_then(|port| port.parse().ok())
}

fn cli(binary: &Path) -> PathBuf {
    let cli = binary.with_file_name("redis-cli");
    if cli.is_file() {
        cli
    } else {
        PathBuf::from("redis-cli")
    }
}

fn wait_for_cluster_ok(port: u16) -> Result<(), String> {
    wait_until(Duration::from_secs(20), "report cluster_state:ok", || {
        let info = ask_tcp(port, "CLUSTER INFO")?;
        Ok(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384"))
    })
}

/// Starts one cluster node on a free port pair and waits until it answers as itself: a port can
/// be taken by another test between choosing and binding it, so a node that dies, or a port
/// answered by another process, means trying another port.
fn start_node(binary: &Path, dir: &Path, taken: &[u16]) -> Result<(Child, u16), String> {
    let mut last = String::new();
    for _ in 0..10 {
        let port = free_cluster_port(taken)?;
        match launch(binary, dir, port) {
            Ok(child) => return Ok((child, port)),
            Err(e) => last = e,
        }
    }
    Err(format!("no cluster node would start: {last}"))
}

/// Runs `redis-server` as a cluster node on `port`, its files in `dir/<port>`, and waits until
/// this very process answers there.
fn launch(binary: &Path, dir: &Path, port: u16) -> Result<Child, String> {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            NODE_TIMEOUT_MS,
        ])
        // A replica may take over however long it was cut off: tests kill nodes on purpose.
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--cluster-config-file")
        .arg(node_dir.join("nodes.conf"))
        .arg("--dir")
        .arg(&node_dir)
        .arg("--logfile")
        .arg(node_dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let ours = format!("process_id:{}\r\n", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("node on port {port} exited ({status})"));
        }
        if ask_tcp(port, "INFO server").is_ok_and(|info| info.contains(&ours)) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("node on port {port} did not answer within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port(taken: &[u16]) -> Result<u16, String> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port pair for a cluster node".to_owned())
}
