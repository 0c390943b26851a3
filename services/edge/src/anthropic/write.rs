//! The canonical response, stream and errors → Anthropic's shapes: a
//! `message` object, the Messages SSE events, and `{"type":"error",...}`.

use bytes::{BufMut, BytesMut};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde::Serialize;
use serde_json::value::RawValue;

// ---- errors -----------------------------------------------------------------

/// Anthropic's error `type` for a code (the HTTP status comes from the code,
/// in one place: [`GwError::http_status`]).
fn error_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::MethodNotAllowed
        | ErrorCode::UpstreamRejected
        | ErrorCode::ContextLengthExceeded => "invalid_request_error",
        ErrorCode::Unauthenticated => "authentication_error",
        ErrorCode::BudgetExceeded => "billing_error",
        ErrorCode::PermissionDenied => "permission_error",
        ErrorCode::NotFound | ErrorCode::ModelNotFound => "not_found_error",
        ErrorCode::PayloadTooLarge => "request_too_large",
        ErrorCode::RateLimited | ErrorCode::UpstreamRateLimited => "rate_limit_error",
        ErrorCode::Unavailable => "overloaded_error",
        ErrorCode::UpstreamError
        | ErrorCode::UpstreamTimeout
        | ErrorCode::Internal
        | ErrorCode::Unspecified => "api_error",
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorOut<'a>,
}

fn error_out(err: &GwError) -> ErrorOut<'_> {
    ErrorOut {
        kind: error_type(err.code()),
        message: err.message(),
    }
}

/// `{"type":"error","error":{"type","message"}}` for `err`.
pub fn error_json(err: &GwError) -> Vec<u8> {
    let body = ErrorEnvelope {
        kind: "error",
        error: error_out(err),
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#.to_vec()
    })
}

// ---- the message --------------------------------------------------------------

/// `msg_…` from the gateway's request id (`req_…`).
pub fn message_id(request_id: &str) -> String {
    format!("msg_{}", request_id.strip_prefix("req_").unwrap_or(request_id))
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    content: Vec<BlockOut<'a>>,
    model: &'a str,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Text {
        text: &'a str,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a RawValue,
    },
}

#[derive(Serialize, Default, Clone, Copy)]
struct UsageOut {
    input_tokens: u32,
    output_tokens: u32,
    /// Cache writes have no canonical field: they are in `input_tokens`.
    cache_creation_input_tokens: u32,
    cache_read_input_tokens: u32,
}

/// Canonical usage counts cached tokens among the prompt tokens; Anthropic
/// counts them apart.
fn usage_out(u: &pb::Usage) -> UsageOut {
    let cached = u.cached_tokens.unwrap_or(0);
    UsageOut {
        input_tokens: u.prompt_tokens.saturating_sub(cached),
        output_tokens: u.completion_tokens,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: cached,
    }
}

/// Anthropic's `stop_reason` for a finish reason; `stop_sequence` when the
/// provider named the sequence that matched.
fn stop_reason(reason: i32, sequence: Option<&str>) -> &'static str {
    match pb::FinishReason::try_from(reason).unwrap_or(pb::FinishReason::Unspecified) {
        pb::FinishReason::Stop if sequence.is_some() => "stop_sequence",
        pb::FinishReason::Length => "max_tokens",
        pb::FinishReason::ToolCalls | pb::FinishReason::FunctionCall => "tool_use",
        pb::FinishReason::ContentFilter => "refusal",
        pb::FinishReason::Stop | pb::FinishReason::Unspecified => "end_turn",
    }
}

/// An empty JSON object, for a tool call whose arguments are not one.
fn empty_object() -> &'static RawValue {
    const EMPTY: &str = "{}";
    // A literal that is valid JSON: this cannot fail.
    serde_json::from_str(EMPTY).unwrap_or(RawValue::NULL)
}

