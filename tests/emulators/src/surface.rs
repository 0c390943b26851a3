//! OpenAI's legacy Completions, Images and Audio APIs, from the API reference:
//!
//! - `POST /v1/completions`: `model` and `prompt` (a string, strings, token
//!   ids or arrays of token ids) required; `max_tokens` (default 16), `n`,
//!   `echo`, `suffix`, `logprobs` (0–5), `stream` with
//!   `stream_options.include_usage`. A `text_completion` object (or chunks,
//!   then `data: [DONE]`); a chat model answers OpenAI's 404 "This is a chat
//!   model and not supported in the v1/completions endpoint".
//! - `POST /v1/images/generations` (JSON) and `POST /v1/images/edits`
//!   (multipart: `image` or `image[]`, `mask`, `prompt`, `model`, `n`,
//!   `size`, `response_format` url|b64_json): `{created, data: [{url} |
//!   {b64_json}]}`, sizes checked per model, dall-e-3 makes one image.
//! - `POST /v1/audio/transcriptions` and `/v1/audio/translations`
//!   (multipart: `file`, `model` required; `response_format` json, text, srt,
//!   verbose_json, vtt): the transcript of a WAV file is its `[emu:say=...]`
//!   text if it has one, else "hello from the emulator"; the duration is the
//!   WAV header's (else one second per 32 000 bytes).
//! - `POST /v1/audio/speech` (`model`, `input` ≤ 4096 characters, `voice`,
//!   `response_format` mp3|opus|aac|flac|wav|pcm): audio bytes streamed in
//!   pieces with the format's content type.
//!
//! Azure OpenAI's `/openai/deployments/{deployment}/...?api-version=` routes
//! serve the same, the deployment naming the model. Multipart requests are
//! recorded as JSON: `{"fields": {name: text}, "files": {name: {filename,
//! content_type, bytes}}}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::chat::ApiError;
use crate::record::Outcome;
use crate::routes::{State, error_response, json as json_response, unix_now};

/// The text every completion is made of, word by word.
const TEXT: &str = "This is a test of the legacy completions endpoint, answered by the emulator word by word until max_tokens runs out.";

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(message, Some(param), None)
}

fn missing(param: &'static str) -> ApiError {
    invalid(format!("'{param}' is a required property"), param)
}

/// OpenAI's 400 for an optional field of the wrong type: `fields` must be
/// strings when present and not null.
fn expect_strings(req: &Map<String, Value>, fields: &[&'static str]) -> Result<(), ApiError> {
    for &f in fields {
        let kind = match req.get(f) {
            None | Some(Value::Null | Value::String(_)) => continue,
            Some(Value::Bool(_)) => "a boolean",
            Some(Value::Number(_)) => "a number",
            Some(Value::Array(_)) => "an array",
            Some(Value::Object(_)) => "an object",
        };
        return Err(invalid(
            format!("Invalid type for '{f}': expected a string, but got {kind} instead."),
            f,
        ));
    }
    Ok(())
}

/// Where the model comes from: the body, or Azure's deployment.
#[derive(Clone)]
enum Model {
    Body,
    Deployment(String),
}

// ---- completions ------------------------------------------------------------

pub async fn completions(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    completions_for(&state, "/v1/completions".into(), headers, body, Model::Body).await
}

async fn completions_for(
    state: &State,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    model: Model,
) -> Response {
    let mut tracker = state.track("POST", &path, &headers, Some(&body));
    if matches!(model, Model::Body)
        && let Err(e) = state.check_auth(&headers)
    {
        tracker.finish(Outcome::Error);
        return error_response(&e);
    }
    match completion(state, &body, model) {
        Ok(resp) => {
            tracker.finish(Outcome::Completed);
            resp
        }
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e)
        }
    }
}

/// Models that only chat: OpenAI's 404 on the legacy endpoint.
fn chat_only(model: &str) -> bool {
    !model.contains("instruct")
        && (model.starts_with("gpt-4") || model.starts_with("gpt-3.5-turbo") || model.starts_with('o'))
}

