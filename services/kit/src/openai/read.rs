//! OpenAI JSON → canonical protobuf.

use std::collections::HashMap;
use std::fmt;

use llmgw_proto as pb;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::parse_finish;
use crate::error::GwError;

// ---- request ---------------------------------------------------------------

#[derive(Deserialize)]
struct RequestIn {
    model: String,
    messages: Vec<MessageIn>,
    #[serde(default)]
    tools: Option<Vec<ToolIn>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<ResponseFormatIn>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    stop: Option<StopIn>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    logit_bias: Option<Box<RawValue>>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptionsIn>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    /// Everything else, passed through to providers that understand it.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RoleIn {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl From<RoleIn> for pb::Role {
    fn from(r: RoleIn) -> Self {
        match r {
            RoleIn::System => pb::Role::System,
            RoleIn::Developer => pb::Role::Developer,
            RoleIn::User => pb::Role::User,
            RoleIn::Assistant => pb::Role::Assistant,
            RoleIn::Tool => pb::Role::Tool,
            RoleIn::Function => pb::Role::Function,
        }
    }
}

#[derive(Deserialize)]
struct MessageIn {
    role: RoleIn,
    #[serde(default)]
    content: ContentIn,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    function_call: Option<FunctionCallIn>,
    /// `reasoning_content` is what DeepSeek-style hosts call it.
    #[serde(default, alias = "reasoning_content")]
    reasoning: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<ThinkingBlockIn>>,
}

