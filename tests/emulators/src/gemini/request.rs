//! The `GenerateContentRequest` as the emulator reads it: every field of the official
//! reference, unknown fields rejected (as Google's JSON parser does), and the checks the real
//! API makes before it generates anything.

#![expect(
    dead_code,
    reason = "every field of the reference is declared so unknown ones are rejected; not all shape the answer"
)]

use serde::Deserialize;
use serde_json::{Map, Value};

use super::GoogleError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateRequest {
    #[serde(default)]
    pub contents: Vec<Content>,
    #[serde(default)]
    pub system_instruction: Option<Content>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_config: Option<ToolConfig>,
    #[serde(default)]
    pub generation_config: Option<GenerationConfig>,
    #[serde(default)]
    pub safety_settings: Option<Vec<Value>>,
    #[serde(default)]
    pub cached_content: Option<String>,
    /// The model in the body is allowed (and ignored: the path names it).
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Content {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub inline_data: Option<Blob>,
    #[serde(default)]
    pub file_data: Option<FileData>,
    #[serde(default)]
    pub function_call: Option<FunctionCall>,
    #[serde(default)]
    pub function_response: Option<FunctionResponse>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default)]
    pub thought_signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Blob {
    pub mime_type: String,
    pub data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileData {
    #[serde(default)]
    pub mime_type: Option<String>,
    pub file_uri: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionCall {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub args: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionResponse {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub response: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tool {
    #[serde(default)]
    pub function_declarations: Option<Vec<FunctionDeclaration>>,
    #[serde(default)]
    pub google_search: Option<Value>,
    #[serde(default)]
    pub code_execution: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionDeclaration {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub parameters_json_schema: Option<Value>,
    #[serde(default)]
    pub response: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolConfig {
    #[serde(default)]
    pub function_calling_config: Option<FunctionCallingConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionCallingConfig {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub allowed_function_names: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerationConfig {
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub response_mime_type: Option<String>,
    #[serde(default)]
    pub response_schema: Option<Value>,
    #[serde(default)]
    pub response_json_schema: Option<Value>,
    #[serde(default)]
    pub response_modalities: Option<Vec<String>>,
    #[serde(default)]
    pub candidate_count: Option<u32>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub seed: Option<i32>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub response_logprobs: Option<bool>,
    #[serde(default)]
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub thinking_config: Option<ThinkingConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThinkingConfig {
    #[serde(default)]
    pub include_thoughts: Option<bool>,
    #[serde(default)]
    pub thinking_budget: Option<i64>,
}

/// The keys of Google's `Schema` object.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

const TYPES: &[&str] = &[
    "TYPE_UNSPECIFIED",
    "STRING",
    "NUMBER",
    "INTEGER",
    "BOOLEAN",
    "ARRAY",
    "OBJECT",
    "NULL",
];

/// Checks a `Schema` the way the API's parser does: unknown keys and unknown types are errors.
pub fn check_schema(schema: &Value, at: &str) -> Result<(), GoogleError> {
    let Some(obj) = schema.as_object() else {
        return Err(GoogleError::invalid(format!(
            "Invalid JSON payload received. Invalid value at '{at}': expected an object."
        )));
    };
    for (key, value) in obj {
        if !SCHEMA_KEYS.contains(&key.as_str()) {
            return Err(GoogleError::invalid(format!(
                "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
            )));
        }
        match key.as_str() {
            "type" => {
                let t = value.as_str().unwrap_or_default().to_ascii_uppercase();
                if !TYPES.contains(&t.as_str()) {
                    return Err(GoogleError::invalid(format!(
                        "Invalid JSON payload received. Invalid value at '{at}.type' ({value})"
                    )));
                }
            }
            "properties" => {
                let props = value.as_object().ok_or_else(|| {
                    GoogleError::invalid(format!(
                        "Invalid JSON payload received. Invalid value at '{at}.properties'"
                    ))
                })?;
                for (name, prop) in props {
                    check_schema(prop, &format!("{at}.properties[{name}].value"))?;
                }
            }
            "items" => check_schema(value, &format!("{at}.items"))?,
            "anyOf" => {
                for (i, b) in value.as_array().into_iter().flatten().enumerate() {
                    check_schema(b, &format!("{at}.any_of[{i}]"))?;
                }
            }
            _ => {}
        }
    }
    if obj
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .as_deref()
        == Some("OBJECT")
        && obj
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        return Err(GoogleError::invalid(format!(
            "* GenerateContentRequest.{at}.properties: should be non-empty for OBJECT type"
        )));
    }
    Ok(())
}

/// The same schema with lower-case types, for [`crate::schema::instance`].
pub fn lower_types(schema: &Value) -> Value {
    match schema {
        Value::Object(obj) => Value::Object(
            obj.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        ("properties", Value::Object(props)) => {
                            Value::Object(props.iter().map(|(n, p)| (n.clone(), lower_types(p))).collect())
                        }
                        _ => lower_types(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(lower_types).collect()),
        other => other.clone(),
    }
}

impl GenerateRequest {
    /// The checks the real API makes on a request it could parse.
    pub fn validate(&self) -> Result<(), GoogleError> {
        if self.contents.is_empty() {
            return Err(GoogleError::invalid(
                "* GenerateContentRequest.contents: contents is not specified",
            ));
        }
        let mut previous_calls: Option<usize> = None;
        for (i, c) in self.contents.iter().enumerate() {
            let role = c.role.as_deref().unwrap_or("user");
            if role != "user" && role != "model" {
                return Err(GoogleError::invalid(format!(
                    "Please use a valid role: user, model. (contents[{i}].role = \"{role}\")"
                )));
            }
            if c.parts.is_empty() {
                return Err(GoogleError::invalid(format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
                )));
            }
            for (j, p) in c.parts.iter().enumerate() {
                let fields = [
                    p.text.is_some(),
                    p.inline_data.is_some(),
                    p.file_data.is_some(),
                    p.function_call.is_some(),
                    p.function_response.is_some(),
                ];
                if fields.iter().filter(|f| **f).count() != 1 {
                    return Err(GoogleError::invalid(format!(
                        "* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field 'data' must have one initialized field"
                    )));
                }
                if p.function_call.is_some() && role != "model" {
                    return Err(GoogleError::invalid(format!(
                        "contents[{i}].parts[{j}]: a function call must come from the model"
                    )));
                }
                if let Some(f) = &p.file_data
                    && f.mime_type.as_deref().unwrap_or_default().is_empty()
                {
                    return Err(GoogleError::invalid(format!(
                        "* GenerateContentRequest.contents[{i}].parts[{j}].file_data.mime_type: mime_type is required"
                    )));
                }
            }
            let responses = c.parts.iter().filter(|p| p.function_response.is_some()).count();
            if responses > 0 {
                match previous_calls {
                    Some(calls) if calls == responses => {}
                    Some(_) => {
                        return Err(GoogleError::invalid(
                            "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
                        ));
                    }
                    None => {
                        return Err(GoogleError::invalid(
                            "Please ensure that function response turn comes immediately after a function call turn.",
                        ));
                    }
                }
            }
            let calls = c.parts.iter().filter(|p| p.function_call.is_some()).count();
            previous_calls = (calls > 0).then_some(calls);
        }
        if let Some(system) = &self.system_instruction
            && system.parts.iter().any(|p| p.text.is_none())
        {
            return Err(GoogleError::invalid(
                "system_instruction: only text parts are supported",
            ));
        }
        let mut names = Vec::new();
        for (t, tool) in self.tools.iter().flatten().enumerate() {
            for (d, decl) in tool.function_declarations.iter().flatten().enumerate() {
                let valid = !decl.name.is_empty()
                    && decl.name.len() <= 64
                    && decl
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
                if !valid {
                    return Err(GoogleError::invalid(format!(
                        "* GenerateContentRequest.tools[{t}].function_declarations[{d}].name: Invalid function name."
                    )));
                }
                if let Some(p) = &decl.parameters {
                    check_schema(p, &format!("tools[{t}].function_declarations[{d}].parameters"))?;
                }
                names.push(decl.name.as_str());
            }
        }
        if let Some(fc) = self
            .tool_config
            .as_ref()
            .and_then(|t| t.function_calling_config.as_ref())
        {
            let mode = fc.mode.as_deref().unwrap_or("AUTO");
            if !matches!(mode, "MODE_UNSPECIFIED" | "AUTO" | "ANY" | "NONE" | "VALIDATED") {
                return Err(GoogleError::invalid(format!(
                    "Invalid JSON payload received. Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
                )));
            }
            if let Some(allowed) = &fc.allowed_function_names {
                if mode != "ANY" && mode != "VALIDATED" {
                    return Err(GoogleError::invalid(
                        "allowed_function_names may only be set when function calling mode is ANY.",
                    ));
                }
                if let Some(unknown) = allowed.iter().find(|a| !names.contains(&a.as_str())) {
                    return Err(GoogleError::invalid(format!(
                        "allowed_function_names contains `{unknown}`, which is not a declared function."
                    )));
                }
            }
        }
        if let Some(g) = &self.generation_config {
            if let Some(n) = g.candidate_count
                && !(1..=8).contains(&n)
            {
                return Err(GoogleError::invalid("candidate_count must be between 1 and 8."));
            }
            if g.stop_sequences.as_ref().is_some_and(|s| s.len() > 5) {
                return Err(GoogleError::invalid(
                    "stop_sequences must have at most 5 entries.",
                ));
            }
            if let Some(schema) = &g.response_schema {
                if g.response_mime_type.as_deref() != Some("application/json") {
                    return Err(GoogleError::invalid(
                        "* GenerateContentRequest.generation_config.response_schema: response_mime_type must be application/json when response_schema is set",
                    ));
                }
                check_schema(schema, "generation_config.response_schema")?;
            }
            if let Some(mime) = g.response_mime_type.as_deref()
                && !matches!(mime, "text/plain" | "application/json" | "text/x.enum")
            {
                return Err(GoogleError::invalid(format!(
                    "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, and `text/x.enum`, got `{mime}`"
                )));
            }
            if g.logprobs.is_some() && g.response_logprobs != Some(true) {
                return Err(GoogleError::invalid(
                    "logprobs requires response_logprobs to be true.",
                ));
            }
        }
        Ok(())
    }
}
