//! The gateway's configuration file (one YAML file for every service).
//!
//! Loading is two steps, as in TensorZero: serde structs with
//! `deny_unknown_fields` read the file, then [`Config::parse`] validates them
//! into runtime types. `${VAR}` (and `${VAR:-default}`) in any string is
//! replaced from the environment map the caller passes in (never from the
//! process directly, so tests need no `set_var`). A provider whose settings
//! name an unset variable is disabled rather than an error: the example config
//! lists every provider, and the keys that are set decide which run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::secret::Secret;

mod routing;
use routing::RawModel;
pub use routing::{
    Backoff, Capabilities, Capability, Choice, ConfigCache, Ejection, ModelConfig, Params, RetryBudget,
    RoutingConfig, RoutingPolicy, Sticky, Strategy, TargetConfig, Variant, When,
};

/// A configuration error, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

// ---- the file as written --------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    /// A `tracing` filter such as `info` or `llmgw_edge=debug,info`.
    #[serde(default)]
    log: Option<String>,
    #[serde(default)]
    edge: EdgeConfig,
    #[serde(default)]
    providers: Vec<ProviderSpec>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    services: ServicesConfig,
    #[serde(default)]
    metering: MeteringConfig,
    #[serde(default)]
    routing: RoutingPolicy,
    /// Shared state across edge replicas (rate-limit windows).
    #[serde(default)]
    redis: Option<RawRedis>,
    /// PostgreSQL for `auth` and `usage-metering`; absent: SQLite files
    /// under `data_dir`.
    #[serde(default)]
    database: Option<RawDatabase>,
    #[serde(default)]
    byok: ByokConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    shutdown: ShutdownConfig,
    #[serde(default)]
    cache: CacheConfig,
    #[serde(default)]
    upstream: UpstreamConfig,
}

/// The response cache (exact match, opt-in per request, key policy or
/// routing config): in process, bounded by bytes, or in Redis when `redis:`
/// is configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes the in-process cache holds at most (entries are evicted, least
    /// recently and least often used first); 0 turns the cache off.
    pub max_bytes: u64,
    /// Largest single answer stored (bigger ones are served, not stored).
    pub max_entry_bytes: u64,
    /// The TTL of an entry when what opted in gave none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// The longest TTL anything may ask for (longer ones are cut to it).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(86_400),
        }
    }
}

/// Trace export. Without an endpoint (here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) nothing is exported and spans cost only
/// what logging costs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector, `http://host:4317` (plaintext gRPC: a local
    /// agent or collector sidecar).
    pub otlp_endpoint: Option<String>,
    /// The share of new traces kept, 0.0 to 1.0; a request that arrives with
    /// a sampled `traceparent` is always kept (parent-based).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

/// What a service does after SIGTERM (or SIGINT): it deregisters from
/// Consul, turns its gRPC health NOT_SERVING, stops accepting, lets what is
/// in flight finish, then exits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests and streams may run on after the service
    /// stopped accepting; past it they are cut and the process exits.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// With Consul discovery: how long a service that has deregistered still
    /// accepts new requests, so clients' watches learn it left before its
    /// listener closes (else a request sent in that window is refused).
    #[serde(with = "humantime_serde")]
    pub deregister_wait: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(30),
            deregister_wait: Duration::from_secs(1),
        }
    }
}

/// The provider-adapter's connections to providers, kept open between
/// requests: reuse saves a TCP and TLS handshake, each idle connection
/// costs some 30 KB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// How long an idle connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Idle connections kept per provider host; a burst beyond it closes
    /// the extra ones as it ends.
    pub max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
        }
    }
}

/// Orgs' own provider credentials (BYOK).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByokConfig {
    /// URL prefixes a BYOK credential may name as its `base_url` (empty: none;
    /// every type then uses its default, Azure OpenAI its Azure host).
    /// Operator-controlled, never caller-controlled.
    pub allowed_base_urls: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    /// `redis://[:password@]host:port[/db]`
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    #[serde(default = "default_max_connections")]
    max_connections: u32,
}

