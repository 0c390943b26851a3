//! Embeddings through Bedrock's InvokeModel (`POST {base_url}/model/{modelId}/invoke`),
//! SigV4-signed like Converse, for the two families Bedrock serves:
//!
//! - Titan (`amazon.titan-embed…`): one text a request, `{"inputText", "dimensions"?,
//!   "normalize": true}` → `{"embedding": [...], "inputTextTokenCount"}`. Several inputs are
//!   several calls, made concurrently but at most [`TITAN_CONCURRENCY`] at once, their vectors
//!   kept in input order. Only Text Embeddings V2 takes `dimensions` (256, 512 or 1024) and
//!   `normalize`; V1 and the image model get `inputText` alone.
//! - Cohere (`cohere.embed…`): `{"texts": [...], "input_type": "search_document",
//!   "embedding_types": ["float"]}` (at most [`COHERE_BATCH`] texts a call) →
//!   `{"embeddings": {"float": [[...]]}}`, or `{"embeddings": [[...]]}` from a model that
//!   ignores `embedding_types`. Cohere v3 vectors have a fixed size: `dimensions` is refused.
//!
//! Fields the canonical request does not name (`extra`) are merged into every body, so a
//! client can ask for e.g. `input_type: "search_query"`. Token-id inputs are refused (both
//! families embed text), as is any other model. Usage is Titan's `inputTextTokenCount`
//! summed; Cohere counts nothing in its body, so its tokens are estimated (about four
//! characters a token) and marked so.

use std::time::SystemTime;

use futures_util::{StreamExt, TryStreamExt, stream};
use llmgw_kit::grpc::MAX_MESSAGE_BYTES;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{Embedding, EmbeddingsRequest, EmbeddingsResponse, Target, Usage, embedding_input};
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Bedrock, JSON, PATH_SEGMENT, unsupported};

/// How many Titan calls (one input each) run at once for one request.
pub(super) const TITAN_CONCURRENCY: usize = 8;
/// The most texts Cohere Embed takes in one call.
pub(super) const COHERE_BATCH: usize = 96;
/// How many Cohere calls (of up to [`COHERE_BATCH`] texts) run at once.
const COHERE_CONCURRENCY: usize = 2;
/// The dimensions Titan Text Embeddings V2 offers.
const TITAN_V2_DIMENSIONS: [u32; 3] = [256, 512, 1024];

/// Which InvokeModel body a model id takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// Titan Text Embeddings V2 (`dimensions`, `normalize`).
    TitanV2,
    /// Other Titan embedding models: `inputText` only.
    Titan,
    Cohere,
}

/// The family of `model`: a foundation-model id, possibly behind a geographic
/// inference-profile prefix (`us.`) or inside an ARN.
pub(super) fn family(model: &str) -> Option<Family> {
    let id = model.rsplit('/').next().unwrap_or(model);
    let id = match id.split_once('.') {
        Some(("us" | "eu" | "apac" | "global" | "us-gov" | "jp" | "au" | "ca", rest)) => rest,
        _ => id,
    };
    if id.starts_with("amazon.titan-embed-text-v2") {
        Some(Family::TitanV2)
    } else if id.starts_with("amazon.titan-embed") {
        Some(Family::Titan)
    } else if id.starts_with("cohere.embed") {
        Some(Family::Cohere)
    } else {
        None
    }
}

/// One InvokeModel call: its body and how many vectors it must answer.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) body: Vec<u8>,
    pub(super) inputs: usize,
}

