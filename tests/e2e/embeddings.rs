//! `POST /v1/embeddings` and the gRPC `Embeddings` call, through the gateway.

use llmgw_proto as pb;
use serde_json::json;
use tonic::metadata::MetadataValue;

use crate::harness::{Gateway, Shape};

const PROVIDERS: &str =
    "  - name: claude\n    type: anthropic\n    base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}\n";
const MODELS: &str = "  - name: embed-small\n    target: emu/text-embedding-3-small\n    price: { input_per_mtok: 0.02, output_per_mtok: 0 }\n  - name: claude-embed\n    target: claude/claude-3-5-haiku\n";

async fn embeddings(shape: Shape) {
    let gw = Gateway::start_with(shape, PROVIDERS, MODELS).await;

    let body = json!({"model": "embed-small", "input": ["alpha", "beta"], "encoding_format": "float", "dimensions": 64});
    let (s, h, v) = gw.post("/v1/embeddings", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 64);
    let p = v["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!((v["usage"]["cost_usd"].as_f64().unwrap() - p * 0.02 / 1e6).abs() < 1e-15);
    assert_eq!(v["metadata"]["used_model"], "text-embedding-3-small");
    assert_eq!(h["x-llmgw-provider"], "emu");
    // Passed through exactly, model replaced by the provider's name for it.
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1/embeddings");
    let mut sent = body.clone();
    sent["model"] = json!("text-embedding-3-small");
    assert_eq!(up["body"], sent);

    // base64 carries the same f32 values, and nothing is invented upstream.
    let (_, _, b64) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "embed-small", "input": "alpha", "encoding_format": "base64"}),
        )
        .await;
    let (_, _, flt) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "embed-small", "input": "alpha"}),
        )
        .await;
    assert_eq!(
        gw.last_upstream().await["body"],
        json!({"model": "text-embedding-3-small", "input": "alpha"})
    );
    let text = b64["data"][0]["embedding"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(flt["data"][0]["embedding"].as_array().unwrap().len(), 1536);

    // Errors name the param (and the provider when it has no embeddings).
    let (s, _, e) = gw.post("/v1/embeddings", &json!({"model": "embed-small"})).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("input")), "{e}");
    let (s, _, e) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "embed-small", "input": "x", "encoding_format": "hex"}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("encoding_format")),
        "{e}"
    );
    let (s, _, e) = gw
        .post("/v1/embeddings", &json!({"model": "nope", "input": "x"}))
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (404, Some("model")), "{e}");
    let (s, _, e) = gw
        .post("/v1/embeddings", &json!({"model": "claude-embed", "input": "x"}))
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("model")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("claude"), "{e}");

    // Metered like chat: the three successful calls above.
    let usage = gw
        .usage_until("acme", |u| u["requests"].as_u64() >= Some(3))
        .await;
    assert!(usage["requests"].as_u64().unwrap() >= 3, "{usage}");

    // The same over public gRPC.
    let mut client = pb::gateway_client::GatewayClient::connect(format!("http://{}", gw.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::EmbeddingsRequest {
        model: "embed-small".into(),
        inputs: vec![pb::EmbeddingInput {
            value: Some(pb::embedding_input::Value::Text("grpc".into())),
        }],
        single: true,
        dimensions: Some(8),
        ..Default::default()
    });
    let v: MetadataValue<_> = format!("Bearer {}", gw.key).parse().unwrap();
    req.metadata_mut().insert("authorization", v);
    let resp = client.embeddings(req).await.unwrap().into_inner();
    assert_eq!(resp.data[0].vector.len(), 8);
    let norm: f32 = resp.data[0].vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_in_one_process() {
    embeddings(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_across_five_processes() {
    embeddings(Shape::Split).await;
}

const MORE_PROVIDERS: &str = r#"  - name: az
    type: azure-openai
    base_url: http://{emu}
    api_key: ${EMU_KEY}
  - name: ol
    type: ollama
    base_url: http://{emu}
    api_key: ${EMU_KEY}
  - name: gem
    type: google
    base_url: http://{emu}/v1beta
    api_key: ${EMU_KEY}
"#;

const MORE_MODELS: &str = r#"  - name: az-embed
    target: az/my-embedding-deployment
    price: { input_per_mtok: 0.1, output_per_mtok: 0 }
  - name: ol-embed
    target: ol/nomic-embed-text
    price: { input_per_mtok: 0.1, output_per_mtok: 0 }
  - name: gem-embed
    target: gem/text-embedding-004
    price: { input_per_mtok: 0.1, output_per_mtok: 0 }
"#;

/// Little-endian `f32`s from standard base64 (what OpenAI's `base64` encoding is).
fn decode_f32s(text: &str) -> Vec<f32> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_through_azure_ollama_and_gemini() {
    let gw = Gateway::start_with(Shape::All, MORE_PROVIDERS, MORE_MODELS).await;
    let mut alphas = Vec::new();
    for (model, provider, path, estimated) in [
        (
            "az-embed",
            "az",
            "/openai/deployments/my-embedding-deployment/embeddings?api-version=",
            false,
        ),
        ("ol-embed", "ol", "/api/embed", false),
        (
            "gem-embed",
            "gem",
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            true,
        ),
    ] {
        // floats, two inputs, dimensions; usage and cost
        let (s, h, v) = gw
            .post(
                "/v1/embeddings",
                &json!({"model": model, "input": ["alpha", "beta"], "dimensions": 16}),
            )
            .await;
        assert_eq!(s, 200, "{model}: {v}");
        assert_eq!(h["x-llmgw-provider"], provider);
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(v["data"][1]["index"], 1);
        let alpha = floats(&v["data"][0]["embedding"]);
        assert_eq!(alpha.len(), 16);
        let norm: f32 = alpha.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{model}: {norm}");
        let p = v["usage"]["prompt_tokens"].as_f64().unwrap();
        assert!(p > 0.0, "{v}");
        assert_eq!(v["usage"]["total_tokens"].as_f64(), Some(p));
        let cost = v["usage"]["cost_usd"].as_f64().unwrap();
        assert!((cost - p * 0.1 / 1e6).abs() < 1e-15, "{v}");
        assert_eq!(
            v["usage"]["estimated"].as_bool().unwrap_or(false),
            estimated,
            "{v}"
        );
        let up = gw.last_upstream().await;
        assert!(up["path"].as_str().unwrap().starts_with(path), "{up}");
        alphas.push(alpha);

        // base64 carries the same f32 values as floats
        let (s, _, b64) = gw
            .post(
                "/v1/embeddings",
                &json!({"model": model, "input": "alpha", "encoding_format": "base64", "dimensions": 16}),
            )
            .await;
        assert_eq!(s, 200, "{b64}");
        assert_eq!(
            decode_f32s(b64["data"][0]["embedding"].as_str().unwrap()),
            alphas[alphas.len() - 1],
            "{model}"
        );
        // the native size when no dimensions are asked for
        let (s, _, v) = gw
            .post("/v1/embeddings", &json!({"model": model, "input": "alpha"}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(v["data"][0]["embedding"].as_array().unwrap().len() >= 768);
    }
    // The emulators share one vector function: the same text, the same vector.
    assert!(alphas.windows(2).all(|w| w[0] == w[1]));

    // What each wire looks like.
    let (_, _, _) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "az-embed", "input": [[1, 2, 3]], "dimensions": 8}),
        )
        .await;
    let up = gw.last_upstream().await;
    assert_eq!(up["body"], json!({"input": [[1, 2, 3]], "dimensions": 8}), "{up}");
    assert_eq!(up["headers"]["api-key"], crate::harness::EMU_KEY);
    gw.post(
        "/v1/embeddings",
        &json!({"model": "ol-embed", "input": ["a", "b"], "dimensions": 8}),
    )
    .await;
    assert_eq!(
        gw.last_upstream().await["body"],
        json!({"model": "nomic-embed-text", "input": ["a", "b"], "dimensions": 8})
    );
    gw.post(
        "/v1/embeddings",
        &json!({"model": "gem-embed", "input": "a", "dimensions": 8}),
    )
    .await;
    let up = gw.last_upstream().await;
    assert_eq!(
        up["body"],
        json!({"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
            "outputDimensionality": 8}]})
    );
    assert_eq!(up["headers"]["x-goog-api-key"], crate::harness::EMU_KEY);

    // Token ids: Azure takes them (above); Ollama and Gemini only take text.
    let before = gw.upstream_requests().await.len();
    for (model, provider) in [("ol-embed", "`ol` (ollama)"), ("gem-embed", "`gem` (google)")] {
        for input in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
            let (s, _, e) = gw
                .post("/v1/embeddings", &json!({"model": model, "input": input}))
                .await;
            assert_eq!((s, e["error"]["param"].as_str()), (400, Some("input")), "{e}");
            let message = e["error"]["message"].as_str().unwrap();
            assert!(message.contains(provider) && message.contains("token"), "{e}");
        }
    }
    assert_eq!(
        gw.upstream_requests().await.len(),
        before,
        "nothing went upstream"
    );

    // Too many dimensions: the provider's refusal comes back as a 400.
    let (s, _, e) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "gem-embed", "input": "a", "dimensions": 100000}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
}

