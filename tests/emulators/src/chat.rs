//! The Chat Completions request as the emulator reads it, and the answer it decides on.
//!
//! The request is deserialised borrowing from the body bytes: only the fields that shape the
//! answer are read, everything else (sampling parameters, `seed`, `user`, ...) is accepted
//! and ignored, as the emulator's contract says.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::directives::{self, Directives};
use crate::schema;

/// A string borrowed from the body when it has no escapes.
#[derive(Debug)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub messages: Option<Vec<Message<'a>>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(borrow, default)]
    pub response_format: Option<&'a RawValue>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Tallied by class in the ledger (`GET /_emu/ledger`) when set.
    #[serde(borrow, default)]
    pub user: Option<Text<'a>>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub include_obfuscation: Option<bool>,
}

#[derive(Deserialize)]
pub struct Message<'a> {
    #[serde(borrow)]
    pub role: Text<'a>,
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
}

/// Message content: a string or a list of parts, of which only text parts are read.
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Deserialize)]
pub struct Part<'a> {
    #[serde(borrow, default)]
    pub text: Option<Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(part) = seq.next_element::<Part<'de>>()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

impl Content<'_> {
    /// The text of the content; text parts are joined with a space.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(t) => Cow::Borrowed(t),
            Content::Parts(parts) => {
                let mut texts = parts.iter().filter_map(|p| p.text.as_ref());
                match (texts.next(), texts.next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(only), None) => Cow::Borrowed(&only.0),
                    (Some(first), Some(second)) => {
                        let mut out = format!("{} {}", first.0, second.0);
                        for t in texts {
                            out.push(' ');
                            out.push_str(&t.0);
                        }
                        Cow::Owned(out)
                    }
                }
            }
        }
    }

    fn char_count(&self) -> usize {
        match self {
            Content::Text(t) => t.chars().count(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_ref())
                .map(|t| t.0.chars().count())
                .sum(),
        }
    }
}

#[derive(Deserialize)]
pub struct Tool<'a> {
    #[serde(borrow, default)]
    pub function: Option<FunctionDef<'a>>,
}

#[derive(Deserialize)]
pub struct FunctionDef<'a> {
    #[serde(borrow)]
    pub name: Text<'a>,
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
}

/// An error the emulator answers, in OpenAI's error shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(
        message: impl Into<String>,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code,
        }
    }

    fn missing(param: &'static str) -> Self {
        Self::invalid(
            format!("Missing required parameter: '{param}'."),
            Some(param),
            Some("missing_required_parameter"),
        )
    }

    /// The error answered for `[emu:status=N]`.
    pub fn for_status(status: u16, model: &str) -> Self {
        let (message, kind, code) = match status {
            401 => (
                "Incorrect API key provided (emulated).".to_owned(),
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            404 => (
                format!("The model `{model}` does not exist or you do not have access to it."),
                "invalid_request_error",
                Some("model_not_found"),
            ),
            429 => (
                format!("Rate limit reached for {model} (emulated). Please try again in 1s."),
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            503 => (
                "The engine is currently overloaded, please try again later.".to_owned(),
                "server_error",
                None,
            ),
            500..=599 => (
                "The server had an error while processing your request. Sorry about that!".to_owned(),
                "server_error",
                None,
            ),
            _ => (
                format!("Emulated error (status {status})."),
                "invalid_request_error",
                None,
            ),
        };
        Self {
            status,
            message,
            kind,
            param: None,
            code,
        }
    }
}

/// Random-looking ids without a dependency: splitmix64 over a counter seeded from the clock.
pub struct IdGen(AtomicU64);

impl IdGen {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Self(AtomicU64::new(seed))
    }

    fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `prefix` followed by 24 base62 characters.
    pub fn id(&self, prefix: &str) -> String {
        const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut out = String::with_capacity(prefix.len() + 24);
        out.push_str(prefix);
        for _ in 0..2 {
            let mut x = self.next_u64();
            for _ in 0..12 {
                out.push(char::from(ALPHABET[(x % 62) as usize]));
                x /= 62;
            }
        }
        out
    }
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptDetails,
    pub completion_tokens_details: CompletionDetails,
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct PromptDetails {
    pub cached_tokens: u64,
    pub audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct CompletionDetails {
    pub reasoning_tokens: u64,
    pub audio_tokens: u64,
    pub accepted_prediction_tokens: u64,
    pub rejected_prediction_tokens: u64,
}

pub struct Call<'r> {
    pub id: String,
    pub name: &'r str,
    pub arguments: String,
}

pub enum Reply<'r> {
    Text(String),
    Tools(Vec<Call<'r>>),
}

pub struct Choice<'r> {
    pub reply: Reply<'r>,
    pub finish_reason: &'static str,
}

