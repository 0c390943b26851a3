//! Soak: mixed traffic with faults for a bounded time, then the books are checked.
//!
//! Sixteen clients loop for `LLMGW_SOAK_SECS` seconds (12 by default; `make soak` runs
//! 600) through a pool whose first two targets fail (every 5th request a 500, every 7th a
//! dropped connection): plain requests, whole streams, streams the client cuts after a few
//! chunks, streams the provider breaks off, and requests to a provider that refuses
//! connections. Each kind of request has an org of its own. Afterwards:
//! - the gateway's memory is flat (the last quarter of the run against the first),
//! - the emulator has nothing in flight and no more connections open than there were
//!   clients (none leaked),
//! - every cut stream was cancelled upstream within 1 s of its client leaving,
//! - every request was metered once, and the tokens of completed ones equal the emulator's
//!   ledger; a cut stream's output tokens are no more than the answer would have had.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Extra, Gateway, Shape, create_key, user};

const CLIENTS: usize = 16;

/// The kinds of request, each under its own org and emulator ledger class.
const KINDS: [&str; 5] = ["ok", "stream", "cut", "abort", "dead"];

const PROVIDERS: &str = r#"  - name: flaky
    type: openai
    base_url: http://{emu}/_f/flaky/v1
    api_key: ${EMU_KEY}
  - name: resets
    type: openai
    base_url: http://{emu}/_f/resets/v1
    api_key: ${EMU_KEY}
"#;

const MODELS: &str = r#"  - name: soak-pool
    strategy: priority
    targets:
      - { target: flaky/gpt-4o-mini }
      - { target: resets/gpt-4o-mini }
      - { target: emu/gpt-4o-mini }
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one kind of request added up to, as the clients saw it.
#[derive(Default, Debug)]
struct Seen {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Content chunks received before cutting (kind `cut`).
    chunks: u64,
    /// `user` → when the client dropped the stream (kind `cut`).
    dropped_at_ms: HashMap<String, u64>,
    /// Anything that should not have happened.
    problems: Vec<String>,
}

/// The `data:` payloads in `text` (whole lines only).
fn events(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| l.strip_prefix("data: "))
}

/// One client: requests of every kind in turn until `until`.
async fn client(
    gw: Arc<Gateway>,
    keys: Arc<HashMap<&'static str, String>>,
    id: usize,
    until: Instant,
) -> HashMap<&'static str, Seen> {
    let mut seen: HashMap<&'static str, Seen> = KINDS.iter().map(|k| (*k, Seen::default())).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (id as u64);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let kind = match (rng >> 33) % 10 {
            0..=2 => "ok",
            3..=5 => "stream",
            6 | 7 => "cut",
            8 => "abort",
            _ => "dead",
        };
        let tag = format!("soak-{kind}-{id}x{n}");
        let (model, text, stream) = match kind {
            "ok" => ("soak-pool", "[emu:words=30] hello", false),
            "stream" => ("soak-pool", "[emu:words=40] [emu:chunk_delay_ms=1] tell me", true),
            "cut" => (
                "soak-pool",
                "[emu:words=300] [emu:chunk_delay_ms=15] a long story",
                true,
            ),
            "abort" => ("gpt-4o-mini", "[emu:words=40] [emu:abort_mid_stream] break", true),
            _ => ("dead-model", "hi", false),
        };
        let mut body = json!({"model": model, "messages": user(text), "user": tag, "stream": stream});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let s = seen.get_mut(kind).expect("kind");
        s.requests += 1;
        let sent = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&keys[kind])
            .json(&body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                s.problems.push(format!("{tag}: {e}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        match kind {
            "dead" => {
                let b: Value = resp.json().await.unwrap_or_default();
                if status != 502 || b["error"]["type"].as_str().is_none() {
                    s.problems.push(format!("{tag}: {status} {b}"));
                }
            }
            _ if status != 200 => {
                let b = resp.text().await.unwrap_or_default();
                s.problems.push(format!("{tag}: {status} {b}"));
            }
            "ok" => {
                let b: Value = resp.json().await.unwrap_or_default();
                s.prompt_tokens += b["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                s.completion_tokens += b["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                if b["choices"][0]["message"]["content"]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    s.problems.push(format!("{tag}: no content {b}"));
                }
            }
            "cut" => {
                // Read the role chunk and then 0 to 5 content chunks; then leave.
                let want = 1 + (rng >> 20) % 6;
                let mut text = String::new();
                let mut got = 0;
                while got < want {
                    match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
                        Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
                        other => {
                            s.problems.push(format!("{tag}: stream ended early: {other:?}"));
                            break;
                        }
                    }
                    got = events(&text).count() as u64;
                }
                drop(resp);
                s.dropped_at_ms.insert(tag, now_ms());
                s.chunks += got.saturating_sub(1);
            }
            _ => {
                // "stream" must end with usage and [DONE]; "abort" must end (broken off).
                let mut text = String::new();
                let ended = loop {
                    match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
                        Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
                        Ok(Ok(None) | Err(_)) => break true,
                        Err(_) => break false,
                    }
                };
                if !ended {
                    s.problems.push(format!("{tag}: stream hung"));
                }
                let done = events(&text).any(|e| e == "[DONE]");
                if kind == "stream" {
                    let usage = events(&text)
                        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                        .find(|c| c["usage"].is_object());
                    match (done, usage) {
                        (true, Some(c)) => {
                            s.prompt_tokens += c["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                            s.completion_tokens += c["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                        }
                        _ => s.problems.push(format!("{tag}: incomplete stream {text}")),
                    }
                } else if done {
                    s.problems
                        .push(format!("{tag}: a broken-off stream ended with [DONE]"));
                }
            }
        }
    }
    seen
}

