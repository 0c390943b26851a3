//! Anthropic's Messages API (`POST /v1/messages`), built from Anthropic's API reference and
//! as strict as the real one: `x-api-key` and `anthropic-version` are required, so is
//! `max_tokens`; messages alternate starting with `user`; `tool_result` blocks answer the
//! `tool_use` blocks of the assistant turn right before them, by id; `system` is top-level
//! only; unknown fields are rejected. Every failure answers Anthropic's error shape,
//! `{"type":"error","error":{"type","message"},"request_id"}`.
//!
//! The answer follows the OpenAI emulator: `You said: <last user text>`, a `tool_use` block
//! when tools are offered (its input generated from the `input_schema`), a `thinking` block
//! first when `thinking` is enabled, and the same `[emu:...]` directives (`status=N`
//! including 529, `delay_ms`, `chunk_delay_ms`, `words`, `abort_mid_stream`, `finish`,
//! `parallel`), plus `[emu:prompt_too_long]`, which answers the 400 a too-long prompt gets,
//! and `[emu:error_mid_stream]`, which ends a stream with an `error` event (`overloaded_error`)
//! after its first text delta.
//! Streams send the documented event sequence with `event:` lines: `message_start`,
//! `content_block_start`, `ping`, `content_block_delta`s, `content_block_stop`,
//! `message_delta` (stop reason and usage), `message_stop`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::chat::{IdGen, pieces, word_count};
use crate::directives::{self, Directives};
use crate::record::{Outcome, Tracker};
use crate::routes::{State, paced_body};
use crate::schema;

mod validate;
mod wire;

/// An error in Anthropic's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    /// The error answered for `[emu:status=N]`, with the type Anthropic uses for N.
    fn for_status(status: u16) -> Self {
        let (kind, message) = match status {
            400 => ("invalid_request_error", "Emulated invalid request."),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            404 => ("not_found_error", "Not found"),
            413 => (
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
            ),
            429 => (
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit (emulated).",
            ),
            529 => ("overloaded_error", "Overloaded"),
            500..=599 => ("api_error", "Internal server error"),
            _ => ("invalid_request_error", "Emulated error."),
        };
        Self {
            status,
            kind,
            message: message.to_owned(),
        }
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// What `[emu:status=N]` answers, for a fault profile's failures (see [`crate::faults`]).
pub(crate) fn status_response(status: u16) -> Response {
    error_response(&ApiError::for_status(status), "req_emu_fault")
}

fn error_response(e: &ApiError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        wire::error_json(e, request_id),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `POST /v1/messages`.
pub async fn messages(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tracker = state.track("POST", "/v1/messages", &headers, Some(&body));
    let request_id = state.ids().id("req_");
    match answer(&state, &headers, &body, &mut tracker, &request_id).await {
        Ok(resp) => resp,
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e, &request_id)
        }
    }
}

fn check_headers(state: &State, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(expected) = state.api_key() {
        let auth = |message: &str| ApiError {
            status: 401,
            kind: "authentication_error",
            message: message.to_owned(),
        };
        match headers.get("x-api-key") {
            None => return Err(auth("x-api-key header is required")),
            Some(given) if given.as_bytes() != expected.as_bytes() => {
                return Err(auth("invalid x-api-key"));
            }
            Some(_) => {}
        }
    }
    match headers.get("anthropic-version").map(HeaderValue::as_bytes) {
        None => return Err(ApiError::invalid("anthropic-version: header is required")),
        Some(b"2023-06-01" | b"2023-01-01") => {}
        Some(_) => return Err(ApiError::invalid("anthropic-version: invalid version")),
    }
    Ok(())
}

async fn answer(
    state: &State,
    headers: &HeaderMap,
    body: &Bytes,
    tracker: &mut Tracker,
    request_id: &str,
) -> Result<Response, ApiError> {
    check_headers(state, headers)?;
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("There was an issue with your request body: {e}")))?;
    let req = validate::request(&req)?;
    let plan = plan(&req, state.ids());
    let d = &plan.directives;
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    if let Some(status) = d.status.filter(|s| (400..=599).contains(s)) {
        return Err(ApiError::for_status(status));
    }
    if plan.prompt_too_long {
        return Err(ApiError::invalid(format!(
            "prompt is too long: {} tokens > 200000 maximum",
            200_000 + plan.input_tokens
        )));
    }
    let id = state.ids().id("msg_01");
    let tracker = std::mem::replace(tracker, Tracker::none());
    let request_id = HeaderValue::from_str(request_id).unwrap_or(HeaderValue::from_static("req_"));

    if req.stream {
        let events = wire::stream_events(&id, req.model, &plan);
        let gap = Duration::from_millis(d.chunk_delay_ms);
        let abort_after = d.abort_mid_stream.then_some(wire::EVENTS_BEFORE_ABORT);
        let ends = if gap.is_zero() && abort_after.is_none() {
            vec![events.buf.len()]
        } else {
            events.ends
        };
        let body = paced_body(Bytes::from(events.buf), ends, gap, abort_after, tracker);
        return Ok((
            StatusCode::OK,
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                ),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (REQUEST_ID, request_id),
            ],
            body,
        )
            .into_response());
    }
    let buf = wire::message_json(&id, req.model, &plan);
    let mut tracker = tracker;
    tracker.finish(Outcome::Completed);
    Ok((
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (REQUEST_ID, request_id),
        ],
        buf,
    )
        .into_response())
}

