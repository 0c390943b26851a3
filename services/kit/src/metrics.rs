//! Prometheus metrics: one registry per process, rendered as OpenMetrics text
//! on `GET /metrics` (the edge on its HTTP address, every internal service
//! on its gRPC port over HTTP/1.1, `llmgw all` once, on the edge).
//!
//! Series are grouped by the part of the gateway that records them; each
//! group registers itself the first time it is used, so a process exports
//! only the series of the services it runs. Names and labels follow the
//! OpenTelemetry GenAI semantic conventions where they exist
//! (`gen_ai.client.token.usage` → `gen_ai_client_token_usage`), `llmgw_*`
//! otherwise.
//!
//! Recording is cheap: counters and histograms are atomics; a labelled
//! series is found under a read lock by a label set of `&'static str` codes
//! and [`Name`]s (shared, interned strings: no allocation once a name has
//! been seen). Labels come from codes and configured names only — never
//! free text, never org or key ids.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

fn register(name: &str, help: &str, metric: impl Metric) {
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .register(name, help, metric);
}

/// A gauge whose value `read` gives at each scrape (state a service keeps
/// anyway, such as targets ejected now). Registered once per `name` and
/// process: later calls are ignored.
pub fn gauge_fn(name: &'static str, help: &'static str, read: impl Fn() -> i64 + Send + Sync + 'static) {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if names.contains(&name) {
        return;
    }
    names.push(name);
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .register_collector(Box::new(GaugeFn {
            name,
            help,
            read: Box::new(read),
        }));
}

struct GaugeFn {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for GaugeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaugeFn").field("name", &self.name).finish()
    }
}

impl prometheus_client::collector::Collector for GaugeFn {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let metric = encoder.encode_descriptor(
            self.name,
            self.help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new((self.read)()).encode(metric)
    }
}

/// Every series of this process, as OpenMetrics text.
pub fn render() -> String {
    let mut out = String::with_capacity(16 << 10);
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// An axum handler serving [`render`].
pub async fn handler() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render()).into_response()
}

// ---- names ------------------------------------------------------------------

/// A label value that is a name from config or a route template: shared, so
/// a label set is built without allocating.
pub type Name = Arc<str>;

/// Distinct names kept; past it every new name is `other`, so a label can
/// never grow without bound.
const MAX_NAMES: usize = 2048;

/// Names seen so far, at most `cap`; past it every new name is `other`.
struct Interner {
    names: RwLock<HashSet<Name>>,
    other: Name,
    cap: usize,
}

impl Interner {
    fn new(cap: usize) -> Self {
        Self {
            names: RwLock::new(HashSet::new()),
            other: Arc::from("other"),
            cap,
        }
    }

    fn get(&self, s: &str) -> Name {
        if let Some(n) = self.names.read().unwrap_or_else(PoisonError::into_inner).get(s) {
            return n.clone();
        }
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = names.get(s) {
            return n.clone();
        }
        if names.len() >= self.cap {
            return self.other.clone();
        }
        let n: Name = Arc::from(s);
        names.insert(n.clone());
        n
    }
}

static NAMES: LazyLock<Interner> = LazyLock::new(|| Interner::new(MAX_NAMES));

/// The shared [`Name`] for `s` (a read lock and a hash once seen).
pub fn name(s: &str) -> Name {
    NAMES.get(s)
}

// ---- helpers ----------------------------------------------------------------

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Histograms<S> = Family<S, Histogram, Buckets>;

fn histograms<S: Clone + std::hash::Hash + Eq>(buckets: &'static [f64]) -> Histograms<S> {
    Family::new_with_constructor(Buckets(buckets))
}

/// OpenTelemetry's advisory buckets for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// OpenTelemetry's advisory buckets for `gen_ai.client.operation.duration`.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// OpenTelemetry's advisory buckets for `gen_ai.server.time_to_first_token`.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The gateway's own time: 50 µs to 1.6 s.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6,
];
/// Request durations, 1 ms to ~65 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A gauge held up while this guard lives (requests or streams in flight).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// ---- GenAI (the edge) -------------------------------------------------------

