//! BYOK end to end, in one process and split: an org admin stores the org's
//! own provider key (its upstream an operator-allowed URL: a second
//! emulator that accepts only that key), the org's requests use it by
//! `@name/model` and by `type/model`, another org can neither see nor reach
//! it, no answer ever shows the secret, and usage is metered with `byok`.

use std::time::{Duration, Instant};

use llmgw_emulators::Options;
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::process::Command;

use crate::harness::{EMU_KEY, Extra, Gateway, Shape, bin, create_key, user};

/// The org's own provider key: the second emulator accepts only this one.
const OWN_KEY: &str = "sk-acme-own-provider-key-do-not-leak";

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

async fn chat(gw: &Gateway, key: &str, model: &str) -> (u16, String) {
    let body = json!({"model": model, "messages": user("hi")});
    gw.call(key, "POST", "/v1/chat/completions", Some(body)).await
}

/// Polls a chat until it answers `want` (the edge trusts a principal for up
/// to a second); panics after 5 s.
async fn chat_until(gw: &Gateway, key: &str, model: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, text) = chat(gw, key, model).await;
        if status == want {
            return text;
        }
        assert!(Instant::now() < deadline, "{model}: still {status}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn recorded(emu: &llmgw_emulators::Emulator, gw: &Gateway) -> Vec<Value> {
    let url = format!("http://{}/_emu/requests", emu.addr);
    let v: Value = gw.client.get(url).send().await.unwrap().json().await.unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// `(org_id, provider, byok)` of the stored usage events, polled until
/// `n` are there.
async fn usage_rows(gw: &Gateway, n: usize) -> Vec<(String, String, bool)> {
    let path = gw.data_dir().join("metering.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("metering.db");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = sqlx::query("SELECT org_id, provider, byok FROM usage_events ORDER BY started_at")
            .fetch_all(&pool)
            .await
            .unwrap();
        let rows: Vec<(String, String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn byok(shape: Shape) {
    let own = llmgw_emulators::spawn(Options {
        api_key: Some(OWN_KEY.into()),
        record: true,
    })
    .await
    .expect("emulator");
    let top = format!("byok:\n  allowed_base_urls: [\"{}\"]\n", own.base_url());
    let gw = Gateway::start_extra(
        shape,
        Extra {
            top: &top,
            ..Extra::default()
        },
    )
    .await;
    let acme_admin = gw.key_with_role("acme", "admin").await;
    let beta = create_key(&gw.config, "beta", None).await;
    let beta_admin = gw.key_with_role("beta", "admin").await;
    let (_, orgs) = gw.call(&acme_admin, "GET", "/admin/v1/orgs", None).await;
    let acme_id = json_of(&orgs)["data"][0]["id"].as_str().unwrap().to_owned();
    let creds = format!("/admin/v1/orgs/{acme_id}/credentials");

    // No caller-controlled upstream URL; nothing echoes the secret.
    let (status, text) = gw.call(&acme_admin,
        "POST",
        &creds,
        Some(json!({"name": "evil", "type": "openai", "api_key": OWN_KEY, "base_url": "http://169.254.169.254/v1"})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(json_of(&text)["error"]["param"], "base_url");
    assert!(!text.contains(OWN_KEY));

    // A member key cannot store one.
    let body = json!({"name": "mycred", "type": "openai", "api_key": OWN_KEY, "base_url": own.base_url()});
    let (status, _) = gw.call(&gw.key, "POST", &creds, Some(body.clone())).await;
    assert_eq!(status, 403);
    let (status, text) = gw.call(&acme_admin, "POST", &creds, Some(body)).await;
    assert_eq!(status, 201, "{text}");
    assert!(!text.contains(OWN_KEY), "{text}");
    let created = json_of(&text);
    assert_eq!(created["name"], "mycred");
    let cred_id = created["id"].as_str().unwrap().to_owned();
    let (status, text) = gw.call(&acme_admin, "GET", &creds, None).await;
    assert_eq!(status, 200);
    assert!(!text.contains(OWN_KEY) && !text.contains("api_key"), "{text}");
    assert_eq!(json_of(&text)["data"].as_array().unwrap().len(), 1);

    // Another org sees none of it.
    for (method, path) in [
        ("GET", creds.clone()),
        ("DELETE", format!("/admin/v1/credentials/{cred_id}")),
    ] {
        let (status, text) = gw.call(&beta_admin, method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {text}");
    }

    // acme's requests: `@mycred/model` and `openai/model` go to acme's own
    // account with acme's key; the platform's provider sees none of them.
    let platform_before = gw.upstream_requests().await.len();
    let text = chat_until(&gw, &gw.key, "@mycred/gpt-4o-mini", 200).await;
    assert!(!text.contains(OWN_KEY));
    let (status, text) = chat(&gw, &gw.key, "openai/gpt-4o-mini").await;
    assert_eq!(status, 200, "{text}");
    let events = gw
        .stream(&json!({"model": "@mycred/gpt-4o-mini", "messages": user("hi"), "stream": true}))
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let seen = recorded(&own, &gw).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for up in &seen {
        assert_eq!(up["headers"]["authorization"], format!("Bearer {OWN_KEY}"));
        assert_eq!(up["body"]["model"], "gpt-4o-mini");
    }
    assert_eq!(gw.upstream_requests().await.len(), platform_before);
    // The platform model by name still goes to the platform's provider.
    let (status, _) = chat(&gw, &gw.key, "gpt-4o-mini").await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.last_upstream().await["headers"]["authorization"],
        format!("Bearer {EMU_KEY}")
    );

    // beta: acme's slug names nothing; `openai/…` is the platform's.
    let (status, text) = chat(&gw, &beta, "@mycred/gpt-4o-mini").await;
    assert_eq!(status, 404, "{text}");
    let (status, _) = chat(&gw, &beta, "openai/gpt-4o-mini").await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.last_upstream().await["headers"]["authorization"],
        format!("Bearer {EMU_KEY}")
    );
    assert_eq!(recorded(&own, &gw).await.len(), 3);

    // Metered, marked as billed to acme's own account.
    let rows = usage_rows(&gw, 5).await;
    let byok: Vec<_> = rows.iter().filter(|r| r.2).collect();
    assert_eq!(byok.len(), 3, "{rows:?}");
    assert!(byok.iter().all(|r| r.0 == acme_id && r.1 == "mycred"), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| !r.2).count(), 2, "{rows:?}");
    // The usage API counts them apart.
    let acme_requests = rows.iter().filter(|r| r.0 == acme_id).count() as u64;
    let (status, text) = gw.call(&acme_admin, "GET", "/v1/usage", None).await;
    assert_eq!(status, 200, "{text}");
    let totals = &json_of(&text)["totals"];
    assert_eq!(
        (totals["requests"].as_u64(), totals["byok_requests"].as_u64()),
        (Some(acme_requests), Some(3)),
        "{text}"
    );
    assert!(acme_requests > 3, "{rows:?}");
    let (all, mine) = (
        totals["cost_usd"].as_f64().unwrap(),
        totals["byok_cost_usd"].as_f64().unwrap(),
    );
    assert!(mine > 0.0 && mine < all, "{text}");

    // Deleted: acme's requests stop reaching it once the edge's principal
    // cache (1 s) has expired.
    let (status, text) = gw
        .call(
            &acme_admin,
            "DELETE",
            &format!("/admin/v1/credentials/{cred_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    chat_until(&gw, &gw.key, "@mycred/gpt-4o-mini", 404).await;
    let own_seen = recorded(&own, &gw).await.len();
    let (status, _) = chat(&gw, &gw.key, "openai/gpt-4o-mini").await;
    assert_eq!(status, 200);
    assert_eq!(recorded(&own, &gw).await.len(), own_seen);
    assert_eq!(
        gw.last_upstream().await["headers"]["authorization"],
        format!("Bearer {EMU_KEY}")
    );

    // Rotation: the CLI re-encrypts under a new master key, given the old
    // one as the previous key; the old key alone then opens nothing.
    let (status, text) = gw
        .call(
            &acme_admin,
            "POST",
            &creds,
            Some(json!({"name": "second", "type": "anthropic", "api_key": OWN_KEY})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let old_key = std::fs::read_to_string(gw.data_dir().join("master.key")).unwrap();
    let new_key = "c".repeat(64);
    let rotate = |current: &str, previous: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["credentials", "rotate", "--config"])
            .arg(&gw.config)
            .env("EMU_KEY", EMU_KEY)
            .env("LLMGW_MASTER_KEY", current)
            .env_remove("LLMGW_MASTER_KEY_PREVIOUS");
        if let Some(p) = previous {
            cmd.env("LLMGW_MASTER_KEY_PREVIOUS", p);
        }
        async move { cmd.output().await.expect("llmgw credentials rotate") }
    };
    let out = rotate(&new_key, Some(old_key.trim())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("re-encrypted 1 provider credentials"), "{stdout}");
    let out = rotate(old_key.trim(), None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("LLMGW_MASTER_KEY_PREVIOUS") && !stderr.contains(OWN_KEY),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byok_one_process() {
    byok(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byok_split() {
    byok(Shape::Split).await;
}
