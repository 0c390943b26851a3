//! `type: bedrock`: Amazon Bedrock's Converse API
//! (`POST {base_url}/model/{modelId}/converse` and `/converse-stream`).
//!
//! Every request is signed with AWS Signature Version 4 (`aws-sigv4`, service
//! `bedrock`, the provider's region and credentials), freshly per request. The
//! canonical (OpenAI-shaped) request becomes a Converse request: system and
//! developer messages become `system`, consecutive turns of one role are merged
//! (Converse requires alternation starting with a user turn), tool results
//! become `toolResult` blocks in a user turn, images must be inline bytes (a
//! data URL; Bedrock cannot fetch an http(s) URL), and fields the canonical
//! model does not name (`extra`) go to `additionalModelRequestFields`.
//! `response_format` (`json_object`, `json_schema`) is emulated with one forced
//! tool whose input comes back as the message text, as for Anthropic.
//! Parameters Converse has no equivalent for are refused with a 400 naming the
//! parameter and the provider, never dropped.
//!
//! A streamed answer is `application/vnd.amazon.eventstream`: binary frames,
//! decoded with `aws-smithy-eventstream` as bytes arrive, each carrying one
//! event (`:event-type` header, JSON payload) that becomes canonical chunks
//! shaped as OpenAI would send them: a role chunk, text / reasoning /
//! tool-call deltas, a finish chunk, then a usage-only chunk.
//!
//! Embeddings go through InvokeModel (`/model/{modelId}/invoke`) for Titan
//! and Cohere models: see [`embed`].
//!
//! Errors are `{"message": ...}` with the type in `x-amzn-errortype`; they
//! are rewritten to OpenAI's error object and classified by [`Peer`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message as Frame;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use llmgw_kit::config::ProviderConfig;
use llmgw_kit::grpc::MAX_MESSAGE_BYTES;
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::content::Value as ContentValue;
use llmgw_proto::content_part::Part;
use llmgw_proto::response_format::Format;
use llmgw_proto::tool_choice::Choice as ToolChoiceKind;
use llmgw_proto::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, EmbeddingsRequest,
    EmbeddingsResponse, FinishReason, FunctionCall, Message, Role, Target, ToolCall, ToolCallDelta,
    ToolChoiceMode, Usage,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use pin_project_lite::pin_project;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::Provider;
use crate::http::Peer;

/// The SigV4 signing name of Bedrock Runtime.
const SERVICE: &str = "bedrock";
const JSON: &str = "application/json";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// The forced tool that emulates `response_format` JSON modes.
const JSON_TOOL: &str = "json_response";
/// `inputSchema.json` of a tool whose function has no `parameters`.
const EMPTY_OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;
/// The most of an error body we read: enough for any error object.
const ERROR_BODY_LIMIT: usize = 64 << 10;
/// A model id is one path segment: everything but unreserved characters is
/// encoded (`:` in `…-v1:0` becomes `%3A`, as the AWS SDKs send it).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Bedrock provider.
pub(crate) struct Bedrock {
    peer: Peer,
    /// The base URL, without a trailing slash.
    base_url: String,
    region: String,
    /// Never logged: `Credentials`' `Debug` redacts the secret and the token.
    credentials: Credentials,
    /// The config's extra headers. Nothing from the client.
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
    /// Bedrock takes images as bytes: http(s) image URLs are fetched
    /// through the guard and inlined.
    fetcher: crate::fetch::Fetcher,
}

impl Bedrock {
    pub(crate) fn new(config: &ProviderConfig, client: reqwest::Client) -> Result<Self, GwError> {
        let name = &config.name;
        let invalid =
            |what: &str| GwError::internal(format!("provider `{name}`: {what}")).with_provider(name);
        reqwest::Url::parse(&config.base_url).map_err(|e| invalid(&format!("invalid base_url: {e}")))?;
        let region = config
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| invalid("bedrock needs a `region`"))?;
        let (Some(key_id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) else {
            return Err(invalid("bedrock needs `access_key_id` and `secret_access_key`"));
        };
        let credentials = Credentials::new(
            key_id.expose(),
            secret.expose(),
            config.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "llmgw-config",
        );
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            let header = HeaderName::try_from(header.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header value")))?;
            headers.insert(header, value);
        }
        Ok(Self {
            peer: Peer::new(name, Some(secret.clone())),
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            region,
            credentials,
            headers,
            timeout: config.timeout,
            client,
            fetcher: crate::fetch::Fetcher::new(),
        })
    }

