//! Ships usage events to `usage-metering`, off the response path.
//!
//! Request handlers hand events to [`MeterSender::send`], which never waits.
//! One task, on a thread and runtime of its own so that request traffic never
//! starves it, batches them (up to `batch_size`, or every `flush_interval`) and
//! sends each batch over the client-streaming `Record` RPC. While metering is
//! down it keeps failed batches and retries with backoff, holding up to
//! `buffer` events in memory; beyond that, events spill to the on-disk
//! [`spool`], bounded by `spool_max_bytes` (past it new events are refused:
//! logged at error and counted, never waited for). When metering is back the
//! task sends memory first, then the spool oldest segment first, deleting a
//! segment only once metering acknowledged all of it. A spool left by a
//! previous run is replayed at start. Metering is idempotent by request id,
//! so an event sent twice (after an ambiguous failure, or a segment replayed
//! after a crash) is not counted twice.
//!
//! While metering keeps up, nothing touches the disk.

mod spool;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llmgw_kit::GwError;
use llmgw_kit::config::MeteringConfig;
use llmgw_kit::services::Metering;
use llmgw_proto::UsageEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::spool::{Refused, Spool};

/// Counters of what became of events that could not go straight to metering.
#[derive(Debug, Default)]
pub struct MeterStats {
    /// Events refused: the spool was full (or unusable) or the queue was.
    pub dropped: AtomicU64,
    /// Events written to the spool.
    pub spilled: AtomicU64,
}

/// Hands usage events to the shipper.
#[derive(Clone)]
pub struct MeterSender {
    tx: mpsc::Sender<UsageEvent>,
    stats: Arc<MeterStats>,
}

/// The queue between request handlers and the shipper holds at least this
/// many events (more when `buffer` is larger): it only absorbs the time the
/// shipper spends in one send or one disk write.
const MIN_QUEUE: usize = 4096;

