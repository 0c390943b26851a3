//! `type: anthropic`: Anthropic's Messages API (`POST {base_url}/messages`).
//!
//! The canonical (OpenAI-shaped) request is translated to a Messages request:
//! system and developer messages become the top-level `system`, consecutive
//! turns of one role are merged (Anthropic requires alternation), tool results
//! become `tool_result` blocks in a user turn, `reasoning_effort` becomes
//! extended thinking, and `response_format` is emulated with one forced tool
//! whose input is returned as the message text. Parameters Anthropic has no
//! equivalent for are refused with a 400 naming the parameter and the
//! provider, never dropped. What has no Anthropic field and changes nothing
//! the model is asked is left out on purpose: a message's `name`, an image's
//! `detail`, a tool's `strict` (Anthropic follows the schema without it),
//! OpenAI's `metadata` tags (the gateway's, for stored completions) and the
//! `reasoning` of earlier assistant turns (Anthropic needs its signature,
//! which the canonical model does not carry).
//!
//! The answer (a message, or its SSE events) is translated back into canonical
//! responses and chunks shaped as OpenAI would send them: a first chunk with
//! the role, content / reasoning / tool-call deltas, a finish chunk and a
//! usage-only chunk at the end.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{Event, EventStream, EventStreamError};
use futures_util::Stream;
use llmgw_kit::config::ProviderConfig;
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::content::Value as ContentValue;
use llmgw_proto::content_part::Part;
use llmgw_proto::response_format::Format;
use llmgw_proto::tool_choice::Choice as ToolChoiceKind;
use llmgw_proto::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, FinishReason, FunctionCall,
    Message, Role, Target, ThinkingBlock, ToolCall, ToolCallDelta, ToolChoiceMode, Usage,
};
use pin_project_lite::pin_project;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Provider;
use crate::http::Peer;

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const VERSION: HeaderName = HeaderName::from_static("anthropic-version");
/// The Messages API version this module speaks.
const VERSION_VALUE: HeaderValue = HeaderValue::from_static("2023-06-01");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
/// The forced tool that emulates `response_format` JSON modes.
pub(crate) const JSON_TOOL: &str = "json_response";
/// `input_schema` of a tool whose function has no `parameters`, and of `json_object`.
const EMPTY_OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;

/// An Anthropic provider.
pub(crate) struct Anthropic {
    peer: Peer,
    /// `{base_url}/messages`, parsed once.
    url: reqwest::Url,
    /// Sent on every request: the key (marked sensitive), the API version,
    /// the content type and the config's extra headers. Nothing from the client.
    headers: HeaderMap,
    timeout: Duration,
    /// `max_tokens` when the client sent none (Anthropic requires one).
    default_max_tokens: u32,
    client: reqwest::Client,
}

