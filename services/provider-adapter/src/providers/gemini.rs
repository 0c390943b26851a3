//! `type: google`: Gemini on Google AI Studio (the Generative Language API),
//! and `type: vertex-ai`: the same models and wire format on Vertex AI.
//!
//! AI Studio: `POST {base_url}/models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` for streams, with the key in the
//! `x-goog-api-key` header (never in the URL: keys must not reach URLs, logs
//! or errors). Vertex AI: the same actions under
//! `{base_url}/projects/{project}/locations/{location}/publishers/google/models/`,
//! with `Authorization: Bearer` and an access token minted from the service
//! account (see [`super::vertex`]).
//!
//! Translation, canonical → Gemini: system and developer messages become
//! `systemInstruction`; user and assistant turns become `contents` with roles
//! `user` and `model` (consecutive turns of one role merged); images become
//! `inlineData` (data URLs, and on AI Studio http(s) URLs, fetched through the
//! guard in [`crate::fetch`]: AI Studio cannot fetch arbitrary URLs) or
//! `fileData` (Files API and `gs://` URIs, and http(s) URLs on Vertex AI); assistant tool calls
//! become `functionCall` parts and tool results `functionResponse` parts
//! (named after the call they answer); tools become `functionDeclarations`
//! with their JSON schemas cut down to the OpenAPI subset Gemini accepts;
//! sampling, stop, `n`, seed, penalties, response formats, logprobs and
//! `reasoning_effort` go to `generationConfig`. A parameter Gemini cannot
//! honour is a 400 naming it and the provider, never silently dropped; the
//! exceptions are `user` and `metadata`, which only label a request and do
//! not change its answer.
//!
//! Gemini → canonical: candidates become choices (text parts joined, thought
//! parts as `reasoning`, `functionCall` parts as tool calls with generated
//! ids), finish reasons and `usageMetadata` are mapped, and a blocked prompt
//! is a `content_filter` finish with empty content. A stream is one
//! `GenerateContentResponse` per SSE event and ends with the body (no
//! `[DONE]`); it becomes OpenAI-style chunks and a final usage-only chunk.
//!
//! Embeddings (AI Studio): `POST {base_url}/models/{model}:batchEmbedContents` with
//! `{requests: [{model: "models/{model}", content: {parts: [{text}]}, outputDimensionality}]}`
//! (the client's extra fields, such as `taskType`, go into each request) answers
//! `{embeddings: [{values}]}`. Gemini counts no tokens there, so usage is estimated (about
//! four characters a token) and marked so. Vertex AI: `{model}:predict` with
//! `{instances: [{content}], parameters: {outputDimensionality}}` (extra fields, such as
//! `task_type`, go into each instance) answers `{predictions: [{embeddings: {values,
//! statistics: {token_count}}}]}`. Text only: token-id inputs are a 400 naming `input`.
//!
//! Images: `POST /v1/images/generations` goes to Imagen's `{model}:predict`
//! on both (see [`imagen`]); other pass-through endpoints are a 400 naming
//! `model`.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{Event, EventStream, EventStreamError};
use futures_util::Stream;
use llmgw_kit::config::{ProviderConfig, ProviderKind};
use llmgw_kit::openai::parse_upstream_error;
use llmgw_kit::services::{ChunkStream, ForwardStream};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, Embedding, EmbeddingsRequest,
    EmbeddingsResponse, FinishReason, ForwardRequest, FunctionCall, Message, Role, Target, ToolCall,
    ToolCallDelta, Usage, content, content_part, embedding_input, response_format, tool_choice,
};
use pin_project_lite::pin_project;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::vertex::TokenSource;
use super::{Provider, no_endpoint};
use crate::fetch::{self, Fetcher};
use crate::http::Peer;

const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
/// The most of an error body we read.
const ERROR_BODY_LIMIT: usize = 64 << 10;
/// How deep a JSON schema is followed (and `$ref`s inlined) before giving up.
const MAX_SCHEMA_DEPTH: usize = 32;
/// Separates a tool call id from the thought signature carried in it.
const SIGNATURE_MARK: &str = "__thought__";
/// A provider as messages name it: `provider `gem` (google) ...`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who<'a> {
    pub(crate) name: &'a str,
    /// The config type: `google` or `vertex-ai`.
    pub(crate) kind: &'static str,
}

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({})", self.name, self.kind)
    }
}

/// Gemini on AI Studio (`type: google`, keyed) or on Vertex AI (`type:
/// vertex-ai`, a service account's OAuth token); the wire format is the same.
pub(crate) struct Gemini {
    peer: Peer,
    kind: &'static str,
    /// AI Studio: `{base_url}/models/`; Vertex AI:
    /// `{base_url}/projects/{project}/locations/{location}/publishers/google/models/`.
    /// `{model}:{action}` is appended.
    models_url: String,
    /// Vertex AI's token source; `None` on AI Studio (the key is a header).
    tokens: Option<Arc<TokenSource>>,
    /// Sent on every request: the key (marked sensitive), the content type,
    /// configured extra headers. Nothing from the client.
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
    /// Fetches http(s) image URLs on AI Studio, which takes them only inline.
    fetcher: Fetcher,
}

impl Gemini {
    pub(crate) fn new(config: &ProviderConfig, client: reqwest::Client) -> Result<Self, GwError> {
        let name = &config.name;
        let invalid =
            |what: &str| GwError::internal(format!("provider `{name}`: {what}")).with_provider(name);
        let base = config.base_url.trim_end_matches('/');
        let vertex = config.kind == ProviderKind::VertexAi;
        let (models_url, tokens) = if vertex {
            let project = config.project_id.as_deref().unwrap_or_default();
            let location = config.location.as_deref().unwrap_or_default();
            let safe = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            };
            if !safe(project) || !safe(location) {
                return Err(invalid("`project_id` and `location` must be plain names"));
            }
            let credentials = config
                .credentials
                .as_ref()
                .ok_or_else(|| invalid("`credentials` (a service-account key) is required"))?;
            let tokens =
                TokenSource::new(credentials.expose(), client.clone()).map_err(|what| invalid(&what))?;
            (
                format!("{base}/projects/{project}/locations/{location}/publishers/google/models/"),
                Some(Arc::new(tokens)),
            )
        } else {
            (format!("{base}/models/"), None)
        };
        reqwest::Url::parse(&models_url).map_err(|e| invalid(&format!("invalid base_url: {e}")))?;
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            let header = HeaderName::try_from(header.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header value")))?;
            headers.insert(header, value);
        }
        headers.insert(CONTENT_TYPE, JSON);
        if let Some(key) = config.api_key.as_ref().filter(|_| !vertex) {
            let mut value = HeaderValue::try_from(key.expose())
                .map_err(|_| invalid("the api key is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(API_KEY, value);
        }
        Ok(Self {
            peer: Peer::new(name, if vertex { None } else { config.api_key.clone() }),
            kind: if vertex { "vertex-ai" } else { "google" },
            models_url,
            tokens,
            headers,
            timeout: config.timeout,
            client,
            fetcher: Fetcher::new(),
        })
    }

    fn who(&self) -> Who<'_> {
        Who {
            name: self.peer.name(),
            kind: self.kind,
        }
    }

