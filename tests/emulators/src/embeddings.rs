//! OpenAI's Embeddings API (`POST /v1/embeddings`), from the API reference:
//! `input` as a string, an array of strings, token ids or arrays of token
//! ids; `encoding_format` `float` (default) or `base64` (little-endian f32);
//! `dimensions`; usage with `prompt_tokens` and `total_tokens`. Vectors are
//! deterministic (a hash of the input) and unit length, so tests can compare
//! them across calls.
//!
//! Beside it, the same vectors in other providers' shapes: Azure OpenAI's
//! `POST /openai/deployments/{deployment}/embeddings?api-version=` (the
//! deployment names the model, `api-key` header), Ollama's `POST /api/embed`
//! (`{model, input: string|[string], truncate, dimensions, keep_alive,
//! options}` → `{model, embeddings, prompt_eval_count}`, errors
//! `{"error": "..."}`) and Gemini's `models/{model}:batchEmbedContents`
//! (`{requests: [{model, content: {parts: [{text}]}, taskType, title,
//! outputDimensionality}]}` → `{embeddings: [{values}]}`, no token counts), and
//! Vertex AI's `models/{model}:predict` (`{instances: [{content, task_type, title}],
//! parameters: {outputDimensionality, autoTruncate}}` → `{predictions: [{embeddings:
//! {values, statistics: {token_count, truncated}}}]}`).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::chat::ApiError;
use crate::record::Outcome;
use crate::routes::{State, error_response, json as json_response};

/// Dimensions of a model's vectors when `dimensions` is not given.
fn native_dimensions(model: &str) -> usize {
    if model.contains("large") { 3072 } else { 1536 }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tracker = state.track("POST", "/v1/embeddings", &headers, Some(&body));
    match answer(&state, &headers, &body) {
        Ok(resp) => {
            tracker.finish(Outcome::Completed);
            json_response(StatusCode::OK, resp)
        }
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e)
        }
    }
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(message, Some(param), Some("invalid_value"))
}

/// `POST /openai/deployments/{deployment}/embeddings?api-version=` (Azure OpenAI).
pub async fn azure_embeddings(
    Extract(state): Extract<Arc<State>>,
    Path(deployment): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!(
        "/openai/deployments/{deployment}/embeddings?{}",
        query.as_deref().unwrap_or("")
    );
    let mut tracker = state.track("POST", &path, &headers, Some(&body));
    if let Err(resp) = crate::flavours::azure_check(&state, query.as_deref(), &headers) {
        tracker.finish(Outcome::Error);
        return *resp;
    }
    let result = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|mut v| {
            // Azure takes the model from the deployment.
            v.as_object_mut()?
                .insert("model".into(), Value::String(deployment));
            Some(v.to_string())
        })
        .ok_or_else(|| ApiError::invalid("We could not parse the JSON body of your request.", None, None))
        .and_then(|body| compute(body.as_bytes()));
    match result {
        Ok(resp) => {
            tracker.finish(Outcome::Completed);
            json_response(StatusCode::OK, resp)
        }
        Err(e) => {
            tracker.finish(Outcome::Error);
            error_response(&e)
        }
    }
}

fn answer(state: &State, headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    state.check_auth(headers)?;
    compute(body)
}

fn compute(body: &[u8]) -> Result<String, ApiError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("We could not parse the JSON body of your request.", None, None))?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Missing required parameter: 'model'.",
                Some("model"),
                Some("missing_required_parameter"),
            )
        })?;
    let texts: Vec<String> = match req.get("input") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_u64) {
                vec![Value::Array(items.clone()).to_string()]
            } else {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                            out.push(item.to_string())
                        }
                        _ => {
                            return Err(invalid(
                                "'$.input' is invalid. Please check the API reference.",
                                "input",
                            ));
                        }
                    }
                }
                out
            }
        }
        Some(_) => {
            return Err(invalid(
                "'$.input' is invalid. Please check the API reference.",
                "input",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
                Some("missing_required_parameter"),
            ));
        }
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(invalid("Invalid value for 'encoding_format'.", "encoding_format")),
    };
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => native_dimensions(model),
        Some(v) => match v.as_u64() {
            Some(d) if d >= 1 && d as usize <= native_dimensions(model) => d as usize,
            _ => return Err(invalid("Invalid value for 'dimensions'.", "dimensions")),
        },
    };
    let mut prompt_tokens = 0usize;
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            prompt_tokens += text.len().div_ceil(4).max(1);
            let vector = vector(text, dims);
            let embedding = if base64 {
                let mut bytes = Vec::with_capacity(dims * 4);
                for v in &vector {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
    .to_string())
}

/// A unit vector from a 64-bit FNV-1a hash of `text` driving xorshift.
fn vector(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    for x in &mut v {
        *x /= norm;
    }
    v
}

/// Ollama's native vector size (nomic-embed-text).
const OLLAMA_DIMENSIONS: usize = 768;

