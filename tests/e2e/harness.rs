//! Starts a gateway — `llmgw all`, or the five services as separate
//! processes — against an in-process OpenAI emulator, on free ports, in a
//! temp dir. No fixed ports, no sleeps for readiness: ports come from binding
//! :0 and readiness from polling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use llmgw_emulators::{Emulator, Options};
use serde_json::Value;
use tokio::process::{Child, Command};

pub const EMU_KEY: &str = "emu-secret-provider-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `llmgw all`: one process, local clients.
    All,
    /// `llmgw auth|router|adapter|metering|edge`: five processes over gRPC.
    Split,
}

/// What a test adds to the harness's config.
#[derive(Default)]
pub struct Extra<'a> {
    /// `providers:` list items, indented two spaces; `{emu}` is the emulator.
    pub providers: &'a str,
    /// `models:` list items.
    pub models: &'a str,
    /// Top-level YAML (e.g. `routing:`, `redis:`).
    pub top: &'a str,
    /// `metering:` settings, indented two spaces.
    pub metering: &'a str,
    /// `edge.max_in_flight` (default 4).
    pub max_in_flight: Option<usize>,
    /// Log at this level into files (see [`Gateway::logs`]) instead of
    /// stderr.
    pub log_level: Option<&'a str>,
    /// Environment variables for every gateway process.
    pub env: &'a [(&'a str, &'a str)],
    /// Find the services through this Consul agent (`discovery: consul`)
    /// instead of static addresses.
    pub consul: Option<&'a Consul>,
}

pub struct Gateway {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// A client API key (org `acme`).
    pub key: String,
    pub config: PathBuf,
    /// Where auth, router, adapter and metering listen (split: each its
    /// own process; `all`: unused).
    pub services: [SocketAddr; 4],
    pub emu: Emulator,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
    pub children: Vec<Child>,
    log_level: Option<String>,
    env: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_llmgw")
}

/// A loopback address no other caller of this process was given, with a
/// port below the kernel's ephemeral range (32768 and up), so neither a
/// parallel test nor an outgoing connection's local port takes it between
/// this check and the child process binding it. Each test process starts at
/// its own offset, from its pid.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() * 97 % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let addr = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).expect("port")));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn http_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder().no_proxy().build().expect("client")
}

impl Gateway {
    pub async fn start(shape: Shape) -> Gateway {
        Self::start_with(shape, "", "").await
    }

    /// Starts a gateway with more `providers:` and `models:` entries (YAML
    /// list items, indented two spaces); `{emu}` stands for the emulator's
    /// `host:port`, which serves every emulated wire format.
    pub async fn start_with(shape: Shape, extra_providers: &str, extra_models: &str) -> Gateway {
        Self::start_full(shape, extra_providers, extra_models, "").await
    }

    /// As [`Gateway::start_with`], plus top-level YAML (e.g. a `routing:`
    /// section) appended to the config.
    pub async fn start_full(
        shape: Shape,
        extra_providers: &str,
        extra_models: &str,
        extra_top: &str,
    ) -> Gateway {
        Self::start_extra(
            shape,
            Extra {
                providers: extra_providers,
                models: extra_models,
                top: extra_top,
                ..Extra::default()
            },
        )
        .await
    }

    /// A gateway with more `metering:` settings (YAML lines indented two
    /// spaces, e.g. `"  buffer: 8\n"`).
    pub async fn start_metering(shape: Shape, extra_metering: &str) -> Gateway {
        Self::start_extra(
            shape,
            Extra {
                metering: extra_metering,
                ..Extra::default()
            },
        )
        .await
    }

