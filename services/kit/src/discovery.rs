//! Finding the other services: static addresses from the config, or Consul.
//!
//! With `services.discovery: consul` each service registers itself with the
//! local agent ([`Registration`]: id, address, port, tags, a gRPC health
//! check against `grpc.health.v1`) and deregisters on graceful shutdown; a
//! client [`channel`] watches `/v1/health/service/<name>?passing` with
//! blocking queries (rs-consul) and feeds the instances into a balanced tonic
//! channel, so replicas join and leave without restarting the client.
//!
//! Registration goes through the agent's own API (`PUT
//! /v1/agent/service/register`), which rs-consul does not wrap: it only
//! offers `/v1/catalog/register`, whose checks no agent runs and whose
//! entries on an agent's node are undone by the agent's anti-entropy. That
//! is two small PUTs, sent with hyper here.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rs_consul::{Consul, GetServiceNodesRequest, QueryOptions, ServiceNode};
use tokio::sync::mpsc::Sender;
use tonic::transport::Channel;
use tonic::transport::channel::Change;

use crate::config::{ConsulConfig, Discovery, ServicesConfig};
use crate::error::GwError;
use crate::grpc;

/// One of the internal services, as clients look it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Edge,
    Auth,
    Router,
    Adapter,
    Metering,
}

impl Service {
    /// The name it is registered under in Consul.
    pub fn consul_name(self) -> &'static str {
        match self {
            Self::Edge => "llmgw-edge",
            Self::Auth => "llmgw-auth",
            Self::Router => "llmgw-router",
            Self::Adapter => "llmgw-adapter",
            Self::Metering => "llmgw-metering",
        }
    }

    /// The gRPC service its health check asks about.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Self::Edge => "llmgw.v1.Gateway",
            Self::Auth => "llmgw.v1.Auth",
            Self::Router => "llmgw.v1.Router",
            Self::Adapter => "llmgw.v1.Adapter",
            Self::Metering => "llmgw.v1.Metering",
        }
    }

    /// Where it listens per the config (the edge: its public gRPC address
    /// is not in `services:`, so `None`).
    fn static_addr(self, services: &ServicesConfig) -> Option<&str> {
        match self {
            Self::Edge => None,
            Self::Auth => Some(&services.auth.addr),
            Self::Router => Some(&services.router.addr),
            Self::Adapter => Some(&services.adapter.addr),
            Self::Metering => Some(&services.metering.addr),
        }
    }
}

/// A channel to `service`: to its configured address (static; a DNS name
/// is re-resolved and balanced over every address it has), or balanced
/// over its passing instances in Consul. Must be called within a Tokio
/// runtime (the watches are tasks).
pub fn channel(services: &ServicesConfig, service: Service) -> Result<Channel, GwError> {
    match services.discovery {
        Discovery::Consul => Ok(watch(&services.consul, service)),
        Discovery::Static => {
            let addr = service.static_addr(services).ok_or_else(|| {
                GwError::internal(format!("{} has no static address", service.consul_name()))
            })?;
            if addr.parse::<SocketAddr>().is_ok() {
                grpc::channel(addr)
            } else {
                Ok(resolve(addr.to_owned(), service.consul_name()))
            }
        }
    }
}

/// How often a DNS name in `services:` is resolved again (a headless
/// Service's pods come and go).
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// A balanced channel over every address `host_port` resolves to, resolved
/// again every [`RESOLVE_EVERY`]. A failed lookup keeps the last known set.
fn resolve(host_port: String, name: &'static str) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(CHANGE_QUEUE);
    tokio::spawn(async move {
        let mut known = HashSet::new();
        loop {
            match tokio::net::lookup_host(host_port.as_str()).await {
                Ok(addrs) => {
                    if !apply(name, &mut known, addrs.collect(), &changes).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(service = name, host = %host_port, error = %e, "cannot resolve; keeping the last known addresses");
                }
            }
            tokio::time::sleep(RESOLVE_EVERY).await;
            if changes.is_closed() {
                return;
            }
        }
    });
    channel
}

/// Sends the difference between `known` and `now` to a balanced channel
/// and makes `now` the known set; false once the channel is gone.
async fn apply(
    name: &str,
    known: &mut HashSet<SocketAddr>,
    now: HashSet<SocketAddr>,
    changes: &Sender<Change<SocketAddr, tonic::transport::Endpoint>>,
) -> bool {
    for gone in known.difference(&now) {
        tracing::info!(service = name, addr = %gone, "instance left");
        if changes.send(Change::Remove(*gone)).await.is_err() {
            return false;
        }
    }
    for new in now.difference(known) {
        let endpoint = match grpc::endpoint(&new.to_string()) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::warn!(service = name, error = %e, "instance skipped");
                continue;
            }
        };
        tracing::info!(service = name, addr = %new, "instance joined");
        if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
            return false;
        }
    }
    *known = now;
    !changes.is_closed()
}

