//! The edge: the public surface and the per-request orchestration.
//!
//! It serves the OpenAI REST API (axum), the public gRPC API
//! (`llmgw.v1.Gateway`, tonic) on its own port, and the same gRPC service as
//! gRPC-Web on the HTTP port. Every request, whatever its door, runs through
//! [`pipeline`]: authenticate (cached) → route → attempt each target → meter,
//! calling the other services only through their client types, so the edge
//! never knows whether they run in this process or across the network.

mod anthropic;
mod auth_cache;
mod cache;
#[doc(hidden)]
pub mod fuzz;
mod grpc;
mod health;
mod http;
mod limits;
mod meter;
mod openapi;
mod pipeline;
mod report;
mod stream;
mod surface;
mod usage;

use std::sync::Arc;

use axum::serve::ListenerExt as _;
use llmgw_kit::GwError;
use llmgw_kit::config::Config;
use llmgw_kit::services::{Adapter, Auth, Metering, Router};
use llmgw_kit::shutdown::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use meter::{MeterSender, MeterStats};

/// The services the edge calls, local or remote.
#[derive(Clone)]
pub struct Deps {
    pub auth: Auth,
    pub router: Router,
    pub adapter: Adapter,
    pub metering: Metering,
    /// The gRPC channels to remote services (`auth`, `router`, `adapter`,
    /// `metering`), for `/health`'s `grpc.health.v1` checks; empty when
    /// they run in this process.
    pub channels: Vec<(&'static str, tonic::transport::Channel)>,
}

/// A built edge, ready to serve on listeners its caller bound.
pub struct Edge {
    inner: Arc<pipeline::Pipeline>,
    meter_task: JoinHandle<()>,
}

impl Edge {
    /// Builds the edge and starts its metering shipper (which flushes what it
    /// holds and exits once the edge is dropped or has run).
    pub fn build(config: &Config, deps: Deps) -> Result<Self, GwError> {
        // The edge's series exist (at zero) from the start.
        llmgw_kit::metrics::edge();
        llmgw_kit::metrics::gen_ai();
        let limiter = limits::Limiter::new(config.redis_url.as_ref())?;
        let spool_dir = config
            .metering
            .spool_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("meter-spool").join("edge"));
        let (meter, meter_task) = meter::spawn(deps.metering.clone(), config.metering.clone(), spool_dir)?;
        let cache = Arc::new(cache::Cache::new(&config.cache, config.redis_url.as_ref())?);
        let inner = Arc::new(pipeline::Pipeline::new(config, deps, meter, limiter, cache));
        Ok(Self { inner, meter_task })
    }

    /// Serves REST + gRPC-Web on `http` and public gRPC on `grpc` until
    /// `shutdown`, then drains in-flight requests and flushes metering.
    pub async fn run(
        self,
        http: TcpListener,
        grpc: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), GwError> {
        let app = http::router(self.inner.clone());
        let http_shutdown = shutdown.clone();
        let http_task = async move {
            let http = http.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(http, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
                .map_err(|e| GwError::internal(format!("http server: {e}")))
        };
        let (routes, health) = llmgw_kit::grpc::with_health_and_reflection(
            grpc::routes(self.inner.clone()),
            &["llmgw.v1.Gateway"],
        )
        .await?;
        // `/metrics` on the gRPC port too, as every service has it there
        // (whichever port discovery registers, Prometheus finds it).
        let routes = llmgw_kit::grpc::with_metrics(routes);
        let grpc_task = llmgw_kit::grpc::serve(grpc, routes, health, shutdown.clone());
        // Both servers watch `shutdown`; whichever stops first (an error)
        // stops the other, and both drain their in-flight requests.
        let (http_result, grpc_result) = tokio::join!(
            async {
                let r = http_task.await;
                shutdown.cancel();
                r
            },
            async {
                let r = grpc_task.await;
                shutdown.cancel();
                r
            },
        );
        // Dropping the pipeline drops the last metering sender: the shipper
        // flushes what it holds and exits.
        drop(self.inner);
        if let Err(e) = self.meter_task.await {
            tracing::warn!(error = %e, "metering shipper ended abnormally");
        }
        http_result.and(grpc_result)
    }
}
