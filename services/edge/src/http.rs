//! The OpenAI REST surface (axum) and gRPC-Web.
//!
//! Layer order, outermost first: only while spans are exported, the
//! [`server_span`] middleware (a server span per request, continuing the
//! client's `traceparent`) → axum's router (routes below; unknown paths
//! and methods answer in the OpenAI error shape, or Anthropic's under
//! `/v1/messages`, see [`Dialect`]) → per route:
//! [`llmgw_kit::metrics::HttpLayer`] (counts, times, in-flight gauge; reads
//! the `MatchedPath` extension axum inserts) → the handler,
//! which checks Content-Type (415), declared length (413), the API key
//! (401), reads the body under the size limit (413), parses and validates
//! (400), then runs the [`Pipeline`]. The gRPC `Gateway` service is merged
//! under its own paths behind `GrpcWebLayer`, so gRPC-Web (HTTP/1.1) and
//! plain gRPC both work on the HTTP port. No other request extensions are
//! used. `GET /metrics` serves the process's Prometheus series. The
//! pass-through endpoints (legacy completions, images, audio) have their
//! handlers in [`crate::surface`].

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde::Serialize;

use crate::grpc;
use crate::pipeline::{
    CONFIG_HEADER, ChatOutput, Hints, OVERHEAD_HEADER, Pipeline, error_type, overhead, overhead_ms,
};

pub fn router(pipeline: Arc<Pipeline>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(crate::anthropic::messages))
        .route("/v1/messages/count_tokens", post(crate::anthropic::count_tokens))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/completions", post(crate::surface::completions))
        .route("/v1/images/generations", post(crate::surface::image_generations))
        .route("/v1/images/edits", post(crate::surface::image_edits))
        .route("/v1/audio/transcriptions", post(crate::surface::transcriptions))
        .route("/v1/audio/translations", post(crate::surface::translations))
        .route("/v1/audio/speech", post(crate::surface::speech))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/usage", get(usage_own))
        .route("/admin/v1/usage", get(usage_admin))
        .route("/admin/v1", any(admin))
        .route("/admin/v1/{*rest}", any(admin))
        .route("/health", get(health))
        .route("/", get(health))
        .route("/livez", get(livez))
        .route("/metrics", get(llmgw_kit::metrics::handler))
        .route("/openapi.json", get(crate::openapi::handler))
        .with_state(pipeline.clone());
    // tonic's router brings a fallback of its own; ours replaces it after the
    // merge so unknown paths answer in the OpenAI error shape.
    let router = grpc::routes(pipeline)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new())
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(llmgw_kit::metrics::HttpLayer::default());
    if llmgw_kit::telemetry::enabled() {
        router.layer(axum::middleware::from_fn(server_span))
    } else {
        router
    }
}

/// `x-llmgw-overhead-ms`: the gateway's own time ([`crate::pipeline::overhead`]).
pub(crate) fn overhead_header(resp: &mut Response, overhead: std::time::Duration) {
    if let Ok(v) = HeaderValue::try_from(overhead_ms(overhead)) {
        resp.headers_mut()
            .insert(HeaderName::from_static(OVERHEAD_HEADER), v);
    }
}

/// The fixed paths [`router`] serves (besides `/v1/models/{id}` and the
/// admin API's paths under `/admin/v1/`); `openapi.yaml` describes each.
pub(crate) const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
    "/v1/models",
    "/v1/usage",
    "/admin/v1/usage",
    "/admin/v1",
    "/health",
    "/",
    "/livez",
    "/metrics",
    "/openapi.json",
];

/// `http.route` of a path: the route template of [`router`] it matches
/// (axum's `MatchedPath` would cost every request an extension, traced or
/// not). gRPC-Web paths name a method of the one `Gateway` service.
fn route_of(path: &str) -> Option<&str> {
    Some(match path {
        p if ROUTES.contains(&p) => p,
        p if p.starts_with("/v1/models/") => "/v1/models/{*id}",
        p if p.starts_with("/admin/v1/") => "/admin/v1/{*rest}",
        p if p.starts_with("/llmgw.v1.Gateway/") && p.len() < 64 => p,
        _ => return None,
    })
}

/// The server span of one HTTP request (REST and gRPC-Web), a child of the
/// client's `traceparent`: `{method} {route}`, with the OpenTelemetry HTTP
/// attributes. Only installed while spans are exported. For a stream it
/// ends with the response headers; the stream's own spans carry on.
async fn server_span(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let route = route_of(req.uri().path());
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "http",
        otel.name = name,
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    llmgw_kit::telemetry::continue_from(&span, req.headers());
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
    resp
}

