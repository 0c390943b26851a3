//! Fault profiles: several "providers" on one emulator that misbehave differently.
//!
//! Every route is also served under `/_f/{profile}/...` (see the crate docs). A middleware in
//! front of the router strips the prefix, counts the request against its profile, applies the
//! profile's faults, and hands the rewritten request to the normal routes, so every wire
//! format gets the same faults and `[emu:...]` directives still work inside a profile.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State as Extract};
use axum::http::header::RETRY_AFTER;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use crate::chat::ApiError;
use crate::routes::{self, State};

const PREFIX: &str = "/_f/";

/// What `PUT /_emu/faults/{profile}` sets; every field is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    /// Wait this long before answering headers, on every request of the profile.
    delay_ms: u64,
    /// The status failures answer; alone (no `fail_*`), every request fails with it.
    status: Option<u16>,
    /// Fail requests N, 2N, 3N, … (counting from 1).
    fail_every: Option<u32>,
    /// Fail the first N requests, then succeed.
    fail_first: Option<u32>,
    /// Seconds for a `retry-after` header on failures.
    retry_after: Option<u32>,
    /// Failures drop the connection without an HTTP response instead of answering `status`;
    /// alone (no `fail_*`), every request is dropped.
    reset: bool,
    /// A small context window: a request body over this many bytes answers OpenAI's 400
    /// `context_length_exceeded` (param `messages`).
    context_bytes: Option<usize>,
}

impl Settings {
    /// Whether request number `n` (from 1) fails.
    fn fails(&self, n: u64) -> bool {
        match (self.fail_every, self.fail_first) {
            (None, None) => self.status.is_some() || self.reset,
            (every, first) => {
                every.is_some_and(|k| k > 0 && n.is_multiple_of(u64::from(k)))
                    || first.is_some_and(|k| n <= u64::from(k))
            }
        }
    }
}

#[derive(Default)]
struct Profile {
    settings: Mutex<Settings>,
    requests: AtomicU64,
    failed: AtomicU64,
    /// A gauge, not a counter: a PUT leaves it alone, so requests already running still
    /// decrement it.
    in_flight: AtomicU64,
}

impl Profile {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        // A poisoned lock still holds valid settings: they are replaced whole.
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// All profiles, keyed by name; a profile is created by its first request or PUT.
#[derive(Default)]
pub(crate) struct Faults {
    profiles: Mutex<HashMap<String, Arc<Profile>>>,
}

impl Faults {
    fn profile(&self, name: &str) -> Arc<Profile> {
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(name) {
            return Arc::clone(p);
        }
        let p = Arc::new(Profile::default());
        map.insert(name.to_owned(), Arc::clone(&p));
        p
    }
}

/// Decrements `in_flight` when the request ends, also when the client goes away and hyper
/// drops the handler future.
struct InFlight(Arc<Profile>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The URI the client sent, before the middleware stripped `/_f/{profile}`; inserted as a
/// request extension by [`middleware`], read by [`ClientUri`].
#[derive(Clone)]
struct SentUri(Uri);

/// Extracts the URI as the client sent it (with any `/_f/{profile}` prefix): Bedrock's SigV4
/// signs the path, so verification must see the path the client signed.
pub(crate) struct ClientUri(pub Uri);

impl<S: Send + Sync> FromRequestParts<S> for ClientUri {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(match parts.extensions.get::<SentUri>() {
            Some(SentUri(uri)) => uri.clone(),
            None => parts.uri.clone(),
        }))
    }
}

/// Splits `/_f/{profile}/rest?query` into the profile and the URI `/rest?query`.
fn strip(uri: &Uri) -> Option<(String, Uri)> {
    let rest = uri.path().strip_prefix(PREFIX)?;
    let (profile, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if profile.is_empty() {
        return None;
    }
    let inner = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    Some((profile.to_owned(), inner.parse().ok()?))
}

/// Runs before routing on every request; requests outside `/_f/` pass untouched.
pub(crate) async fn middleware(
    Extract(state): Extract<Arc<State>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some((name, inner)) = strip(req.uri()) else {
        return next.run(req).await;
    };
    let profile = state.faults.profile(&name);
    let n = profile.requests.fetch_add(1, Ordering::SeqCst) + 1;
    profile.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(Arc::clone(&profile));
    let settings = profile.settings().clone();

    if settings.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.delay_ms)).await;
    }
    if settings.fails(n) {
        profile.failed.fetch_add(1, Ordering::SeqCst);
        if settings.reset {
            return reset();
        }
        let mut resp = failure(inner.path(), settings.status.unwrap_or(500));
        if let Some(secs) = settings.retry_after {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        return resp;
    }
    if let Some(limit) = settings.context_bytes {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
            return routes::error_response(&ApiError::invalid("unreadable body", None, None));
        };
        if bytes.len() > limit {
            return routes::error_response(&ApiError::invalid(
                format!(
                    "This model's maximum context length is {limit} tokens. However, your messages \
                     resulted in {} tokens. Please reduce the length of the messages.",
                    bytes.len()
                ),
                Some("messages"),
                Some("context_length_exceeded"),
            ));
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    let sent = std::mem::replace(req.uri_mut(), inner);
    req.extensions_mut().insert(SentUri(sent));
    next.run(req).await
}

/// A response whose body fails before its first byte: hyper then closes the connection
/// without writing the head, so the client sees the connection drop with no response.
fn reset() -> Response {
    let body = futures_util::stream::once(async {
        Err::<Bytes, _>(io::Error::new(io::ErrorKind::ConnectionReset, "emulated reset"))
    });
    Body::from_stream(body).into_response()
}

/// The error a profile failure answers, in the wire format of the route at `path` (the
/// same body `[emu:status=N]` gives there; OpenAI's error object for the others).
fn failure(path: &str, status: u16) -> Response {
    if path == "/v1/messages" {
        crate::anthropic::status_response(status)
    } else if path.starts_with("/model/") {
        crate::bedrock::status_response(status)
    } else if path.starts_with("/v1beta/") || path.starts_with("/v1/projects/") {
        crate::gemini::status_response(status)
    } else {
        routes::error_response(&ApiError::for_status(status, "emulated"))
    }
}

/// `PUT /_emu/faults/{profile}`: replaces the profile's settings and zeroes its counters.
pub(crate) async fn put(
    Extract(state): Extract<Arc<State>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let settings: Settings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return routes::error_response(&ApiError::invalid(
                format!("bad fault settings: {e}"),
                None,
                None,
            ));
        }
    };
    if let Some(s) = settings.status
        && StatusCode::from_u16(s).is_err()
    {
        return routes::error_response(&ApiError::invalid(
            format!("bad status {s}"),
            Some("status"),
            None,
        ));
    }
    let profile = state.faults.profile(&name);
    let mut current = profile.settings();
    *current = settings;
    profile.requests.store(0, Ordering::SeqCst);
    profile.failed.store(0, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /_emu/faults/{profile}`: `{"requests": N, "failed": M, "in_flight": K}`.
pub(crate) async fn get(Extract(state): Extract<Arc<State>>, Path(name): Path<String>) -> Response {
    let p = state.faults.profile(&name);
    let body = serde_json::json!({
        "requests": p.requests.load(Ordering::SeqCst),
        "failed": p.failed.load(Ordering::SeqCst),
        "in_flight": p.in_flight.load(Ordering::SeqCst),
    });
    routes::json(StatusCode::OK, body.to_string())
}

/// `DELETE /_emu/faults`: forgets every profile.
pub(crate) async fn clear(Extract(state): Extract<Arc<State>>) -> StatusCode {
    state
        .faults
        .profiles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests;
