//! Rate limits through the public API: requests and tokens per minute per
//! scope, `x-ratelimit-*` headers, 429 with `retry-after` naming the scope —
//! in process, and shared through a real Redis by two edge processes.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::{EMU_KEY, Gateway, Shape, bin, user};

/// A new key of org `acme` with `policy`; the key.
pub(crate) async fn key_with_policy(gw: &Gateway, policy: Value) -> String {
    let out = gw.cli(&["keys", "create", "--org", "acme"]).await;
    let mut lines = out.lines().rev();
    let key = lines.next().unwrap().trim().to_owned();
    let id = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("the key id line")
        .to_owned();
    let body = policy.to_string();
    gw.cli(&[
        "admin",
        "PUT",
        &format!("/admin/v1/keys/{id}/policy"),
        "--body",
        &body,
    ])
    .await;
    key
}

async fn chat(
    gw: &Gateway,
    http: SocketAddr,
    key: &str,
    text: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = gw
        .client
        .post(format!("http://{http}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": user(text)}))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.expect("json"))
}

#[tokio::test]
async fn requests_and_tokens_per_minute_in_process() {
    let gw = Gateway::start(Shape::All).await;
    let key = key_with_policy(&gw, json!({"rpm": 5})).await;
    for left in (0..5).rev() {
        let (status, h, body) = chat(&gw, gw.http, &key, "hi").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(h["x-ratelimit-limit-requests"], "5");
        assert_eq!(h["x-ratelimit-remaining-requests"], left.to_string().as_str());
        assert!(h["x-ratelimit-reset-requests"].to_str().unwrap().ends_with('s'));
    }
    let (status, h, body) = chat(&gw, gw.http, &key, "hi").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests per minute on the key"),
        "{body}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Other keys of the org are not limited by this key's policy.
    let (status, _, _) = chat(&gw, gw.http, &gw.key, "hi").await;
    assert_eq!(status, 200);

    // Tokens: a ~100-token prompt against 200 tokens a minute.
    let key = key_with_policy(&gw, json!({"tpm": 200})).await;
    let long = "word ".repeat(80);
    let (status, h, body) = chat(&gw, gw.http, &key, &long).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-ratelimit-limit-tokens"], "200");
    let mut refused = None;
    for _ in 0..3 {
        let (status, _, body) = chat(&gw, gw.http, &key, &long).await;
        if status == 429 {
            refused = Some(body);
            break;
        }
    }
    let body = refused.expect("the token limit refuses within three more requests");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute"),
        "{body}"
    );
}

/// Starts a throwaway Redis on a free port; killed on drop.
pub(crate) async fn redis() -> (Child, u16, tempfile::TempDir) {
    let bin = std::env::var("LLMGW_REDIS_BIN").unwrap_or_else(|_| "redis-server".to_owned());
    let dir = tempfile::tempdir().unwrap();
    let port = crate::harness::free_addr().port();
    let child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{bin}` ({e}): run scripts/setup-redis.sh or set LLMGW_REDIS_BIN (make test does)")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "redis did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, port, dir)
}

/// A second edge process over the same services: the config with its own
/// HTTP and gRPC ports.
async fn second_edge(gw: &Gateway) -> (Child, SocketAddr) {
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let (http, grpc) = (crate::harness::free_addr(), crate::harness::free_addr());
    let text = text
        .replace(&format!("http_addr: {}", gw.http), &format!("http_addr: {http}"))
        .replace(&format!("grpc_addr: {}", gw.grpc), &format!("grpc_addr: {grpc}"));
    let path = gw.config.with_file_name("edge2.yaml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new(bin())
        .arg("edge")
        .arg("--config")
        .arg(&path)
        .env("EMU_KEY", EMU_KEY)
        .env("LLMGW_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw
        .client
        .get(format!("http://{http}/health"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the second edge did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (child, http)
}

#[tokio::test]
async fn two_edges_share_one_limit_through_redis() {
    let (_redis, port, _dir) = redis().await;
    let top = format!("redis:\n  url: redis://127.0.0.1:{port}\n");
    let gw = Gateway::start_full(Shape::Split, "", "", &top).await;
    let (_edge2, http2) = second_edge(&gw).await;
    let key = key_with_policy(&gw, json!({"rpm": 10})).await;

    // 3 clients per edge (each edge admits 4 at once), 5 requests each: 30
    // requests, well within the minute.
    let mut clients = Vec::new();
    for edge in [gw.http, http2] {
        for _ in 0..3 {
            let (gw, key) = (&gw, key.clone());
            clients.push(async move {
                let mut statuses = Vec::new();
                for _ in 0..5 {
                    statuses.push(chat(gw, edge, &key, "hi").await.0);
                }
                statuses
            });
        }
    }
    let statuses: Vec<u16> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + limited, 30, "{statuses:?}");
    // Each edge alone would have admitted 10; together they admit 10.
    assert_eq!(admitted, 10, "{statuses:?}");
}
