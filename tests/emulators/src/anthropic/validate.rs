//! The Messages request checked as strictly as Anthropic checks it, and the facts the
//! answer needs, borrowed from the parsed body.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::ApiError;

/// Top-level fields the Messages API accepts; any other is "Extra inputs are not permitted".
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
];

pub struct Tool<'r> {
    pub name: &'r str,
    pub input_schema: &'r Value,
}

pub enum ToolChoice<'r> {
    Auto,
    Any,
    None,
    Tool(&'r str),
}

pub struct Request<'r> {
    pub model: &'r str,
    pub max_tokens: u64,
    pub stream: bool,
    pub tools: Vec<Tool<'r>>,
    pub tool_choice: ToolChoice<'r>,
    pub disable_parallel: bool,
    pub thinking_budget: Option<u64>,
    pub stop_sequences: Vec<&'r str>,
    /// The text blocks of the last user turn, joined with a space.
    pub last_user_text: String,
    /// Whether the last turn answers tool calls, and the text of its first result.
    pub last_is_tool_result: bool,
    pub last_tool_result_text: String,
    /// Characters of text in `system` and every message, for usage.
    pub prompt_chars: usize,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

fn obj<'r>(v: &'r Value, at: &str) -> Result<&'r Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{at}: Input should be a valid dictionary")))
}

fn string<'r>(v: &'r Value, at: &str) -> Result<&'r str, ApiError> {
    v.as_str()
        .ok_or_else(|| invalid(format!("{at}: Input should be a valid string")))
}

fn only(map: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if at.is_empty() => Err(invalid(format!("{k}: Extra inputs are not permitted"))),
        Some(k) => Err(invalid(format!("{at}.{k}: Extra inputs are not permitted"))),
        None => Ok(()),
    }
}