/// The resident set of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

async fn soak(shape: Shape) {
    let secs: u64 = std::env::var("LLMGW_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let gw = Gateway::start_extra(
        shape,
        Extra {
            providers: PROVIDERS,
            models: MODELS,
            // A third of the pool's first tries fail: let every one fall back (the
            // retry budget's own refusals are tested in routing.rs).
            top: "routing:\n  retry_budget: { ratio: 1.0, min_concurrency: 64 }\n",
            max_in_flight: Some(256),
            ..Extra::default()
        },
    )
    .await;
    gw.fault("flaky", json!({"fail_every": 5, "status": 500})).await;
    gw.fault("resets", json!({"fail_every": 7, "reset": true})).await;
    let mut keys = HashMap::new();
    for kind in KINDS {
        keys.insert(kind, create_key(&gw.config, &format!("soak-{kind}"), None).await);
    }
    let (gw, keys) = (Arc::new(gw), Arc::new(keys));
    let emu = format!("http://{}", gw.emu.addr);
    let http = crate::harness::http_client();
    let ledger = || {
        let (http, emu) = (http.clone(), emu.clone());
        async move {
            http.get(format!("{emu}/_emu/ledger"))
                .send()
                .await
                .expect("ledger")
                .json::<Value>()
                .await
                .expect("ledger json")
        }
    };

    // ---- the run, with the gateway's memory sampled every 250 ms
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let pids: Vec<u32> = gw.children.iter().filter_map(tokio::process::Child::id).collect();
    let sampler = {
        let pids = pids.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                samples.push(pids.iter().map(|p| rss_kib(*p)).sum::<u64>());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(Arc::clone(&gw), Arc::clone(&keys), id, until)))
        .collect();
    let mut seen: HashMap<&'static str, Seen> = KINDS.iter().map(|k| (*k, Seen::default())).collect();
    for c in clients {
        for (kind, s) in c.await.expect("client") {
            let all = seen.get_mut(kind).expect("kind");
            all.requests += s.requests;
            all.prompt_tokens += s.prompt_tokens;
            all.completion_tokens += s.completion_tokens;
            all.chunks += s.chunks;
            all.dropped_at_ms.extend(s.dropped_at_ms);
            all.problems.extend(s.problems);
        }
    }
    let samples = sampler.await.expect("sampler");
    let problems: Vec<&String> = seen.values().flat_map(|s| &s.problems).collect();
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    for kind in KINDS {
        assert!(
            seen[kind].requests >= 5,
            "too few `{kind}` requests: {:?}",
            seen[kind]
        );
    }

    // ---- nothing left in flight upstream, no connection leaked, every cut cancelled
    let deadline = Instant::now() + Duration::from_secs(5);
    let book = loop {
        let book = ledger().await;
        let cancelled = book["cancelled_at_ms"]
            .as_object()
            .map_or(0, serde_json::Map::len);
        // The gateway keeps at most one pooled connection per request it had in flight
        // (one per client), and this test's own clients one or two; a connection the
        // gateway let go may take a moment to close at the emulator.
        let open = book["open_connections"].as_i64().unwrap_or(i64::MAX);
        let mut idle = cancelled >= seen["cut"].dropped_at_ms.len() && open <= (CLIENTS + 2) as i64;
        for profile in ["flaky", "resets"] {
            let r = http
                .get(format!("{emu}/_emu/faults/{profile}"))
                .send()
                .await
                .expect("faults")
                .json::<Value>()
                .await
                .expect("faults json");
            idle &= r["in_flight"] == 0;
        }
        if idle {
            break book;
        }
        assert!(
            Instant::now() < deadline,
            "upstream still busy after the run ({open} connections open): {book}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let open = book["open_connections"].as_i64().expect("open_connections");
    let mut slowest = 0;
    for (tag, dropped) in &seen["cut"].dropped_at_ms {
        let at = book["cancelled_at_ms"][tag]
            .as_u64()
            .unwrap_or_else(|| panic!("{tag} was never cancelled upstream"));
        slowest = slowest.max(at.saturating_sub(*dropped));
    }
    assert!(
        slowest <= 1000,
        "a cut stream was cancelled upstream {slowest} ms after its client left"
    );

    // ---- flat memory: the last quarter of the run against the first (after warm-up)
    let q = samples.len() / 4;
    assert!(q >= 2, "too few memory samples: {samples:?}");
    let (first, last) = (
        median(samples[q..2 * q].to_vec()),
        median(samples[3 * q..].to_vec()),
    );
    assert!(
        last <= first + first / 5 + 2048,
        "memory grew from {first} KiB to {last} KiB: {samples:?}"
    );

    // ---- metering: every request once; tokens as the emulator counted them
    let classes = &book["classes"];
    for kind in KINDS {
        let s = &seen[kind];
        let org = format!("soak-{kind}");
        let usage = gw.usage_until(&org, |u| u["requests"] == s.requests).await;
        assert_eq!(usage["requests"], s.requests, "{kind}: {usage}");
        let class = &classes[format!("soak-{kind}")];
        match kind {
            "ok" | "stream" => {
                assert_eq!(class["completed"], s.requests, "{kind}: {class}");
                assert_eq!(class["cancelled"], 0, "{kind}: {class}");
                assert_eq!(usage["input_tokens"], class["prompt_tokens"], "{kind}");
                assert_eq!(usage["output_tokens"], class["completion_tokens"], "{kind}");
                assert_eq!(
                    usage["input_tokens"], s.prompt_tokens,
                    "{kind}: as the clients were told"
                );
                assert_eq!(
                    usage["output_tokens"], s.completion_tokens,
                    "{kind}: as the clients were told"
                );
            }
            "cut" => {
                assert_eq!(class["cancelled"], s.requests, "{class}");
                let out = usage["output_tokens"].as_u64().expect("output_tokens");
                assert!(
                    out >= s.chunks,
                    "{out} output tokens metered, the clients saw {} chunks",
                    s.chunks
                );
                assert!(
                    out <= class["cancelled_completion_tokens"].as_u64().expect("tokens"),
                    "more metered than the answers had: {out} vs {class}"
                );
            }
            "abort" => assert_eq!(class["aborted"], s.requests, "{class}"),
            _ => assert!(
                class.is_null(),
                "no dead-provider request reached the emulator: {class}"
            ),
        }
    }
    eprintln!(
        "soak {shape:?} {secs}s: {} requests, slowest cancel {slowest} ms, memory {first}→{last} KiB, {open} upstream connections open",
        seen.values().map(|s| s.requests).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_in_one_process() {
    soak(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_across_five_processes() {
    soak(Shape::Split).await;
}
