//! OpenAI's pass-through endpoints at the door: legacy `POST /v1/completions`,
//! `POST /v1/images/generations`, multipart `POST /v1/images/edits`,
//! multipart `POST /v1/audio/transcriptions` and `/v1/audio/translations`,
//! and `POST /v1/audio/speech`. Each handler checks what OpenAI checks
//! first (400 naming the `param`, 413 naming the field that crossed
//! `edge.max_body_bytes`, 415), then runs [`Pipeline::forward`] and answers
//! with the provider's status, content type and bytes, streamed through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde_json::{Map, Value};

use crate::http::{
    api_key, error_response, hints, overhead_header, ratelimit_headers, read_body, require_json,
    routing_headers,
};
use crate::pipeline::{Forward, Meter, Pipeline, overhead};

/// Output tokens of a legacy completion that sets no `max_tokens` (OpenAI's default).
const COMPLETION_DEFAULT_MAX_TOKENS: u32 = 16;
/// The model of an image request that names none (OpenAI's default).
const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";
/// The longest `input` of `audio/speech`, in characters (OpenAI's limit).
const MAX_SPEECH_INPUT: usize = 4096;
/// Most bytes read and thrown away from an oversized upload before the
/// 413, and longest time spent so (clients still sending would otherwise
/// see a broken pipe instead of the answer).
const DRAIN_CAP: u64 = 256 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// `POST /v1/completions`.
pub(crate) async fn completions(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = async {
        let (principal, body, raw) = json_request(&p, &headers, body).await?;
        let model = model_of(&body)?;
        let prompt_chars = match body.get("prompt") {
            None | Some(Value::Null) => return Err(GwError::invalid("prompt", "you must provide a `prompt`")),
            Some(prompt) => prompt_size(prompt).ok_or_else(|| {
                GwError::invalid(
                    "prompt",
                    "`prompt` must be a string, an array of strings, an array of tokens or an array of token arrays",
                )
            })?,
        };
        let suffix = body.get("suffix").and_then(Value::as_str).map_or(0, str::len);
        let streaming = flag(&body, "stream")?;
        let asked = count(&body, "max_tokens")?;
        let max_tokens = asked.unwrap_or(COMPLETION_DEFAULT_MAX_TOKENS);
        let choices = count(&body, "n")?.unwrap_or(1).max(count(&body, "best_of")?.unwrap_or(1));
        let prompts = match body.get("prompt") {
            Some(Value::Array(items)) if items.iter().all(|i| i.is_string() || i.is_array()) => items.len().max(1),
            _ => 1,
        };
        let forward = Forward {
            endpoint: "completions",
            path: "completions",
            operation: "text_completion",
            model,
            user: user_of(&body)?,
            json: String::new(),
            form: Vec::new(),
            streaming,
            input_chars: prompt_chars + suffix,
            max_output: max_tokens
                .saturating_mul(choices)
                .saturating_mul(u32::try_from(prompts).unwrap_or(u32::MAX)),
            max_tokens: asked,
            meter: Meter::Tokens,
        };
        run(&p, &headers, principal, forward, raw, started).await
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

/// `POST /v1/images/generations`.
pub(crate) async fn image_generations(
    State(p): State<Arc<Pipeline>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (principal, body, raw) = json_request(&p, &headers, body).await?;
        let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("");
        if prompt.is_empty() {
            return Err(GwError::invalid("prompt", "you must provide a `prompt`"));
        }
        let model = match body.get("model") {
            None | Some(Value::Null) => DEFAULT_IMAGE_MODEL.to_owned(),
            Some(_) => model_of(&body)?,
        };
        check_image_format(body.get("response_format").and_then(Value::as_str))?;
        let n = count(&body, "n")?.unwrap_or(1);
        let forward = Forward {
            endpoint: "images",
            path: "images/generations",
            operation: "image_generation",
            model,
            user: user_of(&body)?,
            json: String::new(),
            form: Vec::new(),
            streaming: false,
            input_chars: prompt.len(),
            max_output: n,
            max_tokens: None,
            meter: Meter::Images { requested: n },
        };
        run(&p, &headers, principal, forward, raw, started).await
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

/// `POST /v1/images/edits` (multipart: `image` or `image[]`, `mask`,
/// `prompt`, `model`, `n`, `size`, `response_format`, …).
pub(crate) async fn image_edits(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = async {
        let principal = p.authenticate(api_key(&headers)).await?;
        let form = read_form(&headers, body, p.max_body_bytes).await?;
        if !form
            .iter()
            .any(|f| (f.name == "image" || f.name == "image[]") && f.filename.is_some())
        {
            return Err(GwError::invalid("image", "you must upload an `image` file"));
        }
        if form.iter().any(|f| f.name == "mask" && f.filename.is_none()) {
            return Err(GwError::invalid("mask", "`mask` must be a file"));
        }
        let prompt = text_field(&form, "prompt")?.unwrap_or("");
        if prompt.is_empty() {
            return Err(GwError::invalid("prompt", "you must provide a `prompt`"));
        }
        check_image_format(text_field(&form, "response_format")?)?;
        let model = text_field(&form, "model")?
            .filter(|m| !m.is_empty())
            .unwrap_or(DEFAULT_IMAGE_MODEL)
            .to_owned();
        let n = number_field(&form, "n")?.unwrap_or(1);
        let forward = Forward {
            endpoint: "images",
            path: "images/edits",
            operation: "image_edit",
            model,
            user: text_field(&form, "user")?.map(str::to_owned),
            json: String::new(),
            input_chars: prompt.len(),
            form,
            streaming: false,
            max_output: n,
            max_tokens: None,
            meter: Meter::Images { requested: n },
        };
        run(&p, &headers, principal, forward, String::new(), started).await
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

/// `POST /v1/audio/transcriptions`.
pub(crate) async fn transcriptions(
    State(p): State<Arc<Pipeline>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    audio_in(&p, headers, body, "audio/transcriptions").await
}

/// `POST /v1/audio/translations`.
pub(crate) async fn translations(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    audio_in(&p, headers, body, "audio/translations").await
}

/// The audio formats of speech.
const SPEECH_FORMATS: [&str; 6] = ["mp3", "opus", "aac", "flac", "wav", "pcm"];

/// The response formats of transcriptions and translations.
const AUDIO_FORMATS: [&str; 6] = ["json", "text", "srt", "verbose_json", "vtt", "diarized_json"];

async fn audio_in(p: &Pipeline, headers: HeaderMap, body: Body, path: &'static str) -> Response {
    let started = Instant::now();
    let result = async {
        let principal = p.authenticate(api_key(&headers)).await?;
        let form = read_form(&headers, body, p.max_body_bytes).await?;
        if !form.iter().any(|f| f.name == "file" && f.filename.is_some()) {
            return Err(GwError::invalid("file", "you must upload an audio `file`"));
        }
        let model = text_field(&form, "model")?
            .filter(|m| !m.is_empty())
            .ok_or_else(|| GwError::invalid("model", "you must provide a `model`"))?
            .to_owned();
        if let Some(format) = text_field(&form, "response_format")?
            && !AUDIO_FORMATS.contains(&format)
        {
            return Err(GwError::invalid(
                "response_format",
                format!(
                    "`{format}` is not a valid `response_format`: one of {}",
                    AUDIO_FORMATS.join(", ")
                ),
            ));
        }
        if let Some(t) = text_field(&form, "temperature")? {
            check_number("temperature", t.trim().parse().ok(), 0.0, 1.0)?;
        }
        let forward = Forward {
            endpoint: "audio",
            path,
            operation: if path == "audio/translations" {
                "audio_translation"
            } else {
                "audio_transcription"
            },
            model,
            user: None,
            json: String::new(),
            form,
            streaming: false,
            input_chars: 0,
            max_output: 0,
            max_tokens: None,
            meter: Meter::Seconds,
        };
        run(p, &headers, principal, forward, String::new(), started).await
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

/// `POST /v1/audio/speech`: JSON in, the audio streamed back as it comes.
pub(crate) async fn speech(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = async {
        let (principal, body, raw) = json_request(&p, &headers, body).await?;
        let model = model_of(&body)?;
        let input = body.get("input").and_then(Value::as_str).unwrap_or("");
        if input.is_empty() {
            return Err(GwError::invalid("input", "you must provide the `input` text"));
        }
        let chars = input.chars().count();
        if chars > MAX_SPEECH_INPUT {
            return Err(GwError::invalid(
                "input",
                format!("`input` is {chars} characters; the most is {MAX_SPEECH_INPUT}"),
            ));
        }
        match body.get("voice") {
            Some(Value::String(v)) if !v.is_empty() => {}
            Some(Value::Object(v)) if v.get("id").is_some_and(Value::is_string) => {}
            _ => return Err(GwError::invalid("voice", "you must provide a `voice`")),
        }
        match body.get("speed") {
            None | Some(Value::Null) => {}
            speed => check_number("speed", speed.and_then(Value::as_f64), 0.25, 4.0)?,
        }
        match body.get("response_format") {
            None | Some(Value::Null) => {}
            Some(Value::String(f)) if SPEECH_FORMATS.contains(&f.as_str()) => {}
            Some(_) => {
                return Err(GwError::invalid(
                    "response_format",
                    format!("`response_format` must be one of {}", SPEECH_FORMATS.join(", ")),
                ));
            }
        }
        let chars = u32::try_from(chars).unwrap_or(u32::MAX);
        let forward = Forward {
            endpoint: "audio",
            path: "audio/speech",
            operation: "audio_speech",
            model,
            user: None,
            json: String::new(),
            form: Vec::new(),
            streaming: false,
            input_chars: input.len(),
            max_output: 0,
            max_tokens: None,
            meter: Meter::Characters(chars),
        };
        run(&p, &headers, principal, forward, raw, started).await
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

/// Runs `forward` (with `json` as its body unless it has a form) and
/// answers with the provider's status, content type and bytes.
async fn run(
    p: &Pipeline,
    headers: &HeaderMap,
    principal: pb::Principal,
    mut forward: Forward,
    json: String,
    started: Instant,
) -> Result<Response, GwError> {
    forward.json = json;
    let streaming = forward.streaming;
    let hints = hints(&principal, headers);
    let out = p.forward(principal, forward, hints).await?;
    let mut resp = Response::new(Body::from_stream(out.body));
    *resp.status_mut() = StatusCode::from_u16(out.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(&out.content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    // Never buffered on the way: events and audio go out as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if streaming {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    routing_headers(&mut resp, &out.metadata);
    let kind = if streaming { "forward_stream" } else { "forward" };
    overhead_header(&mut resp, overhead(kind, started, &out.metadata));
    ratelimit_headers(&mut resp, out.quota);
    Ok(resp)
}

/// A JSON request's principal, body (an object) and its text.
async fn json_request(
    p: &Pipeline,
    headers: &HeaderMap,
    body: Body,
) -> Result<(pb::Principal, Map<String, Value>, String), GwError> {
    require_json(headers)?;
    let principal = p.authenticate(api_key(headers)).await?;
    let bytes = read_body(headers, body, p.max_body_bytes).await?;
    let body = serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|e| {
        GwError::invalid(
            "",
            format!("We could not parse the JSON body of your request: {e}"),
        )
    })?;
    // Sent on as the client wrote it (the adapter sets `model`).
    let raw =
        String::from_utf8(bytes.into()).map_err(|_| GwError::invalid("", "the request body is not UTF-8"))?;
    Ok((principal, body, raw))
}

fn model_of(body: &Map<String, Value>) -> Result<String, GwError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(GwError::invalid("model", "you must provide a `model`"))
        }
        Some(_) => Err(GwError::invalid("model", "`model` must be a string")),
    }
}

fn user_of(body: &Map<String, Value>) -> Result<Option<String>, GwError> {
    match body.get("user") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(u)) => Ok(Some(u.clone())),
        Some(_) => Err(GwError::invalid("user", "`user` must be a string")),
    }
}

/// A number given for `param` (a JSON number, or a form field's text;
/// `None`: not a number) must be within `[min, max]`.
fn check_number(param: &'static str, value: Option<f64>, min: f64, max: f64) -> Result<(), GwError> {
    match value {
        Some(v) if (min..=max).contains(&v) => Ok(()),
        _ => Err(GwError::invalid(
            param,
            format!("`{param}` must be a number from {min} to {max}"),
        )),
    }
}

/// A boolean field (absent: false).
fn flag(body: &Map<String, Value>, name: &str) -> Result<bool, GwError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(GwError::invalid(name, format!("`{name}` must be a boolean"))),
    }
}

/// A positive integer field, if given.
fn count(body: &Map<String, Value>, name: &str) -> Result<Option<u32>, GwError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .map(|n| Some(u32::try_from(n).unwrap_or(u32::MAX)))
            .ok_or_else(|| GwError::invalid(name, format!("`{name}` must be an integer of at least 1"))),
    }
}

/// The size of a legacy prompt in characters (a token id counts four), or
/// `None` when it is not one of the four shapes OpenAI takes.
fn prompt_size(prompt: &Value) -> Option<usize> {
    let tokens = |items: &[Value]| items.iter().all(Value::is_u64).then_some(items.len() * 4);
    match prompt {
        Value::String(s) => Some(s.len()),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Some(items.iter().filter_map(Value::as_str).map(str::len).sum())
        }
        Value::Array(items) if items.iter().all(Value::is_u64) => tokens(items),
        Value::Array(items) => items.iter().map(|i| i.as_array().and_then(|a| tokens(a))).sum(),
        _ => None,
    }
}

