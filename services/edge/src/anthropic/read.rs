//! An Anthropic Messages request → the canonical `ChatRequest`.
//!
//! `system` becomes system messages (one per text block), each turn's
//! content blocks become content parts, `tool_use` blocks become tool calls
//! and `tool_result` blocks tool messages (placed before the rest of their
//! user turn, as OpenAI-shaped providers require), `tool_choice` maps to its
//! canonical mode, `metadata.user_id` to `user`, `stop_sequences` to `stop`,
//! and `thinking` to `reasoning_effort` by its budget. `top_k` and fields the
//! canonical model does not name travel in `extra_json`, for the providers
//! that understand them. What cannot be translated is refused with a 400
//! naming the field (Anthropic's `messages.0.content.1.source` style).

use std::fmt;

use llmgw_kit::openai::raw_json;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Which route a body came to: `count_tokens` needs no `max_tokens`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Messages,
    CountTokens,
}

#[derive(Deserialize)]
struct RequestIn {
    model: String,
    messages: Vec<MessageIn>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    system: Option<TextOrBlocks>,
    #[serde(default)]
    metadata: Option<MetadataIn>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    tools: Option<Vec<ToolIn>>,
    #[serde(default)]
    tool_choice: Option<ToolChoiceIn>,
    #[serde(default)]
    thinking: Option<ThinkingIn>,
    #[serde(default)]
    output_config: Option<OutputConfigIn>,
    /// Everything else, passed through to providers that understand it.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    content: TextOrBlocks,
}

/// Content as Anthropic allows it: a string, or an array of blocks.
enum TextOrBlocks {
    Text(String),
    Blocks(Vec<BlockIn>),
}

impl<'de> Deserialize<'de> for TextOrBlocks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextOrBlocks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextOrBlocks::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(TextOrBlocks::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(b) = seq.next_element()? {
                    blocks.push(b);
                }
                Ok(TextOrBlocks::Blocks(blocks))
            }
        }
        d.deserialize_any(V)
    }
}

/// One content block, by its `type`: a plain struct rather than a tagged
/// enum, so that `input` stays raw JSON text (a tagged enum would buffer
/// it). Fields a block type does not use stay `None`; fields we do not
/// translate (`cache_control`, `citations`) are accepted and ignored.
#[derive(Deserialize)]
struct BlockIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    source: Option<SourceIn>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Box<RawValue>>,
    #[serde(default)]
    tool_use_id: Option<String>,
    #[serde(default)]
    content: Option<TextOrBlocks>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct SourceIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct MetadataIn {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct ToolIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ToolChoiceIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct OutputConfigIn {
    #[serde(default)]
    effort: Option<String>,
    #[serde(default)]
    format: Option<FormatIn>,
}

#[derive(Deserialize)]
struct FormatIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    schema: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ThinkingIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    budget_tokens: Option<u32>,
}

/// A 400 naming `param` in Anthropic's words: `param: what`.
fn invalid(param: impl Into<String>, what: impl fmt::Display) -> GwError {
    let param = param.into();
    let message = format!("{param}: {what}");
    GwError::invalid(param, message)
}

fn malformed() -> GwError {
    GwError::new(ErrorCode::InvalidRequest, "the request body is not valid JSON")
}

/// A serde error as a 400 naming the field at fault, dotted as Anthropic
/// names fields (`messages.0.content`).
fn describe(e: serde_path_to_error::Error<serde_json::Error>) -> GwError {
    use serde_path_to_error::Segment;
    let inner = e.inner();
    if !matches!(inner.classify(), serde_json::error::Category::Data) {
        return malformed();
    }
    let mut path: Vec<String> = e
        .path()
        .iter()
        .map(|s| match s {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => "?".to_owned(),
        })
        .collect();
    let msg = inner.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|s| s.split('`').next())
    {
        path.push(field.to_owned());
        return invalid(path.join("."), "Field required");
    }
    if path.is_empty() {
        return GwError::new(ErrorCode::InvalidRequest, format!("invalid request body: {msg}"));
    }
    invalid(path.join("."), msg)
}