// ---- errors: the one place error bodies are written ------------------------

/// The error shape a route answers in: OpenAI's, or Anthropic's on
/// `/v1/messages` (its body from [`crate::anthropic::error_json`]). The
/// status and headers come from the error's code alone, whatever the shape.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    fn of(path: &str) -> Self {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }

    /// On routes both APIs have (`/v1/models`): Anthropic's when the client
    /// sends `anthropic-version`, as the Anthropic SDKs always do.
    fn of_client(headers: &HeaderMap) -> Self {
        if headers.contains_key("anthropic-version") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
}

fn openai_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::NotFound
        | ErrorCode::ModelNotFound
        | ErrorCode::PayloadTooLarge
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::MethodNotAllowed
        | ErrorCode::UpstreamRejected
        | ErrorCode::ContextLengthExceeded
        | ErrorCode::Unauthenticated => "invalid_request_error",
        ErrorCode::PermissionDenied => "permission_error",
        ErrorCode::RateLimited | ErrorCode::UpstreamRateLimited => "rate_limit_error",
        ErrorCode::BudgetExceeded => "insufficient_quota",
        ErrorCode::UpstreamError | ErrorCode::UpstreamTimeout | ErrorCode::Unavailable => "api_error",
        ErrorCode::Internal | ErrorCode::Unspecified => "server_error",
    }
}

/// `{"error": {"message", "type", "param", "code"}}` for `err`.
pub fn error_json(err: &GwError) -> Vec<u8> {
    let body = ErrorEnvelope {
        error: ErrorBody {
            message: err.message(),
            kind: openai_type(err.code()),
            param: err.param(),
            code: error_type(err),
            provider: err.provider(),
        },
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#.to_vec())
}

pub fn error_response(err: &GwError) -> Response {
    error_response_in(err, Dialect::OpenAi)
}

pub(crate) fn error_response_in(err: &GwError, dialect: Dialect) -> Response {
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match dialect {
        Dialect::OpenAi => error_json(err),
        Dialect::Anthropic => crate::anthropic::error_json(err),
    };
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    if let Some(secs) = err.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

async fn not_found(uri: http::Uri) -> Response {
    error_response_in(
        &GwError::new(
            ErrorCode::NotFound,
            "Unknown request URL. Please check the URL and method.",
        ),
        Dialect::of(uri.path()),
    )
}

async fn method_not_allowed(uri: http::Uri) -> Response {
    error_response_in(
        &GwError::new(ErrorCode::MethodNotAllowed, "Method not allowed for this URL."),
        Dialect::of(uri.path()),
    )
}

// ---- request plumbing -------------------------------------------------------

/// The API key from `Authorization: Bearer <key>` (or `api-key`, as Azure
/// OpenAI clients send it, or `x-api-key`, as Anthropic clients do).
pub(crate) fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v),
        );
    }
    headers
        .get("api-key")
        .or_else(|| headers.get("x-api-key"))
        .and_then(|v| v.to_str().ok())
}

pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), GwError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown = if ct.is_empty() { "none" } else { ct };
        Err(GwError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Unsupported Content-Type `{shown}`: send `application/json`."),
        ))
    }
}

fn too_large(limit: usize) -> GwError {
    GwError::new(
        ErrorCode::PayloadTooLarge,
        format!("Request body is larger than the limit of {limit} bytes."),
    )
}

/// Most bytes read (and thrown away) from a body that is over the limit
/// before answering 413: clients that are still sending when the answer
/// comes would otherwise see a broken pipe instead of the error.
const DRAIN_CAP: u64 = 256 << 20;
/// Longest time spent draining such a body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads the body up to `limit` bytes. Over the limit it is drained (up to
/// [`DRAIN_CAP`] or [`DRAIN_TIME`]) and refused with 413.
pub(crate) async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, GwError> {
    let declared = declared_length(headers);
    let mut buf = BytesMut::with_capacity(declared.map_or(8192, |n| n.min(limit as u64) as usize));
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut seen: u64 = 0;
    let drain = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| GwError::invalid("", format!("could not read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            seen += data.len() as u64;
            if !over && buf.len() + data.len() > limit {
                over = true;
                buf = BytesMut::new();
            }
            if over {
                if seen > DRAIN_CAP {
                    break;
                }
            } else {
                buf.extend_from_slice(&data);
            }
        }
        Ok::<(), GwError>(())
    };
    match tokio::time::timeout(DRAIN_TIME, drain).await {
        Ok(result) => result?,
        Err(_) if over => {}
        Err(_) => return Err(GwError::invalid("", "timed out reading the request body")),
    }
    if over {
        Err(too_large(limit))
    } else {
        Ok(buf.freeze())
    }
}