/// Tool-call arguments as the JSON object Anthropic's `input` is. Text a
/// model produced that is not an object becomes `{}`.
fn tool_input(arguments: &str) -> &RawValue {
    match serde_json::from_str::<&RawValue>(arguments) {
        Ok(raw) if raw.get().trim_start().starts_with('{') => raw,
        _ => empty_object(),
    }
}

/// A complete canonical response as an Anthropic `message`.
pub fn message_json(resp: &pb::ChatResponse) -> Result<Vec<u8>, GwError> {
    let meta = resp.metadata.as_ref();
    let id = message_id(meta.map_or(resp.id.as_str(), |m| m.request_id.as_str()));
    let choice = resp.choices.first();
    let msg = choice.and_then(|c| c.message.as_ref());
    let mut content = Vec::new();
    if let Some(m) = msg {
        if m.thinking_blocks.is_empty()
            && let Some(r) = m.reasoning.as_deref().filter(|r| !r.is_empty())
        {
            // Reasoning from a provider that does not sign it.
            content.push(BlockOut::Thinking {
                thinking: r,
                signature: "",
            });
        }
        for b in &m.thinking_blocks {
            content.push(match b.r#type.as_str() {
                "redacted_thinking" => BlockOut::RedactedThinking {
                    data: b.data.as_deref().unwrap_or(""),
                },
                _ => BlockOut::Thinking {
                    thinking: b.thinking.as_deref().unwrap_or(""),
                    signature: b.signature.as_deref().unwrap_or(""),
                },
            });
        }
        match m.content.as_ref().and_then(|c| c.value.as_ref()) {
            Some(pb::content::Value::Text(t)) if !t.is_empty() => content.push(BlockOut::Text { text: t }),
            Some(pb::content::Value::Parts(p)) => {
                for part in &p.parts {
                    if let Some(pb::content_part::Part::Text(t) | pb::content_part::Part::Refusal(t)) =
                        &part.part
                        && !t.is_empty()
                    {
                        content.push(BlockOut::Text { text: t });
                    }
                }
            }
            _ => {}
        }
        if let Some(r) = m.refusal.as_deref().filter(|r| !r.is_empty()) {
            content.push(BlockOut::Text { text: r });
        }
        for call in &m.tool_calls {
            let (name, arguments) = call
                .function
                .as_ref()
                .map_or(("", ""), |f| (f.name.as_str(), f.arguments.as_str()));
            content.push(BlockOut::ToolUse {
                id: &call.id,
                name,
                input: tool_input(arguments),
            });
        }
    }
    let model = if resp.model.is_empty() {
        meta.map_or("", |m| m.used_model.as_str())
    } else {
        &resp.model
    };
    let out = MessageOut {
        id: &id,
        kind: "message",
        role: "assistant",
        content,
        model,
        stop_reason: Some(stop_reason(
            choice.map_or(0, |c| c.finish_reason),
            choice.and_then(|c| c.stop_sequence.as_deref()),
        )),
        stop_sequence: choice.and_then(|c| c.stop_sequence.as_deref()),
        usage: resp.usage.as_ref().map(usage_out).unwrap_or_default(),
    };
    serde_json::to_vec(&out).map_err(|e| GwError::internal(format!("cannot write response: {e}")))
}

// ---- the stream ---------------------------------------------------------------

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: MessageOut<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: BlockOut<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: DeltaOut<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaOut<'a>,
        usage: UsageOut,
    },
    MessageStop,
    Error {
        error: ErrorOut<'a>,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::Ping => "ping",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Error { .. } => "error",
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(
    clippy::enum_variant_names,
    reason = "Anthropic's names: text_delta, input_json_delta, ..."
)]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
    ThinkingDelta { thinking: &'a str },
    SignatureDelta { signature: &'a str },
}

#[derive(Serialize)]
struct MessageDeltaOut<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

/// `event: <name>\ndata: <json>\n\n`.
fn write_event(out: &mut BytesMut, event: &Event<'_>) {
    out.put_slice(b"event: ");
    out.put_slice(event.name().as_bytes());
    out.put_slice(b"\ndata: ");
    let mut w = out.writer();
    if serde_json::to_writer(&mut w, event).is_err() {
        // Serialising these types cannot fail; keep the stream well formed.
        w.get_mut().put_slice(b"{}");
    }
    w.into_inner().put_slice(b"\n\n");
}

/// The block being streamed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u32),
    Thinking(u32),
    /// A tool call by its canonical index, at a block index.
    Tool {
        call: u32,
        index: u32,
    },
}