/// Parses and validates a `POST /v1/messages` (or `count_tokens`) body into
/// the canonical request. Every error is a 400 naming the field at fault.
pub fn parse_request(body: &[u8], route: Route) -> Result<pb::ChatRequest, GwError> {
    // The fast path parses without tracking paths; only a body that fails is
    // parsed again to name the bad field.
    let raw: RequestIn = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            return Err(match serde_path_to_error::deserialize::<_, RequestIn>(&mut de) {
                Err(e) => describe(e),
                Ok(_) => malformed(),
            });
        }
    };
    convert(raw, route)
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), GwError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(invalid(
            param,
            format!("Input should be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

fn text_message(role: pb::Role, text: String) -> pb::Message {
    pb::Message {
        role: role as i32,
        content: Some(pb::Content {
            value: Some(pb::content::Value::Text(text)),
        }),
        ..Default::default()
    }
}

fn convert(raw: RequestIn, route: Route) -> Result<pb::ChatRequest, GwError> {
    if raw.model.trim().is_empty() {
        return Err(invalid("model", "String should have at least 1 character"));
    }
    let max_tokens = match (raw.max_tokens, route) {
        (None, Route::Messages) => return Err(invalid("max_tokens", "Field required")),
        // Anthropic takes 0 to warm its prompt cache; no other provider can.
        (Some(0), Route::Messages) => {
            return Err(invalid(
                "max_tokens",
                "the gateway needs at least 1 (0, to warm a prompt cache, is not supported)",
            ));
        }
        (m, _) => m,
    };
    if raw.messages.is_empty() {
        return Err(invalid("messages", "at least one message is required"));
    }
    range("temperature", raw.temperature, 0.0, 1.0)?;
    range("top_p", raw.top_p, 0.0, 1.0)?;

    let mut messages = Vec::with_capacity(raw.messages.len() + 1);
    if let Some(system) = raw.system {
        system_turn(system, "system", &mut messages)?;
    }
    for (i, m) in raw.messages.into_iter().enumerate() {
        match m.role.as_str() {
            "user" => user_turn(m.content, i, &mut messages)?,
            "assistant" => messages.push(assistant_turn(m.content, i)?),
            "system" => system_turn(m.content, &format!("messages.{i}.content"), &mut messages)?,
            other => {
                return Err(invalid(
                    format!("messages.{i}.role"),
                    format!("Input should be 'user', 'assistant' or 'system', got '{other}'"),
                ));
            }
        }
    }

    let mut tools = Vec::with_capacity(raw.tools.as_ref().map_or(0, Vec::len));
    for (i, t) in raw.tools.into_iter().flatten().enumerate() {
        if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
            return Err(invalid(
                format!("tools.{i}.type"),
                format!(
                    "the gateway does not support server tools such as `{kind}`; define a custom tool with `input_schema`"
                ),
            ));
        }
        if t.name.is_empty()
            || t.name.len() > 128
            || !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                format!("tools.{i}.name"),
                "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'",
            ));
        }
        let schema = t
            .input_schema
            .ok_or_else(|| invalid(format!("tools.{i}.input_schema"), "Field required"))?;
        tools.push(pb::Tool {
            r#type: "function".to_owned(),
            function: Some(pb::FunctionDef {
                name: t.name,
                description: t.description,
                parameters_json: Some(raw_json(&schema, || format!("tools.{i}.input_schema"))?),
                strict: None,
            }),
        });
    }

    let mut parallel_tool_calls = None;
    let tool_choice = match raw.tool_choice {
        None => None,
        Some(c) => {
            use pb::tool_choice::Choice;
            if c.disable_parallel_tool_use == Some(true) {
                parallel_tool_calls = Some(false);
            }
            let choice = match c.kind.as_str() {
                "auto" => Choice::Mode(pb::ToolChoiceMode::Auto as i32),
                "any" => Choice::Mode(pb::ToolChoiceMode::Required as i32),
                "none" => Choice::Mode(pb::ToolChoiceMode::None as i32),
                "tool" => {
                    let name = c
                        .name
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| invalid("tool_choice.name", "Field required"))?;
                    if !tools
                        .iter()
                        .any(|t| t.function.as_ref().is_some_and(|f| f.name == name))
                    {
                        return Err(invalid(
                            "tool_choice.name",
                            format!("no tool named `{name}` is in `tools`"),
                        ));
                    }
                    Choice::FunctionName(name)
                }
                other => {
                    return Err(invalid(
                        "tool_choice.type",
                        format!("Input should be 'auto', 'any', 'tool' or 'none', got '{other}'"),
                    ));
                }
            };
            let none = matches!(choice, Choice::Mode(m) if m == pb::ToolChoiceMode::None as i32);
            if tools.is_empty() && !none {
                return Err(invalid("tool_choice", "`tool_choice` needs `tools`"));
            }
            // `none` without tools says nothing: leave it out.
            (!tools.is_empty()).then_some(pb::ToolChoice { choice: Some(choice) })
        }
    };

    let (effort_asked, response_format) = match raw.output_config {
        None => (None, None),
        Some(c) => output_config(c)?,
    };
    let reasoning_effort = match raw.thinking {
        None => effort_asked,
        Some(t) => match t.kind.as_str() {
            "disabled" => None,
            // The model decides how much to think: the middle of the scale.
            "adaptive" => Some(effort_asked.unwrap_or_else(|| "medium".to_owned())),
            "between_tools" => Some(effort_asked.unwrap_or_else(|| "low".to_owned())),
            "enabled" => {
                let budget = t
                    .budget_tokens
                    .ok_or_else(|| invalid("thinking.enabled.budget_tokens", "Field required"))?;
                if budget < 1024 {
                    return Err(invalid(
                        "thinking.enabled.budget_tokens",
                        "Input should be greater than or equal to 1024",
                    ));
                }
                Some(effort(budget).to_owned())
            }
            other => {
                return Err(invalid(
                    "thinking.type",
                    format!(
                        "Input should be 'enabled', 'adaptive', 'between_tools' or 'disabled', got '{other}'"
                    ),
                ));
            }
        },
    };

    let mut extra = raw.extra;
    if let Some(k) = raw.top_k {
        extra.insert("top_k".to_owned(), Value::from(k));
    }
    let extra_json = if extra.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&extra).map_err(|e| GwError::internal(e.to_string()))?)
    };
    let stream = raw.stream.unwrap_or(false) && route == Route::Messages;
    Ok(pb::ChatRequest {
        model: raw.model,
        messages,
        tools,
        tool_choice,
        response_format,
        temperature: raw.temperature,
        top_p: raw.top_p,
        max_tokens,
        stop: raw
            .stop_sequences
            .filter(|s| !s.is_empty())
            .map(|sequences| pb::Stop {
                sequences,
                single: false,
            }),
        user: raw.metadata.and_then(|m| m.user_id),
        reasoning_effort,
        parallel_tool_calls,
        stream,
        // The usage chunk at the end feeds `message_delta.usage`.
        stream_options: stream.then_some(pb::StreamOptions {
            include_usage: Some(true),
        }),
        extra_json,
        ..Default::default()
    })
}

