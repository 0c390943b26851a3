//! OpenAI's Embeddings API (`POST /v1/embeddings`), from the API reference:
//! `input` as a string, an array of strings, token ids or arrays of token
//! ids; `encoding_format` `float` (default) or `base64` (little-endian f32);
//! `dimensions`; usage with `prompt_tokens` and `total_tokens`. Vectors are
//! deterministic (a hash of the input) and unit length, so tests can compare
//! them across calls.

use std::sync::Arc;

use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

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

fn answer(state: &State, headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    state.check_auth(headers)?;
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