impl MeterSender {
    /// Queues `event` without waiting. A full queue means the shipper is
    /// stuck (metering hangs and the disk too): the event is logged (ids and
    /// counts only), counted and dropped.
    pub fn send(&self, event: UsageEvent) {
        if let Err(e) = self.tx.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            llmgw_kit::metrics::edge().meter_dropped();
            tracing::error!(
                request_id = %event.request_id,
                input_tokens = event.input_tokens,
                output_tokens = event.output_tokens,
                dropped,
                "metering queue full; usage event dropped"
            );
        }
    }

    /// What became of events that could not go straight to metering.
    pub fn stats(&self) -> &MeterStats {
        &self.stats
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While events are waiting, the shipper takes the queue this often rather
/// than being woken by each event.
const GATHER: Duration = Duration::from_millis(10);
/// The in-memory queue gives its room back once empty above this many
/// events (a backlog of up to `buffer` events may have grown it).
const SHRINK_ABOVE: usize = 16_384;
/// How long a shutdown waits for metering to take what is in memory before
/// spooling it for the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts the shipper, spooling to `spool_dir` while metering is down. It
/// exits when every sender is gone, after a last flush.
pub fn spawn(
    metering: Metering,
    config: MeteringConfig,
    spool_dir: PathBuf,
) -> Result<(MeterSender, JoinHandle<()>), GwError> {
    let (tx, rx) = mpsc::channel(config.buffer.max(MIN_QUEUE));
    let stats = Arc::new(MeterStats::default());
    let shipper = Shipper {
        metering,
        config,
        spool_dir,
        pending: VecDeque::new(),
        spool: None,
        draining: None,
        retry_at: None,
        backoff: Duration::ZERO,
        spilling: false,
        stats: stats.clone(),
    };
    let task = run_apart(shipper, rx)
        .map_err(|e| GwError::internal(format!("cannot start the metering shipper: {e}")))?;
    Ok((MeterSender { tx, stats }, task))
}

/// Runs the shipper on a thread of its own, with a runtime of its own: on
/// the request runtime each of its steps (a batch is several round trips to
/// the store) would wait behind every request task queued, and at
/// saturation metering would fall ever further behind. The handle ends when
/// the shipper does.
fn run_apart(shipper: Shipper, rx: mpsc::Receiver<UsageEvent>) -> std::io::Result<JoinHandle<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("llmgw-meter".to_owned())
        .spawn(move || {
            runtime.block_on(shipper.run(rx));
            let _ = done_tx.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// The oldest spool segment, read, and how much of it metering has taken.
struct Draining {
    seq: u64,
    events: Vec<UsageEvent>,
    acked: usize,
}

struct Shipper {
    metering: Metering,
    config: MeteringConfig,
    spool_dir: PathBuf,
    /// Events in memory, oldest first.
    pending: VecDeque<UsageEvent>,
    /// `None` when turned off (`spool_max_bytes: 0`) or unusable.
    spool: Option<Spool>,
    draining: Option<Draining>,
    /// Set while metering is failing: no send before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Whether this outage has spilled yet (to log its start once).
    spilling: bool,
    stats: Arc<MeterStats>,
}

impl Shipper {
    async fn run(mut self, mut rx: mpsc::Receiver<UsageEvent>) {
        self.open_spool().await;
        let interval = self.config.flush_interval;
        let mut flush_at = Instant::now() + interval;
        let mut open = true;
        while open {
            // Take everything queued first, so a long drain of the spool
            // never lets the queue fill.
            loop {
                match rx.try_recv() {
                    Ok(event) => self.accept(event).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !open {
                break;
            }
            let now = Instant::now();
            if self.retry_at.is_none_or(|t| now >= t) {
                // While the spool drains, memory goes first without waiting
                // for its batch to fill, then one batch of the spool.
                let spooled = self.spool.as_ref().is_some_and(|s| !s.is_empty());
                let due = now >= flush_at || spooled;
                if self.pending.len() >= self.config.batch_size || (due && !self.pending.is_empty()) {
                    self.send_memory().await;
                    flush_at = Instant::now() + interval;
                    continue;
                }
                if spooled {
                    self.send_spooled().await;
                    continue;
                }
            }
            if now >= flush_at {
                flush_at = now + interval;
            }
            let wake = match self.retry_at {
                Some(t) if t > now => t,
                _ => flush_at,
            };
            if self.pending.is_empty() {
                // Idle: the next event wakes the thread.
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(event) => self.accept(event).await,
                        None => open = false,
                    },
                    () = tokio::time::sleep_until(wake) => {}
                }
            } else {
                // Busy: gather for a moment and take the queue whole at the
                // top of the loop, rather than waking the thread per event.
                tokio::time::sleep_until(wake.min(now + GATHER)).await;
            }
        }
        self.shutdown().await;
    }

    /// Opens the spool (finding what a previous run left in it).
    async fn open_spool(&mut self) {
        if self.config.spool_max_bytes == 0 {
            return;
        }
        let dir = self.spool_dir.clone();
        let (max, segment) = (self.config.spool_max_bytes, self.config.spool_segment_bytes);
        match tokio::task::spawn_blocking(move || Spool::open(&dir, max, segment)).await {
            Ok(Ok(spool)) => {
                if !spool.is_empty() {
                    tracing::warn!(
                        dir = %self.spool_dir.display(),
                        bytes = spool.bytes(),
                        "usage events spooled by a previous run; replaying them"
                    );
                }
                self.spool = Some(spool);
            }
            Ok(Err(e)) => tracing::error!(
                dir = %self.spool_dir.display(),
                error = %e,
                "metering spool unusable; events beyond memory will be dropped while metering is down"
            ),
            Err(e) => tracing::error!(error = %e, "metering spool open panicked"),
        }
    }

    fn failing(&self) -> bool {
        self.retry_at.is_some()
    }

    /// Takes one event: into memory, or to disk while metering is failing
    /// and memory holds `buffer` events (or, metering too slow to keep up,
    /// memory holds the larger of `buffer` and the queue's minimum).
    async fn accept(&mut self, event: UsageEvent) {
        let n = self.pending.len();
        if (self.failing() && n >= self.config.buffer) || n >= self.config.buffer.max(MIN_QUEUE) {
            self.spill(event).await;
        } else {
            self.pending.push_back(event);
        }
    }

    /// Writes `event` to the spool, or refuses it loudly.
    async fn spill(&mut self, event: UsageEvent) {
        let result = match &mut self.spool {
            Some(spool) => spool.append(&event),
            None => Err(Refused::Full),
        };
        match result {
            Ok(closed) => {
                self.stats.spilled.fetch_add(1, Ordering::Relaxed);
                self.spool_gauge();
                if !self.spilling {
                    self.spilling = true;
                    tracing::warn!(
                        dir = %self.spool_dir.display(),
                        "metering unreachable or behind; spilling usage events to disk"
                    );
                }
                if let Some(file) = closed {
                    sync(file).await;
                }
            }
            Err(why) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                llmgw_kit::metrics::edge().meter_dropped();
                let spool_bytes = self.spool.as_ref().map_or(0, Spool::bytes);
                let error = match &why {
                    Refused::Full => "spool full".to_owned(),
                    Refused::Io(e) => e.to_string(),
                };
                tracing::error!(
                    request_id = %event.request_id,
                    org_id = %event.org_id,
                    input_tokens = event.input_tokens,
                    output_tokens = event.output_tokens,
                    dropped,
                    spool_bytes,
                    in_memory = self.pending.len(),
                    error,
                    "metering down and its spool cannot take more; usage event refused"
                );
            }
        }
    }

    /// Publishes the spool's size (`llmgw_meter_spool_bytes`).
    fn spool_gauge(&self) {
        let bytes = self.spool.as_ref().map_or(0, Spool::bytes);
        llmgw_kit::metrics::edge()
            .meter_spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn succeeded(&mut self) {
        if self.failing() {
            tracing::info!("metering reachable again");
        }
        self.retry_at = None;
        self.backoff = Duration::ZERO;
        // A spill ends when the spool has drained (below), not at each batch
        // that goes through while metering is behind: one warning a spill.
        if self.spool.as_ref().is_none_or(Spool::is_empty) {
            self.spilling = false;
        }
        // A backlog that has gone leaves no peak-sized queue behind.
        if self.pending.is_empty() && self.pending.capacity() > SHRINK_ABOVE {
            self.pending.shrink_to(self.config.batch_size);
        }
    }

    fn failed(&mut self, error: &llmgw_kit::GwError, events: usize) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + self.backoff);
        tracing::warn!(error = %error, events, backoff_ms = self.backoff.as_millis() as u64, "metering unavailable; will retry");
    }

    /// Sends one batch from memory. On failure it goes back to the front,
    /// and what memory holds beyond `buffer` spills to disk.
    async fn send_memory(&mut self) {
        let n = self.pending.len().min(self.config.batch_size);
        let batch: Vec<UsageEvent> = self.pending.drain(..n).collect();
        match self.metering.record(batch.clone()).await {
            Ok(ack) => {
                self.succeeded();
                llmgw_kit::metrics::edge().meter_shipped(n as u64);
                tracing::debug!(
                    accepted = ack.accepted,
                    duplicates = ack.duplicates,
                    "usage batch recorded"
                );
            }
            Err(e) => {
                self.failed(&e, batch.len());
                for event in batch.into_iter().rev() {
                    self.pending.push_front(event);
                }
                if self.pending.len() > self.config.buffer {
                    // The newest go to disk, in order, after what is there.
                    let excess = self.pending.split_off(self.config.buffer);
                    for event in excess {
                        self.spill(event).await;
                    }
                }
            }
        }
    }

    /// Sends one batch from the oldest spool segment; deletes the segment
    /// once metering has acknowledged all of it.
    async fn send_spooled(&mut self) {
        let Some(spool) = &mut self.spool else { return };
        if self.draining.is_none() {
            if spool.oldest().is_none()
                && let Some(file) = spool.close_open()
            {
                sync(file).await;
            }
            let Some(segment) = spool.oldest().cloned() else {
                return;
            };
            let path = segment.path.clone();
            match tokio::task::spawn_blocking(move || spool::read_segment(&path)).await {
                Ok(Ok((events, cut))) => {
                    if cut > 0 {
                        tracing::error!(
                            segment = %segment.path.display(),
                            bytes = cut,
                            events = events.len(),
                            "spool segment ends in a cut-short record (a crash mid-write); its tail is skipped"
                        );
                    }
                    tracing::info!(segment = %segment.path.display(), events = events.len(), "replaying spooled usage events");
                    self.draining = Some(Draining {
                        seq: segment.seq,
                        events,
                        acked: 0,
                    });
                }
                Ok(Err(e)) => {
                    tracing::error!(segment = %segment.path.display(), error = %e, "spool segment unreadable; kept aside as .bad");
                    if let Err(e) = spool.remove_oldest(true) {
                        tracing::error!(error = %e, "cannot set aside a bad spool segment");
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool read panicked");
                    // Try again later rather than spin.
                    self.retry_at = Some(Instant::now() + MAX_BACKOFF);
                    return;
                }
            }
        }
        let Some(draining) = &self.draining else { return };
        let end = (draining.acked + self.config.batch_size).min(draining.events.len());
        let batch = draining.events[draining.acked..end].to_vec();
        let (seq, total) = (draining.seq, draining.events.len());
        let sent = batch.len();
        let result = if batch.is_empty() {
            Ok(None)
        } else {
            self.metering.record(batch).await.map(Some)
        };
        match result {
            Ok(_) => {
                self.succeeded();
                llmgw_kit::metrics::edge().meter_shipped(sent as u64);
                if let Some(d) = &mut self.draining {
                    d.acked = end;
                }
                if end == total {
                    self.draining = None;
                    if let Some(spool) = &mut self.spool {
                        debug_assert_eq!(spool.oldest().map(|s| s.seq), Some(seq));
                        if let Err(e) = spool.remove_oldest(false) {
                            tracing::error!(error = %e, "cannot delete a drained spool segment");
                        }
                        if spool.is_empty() {
                            tracing::info!("metering spool drained");
                        }
                    }
                    self.spool_gauge();
                }
            }
            Err(e) => self.failed(&e, sent),
        }
    }

    /// Every sender is gone (the edge stopped): sends what memory holds,
    /// trying for a short while if metering is down, and spools the rest for
    /// the next start.
    async fn shutdown(mut self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !self.pending.is_empty() && Instant::now() < deadline {
            if let Some(t) = self.retry_at {
                tokio::time::sleep_until(t.min(deadline)).await;
            }
            self.send_memory().await;
        }
        let left = self.pending.len();
        for event in std::mem::take(&mut self.pending) {
            self.spill(event).await;
        }
        if let Some(file) = self.spool.as_mut().and_then(Spool::close_open) {
            sync(file).await;
        }
        if left > 0 {
            tracing::warn!(
                events = left,
                "metering unreachable at shutdown; usage events spooled for the next start"
            );
        }
        if let Some(spool) = self.spool.as_ref().filter(|s| !s.is_empty()) {
            tracing::warn!(
                dir = %self.spool_dir.display(),
                bytes = spool.bytes(),
                "usage events left in the spool; the next start replays them"
            );
        }
    }
}

/// Flushes a closed segment to disk, off the async threads.
async fn sync(file: std::fs::File) {
    match tokio::task::spawn_blocking(move || file.sync_all()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot fsync a spool segment"),
        Err(e) => tracing::error!(error = %e, "spool fsync panicked"),
    }
}

#[cfg(test)]
mod tests;
