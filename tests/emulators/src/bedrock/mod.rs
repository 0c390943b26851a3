//! Amazon Bedrock's Converse API (`POST /model/{modelId}/converse` and
//! `/model/{modelId}/converse-stream`), built from the Bedrock Runtime API reference and as
//! strict as the real one.
//!
//! Every request must carry a valid AWS Signature Version 4: the emulator recomputes it with
//! `aws-sigv4` from the request (method, path, the signed headers, the body) and the
//! emulator's credentials — access key id [`ACCESS_KEY_ID`], secret access key the emulator's
//! API key — and answers 403 in Bedrock's shape when it is missing
//! (`MissingAuthenticationTokenException`), names an unknown key
//! (`UnrecognizedClientException`), or does not match (`InvalidSignatureException`). Without
//! an API key (benchmarks) anything is accepted.
//!
//! The body is checked as Bedrock does (unknown members, alternation starting with `user`,
//! `toolResult` ids answering the previous turn's `toolUse`, blank text, image formats); every
//! failure is `{"message": ...}` with the type in `x-amzn-errortype`. The answer follows the
//! other emulators: `You said: <last user text>`, a `toolUse` block when tools are offered (its
//! input generated from the schema), and the same `[emu:...]` directives (`status=N` with
//! Bedrock's exception for N, `delay_ms`, `chunk_delay_ms`, `words`, `abort_mid_stream`,
//! `finish`), plus `[emu:prompt_too_long]` (the 400 a too-long input gets) and
//! `[emu:error_mid_stream]` (an exception frame after the first text delta).
//!
//! `POST /model/{modelId}/invoke` (InvokeModel) serves the Titan and Cohere embedding models,
//! signed the same way.
//!
//! ConverseStream answers `application/vnd.amazon.eventstream` frames encoded with
//! `aws-smithy-eventstream`: `messageStart`, `contentBlockStart` (tool use), `contentBlockDelta`s,
//! `contentBlockStop`, `messageStop`, `metadata` (usage).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue as FrameValue, Message as Frame};
use axum::extract::{Path, State as Extract};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::chat::{IdGen, pieces, word_count};
use crate::directives::{self, Directives};
use crate::faults::ClientUri;
use crate::record::{Outcome, Tracker};
use crate::routes::{State, paced_body};
use crate::schema;

#[cfg(test)]
mod tests;
mod validate;

/// The access key id the emulator knows; its secret is the emulator's API key.
pub const ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
/// How far a request's `x-amz-date` may be from now, as AWS allows.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// How many characters of tool input go in one delta.
const JSON_FRAGMENT: usize = 6;
/// How many frames `[emu:abort_mid_stream]` lets through before dropping the connection.
const FRAMES_BEFORE_ABORT: usize = 3;
const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");

/// An error in Bedrock's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "ValidationException",
            message: message.into(),
        }
    }

    fn forbidden(kind: &'static str, message: &str) -> Self {
        Self {
            status: 403,
            kind,
            message: message.to_owned(),
        }
    }

    /// The error answered for `[emu:status=N]`, with the exception Bedrock uses for N.
    fn for_status(status: u16) -> Self {
        let (kind, message) = match status {
            400 => ("ValidationException", "Emulated invalid request."),
            403 => (
                "AccessDeniedException",
                "You don't have access to the model with the specified model ID.",
            ),
            404 => (
                "ResourceNotFoundException",
                "Could not resolve the foundation model from the provided model identifier.",
            ),
            408 => (
                "ModelTimeoutException",
                "Model has timed out in processing the request.",
            ),
            424 => (
                "ModelErrorException",
                "The model encountered an error (emulated).",
            ),
            429 => (
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            ),
            503 => (
                "ServiceUnavailableException",
                "Bedrock is unable to process your request.",
            ),
            500..=599 => (
                "InternalServerException",
                "The server encountered an internal error.",
            ),
            _ => ("ValidationException", "Emulated error."),
        };
        Self {
            status,
            kind,
            message: message.to_owned(),
        }
    }
}

/// What `[emu:status=N]` answers, for a fault profile's failures (see [`crate::faults`]).
pub(crate) fn status_response(status: u16) -> Response {
    error_response(&ApiError::for_status(status), "emu-fault")
}

