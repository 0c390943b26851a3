//! Routing and resilience through the public API: pools and their
//! strategies, fallback after each kind of failure (never after the first
//! streamed byte), outlier ejection and recovery, context-length fallback,
//! routing configs with A/B, sticky and targeted variants, and the routing
//! metadata every response explains itself with. Each "provider" is a fault
//! profile of the one emulator (`/_f/{profile}/v1`), steered per test.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::{Gateway, Shape, bin, chunks, user};

/// Providers, one per fault profile.
const PROFILES: [&str; 23] = [
    "p500", "p429", "pslow", "ok", "s1", "s2", "flaky", "steady", "w1", "w2", "l1", "l2", "l3", "c1", "c2",
    "b1", "b2", "small", "mid", "big", "va", "vb", "txt",
];

fn providers() -> String {
    PROFILES
        .iter()
        .map(|p| {
            let timeout = if *p == "pslow" { "\n    timeout: 200ms" } else { "" };
            format!(
                "  - name: {p}\n    type: openai\n    base_url: http://{{emu}}/_f/{p}/v1\n    api_key: ${{EMU_KEY}}{timeout}\n"
            )
        })
        .collect()
}

const MODELS: &str = r#"  - name: chain
    strategy: priority
    targets:
      - { target: p500/gpt-4o-mini }
      - { target: p429/gpt-4o-mini }
      - { target: pslow/gpt-4o-mini }
      - { target: dead/gpt-4o-mini }
      - { target: ok/gpt-4o-mini }
  - name: nofb
    strategy: priority
    targets: [{ target: s1/gpt-4o-mini }, { target: s2/gpt-4o-mini }]
  - name: guarded
    strategy: priority
    targets: [{ target: flaky/gpt-4o-mini }, { target: steady/gpt-4o-mini }]
  - name: wpool
    targets: [{ target: w1/gpt-4o-mini, weight: 1 }, { target: w2/gpt-4o-mini, weight: 3 }]
  - name: lpool
    strategy: latency
    targets: [{ target: l1/gpt-4o-mini }, { target: l2/gpt-4o-mini }, { target: l3/gpt-4o-mini }]
  - name: cpool
    strategy: cheapest
    targets:
      - { target: c1/gpt-4o-mini, price: { input_per_mtok: 5, output_per_mtok: 5 } }
      - { target: c2/gpt-4o-mini, price: { input_per_mtok: 1, output_per_mtok: 1 } }
  - name: bpool
    strategy: least-busy
    targets: [{ target: b1/gpt-4o-mini }, { target: b2/gpt-4o-mini }]
  - name: ctx
    strategy: priority
    targets:
      - { target: small/gpt-4o-mini, context_window: 1000 }
      - { target: mid/gpt-4o-mini, context_window: 1000 }
      - { target: big/gpt-4o-mini, context_window: 200000 }
  - name: textonly
    target: txt/gpt-4o-mini
    capabilities: [streaming]
"#;

const ROUTING: &str = r#"routing:
  seed: 11
  latency_explore: 0.05
  ejection: { consecutive_failures: 3, base_time: 1s, max_time: 5s }
  configs:
    - name: ab
      variants:
        - { name: a, weight: 70, model: "@va/gpt-4o-mini" }
        - name: b
          weight: 30
          model: "@vb/gpt-4o-mini"
          params: { temperature: 0.3 }
          system: "You are variant B."
    - name: sticky
      sticky: user
      variants:
        - { name: x, model: "@va/gpt-4o-mini" }
        - { name: y, model: "@vb/gpt-4o-mini" }
    - name: beta
      variants:
        - { name: gold, when: { headers: { x-tier: gold } }, model: "@vb/gpt-4o-mini" }
        - { name: everyone, model: "@va/gpt-4o-mini" }
"#;

