//! `GET /health` (and `/`): every dependency checked and named — the
//! stores, each service (over gRPC when split), Redis and Consul when
//! configured; 503 when a required one is down, `?skip=` to leave some out.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Consul, Extra, Gateway, Shape};
use crate::limits::redis;

async fn health(gw: &Gateway, path: &str) -> (u16, Value) {
    let (status, text) = gw.get_text(path).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// Polls `path` until it answers `status`, for up to 15 s.
async fn until(gw: &Gateway, path: &str, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, body) = health(gw, path).await;
        if s == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(body: &Value) -> Vec<&str> {
    body["checks"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

const SERVICES: [&str; 6] = [
    "adapter",
    "auth",
    "auth_store",
    "metering",
    "metering_store",
    "router",
];

async fn all_ok(gw: &Gateway) {
    for path in ["/health", "/"] {
        let body = until(gw, path, 200).await;
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(names(&body), SERVICES, "{body}");
        for (name, check) in body["checks"].as_object().unwrap() {
            assert_eq!(check["status"], "ok", "{name}: {body}");
            assert!(check["latency_ms"].as_f64().unwrap() >= 0.0);
            assert!(check.get("error").is_none());
        }
    }
    let (status, body) = health(gw, "/health?skip=router,auth_store").await;
    assert_eq!(status, 200);
    assert_eq!(names(&body), ["adapter", "auth", "metering", "metering_store"]);
}

#[tokio::test]
async fn every_dependency_is_checked_in_one_process() {
    let gw = Gateway::start(Shape::All).await;
    all_ok(&gw).await;
}

#[tokio::test]
async fn a_killed_service_is_named_and_can_be_skipped() {
    let mut gw = Gateway::start(Shape::Split).await;
    all_ok(&gw).await;
    // Order: auth, router, adapter, metering, edge.
    let mut metering = gw.children.remove(3);
    metering.start_kill().unwrap();
    metering.wait().await.unwrap();
    let body = until(&gw, "/health", 503).await;
    assert_eq!(body["status"], "down", "{body}");
    assert_eq!(body["checks"]["metering"]["status"], "down", "{body}");
    assert!(body["checks"]["metering"]["error"].is_string(), "{body}");
    assert_eq!(body["checks"]["metering_store"]["status"], "down", "{body}");
    for up in ["auth", "router", "adapter", "auth_store"] {
        assert_eq!(body["checks"][up]["status"], "ok", "{up}: {body}");
    }
    let body = until(&gw, "/health?skip=metering,metering_store", 200).await;
    assert_eq!(body["status"], "ok", "{body}");
    assert!(!names(&body).contains(&"metering"));
    // Requests are still served (metering is asynchronous).
    let (s, _, _) = gw
        .post(
            "/v1/chat/completions",
            &serde_json::json!({"model": "gpt-4o-mini", "messages": crate::harness::user("hi")}),
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn redis_and_consul_are_checked_when_configured() {
    let (mut redis_server, port, _dir) = redis().await;
    let mut consul = Consul::start().await;
    let top = format!("redis:\n  url: redis://127.0.0.1:{port}\n");
    let gw = Gateway::start_extra(
        Shape::All,
        Extra {
            top: &top,
            consul: Some(&consul),
            ..Extra::default()
        },
    )
    .await;
    let body = until(&gw, "/health", 200).await;
    assert_eq!(body["checks"]["redis"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["consul"]["status"], "ok", "{body}");

    // Consul gone: discovery keeps what it saw; degraded, still 200.
    consul.kill().await;
    let mut body = until(&gw, "/health?skip=redis", 200).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while body["status"] != "degraded" {
        assert!(Instant::now() < deadline, "never degraded: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = until(&gw, "/health?skip=redis", 200).await;
    }
    assert_eq!(body["checks"]["consul"]["status"], "down", "{body}");

    // Redis gone: required; 503 naming it, unless skipped.
    redis_server.start_kill().unwrap();
    redis_server.wait().await.unwrap();
    let body = until(&gw, "/health", 503).await;
    assert_eq!(body["checks"]["redis"]["status"], "down", "{body}");
    let body = until(&gw, "/health?skip=redis%2Cconsul", 200).await;
    assert_eq!(body["status"], "ok", "{body}");
}