fn error_response(e: &ApiError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json!({"message": e.message}).to_string(),
    )
        .into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        e.kind
    )) {
        headers.insert(ERROR_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `POST /model/{modelId}/converse`.
pub async fn converse(
    Extract(state): Extract<Arc<State>>,
    ClientUri(uri): ClientUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&state, &uri, &headers, body, false).await
}

/// `POST /model/{modelId}/converse-stream`.
pub async fn converse_stream(
    Extract(state): Extract<Arc<State>>,
    ClientUri(uri): ClientUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&state, &uri, &headers, body, true).await
}

async fn handle(state: &State, uri: &Uri, headers: &HeaderMap, body: Bytes, stream: bool) -> Response {
    let mut tracker = state.track("POST", uri.path(), headers, Some(&body));
    let request_id = request_id(state.ids());
    match answer(state, uri, headers, &body, stream, &mut tracker, &request_id).await {
        Ok(resp) => resp,
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e, &request_id)
        }
    }
}

/// `POST /model/{modelId}/invoke`: InvokeModel for the Titan and Cohere embedding models,
/// signed like Converse (see [`crate::embeddings::bedrock_invoke`]); `[emu:status=N]` in a
/// text answers Bedrock's exception for N, `[emu:prompt_too_long]` the too-long 400.
pub async fn invoke(
    Extract(state): Extract<Arc<State>>,
    Path(model): Path<String>,
    ClientUri(uri): ClientUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut tracker = state.track("POST", uri.path(), &headers, Some(&body));
    let request_id = request_id(state.ids());
    let verified = match state.api_key() {
        Some(secret) => verify_signature(secret, "POST", &uri, &headers, &body, SystemTime::now()),
        None => Ok(()),
    };
    let result = verified.and_then(|()| {
        crate::embeddings::bedrock_invoke(&model, &body).map_err(|(status, message)| match status {
            400 => ApiError::validation(message),
            _ => ApiError::for_status(status),
        })
    });
    match result {
        Ok(answer) => {
            tracker.finish(Outcome::Completed);
            let request_id = HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("0"));
            (
                StatusCode::OK,
                [
                    (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (REQUEST_ID, request_id),
                ],
                answer,
            )
                .into_response()
        }
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e, &request_id)
        }
    }
}

/// A request id shaped like AWS's (a UUID).
fn request_id(ids: &IdGen) -> String {
    let n = ids.id("");
    let digits: String = n.chars().filter(char::is_ascii_alphanumeric).collect();
    let hex: String = format!("{digits:0>32}")
        .chars()
        .map(|c| if c.is_ascii_hexdigit() { c } else { 'a' })
        .collect();
    let tail = &hex[hex.len() - 32..];
    format!(
        "{}-{}-{}-{}-{}",
        &tail[..8],
        &tail[8..12],
        &tail[12..16],
        &tail[16..20],
        &tail[20..]
    )
    .to_ascii_lowercase()
}

async fn answer(
    state: &State,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    stream: bool,
    tracker: &mut Tracker,
    request_id: &str,
) -> Result<Response, ApiError> {
    if let Some(secret) = state.api_key() {
        verify_signature(secret, "POST", uri, headers, body, SystemTime::now())?;
    }
    let req: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        status: 400,
        kind: "SerializationException",
        message: format!("Unable to parse request body: {e}"),
    })?;
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
        return Err(ApiError::validation("Input is too long for requested model."));
    }
    let tracker = std::mem::replace(tracker, Tracker::none());
    let request_id = HeaderValue::from_str(request_id).unwrap_or(HeaderValue::from_static("0"));
    if stream {
        let (buf, ends) = stream_frames(&plan);
        let gap = Duration::from_millis(d.chunk_delay_ms);
        let abort_after = d.abort_mid_stream.then_some(FRAMES_BEFORE_ABORT);
        let ends = if gap.is_zero() && abort_after.is_none() {
            vec![buf.len()]
        } else {
            ends
        };
        let body = paced_body(Bytes::from(buf), ends, gap, abort_after, tracker);
        return Ok((
            StatusCode::OK,
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/vnd.amazon.eventstream"),
                ),
                (REQUEST_ID, request_id),
            ],
            body,
        )
            .into_response());
    }
    let mut tracker = tracker;
    tracker.finish(Outcome::Completed);
    Ok((
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (REQUEST_ID, request_id),
        ],
        response_json(&plan),
    )
        .into_response())
}