    /// The target's model, safe to put in a URL path.
    fn model<'a>(&self, target: &'a Target) -> Result<&'a str, GwError> {
        let model = target.model.strip_prefix("models/").unwrap_or(&target.model);
        // The model lands in the URL path: no `/`, `?`, `#` or `%` may steer it.
        if model.is_empty()
            || !model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(GwError::invalid(
                "model",
                format!(
                    "provider {}: `{model}` is not a valid gemini model name",
                    self.who()
                ),
            )
            .with_provider(self.peer.name()));
        }
        Ok(model)
    }

    /// The `batchEmbedContents` (AI Studio) or `predict` (Vertex AI) body
    /// for `req`: text inputs only.
    fn embed_body(&self, model: &str, req: &EmbeddingsRequest) -> Result<Vec<u8>, GwError> {
        let extra = match req.extra_json.as_deref() {
            Some(text) => serde_json::from_str::<Map<String, Value>>(text)
                .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
            None => Map::new(),
        };
        let mut requests = Vec::with_capacity(req.inputs.len());
        for input in &req.inputs {
            let Some(embedding_input::Value::Text(text)) = &input.value else {
                return Err(unsupported(self.who(), "input", "token-id inputs (send text)"));
            };
            let mut one = extra.clone();
            if self.tokens.is_some() {
                one.insert("content".into(), Value::String(text.clone()));
            } else {
                one.insert("model".into(), Value::String(format!("models/{model}")));
                one.insert("content".into(), json!({ "parts": [{ "text": text }] }));
                if let Some(d) = req.dimensions {
                    one.insert("outputDimensionality".into(), Value::from(d));
                }
            }
            requests.push(Value::Object(one));
        }
        let body = match (&self.tokens, req.dimensions) {
            (None, _) => json!({ "requests": requests }),
            (Some(_), None) => json!({ "instances": requests }),
            (Some(_), Some(d)) => {
                json!({ "instances": requests, "parameters": { "outputDimensionality": d } })
            }
        };
        serde_json::to_vec(&body).map_err(|e| {
            GwError::internal(format!("cannot encode the gemini request: {e}"))
                .with_provider(self.peer.name())
        })
    }

    fn timeout(&self, target: &Target) -> Duration {
        crate::http::per_try_timeout(self.timeout, target)
    }

    async fn request(
        &self,
        target: &Target,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, GwError> {
        let name = self.peer.name();
        let model = self.model(target)?;
        let req = if self.tokens.is_none() {
            // Cheap refusals first: a request refused anyway fetches nothing.
            reject_unsupported(req, self.who())?;
            self.fetcher
                .inline_images(req, (name, self.kind), |m, url| {
                    matches!(m.role(), Role::User | Role::Unspecified) && !is_files_uri(url)
                })
                .await?
        } else {
            std::borrow::Cow::Borrowed(req)
        };
        let body = request_body(&req, self.who())?;
        let url = if stream {
            format!("{}{model}:streamGenerateContent?alt=sse", self.models_url)
        } else {
            format!("{}{model}:generateContent", self.models_url)
        };
        let body = serde_json::to_vec(&body).map_err(|e| {
            GwError::internal(format!("cannot encode the gemini request: {e}")).with_provider(name)
        })?;
        Ok(self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(ACCEPT, if stream { EVENT_STREAM } else { JSON })
            .body(body))
    }

    /// Sends and waits for the headers; a non-2xx answer becomes an error,
    /// classified by the shared rules and refined with what Google's error
    /// object says (retry delay, prompt too long).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, GwError> {
        let request = match &self.tokens {
            Some(tokens) => {
                let token = tokens.token(&self.peer).await?;
                let mut value =
                    HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                        self.peer.error(
                            ErrorCode::UpstreamError,
                            format!(
                                "provider `{}`: the access token is not a valid header value",
                                self.peer.name()
                            ),
                        )
                    })?;
                value.set_sensitive(true);
                request.header(AUTHORIZATION, value)
            }
            None => request,
        };
        let mut response = crate::http::dispatch(request)
            .await
            .map_err(|e| self.peer.send_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = self
            .peer
            .read_limited(&mut response, ERROR_BODY_LIMIT, false)
            .await
            .unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED
            && let Some(tokens) = &self.tokens
        {
            tokens.invalidate().await;
        }
        let err = self.peer.status_error(status, response.headers(), &body);
        Err(refine_error(&self.peer, err, status, &body))
    }
}

#[derive(Deserialize)]
struct BatchEmbedResponse {
    #[serde(default)]
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    #[serde(default)]
    values: Vec<f32>,
    /// Vertex AI only.
    #[serde(default)]
    statistics: Option<EmbeddingStatistics>,
}

/// Vertex AI's `predict` answer for text embeddings.
#[derive(Deserialize)]
struct PredictResponse {
    #[serde(default)]
    predictions: Vec<Prediction>,
}

#[derive(Deserialize)]
struct Prediction {
    embeddings: ContentEmbedding,
}

#[derive(Deserialize)]
struct EmbeddingStatistics {
    #[serde(default)]
    token_count: Option<f64>,
}

