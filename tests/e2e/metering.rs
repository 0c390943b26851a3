//! Metering that loses nothing while metering is down: the five services
//! split, load from four clients, and the metering process (then the edge)
//! killed with SIGKILL mid-way. The usage totals must equal, exactly, what
//! the clients were told they used.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Child;

use crate::harness::{Gateway, Shape, chunks, sse_data, user};

/// What the clients were answered, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }

    fn matches(&self, usage: &Value) -> bool {
        usage["requests"].as_u64() == Some(self.requests)
            && usage["input_tokens"].as_u64() == Some(self.input_tokens)
            && usage["output_tokens"].as_u64() == Some(self.output_tokens)
    }
}

/// One chat request, streamed or not; the usage the client was told, or
/// `None` when the edge was at capacity (503, not metered).
async fn chat(client: &reqwest::Client, url: &str, key: &str, i: usize) -> Option<Totals> {
    let stream = i.is_multiple_of(3);
    let prompt = format!("[emu:words={}] request {i} {}", i % 7 + 1, "x".repeat(i % 13));
    let mut body = json!({"model": "gpt-4o-mini", "messages": user(&prompt)});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = client
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    if status == 503 {
        return None;
    }
    assert_eq!(status, 200, "{text}");
    let usage = if stream {
        let chunks = chunks(&sse_data(&text));
        chunks.last().expect("a chunk")["usage"].clone()
    } else {
        serde_json::from_str::<Value>(&text).expect("json")["usage"].clone()
    };
    Some(Totals {
        requests: 1,
        input_tokens: usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        output_tokens: usage["completion_tokens"].as_u64().expect("completion_tokens"),
    })
}

/// Drives requests `from..to` from `clients` concurrent clients (each takes
/// the next index); bumps `done` after each answer. The answered totals.
async fn load(gw: &Gateway, clients: usize, from: usize, to: usize, done: &Arc<AtomicUsize>) -> Totals {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, key) = (gw.client.clone(), gw.url("/v1/chat/completions"), gw.key.clone());
        let (next, done) = (next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut totals = Totals::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= to {
                    return totals;
                }
                // At capacity (a permit not yet released): ask again.
                let got = loop {
                    if let Some(t) = chat(&client, &url, &key, i).await {
                        break t;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                totals.add(got);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut totals = Totals::default();
    for t in tasks {
        totals.add(t.await.expect("client task"));
    }
    totals
}

/// Usage events in the spool's segments (a magic, then varint-delimited
/// records).
fn spooled_events(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "bin") {
            continue;
        }
        let data = std::fs::read(&path).unwrap_or_default();
        let mut at = 8.min(data.len());
        while at < data.len() {
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let Some(b) = data.get(at) else { return n };
                at += 1;
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if at + len > data.len() {
                break;
            }
            at += len;
            n += 1;
        }
    }
    n
}

/// Segment files in the spool.
fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "bin"))
        })
        .count()
    })
}

async fn poll(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn kill(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
}

/// Restarts metering and waits until it accepts connections.
async fn restart_metering(gw: &Gateway) -> Child {
    let child = gw.spawn("metering");
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let addr = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("metering: { addr: "))
        .and_then(|l| l.strip_suffix(" }"))
        .expect("metering addr in the config")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(Instant::now() < deadline, "metering did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

async fn assert_usage(gw: &Gateway, want: Totals) {
    // The edge retries with a backoff of up to 5 s, then drains.
    let mut usage = gw.usage_until("acme", |u| want.matches(u)).await;
    if !want.matches(&usage) {
        usage = gw.usage_until("acme", |u| want.matches(u)).await;
    }
    assert!(want.matches(&usage), "metered {usage}, answered {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_killed_mid_load_loses_nothing() {
    const TOTAL: usize = 300;
    let mut gw = Gateway::start_metering(Shape::Split, "  buffer: 16\n  spool_segment_bytes: 2048\n").await;
    let spool = gw.data_dir().join("meter-spool").join("edge");
    // Order: auth, router, adapter, metering, edge.
    let metering = gw.children.remove(3);
    let done = Arc::new(AtomicUsize::new(0));

    let controller = async {
        poll("60 answers before the kill", 60, || {
            done.load(Ordering::SeqCst) >= 60
        })
        .await;
        kill(metering).await;
        let at_kill = done.load(Ordering::SeqCst);
        poll("200 answers", 60, || done.load(Ordering::SeqCst) >= 200).await;
        // Past the 16 kept in memory, events spill, over several segments.
        poll("events spilled to disk", 10, || segment_files(&spool) >= 2).await;
        let spilled = (spooled_events(&spool), segment_files(&spool));
        let answered_while_down = done.load(Ordering::SeqCst) - at_kill;
        (restart_metering(&gw).await, spilled, answered_while_down)
    };
    let (totals, (metering, (spilled, segments), while_down)) =
        tokio::join!(load(&gw, 4, 0, TOTAL, &done), controller);
    gw.children.insert(3, metering);
    assert_eq!(totals.requests, TOTAL as u64);
    assert_usage(&gw, totals).await;
    poll("the spool drained and its segments deleted", 10, || {
        segment_files(&spool) == 0
    })
    .await;
    eprintln!(
        "metering killed mid-load: {TOTAL} answered, {while_down} while metering was down, \
         {spilled} events in {segments} segments on disk at restart; totals {totals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_left_by_a_killed_edge_is_replayed() {
    // Spill everything once a send has failed, so a killed edge holds nothing in memory.
    let mut gw = Gateway::start_metering(Shape::Split, "  buffer: 0\n  spool_segment_bytes: 1024\n").await;
    let spool = gw.data_dir().join("meter-spool").join("edge");
    let metering = gw.children.remove(3);
    kill(metering).await;
    let done = Arc::new(AtomicUsize::new(0));

    let mut totals = load(&gw, 4, 0, 40, &done).await;
    poll("all 40 events on disk", 15, || spooled_events(&spool) == 40).await;
    let edge = gw.children.pop().expect("the edge");
    kill(edge).await;

    gw.children.push(gw.spawn("edge"));
    gw.wait_healthy().await;
    // Metering still down: these spill behind the replayed spool.
    totals.add(load(&gw, 4, 40, 60, &done).await);
    poll("all 60 events on disk", 15, || spooled_events(&spool) == 60).await;

    let metering = restart_metering(&gw).await;
    gw.children.insert(3, metering);
    assert_eq!(totals.requests, 60);
    assert_usage(&gw, totals).await;
    poll("the spool drained and its segments deleted", 10, || {
        segment_files(&spool) == 0
    })
    .await;
    eprintln!("edge killed with 40 events spooled, 20 more after its restart; totals {totals:?}");
}