fn completion(state: &State, body: &[u8], model: Model) -> Result<Response, ApiError> {
    let req: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        invalid(
            format!("We could not parse the JSON body of your request. ({e})"),
            "body",
        )
    })?;
    let model = match model {
        Model::Deployment(d) => d,
        Model::Body => req
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("model"))?
            .to_owned(),
    };
    if chat_only(&model) {
        return Err(ApiError {
            status: 404,
            message: "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use v1/chat/completions?".into(),
            kind: "invalid_request_error",
            param: Some("model"),
            code: None,
        });
    }
    let prompts: Vec<String> = match req.get("prompt") {
        None | Some(Value::Null) => return Err(missing("prompt")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            vec![format!("<{} tokens>", items.len())]
        }
        Some(Value::Array(items))
            if items
                .iter()
                .all(|i| i.as_array().is_some_and(|a| a.iter().all(Value::is_u64))) =>
        {
            items
                .iter()
                .map(|i| format!("<{} tokens>", i.as_array().map_or(0, Vec::len)))
                .collect()
        }
        Some(_) => {
            return Err(invalid(
                "Invalid value for 'prompt': expected a string, array of strings, array of tokens, or array of token arrays.",
                "prompt",
            ));
        }
    };
    let max_tokens = match req.get("max_tokens") {
        None | Some(Value::Null) => 16,
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid(
                "Invalid type for 'max_tokens': expected an integer.",
                "max_tokens",
            )
        })? as usize,
    };
    let n = req.get("n").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
    let echo = req.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let suffix = req.get("suffix").and_then(Value::as_str).unwrap_or("");
    let logprobs = match req.get("logprobs") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(k) if k <= 5 => Some(k as usize),
            _ => {
                return Err(invalid(
                    "Invalid value for 'logprobs': must be an integer between 0 and 5.",
                    "logprobs",
                ));
            }
        },
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if req.get("stream_options").is_some_and(|o| !o.is_null()) && !stream {
        return Err(invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        ));
    }
    let words: Vec<&str> = TEXT.split(' ').take(max_tokens).collect();
    let finish = if max_tokens < TEXT.split(' ').count() {
        "length"
    } else {
        "stop"
    };
    let prompt_tokens: usize = prompts.iter().map(|p| p.split_whitespace().count().max(1)).sum();
    let completion_tokens = words.len() * n * prompts.len();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = state.ids().id("cmpl-");
    let created = unix_now();
    let logprobs_of = |text: &str| {
        logprobs.map(|k| {
            let tokens: Vec<&str> = text.split_inclusive(' ').collect();
            let mut offset = 0;
            let offsets: Vec<usize> = tokens
                .iter()
                .map(|t| {
                    let o = offset;
                    offset += t.len();
                    o
                })
                .collect();
            json!({
                "tokens": tokens,
                "token_logprobs": tokens.iter().map(|_| -0.25).collect::<Vec<_>>(),
                "top_logprobs": tokens.iter().map(|t| {
                    let mut m = Map::new();
                    if k > 0 { m.insert((*t).to_owned(), json!(-0.25)); }
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        })
    };
    if !stream {
        let mut choices = Vec::new();
        for prompt in &prompts {
            for _ in 0..n {
                let mut text = String::new();
                if echo {
                    text.push_str(prompt);
                }
                text.push_str(&words.join(" "));
                text.push_str(suffix);
                choices.push(json!({
                    "text": text,
                    "index": choices.len(),
                    "logprobs": logprobs_of(&text),
                    "finish_reason": finish,
                }));
            }
        }
        let resp = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_emu", "choices": choices, "usage": usage,
        });
        return Ok(json_response(StatusCode::OK, resp.to_string()));
    }
    let mut events: Vec<String> = Vec::new();
    let chunk = |index: usize, text: &str, finish: Option<&str>| {
        json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_emu",
            "choices": [{"text": text, "index": index, "logprobs": logprobs_of(text), "finish_reason": finish}],
        })
        .to_string()
    };
    let mut index = 0;
    for prompt in &prompts {
        for _ in 0..n {
            if echo {
                events.push(chunk(index, prompt, None));
            }
            for (i, w) in words.iter().enumerate() {
                let piece = if i == 0 { (*w).to_owned() } else { format!(" {w}") };
                events.push(chunk(index, &piece, None));
            }
            events.push(chunk(index, suffix, Some(finish)));
            index += 1;
        }
    }
    if include_usage {
        events.push(
            json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage})
                .to_string(),
        );
    }
    events.push("[DONE]".to_owned());
    let pieces = events
        .into_iter()
        .map(|e| Ok::<_, Infallible>(Bytes::from(format!("data: {e}\n\n"))));
    let mut resp = Response::new(Body::from_stream(futures_util::stream::iter(pieces)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    Ok(resp)
}

// ---- multipart --------------------------------------------------------------

struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

async fn parse_form(headers: &HeaderMap, body: Bytes) -> Result<Vec<Part>, ApiError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|_| {
        invalid(
            "Invalid Content-Type header: expected multipart/form-data with a boundary.",
            "Content-Type",
        )
    })?;
    let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    let bad = |e: multer::Error| invalid(format!("Invalid multipart body: {e}"), "body");
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(ToString::to_string);
        let data = field.bytes().await.map_err(bad)?;
        parts.push(Part {
            name,
            filename,
            content_type,
            data,
        });
    }
    Ok(parts)
}