async fn start(shape: Shape) -> Gateway {
    let gw = Gateway::start_full(shape, &providers(), MODELS, ROUTING).await;
    gw.fault("p500", json!({"status": 500})).await;
    gw.fault("p429", json!({"status": 429})).await;
    gw.fault("pslow", json!({"delay_ms": 1000})).await;
    gw.fault("flaky", json!({"status": 500})).await;
    gw.fault("l1", json!({"delay_ms": 30})).await;
    gw.fault("l3", json!({"delay_ms": 15})).await;
    gw.fault("b1", json!({"delay_ms": 150})).await;
    gw.fault("small", json!({"context_bytes": 400})).await;
    gw.fault("mid", json!({"context_bytes": 400})).await;
    gw
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user(text)})
}

/// POSTs a chat request with extra headers; status, headers, JSON.
async fn post(
    gw: &Gateway,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, h, json)
}

fn attempts(meta: &Value) -> Vec<(String, String)> {
    meta["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap_or_default().to_owned(),
                a["error_type"].as_str().unwrap_or("ok").to_owned(),
            )
        })
        .collect()
}

async fn used_provider(gw: &Gateway, model: &str) -> String {
    let (status, _, body) = gw.post("/v1/chat/completions", &chat(model, "hi")).await;
    assert_eq!(status, 200, "{body}");
    body["metadata"]["used_provider"].as_str().unwrap().to_owned()
}

async fn routing(shape: Shape) {
    let gw = start(shape).await;

    // ---- fallback after 500, 429, a timeout and a refused connection, in
    // one request; explained in the body and the headers.
    let (status, h, body) = post(&gw, &chat("chain", "hello"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let meta = &body["metadata"];
    let want = [
        ("p500", "upstream_error"),
        ("p429", "upstream_rate_limited"),
        ("pslow", "upstream_timeout"),
        ("dead", "upstream_error"),
        ("ok", "ok"),
    ];
    let got = attempts(meta);
    assert_eq!(
        got.iter()
            .map(|(p, e)| (p.as_str(), e.as_str()))
            .collect::<Vec<_>>(),
        want,
        "{meta}"
    );
    assert_eq!(meta["attempts"][0]["http_status"], 500);
    assert_eq!(meta["attempts"][1]["http_status"], 429);
    assert_eq!(
        (meta["requested_model"].as_str(), meta["used_provider"].as_str()),
        (Some("chain"), Some("ok"))
    );
    assert_eq!(meta["strategy"], "priority");
    assert_eq!(h["x-llmgw-attempts"], "5");
    assert_eq!(h["x-llmgw-fallback"], "true");
    assert_eq!(h["x-llmgw-provider"], "ok");
    assert!(
        h["x-llmgw-attempt-trail"]
            .to_str()
            .unwrap()
            .starts_with("p500/gpt-4o-mini=upstream_error;")
    );
    // The same through a stream: the final chunk carries every attempt.
    let events = gw
        .stream(&json!({"model": "chain", "stream": true, "messages": user("hello")}))
        .await;
    let last = chunks(&events).pop().expect("a chunk");
    assert_eq!(attempts(&last["metadata"]).len(), 5, "{last}");
    assert_eq!(last["metadata"]["used_provider"], "ok");

    // ---- never a fallback once a byte reached the client.
    let events = gw
        .stream(&json!({"model": "nofb", "stream": true,
            "messages": user("[emu:words=40] [emu:abort_mid_stream] go")}))
        .await;
    assert!(events.len() > 1, "some chunks first: {events:?}");
    assert!(events.last().unwrap().contains("\"error\""), "{events:?}");
    assert_ne!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(gw.fault_requests("s1").await, 1);
    assert_eq!(
        gw.fault_requests("s2").await,
        0,
        "no second provider after the first byte"
    );

    // ---- outlier ejection after 3 consecutive failures, then recovery.
    for _ in 0..3 {
        assert_eq!(used_provider(&gw, "guarded").await, "steady");
    }
    assert_eq!(gw.fault_requests("flaky").await, 3);
    for _ in 0..5 {
        let (_, h, body) = post(&gw, &chat("guarded", "hi"), &[]).await;
        assert_eq!(body["metadata"]["used_provider"], "steady");
        if shape == Shape::All {
            assert_eq!(h["x-llmgw-attempts"], "1", "ejected: not tried first");
        }
    }
    // Split, reports reach the router asynchronously: at most one more try.
    let tried = gw.fault_requests("flaky").await;
    assert!(tried <= 4, "ejected target kept being tried: {tried}");
    gw.fault("flaky", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        used_provider(&gw, "guarded").await,
        "flaky",
        "back after the ejection time"
    );

    // ---- weighted: 1:3.
    for _ in 0..200 {
        used_provider(&gw, "wpool").await;
    }
    let w2 = gw.fault_requests("w2").await as f64 / 200.0;
    assert!((w2 - 0.75).abs() < 0.1, "w2 share {w2}");

    // ---- latency: the fastest (l2, no delay) takes nearly everything.
    let mut fastest = 0;
    for _ in 0..40 {
        if used_provider(&gw, "lpool").await == "l2" {
            fastest += 1;
        }
    }
    assert!(fastest >= 30, "l2 served {fastest} of 40");

    // ---- cheapest: c2 alone, then c1 while c2 fails (each still answered).
    for _ in 0..5 {
        assert_eq!(used_provider(&gw, "cpool").await, "c2");
    }
    gw.fault("c2", json!({"status": 503})).await;
    for _ in 0..5 {
        assert_eq!(used_provider(&gw, "cpool").await, "c1");
    }
    assert!(gw.fault_requests("c2").await <= 4, "ejected after 3 failures");

    // ---- least-busy: the slow target holds its requests, so the fast one
    // takes most of a concurrent load.
    let mut workers = Vec::new();
    for _ in 0..3 {
        let gw = &gw;
        workers.push(async move {
            for _ in 0..12 {
                used_provider(gw, "bpool").await;
            }
        });
    }
    futures_util::future::join_all(workers).await;
    let fast = gw.fault_requests("b2").await as f64 / 36.0;
    assert!(fast > 0.6, "b2 share {fast}");

    // ---- context length: the next target with a larger window.
    let long = "word ".repeat(100);
    let (status, _, body) = post(&gw, &chat("ctx", &long), &[]).await;
    assert_eq!(status, 200, "{body}");
    let got = attempts(&body["metadata"]);
    assert_eq!(
        got.iter()
            .map(|(p, e)| (p.as_str(), e.as_str()))
            .collect::<Vec<_>>(),
        [("small", "context_length_exceeded"), ("big", "ok")]
    );
    assert_eq!(gw.fault_requests("mid").await, 0, "same window: skipped");
    assert_eq!(used_provider(&gw, "ctx").await, "small", "short prompts stay");

    // ---- capabilities: a target that cannot take tools is refused by name.
    let tools = json!({"model": "textonly", "messages": user("hi"), "tools": [{"type": "function",
        "function": {"name": "f", "parameters": {"type": "object"}}}]});
    let (status, _, body) = post(&gw, &tools, &[]).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("tools")),
        "{body}"
    );

    configs(&gw).await;
}