impl Anthropic {
    pub(crate) fn new(config: &ProviderConfig, client: reqwest::Client) -> Result<Self, GwError> {
        let name = &config.name;
        let invalid =
            |what: &str| GwError::internal(format!("provider `{name}`: {what}")).with_provider(name);
        let url = reqwest::Url::parse(&format!("{}/messages", config.base_url))
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
        headers.insert(VERSION, VERSION_VALUE);
        if let Some(key) = &config.api_key {
            // Never echo the value: it is a secret.
            let mut value = HeaderValue::try_from(key.expose())
                .map_err(|_| invalid("the api key is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(API_KEY, value);
        }
        Ok(Self {
            peer: Peer::new(name, config.api_key.clone()),
            url,
            headers,
            timeout: config.timeout,
            default_max_tokens: config.default_max_tokens,
            client,
        })
    }

    fn timeout(&self, target: &Target) -> Duration {
        crate::http::per_try_timeout(self.timeout, target)
    }

    fn request(
        &self,
        target: &Target,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<(reqwest::RequestBuilder, bool), GwError> {
        let (body, json_mode) = request_body(
            req,
            &target.model,
            stream,
            self.default_max_tokens,
            self.peer.name(),
        )
        .map_err(|e| e.with_provider(self.peer.name()))?;
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(ACCEPT, if stream { EVENT_STREAM } else { JSON })
            .body(body);
        Ok((request, json_mode))
    }

    /// Sends `request` and waits for 2xx headers, refining Anthropic's errors.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, GwError> {
        self.peer.send(request).await.map_err(|e| refine(&self.peer, e))
    }
}

/// A prompt over the model's context window is the client's to fix: say so in
/// the words OpenAI clients look for, naming `messages`.
pub(crate) fn refine(peer: &Peer, err: GwError) -> GwError {
    if err.upstream_status() == Some(400) && err.message().contains("prompt is too long") {
        let said = err
            .message()
            .split_once("): ")
            .map_or(err.message(), |(_, said)| said);
        return peer
            .error(
                ErrorCode::ContextLengthExceeded,
                format!("provider `{}`: context_length_exceeded: {said}", peer.name()),
            )
            .with_param("messages")
            .with_upstream_status(400);
    }
    err
}

#[async_trait]
impl Provider for Anthropic {
    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError> {
        let (request, json_mode) = self.request(target, req, false)?;
        let body = self
            .peer
            .call_within(self.timeout(target), self.send(request))
            .await?;
        parse_response(&body, json_mode).map_err(|what| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{}` sent an invalid response: {what}", self.peer.name()),
            )
        })
    }

    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError> {
        let (request, json_mode) = self.request(target, req, true)?;
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        Ok(Box::pin(decode_stream(
            response.bytes_stream(),
            self.peer.clone(),
            json_mode,
        )))
    }
}

// ---- request ---------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum System<'a> {
    Text(&'a str),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    Image {
        source: Source<'a>,
    },
    Document {
        source: Source<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a RawValue,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<Block<'a>>,
    },
    /// A signed thinking block the client sends back (`thinking_blocks`).
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a RawValue,
}

#[derive(Serialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Serialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

/// A 400 for a parameter this provider cannot honour.
fn unsupported(provider: &str, param: &str, what: &str) -> GwError {
    GwError::invalid(
        param,
        format!("provider `{provider}` (anthropic) does not support {what}"),
    )
    .with_provider(provider)
}

/// The thinking budget for a `reasoning_effort`; `None` turns thinking off.
fn thinking_budget(provider: &str, effort: &str) -> Result<Option<u32>, GwError> {
    Ok(match effort {
        "none" => None,
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        other => {
            return Err(unsupported(
                provider,
                "reasoning_effort",
                &format!("`reasoning_effort` `{other}` (use low, medium or high)"),
            ));
        }
    })
}

/// Parameters Anthropic has no equivalent for: refused, never dropped.
fn check_unsupported(req: &ChatRequest, provider: &str) -> Result<(), GwError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(unsupported(provider, "n", "`n` > 1"));
    }
    if req.logprobs == Some(true) {
        return Err(unsupported(provider, "logprobs", "`logprobs`"));
    }
    if req.top_logprobs.is_some() {
        return Err(unsupported(provider, "top_logprobs", "`top_logprobs`"));
    }
    if req.seed.is_some() {
        return Err(unsupported(provider, "seed", "`seed`"));
    }
    if req.presence_penalty.is_some_and(|p| p != 0.0) {
        return Err(unsupported(provider, "presence_penalty", "`presence_penalty`"));
    }
    if req.frequency_penalty.is_some_and(|p| p != 0.0) {
        return Err(unsupported(provider, "frequency_penalty", "`frequency_penalty`"));
    }
    if req.logit_bias_json.as_deref().is_some_and(|b| b.trim() != "{}") {
        return Err(unsupported(provider, "logit_bias", "`logit_bias`"));
    }
    if req.store == Some(true) {
        return Err(unsupported(provider, "store", "`store`"));
    }
    // OpenAI's range is 0..2, Anthropic's 0..1: never rescale what the client chose.
    if req.temperature.is_some_and(|t| t > 1.0) {
        return Err(unsupported(
            provider,
            "temperature",
            "`temperature` above 1 (its range is 0 to 1)",
        ));
    }
    if req.service_tier.as_deref().is_some_and(|t| t != "auto") {
        return Err(unsupported(
            provider,
            "service_tier",
            "`service_tier` other than `auto`",
        ));
    }
    Ok(())
}

/// The Messages request body for `req`, and whether `response_format` is
/// emulated with the [`JSON_TOOL`] (the answer's tool input is then the text).
pub(crate) fn request_body(
    req: &ChatRequest,
    model: &str,
    stream: bool,
    default_max_tokens: u32,
    provider: &str,
) -> Result<(Vec<u8>, bool), GwError> {
    check_unsupported(req, provider)?;
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = Role::try_from(m.role).unwrap_or(Role::Unspecified);
        match role {
            Role::System | Role::Developer => system_texts(m, i, provider, &mut system)?,
            Role::User | Role::Unspecified => {
                let blocks = content_blocks(m.content.as_ref(), i, provider)?;
                push(&mut messages, "user", blocks);
            }
            Role::Assistant => {
                if m.function_call.is_some() {
                    return Err(unsupported(
                        provider,
                        &format!("messages[{i}].function_call"),
                        "the deprecated `function_call` (use `tool_calls`)",
                    ));
                }
                // Signed thinking comes first, as Anthropic returned it: with
                // thinking on, a turn that used tools must carry it back.
                let mut blocks = thinking_blocks(m, i)?;
                blocks.extend(content_blocks(m.content.as_ref(), i, provider)?);
                if let Some(refusal) = m.refusal.as_deref().filter(|r| !r.is_empty()) {
                    blocks.push(Block::Text { text: refusal });
                }
                for (j, call) in m.tool_calls.iter().enumerate() {
                    let function = call.function.as_ref().ok_or_else(|| {
                        GwError::invalid(
                            format!("messages[{i}].tool_calls[{j}].function"),
                            "a tool call needs a function",
                        )
                    })?;
                    blocks.push(Block::ToolUse {
                        id: &call.id,
                        name: &function.name,
                        input: tool_input(&function.arguments, i, j)?,
                    });
                }
                push(&mut messages, "assistant", blocks);
            }
            Role::Tool => {
                let id = m
                    .tool_call_id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        GwError::invalid(
                            format!("messages[{i}].tool_call_id"),
                            "a tool message needs a `tool_call_id`",
                        )
                    })?;
                let content = content_blocks(m.content.as_ref(), i, provider)?;
                push(
                    &mut messages,
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: id,
                        content,
                    }],
                );
            }
            Role::Function => {
                return Err(unsupported(
                    provider,
                    &format!("messages[{i}].role"),
                    "the deprecated `function` role (use `tool`)",
                ));
            }
        }
    }

    // Tools.
    let mut tools = Vec::with_capacity(req.tools.len() + 1);
    for (i, tool) in req.tools.iter().enumerate() {
        if !tool.r#type.is_empty() && tool.r#type != "function" {
            return Err(unsupported(
                provider,
                &format!("tools[{i}].type"),
                &format!("tools of type `{}`", tool.r#type),
            ));
        }
        let function = tool
            .function
            .as_ref()
            .ok_or_else(|| GwError::invalid(format!("tools[{i}].function"), "a tool needs a function"))?;
        tools.push(WireTool {
            name: &function.name,
            description: function.description.as_deref(),
            input_schema: schema(
                function.parameters_json.as_deref(),
                &format!("tools[{i}].function.parameters"),
            )?,
        });
    }

    let disable_parallel = (req.parallel_tool_calls == Some(false)).then_some(true);
    let mut tool_choice = match req.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) {
        None => None,
        Some(ToolChoiceKind::FunctionName(name)) => Some(WireToolChoice {
            kind: "tool",
            name: Some(name),
            disable_parallel_tool_use: disable_parallel,
        }),
        Some(ToolChoiceKind::Mode(mode)) => match ToolChoiceMode::try_from(*mode) {
            Ok(ToolChoiceMode::None) => Some(WireToolChoice {
                kind: "none",
                name: None,
                disable_parallel_tool_use: None,
            }),
            Ok(ToolChoiceMode::Required) => Some(WireToolChoice {
                kind: "any",
                name: None,
                disable_parallel_tool_use: disable_parallel,
            }),
            _ => Some(WireToolChoice {
                kind: "auto",
                name: None,
                disable_parallel_tool_use: disable_parallel,
            }),
        },
    };
    if tool_choice.is_none() && disable_parallel.is_some() && !tools.is_empty() {
        tool_choice = Some(WireToolChoice {
            kind: "auto",
            name: None,
            disable_parallel_tool_use: disable_parallel,
        });
    }
    if tools.is_empty() {
        match &tool_choice {
            Some(c) if c.kind != "none" => {
                return Err(GwError::invalid("tool_choice", "`tool_choice` needs `tools`"));
            }
            _ => tool_choice = None,
        }
    }

    // Extended thinking.
    let mut max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(default_max_tokens);
    let thinking = match req.reasoning_effort.as_deref() {
        Some(effort) => thinking_budget(provider, effort)?,
        None => None,
    };
    if thinking.is_some() {
        if req.temperature.is_some_and(|t| t != 1.0) {
            return Err(unsupported(
                provider,
                "temperature",
                "`temperature` together with `reasoning_effort` (extended thinking)",
            ));
        }
        if req.top_p.is_some_and(|p| p < 0.95) {
            return Err(unsupported(
                provider,
                "top_p",
                "`top_p` below 0.95 together with `reasoning_effort` (extended thinking)",
            ));
        }
    }
    if let Some(budget) = thinking
        && max_tokens <= budget
    {
        // The budget counts against max_tokens: keep the client's room for the answer.
        max_tokens = budget.saturating_add(max_tokens);
    }

    // response_format: emulated with one forced tool.
    let format = req.response_format.as_ref().and_then(|f| f.format.as_ref());
    let json_schema = match format {
        Some(Format::JsonObject(true)) => Some((EMPTY_OBJECT_SCHEMA, None)),
        Some(Format::JsonSchema(s)) => Some((
            s.schema_json.as_deref().unwrap_or(EMPTY_OBJECT_SCHEMA),
            s.description.as_deref(),
        )),
        _ => None,
    };
    let json_mode = json_schema.is_some();
    if let Some((schema_text, description)) = json_schema {
        if !tools.is_empty() {
            return Err(unsupported(
                provider,
                "response_format",
                "`response_format` together with `tools`",
            ));
        }
        if thinking.is_some() {
            return Err(unsupported(
                provider,
                "response_format",
                "`response_format` together with `reasoning_effort` (extended thinking)",
            ));
        }
        tools.push(WireTool {
            name: JSON_TOOL,
            description: Some(description.unwrap_or("Respond with JSON that matches the input schema.")),
            input_schema: schema(Some(schema_text), "response_format.json_schema.schema")?,
        });
        tool_choice = Some(WireToolChoice {
            kind: "tool",
            name: Some(JSON_TOOL),
            disable_parallel_tool_use: None,
        });
    }

    let wire = WireRequest {
        model,
        messages,
        max_tokens,
        system: match system.as_slice() {
            [] => None,
            [one] => Some(System::Text(one)),
            many => Some(System::Blocks(
                many.iter().map(|text| Block::Text { text }).collect(),
            )),
        },
        metadata: req.user.as_deref().map(|user_id| Metadata { user_id }),
        stop_sequences: req
            .stop
            .as_ref()
            .map(|s| s.sequences.as_slice())
            .filter(|s| !s.is_empty()),
        stream,
        temperature: req.temperature,
        top_p: req.top_p,
        tools,
        tool_choice,
        thinking: thinking.map(|budget_tokens| Thinking {
            kind: "enabled",
            budget_tokens,
        }),
    };
    let body = match req.extra_json.as_deref().map(str::trim) {
        None | Some("" | "{}") => serde_json::to_vec(&wire),
        // Fields the canonical model does not name (such as `top_k`) pass
        // through, but never over a field the translation set.
        Some(extra) => {
            let extra: Map<String, Value> = serde_json::from_str(extra)
                .map_err(|_| GwError::internal("the request's extra fields are not a json object"))?;
            let mut body = match serde_json::to_value(&wire) {
                Ok(Value::Object(body)) => body,
                _ => return Err(GwError::internal("cannot encode the anthropic request")),
            };
            for (key, value) in extra {
                if body.contains_key(&key) {
                    return Err(GwError::invalid(
                        key.clone(),
                        format!("`{key}` conflicts with a parameter the gateway translates for provider `{provider}` (anthropic)"),
                    ));
                }
                body.insert(key, value);
            }
            serde_json::to_vec(&body)
        }
    }
    .map_err(|e| GwError::internal(format!("cannot encode the anthropic request: {e}")))?;
    Ok((body, json_mode))
}

/// Appends a turn, merged into the previous one when the role repeats.
/// Empty turns are left out (Anthropic rejects empty content).
fn push<'a>(messages: &mut Vec<WireMessage<'a>>, role: &'static str, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => messages.push(WireMessage {
            role,
            content: blocks,
        }),
    }
}

fn system_texts<'a>(m: &'a Message, i: usize, provider: &str, out: &mut Vec<&'a str>) -> Result<(), GwError> {
    let texts = super::system_texts(m, i)
        .map_err(|param| unsupported(provider, &param, "non-text parts in system messages"))?;
    out.extend(texts);
    Ok(())
}

/// The blocks of a user, assistant or tool message's content.
fn content_blocks<'a>(
    content: Option<&'a Content>,
    i: usize,
    provider: &str,
) -> Result<Vec<Block<'a>>, GwError> {
    let mut blocks = Vec::new();
    match content.and_then(|c| c.value.as_ref()) {
        None => {}
        Some(ContentValue::Text(text)) if text.is_empty() => {}
        Some(ContentValue::Text(text)) => blocks.push(Block::Text { text }),
        Some(ContentValue::Parts(parts)) => {
            for (j, part) in parts.parts.iter().enumerate() {
                let at = || format!("messages[{i}].content[{j}]");
                match &part.part {
                    None => {}
                    Some(Part::Text(text) | Part::Refusal(text)) if text.is_empty() => {}
                    Some(Part::Text(text) | Part::Refusal(text)) => blocks.push(Block::Text { text }),
                    Some(Part::ImageUrl(image)) => blocks.push(Block::Image {
                        source: image_source(&image.url).ok_or_else(|| {
                            GwError::invalid(
                                format!("{}.image_url.url", at()),
                                "an image url must be http(s) or a base64 data url",
                            )
                        })?,
                    }),
                    Some(Part::File(file)) => {
                        let source = file
                            .file_data
                            .as_deref()
                            .and_then(data_url)
                            .filter(|(media, _)| *media == "application/pdf")
                            .ok_or_else(|| {
                                unsupported(
                                    provider,
                                    &format!("{}.file", at()),
                                    "files other than a pdf given as base64 `file_data`",
                                )
                            })?;
                        blocks.push(Block::Document {
                            source: Source::Base64 {
                                media_type: source.0,
                                data: source.1,
                            },
                        });
                    }
                    Some(Part::InputAudio(_)) => {
                        return Err(unsupported(provider, &at(), "audio input"));
                    }
                }
            }
        }
    }
    Ok(blocks)
}

/// `data:<media type>;base64,<data>` → (media type, data).
fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    (!media.is_empty()).then_some((media, data))
}

fn image_source(url: &str) -> Option<Source<'_>> {
    if let Some((media_type, data)) = data_url(url) {
        return Some(Source::Base64 { media_type, data });
    }
    let lower = url.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(Source::Url { url })
}

/// Tool-call arguments as the JSON object Anthropic wants as `input`.
fn tool_input(arguments: &str, i: usize, j: usize) -> Result<&RawValue, GwError> {
    let param = || format!("messages[{i}].tool_calls[{j}].function.arguments");
    if arguments.trim().is_empty() {
        return serde_json::from_str("{}").map_err(|_| GwError::internal("empty object"));
    }
    let raw: &RawValue = llmgw_kit::openai::raw_strict(arguments).map_err(|e| {
        GwError::invalid(
            param(),
            format!("the tool call's arguments are not valid json: {e}"),
        )
    })?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(GwError::invalid(
            param(),
            "the tool call's arguments must be a json object",
        ));
    }
    Ok(raw)
}

fn schema<'a>(text: Option<&'a str>, param: &str) -> Result<&'a RawValue, GwError> {
    serde_json::from_str(text.unwrap_or(EMPTY_OBJECT_SCHEMA))
        .map_err(|e| GwError::invalid(param, format!("the json schema is not valid json: {e}")))
}

// ---- response --------------------------------------------------------------

#[derive(Deserialize)]
struct WireResponse<'a> {
    id: String,
    model: String,
    #[serde(borrow)]
    content: Vec<ResponseBlock<'a>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

/// One content block, by its `type`: a plain struct rather than a tagged
/// enum, so the tool input stays raw JSON text borrowed from the body.
#[derive(Deserialize)]
struct ResponseBlock<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

impl WireUsage {
    /// Later counts (a `message_delta`'s) replace earlier ones.
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    /// OpenAI counts every input token as a prompt token; Anthropic counts
    /// cache reads and writes apart from `input_tokens`.
    fn canonical(self) -> Usage {
        let cached = self.cache_read_input_tokens;
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached.unwrap_or(0))
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            cached_tokens: cached,
            ..Usage::default()
        }
    }
}

fn finish_reason(stop_reason: Option<&str>, json_mode: bool) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") if !json_mode => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// An assistant message's `thinking_blocks` as Anthropic blocks.
fn thinking_blocks(m: &Message, i: usize) -> Result<Vec<Block<'_>>, GwError> {
    m.thinking_blocks
        .iter()
        .enumerate()
        .map(|(k, b)| match b.r#type.as_str() {
            "thinking" => {
                let signature = b.signature.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
                    GwError::invalid(
                        format!("messages[{i}].thinking_blocks[{k}].signature"),
                        "a thinking block needs the `signature` it came with",
                    )
                })?;
                Ok(Block::Thinking {
                    thinking: b.thinking.as_deref().unwrap_or(""),
                    signature,
                })
            }
            "redacted_thinking" => {
                let data = b.data.as_deref().filter(|d| !d.is_empty()).ok_or_else(|| {
                    GwError::invalid(
                        format!("messages[{i}].thinking_blocks[{k}].data"),
                        "a redacted thinking block needs its `data`",
                    )
                })?;
                Ok(Block::RedactedThinking { data })
            }
            other => Err(GwError::invalid(
                format!("messages[{i}].thinking_blocks[{k}].type"),
                format!("unknown thinking block type `{other}` (use thinking or redacted_thinking)"),
            )),
        })
        .collect()
}

/// A Messages response as a canonical response; `Err` says what was wrong.
pub(crate) fn parse_response(body: &[u8], json_mode: bool) -> Result<ChatResponse, String> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut reasoning: Option<String> = None;
    let mut thinking_blocks = Vec::new();
    let mut tool_calls = Vec::new();
    for block in wire.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "thinking" => {
                reasoning
                    .get_or_insert_default()
                    .push_str(block.thinking.as_deref().unwrap_or(""));
                thinking_blocks.push(ThinkingBlock {
                    r#type: "thinking".to_owned(),
                    thinking: block.thinking,
                    signature: block.signature,
                    data: None,
                });
            }
            "redacted_thinking" => thinking_blocks.push(ThinkingBlock {
                r#type: "redacted_thinking".to_owned(),
                data: block.data,
                ..ThinkingBlock::default()
            }),
            "tool_use" => {
                let input = block.input.map_or("{}", RawValue::get);
                let name = block.name.unwrap_or_default();
                if json_mode && name == JSON_TOOL {
                    text.push_str(input);
                } else {
                    tool_calls.push(ToolCall {
                        id: block.id.unwrap_or_default(),
                        r#type: "function".to_owned(),
                        function: Some(FunctionCall {
                            name,
                            arguments: input.to_owned(),
                        }),
                    });
                }
            }
            // Redacted thinking, server tools and blocks Anthropic may add.
            _ => {}
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(Content {
            value: Some(ContentValue::Text(text)),
        })
    };
    Ok(ChatResponse {
        id: wire.id,
        created: unix_now(),
        model: wire.model,
        choices: vec![Choice {
            index: 0,
            message: Some(Message {
                role: Role::Assistant as i32,
                content,
                tool_calls,
                reasoning,
                thinking_blocks,
                ..Message::default()
            }),
            finish_reason: finish_reason(wire.stop_reason.as_deref(), json_mode) as i32,
            logprobs_json: None,
            stop_sequence: wire.stop_sequence,
        }],
        usage: Some(wire.usage.canonical()),
        ..ChatResponse::default()
    })
}

// ---- streaming -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: ErrorObject,
    },
    /// Anthropic may add event types; unknown ones are skipped.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// What a content block (by Anthropic's index) turns into.
#[derive(Clone, Copy)]
enum BlockKind {
    Text,
    /// A tool call, by its ordinal among the message's tool calls.
    Tool(u32),
    /// The forced `response_format` tool: its input is the answer's text.
    Json,
    Thinking,
    Other,
}

/// The event-to-chunk state machine, apart from I/O so it can be tested.
pub(crate) struct Translator {
    peer: Peer,
    json_mode: bool,
    id: String,
    model: String,
    created: i64,
    blocks: Vec<(u32, BlockKind)>,
    tools: u32,
    usage: WireUsage,
    started: bool,
    /// The text of the thinking block being streamed, sent again whole
    /// (with its signature) in `thinking_blocks` when the signature arrives.
    thinking: String,
}

impl Translator {
    pub(crate) fn new(peer: Peer, json_mode: bool) -> Self {
        Self {
            peer,
            json_mode,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            blocks: Vec::new(),
            tools: 0,
            usage: WireUsage::default(),
            started: false,
            thinking: String::new(),
        }
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

    fn delta(&self, delta: Delta) -> ChatChunk {
        self.chunk(
            vec![ChunkChoice {
                index: 0,
                delta: Some(delta),
                ..ChunkChoice::default()
            }],
            None,
        )
    }

    fn kind(&self, index: u32) -> BlockKind {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map_or(BlockKind::Other, |(_, k)| *k)
    }

    /// Translates one event's data into chunks (pushed on `out`); `Ok(true)`
    /// once the message is complete.
    pub(crate) fn on_event(&mut self, data: &str, out: &mut VecDeque<ChatChunk>) -> Result<bool, GwError> {
        let name = self.peer.name();
        let event: StreamEvent = serde_json::from_str(data).map_err(|_| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}` sent an invalid stream event"),
            )
        })?;
        match event {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.usage.update(message.usage);
                self.started = true;
                out.push_back(self.delta(Delta {
                    role: Some(Role::Assistant as i32),
                    content: Some(String::new()),
                    ..Delta::default()
                }));
            }
            StreamEvent::ContentBlockStart { index, content_block } => {
                let (kind, delta) = match content_block {
                    StartBlock::Text { text } => (
                        BlockKind::Text,
                        (!text.is_empty()).then(|| Delta {
                            content: Some(text),
                            ..Delta::default()
                        }),
                    ),
                    StartBlock::ToolUse { name, .. } if self.json_mode && name == JSON_TOOL => {
                        (BlockKind::Json, None)
                    }
                    StartBlock::ToolUse { id, name } => {
                        let ordinal = self.tools;
                        self.tools += 1;
                        (
                            BlockKind::Tool(ordinal),
                            Some(Delta {
                                tool_calls: vec![ToolCallDelta {
                                    index: ordinal,
                                    id: Some(id),
                                    r#type: Some("function".to_owned()),
                                    name: Some(name),
                                    arguments: Some(String::new()),
                                }],
                                ..Delta::default()
                            }),
                        )
                    }
                    StartBlock::Thinking { thinking } => {
                        self.thinking.clone_from(&thinking);
                        (
                            BlockKind::Thinking,
                            (!thinking.is_empty()).then(|| Delta {
                                reasoning: Some(thinking),
                                ..Delta::default()
                            }),
                        )
                    }
                    StartBlock::RedactedThinking { data } => (
                        BlockKind::Other,
                        Some(Delta {
                            thinking_blocks: vec![ThinkingBlock {
                                r#type: "redacted_thinking".to_owned(),
                                data: Some(data),
                                ..ThinkingBlock::default()
                            }],
                            ..Delta::default()
                        }),
                    ),
                    StartBlock::Other => (BlockKind::Other, None),
                };
                self.blocks.push((index, kind));
                if let Some(delta) = delta {
                    out.push_back(self.delta(delta));
                }
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let delta = match (self.kind(index), delta) {
                    (BlockKind::Text, BlockDelta::TextDelta { text }) => Some(Delta {
                        content: Some(text),
                        ..Delta::default()
                    }),
                    (BlockKind::Tool(ordinal), BlockDelta::InputJsonDelta { partial_json }) => {
                        (!partial_json.is_empty()).then(|| Delta {
                            tool_calls: vec![ToolCallDelta {
                                index: ordinal,
                                arguments: Some(partial_json),
                                ..ToolCallDelta::default()
                            }],
                            ..Delta::default()
                        })
                    }
                    (BlockKind::Json, BlockDelta::InputJsonDelta { partial_json }) => {
                        (!partial_json.is_empty()).then(|| Delta {
                            content: Some(partial_json),
                            ..Delta::default()
                        })
                    }
                    (BlockKind::Thinking, BlockDelta::ThinkingDelta { thinking }) => {
                        self.thinking.push_str(&thinking);
                        Some(Delta {
                            reasoning: Some(thinking),
                            ..Delta::default()
                        })
                    }
                    (BlockKind::Thinking, BlockDelta::SignatureDelta { signature }) => Some(Delta {
                        thinking_blocks: vec![ThinkingBlock {
                            r#type: "thinking".to_owned(),
                            thinking: Some(std::mem::take(&mut self.thinking)),
                            signature: Some(signature),
                            data: None,
                        }],
                        ..Delta::default()
                    }),
                    // Signatures, citations and blocks we do not translate.
                    _ => None,
                };
                if let Some(delta) = delta {
                    out.push_back(self.delta(delta));
                }
            }
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.usage.update(usage);
                }
                if delta.stop_reason.is_some() {
                    out.push_back(self.chunk(
                        vec![ChunkChoice {
                            index: 0,
                            delta: Some(Delta::default()),
                            finish_reason: finish_reason(delta.stop_reason.as_deref(), self.json_mode) as i32,
                            logprobs_json: None,
                            stop_sequence: delta.stop_sequence,
                        }],
                        None,
                    ));
                }
            }
            StreamEvent::MessageStop {} => {
                out.push_back(self.chunk(Vec::new(), Some(self.usage.canonical())));
                return Ok(true);
            }
            StreamEvent::Error { error } => {
                let code = match error.kind.as_str() {
                    "rate_limit_error" => ErrorCode::UpstreamRateLimited,
                    "invalid_request_error" => ErrorCode::UpstreamRejected,
                    _ => ErrorCode::UpstreamError,
                };
                let what = if error.message.is_empty() {
                    error.kind
                } else {
                    error.message
                };
                return Err(self
                    .peer
                    .error(code, format!("provider `{name}`: {what}"))
                    .with_retryable(code != ErrorCode::UpstreamRejected));
            }
            StreamEvent::ContentBlockStop {} | StreamEvent::Ping {} | StreamEvent::Other => {}
        }
        Ok(false)
    }
}