/// A form as the recorder shows it.
fn form_json(parts: &[Part]) -> Bytes {
    let mut fields = Map::new();
    let mut files = Map::new();
    for p in parts {
        match &p.filename {
            Some(f) => {
                files.insert(
                    p.name.clone(),
                    json!({"filename": f, "content_type": p.content_type, "bytes": p.data.len()}),
                );
            }
            None => {
                fields.insert(
                    p.name.clone(),
                    Value::String(String::from_utf8_lossy(&p.data).into_owned()),
                );
            }
        }
    }
    Bytes::from(json!({"fields": fields, "files": files}).to_string())
}

fn text<'a>(parts: &'a [Part], name: &str) -> Option<&'a str> {
    parts
        .iter()
        .find(|p| p.name == name && p.filename.is_none())
        .and_then(|p| std::str::from_utf8(&p.data).ok())
}

// ---- images -----------------------------------------------------------------

/// A tiny valid PNG (1×1, transparent).
pub(crate) const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00,
    0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01,
    0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

struct ImageAsk<'a> {
    model: &'a str,
    prompt: Option<&'a str>,
    n: Option<&'a str>,
    size: Option<&'a str>,
    format: Option<&'a str>,
}

fn images(state: &State, ask: &ImageAsk<'_>) -> Result<Response, ApiError> {
    let prompt = ask
        .prompt
        .filter(|p| !p.is_empty())
        .ok_or_else(|| missing("prompt"))?;
    let n: u64 = match ask.n {
        None => 1,
        Some(n) => n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| invalid(format!("Invalid 'n': {n}. Must be between 1 and 10."), "n"))?,
    };
    let model = ask.model;
    if model == "dall-e-3" && n != 1 {
        return Err(invalid("You must provide n=1 for this model.", "n"));
    }
    let sizes: &[&str] = match model {
        "dall-e-3" => &["1024x1024", "1792x1024", "1024x1792"],
        m if m.starts_with("gpt-image") => &["1024x1024", "1536x1024", "1024x1536", "auto"],
        _ => &["256x256", "512x512", "1024x1024"],
    };
    if let Some(size) = ask.size
        && !sizes.contains(&size)
    {
        return Err(invalid(
            format!("'{size}' is not one of {sizes:?} - 'size'"),
            "size",
        ));
    }
    let b64 = match ask.format {
        None => model.starts_with("gpt-image"),
        Some("b64_json") => true,
        Some("url") if !model.starts_with("gpt-image") => false,
        Some(other) => {
            return Err(invalid(
                format!("Invalid value: '{other}'. Supported values are: 'url' and 'b64_json'."),
                "response_format",
            ));
        }
    };
    let data: Vec<Value> = (0..n)
        .map(|_| {
            let mut item = if b64 {
                json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(PNG)})
            } else {
                json!({"url": format!("https://emulator.invalid/images/{}.png", state.ids().id("img-"))})
            };
            if model == "dall-e-3" {
                item["revised_prompt"] = json!(prompt);
            }
            item
        })
        .collect();
    let mut resp = json!({"created": unix_now(), "data": data});
    if model.starts_with("gpt-image") {
        let input = prompt.split_whitespace().count();
        resp["usage"] = json!({"input_tokens": input, "output_tokens": 272 * n, "total_tokens": input as u64 + 272 * n,
            "input_tokens_details": {"text_tokens": input, "image_tokens": 0}});
    }
    Ok(json_response(StatusCode::OK, resp.to_string()))
}

