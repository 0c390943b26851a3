//! The processes under test: the emulator, the one-process gateway and the
//! five split processes. Everything started here is owned by [`Procs`], whose
//! `Drop` kills it, so an error, a panic or Ctrl-C leaves nothing behind.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::StatusCode;

use crate::client::{Conn, Target, snippet};
use crate::load::{S6_MODEL, S6_PROFILE};

/// The model every OpenAI scenario asks for, on the emulator and on the gateway.
pub const MODEL: &str = "gpt-4o-mini";
/// S4a: the gateway model that targets the `type: anthropic` provider, and
/// the upstream model it names (also what the direct Anthropic call asks for).
pub const ANTHROPIC_MODEL: &str = "claude-bench";
pub const ANTHROPIC_UPSTREAM: &str = "claude-3-5-sonnet-20241022";
/// S4b: the gateway model that targets the `type: bedrock` provider, and the
/// Bedrock model id (in the ConverseStream path, direct and via the gateway).
pub const BEDROCK_MODEL: &str = "bedrock-bench";
pub const BEDROCK_UPSTREAM: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
/// R: a model with one target (provider p1), and a pool of p1, p2 and p3
/// (weighted, equal weights, fallback on by default). Each provider is the
/// emulator under its own fault profile, `/_f/pN/v1`, all asking for [`MODEL`].
pub const ROUTER_SINGLE: &str = "single";
pub const ROUTER_POOL: &str = "pool3";
/// `edge.max_in_flight` of the gateways under test: room for S5's 1,000
/// streams; beyond it the edge answers 503 at once (S6).
pub const MAX_IN_FLIGHT: usize = 1200;

/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// CPU placement: the load generator and the emulator on one core, the
/// gateway (all of its processes) on another.
#[derive(Clone, Debug)]
pub struct Pinning {
    /// Cores available before pinning.
    pub cores: usize,
    /// Core for the load generator and the emulator; `None` when not pinned.
    pub client_core: Option<usize>,
    pub gateway_core: Option<usize>,
    pub note: String,
}

impl Pinning {
    /// Pins when `taskset` works and there are at least two cores.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if cores >= 2 && taskset {
            Self {
                cores,
                client_core: Some(0),
                gateway_core: Some(1),
                note: format!(
                    "{cores} cores; load generator and emulator share core 0, gateway (every process) on core 1"
                ),
            }
        } else {
            let why = if taskset {
                "fewer than 2 cores"
            } else {
                "no taskset"
            };
            Self {
                cores,
                client_core: None,
                gateway_core: None,
                note: format!("{cores} core(s), not pinned ({why})"),
            }
        }
    }

    /// Pins this process (every thread: call it before starting the runtime).
    pub fn pin_self(&self) -> anyhow::Result<()> {
        if let Some(core) = self.client_core {
            let status = Command::new("taskset")
                .args([
                    "-a",
                    "-p",
                    "-c",
                    &core.to_string(),
                    &std::process::id().to_string(),
                ])
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("taskset could not pin the load generator to core {core}");
            }
        }
        Ok(())
    }
}

/// A command, under `taskset -c CORE` when a core is given.
fn command(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    /// Held open so the emulator never writes to a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
}

/// Every child process of the bench; killed on drop.
pub struct Procs {
    procs: Vec<Proc>,
    /// Where their logs go.
    dir: PathBuf,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
        }
        for p in &mut self.procs {
            let _ = p.child.wait();
        }
    }
}

impl Procs {
    pub fn new(dir: &Path) -> Self {
        Self {
            procs: Vec::new(),
            dir: dir.to_owned(),
        }
    }

