//! `type: ollama`: Ollama's native chat API, `POST {base_url}/api/chat`.
//!
//! Request: `{model, messages: [{role, content, images, tool_calls, thinking, tool_name}],
//! tools, format, options: {temperature, top_p, num_predict, stop, seed, presence_penalty,
//! frequency_penalty}, stream, think}`. Content parts are joined into one string; images must
//! be inline bytes (a data URL's base64 is sent as is; an http(s) URL is fetched through the
//! guard in [`crate::fetch`] and its bytes inlined); tool-call arguments travel as JSON objects; `json_object`
//! is `format: "json"` and `json_schema` is the schema itself as `format`.
//!
//! Ollama has no `n`, `logprobs`, `logit_bias` or forced tool choice: asking for them is a
//! 400 naming the parameter and the provider, never a silent drop.
//!
//! Response: one object with `done: true`, `done_reason`, `prompt_eval_count` and
//! `eval_count`; a stream is NDJSON (one such object per line, the last with `done: true`),
//! turned into canonical chunks as each line arrives: a role chunk, content (and reasoning)
//! deltas, tool calls (Ollama sends each whole), a finish chunk, and a usage-only chunk.
//! Errors are `{"error": "..."}`.
//!
//! Embeddings: `POST {base_url}/api/embed` with `{model, input: string|[string], dimensions}`
//! (and the client's extra fields, such as `truncate` or `keep_alive`) answers
//! `{embeddings: [[...]], prompt_eval_count}`. Ollama embeds text only: token-id inputs are
//! a 400 naming `input`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use llmgw_kit::config::ProviderConfig;
use llmgw_kit::grpc::MAX_MESSAGE_BYTES;
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, Embedding, EmbeddingsRequest,
    EmbeddingsResponse, FinishReason, FunctionCall, Message, Role, Target, ToolCall, ToolCallDelta,
    ToolChoiceMode, Usage, content, content_part, embedding_input, response_format, tool_choice,
};
use pin_project_lite::pin_project;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Provider, upstream};
use crate::fetch::Fetcher;
use crate::http::Peer;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NDJSON: HeaderValue = HeaderValue::from_static("application/x-ndjson");

/// An Ollama server.
pub(crate) struct Ollama {
    peer: Peer,
    /// `{base_url}/api/chat`, parsed once.
    url: reqwest::Url,
    /// Sent on every request: the configured headers, a bearer key when one
    /// is configured (for an Ollama behind an authenticating proxy).
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
    /// Fetches http(s) image URLs: Ollama only takes inline bytes.
    fetcher: Fetcher,
}

// ---- wire: request ---------------------------------------------------------

#[derive(Serialize)]
struct RequestOut<'a> {
    model: &'a str,
    messages: Vec<MessageOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<FormatOut<'a>>,
    #[serde(skip_serializing_if = "OptionsOut::is_empty")]
    options: OptionsOut<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<bool>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum FormatOut<'a> {
    Json(&'static str),
    Schema(&'a RawValue),
}

#[derive(Serialize, Default)]
struct OptionsOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
}

impl OptionsOut<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.num_predict.is_none()
            && self.stop.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
    }
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    function: FunctionCallOut<'a>,
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    name: &'a str,
    arguments: &'a RawValue,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDefOut<'a>,
}

#[derive(Serialize)]
struct FunctionDefOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
}

// ---- wire: response --------------------------------------------------------

#[derive(Deserialize)]
struct ChatIn {
    #[serde(default)]
    model: String,
    #[serde(default)]
    message: Option<MessageIn>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    content: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallIn>,
}

#[derive(Deserialize)]
struct ToolCallIn {
    #[serde(default)]
    id: Option<String>,
    function: FunctionCallIn,
}

#[derive(Deserialize)]
struct FunctionCallIn {
    name: String,
    #[serde(default)]
    arguments: Option<Box<RawValue>>,
}

impl FunctionCallIn {
    /// The arguments as JSON text: an object as sent, a string decoded.
    fn arguments(&self) -> String {
        match self.arguments.as_deref() {
            None => "{}".to_owned(),
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(text) => text,
                Err(_) => raw.get().to_owned(),
            },
        }
    }
}