fn default_max_connections() -> u32 {
    16
}

/// A provider's settings as written: a `providers:` entry of the config, or
/// (built by `auth`) an org's BYOK credential. [`provider_config`] validates
/// it into a [`ProviderConfig`].
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Per-try timeout until the provider's first byte.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Attempts after the first on a retryable error (router issue).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// The model used for `@slug` with no model, and by `provider/` routes.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Extra headers sent on every request to this provider.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// OpenAI `OpenAI-Organization` header.
    #[serde(default)]
    pub organization: Option<String>,
    /// OpenAI `OpenAI-Project` header.
    #[serde(default)]
    pub project: Option<String>,
    /// Azure OpenAI `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure OpenAI: a Microsoft Entra ID bearer token instead of `api_key`.
    #[serde(default)]
    pub azure_ad_token: Option<String>,
    /// Anthropic: `max_tokens` sent when the client sent none.
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// Google Vertex AI project.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Google Vertex AI location (region), e.g. `us-central1`.
    #[serde(default)]
    pub location: Option<String>,
    /// Google Vertex AI service-account JSON (the text, usually `${VAR}`).
    #[serde(default)]
    pub credentials: Option<String>,
    /// AWS region for Bedrock.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
}

/// Names only: a spec holds secrets as plain text.
impl fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

/// The edge: the public HTTP and gRPC surface.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// OpenAI REST, Anthropic REST and gRPC-Web.
    pub http_addr: SocketAddr,
    /// Public gRPC (`llmgw.v1.Gateway`).
    pub grpc_addr: SocketAddr,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// One total deadline per request, attempts included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest silence allowed between two chunks of a stream.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// How long an authenticated key is trusted without asking `auth` again.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Requests (streams included) served at once; beyond it the edge
    /// answers 503 at once instead of queueing.
    pub max_in_flight: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_body_bytes: 32 << 20,
            request_timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(120),
            auth_cache_ttl: Duration::from_secs(1),
            max_in_flight: 10_000,
        }
    }
}

/// Where the internal services listen (and, with static discovery, where
/// clients find them) when they run as separate processes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    pub discovery: Discovery,
    /// The local Consul agent (with `discovery: consul`).
    pub consul: ConsulConfig,
    pub auth: ServiceAddr,
    pub router: ServiceAddr,
    pub adapter: ServiceAddr,
    pub metering: ServiceAddr,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            discovery: Discovery::Static,
            consul: ConsulConfig::default(),
            auth: ServiceAddr::port(50061),
            router: ServiceAddr::port(50062),
            adapter: ServiceAddr::port(50063),
            metering: ServiceAddr::port(50064),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Addresses straight from this file.
    Static,
    /// Each service registers with the local Consul agent; clients watch
    /// the passing instances of the services they call.
    Consul,
}

/// The local Consul agent, and how services register with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulConfig {
    /// The agent's HTTP API, `http://host:port`.
    pub addr: String,
    /// The address registered for this service (Kubernetes: `${POD_IP}`);
    /// absent: the listen address, or the agent's node address when the
    /// service listens on every interface.
    pub advertise_host: Option<String>,
    /// How often the agent runs each service's gRPC health check (at least
    /// 1s: Consul's floor).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// A service whose check stays critical this long is removed from the
    /// catalog (a crashed process leaves no stale entry behind; Consul
    /// checks this about every 30s, with a floor of 1m).
    #[serde(with = "humantime_serde")]
    pub deregister_critical_after: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:8500".to_owned(),
            advertise_host: None,
            check_interval: Duration::from_secs(2),
            deregister_critical_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAddr {
    /// `host:port`: an IP, or a DNS name (a Kubernetes headless Service),
    /// which clients re-resolve and balance over (static discovery).
    pub addr: String,
}