    /// `req` with its http(s) image URLs fetched (through the guard) and
    /// inlined, after the cheap checks so a request refused anyway fetches
    /// nothing.
    async fn inlined<'a>(&self, req: &'a ChatRequest) -> Result<std::borrow::Cow<'a, ChatRequest>, GwError> {
        check_unsupported(req, self.peer.name())?;
        self.fetcher
            .inline_images(req, (self.peer.name(), "bedrock"), |_, _| true)
            .await
    }

    fn timeout(&self, target: &Target) -> Duration {
        match target.timeout_ms {
            0 => self.timeout,
            ms => Duration::from_millis(u64::from(ms)),
        }
    }

    /// The signed request for `req`: `converse` or `converse-stream`.
    fn request(
        &self,
        target: &Target,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<(reqwest::RequestBuilder, bool), GwError> {
        let name = self.peer.name();
        let (body, json_mode) = request_body(req, name).map_err(|e| e.with_provider(name))?;
        let action = if stream { "converse-stream" } else { "converse" };
        let url = format!(
            "{}/model/{}/{action}",
            self.base_url,
            utf8_percent_encode(&target.model, PATH_SEGMENT)
        );
        let accept = if stream { EVENT_STREAM } else { JSON };
        let signed = self.sign(&url, accept, &body, SystemTime::now())?;
        let mut request = self
            .client
            .post(&url)
            .headers(self.headers.clone())
            .header("content-type", JSON)
            .header("accept", accept);
        for (header, value) in signed {
            request = request.header(header, value);
        }
        Ok((request.body(body), json_mode))
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` with a session token) for one request. The
    /// signed headers are `accept`, `content-type` and `host`, plus those.
    fn sign(
        &self,
        url: &str,
        accept: &str,
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, GwError> {
        // The signer's errors never carry the secret, but say nothing of them anyway.
        let failed = || {
            self.peer.error(
                ErrorCode::Internal,
                format!("provider `{}`: cannot sign the request", self.peer.name()),
            )
        };
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| failed())?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url,
            [("accept", accept), ("content-type", JSON)].into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| failed())?;
        let (instructions, _) = sign(signable, &params).map_err(|_| failed())?.into_parts();
        let (headers, _) = instructions.into_parts();
        headers
            .into_iter()
            .map(|h| {
                let name = HeaderName::from_static(h.name());
                let mut value = HeaderValue::try_from(h.value()).map_err(|_| failed())?;
                value.set_sensitive(h.sensitive() || name == "authorization");
                Ok((name, value))
            })
            .collect()
    }

    /// Sends `request` and waits for 2xx headers; an error body is rewritten
    /// to OpenAI's shape (with Bedrock's error type) before it is classified.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, GwError> {
        let mut response = crate::http::dispatch(request)
            .await
            .map_err(|e| self.peer.send_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let kind = error_type(response.headers());
        // Best effort: a body that breaks still leaves the status to classify.
        let body = self
            .peer
            .read_limited(&mut response, ERROR_BODY_LIMIT, false)
            .await
            .unwrap_or_default();
        let (body, too_long) = openai_error(&body, kind.as_deref());
        let err = self.peer.status_error(status, response.headers(), &body);
        if too_long && status.as_u16() == 400 {
            let said = err
                .message()
                .split_once("): ")
                .map_or(err.message(), |(_, said)| said);
            return Err(self
                .peer
                .error(
                    ErrorCode::ContextLengthExceeded,
                    format!("provider `{}`: context_length_exceeded: {said}", self.peer.name()),
                )
                .with_param("messages")
                .with_upstream_status(400));
        }
        Err(err)
    }
}

/// Bedrock's error type, from `x-amzn-errortype` (`ThrottlingException:http://…`).
fn error_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-amzn-errortype")?.to_str().ok()?;
    let kind = value.split(':').next().unwrap_or(value).trim();
    (!kind.is_empty()).then(|| kind.to_owned())
}

/// Bedrock's `{"message": ...}` as OpenAI's error object, the type leading the
/// message; and whether it says the input is over the model's context.
pub(crate) fn openai_error(body: &[u8], kind: Option<&str>) -> (Vec<u8>, bool) {
    #[derive(Deserialize)]
    struct AwsError {
        #[serde(default, alias = "Message")]
        message: Option<String>,
        #[serde(default, rename = "__type")]
        kind: Option<String>,
    }
    let parsed: Option<AwsError> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_default();
    let kind = kind
        .map(str::to_owned)
        .or_else(|| parsed.and_then(|e| e.kind))
        .map(|k| k.rsplit('#').next().unwrap_or(&k).to_owned());
    let lower = message.to_ascii_lowercase();
    let too_long = kind.as_deref().is_none_or(|k| k == "ValidationException")
        && (lower.contains("too long") || lower.contains("too many input tokens"));
    let text = match (&kind, message.is_empty()) {
        (Some(k), false) => format!("{k}: {message}"),
        (Some(k), true) => k.clone(),
        (None, _) => message,
    };
    let body = json!({"error": {"message": text, "type": kind}})
        .to_string()
        .into_bytes();
    (body, too_long)
}

#[async_trait]
impl Provider for Bedrock {
    async fn embed(&self, target: &Target, req: &EmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        self.embed_invoke(target, req).await
    }

    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError> {
        let req = self.inlined(req).await?;
        let (request, json_mode) = self.request(target, &req, false)?;
        let timeout = self.timeout(target);
        let call = async {
            let mut response = self.send(request).await?;
            let id = request_id(response.headers());
            let body = self
                .peer
                .read_limited(&mut response, MAX_MESSAGE_BYTES, true)
                .await?;
            Ok::<_, GwError>((id, body))
        };
        let (id, body) = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        parse_response(&body, &id, &target.model, json_mode).map_err(|what| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{}` sent an invalid response: {what}", self.peer.name()),
            )
        })
    }

    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError> {
        let req = self.inlined(req).await?;
        let (request, json_mode) = self.request(target, &req, true)?;
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        let id = request_id(response.headers());
        Ok(Box::pin(decode_stream(
            response.bytes_stream(),
            Translator::new(self.peer.clone(), id, target.model.clone(), json_mode),
        )))
    }
}

/// A completion id from Bedrock's request id (Converse answers carry none).
fn request_id(headers: &HeaderMap) -> String {
    let rid = headers
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    match rid {
        Some(rid) => format!("chatcmpl-{rid}"),
        None => format!("chatcmpl-bedrock-{}", unix_now()),
    }
}

// ---- request ---------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<TextBlock<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<InferenceConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_model_request_fields: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block<'a> {
    Text(&'a str),
    Image(Image<'a>),
    ToolUse(ToolUse<'a>),
    ToolResult(ToolResult<'a>),
}

#[derive(Serialize)]
struct Image<'a> {
    format: &'static str,
    source: ImageSource<'a>,
}

#[derive(Serialize)]
struct ImageSource<'a> {
    /// Base64 in JSON, as the Converse reference's `blob` encoding is.
    bytes: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResult<'a> {
    tool_use_id: &'a str,
    content: Vec<ResultBlock<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ResultBlock<'a> {
    Text(&'a str),
    Json(&'a RawValue),
    Image(Image<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool<'a> {
    tool_spec: ToolSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: InputSchema<'a>,
}

#[derive(Serialize)]
struct InputSchema<'a> {
    json: &'a RawValue,
}

/// A 400 for a parameter this provider cannot honour.
fn unsupported(provider: &str, param: &str, what: &str) -> GwError {
    GwError::invalid(
        param,
        format!("provider `{provider}` (bedrock) does not support {what}"),
    )
    .with_provider(provider)
}

/// Parameters Converse has no equivalent for: refused, never dropped.
fn check_unsupported(req: &ChatRequest, provider: &str) -> Result<(), GwError> {
    let refuse = |param: &str, what: &str| Err(unsupported(provider, param, what));
    if req.n.is_some_and(|n| n > 1) {
        return refuse("n", "`n` > 1");
    }
    if req.logprobs == Some(true) {
        return refuse("logprobs", "`logprobs`");
    }
    if req.top_logprobs.is_some() {
        return refuse("top_logprobs", "`top_logprobs`");
    }
    if req.seed.is_some() {
        return refuse("seed", "`seed`");
    }
    if req.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse("presence_penalty", "`presence_penalty`");
    }
    if req.frequency_penalty.is_some_and(|p| p != 0.0) {
        return refuse("frequency_penalty", "`frequency_penalty`");
    }
    if req.logit_bias_json.as_deref().is_some_and(|b| b.trim() != "{}") {
        return refuse("logit_bias", "`logit_bias`");
    }
    if req.store == Some(true) {
        return refuse("store", "`store`");
    }
    if req.service_tier.as_deref().is_some_and(|t| t != "auto") {
        return refuse("service_tier", "`service_tier` other than `auto`");
    }
    if req.reasoning_effort.as_deref().is_some_and(|e| e != "none") {
        return refuse(
            "reasoning_effort",
            "`reasoning_effort` (pass the model's own reasoning fields in the request's extra fields)",
        );
    }
    if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() {
        return refuse("parallel_tool_calls", "`parallel_tool_calls: false`");
    }
    Ok(())
}

/// The Converse request body for `req`, and whether `response_format` is
/// emulated with the [`JSON_TOOL`] (the answer's tool input is then the text).
pub(crate) fn request_body(req: &ChatRequest, provider: &str) -> Result<(Vec<u8>, bool), GwError> {
    check_unsupported(req, provider)?;
    let mut system: Vec<TextBlock<'_>> = Vec::new();
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
                let mut blocks = content_blocks(m.content.as_ref(), i, provider)?;
                if let Some(refusal) = m.refusal.as_deref().filter(|r| !r.is_empty()) {
                    blocks.push(Block::Text(refusal));
                }
                for (j, call) in m.tool_calls.iter().enumerate() {
                    let function = call.function.as_ref().ok_or_else(|| {
                        GwError::invalid(
                            format!("messages[{i}].tool_calls[{j}].function"),
                            "a tool call needs a function",
                        )
                    })?;
                    blocks.push(Block::ToolUse(ToolUse {
                        tool_use_id: &call.id,
                        name: &function.name,
                        input: tool_input(&function.arguments, i, j)?,
                    }));
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
                let content = result_blocks(m.content.as_ref(), i, provider)?;
                push(
                    &mut messages,
                    "user",
                    vec![Block::ToolResult(ToolResult {
                        tool_use_id: id,
                        content,
                    })],
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

    let mut tool_config = tool_config(req, provider)?;
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
        if tool_config.is_some() {
            return Err(unsupported(
                provider,
                "response_format",
                "`response_format` together with `tools`",
            ));
        }
        let json: &RawValue = serde_json::from_str(schema_text).map_err(|e| {
            GwError::invalid(
                "response_format.json_schema.schema",
                format!("the json schema is not valid json: {e}"),
            )
        })?;
        tool_config = Some(ToolConfig {
            tools: vec![WireTool {
                tool_spec: ToolSpec {
                    name: JSON_TOOL,
                    description: Some(
                        description.unwrap_or("Respond with JSON that matches the input schema."),
                    ),
                    input_schema: InputSchema { json },
                },
            }],
            tool_choice: Some(json!({"tool": {"name": JSON_TOOL}})),
        });
    }
    let stop = req
        .stop
        .as_ref()
        .map(|s| s.sequences.as_slice())
        .filter(|s| !s.is_empty());
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let inference_config =
        (max_tokens.is_some() || req.temperature.is_some() || req.top_p.is_some() || stop.is_some())
            .then_some(InferenceConfig {
                max_tokens,
                temperature: req.temperature,
                top_p: req.top_p,
                stop_sequences: stop,
            });
    // Fields the canonical model does not name (such as Anthropic's `top_k`)
    // are the model's own: Converse takes them in `additionalModelRequestFields`.
    let additional = match req.extra_json.as_deref().map(str::trim) {
        None | Some("" | "{}") => None,
        Some(extra) => Some(
            serde_json::from_str::<Map<String, Value>>(extra)
                .map_err(|_| GwError::internal("the request's extra fields are not a json object"))?,
        ),
    };
    let wire = WireRequest {
        messages,
        system,
        inference_config,
        tool_config,
        additional_model_request_fields: additional,
    };
    let body = serde_json::to_vec(&wire)
        .map_err(|e| GwError::internal(format!("cannot encode the bedrock request: {e}")))?;
    Ok((body, json_mode))
}

fn tool_config<'a>(req: &'a ChatRequest, provider: &str) -> Result<Option<ToolConfig<'a>>, GwError> {
    let mut tools = Vec::with_capacity(req.tools.len());
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
        let json: &RawValue =
            serde_json::from_str(function.parameters_json.as_deref().unwrap_or(EMPTY_OBJECT_SCHEMA))
                .map_err(|e| {
                    GwError::invalid(
                        format!("tools[{i}].function.parameters"),
                        format!("the json schema is not valid json: {e}"),
                    )
                })?;
        tools.push(WireTool {
            tool_spec: ToolSpec {
                name: &function.name,
                description: function.description.as_deref().filter(|d| !d.is_empty()),
                input_schema: InputSchema { json },
            },
        });
    }
    let choice = match req.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) {
        None => None,
        Some(ToolChoiceKind::FunctionName(name)) => Some(json!({"tool": {"name": name}})),
        Some(ToolChoiceKind::Mode(mode)) => match ToolChoiceMode::try_from(*mode) {
            // Converse has no `none`: the tools are left out instead.
            Ok(ToolChoiceMode::None) => return Ok(None),
            Ok(ToolChoiceMode::Required) => Some(json!({"any": {}})),
            _ => Some(json!({"auto": {}})),
        },
    };
    if tools.is_empty() {
        if choice.is_some() {
            return Err(GwError::invalid("tool_choice", "`tool_choice` needs `tools`"));
        }
        return Ok(None);
    }
    Ok(Some(ToolConfig {
        tools,
        tool_choice: choice,
    }))
}

/// Appends a turn, merged into the previous one when the role repeats.
/// Empty turns are left out (Converse rejects empty content).
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

fn system_texts<'a>(
    m: &'a Message,
    i: usize,
    provider: &str,
    out: &mut Vec<TextBlock<'a>>,
) -> Result<(), GwError> {
    let texts = super::system_texts(m, i)
        .map_err(|param| unsupported(provider, &param, "non-text parts in system messages"))?;
    out.extend(texts.into_iter().map(|text| TextBlock { text }));
    Ok(())
}

/// The blocks of a user or assistant message's content.
fn content_blocks<'a>(
    content: Option<&'a Content>,
    i: usize,
    provider: &str,
) -> Result<Vec<Block<'a>>, GwError> {
    let mut blocks = Vec::new();
    match content.and_then(|c| c.value.as_ref()) {
        None => {}
        Some(ContentValue::Text(text)) if text.is_empty() => {}
        Some(ContentValue::Text(text)) => blocks.push(Block::Text(text)),
        Some(ContentValue::Parts(parts)) => {
            for (j, part) in parts.parts.iter().enumerate() {
                let at = || format!("messages[{i}].content[{j}]");
                match &part.part {
                    None => {}
                    Some(Part::Text(text) | Part::Refusal(text)) if text.is_empty() => {}
                    Some(Part::Text(text) | Part::Refusal(text)) => blocks.push(Block::Text(text)),
                    Some(Part::ImageUrl(image)) => {
                        blocks.push(Block::Image(image_block(&image.url, &at(), provider)?));
                    }
                    Some(Part::File(_)) => {
                        return Err(unsupported(provider, &format!("{}.file", at()), "file parts"));
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

/// A tool message's content: JSON text as a `json` block (Converse's
/// structured result), anything else as `text`.
fn result_blocks<'a>(
    content: Option<&'a Content>,
    i: usize,
    provider: &str,
) -> Result<Vec<ResultBlock<'a>>, GwError> {
    let text_block = |text: &'a str| match llmgw_kit::openai::raw_strict(text) {
        Ok(raw) if raw.get().starts_with('{') => ResultBlock::Json(raw),
        _ => ResultBlock::Text(text),
    };
    let mut blocks = Vec::new();
    match content.and_then(|c| c.value.as_ref()) {
        None => {}
        Some(ContentValue::Text(text)) => blocks.push(text_block(text)),
        Some(ContentValue::Parts(parts)) => {
            for (j, part) in parts.parts.iter().enumerate() {
                let at = || format!("messages[{i}].content[{j}]");
                match &part.part {
                    None => {}
                    Some(Part::Text(text) | Part::Refusal(text)) => blocks.push(text_block(text)),
                    Some(Part::ImageUrl(image)) => {
                        blocks.push(ResultBlock::Image(image_block(&image.url, &at(), provider)?));
                    }
                    Some(_) => {
                        return Err(unsupported(provider, &at(), "non-text, non-image tool results"));
                    }
                }
            }
        }
    }
    // Converse wants at least one block; an empty result is empty text.
    if blocks.is_empty() {
        blocks.push(ResultBlock::Text(""));
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

/// An inline image; Bedrock takes bytes only, so an http(s) URL is refused.
fn image_block<'a>(url: &'a str, at: &str, provider: &str) -> Result<Image<'a>, GwError> {
    let param = format!("{at}.image_url.url");
    let Some((media, data)) = data_url(url) else {
        return Err(unsupported(
            provider,
            &param,
            "image urls (send the image inline as a base64 data url)",
        ));
    };
    let format = match media.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(unsupported(
                provider,
                &param,
                &format!("images of type `{other}` (use png, jpeg, gif or webp)"),
            ));
        }
    };
    Ok(Image {
        format,
        source: ImageSource { bytes: data },
    })
}

/// Tool-call arguments as the JSON object Converse wants as `input`.
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

// ---- response --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    #[serde(borrow)]
    output: Output<'a>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    message: OutputMessage<'a>,
}

#[derive(Deserialize)]
struct OutputMessage<'a> {
    #[serde(borrow, default)]
    content: Vec<ResponseBlock<'a>>,
}

/// One content block: exactly one member is set.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBlock<'a> {
    #[serde(default)]
    text: Option<String>,
    #[serde(default, borrow)]
    tool_use: Option<ResponseToolUse<'a>>,
    #[serde(default)]
    reasoning_content: Option<ReasoningContent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseToolUse<'a> {
    tool_use_id: String,
    name: String,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReasoningContent {
    #[serde(default)]
    reasoning_text: Option<ReasoningText>,
}

#[derive(Deserialize)]
struct ReasoningText {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
    #[serde(default)]
    cache_write_input_tokens: Option<u32>,
}

impl WireUsage {
    /// OpenAI counts every input token as a prompt token; Bedrock counts
    /// cache reads and writes apart from `inputTokens`.
    fn canonical(self) -> Usage {
        let cached = self.cache_read_input_tokens;
        let prompt = self
            .input_tokens
            .saturating_add(cached.unwrap_or(0))
            .saturating_add(self.cache_write_input_tokens.unwrap_or(0));
        Usage {
            prompt_tokens: prompt,
            completion_tokens: self.output_tokens,
            total_tokens: prompt.saturating_add(self.output_tokens),
            cached_tokens: cached,
            ..Usage::default()
        }
    }
}

fn finish_reason(stop_reason: Option<&str>, json_mode: bool) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") if !json_mode => FinishReason::ToolCalls,
        Some("guardrail_intervened" | "content_filtered") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// A Converse response as a canonical response; `Err` says what was wrong.
pub(crate) fn parse_response(
    body: &[u8],
    id: &str,
    model: &str,
    json_mode: bool,
) -> Result<ChatResponse, String> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in wire.output.message.content {
        if let Some(t) = block.text {
            text.push_str(&t);
        }
        if let Some(r) = block.reasoning_content.and_then(|r| r.reasoning_text) {
            reasoning.get_or_insert_default().push_str(&r.text);
        }
        if let Some(call) = block.tool_use {
            if json_mode && call.name == JSON_TOOL {
                text.push_str(call.input.map_or("{}", RawValue::get));
                continue;
            }
            tool_calls.push(ToolCall {
                id: call.tool_use_id,
                r#type: "function".to_owned(),
                function: Some(FunctionCall {
                    name: call.name,
                    arguments: call.input.map_or("{}", RawValue::get).to_owned(),
                }),
            });
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
        id: id.to_owned(),
        created: unix_now(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: Some(Message {
                role: Role::Assistant as i32,
                content,
                tool_calls,
                reasoning,
                ..Message::default()
            }),
            finish_reason: finish_reason(wire.stop_reason.as_deref(), json_mode) as i32,
            logprobs_json: None,
            stop_sequence: None,
        }],
        usage: Some(wire.usage.canonical()),
        ..ChatResponse::default()
    })
}

// ---- streaming -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    #[serde(default)]
    content_block_index: u32,
    #[serde(default)]
    start: Option<StartBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    #[serde(default)]
    tool_use: Option<StartToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartToolUse {
    tool_use_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    #[serde(default)]
    content_block_index: u32,
    #[serde(default)]
    delta: DeltaBody,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeltaBody {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<DeltaToolUse>,
    #[serde(default)]
    reasoning_content: Option<DeltaReasoning>,
}

#[derive(Deserialize)]
struct DeltaToolUse {
    #[serde(default)]
    input: String,
}

#[derive(Deserialize)]
struct DeltaReasoning {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ExceptionBody {
    #[serde(default, alias = "Message")]
    message: String,
}

/// The frame-to-chunk state machine, apart from I/O so it can be tested.
pub(crate) struct Translator {
    peer: Peer,
    id: String,
    model: String,
    created: i64,
    json_mode: bool,
    /// Tool-use blocks: (Bedrock's content block index, tool-call ordinal);
    /// the forced [`JSON_TOOL`] has no ordinal (its input is the text).
    tools: Vec<(u32, Option<u32>)>,
    calls: u32,
    started: bool,
    stopped: bool,
}

impl Translator {
    pub(crate) fn new(peer: Peer, id: String, model: String, json_mode: bool) -> Self {
        Self {
            peer,
            id,
            model,
            created: unix_now(),
            json_mode,
            tools: Vec::new(),
            calls: 0,
            started: false,
            stopped: false,
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

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut VecDeque<ChatChunk>) {
        if !self.started {
            self.started = true;
            out.push_back(self.delta(Delta {
                role: Some(Role::Assistant as i32),
                content: Some(String::new()),
                ..Delta::default()
            }));
        }
    }

    fn invalid(&self) -> GwError {
        self.peer.error(
            ErrorCode::UpstreamError,
            format!("provider `{}` sent an invalid stream event", self.peer.name()),
        )
    }

    fn parse<'de, T: Deserialize<'de>>(&self, payload: &'de [u8]) -> Result<T, GwError> {
        serde_json::from_slice(payload).map_err(|_| self.invalid())
    }

    /// Translates one frame into chunks (pushed on `out`); `Ok(true)` once
    /// the stream is complete (after `metadata`).
    pub(crate) fn on_frame(&mut self, frame: &Frame, out: &mut VecDeque<ChatChunk>) -> Result<bool, GwError> {
        let header = |name: &str| {
            frame
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str().to_owned())
        };
        let payload = frame.payload().as_ref();
        match header(":message-type").as_deref() {
            Some("event") | None => {}
            Some("exception") => {
                let kind = header(":exception-type").unwrap_or_default();
                let message = self
                    .parse::<ExceptionBody>(payload)
                    .map(|b| b.message)
                    .unwrap_or_default();
                return Err(self.exception(&kind, &message));
            }
            Some(_) => {
                let kind = header(":error-code").unwrap_or_default();
                let message = header(":error-message").unwrap_or_default();
                return Err(self.exception(&kind, &message));
            }
        }
        match header(":event-type").as_deref().unwrap_or("") {
            "messageStart" => self.start(out),
            "contentBlockStart" => {
                self.start(out);
                let start: BlockStart = self.parse(payload)?;
                if let Some(tool) = start.start.and_then(|s| s.tool_use) {
                    if self.json_mode && tool.name == JSON_TOOL {
                        self.tools.push((start.content_block_index, None));
                        return Ok(false);
                    }
                    let ordinal = self.calls;
                    self.calls += 1;
                    self.tools.push((start.content_block_index, Some(ordinal)));
                    out.push_back(self.delta(Delta {
                        tool_calls: vec![ToolCallDelta {
                            index: ordinal,
                            id: Some(tool.tool_use_id),
                            r#type: Some("function".to_owned()),
                            name: Some(tool.name),
                            arguments: Some(String::new()),
                        }],
                        ..Delta::default()
                    }));
                }
            }
            "contentBlockDelta" => {
                self.start(out);
                let d: BlockDelta = self.parse(payload)?;
                if let Some(text) = d.delta.text.filter(|t| !t.is_empty()) {
                    out.push_back(self.delta(Delta {
                        content: Some(text),
                        ..Delta::default()
                    }));
                }
                if let Some(text) = d
                    .delta
                    .reasoning_content
                    .and_then(|r| r.text)
                    .filter(|t| !t.is_empty())
                {
                    out.push_back(self.delta(Delta {
                        reasoning: Some(text),
                        ..Delta::default()
                    }));
                }
                if let Some(input) = d.delta.tool_use.map(|t| t.input).filter(|i| !i.is_empty()) {
                    let ordinal = self
                        .tools
                        .iter()
                        .rev()
                        .find(|(block, _)| *block == d.content_block_index)
                        .map(|(_, ordinal)| *ordinal)
                        .ok_or_else(|| self.invalid())?;
                    let delta = match ordinal {
                        Some(ordinal) => Delta {
                            tool_calls: vec![ToolCallDelta {
                                index: ordinal,
                                arguments: Some(input),
                                ..ToolCallDelta::default()
                            }],
                            ..Delta::default()
                        },
                        None => Delta {
                            content: Some(input),
                            ..Delta::default()
                        },
                    };
                    out.push_back(self.delta(delta));
                }
            }
            "messageStop" => {
                self.start(out);
                let stop: MessageStop = self.parse(payload)?;
                self.stopped = true;
                out.push_back(self.chunk(
                    vec![ChunkChoice {
                        index: 0,
                        delta: Some(Delta::default()),
                        finish_reason: finish_reason(stop.stop_reason.as_deref(), self.json_mode) as i32,
                        logprobs_json: None,
                        stop_sequence: None,
                    }],
                    None,
                ));
            }
            "metadata" => {
                let meta: Metadata = self.parse(payload)?;
                out.push_back(self.chunk(Vec::new(), Some(meta.usage.unwrap_or_default().canonical())));
                return Ok(true);
            }
            // `contentBlockStop` and events Bedrock may add.
            _ => {}
        }
        Ok(false)
    }

    /// An exception frame mid-stream, classified by its type.
    fn exception(&self, kind: &str, message: &str) -> GwError {
        let lower = kind.to_ascii_lowercase();
        let (code, retryable) = if lower.starts_with("throttling") {
            (ErrorCode::UpstreamRateLimited, true)
        } else if lower.starts_with("validation") {
            (ErrorCode::UpstreamRejected, false)
        } else if lower.starts_with("modeltimeout") {
            (ErrorCode::UpstreamTimeout, true)
        } else {
            (ErrorCode::UpstreamError, true)
        };
        let what = match (kind.is_empty(), message.is_empty()) {
            (false, false) => format!("{kind}: {message}"),
            (false, true) => kind.to_owned(),
            (true, _) => message.to_owned(),
        };
        self.peer
            .error(code, format!("provider `{}`: {what}", self.peer.name()))
            .with_retryable(retryable)
    }
}

/// A ConverseStream body (AWS event-stream frames) as canonical chunks;
/// apart from I/O, so the fuzz targets run it on bytes.
pub(crate) fn decode_stream<S>(
    body: S,
    translator: Translator,
) -> impl Stream<Item = Result<ChatChunk, GwError>> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    Chunks {
        body,
        buf: BytesMut::new(),
        decoder: MessageFrameDecoder::new(),
        translator,
        ready: VecDeque::new(),
        finished: false,
    }
}

pin_project! {
    /// The provider's event-stream frames as canonical chunks, decoded as
    /// bytes arrive. Owns the response body: dropping this drops the
    /// connection, which is how a client's disconnect cancels the call.
    struct Chunks<S> {
        #[pin]
        body: S,
        // Bytes received and not yet decoded: at most one frame's worth.
        buf: BytesMut,
        decoder: MessageFrameDecoder,
        translator: Translator,
        // Chunks translated from one frame, not yet yielded.
        ready: VecDeque<ChatChunk>,
        // Set after `metadata`, the end of the body or an error.
        finished: bool,
    }
}

impl<S> Stream for Chunks<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>>,
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
            match decode(this.decoder, this.buf, this.translator, this.ready) {
                Ok(Some(true)) => {
                    *this.finished = true;
                    // One more look, never a wait: reading the body's end lets
                    // the connection go back to the pool.
                    let _ = this.body.as_mut().poll_next(cx);
                    continue;
                }
                Ok(Some(false)) => continue,
                Ok(None) => {}
                Err(e) => {
                    *this.finished = true;
                    this.ready.clear();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let peer = &this.translator.peer;
            match ready!(this.body.as_mut().poll_next(cx)) {
                Some(Ok(bytes)) => this.buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    *this.finished = true;
                    return Poll::Ready(Some(Err(peer.body_error(&e))));
                }
                None => {
                    *this.finished = true;
                    // A stream that stopped but sent no usage still ended well.
                    if this.translator.stopped && this.buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    let err = peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{}` closed the stream early", peer.name()),
                    );
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }
}

/// Decodes at most one frame from `buf`: `Ok(None)` when more bytes are
/// needed, else whether the stream is complete.
pub(crate) fn decode(
    decoder: &mut MessageFrameDecoder,
    buf: &mut BytesMut,
    translator: &mut Translator,
    out: &mut VecDeque<ChatChunk>,
) -> Result<Option<bool>, GwError> {
    match decoder.decode_frame(&mut *buf) {
        Ok(DecodedFrame::Incomplete) => Ok(None),
        Ok(DecodedFrame::Complete(frame)) => translator.on_frame(&frame, out).map(Some),
        Err(_) => Err(translator.peer.error(
            ErrorCode::UpstreamError,
            format!(
                "provider `{}` sent a malformed event stream",
                translator.peer.name()
            ),
        )),
    }
}

mod embed;
#[cfg(test)]
mod tests;
