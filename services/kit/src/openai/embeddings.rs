//! The OpenAI Embeddings wire format, both directions (`POST /v1/embeddings`).
//!
//! Vectors travel inside the gateway as `f32` (what OpenAI computes); the
//! client's `encoding_format` decides how they are written back: JSON floats
//! or base64 of little-endian `f32`, byte for byte what OpenAI sends.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use llmgw_proto as pb;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, GwError};

/// Most inputs in one request, as OpenAI allows.
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
struct RequestIn {
    model: String,
    input: InputIn,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// `input`: a string, an array of strings, an array of token ids, or an
/// array of arrays of token ids.
struct InputIn {
    inputs: Vec<pb::EmbeddingInput>,
    single: bool,
}

fn text(s: String) -> pb::EmbeddingInput {
    pb::EmbeddingInput {
        value: Some(pb::embedding_input::Value::Text(s)),
    }
}

fn tokens(ids: Vec<u32>) -> pb::EmbeddingInput {
    pb::EmbeddingInput {
        value: Some(pb::embedding_input::Value::Tokens(pb::TokenIds { ids })),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Text(String),
    Token(u32),
    Tokens(Vec<u32>),
}

impl<'de> Deserialize<'de> for InputIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of strings, or an array of token arrays")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<InputIn, E> {
                Ok(InputIn {
                    inputs: vec![text(s.to_owned())],
                    single: true,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputIn, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Item>()? {
                    items.push(item);
                }
                if !items.is_empty() && items.iter().all(|i| matches!(i, Item::Token(_))) {
                    let ids = items
                        .into_iter()
                        .filter_map(|i| if let Item::Token(t) = i { Some(t) } else { None });
                    return Ok(InputIn {
                        inputs: vec![tokens(ids.collect())],
                        single: true,
                    });
                }
                let mut inputs = Vec::with_capacity(items.len());
                for item in items {
                    inputs.push(match item {
                        Item::Text(s) => text(s),
                        Item::Tokens(ids) => tokens(ids),
                        Item::Token(_) => {
                            return Err(de::Error::custom("an array mixes token ids with other inputs"));
                        }
                    });
                }
                Ok(InputIn {
                    inputs,
                    single: false,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses and validates a client's `POST /v1/embeddings` body.
pub fn parse_embeddings_request(body: &[u8]) -> Result<pb::EmbeddingsRequest, GwError> {
    let raw: RequestIn = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            return Err(match serde_path_to_error::deserialize::<_, RequestIn>(&mut de) {
                Err(e) => super::read::describe(e),
                Ok(_) => super::read::malformed(),
            });
        }
    };
    if raw.model.trim().is_empty() {
        return Err(GwError::invalid(
            "model",
            "Invalid value for 'model': it must not be empty.",
        ));
    }
    if raw.input.inputs.is_empty() {
        return Err(GwError::invalid(
            "input",
            "Invalid 'input': expected at least one input.",
        ));
    }
    if raw.input.inputs.len() > MAX_INPUTS {
        return Err(GwError::invalid(
            "input",
            format!("Invalid 'input': at most {MAX_INPUTS} inputs are allowed."),
        ));
    }
    for (i, input) in raw.input.inputs.iter().enumerate() {
        let empty = match &input.value {
            Some(pb::embedding_input::Value::Text(t)) => t.is_empty(),
            Some(pb::embedding_input::Value::Tokens(t)) => t.ids.is_empty(),
            None => true,
        };
        if empty {
            let param = if raw.input.single {
                "input".to_owned()
            } else {
                format!("input[{i}]")
            };
            return Err(GwError::invalid(
                param.clone(),
                format!("Invalid '{param}': it must not be empty."),
            ));
        }
    }
    let encoding_format = match raw.encoding_format.as_deref() {
        None => pb::EncodingFormat::Unspecified,
        Some("float") => pb::EncodingFormat::Float,
        Some("base64") => pb::EncodingFormat::Base64,
        Some(other) => {
            return Err(GwError::invalid(
                "encoding_format",
                format!(
                    "Invalid value for 'encoding_format': '{other}'. Supported values are: 'float' and 'base64'."
                ),
            ));
        }
    };
    if raw.dimensions == Some(0) {
        return Err(GwError::invalid(
            "dimensions",
            "Invalid value for 'dimensions': it must be at least 1.",
        ));
    }
    let extra_json = if raw.extra.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&raw.extra).map_err(|e| GwError::internal(e.to_string()))?)
    };
    Ok(pb::EmbeddingsRequest {
        model: raw.model,
        inputs: raw.input.inputs,
        single: raw.input.single,
        encoding_format: encoding_format as i32,
        dimensions: raw.dimensions,
        user: raw.user,
        extra_json,
    })
}

struct InputOut<'a>(&'a pb::EmbeddingsRequest);