#[async_trait]
impl Provider for Gemini {
    async fn embed(&self, target: &Target, req: &EmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        let name = self.peer.name();
        let model = self.model(target)?;
        let body = self.embed_body(model, req)?;
        let action = if self.tokens.is_some() {
            "predict"
        } else {
            "batchEmbedContents"
        };
        let request = self
            .client
            .post(format!("{}{model}:{action}", self.models_url))
            .headers(self.headers.clone())
            .header(ACCEPT, JSON)
            .body(body);
        let body = self
            .peer
            .call_within(self.timeout(target), self.send(request))
            .await?;
        let invalid = || {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent an invalid embeddings response"),
            )
        };
        let embeddings = if self.tokens.is_some() {
            let parsed: PredictResponse = serde_json::from_slice(&body).map_err(|_| invalid())?;
            parsed.predictions.into_iter().map(|p| p.embeddings).collect()
        } else {
            let parsed: BatchEmbedResponse = serde_json::from_slice(&body).map_err(|_| invalid())?;
            parsed.embeddings
        };
        if embeddings.len() != req.inputs.len() {
            return Err(invalid());
        }
        // Vertex AI counts tokens per input; AI Studio does not: about four
        // characters a token there, marked estimated.
        let counted: Option<Vec<f64>> = embeddings
            .iter()
            .map(|e| e.statistics.as_ref().and_then(|s| s.token_count))
            .collect();
        let (tokens, estimated) = match counted {
            Some(counts) => (counts.iter().sum::<f64>().round() as u32, false),
            None => (
                req.inputs
                    .iter()
                    .map(|i| match &i.value {
                        Some(embedding_input::Value::Text(t)) => {
                            u32::try_from(t.chars().count().div_ceil(4).max(1)).unwrap_or(u32::MAX)
                        }
                        _ => 0,
                    })
                    .fold(0, u32::saturating_add),
                true,
            ),
        };
        Ok(EmbeddingsResponse {
            model: target.model.clone(),
            data: embeddings
                .into_iter()
                .zip(0u32..)
                .map(|(e, index)| Embedding {
                    index,
                    vector: e.values,
                })
                .collect(),
            usage: Some(Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                estimated,
                ..Usage::default()
            }),
            metadata: None,
        })
    }

    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError> {
        let request = self.request(target, req, false).await?;
        let body = self
            .peer
            .call_within(self.timeout(target), self.send(request))
            .await?;
        let name = self.peer.name();
        parse_response(&body, &target.model).ok_or_else(|| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent an invalid response"),
            )
        })
    }

    async fn forward(&self, target: &Target, req: &ForwardRequest) -> Result<ForwardStream, GwError> {
        match req.path.as_str() {
            "images/generations" => self.images(target, req).await,
            other => Err(no_endpoint(target, other)),
        }
    }

    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError> {
        let request = self.request(target, req, true).await?;
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        Ok(Box::pin(decode_stream(
            response.bytes_stream(),
            self.peer.clone(),
            &target.model,
        )))
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Google's error object: `{"error": {"code", "message", "status", "details"}}`.
#[derive(Deserialize)]
struct GoogleErrorEnvelope {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// Adds what only Google's error object says: the `RetryInfo` delay of a 429,
/// and a too-long prompt named as such (param `messages`).
pub(crate) fn refine_error(peer: &Peer, err: GwError, status: StatusCode, body: &[u8]) -> GwError {
    let Ok(google) = serde_json::from_slice::<GoogleErrorEnvelope>(body) else {
        return err;
    };
    let google = google.error;
    if status == StatusCode::TOO_MANY_REQUESTS && err.retry_after_secs().is_none() {
        let delay = google.details.iter().find_map(|d| {
            let kind = d.get("@type")?.as_str()?;
            if !kind.ends_with("google.rpc.RetryInfo") {
                return None;
            }
            parse_duration_secs(d.get("retryDelay")?.as_str()?)
        });
        if let Some(secs) = delay {
            return err.with_retry_after(secs);
        }
        return err;
    }
    let key_invalid = google.message.contains("API key not valid")
        || google
            .details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    if status == StatusCode::BAD_REQUEST && key_invalid {
        let name = peer.name();
        return peer
            .error(
                ErrorCode::UpstreamRejected,
                format!(
                    "provider `{name}` rejected the gateway's credentials (400): the api key is not valid"
                ),
            )
            .with_upstream_status(400);
    }
    if status == StatusCode::BAD_REQUEST && is_context_length(&google.message) {
        let name = peer.name();
        let message: String = google.message.chars().take(512).collect();
        return peer
            .error(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "provider `{name}` rejected the request (400): context_length_exceeded: the prompt is longer than the model's context window: {message}"
                ),
            )
            .with_param("messages")
            .with_upstream_status(400);
    }
    err
}

fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("exceeds the maximum number of tokens")
        || (m.contains("input token count") && m.contains("exceeds"))
}

/// Seconds (rounded up) from a protobuf JSON duration such as `"30s"` or `"1.5s"`.
fn parse_duration_secs(text: &str) -> Option<u32> {
    let secs: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    // Saturating: `as` on a float clamps to the integer's range.
    Some(secs.ceil() as u32)
}

// ---------------------------------------------------------------------------
// Canonical → Gemini

/// A 400 for a parameter this provider cannot honour.
fn unsupported(provider: Who<'_>, param: &str, what: &str) -> GwError {
    GwError::invalid(param, format!("provider {provider} does not support {what}"))
        .with_provider(provider.name)
}

/// A 400 for a value this provider cannot take as given.
fn invalid(provider: Who<'_>, param: &str, what: &str) -> GwError {
    GwError::invalid(param, format!("provider {provider}: {what}")).with_provider(provider.name)
}