// ---- SigV4 ------------------------------------------------------------------

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let auth = Authorization {
        key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next() == Some("aws4_request") && scope.next().is_none()).then_some(auth)
}

/// `20261122T020354Z` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Recomputes the request's signature with `secret` and compares.
pub(crate) fn verify_signature(
    secret: &str,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), ApiError> {
    let Some(value) = headers.get("authorization") else {
        return Err(ApiError::forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let bad = || {
        ApiError::forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )
    };
    let auth = value.to_str().ok().and_then(parse_authorization).ok_or_else(|| {
        ApiError::forbidden(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        )
    })?;
    if auth.key_id != ACCESS_KEY_ID {
        return Err(ApiError::forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if auth.service != "bedrock" {
        return Err(bad());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let amz_date = header("x-amz-date").ok_or_else(bad)?;
    let time = parse_amz_date(amz_date).ok_or_else(bad)?;
    if !amz_date.starts_with(auth.date) {
        return Err(bad());
    }
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(ApiError::forbidden(
            "InvalidSignatureException",
            "Signature expired: the request time is too far from the current time.",
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(bad());
        }
    }
    let host = header("host").ok_or_else(bad)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{host}{path}");
    let token = header("x-amz-security-token");
    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        // The signer adds these two itself, from the time and the credentials.
        if *name == "x-amz-date" || *name == "x-amz-security-token" {
            continue;
        }
        signed.push((name, header(name).ok_or_else(bad)?));
    }
    let identity = Credentials::new(ACCESS_KEY_ID, secret, token.map(str::to_owned), None, "emulator").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| bad())?
        .into();
    let signable = SignableRequest::new(method, url, signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|_| bad())?;
    let output = sign(signable, &params).map_err(|_| bad())?;
    let (instructions, expected) = output.into_parts();
    // The signer signs exactly the given headers plus host, date and token: the sets must match.
    let mut names: Vec<String> = instructions
        .headers()
        .find(|(n, _)| *n == "authorization")
        .and_then(|(_, v)| v.split("SignedHeaders=").nth(1))
        .and_then(|v| v.split(',').next())
        .map(|v| v.split(';').map(str::to_owned).collect())
        .unwrap_or_default();
    names.sort_unstable();
    let mut given: Vec<&str> = auth.signed_headers.clone();
    given.sort_unstable();
    if expected != auth.signature || names != given {
        return Err(bad());
    }
    Ok(())
}

// ---- the answer -------------------------------------------------------------

/// One content block of the answer.
pub enum Block<'r> {
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
    let forced = match req.tool_choice {
        validate::ToolChoice::Tool(name) => req.tools.iter().find(|t| t.name == name),
        _ => None,
    };
    let use_tools = !req.tools.is_empty()
        && (forced.is_some()
            || matches!(req.tool_choice, validate::ToolChoice::Any)
            || !req.last_is_tool_result);
    let stop_reason = if use_tools {
        let targets: Vec<&validate::Tool<'_>> = match forced {
            Some(t) => vec![t],
            None if directives.parallel && req.tools.len() >= 2 => req.tools[..2].iter().collect(),
            None => req.tools[..1].iter().collect(),
        };
        for t in targets {
            let input = schema::instance(t.schema);
            let input = if input.is_object() {
                input
            } else {
                Value::Object(Map::new())
            };
            let input = input.to_string();
            output_tokens += (input.chars().count() as u64).div_ceil(4);
            blocks.push(Block::ToolUse {
                id: ids.id("tooluse_"),
                name: t.name,
                input,
            });
        }
        "tool_use"
    } else {
        let mut text = if req.last_is_tool_result {
            format!("Tool result: {}", req.last_tool_result_text)
        } else {
            match directives.words {
                Some(count) => lorem(count),
                None => format!("You said: {clean}"),
            }
        };
        let mut reason = "end_turn";
        if let Some(at) = req
            .stop_sequences
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s))
            .min()
        {
            text.truncate(at);
            reason = "stop_sequence";
        }
        if let Some(limit) = req.max_tokens.and_then(|m| usize::try_from(m).ok())
            && word_count(&text) > limit
        {
            let end = pieces(&text).take(limit).map(str::len).sum::<usize>();
            text.truncate(end);
            reason = "max_tokens";
        }
        output_tokens += word_count(&text) as u64;
        blocks.push(Block::Text(text));
        reason
    };
    let stop_reason = match directives.finish {
        Some("length") => "max_tokens",
        Some("content_filter") => "content_filtered",
        Some("stop") => "end_turn",
        _ => stop_reason,
    };
    Plan {
        directives,
        prompt_too_long,
        error_mid_stream,
        blocks,
        stop_reason,
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

fn usage(plan: &Plan<'_>) -> Value {
    json!({
        "inputTokens": plan.input_tokens,
        "outputTokens": plan.output_tokens,
        "totalTokens": plan.input_tokens + plan.output_tokens,
    })
}

fn response_json(plan: &Plan<'_>) -> Vec<u8> {
    let content: Vec<Value> = plan
        .blocks
        .iter()
        .map(|b| match b {
            Block::Text(text) => json!({"text": text}),
            Block::ToolUse { id, name, input } => {
                let input: Value = serde_json::from_str(input).unwrap_or_else(|_| json!({}));
                json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
            }
        })
        .collect();
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": plan.stop_reason,
        "usage": usage(plan),
        "metrics": {"latencyMs": 42},
    })
    .to_string()
    .into_bytes()
}

