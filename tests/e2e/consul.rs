//! Consul discovery and the graceful lifecycle, with a real `consul agent
//! -dev` and every service as its own process: replicas join and leave the
//! edge's balanced channels without restarting it, a killed replica stops
//! getting traffic once its gRPC health check fails, SIGTERM deregisters at
//! once, and a rolling restart of every dependency cuts no stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::process::Child;

use crate::harness::{Consul, Extra, Gateway, Shape, chunks, free_addr, joined, user};

/// Logs each adapter's served calls (the observable of where traffic went)
/// and the discovery events.
const LOG: &str = "warn,llmgw_kit::services=debug,llmgw_kit::discovery=info,llmgw_kit::shutdown=info";

async fn start(consul: &Consul) -> Gateway {
    let gw = Gateway::start_extra(
        Shape::Split,
        Extra {
            consul: Some(consul),
            log_level: Some(LOG),
            max_in_flight: Some(256),
            ..Extra::default()
        },
    )
    .await;
    for service in [
        "llmgw-auth",
        "llmgw-router",
        "llmgw-adapter",
        "llmgw-metering",
        "llmgw-edge",
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while consul.passing(service).await.len() != 1 {
            assert!(Instant::now() < deadline, "{service} never passed its check");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    gw
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": user(text)})
}

/// Sends `n` chat requests at once; the statuses that were not 200.
async fn burst(gw: &Gateway, n: usize) -> Vec<String> {
    let calls = (0..n).map(|i| async move {
        let (status, _, body) = gw
            .post("/v1/chat/completions", &chat(&format!("burst {i}")))
            .await;
        (status, body)
    });
    join_all(calls)
        .await
        .into_iter()
        .filter(|(status, _)| *status != 200)
        .map(|(status, body)| format!("{status}: {body}"))
        .collect()
}

/// How many calls the adapter logging into `logs/<name>.log` served.
fn served(gw: &Gateway, name: &str) -> usize {
    gw.log_of(name).matches("adapter serves").count()
}

fn port_of(gw: &Gateway, role: &str) -> u16 {
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("  {role}: {{ addr: ")))
        .unwrap();
    let addr = line.split("addr: ").nth(1).unwrap().trim_end_matches(" }");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The harness's children: auth, router, adapter, metering, edge.
const ROLES: [&str; 4] = ["auth", "router", "adapter", "metering"];
const ADAPTER: usize = 2;
/// Far below the minute a crashed instance stays in the catalog, with room
/// for a loaded machine.
const DEREGISTERED_WITHIN: Duration = Duration::from_secs(5);
const EDGE: usize = 4;

fn edge_pid(gw: &Gateway) -> u32 {
    gw.children[EDGE].id().expect("the edge runs")
}

#[tokio::test]
async fn replicas_join_leave_and_rejoin_through_consul() {
    let mut consul = Consul::start().await;
    let mut gw = start(&consul).await;
    let edge = edge_pid(&gw);
    let first = port_of(&gw, "adapter");

    assert_eq!(burst(&gw, 5).await, Vec::<String>::new());
    let before = served(&gw, "adapter");
    assert!(before >= 5, "the adapter served {before}");

    // A second adapter joins: traffic reaches it, and still the first.
    let second = free_addr();
    let mut replica = gw.spawn_replica("adapter", second, "adapter2");
    consul
        .wait_passing("llmgw-adapter", &[first, second.port()])
        .await;
    // The edge's watch learns of it shortly after Consul does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&gw, "adapter2") == 0 {
        assert!(Instant::now() < deadline, "the new adapter got no traffic");
        assert_eq!(burst(&gw, 10).await, Vec::<String>::new());
    }
    let (a, b) = (served(&gw, "adapter"), served(&gw, "adapter2"));
    assert_eq!(burst(&gw, 40).await, Vec::<String>::new());
    assert!(
        served(&gw, "adapter") > a,
        "the first adapter got no more traffic"
    );
    assert!(
        served(&gw, "adapter2") > b,
        "the second adapter got no more traffic"
    );

    // SIGKILL: no deregistration; once its check is critical, no request fails.
    replica.start_kill().unwrap();
    let _ = replica.wait().await;
    consul.wait_passing("llmgw-adapter", &[first]).await;
    let mut both = vec![first, second.port()];
    both.sort_unstable();
    assert_eq!(
        consul.registered("llmgw-adapter").await,
        both,
        "a killed process stays registered (critical) until Consul reaps it"
    );
    // The edge's watch follows Consul's view a moment later.
    let left = format!("instance left service=\"llmgw-adapter\" addr={second}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log_of("edge").contains(&left) {
        assert!(
            Instant::now() < deadline,
            "the edge did not drop the killed adapter"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(burst(&gw, 60).await, Vec::<String>::new());

    // Restarted on the same port, it rejoins and gets traffic again.
    let killed_served = served(&gw, "adapter2");
    let _replica = gw.spawn_replica("adapter", second, "adapter2");
    consul
        .wait_passing("llmgw-adapter", &[first, second.port()])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&gw, "adapter2") == killed_served {
        assert!(Instant::now() < deadline, "the restarted adapter got no traffic");
        assert_eq!(burst(&gw, 10).await, Vec::<String>::new());
    }

    // SIGTERM deregisters at once (a killed process, above, stays in the
    // catalog until Consul reaps it after a minute).
    sigterm(&gw.children[ADAPTER]);
    let t0 = Instant::now();
    while consul.registered("llmgw-adapter").await != [second.port()] {
        assert!(
            t0.elapsed() < DEREGISTERED_WITHIN,
            "still registered {:?} after SIGTERM",
            consul.registered("llmgw-adapter").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(30), gw.children[ADAPTER].wait())
        .await
        .expect("the adapter exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "graceful exit: {status}");
    assert_eq!(burst(&gw, 20).await, Vec::<String>::new());

    // Consul goes away: the edge keeps its last known instances.
    consul.kill().await;
    assert_eq!(burst(&gw, 20).await, Vec::<String>::new());
    // A new (empty) agent: every service registers again on its own, and
    // the edge's watch starts over and follows the new agent.
    consul.restart().await;
    for service in ["llmgw-auth", "llmgw-router", "llmgw-metering", "llmgw-edge"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while consul.passing(service).await.len() != 1 {
            assert!(Instant::now() < deadline, "{service} did not register again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    consul.wait_passing("llmgw-adapter", &[second.port()]).await;
    let third = free_addr();
    let _third = gw.spawn_replica("adapter", third, "adapter3");
    consul
        .wait_passing("llmgw-adapter", &[second.port(), third.port()])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&gw, "adapter3") == 0 {
        assert!(
            Instant::now() < deadline,
            "an adapter that joined the new agent got no traffic"
        );
        assert_eq!(burst(&gw, 10).await, Vec::<String>::new());
    }

    // All along, the same edge process.
    assert_eq!(edge_pid(&gw), edge);
    assert!(
        gw.children[EDGE].try_wait().unwrap().is_none(),
        "the edge is still running"
    );
}

#[tokio::test]
async fn rolling_restart_of_every_dependency_cuts_no_stream() {
    let consul = Consul::start().await;
    let mut gw = start(&consul).await;

    // Long streams: 30 words, 100 ms apart (~3 s), begun before any restart.
    let long = json!({
        "model": "gpt-4o-mini", "stream": true,
        "messages": user("[emu:words=30] [emu:chunk_delay_ms=100] long"),
    });
    let streams: Vec<_> = (0..3).map(|_| gw.stream(&long)).collect();
    // New requests keep coming all along.
    let stop = AtomicBool::new(false);
    let steady = async {
        let mut failures = Vec::new();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            failures.extend(burst(&gw, 4).await);
            sent += 4;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (sent, failures)
    };
    let restarts = async {
        // Let the streams get going on the current instances.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut replacements = Vec::new();
        for role in ["adapter", "router", "auth", "metering"] {
            let i = ROLES.iter().position(|r| *r == role).unwrap();
            let service = format!("llmgw-{role}");
            let current = port_of(&gw, role);
            let next = free_addr();
            replacements.push(gw.spawn_replica(role, next, &format!("{role}-next")));
            consul.wait_passing(&service, &[current, next.port()]).await;
            sigterm(&gw.children[i]);
            consul.wait_passing(&service, &[next.port()]).await;
        }
        replacements
    };
    let work = async {
        let done = tokio::join!(join_all(streams), restarts);
        stop.store(true, Ordering::Relaxed);
        done
    };
    let ((results, _replacements), (sent, failures)) = tokio::join!(work, steady);
    for events in results {
        let chunks = chunks(&events);
        let text = joined(&chunks, "content");
        assert_eq!(text.split_whitespace().count(), 30, "a stream was cut: {text:?}");
    }
    assert!(sent > 0);
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "of {sent} requests during the restarts"
    );
    for (i, role) in ROLES.into_iter().enumerate() {
        let status = tokio::time::timeout(Duration::from_secs(30), gw.children[i].wait())
            .await
            .unwrap_or_else(|_| panic!("{role} did not exit after SIGTERM"))
            .unwrap();
        assert!(status.success(), "{role} exited {status}");
    }
    assert!(
        gw.children[EDGE].try_wait().unwrap().is_none(),
        "the edge is still running"
    );

    // The edge itself: SIGTERM deregisters it and lets its open stream end.
    let term = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sigterm(&gw.children[EDGE]);
        let t0 = Instant::now();
        while !consul.registered("llmgw-edge").await.is_empty() {
            assert!(t0.elapsed() < DEREGISTERED_WITHIN, "the edge is still registered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (events, ()) = tokio::join!(gw.stream(&long), term);
    let text = joined(&chunks(&events), "content");
    assert_eq!(
        text.split_whitespace().count(),
        30,
        "the edge cut its stream: {text:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), gw.children[EDGE].wait())
        .await
        .expect("the edge exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "edge exited {status}");
}

#[tokio::test]
async fn the_drain_window_bounds_a_graceful_stop() {
    // Static discovery: the window holds whatever the discovery.
    let mut gw = Gateway::start_extra(
        Shape::Split,
        Extra {
            top: "shutdown: { drain: 500ms }\n",
            ..Extra::default()
        },
    )
    .await;
    // ~3 s of stream, far longer than the window.
    let long = json!({
        "model": "gpt-4o-mini", "stream": true,
        "messages": user("[emu:words=30] [emu:chunk_delay_ms=100] long"),
    });
    let term = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sigterm(&gw.children[ADAPTER]);
        Instant::now()
    };
    let (events, t0) = tokio::join!(gw.stream(&long), term);
    let stopped = tokio::time::timeout(Duration::from_secs(30), gw.children[ADAPTER].wait())
        .await
        .expect("the adapter exits")
        .unwrap();
    let took = t0.elapsed();
    assert!(stopped.success(), "{stopped}");
    assert!(
        took < Duration::from_millis(2000),
        "the adapter took {took:?} to stop"
    );
    assert_ne!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "the stream outlived the drain window"
    );
}