/// The `generateContent` body for `req`.
pub(crate) fn request_body(req: &ChatRequest, provider: Who<'_>) -> Result<Value, GwError> {
    reject_unsupported(req, provider)?;
    let mut body = Map::new();
    let (system, contents) = contents(req, provider)?;
    if contents.is_empty() {
        return Err(invalid(
            provider,
            "messages",
            "at least one user or assistant message is required",
        ));
    }
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if !req.tools.is_empty() {
        let mut declarations = Vec::with_capacity(req.tools.len());
        for (i, tool) in req.tools.iter().enumerate() {
            if tool.r#type != "function" && !tool.r#type.is_empty() {
                return Err(unsupported(
                    provider,
                    &format!("tools[{i}].type"),
                    &format!("tools of type `{}`", tool.r#type),
                ));
            }
            let Some(f) = &tool.function else {
                return Err(invalid(
                    provider,
                    &format!("tools[{i}].function"),
                    "a function is required",
                ));
            };
            let mut decl = Map::new();
            decl.insert("name".into(), Value::String(f.name.clone()));
            if let Some(d) = f.description.as_deref().filter(|d| !d.is_empty()) {
                decl.insert("description".into(), Value::String(d.to_owned()));
            }
            if let Some(params) = &f.parameters_json {
                let param = format!("tools[{i}].function.parameters");
                let schema: Value = serde_json::from_str(params)
                    .map_err(|_| invalid(provider, &param, "the parameters are not valid JSON"))?;
                let schema =
                    to_gemini_schema(&schema, &schema, 0).map_err(|what| invalid(provider, &param, &what))?;
                // Gemini rejects an OBJECT without properties (and a schema
                // without a type): a function without parameters has none.
                let empty = schema.as_object().is_none_or(Map::is_empty)
                    || (schema.get("type").and_then(Value::as_str) == Some("OBJECT")
                        && schema
                            .get("properties")
                            .and_then(Value::as_object)
                            .is_none_or(Map::is_empty));
                if !empty {
                    decl.insert("parameters".into(), schema);
                }
            }
            declarations.push(Value::Object(decl));
        }
        body.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
    }
    if let Some(choice) = req.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) {
        let config = match choice {
            tool_choice::Choice::Mode(mode) => {
                let mode = match llmgw_proto::ToolChoiceMode::try_from(*mode) {
                    Ok(llmgw_proto::ToolChoiceMode::None) => "NONE",
                    Ok(llmgw_proto::ToolChoiceMode::Required) => "ANY",
                    _ => "AUTO",
                };
                json!({ "mode": mode })
            }
            tool_choice::Choice::FunctionName(name) => {
                json!({ "mode": "ANY", "allowedFunctionNames": [name] })
            }
        };
        body.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
    }
    let config = generation_config(req, provider)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