/// `POST /api/embed` (Ollama).
pub async fn ollama_embed(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tracker = state.track("POST", "/api/embed", &headers, Some(&body));
    // Ollama itself has no auth; a proxy in front of it checks a bearer key when one is sent.
    let unauthorized = matches!(
        (&state.expected_auth, headers.get(axum::http::header::AUTHORIZATION)),
        (Some(expected), Some(given)) if given.as_bytes() != expected.as_bytes()
    );
    let result = if unauthorized {
        Err((StatusCode::UNAUTHORIZED, "unauthorized".to_owned()))
    } else {
        ollama_answer(&body)
    };
    match result {
        Ok(resp) => {
            tracker.finish(Outcome::Completed);
            json_response(StatusCode::OK, resp)
        }
        Err((status, message)) => {
            tracker.finish(Outcome::Error);
            json_response(status, json!({ "error": message }).to_string())
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaEmbed {
    model: String,
    input: Value,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

fn ollama_answer(body: &[u8]) -> Result<String, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let req: OllamaEmbed = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let _ = (req.truncate, &req.keep_alive, &req.options);
    if req.model.is_empty() {
        return Err(bad("model is required".to_owned()));
    }
    if req.model.contains("missing") {
        return Err((
            StatusCode::NOT_FOUND,
            format!("model \"{}\" not found, try pulling it first", req.model),
        ));
    }
    let texts: Vec<&str> = match &req.input {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| bad("invalid input type".to_owned())))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("invalid input type".to_owned())),
    };
    let dims = match req.dimensions {
        None => OLLAMA_DIMENSIONS,
        Some(d) if d >= 1 && d as usize <= OLLAMA_DIMENSIONS => d as usize,
        Some(d) => return Err(bad(format!("invalid dimensions: {d}"))),
    };
    let prompt_eval_count: usize = texts.iter().map(|t| t.len().div_ceil(4).max(1)).sum();
    let embeddings: Vec<Vec<f32>> = texts.iter().map(|t| vector(t, dims)).collect();
    Ok(json!({
        "model": req.model,
        "embeddings": embeddings,
        "total_duration": 14_143_917u64,
        "load_duration": 1_019_500u64,
        "prompt_eval_count": prompt_eval_count,
    })
    .to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GeminiBatch {
    requests: Vec<GeminiEmbedRequest>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeminiEmbedRequest {
    model: String,
    content: GeminiContent,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    output_dimensionality: Option<i64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GeminiContent {
    #[serde(default)]
    role: Option<String>,
    parts: Vec<GeminiPart>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GeminiPart {
    text: String,
}

/// `models/{model}:batchEmbedContents` (Gemini): the response body, or a
/// Google error's status and message.
pub(crate) fn gemini_batch(model: &str, body: &[u8]) -> Result<String, (u16, String)> {
    let native = if model.starts_with("gemini-embedding") {
        3072
    } else if model.starts_with("text-embedding") || model.starts_with("embedding") {
        768
    } else {
        return Err((
            404,
            format!(
                "models/{model} is not found for API version v1beta, or is not supported for batchEmbedContents."
            ),
        ));
    };
    let bad = |m: String| (400, m);
    let req: GeminiBatch =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON payload received. {e}")))?;
    if req.requests.is_empty() {
        return Err(bad(
            "* BatchEmbedContentsRequest.requests: contents is not specified".to_owned(),
        ));
    }
    let mut embeddings = Vec::with_capacity(req.requests.len());
    for (i, r) in req.requests.iter().enumerate() {
        let _ = (&r.task_type, &r.title, &r.content.role);
        if r.model != format!("models/{model}") {
            return Err(bad(format!(
                "Model name in request ({}) does not match model name in URL (models/{model}).",
                r.model
            )));
        }
        let text: String = r.content.parts.iter().map(|p| p.text.as_str()).collect();
        if text.is_empty() {
            return Err(bad(format!(
                "* BatchEmbedContentsRequest.requests[{i}].content.parts: contents is not specified"
            )));
        }
        let dims = match r.output_dimensionality {
            None => native,
            Some(d) if d >= 1 && d as usize <= native => d as usize,
            Some(_) => {
                return Err(bad(format!(
                    "* BatchEmbedContentsRequest.requests[{i}].output_dimensionality: Output dimensionality must be between 1 and {native}."
                )));
            }
        };
        embeddings.push(json!({ "values": vector(&text, dims) }));
    }
    Ok(json!({ "embeddings": embeddings }).to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VertexPredict {
    instances: Vec<VertexInstance>,
    #[serde(default)]
    parameters: Option<VertexParameters>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VertexInstance {
    content: String,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VertexParameters {
    #[serde(default)]
    output_dimensionality: Option<i64>,
    #[serde(default)]
    auto_truncate: Option<bool>,
}

/// `models/{model}:predict` for a text-embedding model (Vertex AI): the
/// response body, or a Google error's status and message.
pub(crate) fn vertex_predict(model: &str, body: &[u8]) -> Result<String, (u16, String)> {
    let native = if model.starts_with("gemini-embedding") {
        3072
    } else if model.starts_with("text-embedding") || model.starts_with("text-multilingual-embedding") {
        768
    } else {
        return Err((
            400,
            format!("Model publishers/google/models/{model} does not support the predict method."),
        ));
    };
    let bad = |m: String| (400, m);
    let req: VertexPredict =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON payload received. {e}")))?;
    let params = req.parameters.unwrap_or(VertexParameters {
        output_dimensionality: None,
        auto_truncate: None,
    });
    let _ = params.auto_truncate;
    let dims = match params.output_dimensionality {
        None => native,
        Some(d) if d >= 1 && d as usize <= native => d as usize,
        Some(_) => {
            return Err(bad(format!(
                "outputDimensionality must be between 1 and {native}."
            )));
        }
    };
    let mut predictions = Vec::with_capacity(req.instances.len());
    for i in &req.instances {
        let _ = (&i.task_type, &i.title);
        if i.content.is_empty() {
            return Err(bad("The text content is empty.".to_owned()));
        }
        predictions.push(json!({"embeddings": {
            "values": vector(&i.content, dims),
            "statistics": {"truncated": false, "token_count": i.content.len().div_ceil(4).max(1)},
        }}));
    }
    let chars: usize = req.instances.iter().map(|i| i.content.chars().count()).sum();
    Ok(json!({ "predictions": predictions, "metadata": {"billableCharacterCount": chars} }).to_string())
}