/// What a GenAI series is about: the operation, the provider's wire type
/// (`gen_ai_provider_name`, e.g. `openai`), the model the provider was asked
/// for (from config or the catalog, never the client's text) and the
/// gateway's provider name (its config slug; `byok` for an org's own).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    pub gen_ai_operation_name: &'static str,
    pub gen_ai_provider_name: Name,
    pub gen_ai_request_model: Name,
    pub llmgw_provider: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    #[prometheus(flatten)]
    base: GenAiLabels,
    gen_ai_token_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    #[prometheus(flatten)]
    base: GenAiLabels,
    /// Empty (absent) on success.
    error_type: &'static str,
}

/// The `gen_ai_*` series and cost, recorded once per request by the edge.
pub struct GenAi {
    tokens: Histograms<TokenLabels>,
    duration: Histograms<OutcomeLabels>,
    ttft: Histograms<GenAiLabels>,
    cost: Family<GenAiLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// A successful request's four series by label set, so that it costs
    /// one lookup rather than four (each hashing every label). Keyed by the
    /// labels' addresses: names are interned, so equal labels share them
    /// (and labels that do not still find the same series, only cached twice).
    ok: RwLock<HashMap<[usize; 4], Arc<OkSeries>>>,
}

/// The series a successful request records into.
struct OkSeries {
    input: Histogram,
    output: Histogram,
    duration: Histogram,
    cost: Counter<f64, std::sync::atomic::AtomicU64>,
}

/// Label sets whose series [`GenAi`] keeps at hand; past it the cache starts over.
const MAX_CACHED_SERIES: usize = 4096;

static GEN_AI: LazyLock<GenAi> = LazyLock::new(|| {
    let m = GenAi {
        tokens: histograms(TOKEN_BUCKETS),
        duration: histograms(DURATION_BUCKETS),
        ttft: histograms(TTFT_BUCKETS),
        cost: Family::default(),
        ok: RwLock::new(HashMap::new()),
    };
    register(
        "gen_ai_client_token_usage",
        "Tokens used per request, by token type (input, output)",
        m.tokens.clone(),
    );
    register(
        "gen_ai_client_operation_duration_seconds",
        "Duration of GenAI requests, first byte to last, at the gateway",
        m.duration.clone(),
    );
    register(
        "gen_ai_server_time_to_first_token_seconds",
        "Time from the request's admission to the first streamed chunk",
        m.ttft.clone(),
    );
    register(
        "llmgw_cost_usd",
        "Cost of requests in US dollars, at the price the router used",
        m.cost.clone(),
    );
    m
});

pub fn gen_ai() -> &'static GenAi {
    &GEN_AI
}

impl GenAi {
    /// One finished request: its tokens (when known), duration and cost;
    /// `error_type` empty on success.
    pub fn record(
        &self,
        labels: &GenAiLabels,
        tokens: Option<(u32, u32)>,
        duration: Duration,
        error_type: &'static str,
        cost_usd: f64,
    ) {
        // The common case: a success with tokens and a cost.
        if error_type.is_empty()
            && cost_usd > 0.0
            && let Some((input, output)) = tokens
        {
            let series = self.ok_series(labels);
            series.input.observe(f64::from(input));
            series.output.observe(f64::from(output));
            series.duration.observe(duration.as_secs_f64());
            series.cost.inc_by(cost_usd);
            return;
        }
        if let Some((input, output)) = tokens {
            let mut key = TokenLabels {
                base: labels.clone(),
                gen_ai_token_type: "input",
            };
            self.tokens.get_or_create(&key).observe(f64::from(input));
            key.gen_ai_token_type = "output";
            self.tokens.get_or_create(&key).observe(f64::from(output));
        }
        let key = OutcomeLabels {
            base: labels.clone(),
            error_type,
        };
        self.duration.get_or_create(&key).observe(duration.as_secs_f64());
        if cost_usd > 0.0 {
            self.cost.get_or_create(labels).inc_by(cost_usd);
        }
    }

