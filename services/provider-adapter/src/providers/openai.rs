//! `type: openai`: OpenAI's Chat Completions API, and any host that speaks it
//! (the base URL is config), in three flavours:
//!
//! - OpenAI and the OpenAI-compatible rows (with their quirks);
//! - Azure OpenAI: `{base_url}/openai/deployments/{model}/chat/completions?api-version=…`,
//!   the key in `api-key` (or an Entra ID token as a bearer), no `model` in the body;
//! - Mistral: `random_seed` for `seed`, `any` for the `required` tool choice,
//!   `max_tokens` for `max_completion_tokens`, no `stream_options` (it always
//!   sends usage, on the last chunk), and a clear 400 for what it lacks.
//!
//! The wire format itself lives in `llmgw_kit::openai` (shared with the edge,
//! which speaks it to clients); this module is the HTTP side: the request's
//! URL and headers, and the SSE stream turned into canonical chunks as each
//! event arrives.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{Event, EventStream, EventStreamError};
use futures_util::Stream;
use llmgw_kit::config::{CompatHost, ProviderConfig, ProviderKind};

use llmgw_kit::openai::{
    embeddings_request_json, parse_chunk, parse_embeddings_response, parse_response, parse_upstream_error,
    request_json,
};
use llmgw_kit::services::{ChunkStream, ForwardStream};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ForwardRequest, Target,
};
use pin_project_lite::pin_project;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{Provider, no_endpoint, passthrough, upstream};
use crate::http::Peer;

const ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
const API_KEY: HeaderName = HeaderName::from_static("api-key");
/// The Azure OpenAI GA `api-version` used when the config names none.
pub(crate) const AZURE_API_VERSION: &str = "2024-10-21";
const PROJECT: HeaderName = HeaderName::from_static("openai-project");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// An OpenAI-compatible provider.
pub(crate) struct OpenAi {
    peer: Peer,
    /// `{base_url}/chat/completions`, parsed once.
    url: reqwest::Url,
    /// Sent on every request: the provider's key (marked sensitive), its
    /// organization and project, the content type. Nothing from the client.
    headers: HeaderMap,
    /// The provider's own per-try timeout, used when the target names none.
    timeout: Duration,
    /// The host's quirks (an OpenAI-compatible row); `None` for OpenAI.
    host: Option<&'static CompatHost>,
    flavour: Flavour,
    /// `{base_url}/embeddings` (unused for Azure, whose URL names the deployment).
    embeddings_url: reqwest::Url,
    client: reqwest::Client,
}

/// How this provider departs from OpenAI's own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    OpenAi,
    /// The URL names the deployment (the target model) and the API version;
    /// `url` holds the base.
    Azure,
    Mistral,
}

/// Canonical fields Mistral's chat API does not take: a clear 400 rather
/// than a field silently dropped (or Mistral's 422 for an extra input).
fn mistral_unsupported(req: &ChatRequest) -> Option<&'static str> {
    [
        // `false` is the default, not a request for anything.
        ("logprobs", req.logprobs == Some(true)),
        ("top_logprobs", req.top_logprobs.is_some()),
        ("logit_bias", req.logit_bias_json.is_some()),
        ("user", req.user.is_some()),
        ("service_tier", req.service_tier.is_some()),
        ("store", req.store == Some(true)),
        ("metadata", !req.metadata.is_empty()),
        ("reasoning_effort", req.reasoning_effort.is_some()),
    ]
    .into_iter()
    .find_map(|(param, present)| present.then_some(param))
}

/// Mistral takes only tool-call ids of 9 ASCII letters and digits; any
/// other id (another provider's `call_…`) becomes a stable 9-character hash
/// of itself, so a call and its result still match.
fn mistral_call_id(id: &str) -> Option<String> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    // FNV-1a: stable across processes and versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(9);
    for _ in 0..9 {
        out.push(char::from(ALPHABET[(hash % 62) as usize]));
        hash /= 62;
    }
    Some(out)
}