impl ServiceAddr {
    fn port(port: u16) -> Self {
        Self {
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// `addr` as an IP socket address, when it is one (not a DNS name).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }
}

/// Checks a `host:port` (an IP address or a DNS name; no scheme, no path).
fn valid_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// How the edge ships usage events to `usage-metering`, and how long
/// `usage-metering` keeps them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    /// How long the request log (`usage_events`) keeps an event, by its
    /// start time; older events are deleted in bulk by a background task of
    /// `usage-metering`. The daily roll-ups are kept. 0 keeps events forever.
    #[serde(deserialize_with = "duration_or_zero")]
    pub retention: Duration,
    /// Longest an event waits before its batch is sent.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Events per batch at most.
    pub batch_size: usize,
    /// Events held in memory while metering is unreachable (or cannot keep
    /// up); beyond it events spill to the on-disk spool. 0 spills every
    /// event as soon as a send has failed.
    pub buffer: usize,
    /// Where the spool lives; the default is `<data_dir>/meter-spool/edge`.
    /// Each edge needs its own (it is locked while an edge runs).
    pub spool_dir: Option<PathBuf>,
    /// Bytes the spool may hold on disk; beyond it new events are refused
    /// (logged and counted), never waited for. 0 turns the spool off.
    pub spool_max_bytes: u64,
    /// A spool segment is closed (fsync'd) and a new one begun past this
    /// size; a segment is deleted once metering took every event in it.
    pub spool_segment_bytes: u64,
}

/// A humantime duration (`90d`), or the number 0 (YAML reads a bare `0` as
/// an integer, not a string).
fn duration_or_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(0) => Ok(Duration::ZERO),
        Raw::Number(n) => Err(serde::de::Error::custom(format!(
            "a duration needs a unit: `{n}s`, `{n}h` or `{n}d`; 0 alone means never"
        ))),
        Raw::Text(t) => humantime_serde::re::humantime::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(90 * 86_400),
            flush_interval: Duration::from_millis(200),
            batch_size: 256,
            buffer: 100_000,
            spool_dir: None,
            spool_max_bytes: 1 << 30,
            spool_segment_bytes: 8 << 20,
        }
    }
}

/// The PostgreSQL database `auth` and `usage-metering` share (each store in
/// its own schema, see `kit::db`).
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host:port/dbname`: a secret, as it may hold the
    /// password; messages show [`DatabaseConfig::redacted_url`] instead.
    pub url: Secret,
    /// Connections per store's pool.
    pub max_connections: u32,
}

impl DatabaseConfig {
    /// The URL without its password or query string, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }

    /// `text` (a driver's error, say) with the URL's password masked
    /// wherever it appears.
    pub fn mask_password(&self, text: &str) -> String {
        match url_userinfo(self.url.expose()) {
            Some((_, Some(password))) if !password.is_empty() => text.replace(password, "***"),
            _ => text.to_owned(),
        }
    }
}

/// The user and password of `scheme://user:password@host/…`.
fn url_userinfo(url: &str) -> Option<(&str, Option<&str>)> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    })
}

/// `scheme://user:pass@host/db?options` as `scheme://user:***@host/db`.
fn redact_url(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".to_owned();
    };
    match (url_userinfo(url), rest.rsplit_once('@')) {
        (Some((user, password)), Some((_, host))) => {
            let mask = if password.is_some() { ":***" } else { "" };
            format!("{scheme}://{user}{mask}@{host}")
        }
        _ => url.to_owned(),
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

// ---- validated ------------------------------------------------------------

/// An OpenAI-compatible host: a row of data, not code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompatHost {
    /// The `type` written in config.
    pub type_name: &'static str,
    /// `None`: `base_url` is required.
    pub default_base_url: Option<&'static str>,
    /// Whether the host accepts `stream_options.include_usage`.
    pub stream_usage: bool,
    /// Whether the host accepts `n` > 1.
    pub multiple_choices: bool,
    /// Whether the host serves the legacy `POST /completions`.
    pub completions: bool,
    /// Whether the host serves `audio/transcriptions`, `audio/translations`
    /// and `audio/speech`.
    pub audio: bool,
}