/// Endpoints a balanced channel's discovery queue holds before the watch
/// waits for the channel to take them.
const CHANGE_QUEUE: usize = 64;
/// How long one blocking query waits for a change at Consul.
const WATCH_WAIT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A balanced channel over the passing instances of `service`, kept up to
/// date by a watch task.
fn watch(consul: &ConsulConfig, service: Service) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(CHANGE_QUEUE);
    let client = Consul::new(rs_consul::Config {
        address: consul.addr.trim_end_matches('/').to_owned(),
        ..Default::default()
    });
    tokio::spawn(watch_loop(client, service.consul_name(), changes));
    channel
}

/// Watches `name`'s passing instances with blocking queries and sends the
/// differences to the channel. On a Consul error it keeps the last known
/// set and tries again with exponential backoff (jittered); it ends when the
/// channel is dropped.
async fn watch_loop(
    consul: Consul,
    name: &'static str,
    changes: Sender<Change<SocketAddr, tonic::transport::Endpoint>>,
) {
    let mut known: HashSet<SocketAddr> = HashSet::new();
    let mut index: Option<u64> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let options = QueryOptions {
            index,
            wait: Some(WATCH_WAIT),
            // Consul adds up to wait/16 of jitter to a blocking query.
            timeout: Some(WATCH_WAIT + WATCH_WAIT / 8 + Duration::from_secs(5)),
            ..Default::default()
        };
        let request = GetServiceNodesRequest {
            service: name,
            passing: true,
            ..Default::default()
        };
        let started = Instant::now();
        let reply = match consul.get_service_nodes(request, Some(options)).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(service = name, error = %e, retry_in = ?backoff, "consul watch failed; keeping the last known instances");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // The agent may come back as a new one, whose indexes start
                // lower: blocking on the old index would wait out the full
                // `wait` before seeing anything. Start over with a plain read.
                index = None;
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        // An index that goes backwards (the agent restarted) starts over;
        // 0 is never a valid index to block on.
        index = match index {
            Some(prev) if reply.index < prev => None,
            _ => Some(reply.index.max(1)),
        };
        let now: HashSet<SocketAddr> = reply.response.iter().filter_map(instance_addr).collect();
        if !apply(name, &mut known, now, &changes).await {
            return;
        }
        // Consul's advice: rate-limit a watch whose queries come back at
        // once (a flapping service, or an index that never settles).
        if started.elapsed() < Duration::from_millis(10) {
            tokio::time::sleep(BACKOFF_MIN).await;
        }
    }
}

/// The instance's `ip:port`: its service address, or its node's when it
/// registered none (as Consul's own DNS answers).
fn instance_addr(node: &ServiceNode) -> Option<SocketAddr> {
    let host = if node.service.address.is_empty() {
        &node.node.address
    } else {
        &node.service.address
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, node.service.port)),
        Err(_) => {
            tracing::warn!(service = %node.service.service, host = %host, "instance address is not an IP; skipped");
            None
        }
    }
}

/// `d` plus up to 50% (from the clock's low bits: no RNG needed for this).
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

