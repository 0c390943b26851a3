//! Every admin field takes hostile input — SQL fragments, NUL and control
//! characters, unicode, 100 KB strings, wrong types — and answers a clean
//! 4xx or stores it as data: never a 5xx, never a broken store.

use serde_json::{Value, json};

use crate::harness::{Gateway, Shape, user};

fn hostile() -> Vec<Value> {
    vec![
        json!("'; DROP TABLE api_keys; --"),
        json!("\" OR 1=1 --"),
        json!("x\u{0}y"),
        json!("line\nbreak\ttab\u{7}"),
        json!("ü🙂 ñ 中文"),
        json!("../../etc/passwd"),
        json!("%s%n%x"),
        json!("x".repeat(100_000)),
        json!(""),
        json!(12345),
        json!(null),
        json!(["a", {"b": 1}]),
        json!({"$gt": ""}),
    ]
}

#[tokio::test]
async fn every_admin_field_takes_hostile_input_cleanly() {
    let gw = Gateway::start(Shape::All).await;
    let admin = gw.key_with_role("acme", "admin").await;
    let call = |method: &'static str, path: String, body: Value| {
        let (gw, admin) = (&gw, &admin);
        async move {
            let r = gw
                .client
                .request(method.parse().unwrap(), gw.url(&path))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let (_, orgs) = call("GET", "/admin/v1/orgs".into(), Value::Null).await;
    let org = serde_json::from_str::<Value>(&orgs).unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, keys) = call("GET", format!("/admin/v1/orgs/{org}/keys"), Value::Null).await;
    let key_id = serde_json::from_str::<Value>(&keys).unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let fields: Vec<(&str, String, &str, Value)> = vec![
        (
            "POST",
            format!("/admin/v1/orgs/{org}/projects"),
            "name",
            json!({}),
        ),
        ("POST", format!("/admin/v1/orgs/{org}/keys"), "name", json!({})),
        ("POST", format!("/admin/v1/orgs/{org}/keys"), "role", json!({})),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/keys"),
            "project_id",
            json!({}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/keys"),
            "routing_config",
            json!({}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/keys"),
            "expires_at",
            json!({}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/keys"),
            "metadata",
            json!({}),
        ),
        ("PATCH", format!("/admin/v1/keys/{key_id}"), "name", json!({})),
        (
            "PATCH",
            format!("/admin/v1/keys/{key_id}"),
            "routing_config",
            json!({}),
        ),
        (
            "PATCH",
            format!("/admin/v1/keys/{key_id}"),
            "expires_at",
            json!({}),
        ),
        (
            "PUT",
            format!("/admin/v1/keys/{key_id}/policy"),
            "max_tokens",
            json!({}),
        ),
        ("PUT", format!("/admin/v1/keys/{key_id}/policy"), "rpm", json!({})),
        (
            "PATCH",
            format!("/admin/v1/keys/{key_id}/policy"),
            "tpm",
            json!({}),
        ),
        (
            "PUT",
            format!("/admin/v1/orgs/{org}/policy"),
            "budgets",
            json!({}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/credentials"),
            "name",
            json!({"type": "openai", "api_key": "k"}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/credentials"),
            "type",
            json!({"name": "c", "api_key": "k"}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/credentials"),
            "api_key",
            json!({"name": "c2", "type": "openai"}),
        ),
        (
            "POST",
            format!("/admin/v1/orgs/{org}/credentials"),
            "region",
            json!({"name": "c3", "type": "bedrock", "access_key_id": "a", "secret_access_key": "s"}),
        ),
    ];
    // List fields take the values as elements; map fields as keys and values.
    let lists = [
        (format!("/admin/v1/keys/{key_id}/policy"), "allowed_models"),
        (format!("/admin/v1/keys/{key_id}/policy"), "denied_providers"),
        (format!("/admin/v1/keys/{key_id}/policy"), "allowed_endpoints"),
    ];
    let mut checked = 0;
    for value in hostile() {
        for (method, path, field, base) in &fields {
            let mut body = base.clone();
            body[*field] = value.clone();
            let (status, text) = call(method, path.clone(), body).await;
            assert!(
                status < 500,
                "{method} {path} {field}={:.60}: {status} {text:.300}",
                value.to_string()
            );
            if status >= 400 {
                let err: Value =
                    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:.200}"));
                assert!(err["error"]["message"].is_string(), "{text:.200}");
            }
            checked += 1;
        }
        for (path, field) in &lists {
            let (status, text) = call("PUT", path.clone(), json!({ *field: [value.clone()] })).await;
            assert!(status < 500, "PUT {path} {field}: {status} {text:.300}");
            checked += 1;
        }
        if let Some(s) = value.as_str() {
            let (status, text) = call(
                "PATCH",
                format!("/admin/v1/keys/{key_id}"),
                json!({"metadata": {s: s}}),
            )
            .await;
            assert!(status < 500, "metadata {status} {text:.300}");
            checked += 1;
        }
    }
    assert!(checked > 250, "{checked}");
    // Hostile ids in paths are 404s.
    for id in ["x'--", "%27%20OR%201%3D1", "a%00b", &"k".repeat(500)] {
        let (status, _) = call("GET", format!("/admin/v1/keys/{id}"), Value::Null).await;
        assert!(status == 404 || status == 400, "{id}: {status}");
    }
    // The store still works: the listing answers and the key still chats.
    let (status, _) = call("PUT", format!("/admin/v1/keys/{key_id}/policy"), json!({})).await;
    assert_eq!(status, 200);
    let (status, keys) = call("GET", format!("/admin/v1/orgs/{org}/keys"), Value::Null).await;
    assert_eq!(status, 200, "{keys:.300}");
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "gpt-4o-mini", "messages": user("still here")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
