//! OpenAI-shaped APIs that differ in their edges, on the same router as the OpenAI emulator:
//!
//! - Azure OpenAI, `POST /openai/deployments/{deployment}/chat/completions?api-version=…`
//!   (Azure's data-plane reference): the key in `api-key` (or an Entra ID bearer token),
//!   `api-version` required, the model taken from the deployment (a `model` in the body is
//!   ignored, as Azure does), `prompt_filter_results` and `content_filter_results` in
//!   answers, and a stream that opens with a choices-less chunk carrying the prompt's filter
//!   results. `[emu:content_filter]` answers Azure's 400 `content_filter` error.
//! - Mistral, `POST /mistral/v1/chat/completions` (Mistral's chat completion reference):
//!   any field outside Mistral's request (`seed`, `logit_bias`, `logprobs`, `user`,
//!   `stream_options`, …) is refused with its 422 `extra_forbidden` error; errors come in
//!   its `{"object": "error", "message", "type", "param", "code"}` shape; `tool_choice` is one of `auto`,
//!   `none`, `any`, `required` or a named function; tool-call ids are 9 letters and digits
//!   (others are refused with its 400); a stream always carries `usage`, on its last chunk
//!   (no separate usage chunk).
//!
//! Answers otherwise follow the OpenAI emulator ([`crate::chat::plan`], [`crate::wire`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::chat::{self, ApiError, ChatRequest, Reply, Text};
use crate::record::{Outcome, Tracker};
use crate::routes::{State, error_response, json, paced_body, unix_now};
use crate::wire;

/// The fields of Mistral's chat completion request; anything else is an extra input, which
/// Mistral refuses.
const MISTRAL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "safe_prompt",
    "prompt_mode",
];

/// `POST /openai/deployments/{deployment}/chat/completions`.
pub async fn azure_chat(
    Extract(state): Extract<Arc<State>>,
    Path(deployment): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!(
        "/openai/deployments/{deployment}/chat/completions?{}",
        query.as_deref().unwrap_or("")
    );
    let mut tracker = state.track("POST", &path, &headers, Some(&body));
    if let Err(resp) = azure_check(&state, query.as_deref(), &headers) {
        tracker.finish(Outcome::Error);
        return *resp;
    }
    if String::from_utf8_lossy(&body).contains("[emu:content_filter]") {
        tracker.finish(Outcome::Error);
        return azure_error(
            StatusCode::BAD_REQUEST,
            json!({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.",
                "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                    "hate": {"filtered": true, "severity": "high"}}}
            }}),
        );
    }
    let result = async {
        let mut req = parse(&body)?;
        // Azure takes the model from the deployment.
        req.model = Some(Text(deployment.as_str().into()));
        answer(&state, &req, &mut tracker, Flavour::Azure).await
    }
    .await;
    finish(result, tracker)
}

fn azure_error(status: StatusCode, body: Value) -> Response {
    json(status, body.to_string())
}