/// Unique enough ids for responses and tool calls Ollama does not name.
fn next_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}{:016x}", nanos ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

fn finish(done_reason: Option<&str>, tool_calls: bool) -> FinishReason {
    match done_reason {
        _ if tool_calls => FinishReason::ToolCalls,
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

fn usage(c: &ChatIn) -> Usage {
    let (p, c) = (c.prompt_eval_count.unwrap_or(0), c.eval_count.unwrap_or(0));
    Usage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p.saturating_add(c),
        ..Usage::default()
    }
}

impl Ollama {
    pub(crate) fn new(config: &ProviderConfig, client: reqwest::Client) -> Result<Self, GwError> {
        let name = &config.name;
        let invalid =
            |what: &str| GwError::internal(format!("provider `{name}`: {what}")).with_provider(name);
        let url = reqwest::Url::parse(&format!("{}/api/chat", config.base_url))
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
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| invalid("the api key is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(Self {
            peer: Peer::new(name, config.api_key.clone()),
            url,
            headers,
            timeout: config.timeout,
            client,
            fetcher: Fetcher::new(),
        })
    }

    fn timeout(&self, target: &Target) -> Duration {
        crate::http::per_try_timeout(self.timeout, target)
    }

    fn unsupported(&self, param: &str, what: &str) -> GwError {
        GwError::invalid(
            param,
            format!("provider `{}` (ollama) does not support {what}", self.peer.name()),
        )
        .with_provider(self.peer.name())
    }

    /// The `/api/chat` body for `req`, its http(s) images fetched and
    /// inlined first (after the cheap checks, so a request refused anyway
    /// fetches nothing).
    async fn fetch_and_body(
        &self,
        target: &Target,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<Vec<u8>, GwError> {
        self.check(req)?;
        let req = self
            .fetcher
            .inline_images(req, (self.peer.name(), "ollama"), |_, _| true)
            .await?;
        self.body(target, &req, stream)
    }

    /// What Ollama cannot do at all.
    fn check(&self, req: &ChatRequest) -> Result<(), GwError> {
        if req.n.is_some_and(|n| n > 1) {
            return Err(self.unsupported("n", "`n` > 1"));
        }
        if req.logprobs == Some(true) {
            return Err(self.unsupported("logprobs", "`logprobs`"));
        }
        if req.top_logprobs.is_some() {
            return Err(self.unsupported("top_logprobs", "`top_logprobs`"));
        }
        if req.logit_bias_json.is_some() {
            return Err(self.unsupported("logit_bias", "`logit_bias`"));
        }
        Ok(())
    }

    /// The `/api/chat` body for `req`, whose images are inline by now.
    fn body(&self, target: &Target, req: &ChatRequest, stream: bool) -> Result<Vec<u8>, GwError> {
        self.check(req)?;
        let mut send_tools = true;
        match req.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) {
            Some(tool_choice::Choice::Mode(m)) if *m == ToolChoiceMode::None as i32 => send_tools = false,
            Some(tool_choice::Choice::Mode(m)) if *m == ToolChoiceMode::Required as i32 => {
                return Err(self.unsupported("tool_choice", "a required tool choice"));
            }
            Some(tool_choice::Choice::FunctionName(_)) => {
                return Err(self.unsupported("tool_choice", "a named tool choice"));
            }
            _ => {}
        }

        // Tool results name their function; Ollama wants the name, not the call id.
        let mut call_names: HashMap<&str, &str> = HashMap::new();
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.iter().enumerate() {
            let role = match Role::try_from(m.role).unwrap_or(Role::User) {
                Role::System | Role::Developer => "system",
                Role::User | Role::Unspecified => "user",
                Role::Assistant => "assistant",
                Role::Tool | Role::Function => "tool",
            };
            let mut text = String::new();
            let mut images = Vec::new();
            match m.content.as_ref().and_then(|c| c.value.as_ref()) {
                None => {}
                Some(content::Value::Text(t)) => text.push_str(t),
                Some(content::Value::Parts(parts)) => {
                    for (j, part) in parts.parts.iter().enumerate() {
                        let param = || format!("messages[{i}].content[{j}]");
                        match &part.part {
                            Some(content_part::Part::Text(t) | content_part::Part::Refusal(t)) => {
                                if !text.is_empty() {
                                    text.push('\n');
                                }
                                text.push_str(t);
                            }
                            Some(content_part::Part::ImageUrl(image)) => {
                                images.push(self.image(&image.url, &param())?);
                            }
                            Some(content_part::Part::InputAudio(_)) => {
                                return Err(self.unsupported(&param(), "audio input"));
                            }
                            Some(content_part::Part::File(_)) => {
                                return Err(self.unsupported(&param(), "file input"));
                            }
                            None => {}
                        }
                    }
                }
            }
            let mut tool_calls = Vec::with_capacity(m.tool_calls.len());
            for (j, call) in m.tool_calls.iter().enumerate() {
                let Some(f) = &call.function else { continue };
                call_names.insert(&call.id, &f.name);
                let args = if f.arguments.trim().is_empty() {
                    "{}"
                } else {
                    f.arguments.as_str()
                };
                let arguments = llmgw_kit::openai::raw_strict(args)
                    .ok()
                    .filter(|raw| raw.get().trim_start().starts_with('{'))
                    .ok_or_else(|| {
                        GwError::invalid(
                            format!("messages[{i}].tool_calls[{j}].function.arguments"),
                            "tool call arguments must be a JSON object for ollama",
                        )
                        .with_provider(self.peer.name())
                    })?;
                tool_calls.push(ToolCallOut {
                    function: FunctionCallOut {
                        name: &f.name,
                        arguments,
                    },
                });
            }
            let tool_name = match (role, m.tool_call_id.as_deref()) {
                ("tool", Some(id)) => call_names.get(id).copied().or(m.name.as_deref()),
                _ => None,
            };
            messages.push(MessageOut {
                role,
                content: text,
                images,
                tool_calls,
                thinking: m.reasoning.as_deref(),
                tool_name,
            });
        }
        let tools = if send_tools {
            req.tools
                .iter()
                .filter_map(|t| {
                    let f = t.function.as_ref()?;
                    Some(ToolOut {
                        kind: "function",
                        function: FunctionDefOut {
                            name: &f.name,
                            description: f.description.as_deref(),
                            parameters: f
                                .parameters_json
                                .as_deref()
                                .and_then(|p| llmgw_kit::openai::raw_strict(p).ok()),
                        },
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let format = match req.response_format.as_ref().and_then(|f| f.format.as_ref()) {
            Some(response_format::Format::JsonObject(true)) => Some(FormatOut::Json("json")),
            Some(response_format::Format::JsonSchema(s)) => match s.schema_json.as_deref() {
                Some(schema) => Some(FormatOut::Schema(llmgw_kit::openai::raw_strict(schema).map_err(
                    |_| {
                        GwError::invalid(
                            "response_format.json_schema.schema",
                            "the schema is not valid JSON",
                        )
                    },
                )?)),
                None => Some(FormatOut::Json("json")),
            },
            _ => None,
        };
        let extra = match req.extra_json.as_deref() {
            Some(text) => serde_json::from_str::<Map<String, Value>>(text)
                .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
            None => Map::new(),
        };
        let out = RequestOut {
            model: &target.model,
            messages,
            tools,
            format,
            options: OptionsOut {
                temperature: req.temperature,
                top_p: req.top_p,
                num_predict: req.max_completion_tokens.or(req.max_tokens),
                stop: req.stop.as_ref().map(|s| s.sequences.as_slice()),
                seed: req.seed,
                presence_penalty: req.presence_penalty,
                frequency_penalty: req.frequency_penalty,
            },
            stream,
            think: req.reasoning_effort.as_deref().map(|effort| effort != "none"),
            extra,
        };
        serde_json::to_vec(&out).map_err(|e| {
            GwError::internal(format!("cannot write request: {e}")).with_provider(self.peer.name())
        })
    }

    /// A data URL's base64 payload (http(s) URLs were fetched into data
    /// URLs already); anything else is refused.
    fn image<'a>(&self, url: &'a str, param: &str) -> Result<&'a str, GwError> {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((_, data)) = rest.split_once(";base64,")
        {
            return Ok(data);
        }
        Err(self.unsupported(
            &format!("{param}.image_url"),
            "this image url (send an http(s) url or a base64 data url)",
        ))
    }

    /// Sends `body` and waits for the headers; a non-2xx answer becomes an
    /// error carrying Ollama's `{"error": "..."}` message.
    async fn send(&self, body: Vec<u8>, stream: bool) -> Result<reqwest::Response, GwError> {
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(ACCEPT, if stream { NDJSON } else { JSON })
            .body(body);
        upstream::send(&self.peer, request, openai_error)
            .await
            // Ollama's 404 is a model it does not have (its message names it).
            .map_err(|e| match e.upstream_status() {
                Some(404) => e.with_param("model"),
                _ => e,
            })
    }
}

/// Ollama's `{"error": "..."}` as the OpenAI error object the shared
/// classifier reads.
pub(crate) fn openai_error(body: &[u8]) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Error {
        error: String,
    }
    let e = serde_json::from_slice::<Error>(body).ok()?;
    Some(
        serde_json::json!({ "error": { "message": e.error } })
            .to_string()
            .into_bytes(),
    )
}

pub(crate) fn response(body: &[u8]) -> Result<ChatResponse, String> {
    let c: ChatIn = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(e) = &c.error {
        return Err(e.clone());
    }
    let m = c.message.as_ref();
    let tool_calls: Vec<ToolCall> = m
        .map(|m| m.tool_calls.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| ToolCall {
            id: t.id.clone().unwrap_or_else(|| next_id("call_")),
            r#type: "function".to_owned(),
            function: Some(FunctionCall {
                name: t.function.name.clone(),
                arguments: t.function.arguments(),
            }),
        })
        .collect();
    let text = m.map(|m| m.content.clone()).unwrap_or_default();
    // A tool-call-only answer has no content (`null`), as OpenAI sends it.
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(llmgw_proto::Content {
            value: Some(content::Value::Text(text)),
        })
    };
    let finish = finish(c.done_reason.as_deref(), !tool_calls.is_empty());
    Ok(ChatResponse {
        id: next_id("chatcmpl-"),
        created: unix_now(),
        model: c.model.clone(),
        choices: vec![Choice {
            index: 0,
            message: Some(Message {
                role: Role::Assistant as i32,
                content,
                tool_calls,
                reasoning: m.and_then(|m| m.thinking.clone()).filter(|t| !t.is_empty()),
                ..Message::default()
            }),
            finish_reason: finish as i32,
            logprobs_json: None,
            stop_sequence: None,
        }],
        usage: Some(usage(&c)),
        ..ChatResponse::default()
    })
}

#[derive(Serialize)]
struct EmbedOut<'a> {
    model: &'a str,
    input: EmbedInput<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbedInput<'a> {
    One(&'a str),
    Many(Vec<&'a str>),
}

#[derive(Deserialize)]
struct EmbedIn {
    #[serde(default)]
    model: String,
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
}

impl Ollama {
    /// The `/api/embed` body for `req`: text inputs only.
    fn embed_body(&self, target: &Target, req: &EmbeddingsRequest) -> Result<Vec<u8>, GwError> {
        let mut texts = Vec::with_capacity(req.inputs.len());
        for input in &req.inputs {
            match &input.value {
                Some(embedding_input::Value::Text(t)) => texts.push(t.as_str()),
                _ => return Err(self.unsupported("input", "token-id inputs (send text)")),
            }
        }
        let input = match texts.as_slice() {
            [one] if req.single => EmbedInput::One(one),
            _ => EmbedInput::Many(texts),
        };
        let extra = match req.extra_json.as_deref() {
            Some(text) => serde_json::from_str::<Map<String, Value>>(text)
                .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
            None => Map::new(),
        };
        serde_json::to_vec(&EmbedOut {
            model: &target.model,
            input,
            dimensions: req.dimensions,
            extra,
        })
        .map_err(|e| GwError::internal(format!("cannot write request: {e}")).with_provider(self.peer.name()))
    }
}

#[async_trait]
impl Provider for Ollama {
    async fn embed(&self, target: &Target, req: &EmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        let body = self.embed_body(target, req)?;
        let url = self.url.join("embed").map_err(|e| {
            GwError::internal(format!("cannot build the embed url: {e}")).with_provider(self.peer.name())
        })?;
        let request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(ACCEPT, JSON)
            .body(body);
        let timeout = self.timeout(target);
        let call = async {
            let mut response =
                upstream::send(&self.peer, request, openai_error)
                    .await
                    .map_err(|e| match e.upstream_status() {
                        Some(404) => e.with_param("model"),
                        _ => e,
                    })?;
            self.peer
                .read_limited(&mut response, MAX_MESSAGE_BYTES, true)
                .await
        };
        let body = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        let name = self.peer.name();
        let invalid = || {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent an invalid embeddings response"),
            )
        };
        let parsed: EmbedIn = serde_json::from_slice(&body).map_err(|_| invalid())?;
        if parsed.embeddings.len() != req.inputs.len() {
            return Err(invalid());
        }
        let tokens = parsed.prompt_eval_count.unwrap_or(0);
        Ok(EmbeddingsResponse {
            model: if parsed.model.is_empty() {
                target.model.clone()
            } else {
                parsed.model
            },
            data: parsed
                .embeddings
                .into_iter()
                .zip(0u32..)
                .map(|(vector, index)| Embedding { index, vector })
                .collect(),
            usage: Some(Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                ..Usage::default()
            }),
            metadata: None,
        })
    }

    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError> {
        let body = self.fetch_and_body(target, req, false).await?;
        let body = self
            .peer
            .call_within(self.timeout(target), self.send(body, false))
            .await?;
        let name = self.peer.name();
        response(&body).map_err(|e| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent an invalid response: {e}"),
            )
        })
    }

    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError> {
        let body = self.fetch_and_body(target, req, true).await?;
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.send(body, true))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        Ok(Box::pin(decode_stream(
            response.bytes_stream(),
            self.peer.clone(),
        )))
    }
}

