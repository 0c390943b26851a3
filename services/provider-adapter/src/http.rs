//! The one HTTP client every provider shares, and how an upstream's failures
//! become [`GwError`]s.
//!
//! Classification (each error names its provider):
//!
//! | what happened                         | code                  | retryable |
//! |---------------------------------------|-----------------------|-----------|
//! | connect refused / reset / DNS / TLS   | `UpstreamError`       | yes       |
//! | per-try timeout, HTTP 408             | `UpstreamTimeout`     | yes       |
//! | HTTP 429 (with `retry-after`)         | `UpstreamRateLimited` | yes       |
//! | HTTP 5xx, a redirect, a broken body   | `UpstreamError`       | yes       |
//! | HTTP 401/403 (our credentials)        | `UpstreamRejected`    | no        |
//! | any other 4xx (with the upstream's `param`) | `UpstreamRejected` | no     |
//!
//! Messages never carry the provider key (an upstream message that echoes it
//! is redacted), the request body or the URL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, TryFutureExt as _};
use llmgw_kit::openai::parse_upstream_error;
use llmgw_kit::secret::Secret;
use llmgw_kit::{ErrorCode, GwError};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode, redirect};

/// Longest a TCP (and TLS) connect may take; the per-try timeout covers the rest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keepalive probes so a silently dead peer is noticed on long streams.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// The most of an error body we read: enough for any error object.
const ERROR_BODY_LIMIT: usize = 64 << 10;
/// The longest upstream error message we pass on.
const MESSAGE_LIMIT: usize = 1024;

/// The shared client with the default pool (tests).
#[cfg(test)]
pub(crate) fn client() -> Result<reqwest::Client, GwError> {
    pooled(&llmgw_kit::config::UpstreamConfig::default())
}

