//! Fault profiles over real connections, with a raw HTTP/1.1 client so a dropped connection
//! and a client that hangs up mid-request can be observed.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::{Emulator, Options, spawn};

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// Sends one request and reads the whole answer; `None` if the connection closed first.
async fn raw(addr: SocketAddr, req: String) -> Option<Reply> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    if tcp.read_to_end(&mut buf).await.is_err() || buf.is_empty() {
        return None;
    }
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    Some(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

async fn send(emu: &Emulator, method: &str, path: &str, body: &str) -> Reply {
    let req = request(
        emu.addr,
        method,
        path,
        &[("content-type", "application/json")],
        body,
    );
    raw(emu.addr, req).await.expect("a response")
}

async fn chat(emu: &Emulator, profile: &str) -> Reply {
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi [emu:words=3]"}]}"#;
    send(emu, "POST", &format!("/_f/{profile}/v1/chat/completions"), body).await
}

async fn set(emu: &Emulator, profile: &str, settings: Value) {
    let reply = send(
        emu,
        "PUT",
        &format!("/_emu/faults/{profile}"),
        &settings.to_string(),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
}

async fn counters(emu: &Emulator, profile: &str) -> Value {
    send(emu, "GET", &format!("/_emu/faults/{profile}"), "")
        .await
        .json()
}

/// The profile saw `requests`, failed `failed` of them, and has none running.
async fn assert_settled(emu: &Emulator, profile: &str, requests: u64, failed: u64) {
    let want = json!({"requests": requests, "failed": failed, "in_flight": 0});
    assert_eq!(counters(emu, profile).await, want);
}

#[test]
fn settings_pick_the_failing_requests() {
    let every = Settings {
        fail_every: Some(5),
        ..Settings::default()
    };
    let failing: Vec<u64> = (1..=10).filter(|&n| every.fails(n)).collect();
    assert_eq!(failing, [5, 10]);
    let first = Settings {
        fail_first: Some(2),
        ..Settings::default()
    };
    assert_eq!(
        (1..=4).map(|n| first.fails(n)).collect::<Vec<_>>(),
        [true, true, false, false]
    );
    assert!(!Settings::default().fails(1));
    let always = Settings {
        status: Some(503),
        ..Settings::default()
    };
    assert!(always.fails(1) && always.fails(2));
}

#[test]
fn strips_the_prefix() {
    let (p, uri) = strip(&"/_f/a/v1/models?x=1".parse().unwrap()).unwrap();
    assert_eq!((p.as_str(), uri.to_string().as_str()), ("a", "/v1/models?x=1"));
    assert!(strip(&"/v1/models".parse().unwrap()).is_none());
    assert!(strip(&"/_f//v1/models".parse().unwrap()).is_none());
}

#[tokio::test]
async fn unset_profile_answers_normally_and_is_counted() {
    let emu = spawn(Options::default()).await.unwrap();
    let reply = chat(&emu, "plain").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // `[emu:...]` directives still apply inside a profile.
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        3
    );
    let models = send(&emu, "GET", "/_f/plain/v1/models", "").await;
    assert_eq!(models.status, 200);
    let mistral = r#"{"model":"mistral-small-latest","messages":[{"role":"user","content":"hi"}]}"#;
    let reply = send(&emu, "POST", "/_f/plain/mistral/v1/chat/completions", mistral).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_settled(&emu, "plain", 3, 0).await;
    // Unknown paths under a profile get the usual 404, with the stripped path.
    let reply = send(&emu, "GET", "/_f/plain/nope", "").await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("GET /nope"), "{}", reply.body);
}