/// OpenAI-compatible hosts, each with its default base URL and quirks.
pub const COMPAT_HOSTS: &[CompatHost] = &[
    CompatHost {
        type_name: "groq",
        default_base_url: Some("https://api.groq.com/openai/v1"),
        stream_usage: true,
        multiple_choices: false,
        completions: false,
        audio: true,
    },
    CompatHost {
        type_name: "together",
        default_base_url: Some("https://api.together.xyz/v1"),
        stream_usage: true,
        multiple_choices: true,
        completions: true,
        audio: true,
    },
    CompatHost {
        type_name: "fireworks",
        default_base_url: Some("https://api.fireworks.ai/inference/v1"),
        stream_usage: true,
        multiple_choices: true,
        completions: true,
        audio: false,
    },
    CompatHost {
        type_name: "deepseek",
        default_base_url: Some("https://api.deepseek.com/v1"),
        stream_usage: true,
        multiple_choices: false,
        completions: false,
        audio: false,
    },
    CompatHost {
        type_name: "xai",
        default_base_url: Some("https://api.x.ai/v1"),
        stream_usage: true,
        multiple_choices: true,
        completions: true,
        audio: false,
    },
    CompatHost {
        type_name: "cerebras",
        default_base_url: Some("https://api.cerebras.ai/v1"),
        stream_usage: true,
        multiple_choices: false,
        completions: true,
        audio: false,
    },
    CompatHost {
        type_name: "meta",
        default_base_url: Some("https://api.llama.com/compat/v1"),
        stream_usage: true,
        multiple_choices: false,
        completions: false,
        audio: false,
    },
    CompatHost {
        type_name: "openai-compatible",
        default_base_url: None,
        stream_usage: true,
        multiple_choices: true,
        completions: true,
        audio: true,
    },
];

/// A provider type: which wire format, and for OpenAI-compatible hosts,
/// which row of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    /// Gemini on AI Studio (Vertex AI when `project_id` and `location` are set).
    Google,
    VertexAi,
    Bedrock,
    Mistral,
    Ollama,
    Compatible(&'static CompatHost),
}

impl ProviderKind {
    const NATIVE: [(&'static str, ProviderKind); 8] = [
        ("openai", ProviderKind::OpenAi),
        ("azure-openai", ProviderKind::AzureOpenAi),
        ("anthropic", ProviderKind::Anthropic),
        ("google", ProviderKind::Google),
        ("vertex-ai", ProviderKind::VertexAi),
        ("bedrock", ProviderKind::Bedrock),
        ("mistral", ProviderKind::Mistral),
        ("ollama", ProviderKind::Ollama),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compatible(host) => host.type_name,
            native => Self::NATIVE
                .iter()
                .find(|(_, k)| *k == native)
                .map_or("openai", |(n, _)| n),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::NATIVE
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, k)| *k)
            .or_else(|| {
                COMPAT_HOSTS
                    .iter()
                    .find(|h| h.type_name == s)
                    .map(ProviderKind::Compatible)
            })
    }

    /// Every `type` a config may name.
    pub fn names() -> Vec<&'static str> {
        Self::NATIVE
            .iter()
            .map(|(n, _)| *n)
            .chain(COMPAT_HOSTS.iter().map(|h| h.type_name))
            .collect()
    }

    /// The base URL used when the config gives none; `None` when it must be
    /// given (or, for Vertex AI and Bedrock, is derived from location/region).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("https://api.openai.com/v1"),
            Self::Anthropic => Some("https://api.anthropic.com/v1"),
            Self::Google => Some("https://generativelanguage.googleapis.com/v1beta"),
            Self::Mistral => Some("https://api.mistral.ai/v1"),
            Self::Ollama => Some("http://127.0.0.1:11434"),
            Self::AzureOpenAi | Self::VertexAi | Self::Bedrock => None,
            Self::Compatible(host) => host.default_base_url,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configured, enabled provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Also its slug: `@name/model`.
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub default_model: Option<String>,
    /// Extra headers sent on every request.
    pub headers: Vec<(String, String)>,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// Azure OpenAI `api-version`.
    pub api_version: Option<String>,
    /// Azure OpenAI Entra ID bearer token.
    pub azure_ad_token: Option<Secret>,
    /// Anthropic `max_tokens` when the client sent none.
    pub default_max_tokens: u32,
    /// Vertex AI project, location and service-account JSON.
    pub project_id: Option<String>,
    pub location: Option<String>,
    pub credentials: Option<Secret>,
    /// Bedrock region and AWS credentials.
    pub region: Option<String>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