/// Every canonical field Gemini has no equivalent for, when it is set.
fn reject_unsupported(req: &ChatRequest, provider: Who<'_>) -> Result<(), GwError> {
    // `{}` asks for nothing; any bias at all cannot be honoured.
    if req
        .logit_bias_json
        .as_deref()
        .is_some_and(|b| !matches!(serde_json::from_str::<Value>(b), Ok(Value::Object(m)) if m.is_empty()))
    {
        return Err(unsupported(provider, "logit_bias", "`logit_bias`"));
    }
    if req.parallel_tool_calls == Some(false) {
        return Err(unsupported(
            provider,
            "parallel_tool_calls",
            "`parallel_tool_calls: false` (the model may always call several functions)",
        ));
    }
    if let Some(tier) = req.service_tier.as_deref()
        && !matches!(tier, "auto" | "default")
    {
        return Err(unsupported(
            provider,
            "service_tier",
            &format!("`service_tier: {tier}`"),
        ));
    }
    if req.store == Some(true) {
        return Err(unsupported(
            provider,
            "store",
            "stored completions (`store: true`)",
        ));
    }
    if req.top_logprobs.is_some() && req.logprobs != Some(true) {
        return Err(invalid(
            provider,
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`",
        ));
    }
    if let Some(extra) = req.extra_json.as_deref()
        && let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(extra)
        && let Some(key) = extra.keys().next()
    {
        return Err(unsupported(provider, key, &format!("the parameter `{key}`")));
    }
    Ok(())
}

fn generation_config(req: &ChatRequest, provider: Who<'_>) -> Result<Map<String, Value>, GwError> {
    let mut c = Map::new();
    if let Some(t) = req.temperature {
        c.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        c.insert("topP".into(), json!(p));
    }
    if let Some(max) = req.max_completion_tokens.or(req.max_tokens) {
        c.insert("maxOutputTokens".into(), json!(max));
    }
    if let Some(stop) = &req.stop
        && !stop.sequences.is_empty()
    {
        c.insert("stopSequences".into(), json!(stop.sequences));
    }
    if let Some(n) = req.n {
        c.insert("candidateCount".into(), json!(n));
    }
    if let Some(seed) = req.seed {
        let seed = i32::try_from(seed)
            .map_err(|_| invalid(provider, "seed", "`seed` must fit in a 32-bit signed integer"))?;
        c.insert("seed".into(), json!(seed));
    }
    if let Some(p) = req.presence_penalty {
        c.insert("presencePenalty".into(), json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        c.insert("frequencyPenalty".into(), json!(p));
    }
    if req.logprobs == Some(true) {
        c.insert("responseLogprobs".into(), Value::Bool(true));
        if let Some(top) = req.top_logprobs {
            c.insert("logprobs".into(), json!(top));
        }
    }
    match req.response_format.as_ref().and_then(|f| f.format.as_ref()) {
        None | Some(response_format::Format::Text(_)) => {}
        Some(response_format::Format::JsonObject(_)) => {
            c.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(response_format::Format::JsonSchema(s)) => {
            c.insert("responseMimeType".into(), json!("application/json"));
            if let Some(text) = &s.schema_json {
                let param = "response_format.json_schema.schema";
                let schema: Value = serde_json::from_str(text)
                    .map_err(|_| invalid(provider, param, "the schema is not valid JSON"))?;
                let schema =
                    to_gemini_schema(&schema, &schema, 0).map_err(|what| invalid(provider, param, &what))?;
                c.insert("responseSchema".into(), schema);
            }
        }
    }
    if let Some(effort) = req.reasoning_effort.as_deref() {
        let budget = match effort {
            "none" | "minimal" => 0,
            "low" => 1024,
            "medium" => 8192,
            "high" => 24576,
            other => {
                return Err(unsupported(
                    provider,
                    "reasoning_effort",
                    &format!("`reasoning_effort: {other}`"),
                ));
            }
        };
        c.insert(
            "thinkingConfig".into(),
            json!({ "thinkingBudget": budget, "includeThoughts": budget > 0 }),
        );
    }
    Ok(c)
}

/// One `contents` turn being built.
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

/// `systemInstruction` parts and `contents`.
fn contents(req: &ChatRequest, provider: Who<'_>) -> Result<(Vec<Value>, Vec<Value>), GwError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::with_capacity(req.messages.len());
    // tool_call_id → function name, from the assistant messages seen so far.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role() {
            Role::System | Role::Developer => {
                system.extend(text_parts(m, i, provider)?);
                continue;
            }
            Role::User | Role::Unspecified => ("user", user_parts(m, i, provider)?),
            Role::Assistant => {
                let mut parts = match &m.content {
                    Some(_) => text_parts(m, i, provider)?,
                    None => Vec::new(),
                };
                if let Some(refusal) = m.refusal.as_deref().filter(|r| !r.is_empty()) {
                    parts.push(json!({ "text": refusal }));
                }
                for (j, call) in m.tool_calls.iter().enumerate() {
                    let f = call.function.as_ref();
                    let name = f.map(|f| f.name.as_str()).unwrap_or_default();
                    let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
                    let args = arguments(
                        f.map(|f| f.arguments.as_str()).unwrap_or_default(),
                        provider,
                        &param,
                    )?;
                    call_names.insert(call.id.as_str(), name);
                    let mut part = json!({ "functionCall": { "name": name, "args": args } });
                    if let Some((_, signature)) = call.id.split_once(SIGNATURE_MARK)
                        && let Some(o) = part.as_object_mut()
                    {
                        o.insert("thoughtSignature".into(), Value::String(signature.to_owned()));
                    }
                    parts.push(part);
                }
                if let Some(f) = &m.function_call {
                    let param = format!("messages[{i}].function_call.arguments");
                    let args = arguments(&f.arguments, provider, &param)?;
                    parts.push(json!({ "functionCall": { "name": f.name, "args": args } }));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let Some(name) = call_names.get(id) else {
                    return Err(invalid(
                        provider,
                        &format!("messages[{i}].tool_call_id"),
                        &format!("no earlier assistant message has a tool call with id `{id}`"),
                    ));
                };
                let text = content_text(m);
                (
                    "user",
                    vec![json!({ "functionResponse": { "name": name, "response": tool_response(&text) } })],
                )
            }
            Role::Function => {
                let name = m.name.as_deref().unwrap_or_default();
                let text = content_text(m);
                (
                    "user",
                    vec![json!({ "functionResponse": { "name": name, "response": tool_response(&text) } })],
                )
            }
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => turns.push(Turn { role, parts }),
        }
    }
    let contents = turns
        .into_iter()
        .map(|t| json!({ "role": t.role, "parts": t.parts }))
        .collect();
    Ok((system, contents))
}

/// Tool-call arguments as a JSON object (Gemini's `args` is a `Struct`).
fn arguments(text: &str, provider: Who<'_>, param: &str) -> Result<Value, GwError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(invalid(provider, param, "the arguments must be a JSON object")),
    }
}

/// A tool result as `functionResponse.response`: its JSON object, or `{"content": text}`.
fn tool_response(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    }
}

/// The text of a message's content (text parts joined).
fn content_text(m: &Message) -> String {
    match m.content.as_ref().and_then(|c| c.value.as_ref()) {
        Some(content::Value::Text(t)) => t.clone(),
        Some(content::Value::Parts(p)) => p
            .parts
            .iter()
            .filter_map(|p| match &p.part {
                Some(content_part::Part::Text(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(""),
        None => String::new(),
    }
}

/// Text-only content (system, developer and assistant messages).
fn text_parts(m: &Message, i: usize, provider: Who<'_>) -> Result<Vec<Value>, GwError> {
    match m.content.as_ref().and_then(|c| c.value.as_ref()) {
        None => Ok(Vec::new()),
        Some(content::Value::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(content::Value::Text(t)) => Ok(vec![json!({ "text": t })]),
        Some(content::Value::Parts(p)) => {
            let mut out = Vec::with_capacity(p.parts.len());
            for (j, part) in p.parts.iter().enumerate() {
                match &part.part {
                    Some(content_part::Part::Text(t) | content_part::Part::Refusal(t)) => {
                        out.push(json!({ "text": t }));
                    }
                    _ => {
                        return Err(unsupported(
                            provider,
                            &format!("messages[{i}].content[{j}]"),
                            "non-text content in this message's role",
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

fn user_parts(m: &Message, i: usize, provider: Who<'_>) -> Result<Vec<Value>, GwError> {
    let parts = match m.content.as_ref().and_then(|c| c.value.as_ref()) {
        None => return Ok(Vec::new()),
        Some(content::Value::Text(t)) => return Ok(vec![json!({ "text": t })]),
        Some(content::Value::Parts(p)) => &p.parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let param = |field: &str| format!("messages[{i}].content[{j}].{field}");
        let value = match &part.part {
            Some(content_part::Part::Text(t)) => json!({ "text": t }),
            Some(content_part::Part::ImageUrl(img)) => media(&img.url, provider, &param("image_url"))?,
            Some(content_part::Part::InputAudio(audio)) => {
                let mime = match audio.format.as_str() {
                    "wav" => "audio/wav",
                    "mp3" => "audio/mp3",
                    other => {
                        return Err(unsupported(
                            provider,
                            &param("input_audio.format"),
                            &format!("audio format `{other}`"),
                        ));
                    }
                };
                json!({ "inlineData": { "mimeType": mime, "data": audio.data } })
            }
            Some(content_part::Part::File(file)) => match &file.file_data {
                Some(data) => media(data, provider, &param("file.file_data"))?,
                None => {
                    return Err(unsupported(
                        provider,
                        &param("file.file_id"),
                        "openai file ids (send `file_data` instead)",
                    ));
                }
            },
            Some(content_part::Part::Refusal(_)) => {
                return Err(invalid(
                    provider,
                    &param("refusal"),
                    "a refusal part is only valid in assistant messages",
                ));
            }
            None => continue,
        };
        out.push(value);
    }
    Ok(out)
}

/// A data URL as `inlineData`, an http(s) URL or `gs://` URI as `fileData` (its MIME type
/// from the extension).
fn media(url: &str, provider: Who<'_>, param: &str) -> Result<Value, GwError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(invalid(provider, param, "the data URL has no data"));
        };
        let Some(mime) = meta.strip_suffix(";base64") else {
            return Err(invalid(provider, param, "only base64 data URLs are supported"));
        };
        if mime.is_empty() {
            return Err(invalid(provider, param, "the data URL has no MIME type"));
        }
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    let lower = url.to_ascii_lowercase();
    if !(fetch::is_http(&lower) || lower.starts_with("gs://")) {
        return Err(invalid(
            provider,
            param,
            "expected a data URL, an http(s) URL or a gs:// URI",
        ));
    }
    let Some(mime) = mime_from_url(&lower) else {
        return Err(invalid(
            provider,
            param,
            "cannot tell the media type from the URL's extension (use .png, .jpg, .webp, .gif, .heic, .pdf, .mp3, .wav, .mp4 ... or a data URL)",
        ));
    };
    Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }))
}

