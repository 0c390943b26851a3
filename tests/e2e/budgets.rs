//! Budgets through the public API: 200 concurrent requests against a budget
//! never admit more spend than it holds, refused ones get 402, the ledger
//! equals what the responses cost, and a cancelled stream settles what it
//! spent — one process and split.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::harness::{Extra, Gateway, Shape, user};

/// A new key with `policy`; (key, key id).
pub async fn key_with_policy(gw: &Gateway, policy: Value) -> (String, String) {
    let out = gw.cli(&["keys", "create", "--org", "acme"]).await;
    let mut lines = out.lines().rev();
    let key = lines.next().unwrap().trim().to_owned();
    let id = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_owned();
    gw.cli(&[
        "admin",
        "PUT",
        &format!("/admin/v1/keys/{id}/policy"),
        "--body",
        &policy.to_string(),
    ])
    .await;
    (key, id)
}

/// The key's total budget: (spent, reserved).
async fn ledger(gw: &Gateway, id: &str) -> (f64, f64) {
    let out = gw
        .cli(&["admin", "GET", &format!("/admin/v1/keys/{id}/budgets")])
        .await;
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let b = &v["data"][0];
    (
        b["spent_usd"].as_f64().unwrap(),
        b["reserved_usd"].as_f64().unwrap(),
    )
}

/// Polls the ledger until nothing is reserved (settlement is asynchronous).
async fn settled(gw: &Gateway, id: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (spent, reserved) = ledger(gw, id).await;
        if reserved.abs() < 1e-15 {
            return spent;
        }
        assert!(Instant::now() < deadline, "still reserved: {reserved}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn budgets(shape: Shape) {
    let gw = Gateway::start_extra(
        shape,
        Extra {
            max_in_flight: Some(512),
            ..Extra::default()
        },
    )
    .await;
    let budget = 0.0001;
    let (key, id) = key_with_policy(
        &gw,
        json!({"budgets": [{"period": "total", "limit_usd": budget}]}),
    )
    .await;

    // ---- 200 at once
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 4, "messages": user("hi")});
    let calls = (0..200).map(|_| {
        let (gw, key, body) = (&gw, &key, &body);
        async move {
            let r = gw
                .client
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(body)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut cost = 0.0;
    let (mut ok, mut refused) = (0, 0);
    for (status, body) in &results {
        match status {
            200 => {
                ok += 1;
                cost += body["usage"]["cost_usd"].as_f64().unwrap();
            }
            402 => {
                refused += 1;
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("key total budget"),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 5 && refused >= 100, "admitted {ok}, refused {refused}");
    let spent = settled(&gw, &id).await;
    assert!(spent <= budget + 1e-12, "spent {spent} of {budget}");
    assert!((spent - cost).abs() < 1e-12, "ledger {spent} vs responses {cost}");

    // ---- a stream the client drops settles what was spent
    let (key, id) = key_with_policy(&gw, json!({"budgets": [{"period": "total", "limit_usd": 1.0}]})).await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "stream": true,
            "messages": user("[emu:words=200] [emu:chunk_delay_ms=20] go")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut body = r.bytes_stream();
    body.next().await.expect("a first chunk").unwrap();
    drop(body);
    let spent = settled(&gw, &id).await;
    assert!(spent > 0.0, "the cancelled stream's spend is settled: {spent}");
    assert!(spent < 1e-4, "only what was streamed: {spent}");

    // ---- a daily budget that one request's worst case exceeds: 402
    let (key, _) = key_with_policy(
        &gw,
        json!({"budgets": [{"period": "daily", "limit_usd": 0.000_001}]}),
    )
    .await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 100, "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 402);
}

#[tokio::test]
async fn budgets_in_one_process() {
    budgets(Shape::All).await;
}

#[tokio::test]
async fn budgets_across_five_processes() {
    budgets(Shape::Split).await;
}