/// `output_config`: its `effort` as a canonical `reasoning_effort` (the
/// nearest: `xhigh` and `max` are `high`), its `format` as a JSON schema
/// response format.
fn output_config(c: OutputConfigIn) -> Result<(Option<String>, Option<pb::ResponseFormat>), GwError> {
    let effort = match c.effort.as_deref() {
        None => None,
        Some(e @ ("low" | "medium" | "high")) => Some(e.to_owned()),
        Some("xhigh" | "max") => Some("high".to_owned()),
        Some(other) => {
            return Err(invalid(
                "output_config.effort",
                format!("Input should be 'low', 'medium', 'high', 'xhigh' or 'max', got '{other}'"),
            ));
        }
    };
    let format = match c.format {
        None => None,
        Some(f) if f.kind == "json_schema" => {
            let schema = f
                .schema
                .ok_or_else(|| invalid("output_config.format.schema", "Field required"))?;
            Some(pb::ResponseFormat {
                format: Some(pb::response_format::Format::JsonSchema(pb::JsonSchemaFormat {
                    name: "output".to_owned(),
                    description: None,
                    schema_json: Some(raw_json(&schema, || "output_config.format.schema".to_owned())?),
                    strict: Some(true),
                })),
            })
        }
        Some(f) => {
            return Err(invalid(
                "output_config.format.type",
                format!("Input should be 'json_schema', got '{}'", f.kind),
            ));
        }
    };
    Ok((effort, format))
}

