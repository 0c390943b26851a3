//! The Converse request checked as strictly as Bedrock checks it, and the facts the
//! answer needs, borrowed from the parsed body.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::ApiError;

/// Top-level members of a Converse request.
const FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];
const INFERENCE_FIELDS: &[&str] = &["maxTokens", "temperature", "topP", "stopSequences"];
const BLOCK_KINDS: &[&str] = &[
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
];
const IMAGE_FORMATS: &[&str] = &["png", "jpeg", "gif", "webp"];

pub struct Tool<'r> {
    pub name: &'r str,
    pub schema: &'r Value,
}

pub enum ToolChoice<'r> {
    Auto,
    Any,
    Tool(&'r str),
}

pub struct Request<'r> {
    pub max_tokens: Option<u64>,
    pub stop_sequences: Vec<&'r str>,
    pub tools: Vec<Tool<'r>>,
    pub tool_choice: ToolChoice<'r>,
    /// The text blocks of the last user turn, joined with a space.
    pub last_user_text: String,
    /// Whether the last turn answers tool calls, and the text of its first result.
    pub last_is_tool_result: bool,
    pub last_tool_result_text: String,
    /// Characters of text in `system` and every message, for usage.
    pub prompt_chars: usize,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(message)
}

fn object<'r>(v: &'r Value, at: &str) -> Result<&'r Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| invalid(format!("Malformed input request: {at} must be an object")))
}

fn only(map: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(format!(
            "Malformed input request: #{at}: extraneous key [{k}] is not permitted, please reformat your input and try again."
        ))),
        None => Ok(()),
    }
}

fn string<'r>(map: &'r Map<String, Value>, key: &str, at: &str) -> Result<&'r str, ApiError> {
    map.get(key).and_then(Value::as_str).ok_or_else(|| {
        invalid(format!(
            "Malformed input request: #{at}: required key [{key}] not found"
        ))
    })
}