/// A provider left out because a variable it needs is not set.
#[derive(Debug, Clone)]
pub struct DisabledProvider {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages.
    pub file: String,
    pub data_dir: PathBuf,
    pub log: Option<String>,
    pub edge: EdgeConfig,
    pub providers: Vec<ProviderConfig>,
    pub disabled_providers: Vec<DisabledProvider>,
    pub models: Vec<ModelConfig>,
    pub services: ServicesConfig,
    pub metering: MeteringConfig,
    pub routing: RoutingPolicy,
    /// Redis for what edge replicas share (rate limits); `None`: in-process.
    pub redis_url: Option<Secret>,
    /// PostgreSQL for the stores; `None`: SQLite files under `data_dir`.
    pub database: Option<DatabaseConfig>,
    /// `LLMGW_MASTER_KEY`: the key for keyed hashes and encryption at rest.
    /// When unset, `auth` keeps one in `data_dir`.
    pub master_key: Option<Secret>,
    /// `LLMGW_MASTER_KEY_PREVIOUS`: the master key before a rotation, so
    /// `auth` still decrypts what it encrypted until every row is re-encrypted.
    pub master_key_previous: Option<Secret>,
    pub byok: ByokConfig,
    /// Trace export; `otlp_endpoint` already falls back to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// Connections to providers.
    pub upstream: UpstreamConfig,
}

const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(600);
/// Retries are opt-in per provider: a retry needs a copy of the request.
const DEFAULT_MAX_RETRIES: u32 = 0;
/// Anthropic requires `max_tokens`; this is sent when the client gave none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

impl Config {
    /// Reads and validates `path`; `env` is the process environment as a map.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, &file, env)?;
        if config.data_dir.is_relative() {
            // Relative to the working directory, as a user running `make up` expects.
            config.data_dir = std::env::current_dir()
                .map(|d| d.join(&config.data_dir))
                .unwrap_or(config.data_dir);
        }
        Ok(config)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        let mut unset = Vec::new();
        expand_value(&mut value, &mut String::new(), env, &mut unset);
        let raw: RawConfig =
            serde_path_to_error::deserialize(value).map_err(|e| err(describe_serde_error(&e)))?;
        let unset_at = |prefix: &str| -> Option<&str> {
            unset
                .iter()
                .find(|(path, _)| path == prefix || path.starts_with(&format!("{prefix}.")))
                .map(|(_, var)| var.as_str())
        };
        if let Some((path, var)) = unset.iter().find(|(path, _)| !path.starts_with("providers[")) {
            return Err(err(format!("`{path}` uses ${{{var}}}, which is not set")));
        }