/// A Gemini Files API URI (`https://generativelanguage.googleapis.com/v1beta/files/…`):
/// Gemini reads it itself, so it is passed as `fileData`, not fetched.
fn is_files_uri(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower
        .strip_prefix("https://generativelanguage.googleapis.com/")
        .is_some_and(|path| path.contains("/files/") || path.starts_with("files/"))
}

fn mime_from_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = last.rsplit_once('.')?;
    Some(match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "webm" => "video/webm",
        "txt" => "text/plain",
        _ => return None,
    })
}

/// The keys of Gemini's `Schema` (an OpenAPI 3.0 subset); anything else,
/// such as `additionalProperties`, `$schema` or `strict`, is dropped.
const SCHEMA_KEYS: &[&str] = &[
    "format",
    "title",
    "description",
    "enum",
    "maxItems",
    "minItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "required",
    "propertyOrdering",
    "example",
    "default",
];

/// A JSON schema as Gemini's `Schema`: upper-case types, `nullable` instead
/// of `null` in type lists, `$ref`s inlined, `const` as a one-value `enum`,
/// unsupported keys dropped.
pub(crate) fn to_gemini_schema(root: &Value, schema: &Value, depth: usize) -> Result<Value, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err("the schema is nested too deeply (or its `$ref`s are recursive)".into());
    }
    let Some(obj) = schema.as_object() else {
        return match schema {
            Value::Bool(true) => Ok(Value::Object(Map::new())),
            _ => Err("every schema must be a JSON object".into()),
        };
    };
    if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .ok_or_else(|| format!("cannot resolve `$ref` `{reference}`"))?;
        let mut out = to_gemini_schema(root, target, depth + 1)?;
        if let (Some(d), Some(o)) = (obj.get("description"), out.as_object_mut()) {
            o.insert("description".into(), d.clone());
        }
        return Ok(out);
    }
    let mut out = Map::new();
    match obj.get("type") {
        Some(Value::String(t)) => {
            out.insert("type".into(), Value::String(t.to_ascii_uppercase()));
        }
        Some(Value::Array(types)) => {
            let named: Vec<&str> = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            if named.len() != types.len() {
                out.insert("nullable".into(), Value::Bool(true));
            }
            match named.as_slice() {
                [one] => {
                    out.insert("type".into(), Value::String(one.to_ascii_uppercase()));
                }
                [] => {}
                many => {
                    let branches = many
                        .iter()
                        .map(|t| json!({ "type": t.to_ascii_uppercase() }))
                        .collect();
                    out.insert("anyOf".into(), Value::Array(branches));
                }
            }
        }
        _ if obj.contains_key("properties") => {
            out.insert("type".into(), Value::String("OBJECT".into()));
        }
        _ => {}
    }
    if obj.get("nullable") == Some(&Value::Bool(true)) {
        out.insert("nullable".into(), Value::Bool(true));
    }
    for key in SCHEMA_KEYS {
        if let Some(v) = obj.get(*key) {
            out.insert((*key).into(), v.clone());
        }
    }
    if let Some(c) = obj.get("const") {
        out.insert("enum".into(), json!([c]));
    }
    // Gemini takes `enum` on strings only, and a few formats per type;
    // anything else is dropped rather than failing the whole request.
    if out
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|values| !values.iter().all(Value::is_string))
    {
        out.remove("enum");
    }
    let ty = out.get("type").and_then(Value::as_str).unwrap_or_default();
    let format_ok = match out.get("format").and_then(Value::as_str) {
        None => true,
        Some(f) => matches!(
            (ty, f),
            ("STRING", "enum" | "date-time")
                | ("INTEGER", "int32" | "int64")
                | ("NUMBER", "float" | "double")
        ),
    };
    if !format_ok {
        out.remove("format");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let mut converted = Map::new();
        for (name, prop) in props {
            converted.insert(name.clone(), to_gemini_schema(root, prop, depth + 1)?);
        }
        out.insert("properties".into(), Value::Object(converted));
    }
    if let Some(items) = obj.get("items") {
        out.insert("items".into(), to_gemini_schema(root, items, depth + 1)?);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            let mut nullable = false;
            let mut converted = Vec::with_capacity(branches.len());
            for b in branches {
                if b.get("type").and_then(Value::as_str) == Some("null") {
                    nullable = true;
                    continue;
                }
                converted.push(to_gemini_schema(root, b, depth + 1)?);
            }
            if nullable {
                out.insert("nullable".into(), Value::Bool(true));
            }
            match converted.len() {
                0 => {}
                1 => {
                    if let Some(Value::Object(only)) = converted.pop() {
                        for (k, v) in only {
                            out.entry(k).or_insert(v);
                        }
                    }
                }
                _ => {
                    out.insert("anyOf".into(), Value::Array(converted));
                }
            }
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for b in all {
            if let Value::Object(part) = to_gemini_schema(root, b, depth + 1)? {
                for (k, v) in part {
                    out.entry(k).or_insert(v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------
// Gemini → canonical

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    logprobs_result: Option<Value>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
    #[serde(default)]
    thought_signature: Option<String>,
}

/// A fresh tool call id; a function call's thought signature rides in it
/// (`call_…__thought__<signature>`), so it comes back with the call in the
/// next turn as Gemini requires, and no client has to know about it.
fn call_id(signature: Option<&str>) -> String {
    match signature.filter(|s| !s.is_empty()) {
        Some(sig) => format!("{}{SIGNATURE_MARK}{sig}", new_id("call_")),
        None => new_id("call_"),
    }
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    total_token_count: u32,
    #[serde(default)]
    cached_content_token_count: Option<u32>,
    #[serde(default)]
    thoughts_token_count: Option<u32>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u32>,
}

fn usage_from(u: UsageMetadata) -> Usage {
    let prompt = u
        .prompt_token_count
        .saturating_add(u.tool_use_prompt_token_count.unwrap_or(0));
    let completion = u
        .candidates_token_count
        .saturating_add(u.thoughts_token_count.unwrap_or(0));
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: u.total_token_count.max(prompt.saturating_add(completion)),
        cached_tokens: u.cached_content_token_count.filter(|c| *c > 0),
        reasoning_tokens: u.thoughts_token_count.filter(|c| *c > 0),
        cost_usd: None,
        estimated: false,
    }
}

fn finish_from(reason: &str, has_calls: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// What one candidate's parts say.
#[derive(Default)]
struct PartsOut {
    text: String,
    reasoning: String,
    /// (tool call id, name, arguments)
    calls: Vec<(String, String, String)>,
}

fn read_parts(content: Option<WireContent>) -> PartsOut {
    let mut out = PartsOut::default();
    for part in content.map(|c| c.parts).unwrap_or_default() {
        if let Some(call) = part.function_call {
            let args = call.args.unwrap_or_else(|| Value::Object(Map::new()));
            out.calls.push((
                call_id(part.thought_signature.as_deref()),
                call.name,
                args.to_string(),
            ));
        } else if let Some(text) = part.text {
            if part.thought == Some(true) {
                out.reasoning.push_str(&text);
            } else {
                out.text.push_str(&text);
            }
        }
    }
    out
}

/// Gemini's `logprobsResult` as OpenAI's `logprobs` object (JSON text).
fn logprobs_from(result: &Value) -> Option<String> {
    let chosen = result.get("chosenCandidates")?.as_array()?;
    let top = result.get("topCandidates").and_then(Value::as_array);
    let entry = |c: &Value| {
        json!({
            "token": c.get("token").and_then(Value::as_str).unwrap_or_default(),
            "logprob": c.get("logProbability").and_then(Value::as_f64).unwrap_or(0.0),
            "bytes": Value::Null,
        })
    };
    let content: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = entry(c);
            let alternatives: Vec<Value> = top
                .and_then(|t| t.get(i))
                .and_then(|t| t.get("candidates"))
                .and_then(Value::as_array)
                .map(|a| a.iter().map(entry).collect())
                .unwrap_or_default();
            if let Some(o) = e.as_object_mut() {
                o.insert("top_logprobs".into(), Value::Array(alternatives));
            }
            e
        })
        .collect();
    Some(json!({ "content": content, "refusal": Value::Null }).to_string())
}

fn response_from(resp: GenerateResponse, model: &str) -> ChatResponse {
    let blocked = resp.candidates.is_empty()
        && resp
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some());
    let mut choices: Vec<Choice> = resp
        .candidates
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let index = c.index.unwrap_or(i as u32);
            let logprobs_json = c.logprobs_result.as_ref().and_then(logprobs_from);
            let parts = read_parts(c.content);
            let finish = finish_from(
                c.finish_reason.as_deref().unwrap_or("STOP"),
                !parts.calls.is_empty(),
            );
            let tool_calls: Vec<ToolCall> = parts
                .calls
                .into_iter()
                .map(|(id, name, arguments)| ToolCall {
                    id,
                    r#type: "function".into(),
                    function: Some(FunctionCall { name, arguments }),
                })
                .collect();
            let text = parts.text;
            Choice {
                index,
                message: Some(Message {
                    role: Role::Assistant as i32,
                    content: (!text.is_empty() || tool_calls.is_empty()).then_some(llmgw_proto::Content {
                        value: Some(content::Value::Text(text)),
                    }),
                    tool_calls,
                    reasoning: (!parts.reasoning.is_empty()).then_some(parts.reasoning),
                    ..Message::default()
                }),
                finish_reason: finish as i32,
                logprobs_json,
                stop_sequence: None,
            }
        })
        .collect();
    if blocked {
        choices.push(Choice {
            index: 0,
            message: Some(Message {
                role: Role::Assistant as i32,
                content: Some(llmgw_proto::Content {
                    value: Some(content::Value::Text(String::new())),
                }),
                ..Message::default()
            }),
            finish_reason: FinishReason::ContentFilter as i32,
            logprobs_json: None,
            stop_sequence: None,
        });
    }
    choices.sort_by_key(|c| c.index);
    ChatResponse {
        id: resp
            .response_id
            .map_or_else(|| new_id("chatcmpl-"), |id| format!("chatcmpl-{id}")),
        created: unix_now(),
        model: resp.model_version.unwrap_or_else(|| model.to_owned()),
        choices,
        usage: resp.usage_metadata.map(usage_from),
        ..ChatResponse::default()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `prefix` and 24 base62 characters, unique in this process and unlikely to
/// repeat across processes (splitmix64 over a clock-seeded counter).
pub(crate) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut out = String::with_capacity(prefix.len() + 24);
    out.push_str(prefix);
    for _ in 0..2 {
        let mut z = COUNTER
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(seed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let mut x = z ^ (z >> 31);
        for _ in 0..12 {
            out.push(char::from(ALPHABET[(x % 62) as usize]));
            x /= 62;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Streaming

/// What a stream remembers between events.
struct StreamState {
    id: String,
    created: i64,
    model: String,
    /// Per choice index: the role was sent, how many tool calls so far.
    started: Vec<bool>,
    tool_calls: Vec<u32>,
    finished_any: bool,
    usage: Option<UsageMetadata>,
    /// Set once nothing more is read (end, or an error).
    done: bool,
}

impl StreamState {
    fn new(model: &str) -> Self {
        Self {
            id: new_id("chatcmpl-"),
            created: unix_now(),
            model: model.to_owned(),
            started: Vec::new(),
            tool_calls: Vec::new(),
            finished_any: false,
            usage: None,
            done: false,
        }
    }

    fn slot(&mut self, index: u32) -> usize {
        let i = index as usize;
        if self.started.len() <= i {
            self.started.resize(i + 1, false);
            self.tool_calls.resize(i + 1, 0);
        }
        i
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            ..ChatChunk::default()
        }
    }

    /// One event as a chunk; `None` when it carries nothing for the client
    /// (usage alone is kept for the end).
    fn on_event(&mut self, resp: GenerateResponse) -> Option<ChatChunk> {
        if let Some(u) = resp.usage_metadata {
            self.usage = Some(u);
        }
        if let Some(version) = resp.model_version {
            self.model = version;
        }
        let blocked = resp.candidates.is_empty()
            && resp
                .prompt_feedback
                .as_ref()
                .is_some_and(|f| f.block_reason.is_some());
        let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
        if blocked {
            let i = self.slot(0);
            let first = !self.started[i];
            self.started[i] = true;
            self.finished_any = true;
            choices.push(ChunkChoice {
                index: 0,
                delta: Some(Delta {
                    role: first.then_some(Role::Assistant as i32),
                    content: first.then(String::new),
                    ..Delta::default()
                }),
                finish_reason: FinishReason::ContentFilter as i32,
                logprobs_json: None,
                stop_sequence: None,
            });
        }
        for (n, c) in resp.candidates.into_iter().enumerate() {
            let index = c.index.unwrap_or(n as u32);
            let i = self.slot(index);
            let logprobs_json = c.logprobs_result.as_ref().and_then(logprobs_from);
            let parts = read_parts(c.content);
            let first = !self.started[i];
            self.started[i] = true;
            let mut tool_calls = Vec::with_capacity(parts.calls.len());
            for (id, name, arguments) in parts.calls {
                tool_calls.push(ToolCallDelta {
                    index: self.tool_calls[i],
                    id: Some(id),
                    r#type: Some("function".into()),
                    name: Some(name),
                    arguments: Some(arguments),
                });
                self.tool_calls[i] += 1;
            }
            let finish = match c.finish_reason.as_deref() {
                Some(reason) if reason != "FINISH_REASON_UNSPECIFIED" => {
                    self.finished_any = true;
                    finish_from(reason, self.tool_calls[i] > 0)
                }
                _ => FinishReason::Unspecified,
            };
            let content = if !parts.text.is_empty() || (first && tool_calls.is_empty()) {
                Some(parts.text)
            } else {
                None
            };
            choices.push(ChunkChoice {
                index,
                delta: Some(Delta {
                    role: first.then_some(Role::Assistant as i32),
                    content,
                    tool_calls,
                    refusal: None,
                    reasoning: (!parts.reasoning.is_empty()).then_some(parts.reasoning),
                    thinking_blocks: Vec::new(),
                }),
                finish_reason: finish as i32,
                logprobs_json,
                stop_sequence: None,
            });
        }
        if choices.is_empty() {
            return None;
        }
        Some(self.chunk(choices, None))
    }
}

/// A `generateContent` answer as a canonical response; `None` when it is not one.
pub(crate) fn parse_response(body: &[u8], model: &str) -> Option<ChatResponse> {
    let parsed: GenerateResponse = serde_json::from_slice(body).ok()?;
    Some(response_from(parsed, model))
}

/// A `streamGenerateContent?alt=sse` body as canonical chunks (its SSE
/// framing included); apart from I/O, so the fuzz targets run it on bytes.
pub(crate) fn decode_stream<S>(
    body: S,
    peer: Peer,
    model: &str,
) -> impl Stream<Item = Result<ChatChunk, GwError>> + Send + use<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    Chunks {
        events: EventStream::new(body),
        peer,
        state: StreamState::new(model),
    }
}

pin_project! {
    /// Gemini's SSE events as canonical chunks, yielded as each arrives. Owns
    /// the response body: dropping this drops the connection, which is how a
    /// client's disconnect cancels the call.
    struct Chunks<S> {
        #[pin]
        events: S,
        peer: Peer,
        state: StreamState,
    }
}

impl<S> Stream for Chunks<S>
where
    S: Stream<Item = Result<Event, EventStreamError<reqwest::Error>>>,
{
    type Item = Result<ChatChunk, GwError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if this.state.done {
                return Poll::Ready(None);
            }
            let name = this.peer.name();
            let event = match ready!(this.events.as_mut().poll_next(cx)) {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    this.state.done = true;
                    let err = match &e {
                        EventStreamError::Transport(e) => this.peer.body_error(e),
                        EventStreamError::Utf8(_) | EventStreamError::Parser(_) => this.peer.error(
                            ErrorCode::UpstreamError,
                            format!("provider `{name}` sent a malformed event stream"),
                        ),
                    };
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    // Gemini ends a stream by ending the body.
                    this.state.done = true;
                    if !this.state.finished_any {
                        let err = this.peer.error(
                            ErrorCode::UpstreamError,
                            format!("provider `{name}` closed the stream early"),
                        );
                        return Poll::Ready(Some(Err(err)));
                    }
                    return Poll::Ready(
                        this.state
                            .usage
                            .map(|u| Ok(this.state.chunk(Vec::new(), Some(usage_from(u))))),
                    );
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data.contains("\"error\"")
                && let Some(e) = parse_upstream_error(data.as_bytes())
            {
                this.state.done = true;
                let what = if e.message.is_empty() {
                    "an error mid-stream"
                } else {
                    e.message.as_str()
                };
                return Poll::Ready(Some(Err(this
                    .peer
                    .error(ErrorCode::UpstreamError, format!("provider `{name}`: {what}")))));
            }
            let parsed: GenerateResponse = match serde_json::from_str(data) {
                Ok(p) => p,
                Err(_) => {
                    this.state.done = true;
                    return Poll::Ready(Some(Err(this.peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{name}` sent an invalid stream chunk"),
                    ))));
                }
            };
            if let Some(chunk) = this.state.on_event(parsed) {
                return Poll::Ready(Some(Ok(chunk)));
            }
        }
    }
}

mod imagen;
#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