/// Checks `body` and returns what the answer needs.
pub fn request(body: &Value) -> Result<Request<'_>, ApiError> {
    let top = object(body, "the request body")?;
    only(top, FIELDS, "")?;
    let mut prompt_chars = 0usize;

    if let Some(system) = top.get("system") {
        let blocks = system
            .as_array()
            .ok_or_else(|| invalid("Malformed input request: #/system: expected type: JSONArray"))?;
        for (i, b) in blocks.iter().enumerate() {
            let b = object(b, &format!("system[{i}]"))?;
            only(
                b,
                &["text", "guardContent", "cachePoint"],
                &format!("/system/{i}"),
            )?;
            if let Some(text) = b.get("text").and_then(Value::as_str) {
                if text.trim().is_empty() {
                    return Err(invalid(format!(
                        "The text field in the SystemContentBlock object at system.{i} is blank. Add text to the text field, and try again."
                    )));
                }
                prompt_chars += text.chars().count();
            }
        }
    }

    let (max_tokens, stop_sequences) = match top.get("inferenceConfig") {
        None => (None, Vec::new()),
        Some(cfg) => {
            let cfg = object(cfg, "inferenceConfig")?;
            only(cfg, INFERENCE_FIELDS, "/inferenceConfig")?;
            let max = match cfg.get("maxTokens") {
                None => None,
                Some(v) => Some(v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                    invalid("1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1")
                })?),
            };
            for key in ["temperature", "topP"] {
                if let Some(v) = cfg.get(key)
                    && !v.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t))
                {
                    return Err(invalid(format!(
                        "1 validation error detected: Value at 'inferenceConfig.{key}' failed to satisfy constraint: Member must have value less than or equal to 1"
                    )));
                }
            }
            let stops = match cfg.get("stopSequences") {
                None => Vec::new(),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| invalid("Malformed input request: #/inferenceConfig/stopSequences: expected type: JSONArray of strings"))?,
            };
            (max, stops)
        }
    };

    let (tools, tool_choice) = match top.get("toolConfig") {
        None => (Vec::new(), ToolChoice::Auto),
        Some(cfg) => tool_config(cfg)?,
    };
    let has_tool_config = top.contains_key("toolConfig");

    let messages = top
        .get("messages")
        .ok_or_else(|| invalid("Malformed input request: #: required key [messages] not found"))?
        .as_array()
        .ok_or_else(|| invalid("Malformed input request: #/messages: expected type: JSONArray"))?;
    if messages.is_empty() {
        return Err(invalid(
            "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
        ));
    }
    let mut prev_role = "";
    let mut prev_tool_uses: HashSet<&str> = HashSet::new();
    let mut last_user_text = String::new();
    let mut last_is_tool_result = false;
    let mut last_tool_result_text = String::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("/messages/{i}");
        let m = object(m, &at)?;
        only(m, &["role", "content"], &at)?;
        let role = string(m, "role", &at)?;
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                i + 1
            )));
        }
        if i == 0 && role != "user" {
            return Err(invalid(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
            ));
        }
        if role == prev_role {
            return Err(invalid(
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.",
            ));
        }
        let content = m.get("content").and_then(Value::as_array).ok_or_else(|| {
            invalid(format!(
                "Malformed input request: #{at}: required key [content] not found"
            ))
        })?;
        if content.is_empty() {
            return Err(invalid(format!(
                "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."
            )));
        }
        let mut tool_uses = HashSet::new();
        let mut texts = Vec::new();
        let mut results = 0usize;
        for (j, b) in content.iter().enumerate() {
            let bat = format!("{at}/content/{j}");
            let b = object(b, &bat)?;
            only(b, BLOCK_KINDS, &bat)?;
            if b.len() != 1 {
                return Err(invalid(format!(
                    "Malformed input request: #{bat}: a ContentBlock must have exactly one member"
                )));
            }
            if let Some(text) = b.get("text") {
                let text = text.as_str().ok_or_else(|| {
                    invalid(format!(
                        "Malformed input request: #{bat}/text: expected type: String"
                    ))
                })?;
                if text.trim().is_empty() {
                    return Err(invalid(format!(
                        "The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text field, and try again."
                    )));
                }
                prompt_chars += text.chars().count();
                texts.push(text);
            }
            if let Some(image) = b.get("image") {
                check_image(image, &bat)?;
            }
            if let Some(tu) = b.get("toolUse") {
                if role != "assistant" {
                    return Err(invalid("toolUse blocks are only allowed in assistant messages."));
                }
                let tu = object(tu, &format!("{bat}/toolUse"))?;
                only(tu, &["toolUseId", "name", "input"], &format!("{bat}/toolUse"))?;
                let id = string(tu, "toolUseId", &bat)?;
                string(tu, "name", &bat)?;
                if !tu.contains_key("input") {
                    return Err(invalid(format!(
                        "Malformed input request: #{bat}/toolUse: required key [input] not found"
                    )));
                }
                tool_uses.insert(id);
            }
            if let Some(tr) = b.get("toolResult") {
                if role != "user" {
                    return Err(invalid("toolResult blocks are only allowed in user messages."));
                }
                let tr = object(tr, &format!("{bat}/toolResult"))?;
                only(
                    tr,
                    &["toolUseId", "content", "status"],
                    &format!("{bat}/toolResult"),
                )?;
                let id = string(tr, "toolUseId", &bat)?;
                if !prev_tool_uses.contains(id) {
                    return Err(invalid(format!(
                        "The toolUseId {id} in the toolResult at messages.{i}.content.{j} does not match a toolUse block in the previous assistant turn."
                    )));
                }
                let blocks = tr.get("content").and_then(Value::as_array).ok_or_else(|| {
                    invalid(format!(
                        "Malformed input request: #{bat}/toolResult: required key [content] not found"
                    ))
                })?;
                for (k, rb) in blocks.iter().enumerate() {
                    let rat = format!("{bat}/toolResult/content/{k}");
                    let rb = object(rb, &rat)?;
                    only(rb, &["text", "json", "image", "document", "video"], &rat)?;
                    if let Some(image) = rb.get("image") {
                        check_image(image, &rat)?;
                    }
                    let text = match (rb.get("text"), rb.get("json")) {
                        (Some(Value::String(t)), _) => t.clone(),
                        (_, Some(json)) => json.to_string(),
                        _ => String::new(),
                    };
                    prompt_chars += text.chars().count();
                    if results == 0 && k == 0 {
                        last_tool_result_text = text;
                    }
                }
                results += 1;
            }
        }
        if (!tool_uses.is_empty() || results > 0) && !has_tool_config {
            return Err(invalid(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
            ));
        }
        if role == "user" && !prev_tool_uses.is_empty() && results < prev_tool_uses.len() {
            return Err(invalid(format!(
                "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                {
                    let mut ids: Vec<&str> = prev_tool_uses.iter().copied().collect();
                    ids.sort_unstable();
                    ids.join(", ")
                }
            )));
        }
        if role == "user" {
            last_user_text = texts.join(" ");
            last_is_tool_result = results > 0;
        }
        prev_tool_uses = tool_uses;
        prev_role = role;
    }
    Ok(Request {
        max_tokens,
        stop_sequences,
        tools,
        tool_choice,
        last_user_text,
        last_is_tool_result,
        last_tool_result_text,
        prompt_chars,
    })
}