impl Serialize for InputOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let one = |s: S, input: &pb::EmbeddingInput| match &input.value {
            Some(pb::embedding_input::Value::Text(t)) => s.serialize_str(t),
            Some(pb::embedding_input::Value::Tokens(t)) => t.ids.serialize(s),
            None => s.serialize_str(""),
        };
        match (self.0.single, self.0.inputs.as_slice()) {
            (true, [input]) => one(s, input),
            (_, inputs) => {
                let mut seq = s.serialize_seq(Some(inputs.len()))?;
                for input in inputs {
                    match &input.value {
                        Some(pb::embedding_input::Value::Text(t)) => seq.serialize_element(t)?,
                        Some(pb::embedding_input::Value::Tokens(t)) => seq.serialize_element(&t.ids)?,
                        None => seq.serialize_element("")?,
                    }
                }
                seq.end()
            }
        }
    }
}

#[derive(Serialize)]
struct RequestOut<'a> {
    model: &'a str,
    input: InputOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<Map<String, Value>>,
}

fn format_str(format: i32) -> Option<&'static str> {
    match pb::EncodingFormat::try_from(format).unwrap_or(pb::EncodingFormat::Unspecified) {
        pb::EncodingFormat::Unspecified => None,
        pb::EncodingFormat::Float => Some("float"),
        pb::EncodingFormat::Base64 => Some("base64"),
    }
}

/// Writes `req` as an OpenAI embeddings body for `model`, as the client sent it.
pub fn embeddings_request_json(req: &pb::EmbeddingsRequest, model: &str) -> Result<Vec<u8>, GwError> {
    let extra = match req.extra_json.as_deref() {
        Some(text) => Some(
            serde_json::from_str::<Map<String, Value>>(text)
                .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
        ),
        None => None,
    };
    let out = RequestOut {
        model,
        input: InputOut(req),
        encoding_format: format_str(req.encoding_format),
        dimensions: req.dimensions,
        user: req.user.as_deref(),
        extra,
    };
    serde_json::to_vec(&out).map_err(|e| GwError::internal(format!("cannot write request: {e}")))
}