pub async fn image_generations(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generations_for(
        &state,
        "/v1/images/generations".into(),
        headers,
        body,
        Model::Body,
    )
}

fn generations_for(state: &State, path: String, headers: HeaderMap, body: Bytes, model: Model) -> Response {
    let mut tracker = state.track("POST", &path, &headers, Some(&body));
    let result = generation(state, &headers, &body, &model);
    finish(&mut tracker, result)
}

fn generation(state: &State, headers: &HeaderMap, body: &[u8], model: &Model) -> Result<Response, ApiError> {
    let req = authorized_json(state, headers, body, model)?;
    expect_strings(
        &req,
        &[
            "model",
            "size",
            "quality",
            "style",
            "response_format",
            "user",
            "background",
            "output_format",
        ],
    )?;
    let n = req.get("n").map(|v| v.to_string());
    let model = match model {
        Model::Deployment(d) => d.as_str(),
        Model::Body => req.get("model").and_then(Value::as_str).unwrap_or("dall-e-2"),
    };
    images(
        state,
        &ImageAsk {
            model,
            prompt: req.get("prompt").and_then(Value::as_str),
            n: n.as_deref(),
            size: req.get("size").and_then(Value::as_str),
            format: req.get("response_format").and_then(Value::as_str),
        },
    )
}

/// Checks the key (Azure's routes check their own) and reads a JSON object.
fn authorized_json(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    model: &Model,
) -> Result<Map<String, Value>, ApiError> {
    if matches!(model, Model::Body) {
        state.check_auth(headers)?;
    }
    serde_json::from_slice(body).map_err(|e| {
        invalid(
            format!("We could not parse the JSON body of your request. ({e})"),
            "body",
        )
    })
}

fn finish(tracker: &mut crate::record::Tracker, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => {
            tracker.finish(Outcome::Completed);
            r
        }
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e)
        }
    }
}

pub async fn image_edits(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    edits_for(&state, "/v1/images/edits".into(), headers, body, Model::Body).await
}

async fn edits_for(state: &State, path: String, headers: HeaderMap, body: Bytes, model: Model) -> Response {
    let parsed = parse_form(&headers, body).await;
    let recorded = parsed.as_deref().map(form_json).ok();
    let mut tracker = state.track("POST", &path, &headers, recorded.as_ref());
    let result = edit(state, &headers, parsed, &model);
    finish(&mut tracker, result)
}

fn edit(
    state: &State,
    headers: &HeaderMap,
    parsed: Result<Vec<Part>, ApiError>,
    model: &Model,
) -> Result<Response, ApiError> {
    if matches!(model, Model::Body) {
        state.check_auth(headers)?;
    }
    let parts = parsed?;
    let image = parts
        .iter()
        .find(|p| (p.name == "image" || p.name == "image[]") && p.filename.is_some())
        .ok_or_else(|| missing("image"))?;
    if !image.data.starts_with(b"\x89PNG")
        && !image.data.starts_with(b"\xff\xd8")
        && !image.data.starts_with(b"RIFF")
    {
        return Err(invalid(
            "Invalid input image - format must be in ['RGBA', 'LA', 'L'], got unknown.",
            "image",
        ));
    }
    let model = match model {
        Model::Deployment(d) => d.as_str(),
        Model::Body => text(&parts, "model").unwrap_or("dall-e-2"),
    };
    images(
        state,
        &ImageAsk {
            model,
            prompt: text(&parts, "prompt"),
            n: text(&parts, "n"),
            size: text(&parts, "size"),
            format: text(&parts, "response_format"),
        },
    )
}

// ---- audio ------------------------------------------------------------------