        let mut providers = Vec::new();
        let mut disabled = Vec::new();
        let mut names = HashSet::new();
        for (i, p) in raw.providers.into_iter().enumerate() {
            let at = format!("providers[{i}]");
            if !valid_provider_name(&p.name) {
                return Err(err(format!(
                    "`{at}.name` must be letters, digits, `-`, `_` or `.`, got `{}`",
                    p.name
                )));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(format!(
                    "`{at}.name`: provider `{}` is defined twice",
                    p.name
                )));
            }
            let Some(kind) = ProviderKind::parse(&p.kind) else {
                let valid = ProviderKind::names();
                return Err(err(format!(
                    "`{at}.type`: unknown provider type `{}`{}",
                    p.kind,
                    suggest(&p.kind, &valid)
                )));
            };
            if let Some(var) = unset_at(&at) {
                disabled.push(DisabledProvider {
                    name: p.name,
                    reason: format!("${{{var}}} is not set"),
                });
                continue;
            }
            providers.push(provider_config(p, kind, &at).map_err(|e| err(e.message))?);
        }

        let models = routing::parse_models(raw.models, &providers, &disabled).map_err(err)?;
        let mut routing = raw.routing;
        routing.validate().map_err(err)?;

        let edge = raw.edge;
        if edge.max_body_bytes == 0 || edge.max_in_flight == 0 {
            return Err(err(
                "`edge.max_body_bytes` and `edge.max_in_flight` must be above 0".to_owned(),
            ));
        }
        if raw.metering.batch_size == 0 || raw.metering.spool_segment_bytes == 0 {
            return Err(err(
                "`metering.batch_size` and `metering.spool_segment_bytes` must be above 0".to_owned(),
            ));
        }

        for (name, service) in [
            ("auth", &raw.services.auth),
            ("router", &raw.services.router),
            ("adapter", &raw.services.adapter),
            ("metering", &raw.services.metering),
        ] {
            if !valid_host_port(&service.addr) {
                return Err(err(format!(
                    "`services.{name}.addr` must be host:port (an IP address or a DNS name), got `{}`",
                    service.addr
                )));
            }
        }
        let consul = &raw.services.consul;
        if !(consul.addr.starts_with("http://") || consul.addr.starts_with("https://")) {
            return Err(err(format!(
                "`services.consul.addr` must be an http:// or https:// URL, got `{}`",
                consul.addr
            )));
        }
        if consul.check_interval < Duration::from_secs(1) {
            return Err(err(
                "`services.consul.check_interval` must be at least 1s (Consul's floor)".to_owned(),
            ));
        }

        let database = raw.database.map(|db| {
            let db = DatabaseConfig {
                url: Secret::new(db.url),
                max_connections: db.max_connections,
            };
            let url = db.url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(err(format!(
                    "`database.url` must be a postgres:// URL, got `{}`",
                    db.redacted_url()
                )));
            }
            if db.max_connections == 0 {
                return Err(err("`database.max_connections` must be above 0".to_owned()));
            }
            Ok(db)
        });
        let database = database.transpose()?;
        let telemetry = telemetry_config(raw.telemetry, env).map_err(err)?;
        if raw.cache.max_ttl.is_zero() {
            return Err(err("`cache.max_ttl` must be above 0".to_owned()));
        }
        if raw.cache.default_ttl > raw.cache.max_ttl {
            return Err(err(
                "`cache.default_ttl` must not be longer than `cache.max_ttl`".to_owned()
            ));
        }

        Ok(Self {
            file: file.to_owned(),
            data_dir: raw.data_dir,
            log: raw.log,
            edge,
            providers,
            disabled_providers: disabled,
            models,
            services: raw.services,
            metering: raw.metering,
            routing,
            redis_url: match raw.redis {
                Some(r) if r.url.starts_with("redis://") || r.url.starts_with("rediss://") => {
                    Some(Secret::new(r.url))
                }
                Some(_) => return Err(err("`redis.url` must be a redis:// or rediss:// URL".to_owned())),
                None => None,
            },
            database,
            master_key: env
                .get("LLMGW_MASTER_KEY")
                .filter(|k| !k.is_empty())
                .map(Secret::new),
            master_key_previous: env
                .get("LLMGW_MASTER_KEY_PREVIOUS")
                .filter(|k| !k.is_empty())
                .map(Secret::new),
            byok: raw.byok,
            telemetry,
            shutdown: raw.shutdown,
            cache: raw.cache,
            upstream: raw.upstream,
        })
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// Validates the `telemetry:` section; an unset endpoint falls back to
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn telemetry_config(
    mut telemetry: TelemetryConfig,
    env: &HashMap<String, String>,
) -> Result<TelemetryConfig, String> {
    if !(0.0..=1.0).contains(&telemetry.sample_ratio) {
        return Err(format!(
            "`telemetry.sample_ratio` must be between 0.0 and 1.0, got {}",
            telemetry.sample_ratio
        ));
    }
    let (endpoint, key) = match telemetry.otlp_endpoint.take().filter(|e| !e.trim().is_empty()) {
        Some(e) => (Some(e), "`telemetry.otlp_endpoint`"),
        None => (
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .filter(|e| !e.trim().is_empty())
                .cloned(),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    };
    if let Some(endpoint) = endpoint {
        let endpoint = endpoint.trim().to_owned();
        let Some(rest) = endpoint.strip_prefix("http://") else {
            return Err(format!(
                "{key} must be a plaintext OTLP/gRPC address `http://host:port` (TLS is for the collector to add), got `{endpoint}`"
            ));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{key} names no host: `{endpoint}`"));
        }
        telemetry.otlp_endpoint = Some(endpoint);
    }
    Ok(telemetry)
}

/// Why a [`ProviderSpec`] is not a valid provider.
#[derive(Debug, Clone)]
pub struct SpecError {
    pub message: String,
}

impl SpecError {
    fn new(message: String) -> Self {
        Self { message }
    }
}

/// Whether `name` can be a provider's name (its slug): letters, digits,
/// `-`, `_` or `.`.
pub fn valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Validates `p` (of type `kind`) into a runtime [`ProviderConfig`]: each
/// type's required settings, the base URL (its default, or derived from
/// Vertex AI's location or Bedrock's region). `at` names it in messages
/// (`providers[0]`). Used by the config loader and by `auth` for BYOK
/// credentials, so both accept the same settings.
pub fn provider_config(
    p: ProviderSpec,
    mut kind: ProviderKind,
    at: &str,
) -> Result<ProviderConfig, SpecError> {
    // `google` with a project and location is Gemini on Vertex AI.
    if kind == ProviderKind::Google && p.project_id.is_some() && p.location.is_some() {
        kind = ProviderKind::VertexAi;
    }
    let what = format!("`{at}` ({} `{}`)", kind, p.name);
    let need = |field: &str, value: &Option<String>| -> Result<(), SpecError> {
        match value {
            Some(v) if !v.trim().is_empty() => Ok(()),
            _ => Err(SpecError::new(format!(
                "{what}: `{field}` is required for type `{kind}`"
            ))),
        }
    };
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    // Both become part of a host name: a DNS label's characters only.
    for (field, value) in [("region", &p.region), ("location", &p.location)] {
        if let Some(v) = value
            && !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(SpecError::new(format!(
                "{what}: `{field}` must be letters, digits and `-`"
            )));
        }
    }
    let base_url = match (p.base_url.clone(), kind) {
        (Some(url), _) => url,
        (None, ProviderKind::VertexAi) => {
            need("location", &p.location)?;
            let location = p.location.as_deref().unwrap_or_default();
            if location == "global" {
                "https://aiplatform.googleapis.com/v1".to_owned()
            } else {
                format!("https://{location}-aiplatform.googleapis.com/v1")
            }
        }
        (None, ProviderKind::Bedrock) => {
            need("region", &p.region)?;
            format!(
                "https://bedrock-runtime.{}.amazonaws.com",
                p.region.as_deref().unwrap_or_default()
            )
        }
        (None, k) => match k.default_base_url() {
            Some(url) => url.to_owned(),
            None => {
                return Err(SpecError::new(format!(
                    "{what}: `base_url` is required for type `{kind}`"
                )));
            }
        },
    };
    let base_url = base_url.trim_end_matches('/').to_owned();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(SpecError::new(format!(
            "`{at}.base_url` must be an http:// or https:// URL, got `{base_url}`"
        )));
    }
    match kind {
        ProviderKind::AzureOpenAi
            if nonempty(p.api_key.clone()).is_none() && nonempty(p.azure_ad_token.clone()).is_none() =>
        {
            return Err(SpecError::new(format!(
                "{what}: `api_key` or `azure_ad_token` is required"
            )));
        }
        ProviderKind::VertexAi => {
            need("project_id", &p.project_id)?;
            need("location", &p.location)?;
            need("credentials", &p.credentials)?;
        }
        ProviderKind::Bedrock => {
            need("region", &p.region)?;
            need("access_key_id", &p.access_key_id)?;
            need("secret_access_key", &p.secret_access_key)?;
        }
        _ => {}
    }
    Ok(ProviderConfig {
        name: p.name,
        kind,
        base_url,
        api_key: nonempty(p.api_key).map(Secret::new),
        timeout: p.timeout.unwrap_or(DEFAULT_PROVIDER_TIMEOUT),
        max_retries: p.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        default_model: nonempty(p.default_model),
        headers: p.headers.into_iter().collect(),
        organization: p.organization,
        project: p.project,
        api_version: nonempty(p.api_version),
        azure_ad_token: nonempty(p.azure_ad_token).map(Secret::new),
        default_max_tokens: p.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        project_id: nonempty(p.project_id),
        location: nonempty(p.location),
        credentials: nonempty(p.credentials).map(Secret::new),
        region: nonempty(p.region),
        access_key_id: nonempty(p.access_key_id).map(Secret::new),
        secret_access_key: nonempty(p.secret_access_key).map(Secret::new),
        session_token: nonempty(p.session_token).map(Secret::new),
    })
}

