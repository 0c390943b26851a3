//! The one place that owns gRPC transport settings: every server and every
//! client channel goes through these builders (connect timeout, keepalive,
//! TCP_NODELAY, message size), and every server gets `grpc.health.v1` and
//! reflection.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::{ErrorCode, GwError};

/// Largest message any llmgw server or client accepts or sends (vision
/// payloads inline base64 images).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows, fixed (not hyper's adaptive window, which
/// starts the connection at 64 KiB). h2 (>= 0.4.16) closes a connection with
/// GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames" once the small DATA
/// frames it holds unread exceed half the connection window: every unary
/// call is one small frame, so a busy service holding a few hundred calls
/// from an edge dropped the whole connection and every call on it (seen in
/// `make bench` S2 and S6, split). Half of 64 MiB is room for ~170,000.
const CONNECTION_WINDOW: u32 = 64 << 20;
const STREAM_WINDOW: u32 = 8 << 20;

/// A lazily connecting channel to `addr` (`host:port` or a full `http://` URI).
/// The channel reconnects with backoff on its own; calls fail fast with
/// `UNAVAILABLE` while the peer is down.
pub fn channel(addr: &str) -> Result<Channel, GwError> {
    Ok(endpoint(addr)?.connect_lazy())
}

/// An endpoint for `addr` (`host:port` or a full `http://` URI) with the
/// shared transport settings (for balanced channels, see `discovery`).
pub fn endpoint(addr: &str) -> Result<Endpoint, GwError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| GwError::new(ErrorCode::Internal, format!("bad service address `{addr}`: {e}")))?;
    Ok(configure(endpoint))
}

fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
}

/// Health reporting for one server: every named service starts SERVING and
/// turns NOT_SERVING when shutdown begins.
pub struct Health {
    reporter: HealthReporter,
    names: Vec<String>,
}

impl Health {
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Adds `grpc.health.v1` (overall and per named service) and reflection over
/// every llmgw proto to `routes`.
pub async fn with_health_and_reflection(routes: Routes, names: &[&str]) -> Result<(Routes, Health), GwError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    };
    health.set_serving(true).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(llmgw_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GwError::internal(format!("reflection: {e}")))?;
    Ok((routes.add_service(health_service).add_service(reflection), health))
}

/// Adds `GET /metrics` (this process's Prometheus series, over HTTP/1.1:
/// [`serve`] accepts it) to `routes`.
pub fn with_metrics(routes: Routes) -> Routes {
    Routes::from(
        routes
            .into_axum_router()
            .route("/metrics", axum::routing::get(crate::metrics::handler)),
    )
}

/// Serves `routes` on `listener` until `shutdown` fires, then drains. Every
/// call is counted and timed ([`crate::metrics::GrpcLayer`]); HTTP/1.1 is
/// accepted too, for `GET /metrics` (see [`with_metrics`]).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), GwError> {
    // `Server::tcp_nodelay` is ignored for an incoming stream: set it here, or
    // every small response waits ~40 ms for Nagle and delayed ACKs.
    const MAX_CONCURRENT_STREAMS: u32 = 16_384;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        shutdown.cancelled().await;
        health.set_serving(false).await;
    };
    let mut builder = tonic::transport::Server::builder();
    if crate::telemetry::enabled() {
        // A server span per call, child of the caller's (W3C trace context
        // in the metadata); without export, no per-call work at all.
        builder = builder.trace_fn(crate::telemetry::grpc_server_span);
    }
    builder
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        // Edges multiplex every request over one connection per service:
        // hyper's default (200 streams) would refuse streams under load.
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .accept_http1(true)
        .layer(crate::metrics::GrpcLayer::default())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(|e| GwError::internal(format!("grpc server: {e}")))
}
