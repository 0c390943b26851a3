//! HTTP handlers: auth, recording, delays and injected errors around [`crate::chat`] and
//! [`crate::wire`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State as Extract;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::Options;
use crate::chat::{self, ApiError, ChatRequest, IdGen};
use crate::record::{Ledger, Outcome, Recorder, Tracker};
use crate::wire;

const MODELS: &str = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"},{"id":"gpt-4.1-mini","object":"model","created":1744318173,"owned_by":"system"},{"id":"o4-mini","object":"model","created":1744225351,"owned_by":"system"}]}"#;

pub struct State {
    /// The whole expected header value, `Bearer <key>`, so checking is one comparison.
    pub(crate) expected_auth: Option<String>,
    recorder: Option<Arc<Recorder>>,
    pub(crate) ids: IdGen,
    /// Fault profiles for `/_f/{profile}/...`, set by tests through `/_emu/faults`.
    pub(crate) faults: crate::faults::Faults,
    /// Chat completions that named a `user`, by class (`GET /_emu/ledger`).
    pub(crate) ledger: Arc<Ledger>,
    /// Connections open now (counted by [`crate::serve`]'s listener).
    pub(crate) open_connections: Arc<AtomicI64>,
}

impl State {
    pub fn new(opts: Options, open_connections: Arc<AtomicI64>) -> Self {
        Self {
            ledger: Arc::default(),
            open_connections,
            expected_auth: opts.api_key.map(|k| format!("Bearer {k}")),
            recorder: opts.record.then(|| Arc::new(Recorder::default())),
            ids: IdGen::new(),
            faults: Default::default(),
        }
    }

    pub(crate) fn track(
        &self,
        method: &'static str,
        path: &str,
        headers: &HeaderMap,
        body: Option<&Bytes>,
    ) -> Tracker {
        match &self.recorder {
            Some(r) => r.start(method, path, headers, body.cloned()),
            None => Tracker::none(),
        }
    }

    /// The key clients must send, if any (the Anthropic routes expect it in `x-api-key`).
    pub(crate) fn api_key(&self) -> Option<&str> {
        self.expected_auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
    }

    pub(crate) fn ids(&self) -> &IdGen {
        &self.ids
    }

    pub(crate) fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.expected_auth else {
            return Ok(());
        };
        let given = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if given == Some(expected.as_bytes()) {
            return Ok(());
        }
        let message = match given.and_then(|g| g.strip_prefix(b"Bearer ")) {
            Some(key) => format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                redact(&String::from_utf8_lossy(key))
            ),
            None => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned(),
        };
        Err(ApiError {
            status: 401,
            message,
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        })
    }
}

/// OpenAI shows the first and last few characters of a wrong key.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

pub(crate) fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.into(),
    )
        .into_response()
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, wire::error_json(e));
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut tracker = state.track("POST", "/v1/chat/completions", &headers, Some(&body));
    let result = answer(&state, &headers, &body, &mut tracker).await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e)
        }
    }
}

async fn answer(
    state: &State,
    headers: &HeaderMap,
    body: &Bytes,
    tracker: &mut Tracker,
) -> Result<Response, ApiError> {
    state.check_auth(headers)?;
    let req: ChatRequest<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(format!("Invalid request body: {e}"), None, None)
        } else {
            ApiError::invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                None,
                None,
            )
        }
    })?;
    let plan = chat::plan(&req, &state.ids)?;
    if let Some(user) = &req.user {
        tracker.tally(
            &state.ledger,
            &user.0,
            plan.usage.prompt_tokens,
            plan.usage.completion_tokens,
        );
    }
    let d = &plan.directives;
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    if let Some(status) = d.status.filter(|s| (400..=599).contains(s)) {
        return Err(ApiError::for_status(status, plan.model));
    }
    // `[emu:prompt_too_long]`: OpenAI's answer to a prompt over the window.
    if body.windows(21).any(|w| w == b"[emu:prompt_too_long]".as_slice()) {
        return Err(ApiError::invalid(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
            Some("messages"),
            Some("context_length_exceeded"),
        ));
    }
    let id = state.ids.id("chatcmpl-");
    let created = unix_now();
    let tracker = std::mem::replace(tracker, Tracker::none());

    if plan.stream {
        let events = wire::stream_events(&id, created, &plan);
        let gap = Duration::from_millis(d.chunk_delay_ms);
        // Without gaps or an abort, the whole stream goes out as one write.
        let ends = if gap.is_zero() && events.abort_after.is_none() {
            vec![events.buf.len()]
        } else {
            events.ends
        };
        let body = paced_body(Bytes::from(events.buf), ends, gap, events.abort_after, tracker);
        return Ok((
            StatusCode::OK,
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                ),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response());
    }

    let buf = wire::completion_json(&id, created, &plan);
    if d.abort_mid_stream {
        // Half a body, then the connection drops.
        let half = buf.len() / 2;
        let body = paced_body(Bytes::from(buf), vec![half], Duration::ZERO, Some(1), tracker);
        return Ok(json(StatusCode::OK, body));
    }
    let mut tracker = tracker;
    tracker.finish(Outcome::Completed);
    Ok(json(StatusCode::OK, buf))
}