pub fn request(v: &Value) -> Result<Request<'_>, ApiError> {
    let top = obj(v, "body")?;
    only(top, FIELDS, "")?;
    let model = string(
        top.get("model").ok_or_else(|| invalid("model: Field required"))?,
        "model",
    )?;
    let max_tokens = top
        .get("max_tokens")
        .ok_or_else(|| invalid("max_tokens: Field required"))?
        .as_u64()
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid("max_tokens: Input should be a valid integer greater than or equal to 1"))?;
    let stream = match top.get("stream") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("stream: Input should be a valid boolean"))?,
    };
    for key in ["temperature", "top_p"] {
        if let Some(v) = top.get(key) {
            let x = v
                .as_f64()
                .ok_or_else(|| invalid(format!("{key}: Input should be a valid number")))?;
            if !(0.0..=1.0).contains(&x) {
                return Err(invalid(format!("{key}: range: 0..1")));
            }
        }
    }
    if let Some(m) = top.get("metadata") {
        let m = obj(m, "metadata")?;
        only(m, &["user_id"], "metadata")?;
    }
    let stop_sequences = match top.get("stop_sequences") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| invalid("stop_sequences: Input should be a valid list"))?
            .iter()
            .enumerate()
            .map(|(i, s)| string(s, &format!("stop_sequences.{i}")))
            .collect::<Result<_, _>>()?,
    };

    let mut prompt_chars = 0usize;
    match top.get("system") {
        None => {}
        Some(Value::String(s)) => prompt_chars += s.chars().count(),
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                let at = format!("system.{i}");
                let b = obj(b, &at)?;
                only(b, &["type", "text", "cache_control", "citations"], &at)?;
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(format!("{at}.type: Input should be 'text'")));
                }
                let text = string(b.get("text").unwrap_or(&Value::Null), &format!("{at}.text"))?;
                if text.is_empty() {
                    return Err(invalid("system: text content blocks must be non-empty"));
                }
                prompt_chars += text.chars().count();
            }
        }
        Some(_) => return Err(invalid("system: Input should be a valid string or list")),
    }

    // Tools.
    let mut tools = Vec::new();
    if let Some(list) = top.get("tools") {
        let list = list
            .as_array()
            .ok_or_else(|| invalid("tools: Input should be a valid list"))?;
        let mut names = HashSet::new();
        for (i, t) in list.iter().enumerate() {
            let at = format!("tools.{i}");
            let t = obj(t, &at)?;
            only(
                t,
                &["name", "description", "input_schema", "cache_control", "type"],
                &at,
            )?;
            let name = string(t.get("name").unwrap_or(&Value::Null), &format!("{at}.name"))?;
            let valid_name = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                return Err(invalid(format!(
                    "{at}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )));
            }
            if !names.insert(name) {
                return Err(invalid("tools: Tool names must be unique."));
            }
            let schema = t
                .get("input_schema")
                .ok_or_else(|| invalid(format!("{at}.input_schema: Field required")))?;
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(invalid(format!(
                    "{at}.input_schema.type: Input should be 'object'"
                )));
            }
            tools.push(Tool {
                name,
                input_schema: schema,
            });
        }
    }
    let mut disable_parallel = false;
    let tool_choice = match top.get("tool_choice") {
        None => ToolChoice::Auto,
        Some(c) => {
            let c = obj(c, "tool_choice")?;
            only(c, &["type", "name", "disable_parallel_tool_use"], "tool_choice")?;
            disable_parallel = c
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match c.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Any,
                Some("none") => ToolChoice::None,
                Some("tool") => {
                    let name = string(c.get("name").unwrap_or(&Value::Null), "tool_choice.name")?;
                    if !tools.iter().any(|t| t.name == name) {
                        return Err(invalid(format!(
                            "tool_choice: tool `{name}` is not among the provided tools"
                        )));
                    }
                    ToolChoice::Tool(name)
                }
                _ => {
                    return Err(invalid(
                        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
                    ));
                }
            }
        }
    };
    if !matches!(tool_choice, ToolChoice::Auto | ToolChoice::None) && tools.is_empty() {
        return Err(invalid(
            "tool_choice may only be specified while providing tools.",
        ));
    }

    // Extended thinking.
    let thinking_budget = match top.get("thinking") {
        None => None,
        Some(t) => {
            let t = obj(t, "thinking")?;
            match t.get("type").and_then(Value::as_str) {
                Some("disabled") => {
                    only(t, &["type"], "thinking")?;
                    None
                }
                Some("enabled") => {
                    only(t, &["type", "budget_tokens"], "thinking")?;
                    let budget = t
                        .get("budget_tokens")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| invalid("thinking.enabled.budget_tokens: Field required"))?;
                    if budget < 1024 {
                        return Err(invalid(
                            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                        ));
                    }
                    if budget >= max_tokens {
                        return Err(invalid(
                            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
                        ));
                    }
                    if top
                        .get("temperature")
                        .and_then(Value::as_f64)
                        .is_some_and(|t| t != 1.0)
                    {
                        return Err(invalid(
                            "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility",
                        ));
                    }
                    if matches!(tool_choice, ToolChoice::Any | ToolChoice::Tool(_)) {
                        return Err(invalid(
                            "Thinking may not be enabled when tool_choice forces tool use.",
                        ));
                    }
                    Some(budget)
                }
                _ => return Err(invalid("thinking.type: Input should be 'enabled' or 'disabled'")),
            }
        }
    };

    // Messages.
    let messages = top
        .get("messages")
        .ok_or_else(|| invalid("messages: Field required"))?
        .as_array()
        .ok_or_else(|| invalid("messages: Input should be a valid list"))?;
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    let mut last_user_text = String::new();
    let mut last_is_tool_result = false;
    let mut last_tool_result_text = String::new();
    // The tool_use ids of the previous assistant turn, which the next user turn must answer.
    let mut open_calls: Vec<&str> = Vec::new();
    let mut previous_role = "";
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let m = obj(m, &at)?;
        only(m, &["role", "content"], &at)?;
        let role = string(m.get("role").unwrap_or(&Value::Null), &format!("{at}.role"))?;
        match role {
            "user" | "assistant" => {}
            "system" => {
                return Err(invalid(
                    "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.",
                ));
            }
            other => {
                return Err(invalid(format!(
                    "{at}.role: Input should be 'user' or 'assistant' (got \"{other}\")"
                )));
            }
        }
        if i == 0 && role != "user" {
            return Err(invalid("messages: first message must use the \"user\" role"));
        }
        if role == previous_role {
            return Err(invalid(
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row".replace("{role}", role),
            ));
        }
        previous_role = role;
        let is_last = i + 1 == messages.len();
        let content = m
            .get("content")
            .ok_or_else(|| invalid(format!("{at}.content: Field required")))?;
        let mut texts: Vec<&str> = Vec::new();
        let mut calls: Vec<&str> = Vec::new();
        let mut results: Vec<&str> = Vec::new();
        let mut first_result_text: Option<String> = None;
        match content {
            Value::String(s) => {
                if s.is_empty() && !(is_last && role == "assistant") {
                    return Err(invalid(format!(
                        "{at}: all messages must have non-empty content except for the optional final assistant message"
                    )));
                }
                texts.push(s);
            }
            Value::Array(blocks) => {
                if blocks.is_empty() && !(is_last && role == "assistant") {
                    return Err(invalid(format!(
                        "{at}: all messages must have non-empty content except for the optional final assistant message"
                    )));
                }
                for (j, b) in blocks.iter().enumerate() {
                    let at = format!("{at}.content.{j}");
                    let b = obj(b, &at)?;
                    let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
                    match (kind, role) {
                        ("text", _) => {
                            only(b, &["type", "text", "cache_control", "citations"], &at)?;
                            let text = string(b.get("text").unwrap_or(&Value::Null), &format!("{at}.text"))?;
                            if text.is_empty() {
                                return Err(invalid(format!("{at}: text content blocks must be non-empty")));
                            }
                            texts.push(text);
                        }
                        ("image" | "document", "user") => {
                            only(
                                b,
                                &["type", "source", "cache_control", "title", "context", "citations"],
                                &at,
                            )?;
                            check_source(b.get("source"), kind, &format!("{at}.source"))?;
                        }
                        ("tool_use", "assistant") => {
                            only(b, &["type", "id", "name", "input", "cache_control"], &at)?;
                            let id = string(b.get("id").unwrap_or(&Value::Null), &format!("{at}.id"))?;
                            string(b.get("name").unwrap_or(&Value::Null), &format!("{at}.name"))?;
                            if !b.get("input").is_some_and(Value::is_object) {
                                return Err(invalid(format!(
                                    "{at}.input: Input should be a valid dictionary"
                                )));
                            }
                            calls.push(id);
                        }
                        ("tool_result", "user") => {
                            only(
                                b,
                                &["type", "tool_use_id", "content", "is_error", "cache_control"],
                                &at,
                            )?;
                            if !texts.is_empty() {
                                return Err(invalid(format!(
                                    "{at}: tool_result blocks must come first in the content of a user message"
                                )));
                            }
                            let id = string(
                                b.get("tool_use_id").unwrap_or(&Value::Null),
                                &format!("{at}.tool_use_id"),
                            )?;
                            if !open_calls.contains(&id) {
                                return Err(invalid(format!(
                                    "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                                )));
                            }
                            let text = match b.get("content") {
                                None => String::new(),
                                Some(Value::String(s)) => s.clone(),
                                Some(Value::Array(parts)) => parts
                                    .iter()
                                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                Some(_) => {
                                    return Err(invalid(format!(
                                        "{at}.content: Input should be a valid string or list"
                                    )));
                                }
                            };
                            prompt_chars += text.chars().count();
                            first_result_text.get_or_insert(text);
                            results.push(id);
                        }
                        ("thinking" | "redacted_thinking", "assistant") => {}
                        (kind, role) => {
                            return Err(invalid(format!(
                                "{at}.type: `{kind}` blocks are not allowed in a \"{role}\" message"
                            )));
                        }
                    }
                }
            }
            _ => {
                return Err(invalid(format!(
                    "{at}.content: Input should be a valid string or list"
                )));
            }
        }
        prompt_chars += texts.iter().map(|t| t.chars().count()).sum::<usize>();
        if role == "user" {
            if let Some(missing) = open_calls.iter().find(|id| !results.contains(id)) {
                return Err(invalid(format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {missing}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
                )));
            }
            open_calls.clear();
            last_user_text = texts.join(" ");
            last_is_tool_result = !results.is_empty() && texts.is_empty();
            last_tool_result_text = first_result_text.unwrap_or_default();
        } else {
            open_calls = calls;
        }
    }
    if !open_calls.is_empty() && previous_role == "assistant" {
        // A final assistant turn with tool calls is a prefill Anthropic cannot continue.
        return Err(invalid(
            "messages: the final assistant message cannot end with a `tool_use` block",
        ));
    }
    // With thinking on, the last assistant turn that used tools must start
    // with the signed thinking block it was answered with.
    if thinking_budget.is_some()
        && let Some((i, m)) = messages
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"))
        && let Some(blocks) = m.get("content").and_then(Value::as_array)
        && blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
    {
        let first = blocks
            .first()
            .and_then(|b| b.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if first != "thinking" && first != "redacted_thinking" {
            return Err(invalid(format!(
                "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns."
            )));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        for (k, b) in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if b.get("type").and_then(Value::as_str) == Some("thinking")
                && b.get("signature").and_then(Value::as_str) != Some(super::wire::SIGNATURE)
            {
                return Err(invalid(format!(
                    "messages.{i}.content.{k}: Invalid `signature` in `thinking` block"
                )));
            }
        }
    }
    Ok(Request {
        model,
        max_tokens,
        stream,
        tools,
        tool_choice,
        disable_parallel,
        thinking_budget,
        stop_sequences,
        last_user_text,
        last_is_tool_result,
        last_tool_result_text,
        prompt_chars,
    })
}

fn check_source(source: Option<&Value>, kind: &str, at: &str) -> Result<(), ApiError> {
    let source = obj(source.unwrap_or(&Value::Null), at)?;
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            only(source, &["type", "media_type", "data"], at)?;
            let media = string(
                source.get("media_type").unwrap_or(&Value::Null),
                &format!("{at}.media_type"),
            )?;
            let allowed: &[&str] = if kind == "image" {
                &["image/jpeg", "image/png", "image/gif", "image/webp"]
            } else {
                &["application/pdf"]
            };
            if !allowed.contains(&media) {
                return Err(invalid(format!(
                    "{at}.media_type: Input should be {}",
                    allowed.join(", ")
                )));
            }
            let data = string(source.get("data").unwrap_or(&Value::Null), &format!("{at}.data"))?;
            if data.is_empty() {
                return Err(invalid(format!("{at}.data: the base64 data must be non-empty")));
            }
        }
        Some("url") => {
            only(source, &["type", "url"], at)?;
            let url = string(source.get("url").unwrap_or(&Value::Null), &format!("{at}.url"))?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(format!("{at}.url: Input should be a valid URL")));
            }
        }
        _ => {
            return Err(invalid(format!("{at}.type: Input should be 'base64' or 'url'")));
        }
    }
    Ok(())
}