/// The calls that embed `req` with a model of `family`, in input order.
pub(super) fn calls(
    family: Family,
    req: &EmbeddingsRequest,
    provider: &str,
    model: &str,
) -> Result<Vec<Call>, GwError> {
    let mut texts = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        match &input.value {
            Some(embedding_input::Value::Text(t)) => texts.push(t.as_str()),
            _ => {
                return Err(unsupported(
                    provider,
                    "input",
                    "token-id inputs for embeddings (send text)",
                ));
            }
        }
    }
    if texts.is_empty() {
        return Err(GwError::invalid("input", "`input` must not be empty").with_provider(provider));
    }
    let extra = match req.extra_json.as_deref() {
        Some(text) => serde_json::from_str::<Map<String, Value>>(text)
            .map_err(|e| GwError::internal(format!("extra fields are not a JSON object: {e}")))?,
        None => Map::new(),
    };
    let with_extra = |mut body: Map<String, Value>| {
        body.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        Value::Object(body).to_string().into_bytes()
    };
    match family {
        Family::TitanV2 => {
            if let Some(d) = req.dimensions
                && !TITAN_V2_DIMENSIONS.contains(&d)
            {
                return Err(unsupported(
                    provider,
                    "dimensions",
                    &format!("`dimensions` {d} for `{model}` (256, 512 or 1024)"),
                ));
            }
            Ok(texts
                .iter()
                .map(|text| {
                    let mut body = Map::new();
                    body.insert("inputText".into(), json!(text));
                    if let Some(d) = req.dimensions {
                        body.insert("dimensions".into(), json!(d));
                    }
                    body.insert("normalize".into(), json!(true));
                    Call {
                        body: with_extra(body),
                        inputs: 1,
                    }
                })
                .collect())
        }
        Family::Titan => {
            if req.dimensions.is_some() {
                return Err(unsupported(
                    provider,
                    "dimensions",
                    &format!("`dimensions` for `{model}`"),
                ));
            }
            Ok(texts
                .iter()
                .map(|text| {
                    let mut body = Map::new();
                    body.insert("inputText".into(), json!(text));
                    Call {
                        body: with_extra(body),
                        inputs: 1,
                    }
                })
                .collect())
        }
        Family::Cohere => {
            if req.dimensions.is_some() {
                return Err(unsupported(
                    provider,
                    "dimensions",
                    &format!("`dimensions` for `{model}` (Cohere Embed vectors have a fixed size)"),
                ));
            }
            Ok(texts
                .chunks(COHERE_BATCH)
                .map(|chunk| {
                    let mut body = Map::new();
                    body.insert("texts".into(), json!(chunk));
                    body.insert("input_type".into(), json!("search_document"));
                    body.insert("embedding_types".into(), json!(["float"]));
                    Call {
                        body: with_extra(body),
                        inputs: chunk.len(),
                    }
                })
                .collect())
        }
    }
}