/// One event frame: `:event-type`, `:content-type` and `:message-type` headers, a JSON payload.
fn event(buf: &mut Vec<u8>, ends: &mut Vec<usize>, kind: &'static str, payload: &Value) {
    let frame = Frame::new(payload.to_string().into_bytes())
        .add_header(Header::new(":event-type", FrameValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            FrameValue::String("application/json".into()),
        ))
        .add_header(Header::new(":message-type", FrameValue::String("event".into())));
    // Writing to a Vec only fails for frames past the format's limits, which these never are.
    let _ = write_message_to(&frame, buf);
    ends.push(buf.len());
}

fn exception(buf: &mut Vec<u8>, ends: &mut Vec<usize>, kind: &'static str, message: &str) {
    let frame = Frame::new(json!({"message": message}).to_string().into_bytes())
        .add_header(Header::new(":exception-type", FrameValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            FrameValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            FrameValue::String("exception".into()),
        ));
    let _ = write_message_to(&frame, buf);
    ends.push(buf.len());
}

/// The frames of a streamed answer in one buffer, with where each ends.
fn stream_frames(plan: &Plan<'_>) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::with_capacity(1024);
    let mut ends = Vec::new();
    event(&mut buf, &mut ends, "messageStart", &json!({"role": "assistant"}));
    for (index, block) in plan.blocks.iter().enumerate() {
        match block {
            Block::Text(text) => {
                for piece in pieces(text) {
                    event(
                        &mut buf,
                        &mut ends,
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": index, "delta": {"text": piece}}),
                    );
                    if plan.error_mid_stream {
                        exception(
                            &mut buf,
                            &mut ends,
                            "internalServerException",
                            "The server encountered an internal error (emulated).",
                        );
                        return (buf, ends);
                    }
                }
            }
            Block::ToolUse { id, name, input } => {
                event(
                    &mut buf,
                    &mut ends,
                    "contentBlockStart",
                    &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                );
                let chars: Vec<char> = input.chars().collect();
                for fragment in chars.chunks(JSON_FRAGMENT) {
                    let fragment: String = fragment.iter().collect();
                    event(
                        &mut buf,
                        &mut ends,
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}}),
                    );
                }
            }
        }
        event(
            &mut buf,
            &mut ends,
            "contentBlockStop",
            &json!({"contentBlockIndex": index}),
        );
    }
    event(
        &mut buf,
        &mut ends,
        "messageStop",
        &json!({"stopReason": plan.stop_reason}),
    );
    event(
        &mut buf,
        &mut ends,
        "metadata",
        &json!({"usage": usage(plan), "metrics": {"latencyMs": 42}}),
    );
    (buf, ends)
}