/// One content block of the answer.
pub enum Block<'r> {
    Thinking(String),
    Text(String),
    ToolUse {
        id: String,
        name: &'r str,
        input: String,
    },
}

/// What the emulator will answer to one request.
pub struct Plan<'r> {
    pub directives: Directives,
    pub prompt_too_long: bool,
    pub error_mid_stream: bool,
    pub blocks: Vec<Block<'r>>,
    pub stop_reason: &'static str,
    pub stop_sequence: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

fn plan<'r>(req: &validate::Request<'r>, ids: &IdGen) -> Plan<'r> {
    let (directives, clean) = directives::parse(&req.last_user_text);
    let prompt_too_long = req.last_user_text.contains("[emu:prompt_too_long]");
    let error_mid_stream = req.last_user_text.contains("[emu:error_mid_stream]");
    let input_tokens = (req.prompt_chars as u64).div_ceil(4).max(1);
    let mut blocks = Vec::new();
    let mut output_tokens = 0u64;
    if let Some(budget) = req.thinking_budget {
        let thought = format!("The user said: {clean}. Budget {budget}.");
        output_tokens += word_count(&thought) as u64;
        blocks.push(Block::Thinking(thought));
    }

    let forced = match req.tool_choice {
        validate::ToolChoice::Tool(name) => req.tools.iter().find(|t| t.name == name),
        _ => None,
    };
    let use_tools = !req.tools.is_empty()
        && !matches!(req.tool_choice, validate::ToolChoice::None)
        && (forced.is_some()
            || matches!(req.tool_choice, validate::ToolChoice::Any)
            || !req.last_is_tool_result);
    let (stop_reason, stop_sequence) = if use_tools {
        let targets: Vec<&validate::Tool<'_>> = match forced {
            Some(t) => vec![t],
            None if directives.parallel && req.tools.len() >= 2 && !req.disable_parallel => {
                req.tools[..2].iter().collect()
            }
            None => req.tools[..1].iter().collect(),
        };
        for t in targets {
            let input = schema::instance(t.input_schema);
            let input = if input.is_object() {
                input
            } else {
                Value::Object(Map::new())
            };
            let input = input.to_string();
            output_tokens += (input.chars().count() as u64).div_ceil(4);
            blocks.push(Block::ToolUse {
                id: ids.id("toolu_01"),
                name: t.name,
                input,
            });
        }
        ("tool_use", None)
    } else {
        let mut text = if req.last_is_tool_result {
            format!("Tool result: {}", req.last_tool_result_text)
        } else {
            match directives.words {
                Some(count) => lorem(count),
                None => format!("You said: {clean}"),
            }
        };
        let mut reason = ("end_turn", None);
        if let Some((at, seq)) = req
            .stop_sequences
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            text.truncate(at);
            reason = ("stop_sequence", Some((*seq).to_owned()));
        }
        let limit = usize::try_from(req.max_tokens).unwrap_or(usize::MAX);
        if word_count(&text) > limit {
            let end = pieces(&text).take(limit).map(str::len).sum::<usize>();
            text.truncate(end);
            reason = ("max_tokens", None);
        }
        output_tokens += word_count(&text) as u64;
        blocks.push(Block::Text(text));
        reason
    };
    let stop_reason = match directives.finish {
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        Some("stop") => "end_turn",
        _ => stop_reason,
    };
    Plan {
        directives,
        prompt_too_long,
        error_mid_stream,
        blocks,
        stop_reason,
        stop_sequence,
        input_tokens,
        output_tokens: output_tokens.max(1),
    }
}

const LOREM: [&str; 8] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
];

fn lorem(count: usize) -> String {
    (0..count)
        .map(|i| LOREM[i % LOREM.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