/// Seconds of audio in `data`: a WAV header's data size over its byte rate,
/// else one second per 32 000 bytes.
fn duration(data: &[u8]) -> f64 {
    if data.len() >= 44 && data.starts_with(b"RIFF") && &data[8..12] == b"WAVE" {
        let rate = u32::from_le_bytes([data[28], data[29], data[30], data[31]]);
        if rate > 0 {
            return (data.len() - 44) as f64 / f64::from(rate);
        }
    }
    data.len() as f64 / 32_000.0
}

/// `00:00:01,500` (srt) or `00:00:01.500` (vtt).
fn stamp(secs: f64, sep: char) -> String {
    let ms = (secs * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

pub async fn transcriptions(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    audio_for(
        &state,
        "/v1/audio/transcriptions".into(),
        headers,
        body,
        Model::Body,
        false,
    )
    .await
}

pub async fn translations(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    audio_for(
        &state,
        "/v1/audio/translations".into(),
        headers,
        body,
        Model::Body,
        true,
    )
    .await
}

async fn audio_for(
    state: &State,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    model: Model,
    translate: bool,
) -> Response {
    let parsed = parse_form(&headers, body).await;
    let recorded = parsed.as_deref().map(form_json).ok();
    let mut tracker = state.track("POST", &path, &headers, recorded.as_ref());
    let result = transcript(state, &headers, parsed, &model, translate);
    finish(&mut tracker, result)
}

fn transcript(
    state: &State,
    headers: &HeaderMap,
    parsed: Result<Vec<Part>, ApiError>,
    model: &Model,
    translate: bool,
) -> Result<Response, ApiError> {
    if matches!(model, Model::Body) {
        state.check_auth(headers)?;
    }
    let parts = parsed?;
    let file = parts
        .iter()
        .find(|p| p.name == "file" && p.filename.is_some())
        .ok_or_else(|| missing("file"))?;
    if matches!(model, Model::Body) && text(&parts, "model").is_none_or(str::is_empty) {
        return Err(missing("model"));
    }
    let secs = duration(&file.data);
    let said = String::from_utf8_lossy(&file.data);
    let transcript = said
        .split("[emu:say=")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or("hello from the emulator")
        .to_owned();
    let format = text(&parts, "response_format").unwrap_or("json");
    let plain = |body: String| {
        let mut r = Response::new(Body::from(body));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    Ok(match format {
            "json" => json_response(
                StatusCode::OK,
                if translate {
                    json!({"text": transcript})
                } else {
                    json!({"text": transcript, "usage": {"type": "duration", "seconds": secs.ceil() as u64}})
                }
                .to_string(),
            ),
            "verbose_json" => json_response(
                StatusCode::OK,
                json!({
                    "task": if translate { "translate" } else { "transcribe" },
                    "language": "english",
                    "duration": secs,
                    "text": transcript,
                    "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": secs, "text": transcript,
                        "tokens": [50364], "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.0, "no_speech_prob": 0.01}],
                })
                .to_string(),
            ),
            "text" => plain(format!("{transcript}\n")),
            "srt" => plain(format!("1\n{} --> {}\n{transcript}\n\n", stamp(0.0, ','), stamp(secs, ','))),
            "vtt" => plain(format!("WEBVTT\n\n{} --> {}\n{transcript}\n\n", stamp(0.0, '.'), stamp(secs, '.'))),
            other => {
                return Err(invalid(
                    format!("Invalid value: '{other}'. Supported values are: 'json', 'text', 'srt', 'verbose_json', and 'vtt'."),
                    "response_format",
                ));
            }
        })
}

pub async fn speech(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    speech_for(&state, "/v1/audio/speech".into(), headers, body, Model::Body)
}

fn speech_for(state: &State, path: String, headers: HeaderMap, body: Bytes, model: Model) -> Response {
    let mut tracker = state.track("POST", &path, &headers, Some(&body));
    let result = spoken(state, &headers, &body, &model);
    finish(&mut tracker, result)
}

fn spoken(state: &State, headers: &HeaderMap, body: &[u8], model: &Model) -> Result<Response, ApiError> {
    let req = authorized_json(state, headers, body, model)?;
    expect_strings(&req, &["instructions", "response_format", "stream_format"])?;
    if matches!(model, Model::Body) && req.get("model").and_then(Value::as_str).is_none() {
        return Err(missing("model"));
    }
    let input = req
        .get("input")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("input"))?;
    if input.chars().count() > 4096 {
        return Err(invalid(
            "string too long. Expected a string with maximum length 4096",
            "input",
        ));
    }
    if req.get("voice").is_none_or(Value::is_null) {
        return Err(missing("voice"));
    }
    let (ct, magic): (&'static str, &'static [u8]) = match req
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("mp3")
    {
        "mp3" => ("audio/mpeg", &b"ID3\x04\x00\x00"[..]),
        "opus" => ("audio/opus", &b"OggS\x00\x02"[..]),
        "aac" => ("audio/aac", &b"\xff\xf1\x50\x80"[..]),
        "flac" => ("audio/flac", &b"fLaC"[..]),
        "wav" => ("audio/wav", &b"RIFF\x24\x00\x00\x00WAVE"[..]),
        "pcm" => ("audio/pcm", &b""[..]),
        other => {
            return Err(invalid(
                format!(
                    "Invalid value: '{other}'. Supported values are: 'mp3', 'opus', 'aac', 'flac', 'wav', and 'pcm'."
                ),
                "response_format",
            ));
        }
    };
    // Eight pieces, a little apart, so a client sees them arrive.
    let piece = Bytes::from(input.as_bytes().repeat(64));
    let head = Bytes::from_static(magic);
    let pieces = futures_util::stream::unfold(0u8, move |i| {
        let (head, piece) = (head.clone(), piece.clone());
        async move {
            match i {
                0 => Some((Ok::<_, Infallible>(head), 1)),
                1..=8 => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((Ok(piece), i + 1))
                }
                _ => None,
            }
        }
    });
    let mut r = Response::new(Body::from_stream(pieces));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(r)
}

// ---- Azure OpenAI -----------------------------------------------------------

/// `POST /openai/deployments/{deployment}/{a}/{b}?api-version=` for the
/// endpoints above (`completions` has no second segment: see [`azure_completions`]).
pub async fn azure(
    Extract(state): Extract<Arc<State>>,
    Path((deployment, a, b)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = crate::flavours::azure_check(&state, query.as_deref(), &headers) {
        return *resp;
    }
    let path = format!(
        "/openai/deployments/{deployment}/{a}/{b}?{}",
        query.as_deref().unwrap_or("")
    );
    let model = Model::Deployment(deployment);
    match (a.as_str(), b.as_str()) {
        ("images", "generations") => generations_for(&state, path, headers, body, model),
        ("images", "edits") => edits_for(&state, path, headers, body, model).await,
        ("audio", "transcriptions") => audio_for(&state, path, headers, body, model, false).await,
        ("audio", "translations") => audio_for(&state, path, headers, body, model, true).await,
        ("audio", "speech") => speech_for(&state, path, headers, body, model),
        _ => crate::routes::not_found(axum::http::Method::POST, path.parse().unwrap_or_default()).await,
    }
}

/// `POST /openai/deployments/{deployment}/completions?api-version=`.
pub async fn azure_completions(
    Extract(state): Extract<Arc<State>>,
    Path(deployment): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = crate::flavours::azure_check(&state, query.as_deref(), &headers) {
        return *resp;
    }
    let path = format!(
        "/openai/deployments/{deployment}/completions?{}",
        query.as_deref().unwrap_or("")
    );
    completions_for(&state, path, headers, body, Model::Deployment(deployment)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_durations() {
        assert_eq!(stamp(65.25, ','), "00:01:05,250");
        assert_eq!(stamp(1.0, '.'), "00:00:01.000");
        let mut wav = b"RIFF\x00\x00\x00\x00WAVEfmt ".to_vec();
        wav.resize(44, 0);
        wav[28..32].copy_from_slice(&16_000u32.to_le_bytes());
        wav.extend(std::iter::repeat_n(0u8, 32_000));
        assert!((duration(&wav) - 2.0).abs() < 1e-9);
    }
}