/// `system` (or a `system` turn's content) as system messages, one per block.
fn system_turn(content: TextOrBlocks, at: &str, out: &mut Vec<pb::Message>) -> Result<(), GwError> {
    match content {
        TextOrBlocks::Text(t) if t.is_empty() => {}
        TextOrBlocks::Text(t) => out.push(text_message(pb::Role::System, t)),
        TextOrBlocks::Blocks(blocks) => {
            for (j, b) in blocks.into_iter().enumerate() {
                if b.kind != "text" {
                    return Err(invalid(
                        format!("{at}.{j}.type"),
                        format!("system blocks must be `text`, got `{}`", b.kind),
                    ));
                }
                let text = b
                    .text
                    .ok_or_else(|| invalid(format!("{at}.{j}.text"), "Field required"))?;
                out.push(text_message(pb::Role::System, text));
            }
        }
    }
    Ok(())
}

/// The canonical `reasoning_effort` nearest a thinking budget (the Anthropic
/// provider turns low, medium and high back into 1024, 4096 and 16384).
fn effort(budget: u32) -> &'static str {
    match budget {
        0..2048 => "low",
        2048..8192 => "medium",
        _ => "high",
    }
}

fn part(p: pb::content_part::Part) -> pb::ContentPart {
    pb::ContentPart { part: Some(p) }
}

/// An `image` or `document` block (or a `text` one) as a content part.
fn media_part(b: BlockIn, at: &str) -> Result<pb::ContentPart, GwError> {
    use pb::content_part::Part;
    match b.kind.as_str() {
        "text" => {
            let text = b
                .text
                .ok_or_else(|| invalid(format!("{at}.text"), "Field required"))?;
            Ok(part(Part::Text(text)))
        }
        "image" => {
            let source = b
                .source
                .ok_or_else(|| invalid(format!("{at}.source"), "Field required"))?;
            let url = match source.kind.as_str() {
                "base64" => {
                    let media = source
                        .media_type
                        .ok_or_else(|| invalid(format!("{at}.source.media_type"), "Field required"))?;
                    let data = source
                        .data
                        .ok_or_else(|| invalid(format!("{at}.source.data"), "Field required"))?;
                    format!("data:{media};base64,{data}")
                }
                "url" => source
                    .url
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| invalid(format!("{at}.source.url"), "Field required"))?,
                other => {
                    return Err(invalid(
                        format!("{at}.source.type"),
                        format!("the gateway takes images as `base64` or `url`, not `{other}`"),
                    ));
                }
            };
            Ok(part(Part::ImageUrl(pb::ImageUrl { url, detail: None })))
        }
        "document" => {
            let source = b
                .source
                .ok_or_else(|| invalid(format!("{at}.source"), "Field required"))?;
            match (source.kind.as_str(), source.media_type.as_deref()) {
                ("base64", Some("application/pdf")) => {
                    let data = source
                        .data
                        .ok_or_else(|| invalid(format!("{at}.source.data"), "Field required"))?;
                    Ok(part(Part::File(pb::FileInput {
                        file_id: None,
                        filename: b.title,
                        file_data: Some(format!("data:application/pdf;base64,{data}")),
                    })))
                }
                ("text", _) => {
                    let data = source
                        .data
                        .ok_or_else(|| invalid(format!("{at}.source.data"), "Field required"))?;
                    Ok(part(Part::Text(data)))
                }
                _ => Err(invalid(
                    format!("{at}.source"),
                    "the gateway takes documents as a base64 PDF or plain text",
                )),
            }
        }
        other => Err(invalid(
            format!("{at}.type"),
            format!("the gateway does not support `{other}` blocks here"),
        )),
    }
}

/// A user turn: its `tool_result` blocks as tool messages, then the rest as
/// one user message.
fn user_turn(content: TextOrBlocks, i: usize, out: &mut Vec<pb::Message>) -> Result<(), GwError> {
    let blocks = match content {
        TextOrBlocks::Text(t) => {
            out.push(text_message(pb::Role::User, t));
            return Ok(());
        }
        TextOrBlocks::Blocks(b) => b,
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, b) in blocks.into_iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        if b.kind == "tool_result" {
            out.push(tool_result(b, &at)?);
        } else {
            parts.push(media_part(b, &at)?);
        }
    }
    if !parts.is_empty() {
        out.push(pb::Message {
            role: pb::Role::User as i32,
            content: Some(pb::Content {
                value: Some(pb::content::Value::Parts(pb::ContentParts { parts })),
            }),
            ..Default::default()
        });
    }
    Ok(())
}