/// A Messages stream's body as canonical chunks (its SSE framing included);
/// apart from I/O, so the fuzz targets run it on bytes.
pub(crate) fn decode_stream<S>(
    body: S,
    peer: Peer,
    json_mode: bool,
) -> impl Stream<Item = Result<ChatChunk, GwError>> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    Chunks {
        events: EventStream::new(body),
        translator: Translator::new(peer, json_mode),
        ready: VecDeque::new(),
        finished: false,
    }
}

pin_project! {
    /// The provider's SSE events as canonical chunks, yielded as each event
    /// arrives. Owns the response body: dropping this drops the connection,
    /// which is how a client's disconnect cancels the call.
    struct Chunks<S> {
        #[pin]
        events: S,
        translator: Translator,
        // Chunks translated from one event, not yet yielded.
        ready: VecDeque<ChatChunk>,
        // Set after `message_stop` or an error: nothing more is read.
        finished: bool,
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
            if let Some(chunk) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if *this.finished {
                return Poll::Ready(None);
            }
            let peer = &this.translator.peer;
            let name = peer.name();
            let event = match ready!(this.events.as_mut().poll_next(cx)) {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    *this.finished = true;
                    let err = match &e {
                        EventStreamError::Transport(e) => peer.body_error(e),
                        EventStreamError::Utf8(_) | EventStreamError::Parser(_) => peer.error(
                            ErrorCode::UpstreamError,
                            format!("provider `{name}` sent a malformed event stream"),
                        ),
                    };
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    *this.finished = true;
                    let err = peer.error(
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
            match this.translator.on_event(data, this.ready) {
                Ok(false) => {}
                Ok(true) => {
                    *this.finished = true;
                    // One more look, never a wait: reading the body's end lets
                    // the connection go back to the pool.
                    let _ = this.events.as_mut().poll_next(cx);
                }
                Err(e) => {
                    *this.finished = true;
                    this.ready.clear();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
