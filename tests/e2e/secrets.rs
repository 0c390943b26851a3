//! No secret ever leaves: planted canaries — client keys (valid, rotated,
//! wrong), a provider credential, the config's provider key — never appear in
//! any log line of any service (logging at `debug`, spans included) nor in
//! any error body, and no key hash (64 hex characters) is ever logged.

use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Extra, Gateway, Shape, user};

const PROVIDER_CANARY: &str = "sk-canary-provider-secret-6d1f0c";
const WRONG_KEY_CANARY: &str = "llmgw-canary-wrong-key-93be77aa41";

async fn secrets(shape: Shape) {
    let providers = format!(
        "  - name: badkey\n    type: openai\n    base_url: http://{{emu}}/v1\n    api_key: {PROVIDER_CANARY}\n"
    );
    let models = "  - name: badkey-model\n    target: badkey/gpt-4o-mini\n";
    let gw = Gateway::start_extra(
        shape,
        Extra {
            providers: &providers,
            models,
            log_level: Some("debug,h2=info,hyper=info,hyper_util=info,tower=info,sqlx=info"),
            ..Extra::default()
        },
    )
    .await;
    let mut bodies = Vec::new();
    let post = |key: String, body: Value| {
        let gw = &gw;
        async move {
            let r = gw
                .client
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let chat = |model: &str| json!({"model": model, "messages": user("hello")});

    let ok = post(gw.key.clone(), chat("gpt-4o-mini")).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let ok = post(
        gw.key.clone(),
        json!({"model": "gpt-4o-mini", "stream": true, "messages": user("s")}),
    )
    .await;
    assert_eq!(ok.0, 200);
    // A wrong client key, and a provider that refuses its key.
    let wrong = post(WRONG_KEY_CANARY.to_owned(), chat("gpt-4o-mini")).await;
    assert_eq!(wrong.0, 401);
    bodies.push(wrong.1);
    let refused = post(gw.key.clone(), chat("badkey-model")).await;
    assert_eq!(refused.0, 502, "{}", refused.1);
    bodies.push(refused.1);
    for bad in ["dead-model", "slow-model", "nope"] {
        bodies.push(post(gw.key.clone(), chat(bad)).await.1);
    }
    // Keys made, rotated and revoked through the admin API.
    let admin_key = gw.key_with_role("acme", "admin").await;
    let r = gw
        .client
        .get(gw.url("/admin/v1/orgs"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    let orgs: Value = r.json().await.unwrap();
    let org = orgs["data"][0]["id"].as_str().unwrap().to_owned();
    let r = gw
        .client
        .post(gw.url(&format!("/admin/v1/orgs/{org}/keys")))
        .bearer_auth(&admin_key)
        .json(&json!({"name": "canary"}))
        .send()
        .await
        .unwrap();
    let made: Value = r.json().await.unwrap();
    let made_key = made["key"].as_str().unwrap().to_owned();
    let made_id = made["id"].as_str().unwrap().to_owned();
    let r = gw
        .client
        .post(gw.url(&format!("/admin/v1/keys/{made_id}/rotate")))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    let rotated: Value = r.json().await.unwrap();
    let rotated_key = rotated["key"].as_str().unwrap().to_owned();
    let stale = post(made_key.clone(), chat("gpt-4o-mini")).await;
    bodies.push(stale.1);
    let r = gw
        .client
        .post(gw.url("/admin/v1/orgs"))
        .bearer_auth(&gw.key)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());

    // Let metering and the logs catch up, then scan.
    gw.usage_until("acme", |u| u["requests"].as_u64().unwrap_or(0) >= 5)
        .await;
    let logs = gw.logs();
    assert!(
        logs.len() > 1000,
        "debug logs were captured: {} bytes",
        logs.len()
    );
    let canaries = [
        ("the client key", gw.key.as_str()),
        ("a wrong client key", WRONG_KEY_CANARY),
        ("a provider key", PROVIDER_CANARY),
        ("the config's provider key", EMU_KEY),
        ("an admin key", admin_key.as_str()),
        ("a created key", made_key.as_str()),
        ("a rotated key", rotated_key.as_str()),
    ];
    for (what, canary) in canaries {
        // The key's body: a prefix alone would be no leak.
        let tail = &canary[canary.len() - 16..];
        assert!(!logs.contains(tail), "{what} is in the logs");
        for body in &bodies {
            assert!(!body.contains(tail), "{what} is in an error body: {body}");
        }
    }
    let hex64 = logs
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|run| run.len() >= 64);
    assert!(
        hex64.is_none(),
        "a 64-hex-digit value (a key hash?) is in the logs: {hex64:?}"
    );
}

#[tokio::test]
async fn no_secret_in_logs_or_errors_in_one_process() {
    secrets(Shape::All).await;
}

#[tokio::test]
async fn no_secret_in_logs_or_errors_across_five_processes() {
    secrets(Shape::Split).await;
}
