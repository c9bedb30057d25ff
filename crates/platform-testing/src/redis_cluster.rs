//! A real three-master Redis Cluster of `redis-server` processes on free loopback ports.
//!
//! Centralized Redis accepts any multi-key script or `MULTI`; only a cluster answers `CROSSSLOT`
//! when the keys of one operation hash to different slots. Tests of cluster safety therefore run
//! against this fixture rather than trusting the hash tags by reading them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{find_binary, free_port, scratch_dir, sh_quote, spawn_watchdog};
use crate::redis::ping;

/// Masters in the cluster: the smallest count `redis-cli --cluster create` accepts.
const MASTERS: usize = 3;

/// Three `redis-server` processes in cluster mode with every slot assigned (no replicas).
/// Dropping it stops them and removes their directory.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    dir: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl RedisCluster {
    /// The cluster every test in this binary shares; started on first use.
    ///
    /// # Panics
    /// When the cluster cannot be started: the tests cannot run without it, and the message says
    /// what is missing.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            #[allow(clippy::expect_used)]
            Self::start().expect("start the shared redis cluster")
        })
    }

    /// Starts a private cluster and waits until every node reports `cluster_state:ok`.
    pub fn start() -> anyhow::Result<Self> {
        let server = find_binary("redis-server", &[PathBuf::from("/usr/bin")]).context(
            "redis-server is not installed: run `make deps` (apt-get install -y redis-server)",
        )?;
        let cli = find_binary("redis-cli", &[PathBuf::from("/usr/bin")]).context(
            "redis-cli is not installed (it creates the cluster): apt-get install -y redis-tools",
        )?;
        let dir = scratch_dir("redis-cluster")?;
        // Pid files appear as the nodes start; the watchdog kills whichever exist at exit.
        spawn_watchdog(&format!(
            "for p in {dir}/*/redis.pid; do kill -9 $(cat \"$p\") 2>/dev/null; done; rm -rf {dir}",
            dir = sh_quote(&dir)
        ));
        let cluster = Self { ports: Vec::new(), dir, children: Mutex::new(Vec::new()) };
        let cluster = cluster.with_nodes(&server)?;
        cluster.create(&cli)?;
        cluster.wait_until_ok(&cli)?;
        Ok(cluster)
    }

    /// `redis-cluster://127.0.0.1:<first node>`: the seed node; the client discovers the others.
    pub fn url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.ports.first().copied().unwrap_or(0))
    }

    /// The client ports of the masters.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Starts the nodes, each in its own directory (a node rewrites its `nodes.conf`). A node
    /// whose port was taken meanwhile is retried on new ports.
    fn with_nodes(mut self, server: &Path) -> anyhow::Result<Self> {
        for index in 0..MASTERS {
            let node_dir = self.dir.join(format!("node{index}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut last_error = None;
            for _ in 0..5 {
                let (port, bus_port) = (free_port(), free_port());
                match launch_node(server, &node_dir, port, bus_port) {
                    Ok(child) => {
                        self.ports.push(port);
                        self.children.get_mut().unwrap_or_else(|p| p.into_inner()).push(child);
                        last_error = None;
                        break;
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            if let Some(error) = last_error {
                return Err(error);
            }
        }
        Ok(self)
    }

    fn create(&self, cli: &Path) -> anyhow::Result<()> {
        let mut command = Command::new(cli);
        command.args(["--cluster", "create"]);
        for port in &self.ports {
            command.arg(format!("127.0.0.1:{port}"));
        }
        let output = command
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("run redis-cli --cluster create")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Every node must agree that all slots are served before a client reads the slot map.
    fn wait_until_ok(&self, cli: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut waiting = self.ports.clone();
        while !waiting.is_empty() {
            if Instant::now() > deadline {
                bail!("redis cluster nodes {waiting:?} did not reach cluster_state:ok within 30 s");
            }
            waiting.retain(|port| !cluster_ok(cli, *port));
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn stop(&self) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for mut child in children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts one cluster-enabled node (its bus on `bus_port`, so the usual port + 10 000 need not be
/// free) and waits for it to answer `PING`.
fn launch_node(server: &Path, dir: &Path, port: u16, bus_port: u16) -> anyhow::Result<Child> {
    let _ = std::fs::remove_file(dir.join("nodes.conf"));
    let mut child = Command::new(server)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-port", &bus_port.to_string()])
        .args(["--cluster-node-timeout", "5000"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn redis-server (cluster node)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("redis-server (cluster node) exited with {status} on port {port}");
        }
        if ping(port) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    bail!("redis-server (cluster node) did not answer PING on port {port} within 10 s")
}

/// Whether the node on `port` says `cluster_state:ok` and knows all three masters.
fn cluster_ok(cli: &Path, port: u16) -> bool {
    let output = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "cluster", "info"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(output) = output else { return false };
    let info = String::from_utf8_lossy(&output.stdout);
    info.contains("cluster_state:ok")
        && info.contains("cluster_slots_ok:16384")
        && info.contains(&format!("cluster_known_nodes:{MASTERS}"))
}
