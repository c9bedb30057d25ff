//! A real Postgres cluster (initdb + pg_ctl) on a free loopback port, one database per test.
//!
//! Postgres refuses to run as root. When the tests run as root (CI, these machines), the cluster
//! is created and started as the `postgres` system user that Debian's package creates, through
//! `runuser`; otherwise as the current user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use sqlx::Connection;

use crate::process::{find_binary, free_port, scratch_dir, sh_quote, spawn_watchdog};

/// A running Postgres cluster. Dropping it stops the cluster and removes its directory.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
}

/// A database created for one test, with its URL.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl PostgresServer {
    /// The cluster every test in this binary shares; started on first use.
    ///
    /// # Panics
    /// When Postgres cannot be started; the message says what is missing.
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            #[allow(clippy::expect_used)]
            Self::start().expect("start the shared Postgres cluster")
        })
    }

    /// Creates and starts a private cluster.
    pub fn start() -> anyhow::Result<Self> {
        let bin_dir = postgres_bin_dir().context(
            "Postgres is not installed: run `make deps` (apt-get install -y postgresql)",
        )?;
        let run_as = running_as_root().then(|| "postgres".to_owned());
        let dir = scratch_dir("postgres")?;
        let data = dir.join("data");
        if let Some(user) = &run_as {
            let chown = Command::new("chown")
                .args([user.as_str(), &dir.display().to_string()])
                .output()
                .context("chown the Postgres directory")?;
            ensure_success("chown", &chown)?;
        }
        spawn_watchdog(&format!(
            "{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pg_ctl = wrap_user(run_as.as_deref(), &sh_quote(&bin_dir.join("pg_ctl"))),
            data = sh_quote(&data),
            dir = sh_quote(&dir),
        ));

        let mut server = Self { port: 0, dir, bin_dir, run_as };
        let initdb = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("run initdb")?;
        ensure_success("initdb", &initdb)?;

        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("Postgres did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of a database on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database with a unique name for one test.
    pub async fn create_database(&self) -> anyhow::Result<TestDatabase> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .context("connect to the test cluster")?;
        // `name` is a UUID we generated: nothing from outside reaches this statement.
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await
            .context("create the test database")?;
        admin.close().await.ok();
        Ok(TestDatabase { url: self.url(&name), name })
    }

    /// Stops the cluster abruptly (immediate mode, like a crash).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "immediate", "-w"])
            .output();
    }

    /// Starts the stopped cluster again on the same port; the data survives.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.pg_ctl_start()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .output()
            .context("run pg_ctl start")?;
        ensure_success("pg_ctl start", &output)
    }

    fn command(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command.stdin(Stdio::null()).current_dir(&self.dir);
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    // Newest major version first.
    versions.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    find_binary("pg_ctl", &versions).and_then(|p| {
        let dir = p.parent()?.to_path_buf();
        dir.join("initdb").is_file().then_some(dir)
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn wrap_user(user: Option<&str>, command: &str) -> String {
    match user {
        Some(user) => format!("runuser -u {user} -- {command}"),
        None => command.to_owned(),
    }
}

fn ensure_success(what: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