#[derive(Deserialize)]
struct ResponseIn {
    #[serde(default)]
    model: String,
    data: Vec<EmbeddingIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct EmbeddingIn {
    #[serde(default)]
    index: u32,
    embedding: VectorIn,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VectorIn {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    total_tokens: u32,
}

/// Parses a provider's embeddings list (float or base64 vectors).
pub fn parse_embeddings_response(body: &[u8]) -> Result<pb::EmbeddingsResponse, String> {
    let raw: ResponseIn = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut data = Vec::with_capacity(raw.data.len());
    for e in raw.data {
        let vector = match e.embedding {
            VectorIn::Floats(v) => v,
            VectorIn::Base64(b) => {
                let bytes = B64
                    .decode(b.as_bytes())
                    .map_err(|e| format!("bad base64 embedding: {e}"))?;
                if bytes.len() % 4 != 0 {
                    return Err("base64 embedding is not a whole number of f32".to_owned());
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
        };
        data.push(pb::Embedding {
            index: e.index,
            vector,
        });
    }
    Ok(pb::EmbeddingsResponse {
        model: raw.model,
        data,
        usage: raw.usage.map(|u| pb::Usage {
            prompt_tokens: u.prompt_tokens,
            total_tokens: if u.total_tokens == 0 {
                u.prompt_tokens
            } else {
                u.total_tokens
            },
            ..Default::default()
        }),
        metadata: None,
    })
}

struct VectorOut<'a> {
    vector: &'a [f32],
    base64: bool,
}

impl Serialize for VectorOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.base64 {
            let mut bytes = Vec::with_capacity(self.vector.len() * 4);
            for v in self.vector {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            s.serialize_str(&B64.encode(bytes))
        } else {
            self.vector.serialize(s)
        }
    }
}

#[derive(Serialize)]
struct EmbeddingOut<'a> {
    object: &'static str,
    index: u32,
    embedding: VectorOut<'a>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u32,
    total_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    estimated: bool,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    object: &'static str,
    data: Vec<EmbeddingOut<'a>>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<super::write::MetadataOut<'a>>,
}

/// Writes an embeddings list, vectors as floats or base64 per `format`.
pub fn embeddings_response_json(resp: &pb::EmbeddingsResponse, format: i32) -> Result<Vec<u8>, GwError> {
    let base64 = format == pb::EncodingFormat::Base64 as i32;
    let out = ResponseOut {
        object: "list",
        data: resp
            .data
            .iter()
            .map(|e| EmbeddingOut {
                object: "embedding",
                index: e.index,
                embedding: VectorOut {
                    vector: &e.vector,
                    base64,
                },
            })
            .collect(),
        model: &resp.model,
        usage: resp.usage.as_ref().map(|u| UsageOut {
            prompt_tokens: u.prompt_tokens,
            total_tokens: u.total_tokens,
            cost_usd: u.cost_usd,
            estimated: u.estimated,
        }),
        metadata: resp.metadata.as_ref().map(super::write::metadata_out),
    };
    serde_json::to_vec(&out)
        .map_err(|e| GwError::new(ErrorCode::Internal, format!("cannot write response: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roundtrip(body: Value) -> Value {
        let req = parse_embeddings_request(body.to_string().as_bytes()).unwrap();
        serde_json::from_slice(&embeddings_request_json(&req, &req.model).unwrap()).unwrap()
    }

    #[test]
    fn every_input_shape_round_trips() {
        for input in [
            json!("hi"),
            json!(["a", "b"]),
            json!([1, 2, 3]),
            json!([[1, 2], [3]]),
        ] {
            let body = json!({"model": "e", "input": input, "dimensions": 8, "encoding_format": "base64", "user": "u"});
            assert_eq!(roundtrip(body.clone()), body);
        }
        let body = json!({"model": "e", "input": "x"});
        assert_eq!(roundtrip(body.clone()), body, "nothing invented");
    }

    #[test]
    fn bad_requests_name_the_param() {
        let err = |b: Value| parse_embeddings_request(b.to_string().as_bytes()).unwrap_err();
        assert_eq!(err(json!({"input": "x"})).param(), Some("model"));
        assert_eq!(err(json!({"model": "e"})).param(), Some("input"));
        assert_eq!(err(json!({"model": "e", "input": []})).param(), Some("input"));
        assert_eq!(err(json!({"model": "e", "input": ""})).param(), Some("input"));
        assert_eq!(
            err(json!({"model": "e", "input": ["a", ""]})).param(),
            Some("input[1]")
        );
        assert_eq!(
            err(json!({"model": "e", "input": {"a": 1}})).param(),
            Some("input")
        );
        assert_eq!(
            err(json!({"model": "e", "input": "x", "encoding_format": "hex"})).param(),
            Some("encoding_format")
        );
        assert_eq!(
            err(json!({"model": "e", "input": "x", "dimensions": 0})).param(),
            Some("dimensions")
        );
    }

    #[test]
    fn base64_and_floats_carry_the_same_f32() {
        let v: Vec<f32> = vec![0.1, -2.5, 3.4028235e38, 1e-7];
        let mut bytes = Vec::new();
        for x in &v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let upstream = json!({"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": B64.encode(&bytes)}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}});
        let resp = parse_embeddings_response(upstream.to_string().as_bytes()).unwrap();
        assert_eq!(resp.data[0].vector, v);
        let as_b64: Value = serde_json::from_slice(
            &embeddings_response_json(&resp, pb::EncodingFormat::Base64 as i32).unwrap(),
        )
        .unwrap();
        assert_eq!(as_b64["data"][0]["embedding"], json!(B64.encode(&bytes)));
        let as_float: Value = serde_json::from_slice(
            &embeddings_response_json(&resp, pb::EncodingFormat::Float as i32).unwrap(),
        )
        .unwrap();
        let floats: Vec<f32> = serde_json::from_value(as_float["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(floats, v);
    }
}