// ---- registration ---------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// This process's entry in Consul; [`Registration::deregister`] removes it.
pub struct Registration {
    client: HttpClient,
    agent: String,
    id: String,
    /// Registers again whenever the agent has lost the entry (an agent
    /// restarted without its data dir, e.g. a dev agent).
    keeper: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Registers `service`, listening on `listen`, with the local agent;
    /// retries with backoff until the agent answers or `within` has passed.
    pub async fn register(
        consul: &ConsulConfig,
        service: Service,
        listen: SocketAddr,
        within: Duration,
    ) -> Result<Self, GwError> {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let agent = consul.addr.trim_end_matches('/').to_owned();
        let (host, check_host) = match (&consul.advertise_host, listen.ip()) {
            (Some(host), _) => (host.clone(), host.clone()),
            // Every interface: register no address (clients use the node's),
            // and the agent, which is local, checks over loopback.
            (None, ip) if ip.is_unspecified() => (String::new(), "127.0.0.1".to_owned()),
            (None, ip) => (ip.to_string(), ip.to_string()),
        };
        let port = listen.port();
        let id_host = if host.is_empty() { hostname() } else { host.clone() };
        let id = format!("{}-{id_host}-{port}", service.consul_name());
        let body = serde_json::json!({
            "ID": id,
            "Name": service.consul_name(),
            "Address": host,
            "Port": port,
            "Tags": ["llmgw", "grpc"],
            "Meta": { "metrics_path": "/metrics" },
            "Check": {
                "CheckID": format!("{id}-grpc"),
                "Name": "grpc.health.v1",
                "GRPC": format!("{}/{}", join_host_port(&check_host, port), service.grpc_name()),
                "GRPCUseTLS": false,
                "Interval": humantime_secs(consul.check_interval),
                "Timeout": humantime_secs(consul.check_interval.min(Duration::from_secs(5))),
                "DeregisterCriticalServiceAfter": humantime_secs(consul.deregister_critical_after),
            },
        });
        let url = format!("{agent}/v1/agent/service/register");
        let body = Bytes::from(body.to_string());
        let deadline = Instant::now() + within;
        let mut backoff = BACKOFF_MIN;
        loop {
            match put(&client, &url, body.clone()).await {
                Ok(()) => break,
                Err(e) if Instant::now() + backoff < deadline => {
                    tracing::warn!(service = service.consul_name(), error = %e, "consul registration failed; retrying");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => {
                    return Err(GwError::internal(format!(
                        "cannot register {} with consul at {agent}: {e}",
                        service.consul_name()
                    )));
                }
            }
        }
        tracing::info!(service = service.consul_name(), id = %id, "registered with consul");
        let keeper = tokio::spawn(keep_registered(
            client.clone(),
            format!("{agent}/v1/agent/service/{id}"),
            url,
            body,
            (consul.check_interval * 3).max(Duration::from_secs(3)),
        ));
        Ok(Self {
            client,
            agent,
            id,
            keeper,
        })
    }

    /// The service id in Consul (`name-host-port`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes this instance from Consul; logs (never fails) when the agent
    /// cannot be reached: its check then turns critical on its own.
    pub async fn deregister(&self) {
        self.keeper.abort();
        let url = format!("{}/v1/agent/service/deregister/{}", self.agent, self.id);
        match put(&self.client, &url, Bytes::new()).await {
            Ok(()) => tracing::info!(id = %self.id, "deregistered from consul"),
            Err(e) => tracing::warn!(id = %self.id, error = %e, "consul deregistration failed"),
        }
    }
}

/// Registers `service` when discovery is Consul; `None` when static.
pub async fn register_if_consul(
    services: &ServicesConfig,
    service: Service,
    listen: SocketAddr,
) -> Result<Option<Registration>, GwError> {
    match services.discovery {
        Discovery::Static => Ok(None),
        Discovery::Consul => {
            Registration::register(&services.consul, service, listen, Duration::from_secs(30))
                .await
                .map(Some)
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Every `every`, asks the agent for the entry at `service_url` and, when it
/// has none, registers again (`register_url`, `body`).
async fn keep_registered(
    client: HttpClient,
    service_url: String,
    register_url: String,
    body: Bytes,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        match send(&client, http::Method::GET, &service_url, Bytes::new()).await {
            Ok(http::StatusCode::NOT_FOUND) => match put(&client, &register_url, body.clone()).await {
                Ok(()) => {
                    tracing::info!(url = %service_url, "registered with consul again (the agent had lost it)")
                }
                Err(e) => tracing::warn!(error = %e, "consul registration failed; retrying"),
            },
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "consul agent unreachable"),
        }
    }
}

const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

async fn put(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    match send(client, http::Method::PUT, url, body).await? {
        status if status.is_success() => Ok(()),
        status => Err(format!("agent answered {status}")),
    }
}

/// One call to the agent: its status when 2xx or 404, else an error with
/// the agent's message.
async fn send(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: Bytes,
) -> Result<http::StatusCode, String> {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(AGENT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {AGENT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() || status == http::StatusCode::NOT_FOUND {
        return Ok(status);
    }
    let text = tokio::time::timeout(AGENT_TIMEOUT, response.into_body().collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!("agent answered {status}: {}", text.trim()))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A duration as Consul reads it (`1500ms`).
fn humantime_secs(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(service_addr: &str, node_addr: &str, port: u16) -> ServiceNode {
        let mut n = ServiceNode::default();
        n.service.address = service_addr.to_owned();
        n.node.address = node_addr.to_owned();
        n.service.port = port;
        n
    }

    #[test]
    fn an_instance_is_its_service_address_or_its_nodes() {
        assert_eq!(
            instance_addr(&node("10.0.0.5", "10.0.0.1", 50063)),
            Some("10.0.0.5:50063".parse().unwrap())
        );
        assert_eq!(
            instance_addr(&node("", "10.0.0.1", 50063)),
            Some("10.0.0.1:50063".parse().unwrap())
        );
        assert_eq!(instance_addr(&node("adapter.local", "10.0.0.1", 1)), None);
    }

    /// A DNS name in `services:` (static discovery) is resolved, balanced
    /// over and called like an address.
    #[tokio::test]
    async fn a_dns_name_is_resolved_into_a_balanced_channel() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let config = crate::config::Config::parse(
            &format!("services:\n  auth: {{addr: \"localhost:{port}\"}}\n"),
            "g.yaml",
            &std::collections::HashMap::new(),
        )
        .unwrap();
        assert_eq!(config.services.auth.socket_addr(), None);
        let channel = channel(&config.services, Service::Auth).unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.check(tonic_health::pb::HealthCheckRequest::default()),
        )
        .await
        .expect("answered in time")
        .unwrap();
        assert_eq!(
            reply.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }

    #[test]
    fn hosts_and_durations_as_consul_reads_them() {
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        assert_eq!(join_host_port("127.0.0.1", 5), "127.0.0.1:5");
        assert_eq!(humantime_secs(Duration::from_secs(1)), "1000ms");
        let j = jittered(Duration::from_secs(2));
        assert!(j >= Duration::from_secs(2) && j <= Duration::from_secs(3));
    }
}
