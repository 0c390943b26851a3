//! Test support for the store crates (feature `testing`, enabled from their
//! dev-dependencies only): the two storage backends side by side, so one
//! test body runs on SQLite and on a real, throwaway PostgreSQL server.
//!
//! [`TestDb`] is one test's storage: a temp `data_dir`, plus for PostgreSQL
//! a fresh database of its own on a [`PgServer`] (`initdb` + `postgres` in a
//! temp dir, on a free port, with its unix socket in that dir). The tests of
//! one binary that run at once share the server; it stops, and its dir is
//! removed, when the last of them drops it. [`on_both_backends!`] turns
//! `async fn name(db: TestDb)` bodies into `sqlite::name` and
//! `postgres::name` tests.
//!
//! PostgreSQL refuses to run as root, so as root the binaries run as the
//! `postgres` OS user (`runuser -u postgres --`) over a data dir it owns.
//! They come from `LLMGW_PG_BIN` (what `scripts/setup-postgres.sh` prints;
//! `make test` sets it) or else `/usr/lib/postgresql/*/bin`; without them the
//! PostgreSQL tests fail, saying so, rather than skip.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, AssertSqlSafe, Connection as _, Executor as _};
use tempfile::TempDir;

use crate::config::{Config, DatabaseConfig};
use crate::secret::Secret;

/// Longest wait for a new server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One test's storage: SQLite files in a temp dir, or a database of its own
/// on a throwaway PostgreSQL server.
pub struct TestDb {
    dir: TempDir,
    postgres: Option<(Arc<PgServer>, DatabaseConfig)>,
}

/// The server the tests running now share; started again when a test finds
/// none (every holder gone).
static SHARED_SERVER: tokio::sync::Mutex<Weak<PgServer>> = tokio::sync::Mutex::const_new(Weak::new());

impl TestDb {
    /// SQLite files under a fresh temp dir.
    pub fn sqlite() -> Result<Self, String> {
        Ok(Self {
            dir: temp_dir()?,
            postgres: None,
        })
    }

    /// A fresh PostgreSQL database (and a temp `data_dir` for what stays on
    /// disk, such as the master key file).
    pub async fn postgres() -> Result<Self, String> {
        let server = {
            let mut shared = SHARED_SERVER.lock().await;
            match shared.upgrade() {
                Some(server) => server,
                None => {
                    let server = Arc::new(PgServer::start().await?);
                    *shared = Arc::downgrade(&server);
                    server
                }
            }
        };
        let url = server.create_database().await?;
        Ok(Self {
            dir: temp_dir()?,
            postgres: Some((
                server,
                DatabaseConfig {
                    url: Secret::new(url),
                    max_connections: 4,
                },
            )),
        })
    }

    /// The backend's name, for messages.
    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The temp `data_dir`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A config of defaults on this storage, with `env` as the environment.
    pub fn config(&self, env: &HashMap<String, String>) -> Config {
        self.config_in(self.dir(), env)
    }

    /// As [`TestDb::config`] with another `data_dir` (the same database).
    pub fn config_in(&self, data_dir: &Path, env: &HashMap<String, String>) -> Config {
        let mut config = match Config::parse("{}", "test.yaml", env) {
            Ok(config) => config,
            Err(e) => unreachable!("an empty config is valid: {e}"),
        };
        config.data_dir = data_dir.to_path_buf();
        config.database = self.postgres.as_ref().map(|(_, db)| db.clone());
        config
    }
}

fn temp_dir() -> Result<TempDir, String> {
    tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))
}

/// Writes `sqlite::$name` and `postgres::$name` tests (multi-threaded
/// runtime) for each `async fn $name(db: TestDb)` in scope.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDb::sqlite();
                    super::$name(db.unwrap_or_else(|e| panic!("{e}"))).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDb::postgres().await;
                    super::$name(db.unwrap_or_else(|e| panic!("{e}"))).await;
                }
            )+
        }
    };
}

/// A throwaway PostgreSQL server: its data dir, socket and log in a temp
/// dir, listening on 127.0.0.1 at a free port, trusting local connections.
/// Dropping it stops the server and removes the dir.
pub struct PgServer {
    child: Option<Child>,
    port: u16,
    /// Data dir, socket dir, log; removed after the server stops.
    dir: TempDir,
    databases: AtomicU32,
}

impl PgServer {
    /// Runs `initdb` and starts `postgres`, then waits until it accepts
    /// connections.
    pub async fn start() -> Result<Self, String> {
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("llmgw-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if as_root {
            run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command(as_root, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        tokio::task::spawn_blocking(move || run(&mut initdb))
            .await
            .map_err(|e| format!("initdb: {e}"))??;

        let mut server = Self {
            child: None,
            port: 0,
            dir,
            databases: AtomicU32::new(0),
        };
        // A free port: the kernel's choice, released just before postgres
        // binds it; a lost race shows as a failed start and is retried.
        for attempt in 1.. {
            server.port = free_port()?;
            let log = std::fs::File::create(server.dir.path().join("postgres.log"))
                .map_err(|e| format!("cannot create the server log: {e}"))?;
            let child = pg_command(as_root, &bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-k"])
                .arg(server.dir.path())
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=50"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start postgres: {e}"))?;
            server.child = Some(child);
            match server.wait_ready().await {
                Ok(()) => break,
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => server.stop(),
            }
        }
        Ok(server)
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        sqlx::any::install_default_drivers();
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("postgres exited ({status}): {}", self.log()));
            }
            match AnyConnection::connect(&self.url("postgres")).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    return Err(format!(
                        "postgres did not accept connections: {e}; {}",
                        self.log()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Creates a fresh database and returns its URL.
    pub async fn create_database(&self) -> Result<String, String> {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let mut conn = AnyConnection::connect(&self.url("postgres"))
            .await
            .map_err(|e| format!("cannot connect to postgres: {e}"))?;
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        let _ = conn.close().await;
        Ok(self.url(&name))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Fast shutdown (clients disconnected), then reaps the process.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // The child may be `runuser`; the postmaster's pid is in its pid file.
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned));
        match pid {
            Some(pid) => {
                let _ = Command::new("kill").args(["-INT", &pid]).status();
            }
            None => {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding `initdb` and `postgres`.
fn pg_bin() -> Result<PathBuf, String> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(dir) = std::env::var("LLMGW_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "LLMGW_PG_BIN={} holds no initdb and postgres; run scripts/setup-postgres.sh",
                dir.display()
            ))
        };
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_both(dir))
        .collect();
    found.sort_by_key(|dir| {
        let version = dir.parent().and_then(Path::file_name).and_then(|v| v.to_str());
        version.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    found.pop().ok_or_else(|| {
        "the PostgreSQL tests need PostgreSQL's initdb and postgres: run `scripts/setup-postgres.sh` \
         and set LLMGW_PG_BIN to the directory it prints (`make test` does both)"
            .to_owned()
    })
}

/// `program`, run as the `postgres` user when this process is root.
fn pg_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
