use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use llmgw_kit::services::MeteringService;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;

use super::*;

/// Fails the first `fail` calls, then takes `allow` more (unbounded by
/// default), then fails again; records the request ids it took.
struct Flaky {
    fail: AtomicUsize,
    allow: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

impl Default for Flaky {
    fn default() -> Self {
        Self {
            fail: AtomicUsize::new(0),
            allow: AtomicUsize::new(usize::MAX),
            seen: Mutex::new(Vec::new()),
        }
    }
}

impl Flaky {
    fn down() -> Arc<Self> {
        let f = Self::default();
        f.allow.store(0, Ordering::SeqCst);
        Arc::new(f)
    }

    fn up(&self) {
        self.allow.store(usize::MAX, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl MeteringService for Flaky {
    async fn record(&self, events: Vec<UsageEvent>) -> Result<pb::RecordAck, GwError> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(GwError::new(ErrorCode::Unavailable, "down"));
        }
        let allowed = self
            .allow
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| match a {
                0 => None,
                usize::MAX => Some(usize::MAX),
                a => Some(a - 1),
            });
        if allowed.is_err() {
            return Err(GwError::new(ErrorCode::Unavailable, "down"));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.extend(events.iter().map(|e| e.request_id.clone()));
        Ok(pb::RecordAck {
            accepted: events.len() as u64,
            duplicates: 0,
        })
    }
    async fn get_usage(&self, _q: pb::UsageQuery) -> Result<pb::UsageSummary, GwError> {
        Ok(pb::UsageSummary::default())
    }
}

fn event(i: usize) -> UsageEvent {
    UsageEvent {
        request_id: format!("r{i}"),
        org_id: "org".into(),
        input_tokens: 10,
        output_tokens: 20,
        ..Default::default()
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("r{i}")).collect()
}

fn config(buffer: usize, batch_size: usize) -> MeteringConfig {
    MeteringConfig {
        flush_interval: Duration::from_millis(10),
        batch_size,
        buffer,
        spool_dir: None,
        spool_max_bytes: 1 << 20,
        // A few events per segment.
        spool_segment_bytes: 64,
        ..MeteringConfig::default()
    }
}

/// The spool's segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "bin"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Polls `cond` every few ms for up to 10 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn batches_survive_an_outage_in_order() {
    let flaky = Arc::new(Flaky {
        fail: AtomicUsize::new(3),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (tx, task) = spawn(flaky.clone(), config(1000, 4), dir.path().into()).expect("the shipper starts");
    for i in 0..10 {
        tx.send(event(i));
    }
    drop(tx);
    task.await.unwrap();
    assert_eq!(flaky.seen(), ids(0..10));
    assert!(
        segments(dir.path()).is_empty(),
        "a short outage never touches the disk"
    );
}

#[tokio::test]
async fn healthy_metering_never_touches_the_disk() {
    let flaky = Arc::new(Flaky::default());
    let dir = tempfile::tempdir().unwrap();
    let (tx, task) = spawn(flaky.clone(), config(0, 4), dir.path().into()).expect("the shipper starts");
    for i in 0..50 {
        tx.send(event(i));
    }
    until("all recorded", || flaky.seen().len() == 50).await;
    assert_eq!(tx.stats().spilled.load(Ordering::SeqCst), 0);
    assert!(segments(dir.path()).is_empty());
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn events_past_memory_spill_and_drain_oldest_first() {
    let flaky = Flaky::down();
    let dir = tempfile::tempdir().unwrap();
    let (tx, task) = spawn(flaky.clone(), config(4, 3), dir.path().into()).expect("the shipper starts");
    for i in 0..30 {
        tx.send(event(i));
    }
    // Four stay in memory, the rest go to disk in several segments.
    until("26 spilled", || tx.stats().spilled.load(Ordering::SeqCst) == 26).await;
    assert!(segments(dir.path()).len() > 2, "{:?}", segments(dir.path()));
    assert!(flaky.seen().is_empty());
    flaky.up();
    until("all recorded", || flaky.seen().len() == 30).await;
    assert_eq!(
        flaky.seen(),
        ids(0..30),
        "memory first, then the spool oldest first"
    );
    until("segments deleted", || segments(dir.path()).is_empty()).await;
    assert_eq!(tx.stats().dropped.load(Ordering::SeqCst), 0);
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn a_segment_is_deleted_only_after_all_of_it_is_acknowledged() {
    let flaky = Flaky::down();
    let dir = tempfile::tempdir().unwrap();
    // Batches of one: the first segment takes several sends.
    let (tx, task) = spawn(flaky.clone(), config(0, 1), dir.path().into()).expect("the shipper starts");
    for i in 0..12 {
        tx.send(event(i));
    }
    until("12 spilled", || tx.stats().spilled.load(Ordering::SeqCst) == 12).await;
    let before = segments(dir.path());
    assert!(before.len() >= 2, "{before:?}");
    let (events, _) = spool::read_segment(&before[0]).unwrap();
    assert!(events.len() >= 2, "the first segment holds several events");
    // Metering takes one batch (one event), then fails again.
    flaky.allow.store(1, Ordering::SeqCst);
    until("one recorded", || flaky.seen().len() == 1).await;
    tokio::task::yield_now().await;
    assert_eq!(flaky.seen(), ids(0..1));
    assert_eq!(segments(dir.path()), before, "a part-acknowledged segment stays");
    flaky.up();
    until("all recorded", || flaky.seen().len() == 12).await;
    until("segments deleted", || segments(dir.path()).is_empty()).await;
    assert_eq!(flaky.seen(), ids(0..12));
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn a_spool_left_by_a_previous_run_is_replayed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spool = spool::Spool::open(dir.path(), 1 << 20, 64).unwrap();
        for i in 0..10 {
            spool.append(&event(i)).unwrap();
        }
        // Dropped with its last segment open, as a killed edge leaves it.
    }
    // ... and that segment ends in a record cut short.
    let last = segments(dir.path()).pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, &[0x40, 1, 2]).unwrap();
    drop(f);

    let flaky = Arc::new(Flaky::default());
    let (tx, task) = spawn(flaky.clone(), config(100, 4), dir.path().into()).expect("the shipper starts");
    until("replayed", || flaky.seen().len() == 10).await;
    assert_eq!(flaky.seen(), ids(0..10));
    until("segments deleted", || segments(dir.path()).is_empty()).await;
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_while_metering_is_down_spools_memory_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::down();
    let (tx, task) = spawn(flaky.clone(), config(100, 4), dir.path().into()).expect("the shipper starts");
    for i in 0..5 {
        tx.send(event(i));
    }
    drop(tx);
    task.await.unwrap();
    assert!(!segments(dir.path()).is_empty());

    let flaky = Arc::new(Flaky::default());
    let (tx, task) = spawn(flaky.clone(), config(100, 4), dir.path().into()).expect("the shipper starts");
    until("replayed", || flaky.seen().len() == 5).await;
    assert_eq!(flaky.seen(), ids(0..5));
    drop(tx);
    task.await.unwrap();
}

#[tokio::test]
async fn a_full_spool_refuses_and_counts() {
    let flaky = Flaky::down();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(0, 4);
    // Room for a handful of events only.
    cfg.spool_max_bytes = 120;
    let (tx, task) = spawn(flaky.clone(), cfg, dir.path().into()).expect("the shipper starts");
    for i in 0..40 {
        tx.send(event(i));
    }
    let stats = tx.stats();
    until("every event spilled or refused", || {
        stats.spilled.load(Ordering::SeqCst) + stats.dropped.load(Ordering::SeqCst) == 40
    })
    .await;
    let spilled = stats.spilled.load(Ordering::SeqCst) as usize;
    assert!(spilled > 0 && spilled < 10, "spilled {spilled}");
    let on_disk: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= 120, "the cap holds: {on_disk} bytes");
    flaky.up();
    until("the spooled ones recorded", || flaky.seen().len() == spilled).await;
    assert_eq!(
        flaky.seen(),
        ids(0..spilled),
        "the oldest kept, the newest refused"
    );
    drop(tx);
    task.await.unwrap();
}

#[test]
fn a_spool_serves_one_edge_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _first = spool::Spool::open(dir.path(), 1 << 20, 64).unwrap();
    assert!(spool::Spool::open(dir.path(), 1 << 20, 64).is_err());
}