    /// Fails, with the tail of its log, if a process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status}){}", p.name, log_tail(p.log.as_deref()));
            }
        }
        Ok(())
    }

    /// The gateway processes' log files, by process name.
    pub fn logs(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.procs
            .iter()
            .filter_map(|p| p.log.as_deref().map(|l| (p.name.as_str(), l)))
    }

    /// Starts an emulator named `label` and returns its base URL's address.
    /// Without `api_key` it accepts any key and verifies no SigV4 signature.
    pub async fn start_emulator(
        &mut self,
        bin: &Path,
        core: Option<usize>,
        api_key: Option<&str>,
        label: &str,
    ) -> anyhow::Result<SocketAddr> {
        let log = self.dir.join(format!("{label}.log"));
        let mut args = vec!["--addr", "127.0.0.1:0", "--no-record"];
        if let Some(key) = api_key {
            args.extend(["--api-key", key]);
        }
        let mut child = command(bin, core)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no emulator stdout")?;
        self.procs.push(Proc {
            name: label.to_owned(),
            child,
            log: Some(log.clone()),
            _stdout: None,
        });
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map(|_| (reader, line))
        });
        let (reader, line) = tokio::time::timeout(READY_TIMEOUT, read)
            .await
            .with_context(|| format!("{label} did not print its address"))???;
        if let Some(p) = self.procs.last_mut() {
            p._stdout = Some(reader);
        }
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .with_context(|| format!("unexpected emulator output {line:?}{}", log_tail(Some(&log))))?;
        Ok(addr.parse()?)
    }

    /// The process id of the process named `label` (the program itself:
    /// `taskset` execs it).
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.name == label).map(|p| p.child.id())
    }

    /// Starts `program args` (pinned to `core`) named `label`, its output
    /// in `label.log`, which is scanned for warnings like the gateway's.
    pub fn spawn(
        &mut self,
        label: &str,
        program: &Path,
        core: Option<usize>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{label}.log"));
        let child = command(program, core)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join(format!("{label}.stdout")))?)
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        self.procs.push(Proc {
            name: label.to_owned(),
            child,
            log: Some(log),
            _stdout: None,
        });
        Ok(())
    }

    /// Starts another process (`label` names it; its stderr goes to a log).
    pub fn start_command(&mut self, label: &str, mut cmd: std::process::Command) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{label}.log"));
        let child = cmd.stderr(File::create(&log)?).spawn()?;
        self.procs.push(Proc {
            name: label.to_owned(),
            child,
            log: None,
            _stdout: None,
        });
        Ok(())
    }

    /// Starts `llmgw <subcommand> --config FILE` with its output in `dir`.
    pub fn start_llmgw(
        &mut self,
        bin: &Path,
        core: Option<usize>,
        subcommand: &str,
        config: &Path,
        env: &[(&str, &str)],
        label: &str,
    ) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{label}.log"));
        let child = command(bin, core)
            .arg(subcommand)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join(format!("{label}.stdout")))?)
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {} {subcommand}", bin.display()))?;
        self.procs.push(Proc {
            name: label.to_owned(),
            child,
            log: Some(log),
            _stdout: None,
        });
        Ok(())
    }

    /// Starts a Consul dev agent (`bin`, through scripts/consul-dev.sh)
    /// with its HTTP API on `http` and its other ports free; the split
    /// services register with it and retry until it is up.
    pub fn start_consul(&mut self, bin: &Path, http: SocketAddr) -> anyhow::Result<()> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/consul-dev.sh");
        let ports = [vec![http], free_ports(3)?].concat();
        let child = Command::new(script)
            .args(ports.iter().map(|p| p.port().to_string()))
            .env("CONSUL_BIN", bin)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join("consul.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {script}"))?;
        self.procs.push(Proc {
            name: "consul".to_owned(),
            child,
            log: None,
            _stdout: None,
        });
        Ok(())
    }

    /// Waits until `GET /health` answers 200 and then until a real chat
    /// request does (in the split deployment the edge is up before the
    /// services behind it). Polls; never sleeps a fixed time.
    pub async fn wait_ready(&mut self, target: &Target, probe: &Bytes, health: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        let mut phase_health = health;
        loop {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("{} not ready after {READY_TIMEOUT:?}: {last}", target.name);
            }
            match Conn::open(target.addr).await {
                Ok(mut conn) => {
                    let answer = if phase_health {
                        conn.get(target, "/health").await
                    } else {
                        conn.post(target, probe.clone()).await
                    };
                    match answer {
                        Ok((StatusCode::OK, _)) if phase_health => phase_health = false,
                        Ok((StatusCode::OK, _)) => return Ok(()),
                        Ok((status, body)) => last = format!("status {status}: {}", snippet(&body)),
                        Err(e) => last = format!("{e:#}"),
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The last lines of a log file, formatted to append to an error.
pub fn log_tail(log: Option<&Path>) -> String {
    let Some(path) = log else { return String::new() };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n  {} (last lines):\n  {tail}", path.display())
    }
}

/// `n` free loopback ports (all held while choosing, so they are distinct).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?)
}

/// How long the gateways keep an idle upstream connection: short, so that
/// S5's "after" (2 s after the load) is what a gateway holds once the load
/// and its connections are gone (the default, 90 s, keeps some 30 KB per
/// connection longer). Load scenarios reuse connections within milliseconds.
const UPSTREAM_IDLE_MS: u64 = 1000;

/// A gateway config for the emulator at `emulator` (OpenAI and Anthropic
/// providers, and R's p1–p3 under its fault profiles) and the unsigned one
/// at `unsigned` (the Bedrock provider: the gateway signs, that emulator does
/// not check); `services` holds the auth, router, adapter and metering
/// addresses of a split deployment.
pub fn gateway_config(
    data_dir: &Path,
    http: SocketAddr,
    grpc: SocketAddr,
    emulator: SocketAddr,
    unsigned: SocketAddr,
    services: Option<[SocketAddr; 4]>,
) -> anyhow::Result<String> {
    let data_dir = serde_json::to_string(&data_dir.to_str().context("temp dir path is not UTF-8")?)?;
    let mut yaml = format!(
        r#"data_dir: {data_dir}
edge:
  http_addr: {http}
  grpc_addr: {grpc}
  max_in_flight: {MAX_IN_FLIGHT}
upstream:
  idle_timeout: {UPSTREAM_IDLE_MS}ms
providers:
  - name: emu
    type: openai
    base_url: http://{emulator}/v1
    api_key: ${{EMU_KEY}}
  - name: claude
    type: anthropic
    base_url: http://{emulator}/v1
    api_key: ${{EMU_KEY}}
  - name: aws
    type: bedrock
    base_url: http://{unsigned}
    region: us-east-1
    access_key_id: AKIDEXAMPLE
    secret_access_key: bench-secret-not-checked
  - {{ name: p1, type: openai, base_url: "http://{emulator}/_f/p1/v1", api_key: "${{EMU_KEY}}" }}
  - {{ name: p2, type: openai, base_url: "http://{emulator}/_f/p2/v1", api_key: "${{EMU_KEY}}" }}
  - {{ name: p3, type: openai, base_url: "http://{emulator}/_f/p3/v1", api_key: "${{EMU_KEY}}" }}
  - {{ name: s6, type: openai, base_url: "http://{emulator}/_f/{S6_PROFILE}/v1", api_key: "${{EMU_KEY}}" }}
models:
  - name: {MODEL}
    target: emu/{MODEL}
    price: {{ input_per_mtok: 0.15, output_per_mtok: 0.60 }}
  - name: {ANTHROPIC_MODEL}
    target: claude/{ANTHROPIC_UPSTREAM}
    price: {{ input_per_mtok: 3.0, output_per_mtok: 15.0 }}
  - name: {BEDROCK_MODEL}
    target: aws/{BEDROCK_UPSTREAM}
    price: {{ input_per_mtok: 3.0, output_per_mtok: 15.0 }}
  - name: {ROUTER_SINGLE}
    target: p1/{MODEL}
    price: {{ input_per_mtok: 0.15, output_per_mtok: 0.60 }}
  - name: {ROUTER_POOL}
    strategy: weighted
    price: {{ input_per_mtok: 0.15, output_per_mtok: 0.60 }}
    targets: [{{ target: p1/{MODEL} }}, {{ target: p2/{MODEL} }}, {{ target: p3/{MODEL} }}]
  - name: {S6_MODEL}
    target: s6/{MODEL}
    price: {{ input_per_mtok: 0.15, output_per_mtok: 0.60 }}
"#
    );
    if let Some([auth, router, adapter, metering]) = services {
        yaml.push_str(&format!(
            "services:\n  auth: {{addr: {auth}}}\n  router: {{addr: {router}}}\n  \
             adapter: {{addr: {adapter}}}\n  metering: {{addr: {metering}}}\n"
        ));
    }
    Ok(yaml)
}

/// Runs `llmgw keys create` and returns the key (the last stdout line).
pub async fn create_key(bin: &Path, config: &Path, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(["keys", "create", "--org", "bench", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "llmgw keys create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    let key = stdout.lines().last().map(str::trim).unwrap_or_default();
    if key.is_empty() {
        bail!("llmgw keys create printed no key");
    }
    Ok(key.to_owned())
}

/// Warnings and errors in a gateway log: their count and the first few.
pub fn scan_log(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .collect();
    (bad.len(), bad.iter().take(5).map(|l| (*l).to_owned()).collect())
}
