//! A real `redis-server` on a free loopback port, with stop and restart for fallback tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{find_binary, free_port, scratch_dir, sh_quote, spawn_watchdog};

/// One `redis-server` process. Dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// The server every test in this binary shares; started on first use.
    ///
    /// # Panics
    /// When `redis-server` cannot be started: the tests cannot run without it, and the message
    /// says how to install it.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            #[allow(clippy::expect_used)]
            Self::start().expect("start the shared redis-server")
        })
    }

    /// Starts a private server (for tests that stop and restart Redis).
    pub fn start() -> anyhow::Result<Self> {
        let binary = find_binary("redis-server", &[PathBuf::from("/usr/bin")]).context(
            "redis-server is not installed: run `make deps` (apt-get install -y redis-server)",
        )?;
        let dir = scratch_dir("redis")?;
        spawn_watchdog(&format!(
            "kill -9 $(cat {pid}) 2>/dev/null; rm -rf {dir}",
            pid = sh_quote(&dir.join("redis.pid")),
            dir = sh_quote(&dir)
        ));
        let mut last_error = None;
        for _ in 0..5 {
            let server = Self {
                port: free_port(),
                dir: dir.clone(),
                binary: binary.clone(),
                child: Mutex::new(None),
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: as abrupt as a crash) and waits for it to exit.
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with an empty data set.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        // The kernel may hold the port for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn launch(&self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(self.dir.join("redis.pid"))
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!("redis-server exited with {status} on port {}", self.port);
            }
            if ping(self.port) {
                *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        bail!("redis-server did not answer PING on port {} within 10 s", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