    /// The series of a successful request with `labels` and a cost.
    fn ok_series(&self, labels: &GenAiLabels) -> Arc<OkSeries> {
        let key = [
            labels.gen_ai_operation_name.as_ptr() as usize,
            Arc::as_ptr(&labels.gen_ai_provider_name).cast::<u8>() as usize,
            Arc::as_ptr(&labels.gen_ai_request_model).cast::<u8>() as usize,
            Arc::as_ptr(&labels.llmgw_provider).cast::<u8>() as usize,
        ];
        if let Some(series) = self.ok.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return series.clone();
        }
        let mut token = TokenLabels {
            base: labels.clone(),
            gen_ai_token_type: "input",
        };
        let input = self.tokens.get_or_create(&token).clone();
        token.gen_ai_token_type = "output";
        let output = self.tokens.get_or_create(&token).clone();
        let outcome = OutcomeLabels {
            base: labels.clone(),
            error_type: "",
        };
        let series = Arc::new(OkSeries {
            input,
            output,
            duration: self.duration.get_or_create(&outcome).clone(),
            cost: self.cost.get_or_create(labels).clone(),
        });
        let mut ok = self.ok.write().unwrap_or_else(PoisonError::into_inner);
        if ok.len() >= MAX_CACHED_SERIES {
            ok.clear();
        }
        ok.insert(key, series.clone());
        series
    }

    /// A stream's first chunk, `since` its admission.
    pub fn first_token(&self, labels: &GenAiLabels, since: Instant) {
        self.ttft
            .get_or_create(labels)
            .observe(since.elapsed().as_secs_f64());
    }
}

// ---- the edge ---------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// The route template (`/v1/chat/completions`, `/v1/models/{*id}`), or
    /// `unmatched`.
    route: Name,
    code: u16,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCodeLabels {
    provider: Name,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: Name,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `chat`, `chat_stream` or `embeddings`.
    kind: &'static str,
}

/// Why the edge refused a request before any provider saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Auth,
    Policy,
    RateLimit,
    Budget,
}

/// The edge's own series.
pub struct Edge {
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<HttpLabels>,
    overhead: Histograms<KindLabels>,
    fallbacks: Family<ProviderLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    upstream_errors: Family<ProviderCodeLabels, Counter>,
    rejections: [Counter; 4],
    /// HTTP requests being handled (until their response headers).
    pub in_flight_requests: Gauge,
    /// Streams being passed on to clients.
    pub in_flight_streams: Gauge,
    auth_cache: [Counter; 2],
    response_cache: [Counter; 3],
    /// Bytes of usage events spooled to disk while metering is down.
    pub meter_spool_bytes: Gauge,
    meter_shipped: Counter,
    meter_dropped: Counter,
}

static EDGE: LazyLock<Edge> = LazyLock::new(|| {
    let rejections = Family::<ReasonLabels, Counter>::default();
    let auth_cache = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let response_cache = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let m = Edge {
        http_requests: Family::default(),
        http_duration: histograms(REQUEST_BUCKETS),
        overhead: histograms(OVERHEAD_BUCKETS),
        fallbacks: Family::default(),
        attempts: Family::default(),
        upstream_errors: Family::default(),
        // Pre-resolved: each reason's series exists from the start.
        rejections: ["auth", "policy", "rate_limit", "budget"]
            .map(|reason| rejections.get_or_create_owned(&ReasonLabels { reason })),
        in_flight_requests: Gauge::default(),
        in_flight_streams: Gauge::default(),
        auth_cache: ["hit", "miss"].map(|r| auth_cache.get_or_create_owned(&[("result", r)])),
        response_cache: ["hit", "miss", "bypass"]
            .map(|r| response_cache.get_or_create_owned(&[("result", r)])),
        meter_spool_bytes: Gauge::default(),
        meter_shipped: Counter::default(),
        meter_dropped: Counter::default(),
    };
    register(
        "llmgw_http_requests",
        "HTTP requests by route template and status",
        m.http_requests.clone(),
    );
    register(
        "llmgw_http_request_duration_seconds",
        "HTTP request duration until the response headers (a stream's first byte)",
        m.http_duration.clone(),
    );
    register(
        "llmgw_gateway_overhead_seconds",
        "The gateway's own time per successful request: total minus time waiting on providers",
        m.overhead.clone(),
    );
    register(
        "llmgw_fallbacks",
        "Requests passed on to the next target after a provider failed",
        m.fallbacks.clone(),
    );
    register(
        "llmgw_attempts",
        "Tries of a provider, by outcome (ok, error)",
        m.attempts.clone(),
    );
    register(
        "llmgw_upstream_errors",
        "Failed tries by provider and error code",
        m.upstream_errors.clone(),
    );
    register(
        "llmgw_rejections",
        "Requests refused by the gateway: auth, policy, rate_limit, budget",
        rejections,
    );
    register(
        "llmgw_in_flight_requests",
        "HTTP requests being handled",
        m.in_flight_requests.clone(),
    );
    register(
        "llmgw_in_flight_streams",
        "Streams being passed on to clients",
        m.in_flight_streams.clone(),
    );
    register(
        "llmgw_auth_cache_requests",
        "API key lookups by the edge's auth cache (hit, miss)",
        auth_cache,
    );
    register(
        "llmgw_response_cache_requests",
        "Chat requests the response cache was asked about (hit, miss, bypass)",
        response_cache,
    );
    register(
        "llmgw_meter_spool_bytes",
        "Usage events spooled to disk while metering is unreachable",
        m.meter_spool_bytes.clone(),
    );
    register(
        "llmgw_meter_events_shipped",
        "Usage events metering acknowledged",
        m.meter_shipped.clone(),
    );
    register(
        "llmgw_meter_events_dropped",
        "Usage events refused (queue and spool full)",
        m.meter_dropped.clone(),
    );
    m
});