/// A `tool_result` block as a tool message. `is_error` has no canonical
/// field: the content says it, prefixed `Error: `.
fn tool_result(b: BlockIn, at: &str) -> Result<pb::Message, GwError> {
    let id = b
        .tool_use_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid(format!("{at}.tool_use_id"), "Field required"))?;
    let is_error = b.is_error == Some(true);
    let value = match b.content {
        None => pb::content::Value::Text(if is_error {
            "Error".to_owned()
        } else {
            String::new()
        }),
        Some(TextOrBlocks::Text(t)) => {
            pb::content::Value::Text(if is_error { format!("Error: {t}") } else { t })
        }
        Some(TextOrBlocks::Blocks(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len() + 1);
            if is_error {
                parts.push(part(pb::content_part::Part::Text("Error:".to_owned())));
            }
            for (k, inner) in blocks.into_iter().enumerate() {
                parts.push(media_part(inner, &format!("{at}.content.{k}"))?);
            }
            // A lone text part is plain text: what every provider takes.
            match parts.as_mut_slice() {
                [
                    pb::ContentPart {
                        part: Some(pb::content_part::Part::Text(t)),
                    },
                ] => pb::content::Value::Text(std::mem::take(t)),
                _ => pb::content::Value::Parts(pb::ContentParts { parts }),
            }
        }
    };
    Ok(pb::Message {
        role: pb::Role::Tool as i32,
        content: Some(pb::Content { value: Some(value) }),
        tool_call_id: Some(id),
        ..Default::default()
    })
}

/// An assistant turn: text, tool calls and signed thinking.
fn assistant_turn(content: TextOrBlocks, i: usize) -> Result<pb::Message, GwError> {
    let mut msg = pb::Message {
        role: pb::Role::Assistant as i32,
        ..Default::default()
    };
    let blocks = match content {
        TextOrBlocks::Text(t) => {
            msg.content = Some(pb::Content {
                value: Some(pb::content::Value::Text(t)),
            });
            return Ok(msg);
        }
        TextOrBlocks::Blocks(b) => b,
    };
    let mut texts: Vec<String> = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match b.kind.as_str() {
            "text" => texts.push(
                b.text
                    .ok_or_else(|| invalid(format!("{at}.text"), "Field required"))?,
            ),
            "tool_use" => {
                let id =
                    b.id.ok_or_else(|| invalid(format!("{at}.id"), "Field required"))?;
                let name = b
                    .name
                    .ok_or_else(|| invalid(format!("{at}.name"), "Field required"))?;
                let input = b
                    .input
                    .ok_or_else(|| invalid(format!("{at}.input"), "Field required"))?;
                if !input.get().trim_start().starts_with('{') {
                    return Err(invalid(
                        format!("{at}.input"),
                        "Input should be a valid dictionary",
                    ));
                }
                msg.tool_calls.push(pb::ToolCall {
                    id,
                    r#type: "function".to_owned(),
                    function: Some(pb::FunctionCall {
                        name,
                        arguments: raw_json(&input, || format!("{at}.input"))?,
                    }),
                });
            }
            "thinking" => {
                // Thinking the gateway wrote from another provider's
                // reasoning carries no signature and cannot be replayed.
                let Some(signature) = b.signature.filter(|s| !s.is_empty()) else {
                    continue;
                };
                msg.thinking_blocks.push(pb::ThinkingBlock {
                    r#type: "thinking".to_owned(),
                    thinking: b.thinking,
                    signature: Some(signature),
                    data: None,
                });
            }
            "redacted_thinking" => msg.thinking_blocks.push(pb::ThinkingBlock {
                r#type: "redacted_thinking".to_owned(),
                data: b.data,
                ..Default::default()
            }),
            other => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!("the gateway does not support `{other}` blocks in assistant turns"),
                ));
            }
        }
    }
    msg.content = match texts.len() {
        0 if !msg.tool_calls.is_empty() => None,
        0 | 1 => Some(pb::Content {
            value: Some(pb::content::Value::Text(texts.pop().unwrap_or_default())),
        }),
        _ => Some(pb::Content {
            value: Some(pb::content::Value::Parts(pb::ContentParts {
                parts: texts
                    .into_iter()
                    .map(|t| part(pb::content_part::Part::Text(t)))
                    .collect(),
            })),
        }),
    };
    Ok(msg)
}
