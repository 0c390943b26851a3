//! The admin API through REST (and the CLI): orgs, projects, keys (shown
//! once, listed without secrets, rotated, revoked — in effect within a second),
//! policies enforced on the model APIs, and isolation: an org admin sees and
//! touches nothing of another org, told only "not found".

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Gateway, Shape, user};

/// A REST call with `key`; status and JSON.
async fn call(gw: &Gateway, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = gw.call(key, method, path, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

pub(crate) fn chat(model: &str) -> Value {
    json!({"model": model, "messages": user("hi")})
}

/// A chat completion of `model` with `key`; status and JSON.
async fn chat_as(gw: &Gateway, key: &str, model: &str) -> (u16, Value) {
    call(gw, key, "POST", "/v1/chat/completions", Some(chat(model))).await
}

/// Polls `f` until it returns `want` (the edge trusts a key for up to a
/// second); panics after 3 s.
async fn eventually<F, Fut>(what: &str, want: u16, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = f().await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin(shape: Shape) {
    let gw = Gateway::start(shape).await;
    let platform = gw
        .cli(&["keys", "create", "--org", "platform", "--role", "platform_admin"])
        .await;
    let platform = platform.lines().last().unwrap().trim().to_owned();

    // ---- a member key is not an admin key
    let (status, body) = call(&gw, &gw.key, "GET", "/admin/v1/orgs", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "permission_error");

    // ---- the platform admin creates an org and its admin key (shown once)
    let (status, org) = call(
        &gw,
        &platform,
        "POST",
        "/admin/v1/orgs",
        Some(json!({"name": "beta"})),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    let beta = org["id"].as_str().unwrap().to_owned();
    let (status, dup) = call(
        &gw,
        &platform,
        "POST",
        "/admin/v1/orgs",
        Some(json!({"name": "beta"})),
    )
    .await;
    assert_eq!(
        (status, dup["error"]["param"].as_str()),
        (400, Some("name")),
        "{dup}"
    );
    let (status, k) = call(
        &gw,
        &platform,
        "POST",
        &format!("/admin/v1/orgs/{beta}/keys"),
        Some(json!({"role": "admin", "name": "beta-admin"})),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    let beta_admin = k["key"].as_str().unwrap().to_owned();
    let (_, orgs) = call(&gw, &platform, "GET", "/admin/v1/orgs", None).await;
    let names: Vec<&str> = orgs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"acme") && names.contains(&"beta"), "{names:?}");
    let acme = orgs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "acme")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // ---- the org admin: a project, a member key with metadata and expiry
    let (status, proj) = call(
        &gw,
        &beta_admin,
        "POST",
        &format!("/admin/v1/orgs/{beta}/projects"),
        Some(json!({"name": "search"})),
    )
    .await;
    assert_eq!(status, 201, "{proj}");
    let project = proj["id"].as_str().unwrap();
    let in_a_day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let (status, k) = call(
        &gw,
        &beta_admin,
        "POST",
        &format!("/admin/v1/orgs/{beta}/keys"),
        Some(json!({"project_id": project, "name": "svc", "metadata": {"team": "search"}, "expires_at": in_a_day})),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    let member = k["key"].as_str().unwrap().to_owned();
    let member_id = k["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (k["role"].as_str(), k["metadata"]["team"].as_str()),
        (Some("member"), Some("search"))
    );
    assert_eq!(k["expires_at"], in_a_day);
    let (status, r) = chat_as(&gw, &member, "gpt-4o-mini").await;
    assert_eq!(status, 200, "{r}");

    // ---- listing never shows a secret or a hash
    let (_, list) = call(
        &gw,
        &beta_admin,
        "GET",
        &format!("/admin/v1/orgs/{beta}/keys"),
        None,
    )
    .await;
    let text = list.to_string();
    assert!(
        !text.contains(&member) && !text.contains(&beta_admin),
        "a secret in a listing"
    );
    assert!(!text.contains("key_hash") && !text.contains("\"key\""), "{text}");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    // ---- isolation: another org's things are "not found"; its own list is its own
    let (_, mine) = call(&gw, &beta_admin, "GET", "/admin/v1/orgs", None).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    let acme_key_id = {
        let (_, l) = call(
            &gw,
            &platform,
            "GET",
            &format!("/admin/v1/orgs/{acme}/keys"),
            None,
        )
        .await;
        l["data"][0]["id"].as_str().unwrap().to_owned()
    };
    for (method, path, body) in [
        ("GET", format!("/admin/v1/orgs/{acme}"), None),
        ("GET", format!("/admin/v1/orgs/{acme}/keys"), None),
        ("POST", format!("/admin/v1/orgs/{acme}/keys"), Some(json!({}))),
        ("GET", format!("/admin/v1/orgs/{acme}/projects"), None),
        (
            "POST",
            format!("/admin/v1/orgs/{acme}/projects"),
            Some(json!({"name": "x"})),
        ),
        ("GET", format!("/admin/v1/keys/{acme_key_id}"), None),
        (
            "PATCH",
            format!("/admin/v1/keys/{acme_key_id}"),
            Some(json!({"name": "x"})),
        ),
        ("POST", format!("/admin/v1/keys/{acme_key_id}/revoke"), None),
        ("POST", format!("/admin/v1/keys/{acme_key_id}/rotate"), None),
        ("GET", format!("/admin/v1/keys/{acme_key_id}/policy"), None),
        (
            "PUT",
            format!("/admin/v1/keys/{acme_key_id}/policy"),
            Some(json!({})),
        ),
        (
            "PUT",
            format!("/admin/v1/orgs/{acme}/policy"),
            Some(json!({"denied_models": ["*"]})),
        ),
        (
            "PATCH",
            format!("/admin/v1/orgs/{acme}/policy"),
            Some(json!({"rpm": 1})),
        ),
        ("GET", "/admin/v1/orgs/org_doesnotexist".to_owned(), None),
    ] {
        let (status, body) = call(&gw, &beta_admin, method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(
            !body.to_string().contains(&acme),
            "{method} {path} leaks the id: {body}"
        );
    }
    let (status, body) = call(
        &gw,
        &beta_admin,
        "POST",
        "/admin/v1/orgs",
        Some(json!({"name": "gamma"})),
    )
    .await;
    assert_eq!(status, 403, "an org admin creates no orgs: {body}");
    let (status, _) = call(
        &gw,
        &beta_admin,
        "POST",
        &format!("/admin/v1/orgs/{beta}/keys"),
        Some(json!({"role": "platform_admin"})),
    )
    .await;
    assert_eq!(status, 403, "nor platform admin keys");
    // acme's own key still works: nothing above touched it
    let (status, _) = chat_as(&gw, &gw.key, "gpt-4o-mini").await;
    assert_eq!(status, 200);

    // ---- policies, enforced at the edge and the router
    let (status, p) = call(
        &gw,
        &beta_admin,
        "PUT",
        &format!("/admin/v1/keys/{member_id}/policy"),
        Some(json!({"allowed_models": ["gpt-4o-mini", "slow-*"], "max_tokens": 50, "allowed_endpoints": ["chat", "models"]})),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["max_tokens"], 50);
    let (status, p) = call(
        &gw,
        &beta_admin,
        "PUT",
        &format!("/admin/v1/orgs/{beta}/policy"),
        Some(json!({"denied_providers": ["slow"]})),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    // gpt-4o (a built-in name, served by the openai-type providers) is not allowed.
    eventually("key policy", 403, || async {
        chat_as(&gw, &member, "gpt-4o").await.0
    })
    .await;
    let (status, body) = chat_as(&gw, &member, "gpt-4o").await;
    assert_eq!(body["error"]["param"], "model", "{status} {body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("key policy"),
        "{body}"
    );
    let (status, body) = chat_as(&gw, &member, "slow-model").await;
    assert_eq!(status, 403, "the org denies provider `slow`: {body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("org policy"),
        "{body}"
    );
    let mut big = chat("gpt-4o-mini");
    big["max_tokens"] = json!(100);
    let (status, body) = call(&gw, &member, "POST", "/v1/chat/completions", Some(big)).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (403, Some("max_tokens")),
        "{body}"
    );
    let (status, _) = chat_as(&gw, &member, "gpt-4o-mini").await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.last_upstream().await["body"]["max_tokens"],
        50,
        "the limit applied when none was asked"
    );
    let (status, body) = call(
        &gw,
        &member,
        "POST",
        "/v1/embeddings",
        Some(json!({"model": "gpt-4o-mini", "input": "x"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, models) = call(&gw, &member, "GET", "/v1/models", None).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // dead-model serves gpt-4o-mini upstream (allowed by that name); slow-model's
    // provider is denied by the org; no other built-in matches the key's patterns.
    assert_eq!(ids, ["gpt-4o-mini", "dead-model"], "only what the policies allow");

    // ---- bad input: named, never a 5xx
    for (method, path, body, want, param) in [
        (
            "PUT",
            format!("/admin/v1/keys/{member_id}/policy"),
            json!({"alowed_models": []}),
            400,
            Some("alowed_models"),
        ),
        (
            "PUT",
            format!("/admin/v1/keys/{member_id}/policy"),
            json!({"allowed_endpoints": ["files"]}),
            400,
            Some("allowed_endpoints"),
        ),
        (
            "PUT",
            format!("/admin/v1/keys/{member_id}/policy"),
            json!({"max_tokens": 0}),
            400,
            Some("max_tokens"),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{beta}/projects"),
            json!({"name": "x".repeat(1000)}),
            400,
            Some("name"),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{beta}/keys"),
            json!({"expires_at": 1}),
            400,
            Some("expires_at"),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{beta}/keys"),
            json!({"role": "root"}),
            400,
            Some("role"),
        ),
        ("DELETE", "/admin/v1/orgs".to_owned(), json!({}), 405, None),
        ("GET", "/admin/v1/widgets".to_owned(), json!({}), 404, None),
    ] {
        let (status, r) = call(&gw, &beta_admin, method, &path, Some(body)).await;
        assert_eq!(
            (status, r["error"]["param"].as_str()),
            (want, param),
            "{method} {path}: {r}"
        );
    }
    // Hostile names are data, nothing more.
    let hostile = "x'); DROP TABLE api_keys; --";
    let (status, p) = call(
        &gw,
        &beta_admin,
        "POST",
        &format!("/admin/v1/orgs/{beta}/projects"),
        Some(json!({"name": hostile})),
    )
    .await;
    assert_eq!((status, p["name"].as_str()), (201, Some(hostile)), "{p}");
    let (status, _) = call(
        &gw,
        &beta_admin,
        "GET",
        &format!("/admin/v1/orgs/{beta}/keys"),
        None,
    )
    .await;
    assert_eq!(status, 200, "keys survive");

    // ---- update, rotate, revoke: each in effect within a second
    let (status, k) = call(
        &gw,
        &beta_admin,
        "PATCH",
        &format!("/admin/v1/keys/{member_id}"),
        Some(json!({"name": "renamed", "metadata": null})),
    )
    .await;
    assert_eq!(
        (status, k["name"].as_str(), k["metadata"].clone()),
        (200, Some("renamed"), json!({})),
        "{k}"
    );
    let (status, k) = call(
        &gw,
        &beta_admin,
        "POST",
        &format!("/admin/v1/keys/{member_id}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{k}");
    let rotated = k["key"].as_str().unwrap().to_owned();
    assert_ne!(rotated, member);
    eventually("old secret after rotation", 401, || async {
        chat_as(&gw, &member, "gpt-4o-mini").await.0
    })
    .await;
    let (status, _) = chat_as(&gw, &rotated, "gpt-4o-mini").await;
    assert_eq!(status, 200, "the new secret, same key and policy");
    let (status, k) = call(
        &gw,
        &beta_admin,
        "POST",
        &format!("/admin/v1/keys/{member_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(k["revoked_at"].is_u64(), "{k}");
    let revoked_at = Instant::now();
    eventually("revoked key", 401, || async {
        chat_as(&gw, &rotated, "gpt-4o-mini").await.0
    })
    .await;
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1500),
        "revocation took {:?}",
        revoked_at.elapsed()
    );

    // ---- the CLI runs the same operations
    let out = gw.cli(&["admin", "GET", "/admin/v1/orgs"]).await;
    let orgs: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(orgs["data"].as_array().unwrap().len() >= 3, "{orgs}");
}

#[tokio::test]
async fn admin_in_one_process() {
    admin(Shape::All).await;
}

#[tokio::test]
async fn admin_across_five_processes() {
    admin(Shape::Split).await;
}
