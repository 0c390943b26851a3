//! The response cache through the public API: opted in by `cache-control`,
//! by a key's policy and by a routing config; hits, misses and bypasses in
//! headers and metadata; TTL; `no-cache` and `no-store`; streaming replay
//! and streamed misses stored; never shared across orgs; metered at zero
//! cost and still counted against rate limits — in one process, across
//! five, and in a real Redis.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::{Extra, Gateway, Shape, chunks, joined, sse_data, user};
use crate::limits::{key_with_policy, redis};

/// A chat request with `key` and a `cache-control` header (if any); the
/// status, headers and JSON body.
async fn chat(gw: &Gateway, key: &str, body: &Value, cache_control: Option<&str>) -> (u16, HeaderMap, Value) {
    let mut r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    if let Some(cc) = cache_control {
        r = r.header("cache-control", cc);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, headers, json)
}

/// A streamed chat request; the headers and the SSE `data:` payloads.
async fn stream(gw: &Gateway, key: &str, body: &Value, cache_control: &str) -> (HeaderMap, Vec<String>) {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("cache-control", cache_control)
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200, "stream status");
    let headers = r.headers().clone();
    (headers, sse_data(&r.text().await.expect("body")))
}

fn cache_header(h: &HeaderMap) -> &str {
    h.get("x-llmgw-cache").map_or("", |v| v.to_str().unwrap())
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

async fn upstream(gw: &Gateway) -> usize {
    gw.upstream_requests().await.len()
}

fn ask(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": user(text), "temperature": 0.2})
}

async fn per_request(gw: &Gateway) {
    let key = gw.key.clone();
    let body = ask("[emu:words=12] cache me");

    // ---- a miss goes upstream and is stored; the same request then hits
    let (s, h, first) = chat(gw, &key, &body, Some("max-age=60")).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(cache_header(&h), "miss");
    assert_eq!(first["metadata"]["cache"], "miss", "{first}");
    assert_eq!(upstream(gw).await, 1);
    let (s, h, hit) = chat(gw, &key, &body, Some("max-age=60")).await;
    assert_eq!(s, 200, "{hit}");
    assert_eq!(cache_header(&h), "hit");
    assert!(h.contains_key("age"), "{h:?}");
    assert_eq!(hit["metadata"]["cache"], "hit", "{hit}");
    assert!(hit["metadata"]["cache_age_secs"].as_u64().is_some(), "{hit}");
    assert_eq!(hit["metadata"]["used_provider"], "emu");
    assert_eq!(content(&hit), content(&first));
    assert_eq!(hit["usage"]["cost_usd"].as_f64(), Some(0.0), "{hit}");
    assert_eq!(
        hit["usage"]["completion_tokens"],
        first["usage"]["completion_tokens"]
    );
    assert_eq!(upstream(gw).await, 1, "a hit never reaches the provider");

    // ---- what does not change the answer does not change the key
    let mut same = body.clone();
    same["user"] = json!("someone");
    same["metadata"] = json!({"tag": "x"});
    let (_, h, _) = chat(gw, &key, &same, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "hit");

    // ---- different parameters: a miss
    let mut hotter = body.clone();
    hotter["temperature"] = json!(0.9);
    let (_, h, _) = chat(gw, &key, &hotter, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "miss");
    assert_eq!(upstream(gw).await, 2);

    // ---- not opted in: the cache is not involved at all
    let (_, h, plain) = chat(gw, &key, &body, None).await;
    assert_eq!(cache_header(&h), "");
    assert!(plain["metadata"].get("cache").is_none(), "{plain}");
    assert_eq!(upstream(gw).await, 3);

    // ---- no-cache: a fresh upstream call that refreshes the entry
    let (_, h, _) = chat(gw, &key, &body, Some("no-cache, max-age=60")).await;
    assert_eq!(cache_header(&h), "miss");
    assert_eq!(upstream(gw).await, 4);
    let (_, h, _) = chat(gw, &key, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "hit");
    assert_eq!(upstream(gw).await, 4);

    // ---- no-store: neither read nor written
    let fresh = ask("never stored");
    let (_, h, b) = chat(gw, &key, &fresh, Some("no-store, max-age=60")).await;
    assert_eq!(cache_header(&h), "bypass");
    assert_eq!(b["metadata"]["cache"], "bypass");
    let (_, h, _) = chat(gw, &key, &fresh, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "miss", "no-store wrote nothing");
    assert_eq!(upstream(gw).await, 6);

    // ---- a hit replays as a stream, in OpenAI's chunk format, with [DONE]
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (h, events) = stream(gw, &key, &streamed, "max-age=60").await;
    assert_eq!(cache_header(&h), "hit");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let cs = chunks(&events);
    assert_eq!(joined(&cs, "content"), content(&first));
    assert!(
        cs.iter().all(|c| c["object"] == "chat.completion.chunk"),
        "{cs:?}"
    );
    assert!(cs.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let last = cs.last().unwrap();
    assert_eq!(last["usage"]["cost_usd"].as_f64(), Some(0.0), "{last}");
    assert_eq!(upstream(gw).await, 6);

    // ---- a streamed miss is stored once complete; plain then hits
    let mut s_body = ask("[emu:words=9] streamed first");
    s_body["stream"] = json!(true);
    let (h, events) = stream(gw, &key, &s_body, "max-age=60").await;
    assert_eq!(cache_header(&h), "miss");
    let streamed_text = joined(&chunks(&events), "content");
    assert_eq!(upstream(gw).await, 7);
    let (_, h, b) = chat(gw, &key, &ask("[emu:words=9] streamed first"), Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "hit", "{b}");
    assert_eq!(content(&b), streamed_text);
    assert_eq!(upstream(gw).await, 7);

    // ---- a failed stream is never stored
    let mut broken = ask("[emu:words=30] [emu:abort_mid_stream] broken");
    broken["stream"] = json!(true);
    let _ = stream(gw, &key, &broken, "max-age=60").await;
    let (h, _) = stream(gw, &key, &broken, "max-age=60").await;
    assert_eq!(cache_header(&h), "miss");

    // ---- TTL: an entry expires
    let short = ask("short-lived");
    let (_, h, _) = chat(gw, &key, &short, Some("max-age=1")).await;
    assert_eq!(cache_header(&h), "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = upstream(gw).await;
    let (_, h, _) = chat(gw, &key, &short, Some("max-age=1")).await;
    assert_eq!(cache_header(&h), "miss", "expired");
    assert_eq!(upstream(gw).await, before + 1);
}

/// Two orgs never share an entry: org B's identical request goes upstream.
async fn orgs_never_share(gw: &Gateway) {
    let body = ask("[emu:words=5] shared prompt");
    let (_, h, _) = chat(gw, &gw.key, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "miss");
    let (_, h, _) = chat(gw, &gw.key, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "hit");
    let before = upstream(gw).await;
    let other = gw.key_with_role("globex", "member").await;
    let (s, h, b) = chat(gw, &other, &body, Some("max-age=60")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(cache_header(&h), "miss", "org B must not see org A's entry");
    assert_eq!(upstream(gw).await, before + 1);
    let (_, h, _) = chat(gw, &other, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "hit");
}

/// Hits are metered (requests) at zero cost.
async fn metered_at_zero_cost(gw: &Gateway) {
    let key = gw.key_with_role("initech", "member").await;
    let body = ask("[emu:words=20] metered");
    let (_, h, miss) = chat(gw, &key, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "miss");
    assert!(miss["usage"]["cost_usd"].as_f64().unwrap() > 0.0, "{miss}");
    let one = gw.usage_until("initech", |u| u["requests"] == 1).await;
    assert_eq!(one["requests"], 1, "{one}");
    let cost = one["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{one}");
    for _ in 0..3 {
        let (_, h, _) = chat(gw, &key, &body, Some("max-age=60")).await;
        assert_eq!(cache_header(&h), "hit");
    }
    let four = gw.usage_until("initech", |u| u["requests"] == 4).await;
    assert_eq!(four["requests"], 4, "hits are metered: {four}");
    assert!(
        (four["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "hits cost nothing: {one} then {four}"
    );
    // The usage API (daily roll-ups) counts the hits apart.
    let (status, text) = gw.call(&key, "GET", "/v1/usage", None).await;
    assert_eq!(status, 200, "{text}");
    let totals = &serde_json::from_str::<serde_json::Value>(&text).unwrap()["totals"];
    assert_eq!(
        (totals["requests"].as_u64(), totals["cache_hits"].as_u64()),
        (Some(4), Some(3)),
        "{text}"
    );
}

#[tokio::test]
async fn cache_in_one_process() {
    let gw = Gateway::start(Shape::All).await;
    per_request(&gw).await;
    orgs_never_share(&gw).await;
    metered_at_zero_cost(&gw).await;
    // Outcomes are counted by result.
    let (_, metrics) = gw.get_text("/metrics").await;
    let count = |result: &str| -> f64 {
        let series = format!("llmgw_response_cache_requests_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    };
    assert!(count("hit") >= 10.0, "{}", count("hit"));
    assert!(count("miss") >= 10.0);
    assert_eq!(count("bypass"), 1.0, "the one no-store request");
}

#[tokio::test]
async fn cache_across_five_processes() {
    let gw = Gateway::start(Shape::Split).await;
    per_request(&gw).await;
    orgs_never_share(&gw).await;
}

/// Opted in by a key's policy (no header), still counted against its rate
/// limit; and by a routing config.
#[tokio::test]
async fn policy_and_routing_config_opt_in() {
    let top = "routing:\n  configs:\n    - name: cached\n      cache: { ttl: 1m }\n      variants:\n        - name: only\n";
    let gw = Gateway::start_full(Shape::All, "", "", top).await;
    let key = key_with_policy(&gw, json!({"cache": {"ttl": "10m"}, "rpm": 3})).await;
    let body = ask("policy cached");
    let (_, h, _) = chat(&gw, &key, &body, None).await;
    assert_eq!(cache_header(&h), "miss");
    let (s, h, _) = chat(&gw, &key, &body, None).await;
    assert_eq!((s, cache_header(&h)), (200, "hit"));
    assert_eq!(upstream(&gw).await, 1);
    let (s, _, b) = chat(&gw, &key, &body, None).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = chat(&gw, &key, &body, None).await;
    assert_eq!(s, 429, "hits count against the rate limit: {b}");
    // no-store still wins over the policy.
    let key = key_with_policy(&gw, json!({"cache": {}})).await;
    let (_, h, _) = chat(&gw, &key, &ask("x"), Some("no-store")).await;
    assert_eq!(cache_header(&h), "bypass");

    // A routing config that caches.
    let body = ask("config cached");
    for want in ["miss", "hit"] {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .header("x-llmgw-config", "cached")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(cache_header(r.headers()), want);
    }
    // The same request without the config is not cached.
    let (_, h, _) = chat(&gw, &gw.key, &body, None).await;
    assert_eq!(cache_header(&h), "");
}

/// With `redis:` the entries live in Redis (so edge replicas share them);
/// still per org.
#[tokio::test]
async fn cache_in_redis() {
    let (_redis, port, _dir) = redis().await;
    let top = format!("redis:\n  url: redis://127.0.0.1:{port}\n");
    let gw = Gateway::start_extra(
        Shape::Split,
        Extra {
            top: &top,
            ..Extra::default()
        },
    )
    .await;
    let body = ask("[emu:words=7] in redis");
    let (_, h, first) = chat(&gw, &gw.key, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "miss");
    // Stored off the request's path: poll until it is there.
    let mut hit = None;
    for _ in 0..50 {
        let (_, h, b) = chat(&gw, &gw.key, &body, Some("max-age=60")).await;
        if cache_header(&h) == "hit" {
            hit = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hit = hit.expect("a hit from redis");
    assert_eq!(content(&hit), content(&first));
    let mut s_body = body.clone();
    s_body["stream"] = json!(true);
    let (h, events) = stream(&gw, &gw.key, &s_body, "max-age=60").await;
    assert_eq!(cache_header(&h), "hit");
    assert_eq!(joined(&chunks(&events), "content"), content(&first));
    let before = upstream(&gw).await;
    let other = gw.key_with_role("globex", "member").await;
    let (_, h, _) = chat(&gw, &other, &body, Some("max-age=60")).await;
    assert_eq!(cache_header(&h), "miss");
    assert_eq!(upstream(&gw).await, before + 1);
}