    /// A gateway with any of the [`Extra`] settings.
    pub async fn start_extra(shape: Shape, extra: Extra<'_>) -> Gateway {
        let Extra {
            providers: extra_providers,
            models: extra_models,
            top: extra_top,
            metering: extra_metering,
            max_in_flight,
            log_level,
            env,
            consul,
        } = extra;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let discovery = match consul {
            Some(c) => format!(
                "  discovery: consul\n  consul: {{ addr: \"{}\", check_interval: 1s }}\n",
                c.url()
            ),
            None => String::new(),
        };
        let max_in_flight = max_in_flight.unwrap_or(4);
        let mut emu = llmgw_emulators::spawn(Options {
            api_key: Some(EMU_KEY.into()),
            record: true,
        })
        .await
        .expect("emulator");
        let mut dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.yaml");
        let roles: &[&str] = match shape {
            Shape::All => &["all"],
            Shape::Split => &["auth", "router", "adapter", "metering", "edge"],
        };
        // Ports come from binding :0 and letting go, so another test may
        // take one before the gateway binds it: a gateway that exits while
        // starting is started again on fresh ports.
        let mut key = None;
        for attempt in 1..=3 {
            let (http, grpc) = (free_addr(), free_addr());
            let [auth, router, adapter, metering] = [free_addr(), free_addr(), free_addr(), free_addr()];
            let dead = free_addr(); // nothing listens here: connection refused
            let text = format!(
                r#"data_dir: {data}
edge:
  http_addr: {http}
  grpc_addr: {grpc}
  max_body_bytes: 1048576
  max_in_flight: {max_in_flight}
  stream_idle_timeout: 1s
providers:
  - name: emu
    type: openai
    base_url: {base}
    api_key: ${{EMU_KEY}}
  - name: slow
    type: openai
    base_url: {base}
    api_key: ${{EMU_KEY}}
    timeout: 300ms
  - name: dead
    type: openai
    base_url: http://{dead}/v1
    api_key: ${{EMU_KEY}}
  - name: unset
    type: openai
    api_key: ${{LLMGW_TEST_UNSET_VAR}}
{extra_providers}models:
  - name: gpt-4o-mini
    target: emu/gpt-4o-mini
    price: {{ input_per_mtok: 0.15, output_per_mtok: 0.60 }}
  - name: slow-model
    target: slow/gpt-4o-mini
  - name: dead-model
    target: dead/gpt-4o-mini
  - name: ghost-model
    target: unset/gpt-4o-mini
{extra_models}{extra_top}metering:
  flush_interval: 50ms
{extra_metering}services:
{discovery}  auth: {{ addr: {auth} }}
  router: {{ addr: {router} }}
  adapter: {{ addr: {adapter} }}
  metering: {{ addr: {metering} }}
"#,
                data = dir.path().join("data").display(),
                base = emu.base_url(),
                extra_providers = extra_providers.replace("{emu}", &emu.addr.to_string()),
                extra_models = extra_models,
                extra_top = extra_top,
                extra_metering = extra_metering,
            );
            std::fs::write(&config, text).expect("write config");
            if key.is_none() {
                key = Some(create_key(&config, "acme", None).await);
            }
            let children = roles
                .iter()
                .map(|role| spawn_role(&config, role, log_level, role, &env))
                .collect();
            let mut gw = Gateway {
                http,
                grpc,
                key: key.clone().unwrap_or_default(),
                config: config.clone(),
                services: [auth, router, adapter, metering],
                emu,
                client: http_client(),
                _dir: dir,
                children,
                log_level: log_level.map(str::to_owned),
                env: env.clone(),
            };
            if gw.wait_ready(shape, &[auth, router, adapter, metering]).await {
                return gw;
            }
            assert!(attempt < 3, "gateway exited while starting, three times");
            // Take the emulator and the temp dir back for the next attempt.
            let Gateway { emu: e, _dir: d, .. } = gw;
            (emu, dir) = (e, d);
        }
        unreachable!("the loop returns or panics")
    }