/// Replaces `${VAR}` / `${VAR:-default}` in every string, recording the path
/// and name of each variable that is not set (or empty, without a default).
fn expand_value(
    value: &mut Value,
    path: &mut String,
    env: &HashMap<String, String>,
    unset: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) if s.contains("${") => {
            let (expanded, missing) = expand_str(s, env);
            if let Some(var) = missing {
                unset.push((path.clone(), var));
            }
            *s = expanded;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_value(item, path, env, unset);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_str().unwrap_or("?"));
                expand_value(v, path, env, unset);
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => expand_value(&mut tagged.value, path, env, unset),
        _ => {}
    }
}

fn expand_str(s: &str, env: &HashMap<String, String>) -> (String, Option<String>) {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut missing = None;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return (out, missing);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env.get(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                missing.get_or_insert_with(|| name.to_owned());
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    (out, missing)
}

/// Turns serde's "unknown field `x`, expected one of ..." into a message that
/// names the full key path and the nearest valid key.
fn describe_serde_error(e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    let inner = inner.split(" at line ").next().unwrap_or(&inner).to_owned();
    for (marker, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if let Some(pos) = inner.find(marker) {
            let after = &inner[pos + marker.len()..];
            let name = after.split('`').next().unwrap_or("");
            let expected: Vec<&str> = after.split('`').skip(2).step_by(2).collect();
            let full = match path.as_str() {
                "." | "" => name.to_owned(),
                p if what == "value" || p == name || p.ends_with(&format!(".{name}")) => p.to_owned(),
                p => format!("{p}.{name}"),
            };
            return format!("unknown {what} `{full}`{}", suggest(name, &expected));
        }
    }
    if path == "." || path.is_empty() {
        inner
    } else {
        format!("`{path}`: {inner}")
    }
}

fn suggest(name: &str, valid: &[&str]) -> String {
    let best = valid
        .iter()
        .map(|v| (strsim::jaro_winkler(name, v), *v))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, v)) => format!("; did you mean `{v}`?"),
        None if valid.is_empty() => String::new(),
        None => format!("; expected one of: {}", valid.join(", ")),
    }
}

/// The process environment as a map, for `Config::load` (read once, in `main`).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests;
