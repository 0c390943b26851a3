//! A Gemini API (AI Studio, `v1beta`) emulator: `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse`, built from Google's API reference. Embeddings
//! (`:batchEmbedContents`, and Vertex AI's `:predict`) are answered by [`crate::embeddings`],
//! Imagen's `:predict` (on both APIs) by [`imagen`].
//!
//! As strict as the real API where it matters to a gateway: the key must come in the
//! `x-goog-api-key` header (a key in the query string is refused, to prove the gateway never
//! puts one in a URL), `contents` roles are `user` or `model`, a function response must answer
//! the function call turn just before it, unknown fields (also inside schemas) are rejected
//! with Google's error object `{"error": {"code", "message", "status"}}`.
//!
//! Answers: `You said: <last user text>`; a `functionCall` when functions are declared (its
//! args an instance of the declared schema); JSON for `responseMimeType: application/json`
//! (an instance of `responseSchema` when given); a thought part when thoughts are asked for;
//! `usageMetadata` on every answer. Streams are SSE, one `GenerateContentResponse` per
//! `data: {...}\r\n\r\n` event, ending with the body (no `[DONE]`). The `[emu:...]`
//! directives of the OpenAI emulator apply (see [`crate::directives`]); requests are recorded
//! in the same `/_emu/requests` log, with their query string.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State as Extract};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::chat::{IdGen, pieces, word_count};
use crate::directives::{self, Directives};
use crate::record::{Outcome, Tracker};
use crate::routes::State;
use crate::schema;

mod imagen;
mod request;
mod vertex;

pub use vertex::token;

use request::{GenerateRequest, lower_types};

/// The thought signature the emulator puts on a thinking model's first function call.
const THOUGHT_SIGNATURE: &str = "ZW11LXRob3VnaHQtc2lnbmF0dXJl";

/// An error in Google's shape.
#[derive(Debug)]
pub struct GoogleError {
    pub status: u16,
    pub message: String,
}

impl GoogleError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    fn status_name(&self) -> &'static str {
        match self.status {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            499 => "CANCELLED",
            500 => "INTERNAL",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "UNKNOWN",
        }
    }

    /// The error answered for `[emu:status=N]`.
    fn for_status(status: u16, model: &str) -> Self {
        let message = match status {
            400 => "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).".to_owned(),
            403 => "Permission denied: Consumer does not have access to this model (emulated).".to_owned(),
            404 => format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent."
            ),
            429 => "Resource has been exhausted (e.g. check quota).".to_owned(),
            500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".to_owned(),
            503 => "The model is overloaded. Please try again later.".to_owned(),
            _ => format!("Emulated error (status {status})."),
        };
        Self { status, message }
    }

    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.status,
            "message": self.message,
            "status": self.status_name(),
        });
        if self.status == 429
            && let Some(e) = error.as_object_mut()
        {
            e.insert(
                "details".into(),
                json!([{ "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s" }]),
            );
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, json!({ "error": error }).to_string())
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        )],
        body.into(),
    )
        .into_response()
}

/// How a caller proves who it is.
#[derive(Clone, Copy)]
enum Auth {
    /// AI Studio: `x-goog-api-key`.
    ApiKey,
    /// Vertex AI: `Authorization: Bearer <token from /token>`.
    OAuth,
}

/// What `[emu:status=N]` answers, for a fault profile's failures (see [`crate::faults`]).
pub(crate) fn status_response(status: u16) -> Response {
    GoogleError::for_status(status, "emulated").into_response()
}

/// `POST /v1beta/models/{model_action}` (AI Studio).
pub async fn generate(
    Extract(state): Extract<Arc<State>>,
    Path(model_action): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&state, Auth::ApiKey, &model_action, &uri, &headers, &body).await
}

/// `POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model_action}`
/// (Vertex AI).
pub async fn vertex_generate(
    Extract(state): Extract<Arc<State>>,
    Path((_project, _location, model_action)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&state, Auth::OAuth, &model_action, &uri, &headers, &body).await
}