pub fn edge() -> &'static Edge {
    &EDGE
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Edge {
    /// One HTTP request answered with `code` after `elapsed`.
    pub fn http(&self, route: Name, code: u16, elapsed: Duration) {
        let key = HttpLabels {
            route,
            code,
            status_class: status_class(code),
        };
        self.http_requests.get_or_create(&key).inc();
        self.http_duration
            .get_or_create(&key)
            .observe(elapsed.as_secs_f64());
    }

    /// The gateway's own time for one successful request of `kind`.
    pub fn overhead(&self, kind: &'static str, overhead: Duration) {
        self.overhead
            .get_or_create(&KindLabels { kind })
            .observe(overhead.as_secs_f64());
    }

    /// One try of `provider`: `error` is its error code when it failed.
    pub fn attempt(&self, provider: &Name, error: Option<&'static str>) {
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.attempts
            .get_or_create(&AttemptLabels {
                provider: provider.clone(),
                outcome,
            })
            .inc();
        if let Some(code) = error {
            self.upstream_errors
                .get_or_create(&ProviderCodeLabels {
                    provider: provider.clone(),
                    code,
                })
                .inc();
        }
    }

    /// A request falls back from `provider` to the next target.
    pub fn fallback(&self, provider: &Name) {
        self.fallbacks
            .get_or_create(&ProviderLabels {
                provider: provider.clone(),
            })
            .inc();
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejections[why as usize].inc();
    }

    pub fn auth_cache(&self, hit: bool) {
        self.auth_cache[usize::from(!hit)].inc();
    }

    /// A response cache outcome: `hit`, `miss` or `bypass`.
    pub fn response_cache(&self, result: &str) {
        let i = match result {
            "hit" => 0,
            "miss" => 1,
            _ => 2,
        };
        self.response_cache[i].inc();
    }

    pub fn meter_shipped(&self, events: u64) {
        self.meter_shipped.inc_by(events);
    }

    pub fn meter_dropped(&self) {
        self.meter_dropped.inc();
    }
}

// ---- gRPC servers (every service) -------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    /// `/package.Service/Method`; `unknown` for a method the server lacks.
    grpc_method: Name,
    grpc_code: &'static str,
}

struct GrpcServer {
    requests: Family<GrpcLabels, Counter>,
    duration: Histograms<GrpcLabels>,
}

static GRPC_SERVER: LazyLock<GrpcServer> = LazyLock::new(|| {
    let m = GrpcServer {
        requests: Family::default(),
        duration: histograms(REQUEST_BUCKETS),
    };
    register(
        "llmgw_grpc_server_requests",
        "gRPC calls served, by method and status code",
        m.requests.clone(),
    );
    register(
        "llmgw_grpc_server_duration_seconds",
        "gRPC call duration until the response starts (a stream's first message)",
        m.duration.clone(),
    );
    m
});