impl Open {
    fn index(self) -> u32 {
        match self {
            Open::Text(i) | Open::Thinking(i) | Open::Tool { index: i, .. } => i,
        }
    }
}

/// Canonical chunks → Anthropic's events, in Anthropic's order:
/// `message_start` and `ping` first, each block opened
/// (`content_block_start`), filled (`content_block_delta`) and closed
/// (`content_block_stop`) before the next, then `message_delta` (stop reason
/// and usage) and `message_stop`.
pub struct StreamWriter {
    id: String,
    model: String,
    /// Input tokens for `message_start`, before the provider's count.
    input_estimate: u32,
    started: bool,
    open: Option<Open>,
    next_index: u32,
    /// Tool calls seen: canonical index → block index.
    tools: Vec<(u32, u32)>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    usage: Option<pb::Usage>,
}

impl StreamWriter {
    pub fn new(meta: &pb::RoutingMetadata, input_estimate: u32) -> Self {
        Self {
            id: message_id(&meta.request_id),
            model: meta.used_model.clone(),
            input_estimate,
            started: false,
            open: None,
            next_index: 0,
            tools: Vec::new(),
            stop_reason: "end_turn",
            stop_sequence: None,
            usage: None,
        }
    }

    fn start(&mut self, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        if !model.is_empty() {
            model.clone_into(&mut self.model);
        }
        write_event(
            out,
            &Event::MessageStart {
                message: MessageOut {
                    id: &self.id,
                    kind: "message",
                    role: "assistant",
                    content: Vec::new(),
                    model: &self.model,
                    stop_reason: None,
                    stop_sequence: None,
                    usage: UsageOut {
                        input_tokens: self.input_estimate,
                        ..UsageOut::default()
                    },
                },
            },
        );
        write_event(out, &Event::Ping);
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some(open) = self.open.take() {
            write_event(out, &Event::ContentBlockStop { index: open.index() });
        }
    }