async fn configs(gw: &Gateway) {
    // ---- A/B by weight, with the variant's params and system prompt.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let (status, h, body) = post(gw, &chat("gpt-4o-mini", "hi"), &[("x-llmgw-config", "ab")]).await;
        assert_eq!(status, 200, "{body}");
        let meta = &body["metadata"];
        let variant = meta["variant"].as_str().unwrap().to_owned();
        assert_eq!(
            (meta["config"].as_str(), meta["config_version"].as_u64()),
            (Some("ab"), Some(1))
        );
        assert_eq!(h["x-llmgw-variant"].to_str().unwrap(), variant);
        assert_eq!(meta["requested_model"], "gpt-4o-mini");
        let want_provider = if variant == "a" { "va" } else { "vb" };
        assert_eq!(meta["used_provider"], want_provider);
        if variant == "b" && i % 10 == 0 {
            let sent = &gw.last_upstream().await["body"];
            assert_eq!(sent["temperature"], 0.3, "{sent}");
            assert_eq!(
                sent["messages"][0],
                json!({"role": "system", "content": "You are variant B."})
            );
        }
        *seen.entry(variant).or_default() += 1;
    }
    let b = seen.get("b").copied().unwrap_or(0) as f64 / 300.0;
    assert!((b - 0.3).abs() < 0.08, "variant b share {b}: {seen:?}");

    // ---- sticky per user
    for u in ["u1", "u2", "u3", "u4", "u5"] {
        let mut variants = Vec::new();
        for _ in 0..5 {
            let body = json!({"model": "gpt-4o-mini", "user": u, "messages": user("hi")});
            let (_, _, r) = post(gw, &body, &[("x-llmgw-config", "sticky")]).await;
            variants.push(r["metadata"]["variant"].as_str().unwrap().to_owned());
        }
        assert!(variants.iter().all(|v| *v == variants[0]), "{u}: {variants:?}");
    }

    // ---- targeting on a header
    let (_, _, r) = post(
        gw,
        &chat("gpt-4o-mini", "hi"),
        &[("x-llmgw-config", "beta"), ("x-tier", "gold")],
    )
    .await;
    assert_eq!(r["metadata"]["variant"], "gold");
    let (_, _, r) = post(gw, &chat("gpt-4o-mini", "hi"), &[("x-llmgw-config", "beta")]).await;
    assert_eq!(r["metadata"]["variant"], "everyone");

    // ---- unknown config and version: 400 naming the header
    for bad in ["nope", "ab@7"] {
        let (status, _, r) = post(gw, &chat("gpt-4o-mini", "hi"), &[("x-llmgw-config", bad)]).await;
        assert_eq!(
            (status, r["error"]["param"].as_str()),
            (400, Some("x-llmgw-config")),
            "{r}"
        );
    }

    // ---- a key's default config applies when the request names none
    let out = Command::new(bin())
        .args([
            "keys",
            "create",
            "--org",
            "acme",
            "--routing-config",
            "beta",
            "--config",
        ])
        .arg(&gw.config)
        .env("EMU_KEY", crate::harness::EMU_KEY)
        .output()
        .await
        .expect("keys create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let r: Value = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            r["metadata"]["config"].as_str(),
            r["metadata"]["variant"].as_str()
        ),
        (Some("beta"), Some("everyone")),
        "{r}"
    );

    // ---- the same over public gRPC: config and targeting headers in metadata
    let mut client = llmgw_proto::gateway_client::GatewayClient::connect(format!("http://{}", gw.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(llmgw_proto::ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![llmgw_proto::Message {
            role: llmgw_proto::Role::User as i32,
            content: Some(llmgw_proto::Content {
                value: Some(llmgw_proto::content::Value::Text("hi".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let md = req.metadata_mut();
    md.insert("authorization", format!("Bearer {}", gw.key).parse().unwrap());
    md.insert("x-llmgw-config", "beta".parse().unwrap());
    md.insert("x-tier", "gold".parse().unwrap());
    let meta = client.chat(req).await.unwrap().into_inner().metadata.unwrap();
    assert_eq!(
        (meta.config.as_deref(), meta.variant.as_deref()),
        (Some("beta"), Some("gold"))
    );
    assert_eq!(meta.used_provider, "vb");

    // ---- /v1/models lists the pools
    let (status, text) = gw.get_text("/v1/models").await;
    assert_eq!(status, 200);
    for pool in ["chain", "wpool", "lpool", "cpool", "bpool", "ctx"] {
        assert!(text.contains(&format!("\"{pool}\"")), "{pool} missing");
    }
}

/// With no retry budget, a failure is returned as it is: no fallback.
#[tokio::test]
async fn an_exhausted_retry_budget_stops_fallbacks() {
    let routing = "routing:\n  retry_budget: { ratio: 0, min_concurrency: 0 }\n";
    let gw = Gateway::start_full(Shape::All, &providers(), MODELS, routing).await;
    gw.fault("p500", json!({"status": 500})).await;
    let (status, _, body) = post(&gw, &chat("chain", "hello"), &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(gw.fault_requests("p500").await, 1);
    assert_eq!(gw.fault_requests("p429").await, 0, "no budget, no second try");
}

#[tokio::test]
async fn routing_in_one_process() {
    routing(Shape::All).await;
}

#[tokio::test]
async fn routing_across_five_processes() {
    routing(Shape::Split).await;
}