    /// Polls until the gateway answers (and, split, every service accepts
    /// connections); `false` as soon as one of its processes has exited.
    async fn wait_ready(&mut self, shape: Shape, services: &[SocketAddr]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "gateway did not become ready");
            if self
                .children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                return false;
            }
            let mut ready = self.get("/health").await.map(|(s, _)| s == 200).unwrap_or(false);
            if shape == Shape::Split {
                for addr in services {
                    ready &= tokio::net::TcpStream::connect(addr).await.is_ok();
                }
            }
            if ready {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts one more `llmgw <role>` process on this gateway's config, as
    /// the gateway started its own (to restart one that was killed).
    pub fn spawn(&self, role: &str) -> Child {
        spawn_role(&self.config, role, self.log_level.as_deref(), role, &self.env)
    }

    /// Starts one more `llmgw <role>` listening on `addr` (a copy of this
    /// gateway's config with the role's `services:` address replaced),
    /// logging (with `Extra::log_level`) into `logs/<name>.log`.
    pub fn spawn_replica(&self, role: &str, addr: SocketAddr, name: &str) -> Child {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let key = format!("  {role}: {{ addr: ");
        let text: String = text
            .lines()
            .map(|line| match line.strip_prefix(&key) {
                Some(_) => format!("{key}{addr} }}\n"),
                None => format!("{line}\n"),
            })
            .collect();
        let config = self.config.with_file_name(format!("{name}.yaml"));
        std::fs::write(&config, text).expect("write config");
        spawn_role(&config, role, self.log_level.as_deref(), name, &self.env)
    }

    /// What one process logged into `logs/<name>.log` (with
    /// `Extra::log_level`).
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.config.with_file_name("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// Everything the gateway's processes logged (with `Extra::log_level`).
    pub fn logs(&self) -> String {
        let dir = self.config.with_file_name("logs");
        let mut out = String::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        out
    }

    /// The gateway's `data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Polls `/health` until the edge answers 200, for up to 30 s; metering
    /// may be down (tests stop it on purpose: the edge spools meanwhile).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .get("/health?skip=metering,metering_store")
            .await
            .is_ok_and(|(s, _)| s == 200)
        {
            assert!(Instant::now() < deadline, "the edge did not become healthy");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// GETs `path` with the client key; status and body text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        self.get(path).await.expect("request")
    }

    async fn get(&self, path: &str) -> reqwest::Result<(u16, String)> {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// POSTs JSON to `path` with the client key; returns status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, headers, json)
    }

    /// POSTs a streaming request; returns every SSE `data:` payload in order.
    pub async fn stream(&self, body: &Value) -> Vec<String> {
        let r = self
            .client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200, "stream status");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.expect("body");
        sse_data(&text)
    }

    /// A request to the edge with `key` (a JSON body if given); status and
    /// body text.
    pub async fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let mut r = self
            .client
            .request(method.parse().expect("method"), self.url(path))
            .bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"))
    }

    /// `llmgw ARGS --config <this gateway's config>`; its stdout (it must
    /// succeed).
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("EMU_KEY", EMU_KEY)
            .output()
            .await
            .expect("llmgw");
        assert!(
            out.status.success(),
            "llmgw {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// A new key of `org` with `role`: the key alone.
    pub async fn key_with_role(&self, org: &str, role: &str) -> String {
        let out = self.cli(&["keys", "create", "--org", org, "--role", role]).await;
        out.lines().last().expect("a key line").trim().to_owned()
    }

    /// Sets a fault profile of the emulator (`/_f/{profile}/…` base URLs).
    pub async fn fault(&self, profile: &str, settings: Value) {
        let url = format!("http://{}/_emu/faults/{profile}", self.emu.addr);
        let r = self.client.put(url).json(&settings).send().await.expect("emu");
        assert_eq!(r.status().as_u16(), 204, "fault settings refused");
    }

    /// How many requests reached a fault profile.
    pub async fn fault_requests(&self, profile: &str) -> u64 {
        let v = self.emu_get(&format!("/_emu/faults/{profile}")).await;
        v["requests"].as_u64().expect("requests")
    }

    /// What the emulator received, oldest first.
    pub async fn upstream_requests(&self) -> Vec<Value> {
        let v = self.emu_get("/_emu/requests").await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// GETs one of the emulator's own JSON endpoints.
    async fn emu_get(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.emu.addr);
        let r = self.client.get(url).send().await.expect("emu");
        r.json().await.expect("json")
    }

    pub async fn last_upstream(&self) -> Value {
        self.upstream_requests()
            .await
            .pop()
            .expect("the emulator saw a request")
    }

    /// `llmgw usage --json` for `org`, polled until `pred` holds (metering is
    /// asynchronous) or 30 s pass (a loaded CI machine is slow).
    pub async fn usage_until(&self, org: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(bin())
                .args(["usage", "--json", "--org", org, "--config"])
                .arg(&self.config)
                .output()
                .await
                .expect("llmgw usage");
            assert!(
                out.status.success(),
                "usage failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout);
            let v: Value = serde_json::from_str(line.trim()).expect("usage json");
            if pred(&v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends SIGTERM to a gateway process and waits (10 s at most) for its
/// clean exit.
pub async fn sigterm(mut child: Child) {
    let pid = child.id().expect("a running process");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits promptly")
        .expect("wait");
    assert!(exit.success(), "clean exit: {exit:?}");
}

/// `llmgw <role> --config <config>` with the environment tests give it.
/// With `log_level`, the process logs at that level into a file of the
/// gateway's `logs/` dir (read back by [`Gateway::logs`]).
fn spawn_role(
    config: &Path,
    role: &str,
    log_level: Option<&str>,
    log_name: &str,
    env: &[(String, String)],
) -> Child {
    let mut cmd = Command::new(bin());
    cmd.arg(role)
        .arg("--config")
        .arg(config)
        .env("EMU_KEY", EMU_KEY)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .kill_on_drop(true);
    match log_level {
        Some(level) => {
            let dir = config.with_file_name("logs");
            std::fs::create_dir_all(&dir).expect("logs dir");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{log_name}.log")))
                .expect("log file");
            cmd.env("LLMGW_LOG", level)
                .env("NO_COLOR", "1")
                .stderr(Stdio::from(file));
        }
        None => {
            cmd.env(
                "LLMGW_LOG",
                std::env::var("LLMGW_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stderr(Stdio::inherit());
        }
    }
    cmd.spawn().expect("spawn llmgw")
}

pub async fn create_key(config: &Path, org: &str, project: Option<&str>) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["keys", "create", "--org", org, "--config"]).arg(config);
    if let Some(p) = project {
        cmd.args(["--project", p]);
    }
    let out = cmd.output().await.expect("llmgw keys create");
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    stdout.lines().last().expect("a key line").trim().to_owned()
}

pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// A one-message conversation from the user.
pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// Equal to within float noise (costs are sums of products).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// A stream's chunks as JSON, after checking it ended with `[DONE]`.
pub fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The first choice's `delta.<field>` text across `chunks`, joined.
pub fn joined(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"][field].as_str()))
        .collect()
}

/// `consul agent -dev` with its HTTP API on `http` (other ports free, DNS and
/// gRPC off), once it has a leader; `None` if it exited (a port was taken).
async fn spawn_consul(client: &reqwest::Client, http: SocketAddr) -> Option<Child> {
    let bin = std::env::var("LLMGW_CONSUL_BIN")
        .expect("LLMGW_CONSUL_BIN: run `make test-rust`, or export it from scripts/setup-consul.sh");
    let port = |a: SocketAddr| a.port().to_string();
    let mut child = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/consul-dev.sh"
    ))
    .args([http, free_addr(), free_addr(), free_addr()].map(port))
    .env("CONSUL_BIN", bin)
    .stdout(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("spawn consul");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
        let leader = client.get(format!("http://{http}/v1/status/leader")).send().await;
        if let Ok(r) = leader
            && r.text().await.is_ok_and(|t| t.contains(':'))
        {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    None
}

/// A real Consul agent (`consul agent -dev`, from `LLMGW_CONSUL_BIN`, which
/// `scripts/setup-consul.sh` installs) on free ports, stopped on drop.
pub struct Consul {
    pub http: SocketAddr,
    client: reqwest::Client,
    _child: Child,
}

impl Consul {
    pub async fn start() -> Consul {
        let client = http_client();
        for _ in 0..3 {
            let http = free_addr();
            if let Some(child) = spawn_consul(&client, http).await {
                return Consul {
                    http,
                    client,
                    _child: child,
                };
            }
        }
        panic!("consul did not start, three times")
    }

    /// Kills the agent and starts a new one on the same HTTP port: a dev
    /// agent keeps no state, so every registration is gone.
    pub async fn restart(&mut self) {
        let _ = self._child.kill().await;
        for _ in 0..50 {
            if let Some(child) = spawn_consul(&self.client, self.http).await {
                self._child = child;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("consul did not start again on {}", self.http)
    }

    /// Kills the agent (a Consul outage).
    pub async fn kill(&mut self) {
        let _ = self._child.kill().await;
    }

    /// The agent's HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// GETs a JSON endpoint of the agent's API.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("consul");
        r.json().await.expect("consul json")
    }

    /// The ports of `service`'s passing instances, sorted.
    pub async fn passing(&self, service: &str) -> Vec<u16> {
        let v = self
            .get(&format!("/v1/health/service/{service}?passing=true"))
            .await;
        let mut ports: Vec<u16> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["Service"]["Port"].as_u64())
            .map(|p| p as u16)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The ports of every registered instance of `service` (any health).
    pub async fn registered(&self, service: &str) -> Vec<u16> {
        let v = self.get(&format!("/v1/catalog/service/{service}")).await;
        let mut ports: Vec<u16> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["ServicePort"].as_u64())
            .map(|p| p as u16)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Polls until `service`'s passing ports are `ports` (30 s at most).
    pub async fn wait_passing(&self, service: &str, ports: &[u16]) {
        let mut want = ports.to_vec();
        want.sort_unstable();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.passing(service).await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service}: passing {now:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