/// What the emulator will answer to one request.
pub struct Plan<'r> {
    pub model: &'r str,
    pub directives: Directives,
    pub stream: bool,
    pub include_usage: bool,
    /// OpenAI pads delta chunks with an `obfuscation` string unless told not to.
    pub obfuscate: bool,
    /// With `logprobs: true`: how many `top_logprobs` each text token carries.
    pub logprobs: Option<usize>,
    pub choices: Vec<Choice<'r>>,
    pub usage: Usage,
}

enum ToolChoice<'v> {
    None,
    Auto,
    Named(&'v str),
}

/// Validates the request and decides the answer.
pub fn plan<'r>(req: &'r ChatRequest<'_>, ids: &IdGen) -> Result<Plan<'r>, ApiError> {
    let model: &str = &req.model.as_ref().ok_or_else(|| ApiError::missing("model"))?.0;
    let messages = req
        .messages
        .as_deref()
        .ok_or_else(|| ApiError::missing("messages"))?;
    let Some(last) = messages.last() else {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    };
    let stream = req.stream.unwrap_or(false);
    if req.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        ));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(ApiError::invalid(
            format!("Invalid 'n': expected a value between 1 and 128, but got {n} instead."),
            Some("n"),
            Some("integer_out_of_range"),
        ));
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(top)) if top > 20 => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got {top} instead."
                ),
                Some("top_logprobs"),
                Some("integer_above_max_value"),
            ));
        }
        (Some(true), top) => Some(top.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "Invalid value for 'logprobs': must be true when 'top_logprobs' is set.",
                Some("logprobs"),
                None,
            ));
        }
        _ => None,
    };

    let user_text = messages
        .iter()
        .rev()
        .find(|m| m.role.0 == "user")
        .and_then(|m| m.content.as_ref())
        .map(Content::text)
        .unwrap_or(Cow::Borrowed(""));
    let (directives, clean) = directives::parse(&user_text);

    let prompt_chars: usize = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(Content::char_count)
        .sum();
    let prompt_tokens = (prompt_chars as u64).div_ceil(4).max(1);

    let last_is_tool = last.role.0 == "tool";
    let tools: Vec<&FunctionDef<'_>> = req
        .tools
        .iter()
        .flatten()
        .filter_map(|t| t.function.as_ref())
        .collect();
    let tool_choice = match &req.tool_choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => ToolChoice::Named(name),
            None => ToolChoice::Auto,
        },
        Some(_) => ToolChoice::Auto,
    };

    let mut choices = Vec::with_capacity(n as usize);
    let mut completion_tokens = 0u64;
    if !tools.is_empty() && !matches!(tool_choice, ToolChoice::None) && !last_is_tool {
        let targets: Vec<&FunctionDef<'_>> = match tool_choice {
            ToolChoice::Named(name) => match tools.iter().find(|t| t.name.0 == name) {
                Some(t) => vec![*t],
                None => {
                    return Err(ApiError::invalid(
                        format!(
                            "Invalid value for 'tool_choice': tool '{name}' is not among the provided tools."
                        ),
                        Some("tool_choice"),
                        None,
                    ));
                }
            },
            _ if directives.parallel && tools.len() >= 2 && req.parallel_tool_calls != Some(false) => {
                tools[..2].to_vec()
            }
            _ => tools[..1].to_vec(),
        };
        let mut arguments = Vec::with_capacity(targets.len());
        for t in &targets {
            let args = match t.parameters {
                Some(raw) => {
                    let params: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                    schema::instance(&params)
                }
                None => Value::Object(serde_json::Map::new()),
            };
            let args = if args.is_object() {
                args
            } else {
                Value::Object(serde_json::Map::new())
            };
            let text = args.to_string();
            completion_tokens += (text.chars().count() as u64).div_ceil(4) * u64::from(n);
            arguments.push(text);
        }
        for _ in 0..n {
            let calls = targets
                .iter()
                .zip(&arguments)
                .map(|(t, a)| Call {
                    id: ids.id("call_"),
                    name: &t.name.0,
                    arguments: a.clone(),
                })
                .collect();
            choices.push(Choice {
                reply: Reply::Tools(calls),
                finish_reason: directives.finish.unwrap_or("tool_calls"),
            });
        }
    } else {
        let (text, finish) = text_answer(req, last, last_is_tool, &directives, &clean);
        completion_tokens = word_count(&text) as u64 * u64::from(n);
        for _ in 0..n {
            choices.push(Choice {
                reply: Reply::Text(text.clone()),
                finish_reason: directives.finish.unwrap_or(finish),
            });
        }
    }

    let include_usage = stream
        && req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    let obfuscate = stream
        && req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_obfuscation)
            .unwrap_or(true);
    Ok(Plan {
        model,
        directives,
        stream,
        include_usage,
        obfuscate,
        logprobs,
        choices,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            ..Usage::default()
        },
    })
}