#[derive(Deserialize)]
struct ThinkingBlockIn {
    #[serde(rename = "type", default = "thinking_type")]
    kind: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

fn thinking_type() -> String {
    "thinking".to_owned()
}

fn thinking_blocks(blocks: Option<Vec<ThinkingBlockIn>>) -> Vec<pb::ThinkingBlock> {
    blocks
        .unwrap_or_default()
        .into_iter()
        .map(|b| pb::ThinkingBlock {
            r#type: b.kind,
            thinking: b.thinking,
            signature: b.signature,
            data: b.data,
        })
        .collect()
}

/// A message's content: a string, an array of parts, or null/absent.
#[derive(Default)]
struct ContentIn(Option<pb::Content>);

impl<'de> Deserialize<'de> for ContentIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ContentIn, E> {
                Ok(ContentIn(Some(pb::Content {
                    value: Some(pb::content::Value::Text(s.to_owned())),
                })))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<ContentIn, E> {
                Ok(ContentIn(Some(pb::Content {
                    value: Some(pb::content::Value::Text(s)),
                })))
            }
            // An explicit `null` is kept (as a Content without value) so it
            // is written back as `null`, not dropped.
            fn visit_unit<E: de::Error>(self) -> Result<ContentIn, E> {
                Ok(ContentIn(Some(pb::Content { value: None })))
            }
            fn visit_none<E: de::Error>(self) -> Result<ContentIn, E> {
                Ok(ContentIn(Some(pb::Content { value: None })))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentIn, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(part) = seq.next_element::<PartIn>()? {
                    parts.push(part.into());
                }
                Ok(ContentIn(Some(pb::Content {
                    value: Some(pb::content::Value::Parts(pb::ContentParts { parts })),
                })))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartIn {
    Text { text: String },
    ImageUrl { image_url: ImageUrlIn },
    InputAudio { input_audio: InputAudioIn },
    File { file: FileIn },
    Refusal { refusal: String },
}

#[derive(Deserialize)]
struct ImageUrlIn {
    url: String,
    #[serde(default)]
    detail: Option<String>,
}

#[derive(Deserialize)]
struct InputAudioIn {
    data: String,
    format: String,
}

#[derive(Deserialize)]
struct FileIn {
    #[serde(default)]
    file_id: Option<String>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    file_data: Option<String>,
}

impl From<PartIn> for pb::ContentPart {
    fn from(p: PartIn) -> Self {
        use pb::content_part::Part;
        let part = match p {
            PartIn::Text { text } => Part::Text(text),
            PartIn::ImageUrl { image_url } => Part::ImageUrl(pb::ImageUrl {
                url: image_url.url,
                detail: image_url.detail,
            }),
            PartIn::InputAudio { input_audio } => Part::InputAudio(pb::InputAudio {
                data: input_audio.data,
                format: input_audio.format,
            }),
            PartIn::File { file } => Part::File(pb::FileInput {
                file_id: file.file_id,
                filename: file.filename,
                file_data: file.file_data,
            }),
            PartIn::Refusal { refusal } => Part::Refusal(refusal),
        };
        pb::ContentPart { part: Some(part) }
    }
}

#[derive(Deserialize)]
struct FunctionCallIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct ToolCallIn {
    #[serde(default)]
    id: String,
    #[serde(default = "function_type", rename = "type")]
    kind: String,
    function: FunctionCallIn,
}

fn function_type() -> String {
    "function".to_owned()
}

impl From<ToolCallIn> for pb::ToolCall {
    fn from(t: ToolCallIn) -> Self {
        pb::ToolCall {
            id: t.id,
            r#type: t.kind,
            function: Some(pb::FunctionCall {
                name: t.function.name,
                arguments: t.function.arguments,
            }),
        }
    }
}

#[derive(Deserialize)]
struct ToolIn {
    #[serde(default = "function_type", rename = "type")]
    kind: String,
    function: FunctionDefIn,
}

#[derive(Deserialize)]
struct FunctionDefIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Box<RawValue>>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct ResponseFormatIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    json_schema: Option<JsonSchemaIn>,
}

#[derive(Deserialize)]
struct JsonSchemaIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<Box<RawValue>>,
    #[serde(default)]
    strict: Option<bool>,
}

/// `stop`: one string or an array of strings.
struct StopIn(pb::Stop);

impl<'de> Deserialize<'de> for StopIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StopIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StopIn, E> {
                Ok(StopIn(pb::Stop {
                    sequences: vec![s.to_owned()],
                    single: true,
                }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StopIn, A::Error> {
                let mut sequences = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    sequences.push(s);
                }
                Ok(StopIn(pb::Stop {
                    sequences,
                    single: false,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct StreamOptionsIn {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Parses and validates a client's `POST /v1/chat/completions` body.
///
/// Every error is `invalid_request_error` naming the `param` at fault, in the
/// words OpenAI uses.
pub fn parse_request(body: &[u8]) -> Result<pb::ChatRequest, GwError> {
    // The fast path parses without tracking paths; only a body that fails is
    // parsed again, with `serde_path_to_error`, to name the bad parameter.
    let raw: RequestIn = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            return Err(match serde_path_to_error::deserialize::<_, RequestIn>(&mut de) {
                Err(e) => describe(e),
                // Only trailing garbage fails the plain parse but not this one.
                Ok(_) => malformed(),
            });
        }
    };
    let req = convert_request(raw)?;
    validate_request(&req)?;
    Ok(req)
}

/// `text` as raw JSON, if it is JSON whose strings all decode and whose
/// numbers all fit an f64 (what every provider's reader accepts); for the
/// writers that embed a client's text (tool arguments, tool results) as JSON.
pub fn raw_strict(text: &str) -> Result<&RawValue, serde_json::Error> {
    serde_json::from_str::<Decodable>(text)?;
    serde_json::from_str(text)
}

/// The text of a value passed on as raw JSON (a tool's schema or input),
/// once every string in it decodes and every number fits an f64. The raw
/// read only checks the syntax, so a lone surrogate escape (`"\ud800"`) or
/// `1e999` would otherwise reach providers as JSON their readers refuse;
/// such a value is a 400 naming `param`.
pub fn raw_json(raw: &RawValue, param: impl FnOnce() -> String) -> Result<String, GwError> {
    let text = raw.get();
    match serde_json::from_str::<Decodable>(text) {
        Ok(Decodable) => Ok(text.to_owned()),
        Err(e) => {
            let param = param();
            let message = format!(
                "Invalid '{param}': {}.",
                e.to_string().split(" at line ").next().unwrap_or_default()
            );
            Err(GwError::invalid(param, message))
        }
    }
}

/// Any JSON value, read only to see that its strings decode.
struct Decodable;

impl<'de> Deserialize<'de> for Decodable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Decodable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Decodable, E> {
                Ok(Decodable)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Decodable, E> {
                Ok(Decodable)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Decodable, E> {
                Ok(Decodable)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Decodable, E> {
                Ok(Decodable)
            }
            fn visit_str<E>(self, _: &str) -> Result<Decodable, E> {
                Ok(Decodable)
            }
            fn visit_unit<E>(self) -> Result<Decodable, E> {
                Ok(Decodable)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decodable, A::Error> {
                while seq.next_element::<Decodable>()?.is_some() {}
                Ok(Decodable)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Decodable, A::Error> {
                while map.next_entry::<Decodable, Decodable>()?.is_some() {}
                Ok(Decodable)
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// `logit_bias` is passed on as written, so it is checked here: token ids
/// to numbers from -100 to 100 (a number past f64's range would reach the
/// provider as JSON it cannot read).
fn check_logit_bias(text: &str) -> Result<(), GwError> {
    let refused = || {
        GwError::invalid(
            "logit_bias",
            "Invalid value for 'logit_bias': expected an object mapping token ids to numbers from -100 to 100.",
        )
    };
    let bias: Option<std::collections::HashMap<String, f64>> =
        serde_json::from_str(text).map_err(|_| refused())?;
    match bias {
        Some(b) if b.values().any(|v| !(-100.0..=100.0).contains(v)) => Err(refused()),
        _ => Ok(()),
    }
}

pub(super) fn malformed() -> GwError {
    GwError::new(
        crate::ErrorCode::InvalidRequest,
        "We could not parse the JSON body of your request. The body must be valid JSON.",
    )
}

pub(super) fn describe(e: serde_path_to_error::Error<serde_json::Error>) -> GwError {
    let inner = e.inner();
    if !matches!(inner.classify(), serde_json::error::Category::Data) {
        return malformed();
    }
    let path = e.path().to_string();
    let msg = inner.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|s| s.split('`').next())
    {
        let param = if path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return GwError::invalid(param.clone(), format!("Missing required parameter: '{param}'."));
    }
    let param = if path == "." { String::new() } else { path };
    if param.is_empty() {
        return GwError::new(
            crate::ErrorCode::InvalidRequest,
            format!("Invalid request body: {msg}."),
        );
    }
    GwError::invalid(param.clone(), format!("Invalid value for '{param}': {msg}."))
}

fn convert_request(raw: RequestIn) -> Result<pb::ChatRequest, GwError> {
    if let Some(bias) = &raw.logit_bias {
        check_logit_bias(bias.get())?;
    }
    let messages = raw.messages.into_iter().map(convert_message).collect();
    let tools = raw
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let parameters_json = t
                .function
                .parameters
                .map(|p| raw_json(&p, || format!("tools[{i}].function.parameters")))
                .transpose()?;
            Ok(pb::Tool {
                r#type: t.kind,
                function: Some(pb::FunctionDef {
                    name: t.function.name,
                    description: t.function.description,
                    parameters_json,
                    strict: t.function.strict,
                }),
            })
        })
        .collect::<Result<_, GwError>>()?;
    let tool_choice = raw.tool_choice.map(convert_tool_choice).transpose()?;
    let response_format = raw.response_format.map(convert_response_format).transpose()?;
    let extra_json = if raw.extra.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&raw.extra).map_err(|e| GwError::internal(e.to_string()))?)
    };
    Ok(pb::ChatRequest {
        model: raw.model,
        messages,
        tools,
        tool_choice,
        response_format,
        temperature: raw.temperature,
        top_p: raw.top_p,
        max_tokens: raw.max_tokens,
        max_completion_tokens: raw.max_completion_tokens,
        presence_penalty: raw.presence_penalty,
        frequency_penalty: raw.frequency_penalty,
        stop: raw.stop.map(|s| s.0),
        n: raw.n,
        seed: raw.seed,
        user: raw.user,
        reasoning_effort: raw.reasoning_effort,
        logprobs: raw.logprobs,
        top_logprobs: raw.top_logprobs,
        logit_bias_json: raw.logit_bias.map(|b| b.get().to_owned()),
        parallel_tool_calls: raw.parallel_tool_calls,
        service_tier: raw.service_tier,
        store: raw.store,
        stream: raw.stream.unwrap_or(false),
        stream_options: raw.stream_options.map(|o| pb::StreamOptions {
            include_usage: o.include_usage,
        }),
        metadata: raw.metadata.unwrap_or_default(),
        extra_json,
    })
}

fn convert_message(m: MessageIn) -> pb::Message {
    pb::Message {
        role: pb::Role::from(m.role) as i32,
        content: m.content.0,
        name: m.name,
        tool_calls: m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect(),
        tool_call_id: m.tool_call_id,
        refusal: m.refusal,
        reasoning: m.reasoning,
        thinking_blocks: thinking_blocks(m.thinking_blocks),
        function_call: m.function_call.map(|f| pb::FunctionCall {
            name: f.name,
            arguments: f.arguments,
        }),
    }
}

fn convert_tool_choice(v: Value) -> Result<pb::ToolChoice, GwError> {
    use pb::tool_choice::Choice;
    let bad = || {
        GwError::invalid(
            "tool_choice",
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or \
             {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        )
    };
    let choice = match &v {
        Value::String(s) => Choice::Mode(match s.as_str() {
            "none" => pb::ToolChoiceMode::None,
            "auto" => pb::ToolChoiceMode::Auto,
            "required" => pb::ToolChoiceMode::Required,
            _ => return Err(bad()),
        } as i32),
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(bad)?;
            Choice::FunctionName(name.to_owned())
        }
        _ => return Err(bad()),
    };
    Ok(pb::ToolChoice { choice: Some(choice) })
}

fn convert_response_format(f: ResponseFormatIn) -> Result<pb::ResponseFormat, GwError> {
    use pb::response_format::Format;
    let format = match f.kind.as_str() {
        "text" => Format::Text(true),
        "json_object" => Format::JsonObject(true),
        "json_schema" => {
            let Some(s) = f.json_schema else {
                return Err(GwError::invalid(
                    "response_format.json_schema",
                    "Missing required parameter: 'response_format.json_schema'.",
                ));
            };
            Format::JsonSchema(pb::JsonSchemaFormat {
                name: s.name,
                description: s.description,
                schema_json: s
                    .schema
                    .map(|s| raw_json(&s, || "response_format.json_schema.schema".to_owned()))
                    .transpose()?,
                strict: s.strict,
            })
        }
        other => {
            return Err(GwError::invalid(
                "response_format.type",
                format!(
                    "Invalid value for 'response_format.type': '{other}'. \
                     Supported values are: 'text', 'json_object' and 'json_schema'."
                ),
            ));
        }
    };
    Ok(pb::ResponseFormat { format: Some(format) })
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), GwError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(GwError::invalid(
            param,
            format!("Invalid value for '{param}': {x} is out of range; expected a number from {lo} to {hi}."),
        )),
        _ => Ok(()),
    }
}

/// Checks what types alone cannot: required values, ranges and message rules.
/// The gRPC door calls it on requests that arrive as protobuf.
pub fn validate_request(req: &pb::ChatRequest) -> Result<(), GwError> {
    if req.model.trim().is_empty() {
        return Err(GwError::invalid(
            "model",
            "Invalid value for 'model': it must not be empty.",
        ));
    }
    if req.messages.is_empty() {
        return Err(GwError::invalid(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    }
    range("temperature", req.temperature, 0.0, 2.0)?;
    range("top_p", req.top_p, 0.0, 1.0)?;
    range("presence_penalty", req.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)?;
    if let Some(n) = req.n
        && !(1..=128).contains(&n)
    {
        return Err(GwError::invalid(
            "n",
            format!("Invalid value for 'n': {n}; expected 1 to 128."),
        ));
    }
    if let Some(t) = req.top_logprobs
        && t > 20
    {
        return Err(GwError::invalid(
            "top_logprobs",
            format!("Invalid value for 'top_logprobs': {t}; expected 0 to 20."),
        ));
    }
    if let Some(stop) = &req.stop
        && stop.sequences.len() > 4
    {
        return Err(GwError::invalid(
            "stop",
            "Invalid value for 'stop': at most 4 sequences are allowed.",
        ));
    }
    if req.stream_options.is_some() && !req.stream {
        return Err(GwError::invalid(
            "stream_options",
            "Invalid value for 'stream_options': 'stream_options' is only allowed when 'stream' is true.",
        ));
    }
    for (i, tool) in req.tools.iter().enumerate() {
        if tool.r#type != "function" {
            return Err(GwError::invalid(
                format!("tools[{i}].type"),
                format!(
                    "Invalid value for 'tools[{i}].type': '{}'; only 'function' is supported.",
                    tool.r#type
                ),
            ));
        }
        let name = tool
            .function
            .as_ref()
            .map(|f| f.name.as_str())
            .unwrap_or_default();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(GwError::invalid(
                format!("tools[{i}].function.name"),
                format!(
                    "Invalid 'tools[{i}].function.name': '{name}'. Expected a string of a-z, A-Z, 0-9, '_' and '-', at most 64 characters."
                ),
            ));
        }
    }
    if let Some(pb::ToolChoice {
        choice: Some(pb::tool_choice::Choice::FunctionName(name)),
    }) = &req.tool_choice
        && !req
            .tools
            .iter()
            .any(|t| t.function.as_ref().is_some_and(|f| &f.name == name))
    {
        return Err(GwError::invalid(
            "tool_choice",
            format!("Invalid value for 'tool_choice': no tool named '{name}' is in 'tools'."),
        ));
    }
    if req.tool_choice.is_some() && req.tools.is_empty() {
        return Err(GwError::invalid(
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = pb::Role::try_from(m.role).unwrap_or(pb::Role::User);
        let has_content = match &m.content {
            None => false,
            Some(pb::Content {
                value: Some(pb::content::Value::Text(_)),
            }) => true,
            Some(pb::Content {
                value: Some(pb::content::Value::Parts(p)),
            }) => !p.parts.is_empty(),
            Some(pb::Content { value: None }) => false,
        };
        match role {
            pb::Role::Assistant => {
                if !has_content && m.tool_calls.is_empty() && m.function_call.is_none() && m.refusal.is_none()
                {
                    return Err(GwError::invalid(
                        format!("messages[{i}].content"),
                        format!(
                            "Invalid value for 'messages[{i}].content': an assistant message needs 'content' or 'tool_calls'."
                        ),
                    ));
                }
            }
            pb::Role::Tool => {
                if m.tool_call_id.as_deref().unwrap_or_default().is_empty() {
                    return Err(GwError::invalid(
                        format!("messages[{i}].tool_call_id"),
                        format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                    ));
                }
            }
            _ => {
                if !has_content && !matches!(&m.content, Some(pb::Content { value: Some(_) })) {
                    return Err(GwError::invalid(
                        format!("messages[{i}].content"),
                        format!("Missing required parameter: 'messages[{i}].content'."),
                    ));
                }
            }
        }
        if let Some(pb::Content {
            value: Some(pb::content::Value::Parts(parts)),
        }) = &m.content
        {
            for (j, p) in parts.parts.iter().enumerate() {
                if let Some(pb::content_part::Part::ImageUrl(img)) = &p.part
                    && img.url.is_empty()
                {
                    return Err(GwError::invalid(
                        format!("messages[{i}].content[{j}].image_url.url"),
                        format!(
                            "Invalid value for 'messages[{i}].content[{j}].image_url.url': it must not be empty."
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---- responses and chunks from a provider ----------------------------------

#[derive(Deserialize)]
struct ResponseIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChoiceIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    system_fingerprint: Option<String>,
    #[serde(default)]
    service_tier: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    index: u32,
    message: MessageIn,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    total_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsIn>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetailsIn>,
}

#[derive(Deserialize, Default)]
struct PromptDetailsIn {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

#[derive(Deserialize, Default)]
struct CompletionDetailsIn {
    #[serde(default)]
    reasoning_tokens: Option<u32>,
}

impl From<UsageIn> for pb::Usage {
    fn from(u: UsageIn) -> Self {
        pb::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: if u.total_tokens == 0 {
                u.prompt_tokens + u.completion_tokens
            } else {
                u.total_tokens
            },
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
            cost_usd: None,
            estimated: false,
        }
    }
}

fn finish(reason: Option<String>) -> i32 {
    reason.map_or(pb::FinishReason::Unspecified, |r| parse_finish(&r)) as i32
}

/// Parses a provider's chat completion object.
pub fn parse_response(body: &[u8]) -> Result<pb::ChatResponse, String> {
    let raw: ResponseIn = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(pb::ChatResponse {
        id: raw.id,
        created: raw.created,
        model: raw.model,
        choices: raw
            .choices
            .into_iter()
            .map(|c| pb::Choice {
                index: c.index,
                message: Some(convert_message(c.message)),
                finish_reason: finish(c.finish_reason),
                logprobs_json: c.logprobs.map(|l| l.get().to_owned()),
                stop_sequence: None,
            })
            .collect(),
        usage: raw.usage.map(Into::into),
        system_fingerprint: raw.system_fingerprint,
        service_tier: raw.service_tier,
        metadata: None,
    })
}

#[derive(Deserialize)]
struct ChunkIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoiceIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    system_fingerprint: Option<String>,
    #[serde(default)]
    service_tier: Option<String>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<DeltaIn>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
struct DeltaIn {
    #[serde(default)]
    role: Option<RoleIn>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDeltaIn>>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default, alias = "reasoning_content")]
    reasoning: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<ThinkingBlockIn>>,
}

#[derive(Deserialize)]
struct ToolCallDeltaIn {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    function: Option<FunctionDeltaIn>,
}

#[derive(Deserialize)]
struct FunctionDeltaIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Parses one `data:` payload of a provider's chat completion stream.
pub fn parse_chunk(data: &[u8]) -> Result<pb::ChatChunk, String> {
    let raw: ChunkIn = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    Ok(pb::ChatChunk {
        id: raw.id,
        created: raw.created,
        model: raw.model,
        choices: raw
            .choices
            .into_iter()
            .map(|c| {
                let d = c.delta.unwrap_or_default();
                pb::ChunkChoice {
                    index: c.index,
                    delta: Some(pb::Delta {
                        role: d.role.map(|r| pb::Role::from(r) as i32),
                        content: d.content,
                        tool_calls: d
                            .tool_calls
                            .unwrap_or_default()
                            .into_iter()
                            .map(|t| {
                                let (name, arguments) =
                                    t.function.map_or((None, None), |f| (f.name, f.arguments));
                                pb::ToolCallDelta {
                                    index: t.index,
                                    id: t.id,
                                    r#type: t.kind,
                                    name,
                                    arguments,
                                }
                            })
                            .collect(),
                        refusal: d.refusal,
                        reasoning: d.reasoning,
                        thinking_blocks: thinking_blocks(d.thinking_blocks),
                    }),
                    finish_reason: finish(c.finish_reason),
                    logprobs_json: c.logprobs.map(|l| l.get().to_owned()),
                    stop_sequence: None,
                }
            })
            .collect(),
        usage: raw.usage.map(Into::into),
        system_fingerprint: raw.system_fingerprint,
        service_tier: raw.service_tier,
        metadata: None,
    })
}

/// An OpenAI-shaped error body's parts.
#[derive(Debug, Default, PartialEq)]
pub struct UpstreamError {
    pub message: String,
    pub kind: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    code: Option<Value>,
}

/// Reads `{"error": {"message", "type", "param", "code"}}`, as OpenAI and
/// most compatible hosts send it; `None` for anything else.
pub fn parse_upstream_error(body: &[u8]) -> Option<UpstreamError> {
    let env: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    Some(UpstreamError {
        message: env.error.message.unwrap_or_default(),
        kind: env.error.kind,
        param: env.error.param,
        code: env.error.code.map(|c| match c {
            Value::String(s) => s,
            other => other.to_string(),
        }),
    })
}
