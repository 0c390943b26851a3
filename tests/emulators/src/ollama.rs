//! Ollama's native chat API, `POST /api/chat`, built from Ollama's API reference
//! (`docs/api.md`): `{model, messages: [{role, content, images, tool_calls, tool_name}],
//! tools, format, options, stream (default true), keep_alive, think}`.
//!
//! Strict where the gateway could get it wrong: unknown fields (top level, messages,
//! options) are refused, `content` must be a string, `images` plain base64 (no data URL),
//! tool-call `arguments` a JSON object. Answers come from the OpenAI emulator's
//! [`crate::chat::plan`] and are written in Ollama's shape: a final object with `done: true`,
//! `done_reason`, `prompt_eval_count` and `eval_count`; a stream is NDJSON, one object per
//! line, content word by word, tool calls whole in one line. Errors are `{"error": "..."}`;
//! `[emu:status=404]` is Ollama's "model not found".

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::chat::{self, ChatRequest, Content, FunctionDef, Message, Reply, Text, Tool, pieces};
use crate::record::{Outcome, Tracker};
use crate::routes::{State, json, paced_body};

const CREATED_AT: &str = "2025-01-01T00:00:00.000000Z";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaRequest {
    model: Option<String>,
    messages: Option<Vec<OllamaMessage>>,
    #[serde(default)]
    tools: Option<Vec<OllamaTool>>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<OllamaOptions>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    think: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    tool_calls: Option<Vec<OllamaToolCall>>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaToolCall {
    function: OllamaFunctionCall,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaFunctionCall {
    name: String,
    #[expect(dead_code, reason = "read only to insist on a JSON object")]
    arguments: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaTool {
    #[serde(rename = "type")]
    kind: String,
    function: OllamaFunctionDef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaFunctionDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Box<RawValue>>,
}

/// The model options the gateway may send (Ollama's `Modelfile` parameters).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "read only to refuse unknown options")]
struct OllamaOptions {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    num_ctx: Option<u32>,
    repeat_penalty: Option<f64>,
    min_p: Option<f64>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, json!({ "error": message.into() }).to_string())
}

fn is_base64(s: &str) -> bool {
    !s.is_empty()
        && s.len().is_multiple_of(4)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// `POST /api/chat`.
pub async fn chat(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tracker = state.track("POST", "/api/chat", &headers, Some(&body));
    let resp = answer(&state, &headers, &body, &mut tracker).await;
    if !resp.status().is_success() {
        tracker.finish(Outcome::Error);
    }
    resp
}

async fn answer(state: &State, headers: &HeaderMap, body: &[u8], tracker: &mut Tracker) -> Response {
    // Ollama itself has no auth; a proxy in front of it checks a bearer key when one is sent.
    if let (Some(expected), Some(given)) = (&state.expected_auth, headers.get(AUTHORIZATION))
        && given.as_bytes() != expected.as_bytes()
    {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let req: OllamaRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(model) = req.model.as_deref().filter(|m| !m.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let messages = req.messages.as_deref().unwrap_or_default();
    for m in messages {
        if !["system", "user", "assistant", "tool"].contains(&m.role.as_str()) {
            return error(StatusCode::BAD_REQUEST, format!("invalid role: {}", m.role));
        }
        if let Some(bad) = m.images.iter().flatten().find(|i| !is_base64(i)) {
            let shown: String = bad.chars().take(16).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("illegal base64 data in image: {shown}"),
            );
        }
        if m.tool_calls.iter().flatten().any(|c| c.function.name.is_empty()) {
            return error(StatusCode::BAD_REQUEST, "tool call without a function name");
        }
        let _ = (&m.thinking, &m.tool_name);
    }
    for t in req.tools.iter().flatten() {
        if t.kind != "function" {
            return error(StatusCode::BAD_REQUEST, format!("invalid tool type: {}", t.kind));
        }
        let _ = &t.function.description;
    }
    let format: Option<Box<RawValue>> = match &req.format {
        None => None,
        Some(Value::String(s)) if s == "json" => {
            RawValue::from_string(r#"{"type":"json_object"}"#.into()).ok()
        }
        Some(schema @ Value::Object(_)) => RawValue::from_string(
            json!({"type": "json_schema", "json_schema": {"schema": schema}}).to_string(),
        )
        .ok(),
        Some(other) => {
            return error(StatusCode::BAD_REQUEST, format!("invalid format: {other}"));
        }
    };
    let _ = (&req.keep_alive, &req.think);

    // The same request as the OpenAI emulator reads it.
    let options = req.options.as_ref();
    let openai = ChatRequest {
        model: Some(Text(Cow::Borrowed(model))),
        messages: Some(
            messages
                .iter()
                .map(|m| Message {
                    role: Text(Cow::Borrowed(&m.role)),
                    content: m.content.as_deref().map(|c| Content::Text(Cow::Borrowed(c))),
                })
                .collect(),
        ),
        stream: Some(false),
        stream_options: None,
        n: None,
        max_tokens: options
            .and_then(|o| o.num_predict)
            .and_then(|n| u64::try_from(n).ok()),
        max_completion_tokens: None,
        logprobs: None,
        top_logprobs: None,
        user: None,
        stop: options.and_then(|o| o.stop.clone()).map(|s| json!(s)),
        tools: req.tools.as_ref().map(|tools| {
            tools
                .iter()
                .map(|t| Tool {
                    function: Some(FunctionDef {
                        name: Text(Cow::Borrowed(&t.function.name)),
                        parameters: t.function.parameters.as_deref(),
                    }),
                })
                .collect()
        }),
        tool_choice: None,
        parallel_tool_calls: None,
        response_format: format.as_deref(),
    };
    let plan = match chat::plan(&openai, &state.ids) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.message),
    };
    let d = &plan.directives;
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    if let Some(status) = d.status.filter(|s| (400..=599).contains(s)) {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match status {
            404 => format!("model \"{model}\" not found, try pulling it first"),
            429 => "server busy, please try again. maximum pending requests exceeded".to_owned(),
            _ => format!("emulated error (status {status})"),
        };
        return error(code, message);
    }
    let Some(choice) = plan.choices.first() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no choice");
    };
    let done_reason = match choice.finish_reason {
        "length" => "length",
        _ => "stop",
    };
    let final_fields = |mut o: Value| {
        o["done"] = json!(true);
        o["done_reason"] = json!(done_reason);
        o["total_duration"] = json!(1_000_000);
        o["load_duration"] = json!(1000);
        o["prompt_eval_count"] = json!(plan.usage.prompt_tokens);
        o["prompt_eval_duration"] = json!(1000);
        o["eval_count"] = json!(plan.usage.completion_tokens);
        o["eval_duration"] = json!(1000);
        o
    };
    let tool_calls = |calls: &[chat::Call<'_>]| -> Value {
        calls
            .iter()
            .map(|c| {
                let args: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                json!({"function": {"name": c.name, "arguments": args}})
            })
            .collect()
    };
    let line =
        |message: Value| json!({"model": model, "created_at": CREATED_AT, "message": message, "done": false});
    let tracker = std::mem::replace(tracker, Tracker::none());

    if req.stream.unwrap_or(true) {
        let mut lines: Vec<Value> = Vec::new();
        match &choice.reply {
            Reply::Text(text) => {
                for piece in pieces(text) {
                    lines.push(line(json!({"role": "assistant", "content": piece})));
                }
            }
            Reply::Tools(calls) => lines.push(line(
                json!({"role": "assistant", "content": "", "tool_calls": tool_calls(calls)}),
            )),
        }
        let before_final = lines.len();
        lines.push(final_fields(line(json!({"role": "assistant", "content": ""}))));
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(lines.len());
        for l in &lines {
            buf.extend_from_slice(l.to_string().as_bytes());
            buf.push(b'\n');
            ends.push(buf.len());
        }
        let abort_after = d.abort_mid_stream.then(|| before_final.min(3));
        let gap = Duration::from_millis(d.chunk_delay_ms);
        let body = paced_body(Bytes::from(buf), ends, gap, abort_after, tracker);
        return (
            StatusCode::OK,
            [(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"))],
            body,
        )
            .into_response();
    }
    let message = match &choice.reply {
        Reply::Text(text) => json!({"role": "assistant", "content": text}),
        Reply::Tools(calls) => json!({"role": "assistant", "content": "", "tool_calls": tool_calls(calls)}),
    };
    let mut tracker = tracker;
    tracker.finish(Outcome::Completed);
    json(StatusCode::OK, final_fields(line(message)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_check() {
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("data:image/png;base64,aGVsbG8="));
        assert!(!is_base64("https://example.com/cat.png"));
    }

    #[test]
    fn refuses_unknown_fields() {
        let body = br#"{"model":"m","messages":[],"max_tokens":3}"#;
        assert!(serde_json::from_slice::<OllamaRequest>(body).is_err());
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#;
        assert!(serde_json::from_slice::<OllamaRequest>(body).is_err());
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi","images":["aGk="]}],
            "options":{"num_predict":3,"stop":["x"]},"format":"json","stream":false}"#;
        assert!(serde_json::from_slice::<OllamaRequest>(body).is_ok());
    }
}