/// Builds the shared client: no redirects (no one may steer where we
/// connect), TCP_NODELAY, a bounded connect and no total timeout (streams may
/// run long; the per-try timeout is applied around each call), idle
/// connections kept as `pool` says.
pub(crate) fn pooled(pool: &llmgw_kit::config::UpstreamConfig) -> Result<reqwest::Client, GwError> {
    // Once per process; a second call (or a provider installed by the binary) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .tcp_nodelay(true)
        .tcp_keepalive(TCP_KEEPALIVE)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        // Over HTTP/2, streams to one provider share a connection; h2 closes it
        // (`ENHANCE_YOUR_CALM`) once the small SSE frames held unread for slow
        // clients exceed half the connection window. A large connection window
        // keeps one stalled stream from taking the others down; each stream
        // still holds at most its own 64 KiB window.
        .http2_initial_connection_window_size(llmgw_kit::grpc::CONNECTION_WINDOW)
        .user_agent(concat!("llmgw/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| GwError::internal(format!("cannot build the http client: {}", root_cause(&e))))
}

/// Sends `request` — every upstream request goes through here — and waits
/// for the answer's headers, time added to the request's provider clock
/// ([`llmgw_kit::upstream`]). While spans are exported it carries the
/// current span's W3C `traceparent` (and `tracestate`), and the span (the
/// GenAI client span) learns `server.address` and `server.port`.
pub(crate) async fn dispatch(request: reqwest::RequestBuilder) -> reqwest::Result<Response> {
    let started = std::time::Instant::now();
    let sent = if llmgw_kit::telemetry::enabled() {
        traced(request).await
    } else {
        request.send().await
    };
    llmgw_kit::upstream::add(started.elapsed());
    sent
}

async fn traced(request: reqwest::RequestBuilder) -> reqwest::Result<Response> {
    let (client, request) = request.build_split();
    let mut request = request?;
    let span = tracing::Span::current();
    if let Some(host) = request.url().host_str() {
        span.record("server.address", host);
    }
    if let Some(port) = request.url().port_or_known_default() {
        span.record("server.port", port);
    }
    llmgw_kit::telemetry::inject_current(request.headers_mut());
    client.execute(request).await
}

/// One provider as the HTTP layer sees it: its name for messages and the key
/// to keep out of them.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    name: Arc<str>,
    key: Option<Secret>,
}

/// The per-try timeout for `target`: the router's, else the provider's own.
pub(crate) fn per_try_timeout(own: Duration, target: &llmgw_proto::Target) -> Duration {
    match target.timeout_ms {
        0 => own,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

impl Peer {
    pub(crate) fn new(name: &str, key: Option<Secret>) -> Self {
        Self {
            name: name.into(),
            key,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// An error of `code` naming this provider.
    pub(crate) fn error(&self, code: ErrorCode, message: impl Into<String>) -> GwError {
        GwError::new(code, self.redact(message.into())).with_provider(&*self.name)
    }

    /// Sends `request` and waits for the headers. A non-2xx answer becomes an
    /// error (its body read, bounded, to classify it); the caller applies the
    /// per-try timeout around this.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, GwError> {
        let started = std::time::Instant::now();
        let sent = dispatch(request).await;
        let status = sent.as_ref().map_or(0, |r| r.status().as_u16());
        llmgw_kit::metrics::adapter().upstream(&self.name, status, started.elapsed());
        let mut response = sent.map_err(|e| self.send_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // Best effort: a body that breaks still leaves the status to classify.
        let body = self
            .read_limited(&mut response, ERROR_BODY_LIMIT, false)
            .await
            .unwrap_or_default();
        Err(self.status_error(status, response.headers(), &body))
    }

    /// Reads the body of `response`, at most `limit` bytes: past it, an error
    /// when `strict`, else the body is cut there. The time counts as the
    /// provider's ([`llmgw_kit::upstream`]).
    pub(crate) async fn read_limited(
        &self,
        response: &mut Response,
        limit: usize,
        strict: bool,
    ) -> Result<Vec<u8>, GwError> {
        let hint = response
            .content_length()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let started = std::time::Instant::now();
        let read = self.read_body(response, limit, strict, hint).await;
        llmgw_kit::upstream::add(started.elapsed());
        read
    }

    async fn read_body(
        &self,
        response: &mut Response,
        limit: usize,
        strict: bool,
        hint: usize,
    ) -> Result<Vec<u8>, GwError> {
        let mut body = Vec::with_capacity(hint.min(limit));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.body_error(&e))? {
            if body.len() + chunk.len() > limit {
                if strict {
                    return Err(self.error(
                        ErrorCode::UpstreamError,
                        format!(
                            "provider `{}` sent a response larger than {limit} bytes",
                            self.name
                        ),
                    ));
                }
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A non-streaming call: sends (through `send`, which may read a
    /// provider's own error shape) and reads the whole answer, both within
    /// the per-try `timeout`.
    ///
    /// Combinators rather than an `async fn`: an `async` wrapper would hold
    /// `send` twice (its argument and the future it awaits), and the call's
    /// future is moved whole at every level above it.
    pub(crate) fn call_within<'a>(
        &'a self,
        timeout: Duration,
        send: impl Future<Output = Result<Response, GwError>> + 'a,
    ) -> impl Future<Output = Result<Vec<u8>, GwError>> + 'a {
        let call = send.and_then(move |mut response| async move {
            self.read_limited(&mut response, llmgw_kit::grpc::MAX_MESSAGE_BYTES, true)
                .await
        });
        tokio::time::timeout(timeout, call)
            .map(move |done| done.unwrap_or_else(|_| Err(self.timeout_error(timeout))))
    }

    /// The per-try timeout expired before the provider answered.
    pub(crate) fn timeout_error(&self, timeout: Duration) -> GwError {
        self.error(
            ErrorCode::UpstreamTimeout,
            format!(
                "provider `{}`: no answer within {} ms",
                self.name,
                timeout.as_millis()
            ),
        )
    }

    /// A failure before any response: connect, TLS, or the request itself.
    pub(crate) fn send_error(&self, e: &reqwest::Error) -> GwError {
        let cause = root_cause(e);
        if e.is_timeout() {
            self.error(
                ErrorCode::UpstreamTimeout,
                format!("provider `{}`: connect timed out: {cause}", self.name),
            )
        } else if e.is_connect() {
            self.error(
                ErrorCode::UpstreamError,
                format!("provider `{}`: cannot connect: {cause}", self.name),
            )
        } else {
            self.error(
                ErrorCode::UpstreamError,
                format!("provider `{}`: request failed: {cause}", self.name),
            )
        }
    }

    /// A failure while reading a response body.
    pub(crate) fn body_error(&self, e: &(dyn std::error::Error + 'static)) -> GwError {
        self.error(
            ErrorCode::UpstreamError,
            format!(
                "provider `{}`: the response broke off: {}",
                self.name,
                root_cause(e)
            ),
        )
    }

    /// Classifies a non-2xx answer by its status, using the OpenAI-shaped
    /// error object in `body` when there is one.
    pub(crate) fn status_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GwError {
        let upstream = parse_upstream_error(body);
        let said = upstream
            .as_ref()
            .map(|u| u.message.trim())
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {}", truncate(m, MESSAGE_LIMIT)))
            .unwrap_or_default();
        let name = &self.name;
        let code = status.as_u16();
        let err = match code {
            429 => self.error(
                ErrorCode::UpstreamRateLimited,
                format!("provider `{name}` is rate limiting the gateway (429){said}"),
            ),
            408 => self.error(
                ErrorCode::UpstreamTimeout,
                format!("provider `{name}` timed out (408){said}"),
            ),
            401 | 403 => self.error(
                ErrorCode::UpstreamRejected,
                format!("provider `{name}` rejected the gateway's credentials ({code}){said}"),
            ),
            400..=499 => {
                // OpenAI and compatible hosts say so in `code`.
                let too_long =
                    upstream.as_ref().and_then(|u| u.code.as_deref()) == Some("context_length_exceeded");
                let err = self.error(
                    if too_long {
                        ErrorCode::ContextLengthExceeded
                    } else {
                        ErrorCode::UpstreamRejected
                    },
                    format!("provider `{name}` rejected the request ({code}){said}"),
                );
                let err = if too_long { err.with_param("messages") } else { err };
                match upstream.and_then(|u| u.param).filter(|p| !p.is_empty()) {
                    Some(param) => err.with_param(param),
                    None => err,
                }
            }
            500..=599 => self.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` failed ({code}){said}"),
            ),
            _ => self.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` answered with unexpected status {code}{said}"),
            ),
        };
        let err = err.with_upstream_status(code);
        match retry_after(headers) {
            Some(secs) => err.with_retry_after(secs),
            None => err,
        }
    }

    fn redact(&self, message: String) -> String {
        match &self.key {
            Some(key) if !key.expose().is_empty() && message.contains(key.expose()) => {
                message.replace(key.expose(), "[redacted]")
            }
            _ => message,
        }
    }
}

/// Seconds from `retry-after` (delta-seconds, rounded up when fractional) or
/// the `retry-after-ms` some providers send; an HTTP date is ignored.
fn retry_after(headers: &HeaderMap) -> Option<u32> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let secs = |s: &str, scale: f64| -> Option<u32> {
        let v = s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)? / scale;
        // Saturating: `as` on a float clamps to the integer's range.
        Some(v.ceil() as u32)
    };
    header(RETRY_AFTER.as_str())
        .and_then(|s| secs(s, 1.0))
        .or_else(|| header("retry-after-ms").and_then(|s| secs(s, 1000.0)))
}

/// The innermost cause of an error ("connection refused"), without the URL
/// and wrapper text reqwest puts around it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    match cause.downcast_ref::<reqwest::Error>() {
        // A reqwest error with no source: its own text, minus the URL.
        Some(_) if cause.source().is_none() => strip_url(cause.to_string()),
        _ => cause.to_string(),
    }
}

fn strip_url(text: String) -> String {
    match text.find(" for url (") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn truncate(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(2));
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(7));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.2"));
        assert_eq!(retry_after(&h), Some(1));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(2), "a date falls back to retry-after-ms");
    }

    #[test]
    fn echoed_key_is_redacted() {
        let peer = Peer::new("emu", Some(Secret::new("sk-secret")));
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-secret"}}"#;
        let err = peer.status_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), body);
        assert!(!err.message().contains("sk-secret"), "{}", err.message());
        assert!(err.message().contains("[redacted]"));
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