const BEDROCK_PROVIDERS: &str = "  - name: aws\n    type: bedrock\n    base_url: http://{emu}\n    region: us-east-1\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: ${EMU_KEY}\n  - name: aws-wrong\n    type: bedrock\n    base_url: http://{emu}\n    region: us-east-1\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: wrong-aws-secret-value\n    max_retries: 0\n";
const BEDROCK_MODELS: &str = r#"  - name: titan-embed
    target: aws/amazon.titan-embed-text-v2:0
    price: { input_per_mtok: 0.02, output_per_mtok: 0 }
  - name: cohere-embed
    target: aws/cohere.embed-english-v3
    price: { input_per_mtok: 0.1, output_per_mtok: 0 }
  - name: claude-bedrock
    target: aws/anthropic.claude-3-5-sonnet-20240620-v1:0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_through_bedrock_titan_and_cohere() {
    let gw = Gateway::start_with(Shape::All, BEDROCK_PROVIDERS, BEDROCK_MODELS).await;
    const TITAN_PATH: &str = "/model/amazon.titan-embed-text-v2%3A0/invoke";
    const COHERE_PATH: &str = "/model/cohere.embed-english-v3/invoke";

    // ---- Titan: one signed InvokeModel call per input, vectors in input order
    let (s, h, v) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "titan-embed", "input": ["alpha", "beta gamma", "delta"], "dimensions": 256}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-llmgw-provider"], "aws");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "amazon.titan-embed-text-v2:0");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 256);
    }
    // Titan's inputTextTokenCount summed (the emulator counts words: 1 + 2 + 1).
    assert_eq!(v["usage"]["prompt_tokens"], 4, "{v}");
    assert_eq!(v["usage"]["total_tokens"], 4, "{v}");
    assert!(!v["usage"]["estimated"].as_bool().unwrap_or(false), "{v}");
    assert!(
        (v["usage"]["cost_usd"].as_f64().unwrap() - 4.0 * 0.02 / 1e6).abs() < 1e-15,
        "{v}"
    );
    let ups = gw.upstream_requests().await;
    let titan: Vec<_> = ups.iter().filter(|u| u["path"] == TITAN_PATH).collect();
    assert_eq!(titan.len(), 3, "{ups:?}");
    let mut texts: Vec<&str> = titan
        .iter()
        .map(|u| u["body"]["inputText"].as_str().unwrap())
        .collect();
    texts.sort_unstable();
    assert_eq!(texts, ["alpha", "beta gamma", "delta"]);
    let up = titan.iter().find(|u| u["body"]["inputText"] == "alpha").unwrap();
    assert_eq!(
        up["body"],
        json!({"inputText": "alpha", "dimensions": 256, "normalize": true})
    );
    let auth = up["headers"]["authorization"].as_str().unwrap_or("");
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{up}"
    );
    assert!(
        !up.to_string().contains(crate::harness::EMU_KEY),
        "the secret is never sent"
    );
    // In order: the first vector is alpha's, whichever call finished first.
    let (_, _, one) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "titan-embed", "input": "delta", "dimensions": 256}),
        )
        .await;
    assert_eq!(one["data"][0]["embedding"], data[2]["embedding"]);

    // base64 carries the same f32 values as floats; the native size is 1024.
    let (s, _, flt) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "titan-embed", "input": "alpha"}),
        )
        .await;
    assert_eq!(s, 200, "{flt}");
    assert_eq!(
        gw.last_upstream().await["body"],
        json!({"inputText": "alpha", "normalize": true})
    );
    let titan_alpha = floats(&flt["data"][0]["embedding"]);
    assert_eq!(titan_alpha.len(), 1024);
    let (s, _, b64) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "titan-embed", "input": "alpha", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(s, 200, "{b64}");
    assert_eq!(
        decode_f32s(b64["data"][0]["embedding"].as_str().unwrap()),
        titan_alpha
    );

    // ---- Cohere: one call for all inputs, usage estimated
    let (s, h, v) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "cohere-embed", "input": ["alpha", "beta"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-llmgw-provider"], "aws");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let cohere_alpha = floats(&v["data"][0]["embedding"]);
    // The emulators share one vector function: the same text, the same vector.
    assert_eq!(cohere_alpha, titan_alpha);
    // About four characters a token: alpha 2, beta 1.
    assert_eq!(v["usage"]["prompt_tokens"], 3, "{v}");
    assert_eq!(v["usage"]["estimated"], true, "{v}");
    assert!(
        (v["usage"]["cost_usd"].as_f64().unwrap() - 3.0 * 0.1 / 1e6).abs() < 1e-15,
        "{v}"
    );
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], COHERE_PATH);
    assert_eq!(
        up["body"],
        json!({"texts": ["alpha", "beta"], "input_type": "search_document", "embedding_types": ["float"]})
    );
    let (s, _, b64) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "cohere-embed", "input": "alpha", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(s, 200, "{b64}");
    assert_eq!(
        decode_f32s(b64["data"][0]["embedding"].as_str().unwrap()),
        titan_alpha
    );

    // ---- what cannot be done is a 400 naming the param, and nothing goes upstream
    let before = gw.upstream_requests().await.len();
    for (body, param, says) in [
        (
            json!({"model": "titan-embed", "input": "a", "dimensions": 300}),
            "dimensions",
            "256, 512 or 1024",
        ),
        (
            json!({"model": "cohere-embed", "input": "a", "dimensions": 256}),
            "dimensions",
            "fixed size",
        ),
        (
            json!({"model": "titan-embed", "input": [1, 2, 3]}),
            "input",
            "token",
        ),
        (
            json!({"model": "cohere-embed", "input": [[1, 2], [3]]}),
            "input",
            "token",
        ),
        (
            json!({"model": "claude-bedrock", "input": "a"}),
            "model",
            "`aws` (bedrock)",
        ),
    ] {
        let (s, _, e) = gw.post("/v1/embeddings", &body).await;
        assert_eq!(
            (s, e["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}: {e}"
        );
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {e}");
    }
    assert_eq!(
        gw.upstream_requests().await.len(),
        before,
        "nothing went upstream"
    );

    // ---- Bedrock's refusals: a too-long input names `input`; a wrong secret is a 502
    // naming the provider, never the secret
    let (s, _, e) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "titan-embed", "input": ["fine", "[emu:prompt_too_long] long"]}),
        )
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("input")), "{e}");
    assert!(e.to_string().contains("context_length_exceeded"), "{e}");
    let (s, _, e) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "@aws-wrong/cohere.embed-english-v3", "input": "a"}),
        )
        .await;
    assert_eq!(s, 502, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("aws-wrong") && text.contains("InvalidSignatureException"),
        "{e}"
    );
    assert!(
        !text.contains("wrong-aws-secret-value") && !text.contains(crate::harness::EMU_KEY),
        "{e}"
    );
}