/// An `/api/chat` stream's body (NDJSON) as canonical chunks; apart from
/// I/O, so the fuzz targets run it on bytes.
pub(crate) fn decode_stream<S>(body: S, peer: Peer) -> impl Stream<Item = Result<ChatChunk, GwError>> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    Lines {
        body,
        state: StreamState {
            peer,
            id: next_id("chatcmpl-"),
            created: unix_now(),
            buf: Vec::new(),
            pending: VecDeque::new(),
            started: false,
            tool_calls: 0,
            finished: false,
            failed: None,
        },
    }
}

/// What a stream has seen so far.
struct StreamState {
    peer: Peer,
    id: String,
    created: i64,
    /// Bytes of a line not yet ended.
    buf: Vec<u8>,
    /// Chunks made from lines already read, yielded first.
    pending: VecDeque<ChatChunk>,
    /// The role chunk went out.
    started: bool,
    /// Tool calls so far (their delta index).
    tool_calls: u32,
    /// After `done: true` or an error: nothing more is read.
    finished: bool,
    /// A line's error, yielded after the chunks of the lines before it that
    /// came in the same read (as they would have, read apart).
    failed: Option<GwError>,
}

impl StreamState {
    fn chunk(&self, model: &str, delta: Delta, finish: FinishReason) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            created: self.created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Some(delta),
                finish_reason: finish as i32,
                logprobs_json: None,
                stop_sequence: None,
            }],
            ..ChatChunk::default()
        }
    }

    /// Turns one NDJSON line into chunks on `pending`.
    fn line(&mut self, line: &[u8]) -> Result<(), GwError> {
        let name = self.peer.name();
        let c: ChatIn = serde_json::from_slice(line).map_err(|_| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent an invalid stream line"),
            )
        })?;
        if let Some(e) = &c.error {
            return Err(self
                .peer
                .error(ErrorCode::UpstreamError, format!("provider `{name}`: {e}")));
        }
        if !self.started {
            self.started = true;
            let role = Delta {
                role: Some(Role::Assistant as i32),
                content: Some(String::new()),
                ..Delta::default()
            };
            self.pending
                .push_back(self.chunk(&c.model, role, FinishReason::Unspecified));
        }
        if let Some(m) = &c.message {
            if let Some(thinking) = m.thinking.as_ref().filter(|t| !t.is_empty()) {
                let delta = Delta {
                    reasoning: Some(thinking.clone()),
                    ..Delta::default()
                };
                self.pending
                    .push_back(self.chunk(&c.model, delta, FinishReason::Unspecified));
            }
            if !m.content.is_empty() {
                let delta = Delta {
                    content: Some(m.content.clone()),
                    ..Delta::default()
                };
                self.pending
                    .push_back(self.chunk(&c.model, delta, FinishReason::Unspecified));
            }
            if !m.tool_calls.is_empty() {
                let mut calls = Vec::with_capacity(m.tool_calls.len());
                for t in &m.tool_calls {
                    calls.push(ToolCallDelta {
                        index: self.tool_calls,
                        id: Some(t.id.clone().unwrap_or_else(|| next_id("call_"))),
                        r#type: Some("function".to_owned()),
                        name: Some(t.function.name.clone()),
                        arguments: Some(t.function.arguments()),
                    });
                    self.tool_calls += 1;
                }
                let delta = Delta {
                    tool_calls: calls,
                    ..Delta::default()
                };
                self.pending
                    .push_back(self.chunk(&c.model, delta, FinishReason::Unspecified));
            }
        }
        if c.done {
            self.finished = true;
            let finish = finish(c.done_reason.as_deref(), self.tool_calls > 0);
            self.pending
                .push_back(self.chunk(&c.model, Delta::default(), finish));
            self.pending.push_back(ChatChunk {
                id: self.id.clone(),
                created: self.created,
                model: c.model.clone(),
                usage: Some(usage(&c)),
                ..ChatChunk::default()
            });
        }
        Ok(())
    }

    /// Reads every complete line in `buf`.
    fn lines(&mut self) -> Result<(), GwError> {
        while !self.finished
            && let Some(at) = self.buf.iter().position(|b| *b == b'\n')
        {
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            let line = line.trim_ascii();
            if !line.is_empty() {
                self.line(line)?;
            }
        }
        if self.buf.len() > MAX_MESSAGE_BYTES {
            let name = self.peer.name();
            return Err(self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent a stream line larger than {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

pin_project! {
    /// Ollama's NDJSON lines as canonical chunks, yielded as each line
    /// arrives. Owns the response body: dropping this drops the connection,
    /// which cancels the generation upstream.
    struct Lines<S> {
        #[pin]
        body: S,
        state: StreamState,
    }
}

impl<S, B> Stream for Lines<S>
where
    S: Stream<Item = Result<B, reqwest::Error>>,
    B: AsRef<[u8]>,
{
    type Item = Result<ChatChunk, GwError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let state = &mut *this.state;
        loop {
            if let Some(chunk) = state.pending.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if let Some(e) = state.failed.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if state.finished {
                return Poll::Ready(None);
            }
            match ready!(this.body.as_mut().poll_next(cx)) {
                Some(Ok(bytes)) => {
                    state.buf.extend_from_slice(bytes.as_ref());
                    if let Err(e) = state.lines() {
                        state.finished = true;
                        state.failed = Some(e);
                    }
                }
                Some(Err(e)) => {
                    state.finished = true;
                    return Poll::Ready(Some(Err(state.peer.body_error(&e))));
                }
                None => {
                    // A last line without its newline.
                    let rest = std::mem::take(&mut state.buf);
                    let rest = rest.trim_ascii();
                    if !rest.is_empty()
                        && let Err(e) = state.line(rest)
                    {
                        state.finished = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    if state.finished {
                        continue;
                    }
                    state.finished = true;
                    let name = state.peer.name();
                    let err = state.peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{name}` closed the stream early"),
                    );
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
