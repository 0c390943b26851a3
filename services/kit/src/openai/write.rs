//! Canonical protobuf → OpenAI JSON, borrowing from the protobuf values.

use std::collections::HashMap;

use llmgw_proto as pb;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{finish_str, role_str};
use crate::error::GwError;

/// Raw JSON text emitted byte for byte (it was validated when read).
fn raw(s: &str) -> Option<&RawValue> {
    super::read::raw_strict(s).ok()
}

fn skip_false(b: &bool) -> bool {
    !*b
}

// ---- request ---------------------------------------------------------------

#[derive(Serialize)]
struct RequestOut<'a> {
    model: &'a str,
    messages: Vec<MessageOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormatOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<StopOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_bias: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<bool>,
    #[serde(skip_serializing_if = "skip_false")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptionsOut>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    metadata: &'a HashMap<String, String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct StreamOptionsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    include_usage: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum StopOut<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    /// `None` is written as `null` in responses and left out in requests.
    #[serde(skip_serializing_if = "ContentOut::is_absent")]
    content: ContentOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<ThinkingBlockOut<'a>>,
}

#[derive(Serialize)]
struct ThinkingBlockOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
}

fn thinking_blocks_out(blocks: &[pb::ThinkingBlock]) -> Vec<ThinkingBlockOut<'_>> {
    blocks
        .iter()
        .map(|b| ThinkingBlockOut {
            kind: &b.r#type,
            thinking: b.thinking.as_deref(),
            signature: b.signature.as_deref(),
            data: b.data.as_deref(),
        })
        .collect()
}

enum ContentOut<'a> {
    Absent,
    Null,
    Text(&'a str),
    Parts(&'a [pb::ContentPart]),
}

impl ContentOut<'_> {
    fn is_absent(&self) -> bool {
        matches!(self, ContentOut::Absent)
    }
}

impl Serialize for ContentOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            ContentOut::Absent | ContentOut::Null => s.serialize_none(),
            ContentOut::Text(t) => s.serialize_str(t),
            ContentOut::Parts(parts) => {
                let mut seq = s.serialize_seq(Some(parts.len()))?;
                for p in *parts {
                    if let Some(part) = &p.part {
                        seq.serialize_element(&PartOut(part))?;
                    }
                }
                seq.end()
            }
        }
    }
}

struct PartOut<'a>(&'a pb::content_part::Part);

impl Serialize for PartOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use pb::content_part::Part;
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        match self.0 {
            Part::Text(text) => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
            }
            Part::ImageUrl(img) => {
                m.serialize_entry("type", "image_url")?;
                m.serialize_entry(
                    "image_url",
                    &ImageUrlOut {
                        url: &img.url,
                        detail: img.detail.as_deref(),
                    },
                )?;
            }
            Part::InputAudio(a) => {
                m.serialize_entry("type", "input_audio")?;
                m.serialize_entry(
                    "input_audio",
                    &InputAudioOut {
                        data: &a.data,
                        format: &a.format,
                    },
                )?;
            }
            Part::File(f) => {
                m.serialize_entry("type", "file")?;
                m.serialize_entry(
                    "file",
                    &FileOut {
                        file_id: f.file_id.as_deref(),
                        filename: f.filename.as_deref(),
                        file_data: f.file_data.as_deref(),
                    },
                )?;
            }
            Part::Refusal(r) => {
                m.serialize_entry("type", "refusal")?;
                m.serialize_entry("refusal", r)?;
            }
        }
        m.end()
    }
}

#[derive(Serialize)]
struct ImageUrlOut<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct InputAudioOut<'a> {
    data: &'a str,
    format: &'a str,
}

#[derive(Serialize)]
struct FileOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    file_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<&'a str>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    function: FunctionCallOut<'a>,
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    function: FunctionDefOut<'a>,
}

#[derive(Serialize)]
struct FunctionDefOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormatOut<'a> {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaOut<'a> },
}

#[derive(Serialize)]
struct JsonSchemaOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

fn message_out(m: &pb::Message, in_response: bool) -> MessageOut<'_> {
    let content = match &m.content {
        Some(pb::Content {
            value: Some(pb::content::Value::Text(t)),
        }) => ContentOut::Text(t),
        Some(pb::Content {
            value: Some(pb::content::Value::Parts(p)),
        }) => ContentOut::Parts(&p.parts),
        Some(pb::Content { value: None }) => ContentOut::Null,
        None if in_response => ContentOut::Null,
        None => ContentOut::Absent,
    };
    MessageOut {
        role: role_str(pb::Role::try_from(m.role).unwrap_or(pb::Role::User)),
        content,
        name: m.name.as_deref(),
        refusal: if in_response {
            Some(m.refusal.as_deref())
        } else {
            m.refusal.as_deref().map(Some)
        },
        tool_calls: m
            .tool_calls
            .iter()
            .map(|t| {
                let (name, arguments) = t
                    .function
                    .as_ref()
                    .map_or(("", ""), |f| (f.name.as_str(), f.arguments.as_str()));
                ToolCallOut {
                    id: &t.id,
                    kind: if t.r#type.is_empty() {
                        "function"
                    } else {
                        &t.r#type
                    },
                    function: FunctionCallOut { name, arguments },
                }
            })
            .collect(),
        tool_call_id: m.tool_call_id.as_deref(),
        function_call: m.function_call.as_ref().map(|f| FunctionCallOut {
            name: &f.name,
            arguments: &f.arguments,
        }),
        reasoning: m.reasoning.as_deref(),
        // Signed provider reasoning goes back to clients; OpenAI-wire
        // providers have no such field, so requests never carry it.
        thinking_blocks: if in_response {
            thinking_blocks_out(&m.thinking_blocks)
        } else {
            Vec::new()
        },
    }
}

