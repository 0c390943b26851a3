//! Anthropic's Messages API at the edge: `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`, as the official `anthropic` SDKs send
//! them (key in `x-api-key` or `Authorization: Bearer`; `anthropic-version`
//! and `anthropic-beta` accepted and not needed).
//!
//! A request is translated into the canonical `ChatRequest` ([`read`]) and
//! runs through the same [`Pipeline`] as `/v1/chat/completions` — auth,
//! policies, limits, budgets, routing, fallback and metering unchanged — so
//! an Anthropic client can use any provider. The answer is translated back
//! ([`write`]): a `message`, or Anthropic's SSE events; errors in Anthropic's
//! shape, rendered where the OpenAI ones are ([`crate::http`]). `GET
//! /v1/models` answers in Anthropic's shape to clients that send
//! `anthropic-version`.

pub(crate) mod read;
#[cfg(test)]
mod tests;
mod write;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, header};
use llmgw_kit::GwError;

use crate::http::{Dialect, api_key, chat_response, error_response_in, hints, read_body, require_json};
use crate::pipeline::{ChatOutput, Pipeline, allow_endpoint, prompt_estimate};

pub use write::error_json;

/// The key from `x-api-key` (what the Anthropic SDKs send) or
/// `Authorization: Bearer` (their `auth_token`); a 401 in Anthropic's words
/// when there is none.
fn key(headers: &HeaderMap) -> Result<&str, GwError> {
    api_key(headers).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
        GwError::new(
            llmgw_kit::ErrorCode::Unauthenticated,
            "x-api-key header is required (or Authorization: Bearer)",
        )
    })
}

/// `request-id`, which the Anthropic SDKs expose as `_request_id`.
fn request_id_header(resp: &mut Response, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("request-id", v);
    }
}

/// `POST /v1/messages`.
pub async fn messages(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    match run(&p, &headers, body, started).await {
        Ok(resp) => resp,
        Err(e) => error_response_in(&e, Dialect::Anthropic),
    }
}

async fn run(
    p: &Pipeline,
    headers: &HeaderMap,
    body: Body,
    started: std::time::Instant,
) -> Result<Response, GwError> {
    let admitted = p.admit()?;
    require_json(headers)?;
    let principal = p.authenticate(Some(key(headers)?)).await?;
    let bytes = read_body(headers, body, p.max_body_bytes).await?;
    let req = read::parse_request(&bytes, read::Route::Messages)?;
    let estimate = if req.stream { prompt_estimate(&req) } else { 0 };
    let mut hints = hints(&principal, headers);
    hints.admitted = Some(admitted);
    match p.chat(principal, req, hints).await? {
        ChatOutput::Complete(resp, quota) => {
            let json = write::message_json(&resp)?;
            let meta = resp.metadata.as_ref();
            let mut out = chat_response(Body::from(json), false, meta, quota, started);
            if let Some(meta) = meta {
                request_id_header(&mut out, &meta.request_id);
            }
            Ok(out)
        }
        ChatOutput::Stream(stream) => {
            let writer = write::StreamWriter::new(&stream.metadata, estimate);
            let body = Body::from_stream(sse(stream.chunks, writer));
            let mut out = chat_response(body, true, Some(&stream.metadata), stream.quota, started);
            request_id_header(&mut out, &stream.metadata.request_id);
            Ok(out)
        }
    }
}

/// The canonical chunks as Anthropic's events, written as each arrives;
/// a failed stream ends with one `error` event and no `message_stop`.
fn sse(
    chunks: llmgw_kit::services::ChunkStream,
    writer: write::StreamWriter,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    futures_util::stream::unfold((chunks, writer, false), |(mut chunks, mut w, done)| async move {
        if done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(512);
        let done = match chunks.next().await {
            Some(Ok(chunk)) => {
                w.chunk(&chunk, &mut buf);
                false
            }
            Some(Err(e)) => {
                w.error(&e, &mut buf);
                true
            }
            None => {
                w.finish(&mut buf);
                true
            }
        };
        Some((Ok(buf.freeze()), (chunks, w, done)))
    })
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, the edge's own
/// estimate (the one rate limits are admitted with: about four characters a
/// token, plus the tools' schemas), not a provider's tokenizer count.
pub async fn count_tokens(State(p): State<Arc<Pipeline>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        require_json(&headers)?;
        let principal = p.authenticate(Some(key(&headers)?)).await?;
        allow_endpoint(&principal, "chat")?;
        let bytes = read_body(&headers, body, p.max_body_bytes).await?;
        let req = read::parse_request(&bytes, read::Route::CountTokens)?;
        let n = prompt_estimate(&req);
        Ok::<_, GwError>(
            (
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                format!(r#"{{"input_tokens":{n}}}"#),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(|e| error_response_in(&e, Dialect::Anthropic))
}

// ---- models ---------------------------------------------------------------------

#[derive(serde::Serialize)]
struct ModelOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    display_name: &'a str,
    created_at: String,
}

#[derive(serde::Serialize)]
struct ModelListOut<'a> {
    data: Vec<ModelOut<'a>>,
    has_more: bool,
    first_id: Option<&'a str>,
    last_id: Option<&'a str>,
}

/// Unix seconds as RFC 3339 (UTC), as Anthropic writes `created_at`.
fn rfc3339(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn model_out(m: &llmgw_proto::Model) -> ModelOut<'_> {
    ModelOut {
        kind: "model",
        id: &m.id,
        display_name: &m.id,
        created_at: rfc3339(m.created),
    }
}

/// `GET /v1/models` in Anthropic's shape (one page: every model).
pub fn models_response(models: &[llmgw_proto::Model]) -> Response {
    crate::http::json_response(&ModelListOut {
        data: models.iter().map(model_out).collect(),
        has_more: false,
        first_id: models.first().map(|m| m.id.as_str()),
        last_id: models.last().map(|m| m.id.as_str()),
    })
}

/// `GET /v1/models/{id}` in Anthropic's shape.
pub fn model_response(m: &llmgw_proto::Model) -> Response {
    crate::http::json_response(&model_out(m))
}