async fn serve(
    state: &State,
    auth: Auth,
    model_action: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let path = match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut tracker = state.track("POST", &path, headers, Some(body));
    match answer(
        state,
        auth,
        model_action,
        uri.query(),
        headers,
        body,
        &mut tracker,
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            tracker.finish(Outcome::Error);
            e.into_response()
        }
    }
}

fn check_auth(
    state: &State,
    auth: Auth,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), GoogleError> {
    let has_query_key = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|pair| pair.split('=').next() == Some("key"));
    if has_query_key {
        return Err(GoogleError::invalid(
            "API keys must be sent in the x-goog-api-key header, never in the URL (emulator rule).",
        ));
    }
    if let Auth::OAuth = auth {
        return vertex::check_bearer(headers);
    }
    let Some(expected) = state
        .expected_auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
    else {
        return Ok(());
    };
    match headers.get("x-goog-api-key").map(HeaderValue::as_bytes) {
        None => Err(GoogleError {
            status: 403,
            message: "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.".to_owned(),
        }),
        Some(given) if given == expected.as_bytes() => Ok(()),
        Some(_) => Err(GoogleError::invalid("API key not valid. Please pass a valid API key.")),
    }
}

async fn answer(
    state: &State,
    auth: Auth,
    model_action: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    tracker: &mut Tracker,
) -> Result<Response, GoogleError> {
    check_auth(state, auth, query, headers)?;
    let (model, action) = model_action.split_once(':').unwrap_or((model_action, ""));
    if action == "predict" && model.starts_with("imagen-") {
        let resp = imagen::predict(model, body, matches!(auth, Auth::OAuth)).await?;
        tracker.finish(Outcome::Completed);
        return Ok(json_response(StatusCode::OK, resp));
    }
    if action == "batchEmbedContents" || (action == "predict" && matches!(auth, Auth::OAuth)) {
        let resp = if action == "predict" {
            crate::embeddings::vertex_predict(model, body)
        } else {
            crate::embeddings::gemini_batch(model, body)
        };
        let resp = resp.map_err(|(status, message)| GoogleError { status, message })?;
        tracker.finish(Outcome::Completed);
        return Ok(json_response(StatusCode::OK, resp));
    }
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => {
            return Err(GoogleError {
                status: 404,
                message: format!("Method not found: models/{model_action}"),
            });
        }
    };
    if stream && !query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse")) {
        return Err(GoogleError::invalid(
            "streamGenerateContent without alt=sse answers a JSON array; this emulator (and the gateway) only speak alt=sse.",
        ));
    }
    if !model.starts_with("gemini") {
        return Err(GoogleError::for_status(404, model));
    }
    let req: GenerateRequest = serde_json::from_slice(body)
        .map_err(|e| GoogleError::invalid(format!("Invalid JSON payload received. {e}")))?;
    req.validate()?;
    // Response ids need only look random; a fresh generator per request is enough.
    let plan = plan(&req, model, &IdGen::new())?;
    let d = &plan.directives;
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    if let Some(status) = d.status.filter(|s| (400..=599).contains(s)) {
        return Err(GoogleError::for_status(status, model));
    }
    let tracker = std::mem::replace(tracker, Tracker::none());
    if stream {
        let events = stream_events(&plan);
        let abort_after = d.abort_mid_stream.then_some(events.len().div_ceil(2).max(1));
        let gap = Duration::from_millis(d.chunk_delay_ms);
        let body = paced(events, gap, abort_after, tracker);
        return Ok((
            StatusCode::OK,
            [
                (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response());
    }
    let mut tracker = tracker;
    tracker.finish(Outcome::Completed);
    Ok(json_response(StatusCode::OK, completion(&plan).to_string()))
}

enum Reply {
    Text(String),
    Calls(Vec<(String, Value)>),
}

struct Candidate {
    thought: Option<String>,
    reply: Reply,
    finish: &'static str,
}

/// What the emulator will answer.
struct Plan {
    model: String,
    response_id: String,
    directives: Directives,
    candidates: Vec<Candidate>,
    prompt_tokens: u64,
    candidate_tokens: u64,
    thought_tokens: u64,
    logprobs: Option<u32>,
}

fn text_of(parts: &[request::Part]) -> String {
    parts
        .iter()
        .filter_map(|p| p.text.as_deref())
        .collect::<Vec<_>>()
        .join(" ")
}

fn plan(req: &GenerateRequest, model: &str, ids: &IdGen) -> Result<Plan, GoogleError> {
    let config = req.generation_config.as_ref();
    let last_user_text = req
        .contents
        .iter()
        .rev()
        .filter(|c| c.role.as_deref().unwrap_or("user") == "user")
        .map(|c| text_of(&c.parts))
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let (directives, clean) = directives::parse(&last_user_text);
    let clean = clean.into_owned();

    let mut prompt_chars: usize = req
        .contents
        .iter()
        .chain(req.system_instruction.as_ref())
        .map(|c| text_of(&c.parts).chars().count())
        .sum();
    prompt_chars += req.contents.len();
    let prompt_tokens = (prompt_chars as u64).div_ceil(4).max(1);

    let last = req.contents.last();
    let last_responses: Vec<&request::FunctionResponse> = last
        .map(|c| {
            c.parts
                .iter()
                .filter_map(|p| p.function_response.as_ref())
                .collect()
        })
        .unwrap_or_default();
    let declarations: Vec<&request::FunctionDeclaration> = req
        .tools
        .iter()
        .flatten()
        .flat_map(|t| t.function_declarations.iter().flatten())
        .collect();
    let fc = req
        .tool_config
        .as_ref()
        .and_then(|t| t.function_calling_config.as_ref());
    let mode = fc.and_then(|f| f.mode.as_deref()).unwrap_or("AUTO");
    let n = config.and_then(|c| c.candidate_count).unwrap_or(1);

    let thinking = config
        .and_then(|c| c.thinking_config.as_ref())
        .filter(|t| t.include_thoughts == Some(true) && t.thinking_budget != Some(0))
        .map(|_| format!("Thinking about: {clean}"));
    let thought_tokens = thinking.as_deref().map_or(0, word_count) as u64 * u64::from(n);

    let mut candidates = Vec::with_capacity(n as usize);
    let mut candidate_tokens = 0u64;
    if !declarations.is_empty() && mode != "NONE" && last_responses.is_empty() {
        let allowed: Vec<&str> = fc
            .and_then(|f| f.allowed_function_names.as_ref())
            .map(|a| a.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let targets: Vec<&request::FunctionDeclaration> = if let Some(first) = allowed.first() {
            declarations
                .iter()
                .filter(|d| d.name == *first)
                .copied()
                .collect()
        } else if directives.parallel && declarations.len() >= 2 {
            declarations[..2].to_vec()
        } else {
            declarations[..1].to_vec()
        };
        let calls: Vec<(String, Value)> = targets
            .iter()
            .map(|d| {
                let args = match d.parameters.as_ref().or(d.parameters_json_schema.as_ref()) {
                    Some(p) => schema::instance(&lower_types(p)),
                    None => Value::Object(Map::new()),
                };
                let args = if args.is_object() {
                    args
                } else {
                    Value::Object(Map::new())
                };
                (d.name.clone(), args)
            })
            .collect();
        let tokens: u64 = calls
            .iter()
            .map(|(_, a)| (a.to_string().chars().count() as u64).div_ceil(4))
            .sum();
        for _ in 0..n {
            candidate_tokens += tokens;
            candidates.push(Candidate {
                thought: thinking.clone(),
                reply: Reply::Calls(calls.clone()),
                finish: finish_for(&directives, "STOP"),
            });
        }
    } else {
        let json_out = config.and_then(|c| c.response_mime_type.as_deref()) == Some("application/json");
        let mut text = if json_out {
            match config.and_then(|c| c.response_schema.as_ref()) {
                Some(s) => schema::instance(&lower_types(s)).to_string(),
                None => json!({ "echo": clean }).to_string(),
            }
        } else if !last_responses.is_empty() {
            let results: Vec<String> = last_responses
                .iter()
                .map(|r| Value::Object(r.response.clone()).to_string())
                .collect();
            format!("Tool result: {}", results.join(" "))
        } else {
            match directives.words {
                Some(count) => lorem(count),
                None => format!("You said: {clean}"),
            }
        };
        let mut finish = "STOP";
        let earliest_stop = config
            .and_then(|c| c.stop_sequences.as_ref())
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min();
        if let Some(at) = earliest_stop {
            text.truncate(at);
        }
        if let Some(limit) = config.and_then(|c| c.max_output_tokens).map(|l| l as usize)
            && word_count(&text) > limit
        {
            let end = pieces(&text).take(limit).map(str::len).sum::<usize>();
            text.truncate(end);
            let trimmed = text.trim_end().len();
            text.truncate(trimmed);
            finish = "MAX_TOKENS";
        }
        for _ in 0..n {
            candidate_tokens += word_count(&text) as u64;
            candidates.push(Candidate {
                thought: thinking.clone(),
                reply: Reply::Text(text.clone()),
                finish: finish_for(&directives, finish),
            });
        }
    }
    let logprobs = config
        .filter(|c| c.response_logprobs == Some(true))
        .map(|c| c.logprobs.unwrap_or(0));
    Ok(Plan {
        model: model.to_owned(),
        response_id: ids.id(""),
        directives,
        candidates,
        prompt_tokens,
        candidate_tokens,
        thought_tokens,
        logprobs,
    })
}

fn finish_for(d: &Directives, natural: &'static str) -> &'static str {
    match d.finish {
        Some("length") => "MAX_TOKENS",
        Some("content_filter") => "SAFETY",
        Some("stop") => "STOP",
        _ => natural,
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

fn usage(plan: &Plan) -> Value {
    let mut u = json!({
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": plan.candidate_tokens,
        "totalTokenCount": plan.prompt_tokens + plan.candidate_tokens + plan.thought_tokens,
        "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": plan.prompt_tokens }],
    });
    if plan.thought_tokens > 0
        && let Some(o) = u.as_object_mut()
    {
        o.insert("thoughtsTokenCount".into(), json!(plan.thought_tokens));
    }
    u
}

fn logprobs_result(text: &str, top: u32) -> Value {
    let chosen: Vec<Value> = pieces(text)
        .map(|p| json!({ "token": p, "logProbability": -0.25 }))
        .collect();
    let tops: Vec<Value> = pieces(text)
        .map(|p| {
            let alternatives: Vec<Value> = (0..top)
                .map(|i| json!({ "token": p, "logProbability": -0.25 - f64::from(i) }))
                .collect();
            json!({ "candidates": alternatives })
        })
        .collect();
    json!({ "topCandidates": tops, "chosenCandidates": chosen })
}

fn parts_of(c: &Candidate) -> Vec<Value> {
    let mut parts = Vec::new();
    if let Some(t) = &c.thought {
        parts.push(json!({ "text": t, "thought": true }));
    }
    match &c.reply {
        Reply::Text(t) => parts.push(json!({ "text": t })),
        Reply::Calls(calls) => {
            for (i, (name, args)) in calls.iter().enumerate() {
                let mut part = json!({ "functionCall": { "name": name, "args": args } });
                // Thinking models sign their first function call; the signature must come back.
                if i == 0
                    && c.thought.is_some()
                    && let Some(o) = part.as_object_mut()
                {
                    o.insert("thoughtSignature".into(), json!(THOUGHT_SIGNATURE));
                }
                parts.push(part);
            }
        }
    }
    parts
}

/// The `GenerateContentResponse` of a non-streaming call.
fn completion(plan: &Plan) -> Value {
    let candidates: Vec<Value> = plan
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut cand = Map::new();
            if c.finish != "SAFETY" {
                cand.insert("content".into(), json!({ "parts": parts_of(c), "role": "model" }));
            }
            cand.insert("finishReason".into(), json!(c.finish));
            cand.insert("index".into(), json!(i));
            if let (Some(top), Reply::Text(t)) = (plan.logprobs, &c.reply) {
                cand.insert("logprobsResult".into(), logprobs_result(t, top));
                cand.insert("avgLogprobs".into(), json!(-0.25));
            }
            Value::Object(cand)
        })
        .collect();
    json!({
        "candidates": candidates,
        "usageMetadata": usage(plan),
        "modelVersion": plan.model,
        "responseId": plan.response_id,
    })
}

/// The SSE events of a stream, each `data: {...}\r\n\r\n`.
fn stream_events(plan: &Plan) -> Vec<Bytes> {
    let mut events: Vec<Value> = Vec::new();
    let partial_usage =
        json!({ "promptTokenCount": plan.prompt_tokens, "totalTokenCount": plan.prompt_tokens });
    let chunk = |index: usize, parts: Vec<Value>, finish: Option<&str>| {
        let mut cand = Map::new();
        if !parts.is_empty() {
            cand.insert("content".into(), json!({ "parts": parts, "role": "model" }));
        }
        if let Some(f) = finish {
            cand.insert("finishReason".into(), json!(f));
        }
        cand.insert("index".into(), json!(index));
        json!({
            "candidates": [Value::Object(cand)],
            "usageMetadata": partial_usage,
            "modelVersion": plan.model,
            "responseId": plan.response_id,
        })
    };
    for (i, c) in plan.candidates.iter().enumerate() {
        if let Some(t) = &c.thought {
            events.push(chunk(i, vec![json!({ "text": t, "thought": true })], None));
        }
        let mut bodies: Vec<Vec<Value>> = match &c.reply {
            _ if c.finish == "SAFETY" => Vec::new(),
            Reply::Text(t) => pieces(t).map(|p| vec![json!({ "text": p })]).collect(),
            // All calls in one event, as Gemini streams them.
            Reply::Calls(_) => vec![
                parts_of(c)
                    .into_iter()
                    .filter(|p| p.get("thought").is_none())
                    .collect(),
            ],
        };
        let last = bodies.pop().unwrap_or_default();
        for parts in bodies {
            events.push(chunk(i, parts, None));
        }
        events.push(chunk(i, last, Some(c.finish)));
    }
    if let Some(Value::Object(last)) = events.last_mut() {
        last.insert("usageMetadata".into(), usage(plan));
    }
    events
        .into_iter()
        .map(|e| Bytes::from(format!("data: {e}\r\n\r\n")))
        .collect()
}

struct Paced {
    events: std::vec::IntoIter<Bytes>,
    sent: usize,
    gap: Duration,
    abort_after: Option<usize>,
    tracker: Tracker,
}

/// The events as a body, `gap` apart; after `abort_after` events the body fails, which makes
/// hyper drop the connection.
fn paced(events: Vec<Bytes>, gap: Duration, abort_after: Option<usize>, tracker: Tracker) -> Body {
    let state = Paced {
        events: events.into_iter(),
        sent: 0,
        gap,
        abort_after,
        tracker,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if Some(s.sent) == s.abort_after {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.tracker.finish(Outcome::Error);
            s.abort_after = None;
            s.events = Vec::new().into_iter();
            return Some((Err(io::Error::other("emulated abort mid-stream")), s));
        }
        let Some(event) = s.events.next() else {
            s.tracker.finish(Outcome::Completed);
            return None;
        };
        if s.sent > 0 && !s.gap.is_zero() {
            tokio::time::sleep(s.gap).await;
        }
        s.sent += 1;
        Some((Ok::<Bytes, io::Error>(event), s))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests;
