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