fn check_image(image: &Value, at: &str) -> Result<(), ApiError> {
    let image = object(image, &format!("{at}/image"))?;
    only(image, &["format", "source"], &format!("{at}/image"))?;
    let format = string(image, "format", at)?;
    if !IMAGE_FORMATS.contains(&format) {
        return Err(invalid(format!(
            "Malformed input request: #{at}/image/format: {format} is not a valid enum value"
        )));
    }
    let source = image.get("source").and_then(Value::as_object).ok_or_else(|| {
        invalid(format!(
            "Malformed input request: #{at}/image: required key [source] not found"
        ))
    })?;
    only(source, &["bytes", "s3Location"], &format!("{at}/image/source"))?;
    let bytes = source.get("bytes").and_then(Value::as_str).ok_or_else(|| {
        invalid(format!(
            "Malformed input request: #{at}/image/source: required key [bytes] not found"
        ))
    })?;
    if STANDARD.decode(bytes).is_err() {
        return Err(invalid(format!(
            "Malformed input request: #{at}/image/source/bytes: invalid base64"
        )));
    }
    Ok(())
}

fn tool_config(cfg: &Value) -> Result<(Vec<Tool<'_>>, ToolChoice<'_>), ApiError> {
    let cfg = object(cfg, "toolConfig")?;
    only(cfg, &["tools", "toolChoice"], "/toolConfig")?;
    let list = cfg
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("1 validation error detected: Value at 'toolConfig.tools' failed to satisfy constraint: Member must have length greater than or equal to 1"))?;
    let mut tools = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = format!("/toolConfig/tools/{i}");
        let t = object(t, &at)?;
        only(t, &["toolSpec", "cachePoint", "systemTool"], &at)?;
        let Some(spec) = t.get("toolSpec") else {
            continue;
        };
        let sat = format!("{at}/toolSpec");
        let spec = object(spec, &sat)?;
        only(spec, &["name", "description", "inputSchema", "strict"], &sat)?;
        let name = string(spec, "name", &sat)?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(format!(
                "1 validation error detected: Value '{name}' at 'toolConfig.tools.{}.member.toolSpec.name' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
                i + 1
            )));
        }
        let schema = spec
            .get("inputSchema")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                invalid(format!(
                    "Malformed input request: #{sat}: required key [inputSchema] not found"
                ))
            })?;
        only(schema, &["json"], &format!("{sat}/inputSchema"))?;
        let json = schema.get("json").filter(|j| j.is_object()).ok_or_else(|| {
            invalid(format!(
                "Malformed input request: #{sat}/inputSchema: required key [json] not found"
            ))
        })?;
        tools.push(Tool { name, schema: json });
    }
    let choice = match cfg.get("toolChoice") {
        None => ToolChoice::Auto,
        Some(c) => {
            let c = object(c, "toolChoice")?;
            only(c, &["auto", "any", "tool"], "/toolConfig/toolChoice")?;
            if c.len() != 1 {
                return Err(invalid(
                    "Malformed input request: #/toolConfig/toolChoice: exactly one member must be set",
                ));
            }
            if c.contains_key("auto") {
                ToolChoice::Auto
            } else if c.contains_key("any") {
                ToolChoice::Any
            } else {
                let name = c
                    .get("tool")
                    .and_then(Value::as_object)
                    .and_then(|t| t.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("Malformed input request: #/toolConfig/toolChoice/tool: required key [name] not found"))?;
                if !tools.iter().any(|t| t.name == name) {
                    return Err(invalid(format!(
                        "The tool {name} in toolChoice is not defined in toolConfig.tools."
                    )));
                }
                ToolChoice::Tool(name)
            }
        }
    };
    Ok((tools, choice))
}
