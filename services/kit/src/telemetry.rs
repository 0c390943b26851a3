//! Logging and tracing.
//!
//! Logs: `tracing` to stderr, filtered by the `LLMGW_LOG` environment
//! variable, else the config's `log`, else `info`.
//!
//! Traces: when `telemetry.otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! is set, spans at INFO and above go through `tracing-opentelemetry` to an
//! OTLP/gRPC exporter behind a batch processor, with the resource
//! `service.name = llmgw-<role>` (`llmgw` for `all`) and a parent-based
//! ratio sampler. W3C `traceparent`/`tracestate` are read from incoming
//! requests ([`extract`], [`grpc_server_span`]), injected into every internal
//! gRPC call ([`TraceInterceptor`]) and into the upstream HTTP call
//! ([`inject_current`]).
//!
//! Without an endpoint nothing is installed: [`enabled`] is false, the
//! helpers here return at once, [`otel_span!`](crate::otel_span) gives
//! `Span::none()`, and no server adds a tracing layer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::TelemetryConfig;
use crate::error::GwError;

/// Whether spans are exported (set once, by [`init`]).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The provider to flush at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether an exporter is installed: everything tracing-only is skipped
/// when it is not.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An INFO span that exists only while spans are exported (else
/// `Span::none()`, which costs nothing): for spans that serve tracing alone,
/// not log context.
#[macro_export]
macro_rules! otel_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::enabled() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// `service.name` of a process running `role` (`all`, `edge`, `auth`, …).
pub fn service_name(role: &str) -> String {
    if role == "all" {
        "llmgw".to_owned()
    } else {
        format!("llmgw-{role}")
    }
}

/// `gen_ai.provider.name` for a provider `type` of the config: the
/// OpenTelemetry GenAI well-known value where there is one, else the type.
pub fn genai_provider_name(provider_type: &str) -> &str {
    match provider_type {
        "azure-openai" => "azure.ai.openai",
        "google" => "gcp.gemini",
        "vertex-ai" => "gcp.vertex_ai",
        "bedrock" => "aws.bedrock",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        other => other,
    }
}

/// What to export spans as: the config's section and the process's role.
pub struct Export<'a> {
    pub config: &'a TelemetryConfig,
    pub role: &'a str,
}

/// Installs the global subscriber once; later calls are no-ops. `env_filter`
/// is `LLMGW_LOG` from the environment map the caller read. With an
/// [`Export`] whose config names an endpoint, spans are exported too; the
/// exporter needs a Tokio runtime (call this inside one).
pub fn init(
    env_filter: Option<&str>,
    config_filter: Option<&str>,
    export: Option<Export<'_>>,
) -> Result<(), GwError> {
    let wanted = env_filter.or(config_filter).unwrap_or("info");
    let filter = EnvFilter::try_new(wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match export {
        Some(Export { config, role }) => match &config.otlp_endpoint {
            Some(endpoint) => Some(provider(endpoint, config.sample_ratio, role)?),
            None => None,
        },
        None => None,
    };
    let Some(provider) = provider else {
        // Logging alone, its filter global (disabled callsites cost nothing).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
        return Ok(());
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter);
    // Spans are exported at INFO and above whatever the log filter says:
    // logging less must not cut traces apart.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("llmgw"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_filter(LevelFilter::INFO);
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
    {
        let _ = PROVIDER.set(provider);
        ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

fn provider(endpoint: &str, sample_ratio: f64, role: &str) -> Result<SdkTracerProvider, GwError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| GwError::internal(format!("telemetry.otlp_endpoint `{endpoint}`: {e}")))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(Resource::builder().with_service_name(service_name(role)).build())
        .build())
}

/// Flushes the spans still queued and stops the exporter; call once, at
/// exit, from within the runtime (the flush runs on a blocking thread while
/// the runtime drives the gRPC channel).
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get().cloned() {
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at exit failed"),
            Err(e) => tracing::warn!(error = %e, "flushing spans at exit failed"),
        }
    }
}

// ---- W3C trace context ------------------------------------------------------

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// One `traceparent` value, as kept in a usage event.
struct TraceparentExtractor<'a>(&'a str);

impl Extractor for TraceparentExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The trace context a request's headers carry (`traceparent`,
/// `tracestate`); empty when they carry none or an invalid one.
pub fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the context `headers` carry (when they carry
/// one); no-op unless exporting.
pub fn continue_from(span: &tracing::Span, headers: &HeaderMap) {
    if enabled() {
        let _ = span.set_parent(extract(headers));
    }
}

/// Writes the current span's context into `headers` as `traceparent` (and
/// `tracestate`); no-op unless exporting.
pub fn inject_current(headers: &mut HeaderMap) {
    if enabled() {
        let cx = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The current span's `traceparent`, to carry a request's trace into work
/// done later for it (usage events); empty unless exporting.
pub fn current_traceparent() -> String {
    if !enabled() {
        return String::new();
    }
    let mut headers = HeaderMap::new();
    inject_current(&mut headers);
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Makes `span` a child of `traceparent` (from [`current_traceparent`]);
/// no-op when it is empty or not exporting.
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if enabled() && !traceparent.is_empty() {
        let cx = TraceContextPropagator::new().extract(&TraceparentExtractor(traceparent));
        let _ = span.set_parent(cx);
    }
}

/// Sets a string-array attribute (such as `gen_ai.response.finish_reasons`),
/// which `tracing` fields cannot express.
pub fn set_string_array(span: &tracing::Span, key: &'static str, values: Vec<String>) {
    if enabled() && !values.is_empty() {
        let values = values.into_iter().map(opentelemetry::StringValue::from).collect();
        span.set_attribute(
            key,
            opentelemetry::Value::Array(opentelemetry::Array::String(values)),
        );
    }
}

/// The server span of one gRPC call (tonic's `trace_fn`), a child of the
/// context its metadata carries: `{package.Service}/{Method}`, kind server.
/// Health checks and reflection make no spans, nor do internal calls made
/// outside any trace (the batched usage and health reports: their work
/// joins each request's trace another way).
pub fn grpc_server_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    let Some(full) = path.strip_prefix('/').filter(|p| p.starts_with("llmgw.")) else {
        return tracing::Span::none();
    };
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    if service != "llmgw.v1.Gateway" && !req.headers().contains_key("traceparent") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc",
        otel.name = full,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    continue_from(&span, req.headers());
    span
}

/// Injects the current span's context into every outgoing internal gRPC
/// call's metadata, so the service's spans join the caller's trace. Does
/// nothing unless exporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if enabled() {
            let cx = tracing::Span::current().context();
            TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(req.metadata_mut()));
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert_eq!(service_name("all"), "llmgw");
        assert_eq!(service_name("edge"), "llmgw-edge");
        assert_eq!(service_name("metering"), "llmgw-metering");
    }

    #[test]
    fn extracts_w3c_context_and_ignores_garbage() {
        use opentelemetry::trace::TraceContextExt as _;
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");

        headers.insert("traceparent", http::HeaderValue::from_static("not-a-traceparent"));
        assert!(!extract(&headers).span().span_context().is_valid());
    }

    #[test]
    fn without_an_exporter_nothing_is_injected() {
        let mut headers = HeaderMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
        assert!(current_traceparent().is_empty());
        let req = tonic::service::Interceptor::call(&mut TraceInterceptor, tonic::Request::new(()));
        assert!(req.is_ok_and(|r| r.metadata().is_empty()));
    }
}