#[tokio::test]
async fn delay_holds_only_its_profile() {
    let emu = spawn(Options::default()).await.unwrap();
    set(&emu, "slow", json!({"delay_ms": 300})).await;
    let start = Instant::now();
    assert_eq!(chat(&emu, "slow").await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(chat(&emu, "fast").await.status, 200);
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn fail_every_fails_every_nth_request() {
    let emu = spawn(Options::default()).await.unwrap();
    set(&emu, "a", json!({"fail_every": 5})).await;
    let mut failed = Vec::new();
    for n in 1..=10 {
        let reply = chat(&emu, "a").await;
        if reply.status != 200 {
            assert_eq!(reply.status, 500);
            assert_eq!(reply.json()["error"]["type"], "server_error");
            failed.push(n);
        }
    }
    assert_eq!(failed, [5, 10]);
    assert_settled(&emu, "a", 10, 2).await;

    // A PUT zeroes the counters; DELETE forgets every profile.
    set(&emu, "a", json!({})).await;
    assert_eq!(counters(&emu, "a").await["requests"], 0);
    assert_eq!(chat(&emu, "a").await.status, 200);
    assert_eq!(send(&emu, "DELETE", "/_emu/faults", "").await.status, 204);
    assert_eq!(counters(&emu, "a").await["requests"], 0);
}

#[tokio::test]
async fn fail_first_then_succeed() {
    let emu = spawn(Options::default()).await.unwrap();
    set(&emu, "b", json!({"fail_first": 2, "status": 503})).await;
    let statuses: Vec<u16> = [
        chat(&emu, "b").await,
        chat(&emu, "b").await,
        chat(&emu, "b").await,
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_settled(&emu, "b", 3, 2).await;
}

#[tokio::test]
async fn status_with_retry_after() {
    let emu = spawn(Options::default()).await.unwrap();
    set(&emu, "c", json!({"status": 429, "retry_after": 7})).await;
    for _ in 0..2 {
        let reply = chat(&emu, "c").await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("7"));
        assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    }
    let bad = send(&emu, "PUT", "/_emu/faults/c", r#"{"bogus": 1}"#).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn reset_drops_the_connection_without_a_response() {
    let emu = spawn(Options::default()).await.unwrap();
    set(&emu, "r", json!({"reset": true, "fail_every": 2})).await;
    assert_eq!(chat(&emu, "r").await.status, 200);
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let req = request(emu.addr, "POST", "/_f/r/v1/chat/completions", &[], body);
    assert!(raw(emu.addr, req).await.is_none());
    assert_settled(&emu, "r", 2, 1).await;
}

#[tokio::test]
async fn in_flight_returns_to_zero_when_the_client_hangs_up() {
    let emu = spawn(Options::default()).await.unwrap();
    set(&emu, "d", json!({"delay_ms": 60_000})).await;
    let mut tcp = TcpStream::connect(emu.addr).await.unwrap();
    let req = request(emu.addr, "GET", "/_f/d/v1/models", &[], "");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let wait_for = |want: u64| {
        let emu = &emu;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let c = counters(emu, "d").await;
                if c["in_flight"] == want {
                    return c;
                }
                assert!(Instant::now() < deadline, "in_flight stuck at {c}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(wait_for(1).await["requests"], 1);
    drop(tcp);
    wait_for(0).await;
}

#[tokio::test]
async fn anthropic_under_a_prefix() {
    let emu = spawn(Options::default()).await.unwrap();
    let body = r#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let headers = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ];
    let post = || {
        raw(
            emu.addr,
            request(emu.addr, "POST", "/_f/x/v1/messages", &headers, body),
        )
    };
    let reply = post().await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["type"], "message");
    set(&emu, "x", json!({"status": 529})).await;
    let reply = post().await.unwrap();
    assert_eq!(reply.status, 529);
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
}

/// Headers for a Bedrock request to `path` on `addr`, signed as a gateway would sign them.
fn signed(addr: SocketAddr, path: &str, secret: &str, body: &str) -> Vec<(String, String)> {
    let identity = Credentials::new(crate::bedrock::ACCESS_KEY_ID, secret, None, None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let host = addr.to_string();
    let request = SignableRequest::new(
        "POST",
        format!("http://{addr}{path}"),
        [("host", host.as_str()), ("content-type", "application/json")].into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn bedrock_under_a_prefix_verifies_the_signed_path() {
    let secret = "emu-secret";
    let emu = spawn(Options {
        api_key: Some(secret.to_owned()),
        record: false,
    })
    .await
    .unwrap();
    let path = "/_f/br/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    let post = |path: &'static str, signed_path: &'static str| {
        let headers = signed(emu.addr, signed_path, secret, body);
        let mut all: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.push(("content-type", "application/json"));
        raw(emu.addr, request(emu.addr, "POST", path, &all, body))
    };
    let reply = post(path, path).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.json()["output"]["message"]["content"].is_array());
    // Signed for the unprefixed path but sent under the prefix: the signature does not match.
    let bare = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
    assert_eq!(post(path, bare).await.unwrap().status, 403);

    // The fault API needs no credentials, even when the emulator has a key.
    set(&emu, "br", json!({"status": 429})).await;
    let reply = post(path, path).await.unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.json()["message"],
        "Too many requests, please wait before trying again."
    );
}