struct Paced {
    buf: Bytes,
    ends: Vec<usize>,
    next: usize,
    gap: Duration,
    abort_after: Option<usize>,
    tracker: Tracker,
}

/// A body sending `buf[ends[i-1]..ends[i]]` as frame `i`, `gap` apart; after `abort_after`
/// frames it fails, which makes hyper drop the connection. The tracker records `completed`
/// at the end, `error` at an abort, and `cancelled` if the body is dropped first.
pub(crate) fn paced_body(
    buf: Bytes,
    ends: Vec<usize>,
    gap: Duration,
    abort_after: Option<usize>,
    tracker: Tracker,
) -> Body {
    let state = Paced {
        buf,
        ends,
        next: 0,
        gap,
        abort_after,
        tracker,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if Some(s.next) == s.abort_after {
            // Let hyper flush what was sent so far: the client must see the first chunks.
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.tracker.finish(Outcome::Error);
            s.next = s.ends.len();
            s.abort_after = None;
            return Some((Err(io::Error::other("emulated abort mid-stream")), s));
        }
        let Some(&end) = s.ends.get(s.next) else {
            s.tracker.finish(Outcome::Completed);
            return None;
        };
        if s.next > 0 && !s.gap.is_zero() {
            tokio::time::sleep(s.gap).await;
        }
        let start = match s.next {
            0 => 0,
            i => s.ends[i - 1],
        };
        s.next += 1;
        let chunk = s.buf.slice(start..end);
        Some((Ok::<Bytes, io::Error>(chunk), s))
    });
    Body::from_stream(stream)
}

/// `GET /v1/models`.
pub async fn list_models(Extract(state): Extract<Arc<State>>, headers: HeaderMap) -> Response {
    let mut tracker = state.track("GET", "/v1/models", &headers, None);
    if let Err(e) = state.check_auth(&headers) {
        tracker.finish(Outcome::Error);
        return error_response(&e);
    }
    tracker.finish(Outcome::Completed);
    json(StatusCode::OK, MODELS)
}

/// `GET /v1/models/{id}`: one model of [`MODELS`], or OpenAI's 404 naming it.
pub async fn get_model(
    Extract(state): Extract<Arc<State>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut tracker = state.track("GET", &format!("/v1/models/{id}"), &headers, None);
    if let Err(e) = state.check_auth(&headers) {
        tracker.finish(Outcome::Error);
        return error_response(&e);
    }
    let list: serde_json::Value = serde_json::from_str(MODELS).unwrap_or_default();
    let found = list["data"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["id"] == id.as_str()));
    match found {
        Some(model) => {
            tracker.finish(Outcome::Completed);
            json(StatusCode::OK, model.to_string())
        }
        None => {
            tracker.finish(Outcome::Error);
            error_response(&ApiError {
                status: 404,
                message: format!("The model '{id}' does not exist"),
                kind: "invalid_request_error",
                param: Some("model"),
                code: Some("model_not_found"),
            })
        }
    }
}

/// `GET /_emu/requests`.
pub async fn recorded(Extract(state): Extract<Arc<State>>) -> Response {
    let list = state
        .recorder
        .as_ref()
        .map(|r| r.to_json())
        .unwrap_or(serde_json::Value::Array(Vec::new()));
    json(StatusCode::OK, list.to_string())
}

/// `DELETE /_emu/requests`.
pub async fn clear_recorded(Extract(state): Extract<Arc<State>>) -> StatusCode {
    if let Some(r) = &state.recorder {
        r.clear();
    }
    StatusCode::NO_CONTENT
}

/// Anything else: OpenAI's 404 for an unknown URL.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    let e = ApiError {
        status: 404,
        message: format!("Invalid URL ({method} {})", uri.path()),
        kind: "invalid_request_error",
        param: None,
        code: None,
    };
    error_response(&e)
}

/// `GET /_emu/ledger`: the ledger ([`Ledger::to_json`]) and `open_connections`.
pub async fn ledger(Extract(state): Extract<Arc<State>>) -> Response {
    let mut v = state.ledger.to_json();
    v["open_connections"] = state.open_connections.load(Ordering::Relaxed).into();
    json(StatusCode::OK, v.to_string())
}

/// `DELETE /_emu/ledger`: forgets every tally and cancel time.
pub async fn clear_ledger(Extract(state): Extract<Arc<State>>) -> StatusCode {
    state.ledger.clear();
    StatusCode::NO_CONTENT
}
