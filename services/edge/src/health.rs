//! `GET /` and `GET /health`: the edge and each dependency it needs, checked
//! at once, concurrently, each within [`CHECK_TIMEOUT`].
//!
//! Checks (`?skip=a,b` leaves named ones out):
//! - `auth`, `router`, `adapter`, `metering`: split, the `grpc.health.v1`
//!   check of each service over the edge's own channel to it; in
//!   `llmgw all` they run in this process and are up while it is.
//! - `auth_store`: the auth store answers (a lookup of a key that cannot
//!   exist comes back "unknown key", not a store error).
//! - `metering_store`: the usage store answers (an empty usage query).
//! - `redis`: `PING`, when `redis:` is configured.
//! - `consul`: the local agent's `/v1/status/leader`, with Consul discovery.
//!
//! `{"status": "ok"|"degraded"|"down", "checks": {name: {status,
//! latency_ms, error?}}}`: 200 while every required check passes
//! (`degraded` when only Consul failed: discovery keeps the endpoints it
//! last saw), else 503 (`down`).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use llmgw_kit::config::{Config, Discovery};
use llmgw_kit::secret::Secret;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

use crate::Deps;

/// Longest any one check may take; past it, it is down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/health` checks, fixed at start.
pub struct Health {
    deps: Deps,
    redis: Option<redis::Client>,
    /// `host:port` of the Consul agent's HTTP API, with Consul discovery.
    consul: Option<String>,
}

#[derive(Serialize)]
pub struct Check {
    pub status: &'static str,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub status: &'static str,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
}

/// Checks whose failure leaves the edge serving: only degraded.
const OPTIONAL: [&str; 1] = ["consul"];

impl Health {
    pub fn new(config: &Config, deps: Deps, redis: Option<&Secret>) -> Self {
        let consul = (config.services.discovery == Discovery::Consul).then(|| {
            let addr = &config.services.consul.addr;
            let rest = addr
                .strip_prefix("http://")
                .or_else(|| addr.strip_prefix("https://"))
                .unwrap_or(addr);
            rest.split('/').next().unwrap_or(rest).to_owned()
        });
        Self {
            deps,
            // An invalid URL already failed the rate limiter's build.
            redis: redis.and_then(|url| redis::Client::open(url.expose()).ok()),
            consul,
        }
    }

    /// Runs every check not in `skip`, concurrently.
    pub async fn report(&self, skip: &[&str]) -> Report {
        type Probe<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
        let mut probes: Vec<(&'static str, Probe<'_>)> = Vec::new();
        let channels = &self.deps.channels;
        for name in ["auth", "router", "adapter", "metering"] {
            match channels.iter().find(|(n, _)| *n == name) {
                Some((_, channel)) => probes.push((name, Box::pin(grpc_health(channel.clone())))),
                // In this process: up while the process is.
                None => probes.push((name, Box::pin(async { Ok::<(), String>(()) }))),
            }
        }
        probes.push(("auth_store", Box::pin(self.auth_store())));
        probes.push(("metering_store", Box::pin(self.metering_store())));
        if let Some(client) = &self.redis {
            probes.push(("redis", Box::pin(redis_ping(client))));
        }
        if let Some(addr) = &self.consul {
            probes.push(("consul", Box::pin(consul_leader(addr))));
        }
        let runs =
            probes
                .into_iter()
                .filter(|(name, _)| !skip.contains(name))
                .map(|(name, probe)| async move {
                    let started = Instant::now();
                    let result = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                    };
                    let latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
                    let check = match result {
                        Ok(()) => Check {
                            status: "ok",
                            latency_ms,
                            error: None,
                        },
                        Err(e) => Check {
                            status: "down",
                            latency_ms,
                            error: Some(e),
                        },
                    };
                    (name, check)
                });
        let checks: std::collections::BTreeMap<_, _> = join_all(runs).await.into_iter().collect();
        let failed = |optional: bool| {
            checks
                .iter()
                .any(|(name, c)| c.status != "ok" && OPTIONAL.contains(name) == optional)
        };
        let status = if failed(false) {
            "down"
        } else if failed(true) {
            "degraded"
        } else {
            "ok"
        };
        Report { status, checks }
    }

    async fn auth_store(&self) -> Result<(), String> {
        // A key that cannot exist: "unknown key" means the store answered.
        let probe = pb::AuthenticateRequest {
            api_key: "llmgw-health-probe".to_owned(),
        };
        match self.deps.auth.authenticate(probe).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::PermissionDenied) => Ok(()),
            Err(e) => Err(describe(&e)),
        }
    }

    async fn metering_store(&self) -> Result<(), String> {
        let probe = pb::UsageQueryRequest {
            org_id: "llmgw-health-probe".to_owned(),
            start_ms: 0,
            end_ms: 1,
            ..Default::default()
        };
        self.deps
            .metering
            .query_usage(probe)
            .await
            .map(drop)
            .map_err(|e| describe(&e))
    }
}

/// An error as a health check shows it: its code and message (which never
/// carry secrets: see [`GwError`]).
fn describe(e: &GwError) -> String {
    format!("{}: {}", e.code().as_str_name().to_ascii_lowercase(), e.message())
}

async fn grpc_health(channel: Channel) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = client
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(other.as_str_name().to_ascii_lowercase()),
    }
}

async fn redis_ping(client: &redis::Client) -> Result<(), String> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("{:?}", e.kind()))?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(drop)
        .map_err(|e| format!("{:?}", e.kind()))
}

/// `GET /v1/status/leader` on the agent: 200 with a leader's address.
async fn consul_leader(addr: &str) -> Result<(), String> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {}", e.kind()))?;
    let request = format!("GET /v1/status/leader HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send: {}", e.kind()))?;
    let mut reply = Vec::with_capacity(512);
    tcp.take(4096)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("cannot read: {}", e.kind()))?;
    let text = String::from_utf8_lossy(&reply);
    let status_ok = text
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if !status_ok {
        return Err("the agent answered with an error".to_owned());
    }
    if body.is_empty() || body == "\"\"" {
        return Err("the agent knows no leader".to_owned());
    }
    Ok(())
}