fn tool_choice_out(c: &pb::ToolChoice) -> Option<Value> {
    use pb::tool_choice::Choice;
    Some(match c.choice.as_ref()? {
        Choice::Mode(m) => Value::from(match pb::ToolChoiceMode::try_from(*m).ok()? {
            pb::ToolChoiceMode::None => "none",
            pb::ToolChoiceMode::Auto => "auto",
            pb::ToolChoiceMode::Required => "required",
            pb::ToolChoiceMode::Unspecified => return None,
        }),
        Choice::FunctionName(name) => serde_json::json!({"type": "function", "function": {"name": name}}),
    })
}

fn response_format_out(f: &pb::ResponseFormat) -> Option<ResponseFormatOut<'_>> {
    use pb::response_format::Format;
    Some(match f.format.as_ref()? {
        Format::Text(_) => ResponseFormatOut::Text,
        Format::JsonObject(_) => ResponseFormatOut::JsonObject,
        Format::JsonSchema(s) => ResponseFormatOut::JsonSchema {
            json_schema: JsonSchemaOut {
                name: &s.name,
                description: s.description.as_deref(),
                schema: s.schema_json.as_deref().and_then(raw),
                strict: s.strict,
            },
        },
    })
}

/// Writes `req` as an OpenAI request body for `model` (the provider's name
/// for it). `include_usage` overrides `stream_options.include_usage` on
/// streams (the gateway meters every stream).
pub fn request_json(
    req: &pb::ChatRequest,
    model: &str,
    include_usage: Option<bool>,
) -> Result<Vec<u8>, GwError> {
    let extra = match req.extra_json.as_deref() {
        Some(text) => Some(
            serde_json::from_str::<Map<String, Value>>(text)
                .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
        ),
        None => None,
    };
    let stream_options = match (req.stream, include_usage, &req.stream_options) {
        (true, Some(force), _) => Some(StreamOptionsOut {
            include_usage: Some(force),
        }),
        (_, _, Some(o)) => Some(StreamOptionsOut {
            include_usage: o.include_usage,
        }),
        _ => None,
    };
    let out = RequestOut {
        model,
        messages: req.messages.iter().map(|m| message_out(m, false)).collect(),
        tools: req
            .tools
            .iter()
            .filter_map(|t| {
                let f = t.function.as_ref()?;
                Some(ToolOut {
                    kind: if t.r#type.is_empty() {
                        "function"
                    } else {
                        &t.r#type
                    },
                    function: FunctionDefOut {
                        name: &f.name,
                        description: f.description.as_deref(),
                        parameters: f.parameters_json.as_deref().and_then(raw),
                        strict: f.strict,
                    },
                })
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().and_then(tool_choice_out),
        response_format: req.response_format.as_ref().and_then(response_format_out),
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        max_completion_tokens: req.max_completion_tokens,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        stop: req
            .stop
            .as_ref()
            .map(|s| match (s.single, s.sequences.as_slice()) {
                (true, [one]) => StopOut::One(one),
                (_, many) => StopOut::Many(many),
            }),
        n: req.n,
        seed: req.seed,
        user: req.user.as_deref(),
        reasoning_effort: req.reasoning_effort.as_deref(),
        logprobs: req.logprobs,
        top_logprobs: req.top_logprobs,
        logit_bias: req.logit_bias_json.as_deref().and_then(raw),
        parallel_tool_calls: req.parallel_tool_calls,
        service_tier: req.service_tier.as_deref(),
        store: req.store,
        stream: req.stream,
        stream_options,
        metadata: &req.metadata,
        extra,
    };
    serde_json::to_vec(&out).map_err(|e| GwError::internal(format!("cannot write request: {e}")))
}

// ---- response and chunks ---------------------------------------------------

#[derive(Serialize)]
struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'a>>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: Option<&'a RawValue>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: PromptDetailsOut,
    completion_tokens_details: CompletionDetailsOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "skip_false")]
    estimated: bool,
}

#[derive(Serialize)]
struct PromptDetailsOut {
    cached_tokens: u32,
}

#[derive(Serialize)]
struct CompletionDetailsOut {
    reasoning_tokens: u32,
}