    /// Opens a block (closing the open one) and returns its index.
    fn open(&mut self, block: &BlockOut<'_>, kind: impl FnOnce(u32) -> Open, out: &mut BytesMut) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        write_event(
            out,
            &Event::ContentBlockStart {
                index,
                content_block: match block {
                    BlockOut::Text { .. } => BlockOut::Text { text: "" },
                    BlockOut::Thinking { .. } => BlockOut::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    BlockOut::RedactedThinking { data } => BlockOut::RedactedThinking { data },
                    BlockOut::ToolUse { id, name, .. } => BlockOut::ToolUse {
                        id,
                        name,
                        input: empty_object(),
                    },
                },
            },
        );
        self.open = Some(kind(index));
        index
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        let index = match self.open {
            Some(Open::Text(i)) => i,
            _ => self.open(&BlockOut::Text { text: "" }, Open::Text, out),
        };
        write_event(
            out,
            &Event::ContentBlockDelta {
                index,
                delta: DeltaOut::TextDelta { text },
            },
        );
    }

    fn thinking_index(&mut self, out: &mut BytesMut) -> u32 {
        match self.open {
            Some(Open::Thinking(i)) => i,
            _ => self.open(
                &BlockOut::Thinking {
                    thinking: "",
                    signature: "",
                },
                Open::Thinking,
                out,
            ),
        }
    }

    fn thinking(&mut self, thinking: &str, out: &mut BytesMut) {
        let index = self.thinking_index(out);
        write_event(
            out,
            &Event::ContentBlockDelta {
                index,
                delta: DeltaOut::ThinkingDelta { thinking },
            },
        );
    }

    fn tool(&mut self, d: &pb::ToolCallDelta, out: &mut BytesMut) {
        let index = match self.tools.iter().find(|(call, _)| *call == d.index) {
            Some(&(_, index)) => index,
            None => {
                let call = d.index;
                let index = self.open(
                    &BlockOut::ToolUse {
                        id: d.id.as_deref().unwrap_or(""),
                        name: d.name.as_deref().unwrap_or(""),
                        input: empty_object(),
                    },
                    |index| Open::Tool { call, index },
                    out,
                );
                self.tools.push((call, index));
                index
            }
        };
        if let Some(args) = d.arguments.as_deref().filter(|a| !a.is_empty()) {
            write_event(
                out,
                &Event::ContentBlockDelta {
                    index,
                    delta: DeltaOut::InputJsonDelta { partial_json: args },
                },
            );
        }
    }

    /// Writes the events one chunk makes.
    pub fn chunk(&mut self, chunk: &pb::ChatChunk, out: &mut BytesMut) {
        self.start(&chunk.model, out);
        if let Some(u) = &chunk.usage {
            self.usage = Some(*u);
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return;
        };
        if let Some(d) = &choice.delta {
            if let Some(r) = d.reasoning.as_deref().filter(|r| !r.is_empty()) {
                self.thinking(r, out);
            }
            for b in &d.thinking_blocks {
                match b.r#type.as_str() {
                    "redacted_thinking" => {
                        self.open(
                            &BlockOut::RedactedThinking {
                                data: b.data.as_deref().unwrap_or(""),
                            },
                            Open::Thinking,
                            out,
                        );
                        self.close(out);
                    }
                    _ => {
                        // A signed block arrives whole once its signature is
                        // known: its text was streamed already unless no
                        // thinking block is open.
                        let streamed = matches!(self.open, Some(Open::Thinking(_)));
                        if !streamed && let Some(t) = b.thinking.as_deref().filter(|t| !t.is_empty()) {
                            self.thinking(t, out);
                        }
                        let index = self.thinking_index(out);
                        if let Some(signature) = b.signature.as_deref() {
                            write_event(
                                out,
                                &Event::ContentBlockDelta {
                                    index,
                                    delta: DeltaOut::SignatureDelta { signature },
                                },
                            );
                        }
                    }
                }
            }
            if let Some(t) = d.content.as_deref().filter(|t| !t.is_empty()) {
                self.text(t, out);
            }
            if let Some(t) = d.refusal.as_deref().filter(|t| !t.is_empty()) {
                self.text(t, out);
            }
            for call in &d.tool_calls {
                self.tool(call, out);
            }
        }
        if choice.finish_reason != pb::FinishReason::Unspecified as i32 {
            self.stop_reason = stop_reason(choice.finish_reason, choice.stop_sequence.as_deref());
            self.stop_sequence.clone_from(&choice.stop_sequence);
        }
    }

    /// Writes the end: the open block's stop, `message_delta`, `message_stop`.
    pub fn finish(&mut self, out: &mut BytesMut) {
        self.start("", out);
        self.close(out);
        let usage = match &self.usage {
            Some(u) => usage_out(u),
            None => UsageOut {
                input_tokens: self.input_estimate,
                ..UsageOut::default()
            },
        };
        write_event(
            out,
            &Event::MessageDelta {
                delta: MessageDeltaOut {
                    stop_reason: self.stop_reason,
                    stop_sequence: self.stop_sequence.as_deref(),
                },
                usage,
            },
        );
        write_event(out, &Event::MessageStop);
    }

    /// Writes a failed stream's `error` event (after which nothing follows).
    pub fn error(&mut self, err: &GwError, out: &mut BytesMut) {
        write_event(
            out,
            &Event::Error {
                error: error_out(err),
            },
        );
    }
}