/// One call's answer: its vectors and, when the provider counted them, tokens.
#[derive(Debug, PartialEq)]
pub(super) struct Answer {
    pub(super) vectors: Vec<Vec<f32>>,
    pub(super) tokens: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResponse {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: Option<u32>,
}

#[derive(Deserialize)]
struct CohereResponse {
    embeddings: CohereEmbeddings,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CohereEmbeddings {
    Floats(Vec<Vec<f32>>),
    ByType { float: Vec<Vec<f32>> },
}

/// Parses one call's answer; `None` when it is not what `family` sends or does
/// not hold `inputs` vectors.
pub(super) fn parse(family: Family, body: &[u8], inputs: usize) -> Option<Answer> {
    let answer = match family {
        Family::TitanV2 | Family::Titan => {
            let r: TitanResponse = serde_json::from_slice(body).ok()?;
            Answer {
                vectors: vec![r.embedding],
                tokens: r.input_text_token_count,
            }
        }
        Family::Cohere => {
            let r: CohereResponse = serde_json::from_slice(body).ok()?;
            let (CohereEmbeddings::Floats(vectors) | CohereEmbeddings::ByType { float: vectors }) =
                r.embeddings;
            Answer {
                vectors,
                tokens: None,
            }
        }
    };
    (answer.vectors.len() == inputs && answer.vectors.iter().all(|v| !v.is_empty())).then_some(answer)
}

/// The usage of `answers` for `req`: counted tokens summed when every call
/// counted them, else about four characters a token, marked estimated.
pub(super) fn usage(req: &EmbeddingsRequest, answers: &[Answer]) -> Usage {
    let counted: Option<Vec<u32>> = answers.iter().map(|a| a.tokens).collect();
    let (tokens, estimated) = match counted {
        Some(counts) => (counts.into_iter().fold(0, u32::saturating_add), false),
        None => (
            req.inputs
                .iter()
                .map(|i| match &i.value {
                    Some(embedding_input::Value::Text(t)) => {
                        u32::try_from(t.chars().count().div_ceil(4).max(1)).unwrap_or(u32::MAX)
                    }
                    _ => 0,
                })
                .fold(0, u32::saturating_add),
            true,
        ),
    };
    Usage {
        prompt_tokens: tokens,
        total_tokens: tokens,
        estimated,
        ..Usage::default()
    }
}

impl Bedrock {
    /// Embeddings for `req` with `target.model` (see the module docs).
    pub(super) async fn embed_invoke(
        &self,
        target: &Target,
        req: &EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, GwError> {
        let name = self.peer.name();
        let family = family(&target.model).ok_or_else(|| {
            GwError::invalid(
                "model",
                format!(
                    "provider `{name}` (bedrock) offers embeddings only with Titan (`amazon.titan-embed-…`) \
                     and Cohere (`cohere.embed-…`) models, not `{}`",
                    target.model
                ),
            )
            .with_provider(name)
        })?;
        let calls = calls(family, req, name, &target.model)?;
        let url = format!(
            "{}/model/{}/invoke",
            self.base_url,
            utf8_percent_encode(&target.model, PATH_SEGMENT)
        );
        let concurrency = match family {
            Family::Cohere => COHERE_CONCURRENCY,
            Family::TitanV2 | Family::Titan => TITAN_CONCURRENCY,
        };
        let timeout = self.timeout(target);
        let all = stream::iter(calls)
            .map(|call| self.invoke(&url, family, call))
            .buffered(concurrency)
            .try_collect::<Vec<_>>();
        let answers = tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        let usage = usage(req, &answers);
        Ok(EmbeddingsResponse {
            model: target.model.clone(),
            data: answers
                .into_iter()
                .flat_map(|a| a.vectors)
                .zip(0u32..)
                .map(|(vector, index)| Embedding { index, vector })
                .collect(),
            usage: Some(usage),
            metadata: None,
        })
    }

    /// One signed InvokeModel call.
    async fn invoke(&self, url: &str, family: Family, call: Call) -> Result<Answer, GwError> {
        let signed = self.sign(url, JSON, &call.body, SystemTime::now())?;
        let mut request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header("content-type", JSON)
            .header("accept", JSON);
        for (header, value) in signed {
            request = request.header(header, value);
        }
        let mut response =
            self.send(request.body(call.body))
                .await
                .map_err(|e| match (e.code(), e.upstream_status()) {
                    (ErrorCode::ContextLengthExceeded, _) => e.with_param("input"),
                    (_, Some(404)) => e.with_param("model"),
                    _ => e,
                })?;
        let body = self
            .peer
            .read_limited(&mut response, MAX_MESSAGE_BYTES, true)
            .await?;
        parse(family, &body, call.inputs).ok_or_else(|| {
            self.peer.error(
                ErrorCode::UpstreamError,
                format!(
                    "provider `{}` sent an invalid embeddings response",
                    self.peer.name()
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use llmgw_proto::{EmbeddingInput, TokenIds};

    use super::*;

    fn text_req(texts: &[&str], dimensions: Option<u32>) -> EmbeddingsRequest {
        EmbeddingsRequest {
            model: "m".into(),
            inputs: texts
                .iter()
                .map(|t| EmbeddingInput {
                    value: Some(embedding_input::Value::Text((*t).to_owned())),
                })
                .collect(),
            dimensions,
            ..EmbeddingsRequest::default()
        }
    }

    fn body(call: &Call) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    #[test]
    fn families_by_model_id() {
        assert_eq!(family("amazon.titan-embed-text-v2:0"), Some(Family::TitanV2));
        assert_eq!(family("amazon.titan-embed-text-v1"), Some(Family::Titan));
        assert_eq!(family("amazon.titan-embed-image-v1"), Some(Family::Titan));
        assert_eq!(family("cohere.embed-english-v3"), Some(Family::Cohere));
        assert_eq!(family("us.cohere.embed-multilingual-v3"), Some(Family::Cohere));
        assert_eq!(
            family("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0"),
            Some(Family::TitanV2)
        );
        assert_eq!(family("anthropic.claude-3-haiku-20240307-v1:0"), None);
        assert_eq!(family("amazon.titan-text-express-v1"), None);
    }

    #[test]
    fn titan_v2_one_body_per_input_with_dimensions() {
        let req = text_req(&["a", "b"], Some(256));
        let calls = calls(Family::TitanV2, &req, "p", "amazon.titan-embed-text-v2:0").unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            body(&calls[0]),
            json!({"inputText": "a", "dimensions": 256, "normalize": true})
        );
        assert_eq!(
            body(&calls[1]),
            json!({"inputText": "b", "dimensions": 256, "normalize": true})
        );
        let calls = calls_of(Family::TitanV2, &text_req(&["a"], None)).unwrap();
        assert_eq!(body(&calls[0]), json!({"inputText": "a", "normalize": true}));
    }

    fn calls_of(family: Family, req: &EmbeddingsRequest) -> Result<Vec<Call>, GwError> {
        calls(family, req, "p", "the-model")
    }

    #[test]
    fn titan_v1_sends_input_text_only_and_refuses_dimensions() {
        let calls = calls_of(Family::Titan, &text_req(&["a"], None)).unwrap();
        assert_eq!(body(&calls[0]), json!({"inputText": "a"}));
        let e = calls_of(Family::Titan, &text_req(&["a"], Some(256))).unwrap_err();
        assert_eq!(e.param(), Some("dimensions"));
    }

    #[test]
    fn titan_v2_refuses_other_dimensions() {
        for d in [0, 100, 768, 1536] {
            let e = calls_of(Family::TitanV2, &text_req(&["a"], Some(d))).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
            assert_eq!(e.param(), Some("dimensions"));
            assert_eq!(e.provider(), Some("p"));
        }
    }

    #[test]
    fn cohere_one_body_for_all_inputs_batched() {
        let calls = calls_of(Family::Cohere, &text_req(&["a", "b"], None)).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].inputs, 2);
        assert_eq!(
            body(&calls[0]),
            json!({"texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"]})
        );
        let many: Vec<String> = (0..COHERE_BATCH + 4).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let calls = calls_of(Family::Cohere, &text_req(&many, None)).unwrap();
        assert_eq!(
            calls.iter().map(|c| c.inputs).collect::<Vec<_>>(),
            [COHERE_BATCH, 4]
        );
        assert_eq!(body(&calls[1])["texts"][0], json!(format!("t{COHERE_BATCH}")));
    }

    #[test]
    fn cohere_refuses_dimensions() {
        let e = calls_of(Family::Cohere, &text_req(&["a"], Some(1024))).unwrap_err();
        assert_eq!(e.param(), Some("dimensions"));
    }

    #[test]
    fn extra_fields_override_defaults() {
        let mut req = text_req(&["q"], None);
        req.extra_json = Some(r#"{"input_type":"search_query","truncate":"END"}"#.into());
        let calls = calls_of(Family::Cohere, &req).unwrap();
        assert_eq!(body(&calls[0])["input_type"], "search_query");
        assert_eq!(body(&calls[0])["truncate"], "END");
    }

    #[test]
    fn token_inputs_are_refused() {
        let mut req = text_req(&["a"], None);
        req.inputs.push(EmbeddingInput {
            value: Some(embedding_input::Value::Tokens(TokenIds { ids: vec![1, 2] })),
        });
        for f in [Family::TitanV2, Family::Cohere] {
            let e = calls_of(f, &req).unwrap_err();
            assert_eq!(e.param(), Some("input"));
        }
    }

    #[test]
    fn parses_titan_and_both_cohere_shapes() {
        let titan =
            br#"{"embedding":[0.5,-0.5],"inputTextTokenCount":3,"embeddingsByType":{"float":[0.5,-0.5]}}"#;
        assert_eq!(
            parse(Family::TitanV2, titan, 1),
            Some(Answer {
                vectors: vec![vec![0.5, -0.5]],
                tokens: Some(3)
            })
        );
        let by_type = br#"{"id":"x","response_type":"embeddings_by_type","texts":["a","b"],"embeddings":{"float":[[1.0],[2.0]]}}"#;
        let floats =
            br#"{"id":"x","response_type":"embeddings_floats","texts":["a","b"],"embeddings":[[1.0],[2.0]]}"#;
        for b in [&by_type[..], &floats[..]] {
            assert_eq!(
                parse(Family::Cohere, b, 2),
                Some(Answer {
                    vectors: vec![vec![1.0], vec![2.0]],
                    tokens: None
                })
            );
        }
        // The wrong count, an empty vector or another shape is invalid.
        assert_eq!(parse(Family::Cohere, floats, 3), None);
        assert_eq!(parse(Family::Titan, br#"{"embedding":[]}"#, 1), None);
        assert_eq!(parse(Family::Titan, br#"{"embeddings":[[1.0]]}"#, 1), None);
    }

    #[test]
    fn usage_sums_counts_or_estimates() {
        let req = text_req(&["abcdefgh", "abc"], None);
        let counted = [
            Answer {
                vectors: vec![vec![1.0]],
                tokens: Some(2),
            },
            Answer {
                vectors: vec![vec![1.0]],
                tokens: Some(5),
            },
        ];
        let u = usage(&req, &counted);
        assert_eq!((u.prompt_tokens, u.total_tokens, u.estimated), (7, 7, false));
        let uncounted = [Answer {
            vectors: vec![vec![1.0], vec![1.0]],
            tokens: None,
        }];
        let u = usage(&req, &uncounted);
        assert_eq!((u.prompt_tokens, u.estimated), (3, true));
    }
}