/// OpenAI's `x-ratelimit-*` headers, for the tightest limit that applies.
pub(crate) fn ratelimit_headers(resp: &mut Response, quota: Option<crate::limits::Quota>) {
    let Some(q) = quota else { return };
    let h = resp.headers_mut();
    let reset =
        HeaderValue::from_str(&format!("{}s", q.reset_secs)).unwrap_or(HeaderValue::from_static("60s"));
    if let Some(limit) = q.limit_requests {
        h.insert("x-ratelimit-limit-requests", HeaderValue::from(limit));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(q.remaining_requests),
        );
        h.insert("x-ratelimit-reset-requests", reset.clone());
    }
    if let Some(limit) = q.limit_tokens {
        h.insert("x-ratelimit-limit-tokens", HeaderValue::from(limit));
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from(q.remaining_tokens),
        );
        h.insert("x-ratelimit-reset-tokens", reset);
    }
}

pub(crate) fn hints(principal: &pb::Principal, headers: &HeaderMap) -> Hints {
    let config = headers.get(CONFIG_HEADER).and_then(|v| v.to_str().ok());
    let mut hints = Hints::new(principal, config, || {
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().ok()))
    });
    hints.cache = crate::cache::Directive::from_headers(headers);
    hints
}

/// The routing metadata as response headers: what was used, how many tries
/// it took (and each, compactly), the config and variant.
pub(crate) fn routing_headers(resp: &mut Response, meta: &pb::RoutingMetadata) {
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    const PROVIDER: HeaderName = HeaderName::from_static("x-llmgw-provider");
    const MODEL: HeaderName = HeaderName::from_static("x-llmgw-model");
    const REQUESTED_MODEL: HeaderName = HeaderName::from_static("x-llmgw-requested-model");
    const CONFIG: HeaderName = HeaderName::from_static("x-llmgw-config");
    const CONFIG_VERSION: HeaderName = HeaderName::from_static("x-llmgw-config-version");
    const VARIANT: HeaderName = HeaderName::from_static("x-llmgw-variant");
    const STRATEGY: HeaderName = HeaderName::from_static("x-llmgw-strategy");
    let h = resp.headers_mut();
    // Room for these and the overhead header, so the map grows once.
    h.reserve(12);
    let version = meta.config_version.map(|v| v.to_string());
    for (name, value) in [
        (REQUEST_ID, Some(&meta.request_id)),
        (PROVIDER, Some(&meta.used_provider)),
        (MODEL, Some(&meta.used_model)),
        (REQUESTED_MODEL, Some(&meta.requested_model)),
        (CONFIG, meta.config.as_ref()),
        (CONFIG_VERSION, version.as_ref()),
        (VARIANT, meta.variant.as_ref()),
        (STRATEGY, meta.strategy.as_ref()),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    h.insert(
        HeaderName::from_static("x-llmgw-attempts"),
        HeaderValue::from(meta.attempts.len()),
    );
    // The response cache: `x-llmgw-cache: hit|miss|bypass`, and on a hit
    // the entry's `age` in seconds (as HTTP caches say it).
    if let Some(v) = meta.cache.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert("x-llmgw-cache", v);
    }
    if let Some(age) = meta.cache_age_secs {
        h.insert(header::AGE, HeaderValue::from(age));
    }
    if meta.attempts.len() > 1 {
        // `provider/model=status;…`, e.g. `a/gpt-4o=upstream_error;b/gpt-4o=ok`.
        let trail: Vec<String> = meta
            .attempts
            .iter()
            .map(|a| {
                format!(
                    "{}/{}={}",
                    a.provider,
                    a.model,
                    a.error_type.as_deref().unwrap_or(&a.status)
                )
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&trail.join(";")) {
            h.insert("x-llmgw-attempt-trail", v);
        }
        h.insert("x-llmgw-fallback", HeaderValue::from_static("true"));
    }
}

// ---- handlers ---------------------------------------------------------------

/// The admin API (`/admin/v1/...`, admin keys only): the path names the
/// operation ([`llmgw_kit::admin::route`]), `auth` carries it out.
async fn admin(
    State(p): State<Arc<Pipeline>>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let principal = p.authenticate(api_key(&headers)).await?;
        let route = llmgw_kit::admin::route(method.as_str(), uri.path())?;
        let body = read_body(&headers, body, p.max_body_bytes).await?;
        if !body.is_empty() {
            require_json(&headers)?;
        }
        let body_json = String::from_utf8(body.to_vec())
            .map_err(|_| GwError::invalid("body", "the body must be UTF-8 JSON"))?;
        let reply = p.admin(principal, route, body_json).await?;
        let status =
            StatusCode::from_u16(u16::try_from(reply.status).unwrap_or(200)).unwrap_or(StatusCode::OK);
        Ok::<_, GwError>(
            (
                status,
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                reply.body_json,
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(|e| {
        let mut resp = error_response(&e);
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            let allowed = llmgw_kit::admin::allowed(uri.path()).join(",");
            if let Ok(v) = HeaderValue::from_str(&allowed) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        resp
    })
}

async fn chat_completions(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    match chat(&p, &headers, body, started).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

async fn chat(
    p: &Pipeline,
    headers: &HeaderMap,
    body: Body,
    started: std::time::Instant,
) -> Result<Response, GwError> {
    let admitted = p.admit()?;
    require_json(headers)?;
    let principal = p.authenticate(api_key(headers)).await?;
    let bytes = read_body(headers, body, p.max_body_bytes).await?;
    let req = llmgw_kit::openai::parse_request(&bytes)?;
    let mut hints = hints(&principal, headers);
    hints.admitted = Some(admitted);
    match p.chat(principal, req, hints).await? {
        ChatOutput::Complete(resp, quota) => {
            let json = llmgw_kit::openai::response_json(&resp)?;
            Ok(chat_response(
                Body::from(json),
                false,
                resp.metadata.as_ref(),
                quota,
                started,
            ))
        }
        ChatOutput::Stream(stream) => Ok(chat_response(
            Body::from_stream(sse(stream.chunks)),
            true,
            Some(&stream.metadata),
            stream.quota,
            started,
        )),
    }
}

/// A chat answer (JSON, or an unbuffered event stream) with the routing,
/// overhead (the request began at `started`) and rate-limit headers;
/// shared by the OpenAI and Anthropic doors.
pub(crate) fn chat_response(
    body: Body,
    stream: bool,
    meta: Option<&pb::RoutingMetadata>,
    quota: Option<crate::limits::Quota>,
    started: std::time::Instant,
) -> Response {
    let mut out = Response::new(body);
    let h = out.headers_mut();
    if stream {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(meta) = meta {
        routing_headers(&mut out, meta);
        let kind = if stream { "chat_stream" } else { "chat" };
        overhead_header(&mut out, overhead(kind, started, meta));
    }
    ratelimit_headers(&mut out, quota);
    out
}

/// Frames chunks as server-sent events: `data: {json}\n\n` each, then
/// `data: [DONE]\n\n` — or, when the stream fails, one `data: {"error": …}`
/// event and no `[DONE]`, as OpenAI does.
fn sse(
    chunks: llmgw_kit::services::ChunkStream,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    futures_util::stream::unfold((chunks, false), |(mut chunks, finished)| async move {
        if finished {
            return None;
        }
        let mut buf = BytesMut::with_capacity(512).writer();
        let finished = match chunks.next().await {
            Some(Ok(chunk)) => {
                let buf_ref = buf.get_mut();
                buf_ref.put_slice(b"data: ");
                let mut json = Vec::with_capacity(384);
                if let Err(e) = llmgw_kit::openai::chunk_json(&chunk, &mut json) {
                    buf_ref.clear();
                    buf_ref.put_slice(b"data: ");
                    buf_ref.put_slice(&error_json(&e));
                    buf_ref.put_slice(b"\n\n");
                    return Some((Ok(buf.into_inner().freeze()), (chunks, true)));
                }
                buf_ref.put_slice(&json);
                buf_ref.put_slice(b"\n\n");
                false
            }
            Some(Err(e)) => {
                let b = buf.get_mut();
                b.put_slice(b"data: ");
                b.put_slice(&error_json(&e));
                b.put_slice(b"\n\n");
                true
            }
            None => {
                buf.get_mut().put_slice(b"data: [DONE]\n\n");
                true
            }
        };
        Some((Ok(buf.into_inner().freeze()), (chunks, finished)))
    })
}

async fn embeddings(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    let result = async {
        let admitted = p.admit()?;
        require_json(&headers)?;
        let principal = p.authenticate(api_key(&headers)).await?;
        let bytes = read_body(&headers, body, p.max_body_bytes).await?;
        let req = llmgw_kit::openai::parse_embeddings_request(&bytes)?;
        let format = req.encoding_format;
        let mut hints = hints(&principal, &headers);
        hints.admitted = Some(admitted);
        let resp = p.embed(principal, req, hints).await?;
        let json = llmgw_kit::openai::embeddings_response_json(&resp, format)?;
        let mut out = (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            json,
        )
            .into_response();
        if let Some(meta) = &resp.metadata {
            routing_headers(&mut out, meta);
            overhead_header(&mut out, overhead("embeddings", started, meta));
        }
        Ok::<_, GwError>(out)
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

#[derive(Serialize)]
struct ModelOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'a str,
}

#[derive(Serialize)]
struct ModelListOut<'a> {
    object: &'static str,
    data: Vec<ModelOut<'a>>,
}

fn model_out(m: &pb::Model) -> ModelOut<'_> {
    ModelOut {
        id: &m.id,
        object: "model",
        created: m.created,
        owned_by: &m.owned_by,
    }
}

pub(crate) fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(e) => error_response(&GwError::internal(format!("cannot write response: {e}"))),
    }
}

async fn list_models(State(p): State<Arc<Pipeline>>, headers: HeaderMap) -> Response {
    let result = async {
        let principal = p.authenticate(api_key(&headers)).await?;
        p.list_models(principal).await
    }
    .await;
    let dialect = Dialect::of_client(&headers);
    match result {
        Ok(list) if dialect == Dialect::Anthropic => crate::anthropic::models_response(&list.data),
        Ok(list) => json_response(&ModelListOut {
            object: "list",
            data: list.data.iter().map(model_out).collect(),
        }),
        Err(e) => error_response_in(&e, dialect),
    }
}

async fn get_model(State(p): State<Arc<Pipeline>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        let principal = p.authenticate(api_key(&headers)).await?;
        p.list_models(principal).await
    }
    .await;
    let dialect = Dialect::of_client(&headers);
    match result {
        Ok(list) => match list.data.iter().find(|m| m.id == id) {
            Some(m) if dialect == Dialect::Anthropic => crate::anthropic::model_response(m),
            Some(m) => json_response(&model_out(m)),
            None => error_response_in(
                &GwError::new(
                    ErrorCode::ModelNotFound,
                    format!("The model `{id}` does not exist or you do not have access to it."),
                )
                .with_param("model"),
                dialect,
            ),
        },
        Err(e) => error_response_in(&e, dialect),
    }
}

/// `GET /v1/usage` and `GET /admin/v1/usage` (the latter before the generic
/// admin handler, which `auth` executes): see [`crate::usage`].
async fn usage_own(State(p): State<Arc<Pipeline>>, uri: http::Uri, headers: HeaderMap) -> Response {
    match crate::usage::usage(&p, api_key(&headers), &uri, crate::usage::Door::Own).await {
        Ok(v) => json_response(&v),
        Err(e) => error_response(&e),
    }
}

async fn usage_admin(State(p): State<Arc<Pipeline>>, uri: http::Uri, headers: HeaderMap) -> Response {
    match crate::usage::usage(&p, api_key(&headers), &uri, crate::usage::Door::Admin).await {
        Ok(v) => json_response(&v),
        Err(e) => error_response(&e),
    }
}

/// `GET /` and `/health`: every dependency, checked ([`crate::health`]);
/// `?skip=redis,consul` leaves named checks out.
async fn health(State(p): State<Arc<Pipeline>>, uri: http::Uri) -> Response {
    // `skip=a,b` (a comma may come percent-encoded), or `skip` repeated.
    let skip: Vec<String> = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("skip="))
        .flat_map(|v| {
            v.replace("%2C", ",")
                .replace("%2c", ",")
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let report = p.health.report(&skip).await;
    let mut resp = json_response(&report);
    if report.status == "down" {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /livez`: the edge process answers (for liveness probes, which
/// should not restart the edge when a dependency is down).
async fn livez() -> Response {
    json_response(&serde_json::json!({"status": "ok"}))
}