impl From<&pb::Usage> for UsageOut {
    fn from(u: &pb::Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: PromptDetailsOut {
                cached_tokens: u.cached_tokens.unwrap_or(0),
            },
            completion_tokens_details: CompletionDetailsOut {
                reasoning_tokens: u.reasoning_tokens.unwrap_or(0),
            },
            cost_usd: u.cost_usd,
            estimated: u.estimated,
        }
    }
}

#[derive(Serialize)]
pub(super) struct MetadataOut<'a> {
    request_id: &'a str,
    requested_model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_provider: Option<&'a str>,
    used_provider: &'a str,
    used_model: &'a str,
    attempts: Vec<AttemptOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_age_secs: Option<u32>,
}

#[derive(Serialize)]
struct AttemptOut<'a> {
    provider: &'a str,
    model: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u32>,
    latency_ms: f64,
}

pub(super) fn metadata_out(m: &pb::RoutingMetadata) -> MetadataOut<'_> {
    MetadataOut {
        request_id: &m.request_id,
        requested_model: &m.requested_model,
        requested_provider: m.requested_provider.as_deref(),
        used_provider: &m.used_provider,
        used_model: &m.used_model,
        attempts: m
            .attempts
            .iter()
            .map(|a| AttemptOut {
                provider: &a.provider,
                model: &a.model,
                status: &a.status,
                error_type: a.error_type.as_deref(),
                http_status: a.http_status,
                latency_ms: a.latency_ms,
            })
            .collect(),
        config: m.config.as_deref(),
        config_version: m.config_version,
        variant: m.variant.as_deref(),
        strategy: m.strategy.as_deref(),
        cache: m.cache.as_deref(),
        cache_age_secs: m.cache_age_secs,
    }
}

fn finish(reason: i32) -> Option<&'static str> {
    finish_str(pb::FinishReason::try_from(reason).unwrap_or(pb::FinishReason::Unspecified))
}

/// Writes a chat completion object.
pub fn response_json(resp: &pb::ChatResponse) -> Result<Vec<u8>, GwError> {
    let out = ResponseOut {
        id: &resp.id,
        object: "chat.completion",
        created: resp.created,
        model: &resp.model,
        choices: resp
            .choices
            .iter()
            .filter_map(|c| {
                Some(ChoiceOut {
                    index: c.index,
                    message: message_out(c.message.as_ref()?, true),
                    logprobs: c.logprobs_json.as_deref().and_then(raw),
                    finish_reason: finish(c.finish_reason),
                })
            })
            .collect(),
        usage: resp.usage.as_ref().map(UsageOut::from),
        system_fingerprint: resp.system_fingerprint.as_deref(),
        service_tier: resp.service_tier.as_deref(),
        metadata: resp.metadata.as_ref().map(metadata_out),
    };
    serde_json::to_vec(&out).map_err(|e| GwError::internal(format!("cannot write response: {e}")))
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'a str>,
    choices: Vec<ChunkChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'a>>,
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<&'a RawValue>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallDeltaOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<ThinkingBlockOut<'a>>,
}

#[derive(Serialize)]
struct ToolCallDeltaOut<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    function: FunctionDeltaOut<'a>,
}

#[derive(Serialize)]
struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
}

/// Appends a chat completion chunk object's JSON to `buf`.
pub fn chunk_json(chunk: &pb::ChatChunk, buf: &mut Vec<u8>) -> Result<(), GwError> {
    let out = ChunkOut {
        id: &chunk.id,
        object: "chat.completion.chunk",
        created: chunk.created,
        model: &chunk.model,
        system_fingerprint: chunk.system_fingerprint.as_deref(),
        service_tier: chunk.service_tier.as_deref(),
        choices: chunk
            .choices
            .iter()
            .map(|c| {
                let d = c.delta.as_ref();
                ChunkChoiceOut {
                    index: c.index,
                    delta: DeltaOut {
                        role: d
                            .and_then(|d| d.role)
                            .map(|r| role_str(pb::Role::try_from(r).unwrap_or(pb::Role::Assistant))),
                        content: d.and_then(|d| d.content.as_deref()),
                        reasoning: d.and_then(|d| d.reasoning.as_deref()),
                        thinking_blocks: d
                            .map(|d| thinking_blocks_out(&d.thinking_blocks))
                            .unwrap_or_default(),
                        refusal: d.and_then(|d| d.refusal.as_deref()),
                        tool_calls: d
                            .map(|d| {
                                d.tool_calls
                                    .iter()
                                    .map(|t| ToolCallDeltaOut {
                                        index: t.index,
                                        id: t.id.as_deref(),
                                        kind: t.r#type.as_deref(),
                                        function: FunctionDeltaOut {
                                            name: t.name.as_deref(),
                                            arguments: t.arguments.as_deref(),
                                        },
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                    logprobs: c.logprobs_json.as_deref().and_then(raw),
                    finish_reason: finish(c.finish_reason),
                }
            })
            .collect(),
        usage: chunk.usage.as_ref().map(UsageOut::from),
        metadata: chunk.metadata.as_ref().map(metadata_out),
    };
    serde_json::to_writer(buf, &out).map_err(|e| GwError::internal(format!("cannot write chunk: {e}")))
}