/// gRPC status codes by number, as their canonical names.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A tower layer counting and timing every gRPC call a server answers; the
/// status is the one at the response's start (`grpc-status` of a
/// trailers-only answer, else OK). Non-gRPC requests (`/metrics`) pass
/// untouched.
pub type GrpcLayer = Layer<GrpcCall>;

/// A tower layer for the edge's axum router: counts and times every request
/// by route template and status (`llmgw_http_requests_total`,
/// `llmgw_http_request_duration_seconds`, until the response headers) and
/// holds `llmgw_in_flight_requests` up meanwhile. Reads the `MatchedPath`
/// extension axum's router inserts (add it with `Router::layer`, which runs
/// after routing); a request no route matched is `unmatched`.
pub type HttpLayer = Layer<HttpCall>;

/// What a [`Layer`] observes of one request: taken when it arrives
/// (`None`: not observed), finished when its response starts.
pub trait Call: Sized {
    /// Registers the series (once), when the layer is built.
    fn register();
    fn start<B>(req: &http::Request<B>) -> Option<Self>;
    /// `resp` is `None` when the service failed.
    fn finish<RB>(self, resp: Option<&http::Response<RB>>);
}

/// One gRPC call: its path (a `Uri` clone shares its bytes) and start.
pub struct GrpcCall(http::Uri, Instant);

impl Call for GrpcCall {
    fn register() {
        LazyLock::force(&GRPC_SERVER);
    }

    fn start<B>(req: &http::Request<B>) -> Option<Self> {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        grpc.then(|| Self(req.uri().clone(), Instant::now()))
    }

    fn finish<RB>(self, resp: Option<&http::Response<RB>>) {
        let code = match resp {
            Some(resp) => resp
                .headers()
                .get("grpc-status")
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .and_then(|v| v.parse::<usize>().ok())
                .map_or(0, |c| if c < GRPC_CODES.len() { c } else { 2 }),
            None => 2,
        };
        // An unknown method answers UNIMPLEMENTED: its path is the caller's
        // text, never a label.
        let method = if code == 12 {
            name("unknown")
        } else {
            name(self.0.path())
        };
        let key = GrpcLabels {
            grpc_method: method,
            grpc_code: GRPC_CODES[code],
        };
        GRPC_SERVER.requests.get_or_create(&key).inc();
        GRPC_SERVER
            .duration
            .get_or_create(&key)
            .observe(self.1.elapsed().as_secs_f64());
    }
}

/// One HTTP request to the edge: its route, start, and in-flight count.
pub struct HttpCall(Name, Instant, GaugeGuard);

impl Call for HttpCall {
    fn register() {
        LazyLock::force(&EDGE);
    }

    fn start<B>(req: &http::Request<B>) -> Option<Self> {
        let route = match req.extensions().get::<axum::extract::MatchedPath>() {
            Some(p) => name(p.as_str()),
            None => name("unmatched"),
        };
        Some(Self(
            route,
            Instant::now(),
            GaugeGuard::new(&EDGE.in_flight_requests),
        ))
    }

    fn finish<RB>(self, resp: Option<&http::Response<RB>>) {
        let Self(route, started, in_flight) = self;
        drop(in_flight);
        let code = resp.map_or(500, |r| r.status().as_u16());
        EDGE.http(route, code, started.elapsed());
    }
}

/// A tower layer observing each request with a [`Call`]; no allocation per
/// request.
pub struct Layer<C>(std::marker::PhantomData<fn() -> C>);

impl<C> Default for Layer<C> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<C> Clone for Layer<C> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<C: Call, S> tower::Layer<S> for Layer<C> {
    type Service = Observed<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        C::register();
        Observed {
            inner,
            call: std::marker::PhantomData,
        }
    }
}

pub struct Observed<S, C> {
    inner: S,
    call: std::marker::PhantomData<fn() -> C>,
}

impl<S: Clone, C> Clone for Observed<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            call: std::marker::PhantomData,
        }
    }
}

