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
//! {values, statistics: {token_count, truncated}}}]}`), and Bedrock's InvokeModel for
//! Titan Text Embeddings (`{inputText, dimensions, normalize, embeddingTypes}` →
//! `{embedding, inputTextTokenCount, embeddingsByType}`) and Cohere Embed (`{texts,
//! input_type, truncate, embedding_types}` → `{id, texts, embeddings: {float: [...]} | [...],
//! response_type}`).

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

/// Bedrock's "malformed input" validation message.
fn malformed(what: &str) -> (u16, String) {
    (
        400,
        format!("Malformed input request: {what}, please reformat your input and try again."),
    )
}

/// `POST /model/{modelId}/invoke` for a Titan or Cohere embedding model
/// (Bedrock): the response body, or a status and message.
pub(crate) fn bedrock_invoke(model: &str, body: &[u8]) -> Result<String, (u16, String)> {
    let req: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| malformed("#: expected type: JSONObject"))?;
    // `[emu:status=N]` and `[emu:prompt_too_long]` in any text steer the answer.
    let texts = req
        .get("inputText")
        .into_iter()
        .chain(req.get("texts").and_then(Value::as_array).into_iter().flatten())
        .filter_map(Value::as_str);
    for text in texts {
        if let Some(status) = crate::directives::parse(text)
            .0
            .status
            .filter(|s| (400..=599).contains(s))
        {
            return Err((status, format!("Emulated status {status}.")));
        }
        if text.contains("[emu:prompt_too_long]") {
            return Err((400, "Input is too long for requested model.".to_owned()));
        }
    }
    if model.starts_with("amazon.titan-embed") {
        bedrock_titan(model, &req)
    } else if model.starts_with("cohere.embed") {
        bedrock_cohere(&req)
    } else {
        Err((400, "The provided model identifier is invalid.".to_owned()))
    }
}

fn bedrock_titan(model: &str, req: &Map<String, Value>) -> Result<String, (u16, String)> {
    let v2 = model.starts_with("amazon.titan-embed-text-v2");
    let allowed: &[&str] = if v2 {
        &["inputText", "dimensions", "normalize", "embeddingTypes"]
    } else {
        &["inputText"]
    };
    if let Some(key) = req.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(malformed(&format!("extraneous key [{key}] is not permitted")));
    }
    let text = match req.get("inputText") {
        Some(Value::String(t)) if !t.is_empty() && t.chars().count() <= 50_000 => t,
        Some(Value::String(_)) => {
            return Err(malformed("#/inputText: expected minLength: 1, maxLength: 50000"));
        }
        Some(_) => return Err(malformed("#/inputText: expected type: String")),
        None => return Err(malformed("#: required key [inputText] not found")),
    };
    let dims = match req.get("dimensions") {
        None => {
            if v2 {
                1024
            } else {
                1536
            }
        }
        Some(Value::Number(n)) if matches!(n.as_u64(), Some(256 | 512 | 1024)) => {
            n.as_u64().unwrap_or(1024) as usize
        }
        Some(_) => return Err(malformed("#/dimensions: 256, 512 or 1024 expected")),
    };
    if req.get("normalize").is_some_and(|n| !n.is_boolean()) {
        return Err(malformed("#/normalize: expected type: Boolean"));
    }
    if let Some(types) = req.get("embeddingTypes") {
        let ok = types.as_array().is_some_and(|a| {
            !a.is_empty() && a.iter().all(|t| matches!(t.as_str(), Some("float" | "binary")))
        });
        if !ok {
            return Err(malformed(
                "#/embeddingTypes: expected [\"float\", \"binary\"] items",
            ));
        }
    }
    let embedding = vector(text, dims);
    Ok(json!({
        "embedding": embedding,
        "inputTextTokenCount": text.split_whitespace().count().max(1),
        "embeddingsByType": {"float": embedding},
    })
    .to_string())
}

/// Cohere Embed v3's vector size on Bedrock.
const COHERE_DIMENSIONS: usize = 1024;