/// Mistral's error bodies (`{"object": "error", "message": "..." | {"detail":
/// [{"loc": ["body", "seed"], "msg": "..."}]}, "type", "param", "code"}`, or
/// `{"message": "..."}` from its gateway) as OpenAI's error object.
pub(crate) fn mistral_error(body: &[u8]) -> Option<Vec<u8>> {
    use serde_json::{Value, json};

    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("error").is_some() {
        return None;
    }
    let (message, param) = match v.get("message")? {
        Value::String(s) => (
            s.clone(),
            v.get("param").and_then(Value::as_str).map(str::to_owned),
        ),
        Value::Object(o) => {
            let first = o.get("detail").and_then(|d| d.get(0));
            let param = first
                .and_then(|d| d.get("loc"))
                .and_then(Value::as_array)
                .map(|loc| {
                    loc.iter()
                        .skip_while(|p| p.as_str() == Some("body"))
                        .map(|p| match p {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .filter(|p| !p.is_empty());
            let msg = first
                .and_then(|d| d.get("msg"))
                .and_then(Value::as_str)
                .unwrap_or("invalid request");
            let message = match &param {
                Some(p) => format!("`{p}`: {msg}"),
                None => msg.to_owned(),
            };
            (message, param)
        }
        other => (other.to_string(), None),
    };
    let out =
        json!({"error": {"message": message, "type": v.get("type"), "param": param, "code": v.get("code")}});
    Some(out.to_string().into_bytes())
}

/// Azure's 400 `content_filter` (a prompt its filters refused) says so
/// plainly and names `messages` (Azure names `prompt`, which no client sent).
pub(crate) fn azure_error(body: &[u8]) -> Option<Vec<u8>> {
    let e = parse_upstream_error(body)?;
    if e.code.as_deref() != Some("content_filter") {
        return None;
    }
    let out = serde_json::json!({"error": {
        "message": format!("the prompt was refused by azure's content filter: {}", e.message),
        "type": e.kind, "param": "messages", "code": "content_filter"}});
    Some(out.to_string().into_bytes())
}

/// `req` in Mistral's dialect: `seed` → `random_seed`, tool choice `required`
/// → `any`, `max_completion_tokens` → `max_tokens`, `developer` → `system`,
/// tool-call ids Mistral accepts.
/// The renamed fields travel in `extra_json` (written flat into the body).
pub(crate) fn mistral_request(req: &mut ChatRequest) -> Result<(), GwError> {
    use llmgw_proto::{Role, ToolChoiceMode, tool_choice};

    let mut extra = match req.extra_json.take() {
        Some(text) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
        None => serde_json::Map::new(),
    };
    if let Some(seed) = req.seed.take() {
        extra.insert("random_seed".to_owned(), seed.into());
    }
    if let Some(tool_choice::Choice::Mode(mode)) = req.tool_choice.as_ref().and_then(|c| c.choice.as_ref())
        && *mode == ToolChoiceMode::Required as i32
    {
        req.tool_choice = None;
        extra.insert("tool_choice".to_owned(), "any".into());
    }
    if let Some(max) = req.max_completion_tokens.take() {
        req.max_tokens = Some(req.max_tokens.map_or(max, |m| m.min(max)));
    }
    req.stream_options = None;
    for m in &mut req.messages {
        if m.role == Role::Developer as i32 {
            m.role = Role::System as i32;
        }
        for call in &mut m.tool_calls {
            if let Some(id) = mistral_call_id(&call.id) {
                call.id = id;
            }
        }
        if let Some(id) = m.tool_call_id.as_deref().and_then(mistral_call_id) {
            m.tool_call_id = Some(id);
        }
    }
    if !extra.is_empty() {
        req.extra_json = Some(serde_json::Value::Object(extra).to_string());
    }
    Ok(())
}

impl OpenAi {
    pub(crate) fn new(config: &ProviderConfig, client: reqwest::Client) -> Result<Self, GwError> {
        let name = &config.name;
        let invalid =
            |what: &str| GwError::internal(format!("provider `{name}`: {what}")).with_provider(name);
        let flavour = match config.kind {
            ProviderKind::AzureOpenAi => Flavour::Azure,
            ProviderKind::Mistral => Flavour::Mistral,
            _ => Flavour::OpenAi,
        };
        let url = match flavour {
            Flavour::Azure => {
                let mut url = reqwest::Url::parse(&config.base_url)
                    .map_err(|e| invalid(&format!("invalid base_url: {e}")))?;
                let version = config.api_version.as_deref().unwrap_or(AZURE_API_VERSION);
                url.query_pairs_mut().clear().append_pair("api-version", version);
                url
            }
            _ => reqwest::Url::parse(&format!("{}/chat/completions", config.base_url))
                .map_err(|e| invalid(&format!("invalid base_url: {e}")))?,
        };
        let embeddings_url = reqwest::Url::parse(&format!("{}/embeddings", config.base_url))
            .map_err(|e| invalid(&format!("invalid base_url: {e}")))?;
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            let header = HeaderName::try_from(header.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header value")))?;
            headers.insert(header, value);
        }
        headers.insert(CONTENT_TYPE, JSON);
        // Azure takes an Entra ID token as a bearer, else its key in `api-key`.
        let (secret, header, bearer) = match (flavour, &config.azure_ad_token) {
            (Flavour::Azure, Some(token)) => (Some(token), AUTHORIZATION, true),
            (Flavour::Azure, None) => (config.api_key.as_ref(), API_KEY, false),
            _ => (config.api_key.as_ref(), AUTHORIZATION, true),
        };
        if let Some(key) = secret {
            // Never echo the value: it is a secret.
            let text = if bearer {
                format!("Bearer {}", key.expose())
            } else {
                key.expose().to_owned()
            };
            let mut value = HeaderValue::try_from(text)
                .map_err(|_| invalid("the api key is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        for (header, value, field) in [
            (ORGANIZATION, &config.organization, "organization"),
            (PROJECT, &config.project, "project"),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                let value = HeaderValue::try_from(value)
                    .map_err(|_| invalid(&format!("`{field}` is not a valid header value")))?;
                headers.insert(header, value);
            }
        }
        Ok(Self {
            peer: Peer::new(name, secret.cloned()),
            url,
            headers,
            timeout: config.timeout,
            host: match config.kind {
                ProviderKind::Compatible(host) => Some(host),
                _ => None,
            },
            flavour,
            embeddings_url,
            client,
        })
    }

    /// Where to send a request for `model`: Azure names the deployment in
    /// the path (percent-encoded), the others use one URL.
    fn url(&self, model: &str) -> Result<reqwest::Url, GwError> {
        if self.flavour != Flavour::Azure {
            return Ok(self.url.clone());
        }
        self.azure_url(model, &["chat", "completions"])
    }

    /// `{base}/openai/deployments/{model}/{tail}?api-version=…` for Azure.
    fn azure_url(&self, model: &str, tail: &[&str]) -> Result<reqwest::Url, GwError> {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .map_err(|()| GwError::internal("azure base_url cannot take a path"))?
            .pop_if_empty()
            .extend(["openai", "deployments", model])
            .extend(tail);
        Ok(url)
    }

    /// Sends `request` and waits for the headers; Mistral's error bodies are
    /// read in their own shape, Azure's content-filter refusal made plain.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, GwError> {
        match self.flavour {
            Flavour::Mistral => upstream::send(&self.peer, request, mistral_error).await,
            Flavour::Azure => upstream::send(&self.peer, request, azure_error).await,
            Flavour::OpenAi => self.peer.send(request).await,
        }
    }

    fn unsupported(&self, param: &str, what: &str) -> GwError {
        let kind = match (self.flavour, self.host) {
            (Flavour::Mistral, _) => "mistral",
            (Flavour::Azure, _) => "azure-openai",
            (Flavour::OpenAi, Some(host)) => host.type_name,
            (Flavour::OpenAi, None) => "openai",
        };
        GwError::invalid(
            param,
            format!("provider `{}` ({kind}) does not support {what}", self.peer.name()),
        )
        .with_provider(self.peer.name())
    }

    fn timeout(&self, target: &Target) -> Duration {
        crate::http::per_try_timeout(self.timeout, target)
    }

    /// The request for `req`, for the provider's `model`. The body's `stream`
    /// follows the call (whatever the canonical request says), and streams
    /// always ask for usage: the gateway meters every stream (the edge drops
    /// the usage chunk when the client did not ask for it).
    fn request(
        &self,
        target: &Target,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, GwError> {
        if let Some(host) = self.host
            && !host.multiple_choices
            && req.n.is_some_and(|n| n > 1)
        {
            return Err(self.unsupported("n", "`n` > 1"));
        }
        let mut req = if req.stream == stream {
            Cow::Borrowed(req)
        } else {
            Cow::Owned(ChatRequest {
                stream,
                ..req.clone()
            })
        };
        if self.flavour == Flavour::Mistral {
            if let Some(param) = mistral_unsupported(&req) {
                return Err(self.unsupported(param, &format!("`{param}`")));
            }
            mistral_request(req.to_mut()).map_err(|e| e.with_provider(self.peer.name()))?;
        }
        let force_usage =
            stream && self.flavour != Flavour::Mistral && self.host.is_none_or(|h| h.stream_usage);
        // Azure takes the model from the deployment in the URL.
        let model = match self.flavour {
            Flavour::Azure => "",
            _ => target.model.as_str(),
        };
        let mut body = request_json(&req, model, force_usage.then_some(true))
            .map_err(|e| e.with_provider(self.peer.name()))?;
        if self.flavour == Flavour::Azure {
            without_model(&mut body);
        }
        Ok(self
            .client
            .post(self.url(&target.model)?)
            .headers(self.headers.clone())
            .header(ACCEPT, if stream { EVENT_STREAM } else { JSON })
            .body(body))
    }
}

/// Drops the empty `"model":""` that `request_json` writes first, for Azure
/// (cheaper than a parse and a rewrite of the whole body).
fn without_model(body: &mut Vec<u8>) {
    const EMPTY_MODEL: &[u8] = br#"{"model":"","#;
    if body.starts_with(EMPTY_MODEL) {
        body.drain(1..EMPTY_MODEL.len());
    }
}

#[async_trait]
impl Provider for OpenAi {
    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError> {
        let request = self.request(target, req, false)?;
        let body = self
            .peer
            .call_within(self.timeout(target), self.send(request))
            .await?;
        parse_response(&body).map_err(|_| {
            let name = self.peer.name();
            match parse_upstream_error(&body) {
                // Some hosts answer 200 with an error object.
                Some(e) if !e.message.is_empty() => self.peer.error(
                    ErrorCode::UpstreamError,
                    format!("provider `{name}`: {}", e.message),
                ),
                _ => self.peer.error(
                    ErrorCode::UpstreamError,
                    format!("provider `{name}` sent an invalid response"),
                ),
            }
        })
    }

    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError> {
        let request = self.request(target, req, true)?;
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        Ok(Box::pin(decode_stream(
            response.bytes_stream(),
            self.peer.clone(),
        )))
    }

    async fn embed(&self, target: &Target, req: &EmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        let mut req = Cow::Borrowed(req);
        if self.flavour == Flavour::Mistral {
            if req.dimensions.is_some() {
                return Err(self.unsupported("dimensions", "`dimensions`"));
            }
            // Vectors travel as floats inside; the edge writes the client's
            // encoding, so Mistral is simply asked for its default.
            req.to_mut().encoding_format = 0;
        }
        let (url, model) = match self.flavour {
            Flavour::Azure => (self.azure_url(&target.model, &["embeddings"])?, ""),
            _ => (self.embeddings_url.clone(), target.model.as_str()),
        };
        let mut body = embeddings_request_json(&req, model).map_err(|e| e.with_provider(self.peer.name()))?;
        if self.flavour == Flavour::Azure {
            without_model(&mut body);
        }
        let request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(ACCEPT, JSON)
            .body(body);
        let body = self
            .peer
            .call_within(self.timeout(target), self.send(request))
            .await?;
        parse_embeddings_response(&body).map_err(|_| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!(
                    "provider `{}` sent an invalid embeddings response",
                    self.peer.name()
                ),
            )
        })
    }

    async fn forward(&self, target: &Target, req: &ForwardRequest) -> Result<ForwardStream, GwError> {
        let path = passthrough::known_path(&req.path)?;
        let offered = match (self.flavour, self.host) {
            (Flavour::Mistral, _) => false,
            (Flavour::Azure, _) | (Flavour::OpenAi, None) => true,
            (Flavour::OpenAi, Some(host)) => {
                (path == "completions" && host.completions) || (path.starts_with("audio/") && host.audio)
            }
        };
        if !offered {
            return Err(no_endpoint(target, path));
        }
        let tail: Vec<&str> = path.split('/').collect();
        // Azure names the deployment (the target model) in the URL.
        let (url, model) = match self.flavour {
            Flavour::Azure => (self.azure_url(&target.model, &tail)?, None),
            _ => {
                let base = self.embeddings_url.as_str();
                let base = base.strip_suffix("/embeddings").unwrap_or(base);
                let url = reqwest::Url::parse(&format!("{base}/{path}"))
                    .map_err(|e| GwError::internal(format!("invalid url for `{path}`: {e}")))?;
                (url, Some(target.model.as_str()))
            }
        };
        let mut headers = self.headers.clone();
        let body = if req.form.is_empty() {
            passthrough::json_body(&req.json, model)?
        } else {
            let (content_type, body) = passthrough::multipart_body(&req.form, model)?;
            let value = HeaderValue::try_from(content_type)
                .map_err(|_| GwError::internal("invalid multipart content type"))?;
            headers.insert(CONTENT_TYPE, value);
            body
        };
        let request = self.client.post(url).headers(headers).body(body);
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        Ok(passthrough::answer(&self.peer, response))
    }
}

/// A chat completion stream's body as canonical chunks (its SSE framing
/// included); apart from I/O, so the fuzz targets run it on bytes.
pub(crate) fn decode_stream<S>(body: S, peer: Peer) -> impl Stream<Item = Result<ChatChunk, GwError>> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    Chunks {
        events: EventStream::new(body),
        peer,
        finished: false,
        usage: None,
    }
}

pin_project! {
    /// The provider's SSE events as canonical chunks, one per `data:` event,
    /// yielded as each arrives. Owns the response body: dropping this drops
    /// the connection, which is how a client's disconnect cancels the call.
    struct Chunks<S> {
        #[pin]
        events: S,
        peer: Peer,
        // Set after `[DONE]` or an error: nothing more is read.
        finished: bool,
        // A usage-only chunk split off a chunk that also had choices (Mistral
        // sends usage on its last chunk), yielded next.
        usage: Option<ChatChunk>,
    }
}

impl<S> Stream for Chunks<S>
where
    S: Stream<Item = Result<Event, EventStreamError<reqwest::Error>>>,
{
    type Item = Result<ChatChunk, GwError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(usage) = this.usage.take() {
            return Poll::Ready(Some(Ok(usage)));
        }
        loop {
            if *this.finished {
                return Poll::Ready(None);
            }
            let name = this.peer.name();
            let event = match ready!(this.events.as_mut().poll_next(cx)) {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    *this.finished = true;
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
                    *this.finished = true;
                    let err = this.peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{name}` closed the stream early"),
                    );
                    return Poll::Ready(Some(Err(err)));
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                *this.finished = true;
                // One more look, never a wait: when the body's end has already
                // arrived, reading it lets the connection go back to the pool.
                let _ = this.events.as_mut().poll_next(cx);
                return Poll::Ready(None);
            }
            // Cheap pre-check: a chunk never has an `"error"` key, and text
            // inside a chunk's strings has its quotes escaped.
            if (event.event == "error" || data.contains("\"error\""))
                && let Some(e) = parse_upstream_error(data.as_bytes())
            {
                *this.finished = true;
                let what = if e.message.is_empty() {
                    "an error mid-stream"
                } else {
                    e.message.as_str()
                };
                return Poll::Ready(Some(Err(this
                    .peer
                    .error(ErrorCode::UpstreamError, format!("provider `{name}`: {what}")))));
            }
            if event.event == "error" {
                *this.finished = true;
                let err = this.peer.error(
                    ErrorCode::UpstreamError,
                    format!("provider `{name}` sent an error event"),
                );
                return Poll::Ready(Some(Err(err)));
            }
            return Poll::Ready(Some(match parse_chunk(data.as_bytes()) {
                // Nothing for the client: Azure opens with a chunk carrying
                // only `prompt_filter_results`.
                Ok(chunk) if chunk.choices.is_empty() && chunk.usage.is_none() => continue,
                Ok(mut chunk) => {
                    if !chunk.choices.is_empty()
                        && let Some(usage) = chunk.usage.take()
                    {
                        *this.usage = Some(ChatChunk {
                            id: chunk.id.clone(),
                            created: chunk.created,
                            model: chunk.model.clone(),
                            usage: Some(usage),
                            ..ChatChunk::default()
                        });
                    }
                    Ok(chunk)
                }
                Err(_) => {
                    *this.finished = true;
                    Err(this.peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{name}` sent an invalid stream chunk"),
                    ))
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use llmgw_kit::config::Config;
    use llmgw_proto::{Message, Role, ToolChoice, ToolChoiceMode, tool_choice};

    use super::*;

    fn provider(yaml: &str) -> Result<OpenAi, Box<dyn std::error::Error>> {
        let text = format!("data_dir: /tmp\nproviders:\n{yaml}models: []\n");
        let env = HashMap::from([("KEY".to_owned(), "k-1".to_owned())]);
        let config = Config::parse(&text, "test.yaml", &env).map_err(|e| e.message)?;
        let p = config.providers.first().ok_or("no provider")?;
        Ok(OpenAi::new(p, crate::http::client()?)?)
    }

    fn target(model: &str) -> Target {
        Target {
            model: model.to_owned(),
            ..Target::default()
        }
    }

    fn hello() -> ChatRequest {
        ChatRequest {
            model: "m".to_owned(),
            messages: vec![Message {
                role: Role::User as i32,
                content: Some(llmgw_proto::Content {
                    value: Some(llmgw_proto::content::Value::Text("hi".to_owned())),
                }),
                ..Message::default()
            }],
            ..ChatRequest::default()
        }
    }

    fn body(b: &reqwest::RequestBuilder) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let req = b.try_clone().ok_or("clone")?.build()?;
        let bytes = req.body().and_then(|b| b.as_bytes()).ok_or("no body")?;
        Ok(serde_json::from_slice(bytes)?)
    }

    #[test]
    fn azure_url_header_and_body_without_model() -> Result<(), Box<dyn std::error::Error>> {
        let p = provider(
            "  - name: az\n    type: azure-openai\n    base_url: https://r.openai.azure.com/\n    api_key: ${KEY}\n",
        )?;
        let b = p.request(&target("my deploy"), &hello(), true)?;
        let built = b.try_clone().ok_or("clone")?.build()?;
        assert_eq!(
            built.url().as_str(),
            "https://r.openai.azure.com/openai/deployments/my%20deploy/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(built.headers()["api-key"], "k-1");
        assert!(built.headers().get(AUTHORIZATION).is_none());
        let json = body(&b)?;
        assert!(json.get("model").is_none(), "{json}");
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert_eq!(json["messages"][0]["content"], "hi");

        let p = provider(
            "  - name: az\n    type: azure-openai\n    base_url: https://r.openai.azure.com\n    azure_ad_token: ${KEY}\n    api_version: 2025-01-01-preview\n",
        )?;
        let built = p.request(&target("d"), &hello(), false)?.build()?;
        assert_eq!(built.url().query(), Some("api-version=2025-01-01-preview"));
        assert_eq!(built.headers()[AUTHORIZATION], "Bearer k-1");
        assert!(built.headers().get("api-key").is_none());
        Ok(())
    }

    #[test]
    fn mistral_renames_and_refuses() -> Result<(), Box<dyn std::error::Error>> {
        let p = provider("  - name: mi\n    type: mistral\n    api_key: ${KEY}\n")?;
        let mut req = hello();
        req.seed = Some(7);
        req.max_completion_tokens = Some(20);
        req.tool_choice = Some(ToolChoice {
            choice: Some(tool_choice::Choice::Mode(ToolChoiceMode::Required as i32)),
        });
        req.extra_json = Some(r#"{"safe_prompt":true}"#.to_owned());
        req.messages[0].role = Role::Developer as i32;
        let b = p.request(&target("mistral-small-latest"), &req, true)?;
        assert_eq!(
            b.try_clone().ok_or("clone")?.build()?.url().as_str(),
            "https://api.mistral.ai/v1/chat/completions"
        );
        let json = body(&b)?;
        assert_eq!(json["random_seed"], 7);
        assert!(json.get("seed").is_none());
        assert_eq!(json["tool_choice"], "any");
        assert_eq!(json["max_tokens"], 20);
        assert!(json.get("max_completion_tokens").is_none());
        assert!(json.get("stream_options").is_none(), "{json}");
        assert_eq!(json["safe_prompt"], true);
        assert_eq!(json["messages"][0]["role"], "system");
        assert_eq!(json["model"], "mistral-small-latest");

        for (param, edit) in [
            (
                "logprobs",
                (|r: &mut ChatRequest| r.logprobs = Some(true)) as fn(&mut ChatRequest),
            ),
            ("logit_bias", |r| r.logit_bias_json = Some("{}".to_owned())),
            ("user", |r| r.user = Some("u".to_owned())),
        ] {
            let mut req = hello();
            edit(&mut req);
            let err = p.request(&target("m"), &req, false).err().ok_or("accepted")?;
            assert_eq!(err.param(), Some(param));
            assert!(err.message().contains("`mi` (mistral)"), "{}", err.message());
        }
        Ok(())
    }

    #[test]
    fn mistral_ids_and_errors() {
        assert_eq!(mistral_call_id("aB3dE6gH9"), None);
        let id = mistral_call_id("call_abc123").unwrap_or_default();
        assert_eq!(id.len(), 9);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(mistral_call_id("call_abc123"), Some(id), "stable");

        let body = br#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","seed"],"msg":"Extra inputs are not permitted","input":7}]},"type":"invalid_request_error","param":null,"code":null}"#;
        let e = mistral_error(body).and_then(|b| llmgw_kit::openai::parse_upstream_error(&b));
        let e = e.unwrap_or_default();
        assert_eq!(e.param.as_deref(), Some("seed"));
        assert_eq!(e.message, "`seed`: Extra inputs are not permitted");
        let e = mistral_error(br#"{"message":"Unauthorized","request_id":"x"}"#)
            .and_then(|b| llmgw_kit::openai::parse_upstream_error(&b))
            .unwrap_or_default();
        assert_eq!(e.message, "Unauthorized");
        assert_eq!(mistral_error(br#"{"error":{"message":"x"}}"#), None);
    }

    #[test]
    fn azure_content_filter_is_plain() {
        let body = br#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        let e = azure_error(body)
            .and_then(|b| parse_upstream_error(&b))
            .unwrap_or_default();
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(
            e.message
                .starts_with("the prompt was refused by azure's content filter: The response was filtered")
        );
        assert_eq!(azure_error(br#"{"error":{"message":"x","code":"429"}}"#), None);
    }

    #[test]
    fn compatible_host_refuses_n() -> Result<(), Box<dyn std::error::Error>> {
        let p = provider("  - name: gq\n    type: groq\n    api_key: ${KEY}\n")?;
        let mut req = hello();
        req.n = Some(2);
        let err = p.request(&target("m"), &req, false).err().ok_or("accepted")?;
        assert_eq!(err.param(), Some("n"));
        assert!(err.message().contains("`gq` (groq)"), "{}", err.message());
        Ok(())
    }
}