pub(crate) fn azure_check(
    state: &State,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    let has_version = query
        .unwrap_or("")
        .split('&')
        .any(|pair| pair.strip_prefix("api-version=").is_some_and(|v| !v.is_empty()));
    if !has_version {
        return Err(Box::new(azure_error(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "MissingApiVersionParameter",
                "message": "The api-version query parameter (?api-version=) is required for all requests."}}),
        )));
    }
    let Some(expected) = &state.expected_auth else {
        return Ok(());
    };
    let key = expected.strip_prefix("Bearer ").unwrap_or(expected);
    let api_key = headers.get("api-key").map(HeaderValue::as_bytes);
    let bearer = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if api_key == Some(key.as_bytes()) || bearer == Some(expected.as_bytes()) {
        return Ok(());
    }
    Err(Box::new(azure_error(
        StatusCode::UNAUTHORIZED,
        json!({"error": {"code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}),
    )))
}

/// `POST /mistral/v1/chat/completions`.
pub async fn mistral_chat(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tracker = state.track("POST", "/mistral/v1/chat/completions", &headers, Some(&body));
    if let Some(expected) = &state.expected_auth
        && headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) != Some(expected.as_bytes())
    {
        tracker.finish(Outcome::Error);
        return json(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthorized", "request_id": "emu"}).to_string(),
        );
    }
    if let Some(resp) = mistral_refusal(&body) {
        tracker.finish(Outcome::Error);
        return resp;
    }
    let result = async {
        let req = parse(&body)?;
        answer(&state, &req, &mut tracker, Flavour::Mistral).await
    }
    .await;
    match result {
        Ok(resp) => resp,
        // Mistral's error shape: no `error` envelope.
        Err(e) => {
            tracker.finish(Outcome::Error);
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json(
                status,
                json!({"object": "error", "message": e.message, "type": e.kind, "param": null, "code": e.code})
                    .to_string(),
            )
        }
    }
}

/// Mistral's 422 for a field it does not take or a bad `tool_choice`.
fn mistral_refusal(body: &[u8]) -> Option<Response> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let unprocessable = |detail: Value| {
        json(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"object": "error", "message": {"detail": [detail]},
                "type": "invalid_request_error", "param": null, "code": null})
            .to_string(),
        )
    };
    if let Some((field, value)) = object.iter().find(|(k, _)| !MISTRAL_FIELDS.contains(&k.as_str())) {
        return Some(unprocessable(
            json!({"type": "extra_forbidden", "loc": ["body", field],
            "msg": "Extra inputs are not permitted", "input": value}),
        ));
    }
    let bad_id = |id: &Value| {
        id.as_str()
            .filter(|id| !(id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())))
            .map(str::to_owned)
    };
    let ids = object
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|m| {
            let calls = m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            calls
                .filter_map(|c| c.get("id"))
                .chain(m.get("tool_call_id"))
                .filter_map(bad_id)
                .collect::<Vec<_>>()
        })
        .next();
    if let Some(id) = ids {
        return Some(json(
            StatusCode::BAD_REQUEST,
            json!({"object": "error",
                "message": format!("Tool call id was {id} but must be a-z, A-Z, 0-9, with a length of 9."),
                "type": "invalid_request_message_order", "param": null, "code": null})
            .to_string(),
        ));
    }
    match object.get("tool_choice") {
        None | Some(Value::Object(_)) => None,
        Some(Value::String(s)) if ["auto", "none", "any", "required"].contains(&s.as_str()) => None,
        Some(other) => Some(unprocessable(
            json!({"type": "enum", "loc": ["body", "tool_choice"],
            "msg": "Input should be 'auto', 'none', 'any' or 'required'", "input": other}),
        )),
    }
}

fn parse(body: &[u8]) -> Result<ChatRequest<'_>, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}"), None, None))
}

fn finish(result: Result<Response, ApiError>, mut tracker: Tracker) -> Response {
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e)
        }
    }
}