fn check_image_format(format: Option<&str>) -> Result<(), GwError> {
    match format {
        None | Some("url" | "b64_json") => Ok(()),
        Some(other) => Err(GwError::invalid(
            "response_format",
            format!("`{other}` is not a valid `response_format`: one of url, b64_json"),
        )),
    }
}

/// A text field of a form, if given (the first of its name).
fn text_field<'a>(form: &'a [pb::FormField], name: &str) -> Result<Option<&'a str>, GwError> {
    match form.iter().find(|f| f.name == name) {
        None => Ok(None),
        Some(f) if f.filename.is_some() => Err(GwError::invalid(
            name,
            format!("`{name}` must be text, not a file"),
        )),
        Some(f) => std::str::from_utf8(&f.data)
            .map(|s| Some(s.trim()))
            .map_err(|_| GwError::invalid(name, format!("`{name}` is not UTF-8 text"))),
    }
}

fn number_field(form: &[pb::FormField], name: &str) -> Result<Option<u32>, GwError> {
    match text_field(form, name)? {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| GwError::invalid(name, format!("`{name}` must be an integer of at least 1"))),
    }
}

/// Reads a `multipart/form-data` body: at most `limit` bytes in all (past
/// it, the body is drained and refused with a 413 naming the field that
/// crossed the limit).
async fn read_form(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<pb::FormField>, GwError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|_| {
        let shown = if ct.is_empty() { "none" } else { ct };
        GwError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Unsupported Content-Type `{shown}`: send `multipart/form-data` with a boundary."),
        )
    })?;
    let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut form = Vec::new();
    let mut total = 0usize;
    let mut over: Option<String> = None;
    let mut drained = 0u64;
    let bad = |e: multer::Error| GwError::invalid("", format!("could not read the multipart body: {e}"));
    let read = async {
        while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
            let name = field.name().unwrap_or("").to_owned();
            let filename = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(ToString::to_string);
            let mut data = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                if over.is_some() {
                    drained += chunk.len() as u64;
                    if drained > DRAIN_CAP {
                        return Ok::<(), GwError>(());
                    }
                    continue;
                }
                total += chunk.len();
                if total > limit {
                    over = Some(name.clone());
                    data = Vec::new();
                    continue;
                }
                data.extend_from_slice(&chunk);
            }
            if over.is_none() {
                form.push(pb::FormField {
                    name,
                    filename,
                    content_type,
                    data: data.into(),
                });
            }
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(DRAIN_TIME, read).await;
    match outcome {
        Ok(Err(e)) if over.is_none() => return Err(e),
        Ok(_) => {}
        Err(_) if over.is_some() => {}
        Err(_) => return Err(GwError::invalid("", "timed out reading the request body")),
    }
    if let Some(field) = over {
        return Err(GwError::new(
            ErrorCode::PayloadTooLarge,
            format!("`{field}` makes the upload larger than the limit of {limit} bytes."),
        )
        .with_param(field));
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prompts_of_every_shape_are_sized_and_others_refused() {
        assert_eq!(prompt_size(&json!("abcd")), Some(4));
        assert_eq!(prompt_size(&json!(["ab", "cde"])), Some(5));
        assert_eq!(prompt_size(&json!([1, 2, 3])), Some(12));
        assert_eq!(prompt_size(&json!([[1, 2], [3]])), Some(12));
        assert_eq!(prompt_size(&json!([["a"]])), None);
        assert_eq!(prompt_size(&json!({"text": "x"})), None);
        assert_eq!(prompt_size(&json!(["a", 1])), None);
    }

    #[test]
    fn counts_and_formats_name_their_param() {
        let body = json!({"n": 0, "stream": "yes"});
        let body = body.as_object().cloned().unwrap_or_default();
        assert_eq!(
            count(&body, "n").map_err(|e| e.param().map(str::to_owned)),
            Err(Some("n".into()))
        );
        assert!(flag(&body, "stream").is_err());
        assert!(check_image_format(Some("b64_json")).is_ok());
        assert!(check_image_format(Some("png")).is_err());
    }
}