fn text_answer(
    req: &ChatRequest<'_>,
    last: &Message<'_>,
    last_is_tool: bool,
    directives: &Directives,
    clean: &str,
) -> (String, &'static str) {
    let format: Option<Value> = req
        .response_format
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    let format_type = format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    let mut text = match format_type {
        Some("json_object") => serde_json::json!({ "echo": clean }).to_string(),
        Some("json_schema") => {
            let schema = format
                .as_ref()
                .and_then(|f| f.pointer("/json_schema/schema"))
                .unwrap_or(&Value::Null);
            schema::instance(schema).to_string()
        }
        _ if last_is_tool => {
            let result = last.content.as_ref().map(Content::text).unwrap_or_default();
            format!("Tool result: {result}")
        }
        _ => match directives.words {
            Some(count) => lorem(count),
            None => format!("You said: {clean}"),
        },
    };

    if let Some(at) = stop_position(&text, req.stop.as_ref()) {
        text.truncate(at);
    }
    let limit = req.max_completion_tokens.or(req.max_tokens);
    if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
        && word_count(&text) > limit
    {
        let end = pieces(&text).take(limit).map(str::len).sum::<usize>();
        text.truncate(end);
        let trimmed = text.trim_end().len();
        text.truncate(trimmed);
        return (text, "length");
    }
    (text, "stop")
}

/// Where the earliest stop sequence starts in `text`.
fn stop_position(text: &str, stop: Option<&Value>) -> Option<usize> {
    let find = |s: &Value| s.as_str().filter(|s| !s.is_empty()).and_then(|s| text.find(s));
    match stop? {
        Value::Array(list) => list.iter().filter_map(find).min(),
        one => find(one),
    }
}

const LOREM: [&str; 16] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
];

fn lorem(count: usize) -> String {
    let mut out = String::with_capacity(count * 7);
    for i in 0..count {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(LOREM[i % LOREM.len()]);
    }
    out
}

pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Splits `text` into words, each with its leading whitespace (trailing whitespace stays
/// with the last word); the pieces concatenate back to `text`.
pub fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word_start = rest.len() - rest.trim_start().len();
        let after = &rest[word_start..];
        let word_len = after.find(char::is_whitespace).unwrap_or(after.len());
        let mut end = word_start + word_len;
        if rest[end..].trim().is_empty() {
            end = rest.len();
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_reassemble() {
        for text in ["You said: hi there", "  a  b ", "one", ""] {
            let parts: Vec<&str> = pieces(text).collect();
            assert_eq!(parts.concat(), text);
            assert_eq!(parts.len(), word_count(text));
        }
        assert_eq!(
            pieces("You said: hi").collect::<Vec<_>>(),
            ["You", " said:", " hi"]
        );
    }

    #[test]
    fn plans_an_echo_with_usage_and_limits() -> Result<(), Box<dyn std::error::Error>> {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello there [emu:finish=content_filter]"},
            {"type":"image_url","image_url":{"url":"data:,"}}]}],"max_tokens":3,"stop":["zzz"]}"#;
        let req: ChatRequest<'_> = serde_json::from_slice(body)?;
        let ids = IdGen::new();
        let plan = plan(&req, &ids).map_err(|e| e.message)?;
        let Reply::Text(text) = &plan.choices[0].reply else {
            return Err("expected a text reply".into());
        };
        assert_eq!(text, "You said: hello");
        assert_eq!(plan.choices[0].finish_reason, "content_filter");
        assert_eq!(plan.usage.prompt_tokens, (8u64 + 39).div_ceil(4));
        assert_eq!(plan.usage.completion_tokens, 3);
        Ok(())
    }
}