/// The OpenAI emulator's answer; for Mistral, usage rides on the last chunk of a stream.
async fn answer(
    state: &State,
    req: &ChatRequest<'_>,
    tracker: &mut Tracker,
    flavour: Flavour,
) -> Result<Response, ApiError> {
    let mistral = flavour == Flavour::Mistral;
    let mut plan = chat::plan(req, &state.ids)?;
    if mistral {
        // Mistral's tool-call ids are 9 letters and digits.
        for choice in &mut plan.choices {
            if let Reply::Tools(calls) = &mut choice.reply {
                for call in calls {
                    call.id = state.ids.id("")[..9].to_owned();
                }
            }
        }
    }
    let d = &plan.directives;
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    if let Some(status) = d.status.filter(|s| (400..=599).contains(s)) {
        return Err(ApiError::for_status(status, plan.model));
    }
    let id = state.ids.id("chatcmpl-");
    let created = unix_now();
    let tracker = std::mem::replace(tracker, Tracker::none());
    if plan.stream {
        if mistral {
            plan.include_usage = true;
            plan.obfuscate = false;
        }
        let events = wire::stream_events(&id, created, &plan);
        let (buf, ends) = match flavour {
            Flavour::Mistral => usage_on_last_chunk(&events.buf),
            Flavour::Azure => prompt_filter_chunk_first(events.buf, events.ends),
        };
        let gap = Duration::from_millis(plan.directives.chunk_delay_ms);
        let body = paced_body(Bytes::from(buf), ends, gap, events.abort_after, tracker);
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
    let mut buf = wire::completion_json(&id, created, &plan);
    if flavour == Flavour::Azure
        && let Ok(mut v) = serde_json::from_slice::<Value>(&buf)
    {
        v["prompt_filter_results"] = json!([{"prompt_index": 0, "content_filter_results": filter_results()}]);
        for choice in v["choices"].as_array_mut().into_iter().flatten() {
            choice["content_filter_results"] = filter_results();
        }
        buf = v.to_string().into_bytes();
    }
    let mut tracker = tracker;
    tracker.finish(Outcome::Completed);
    Ok(json(StatusCode::OK, buf))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Azure,
    Mistral,
}

/// Azure's content-filter verdicts, all clear.
fn filter_results() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

/// Azure opens a stream with a chunk that has no choices, only the prompt's filter results.
fn prompt_filter_chunk_first(buf: Vec<u8>, ends: Vec<usize>) -> (Vec<u8>, Vec<usize>) {
    let first = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_results()}]});
    let mut out = format!("data: {first}\n\n").into_bytes();
    let shift = out.len();
    out.extend_from_slice(&buf);
    let mut all = Vec::with_capacity(ends.len() + 1);
    all.push(shift);
    all.extend(ends.into_iter().map(|e| e + shift));
    (out, all)
}

/// Re-encodes an OpenAI stream the way Mistral sends it: the usage-only chunk folded
/// into the chunk before it (the last one with a finish reason).
fn usage_on_last_chunk(buf: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let text = String::from_utf8_lossy(buf);
    let mut events: Vec<Value> = Vec::new();
    let mut done = false;
    for data in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(mut event) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let usage_only = event["choices"].as_array().is_some_and(Vec::is_empty);
        match (usage_only, events.last_mut()) {
            (true, Some(last)) => last["usage"] = event["usage"].take(),
            _ => {
                if let Some(o) = event.as_object_mut() {
                    o.remove("usage");
                    o.remove("service_tier");
                    o.remove("system_fingerprint");
                }
                events.push(event);
            }
        }
    }
    let mut out = Vec::with_capacity(buf.len());
    let mut ends = Vec::with_capacity(events.len() + 1);
    for event in &events {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(event.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
        ends.push(out.len());
    }
    if done {
        out.extend_from_slice(b"data: [DONE]\n\n");
        ends.push(out.len());
    }
    (out, ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_refuses_openai_only_fields() {
        let refused = |body: &str| mistral_refusal(body.as_bytes()).map(|r| r.status().as_u16());
        assert_eq!(refused(r#"{"model":"m","messages":[],"seed":1}"#), Some(422));
        assert_eq!(
            refused(r#"{"model":"m","messages":[],"tool_choice":"bogus"}"#),
            Some(422)
        );
        assert_eq!(
            refused(r#"{"model":"m","messages":[],"random_seed":1,"tool_choice":"any"}"#),
            None
        );
        assert_eq!(
            refused(
                r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"call_123456","content":"x"}]}"#
            ),
            Some(400)
        );
        assert_eq!(
            refused(r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"aB3dE6gH9","content":"x"}]}"#),
            None
        );
    }

    #[test]
    fn folds_usage_into_the_last_chunk() {
        let buf = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
        let (out, ends) = usage_on_last_chunk(buf);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(ends.len(), 2);
        assert!(
            text.starts_with("data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"total_tokens\":3}}\n\n"),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