impl<S, C, B, RB> tower::Service<http::Request<B>> for Observed<S, C>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    C: Call,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = C::start(&req);
        ObservedFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ObservedFuture<F, C> {
        #[pin]
        inner: F,
        call: Option<C>,
    }
}

impl<F, C, RB, E> std::future::Future for ObservedFuture<F, C>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
    C: Call,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(call) = this.call.take() {
            call.finish(result.as_ref().ok());
        }
        std::task::Poll::Ready(result)
    }
}

// ---- the other services ----------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabels {
    org_id: Name,
}

/// The usage-metering service's series.
pub struct Metering {
    pub events: Counter,
    pub batches: Counter,
    pub duplicates: Counter,
    /// Per org (its opaque id: as many series as orgs, bounded by the name
    /// cap), what the ledger recorded: the spend dashboard's per-org panels.
    org_cost: Family<OrgLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    org_requests: Family<OrgLabels, Counter>,
}

impl Metering {
    /// Counts `requests` newly recorded for `org_id`, costing `cost_usd`.
    pub fn org_spend(&self, org_id: &str, requests: u64, cost_usd: f64) {
        let labels = OrgLabels { org_id: name(org_id) };
        self.org_requests.get_or_create(&labels).inc_by(requests);
        if cost_usd > 0.0 && cost_usd.is_finite() {
            self.org_cost.get_or_create(&labels).inc_by(cost_usd);
        }
    }
}

static METERING: LazyLock<Metering> = LazyLock::new(|| {
    let m = Metering {
        events: Counter::default(),
        batches: Counter::default(),
        duplicates: Counter::default(),
        org_cost: Family::default(),
        org_requests: Family::default(),
    };
    register(
        "llmgw_org_cost_usd",
        "Spend recorded by metering per org, USD at list price (BYOK included)",
        m.org_cost.clone(),
    );
    register(
        "llmgw_org_requests",
        "Requests recorded by metering per org",
        m.org_requests.clone(),
    );
    register(
        "llmgw_metering_events_recorded",
        "Usage events written to the ledger",
        m.events.clone(),
    );
    register(
        "llmgw_metering_batches",
        "Batches of usage events received",
        m.batches.clone(),
    );
    register(
        "llmgw_metering_duplicate_events",
        "Usage events received again (already recorded: ignored)",
        m.duplicates.clone(),
    );
    m
});

pub fn metering() -> &'static Metering {
    &METERING
}

/// The router's series.
pub struct RouterMetrics {
    ejections: Family<ProviderLabels, Counter>,
}

static ROUTER: LazyLock<RouterMetrics> = LazyLock::new(|| {
    let m = RouterMetrics {
        ejections: Family::default(),
    };
    register(
        "llmgw_router_ejections",
        "Targets ejected after consecutive failures, by provider",
        m.ejections.clone(),
    );
    m
});

pub fn router() -> &'static RouterMetrics {
    &ROUTER
}