fn bedrock_cohere(req: &Map<String, Value>) -> Result<String, (u16, String)> {
    const ALLOWED: [&str; 5] = ["texts", "images", "input_type", "truncate", "embedding_types"];
    if let Some(key) = req.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(malformed(&format!("extraneous key [{key}] is not permitted")));
    }
    let texts: Vec<&str> = match req.get("texts") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| malformed("#/texts: expected type: String"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed("#/texts: expected type: JSONArray")),
        None => return Err(malformed("#: required key [texts] not found")),
    };
    if texts.is_empty() || texts.len() > 96 {
        return Err(malformed("#/texts: expected minimum item count: 1, maximum: 96"));
    }
    if texts.iter().any(|t| t.is_empty() || t.chars().count() > 2048) {
        return Err(malformed("#/texts: expected minLength: 1, maxLength: 2048"));
    }
    match req.get("input_type").and_then(Value::as_str) {
        Some("search_document" | "search_query" | "classification" | "clustering") => {}
        Some(_) => {
            return Err(malformed(
                "#/input_type: search_document, search_query, classification or clustering expected",
            ));
        }
        None => return Err(malformed("#: required key [input_type] not found")),
    }
    if req
        .get("truncate")
        .is_some_and(|t| !matches!(t.as_str(), Some("NONE" | "START" | "END")))
    {
        return Err(malformed("#/truncate: NONE, START or END expected"));
    }
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| vector(t, COHERE_DIMENSIONS)).collect();
    let id = format!("{:016x}", texts.iter().map(|t| t.len() as u64).sum::<u64>());
    match req.get("embedding_types") {
        None => Ok(json!({
            "id": id,
            "texts": texts,
            "embeddings": vectors,
            "response_type": "embeddings_floats",
        })
        .to_string()),
        Some(Value::Array(types))
            if !types.is_empty()
                && types.iter().all(|t| {
                    matches!(
                        t.as_str(),
                        Some("float" | "int8" | "uint8" | "binary" | "ubinary")
                    )
                }) =>
        {
            let mut by_type = Map::new();
            if types.iter().any(|t| t == "float") {
                by_type.insert("float".into(), json!(vectors));
            }
            Ok(json!({
                "id": id,
                "texts": texts,
                "embeddings": by_type,
                "response_type": "embeddings_by_type",
            })
            .to_string())
        }
        Some(_) => Err(malformed(
            "#/embedding_types: float, int8, uint8, binary or ubinary expected",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(model: &str, body: Value) -> Result<Value, (u16, String)> {
        bedrock_invoke(model, body.to_string().as_bytes()).map(|s| serde_json::from_str(&s).unwrap())
    }

    fn f32s(v: &Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    #[test]
    fn bedrock_titan_v2_vectors_honour_dimensions() {
        let m = "amazon.titan-embed-text-v2:0";
        let r = invoke(m, json!({"inputText": "hello there", "normalize": true})).unwrap();
        assert_eq!(r["embedding"].as_array().unwrap().len(), 1024);
        assert_eq!(r["inputTextTokenCount"], 2);
        let r256 = invoke(m, json!({"inputText": "hello there", "dimensions": 256})).unwrap();
        assert_eq!(r256["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(f32s(&r256["embedding"]), vector("hello there", 256));
        for bad in [
            json!({"inputText": "x", "dimensions": 300}),
            json!({"inputText": ""}),
            json!({"inputText": "x", "extra": 1}),
            json!({"texts": ["x"]}),
        ] {
            assert_eq!(invoke(m, bad).unwrap_err().0, 400);
        }
        // V1 takes `inputText` alone.
        let e = invoke(
            "amazon.titan-embed-text-v1",
            json!({"inputText": "x", "normalize": true}),
        )
        .unwrap_err();
        assert!(e.1.contains("[normalize]"), "{e:?}");
        let r = invoke("amazon.titan-embed-text-v1", json!({"inputText": "x"})).unwrap();
        assert_eq!(r["embedding"].as_array().unwrap().len(), 1536);
    }

    #[test]
    fn bedrock_cohere_both_shapes_and_strictness() {
        let m = "cohere.embed-english-v3";
        let by_type = invoke(
            m,
            json!({"texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"]}),
        )
        .unwrap();
        assert_eq!(by_type["response_type"], "embeddings_by_type");
        assert_eq!(f32s(&by_type["embeddings"]["float"][1]), vector("b", 1024));
        let floats = invoke(m, json!({"texts": ["a"], "input_type": "search_query"})).unwrap();
        assert_eq!(f32s(&floats["embeddings"][0]), vector("a", 1024));
        for bad in [
            json!({"texts": ["a"]}),
            json!({"texts": [], "input_type": "search_query"}),
            json!({"texts": ["a"], "input_type": "other"}),
            json!({"texts": ["a"], "input_type": "search_query", "dimensions": 256}),
            json!({"inputText": "a"}),
        ] {
            assert_eq!(invoke(m, bad).unwrap_err().0, 400);
        }
        assert_eq!(invoke("meta.llama3", json!({"texts": ["a"]})).unwrap_err().0, 400);
        let steered = json!({"texts": ["a", "[emu:status=429] b"], "input_type": "search_query"});
        assert_eq!(invoke(m, steered).unwrap_err().0, 429);
        let long = json!({"inputText": "[emu:prompt_too_long] a"});
        let e = invoke("amazon.titan-embed-text-v2:0", long).unwrap_err();
        assert_eq!(e, (400, "Input is too long for requested model.".to_owned()));
    }
}