impl RouterMetrics {
    pub fn ejected(&self, provider: &str) {
        self.ejections
            .get_or_create(&ProviderLabels {
                provider: name(provider),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: Name,
    /// The HTTP status, or `0` when none came (connect error, timeout).
    status: u16,
}

/// The provider adapter's series.
pub struct AdapterMetrics {
    requests: Family<UpstreamLabels, Counter>,
    duration: Histograms<ProviderLabels>,
}

static ADAPTER: LazyLock<AdapterMetrics> = LazyLock::new(|| {
    let m = AdapterMetrics {
        requests: Family::default(),
        duration: histograms(REQUEST_BUCKETS),
    };
    register(
        "llmgw_adapter_upstream_requests",
        "HTTP requests to providers by provider and status (0: no answer)",
        m.requests.clone(),
    );
    register(
        "llmgw_adapter_upstream_duration_seconds",
        "Time until a provider's response headers",
        m.duration.clone(),
    );
    m
});

pub fn adapter() -> &'static AdapterMetrics {
    &ADAPTER
}

impl AdapterMetrics {
    /// One upstream request of `provider`, answered with `status` (0: none)
    /// after `elapsed`.
    pub fn upstream(&self, provider: &Name, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&UpstreamLabels {
                provider: provider.clone(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&ProviderLabels {
                provider: provider.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_bounded() {
        let a = name("openai");
        let b = name("openai");
        assert!(Arc::ptr_eq(&a, &b));
        let names = Interner::new(2);
        let (x, y) = (names.get("x"), names.get("y"));
        assert_eq!((&*x, &*y), ("x", "y"));
        assert_eq!(&*names.get("z"), "other", "past the cap");
        assert!(Arc::ptr_eq(&names.get("x"), &x), "known names stay");
    }

    #[test]
    fn renders_openmetrics_with_the_series_recorded() {
        let labels = GenAiLabels {
            gen_ai_operation_name: "chat",
            gen_ai_provider_name: name("openai"),
            gen_ai_request_model: name("gpt-4o-mini"),
            llmgw_provider: name("emu"),
        };
        gen_ai().record(&labels, Some((7, 5)), Duration::from_millis(20), "", 0.5);
        edge().rejected(Rejection::Budget);
        edge().http(name("/v1/chat/completions"), 200, Duration::from_millis(3));
        let text = render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains(r#"gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",llmgw_provider="emu",gen_ai_token_type="input"} 7.0"#), "{text}");
        assert!(
            text.contains(r#"llmgw_rejections_total{reason="budget"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"llmgw_rejections_total{reason="auth"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"llmgw_http_requests_total{route="/v1/chat/completions",code="200",status_class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"llmgw_cost_usd_total{"#), "{text}");
    }

    #[test]
    fn successes_from_the_cache_and_other_outcomes_share_their_series() {
        let labels = GenAiLabels {
            gen_ai_operation_name: "chat",
            gen_ai_provider_name: name("cache-test-p"),
            gen_ai_request_model: name("cache-test-m"),
            llmgw_provider: name("cache-test-e"),
        };
        // Equal labels that are not the interned names.
        let copy = GenAiLabels {
            gen_ai_provider_name: Arc::from("cache-test-p"),
            ..labels.clone()
        };
        let ms = Duration::from_millis(10);
        gen_ai().record(&labels, Some((2, 3)), ms, "", 0.25);
        gen_ai().record(&labels, Some((2, 3)), ms, "", 0.25);
        gen_ai().record(&copy, Some((2, 3)), ms, "", 0.25);
        gen_ai().record(&labels, Some((2, 3)), ms, "upstream_error", 0.0);
        let text = render();
        let base = r#"gen_ai_operation_name="chat",gen_ai_provider_name="cache-test-p",gen_ai_request_model="cache-test-m",llmgw_provider="cache-test-e""#;
        assert!(
            text.contains(&format!(
                r#"gen_ai_client_token_usage_sum{{{base},gen_ai_token_type="input"}} 8.0"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"gen_ai_client_token_usage_sum{{{base},gen_ai_token_type="output"}} 12.0"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("llmgw_cost_usd_total{{{base}}} 0.75")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"gen_ai_client_operation_duration_seconds_count{{{base},error_type=""}} 3"#
            )),
            "{text}"
        );
    }

    #[test]
    fn a_gauge_fn_is_read_at_each_scrape_and_registered_once() {
        let value = Arc::new(std::sync::atomic::AtomicI64::new(3));
        let v = value.clone();
        gauge_fn("llmgw_test_gauge_fn", "a test", move || {
            v.load(std::sync::atomic::Ordering::Relaxed)
        });
        gauge_fn("llmgw_test_gauge_fn", "a test", || 99);
        assert!(render().contains("llmgw_test_gauge_fn 3\n"));
        value.store(5, std::sync::atomic::Ordering::Relaxed);
        let text = render();
        assert!(text.contains("llmgw_test_gauge_fn 5\n"), "{text}");
        assert_eq!(text.matches("# TYPE llmgw_test_gauge_fn gauge").count(), 1);
    }

    #[test]
    fn grpc_codes_are_named_by_number() {
        assert_eq!(GRPC_CODES[12], "UNIMPLEMENTED");
        assert_eq!(GRPC_CODES[16], "UNAUTHENTICATED");
    }
}
