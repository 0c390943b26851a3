//! Ships usage events to `usage-metering`, off the response path.
//!
//! Request handlers hand events to [`MeterSender::send`], which never waits.
//! One task batches them (up to `batch_size`, or every `flush_interval`),
//! sends each batch over the client-streaming `Record` RPC, and keeps failed
//! batches to retry with backoff while metering is down. Metering is
//! idempotent by request id, so a batch retried after an ambiguous failure is
//! not counted twice.

use std::collections::VecDeque;
use std::time::Duration;

use llmgw_kit::config::MeteringConfig;
use llmgw_kit::services::Metering;
use llmgw_proto::UsageEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Hands usage events to the shipper.
#[derive(Clone)]
pub struct MeterSender(mpsc::Sender<UsageEvent>);

impl MeterSender {
    /// Queues `event` without waiting. A full queue means metering has been
    /// unreachable for long enough to hold `metering.buffer` events: the
    /// event is logged (ids and counts only) and dropped.
    pub fn send(&self, event: UsageEvent) {
        if let Err(e) = self.0.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            tracing::error!(
                request_id = %event.request_id,
                input_tokens = event.input_tokens,
                output_tokens = event.output_tokens,
                "metering queue full; usage event dropped"
            );
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a shutdown waits for metering to take what is still queued.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts the shipper. It exits when every sender is gone, after a last flush.
pub fn spawn(metering: Metering, config: MeteringConfig) -> (MeterSender, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.buffer);
    let task = tokio::spawn(ship(metering, config, rx));
    (MeterSender(tx), task)
}

async fn ship(metering: Metering, config: MeteringConfig, mut rx: mpsc::Receiver<UsageEvent>) {
    let mut pending: VecDeque<UsageEvent> = VecDeque::new();
    let mut backoff = Duration::ZERO;
    let mut ticker = tokio::time::interval(config.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => {
                    if pending.len() >= config.buffer
                        && let Some(lost) = pending.pop_front()
                    {
                        tracing::error!(request_id = %lost.request_id, "metering buffer full; oldest usage event dropped");
                    }
                    pending.push_back(event);
                    if pending.len() >= config.batch_size && backoff.is_zero() {
                        flush(&metering, &mut pending, config.batch_size, &mut backoff).await;
                    }
                }
                None => break,
            },
            _ = ticker.tick() => {
                if !pending.is_empty() {
                    flush(&metering, &mut pending, config.batch_size, &mut backoff).await;
                    if !backoff.is_zero() {
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
    }
    // Every sender is gone (the edge stopped): send what is left, trying for
    // a short while if metering is down.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        flush(&metering, &mut pending, config.batch_size, &mut backoff).await;
        if !pending.is_empty() {
            tokio::time::sleep(backoff.min(Duration::from_millis(200))).await;
        }
    }
    if !pending.is_empty() {
        tracing::error!(
            events = pending.len(),
            "metering unreachable at shutdown; usage events lost"
        );
    }
}

/// Sends batches until `pending` is empty or a send fails; a failed batch
/// goes back to the front and `backoff` grows.
async fn flush(
    metering: &Metering,
    pending: &mut VecDeque<UsageEvent>,
    batch_size: usize,
    backoff: &mut Duration,
) {
    while !pending.is_empty() {
        let n = pending.len().min(batch_size);
        let batch: Vec<UsageEvent> = pending.drain(..n).collect();
        match metering.record(batch.clone()).await {
            Ok(ack) => {
                *backoff = Duration::ZERO;
                tracing::debug!(
                    accepted = ack.accepted,
                    duplicates = ack.duplicates,
                    "usage batch recorded"
                );
            }
            Err(e) => {
                *backoff = (*backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                tracing::warn!(error = %e, events = batch.len(), "metering unavailable; will retry");
                for event in batch.into_iter().rev() {
                    pending.push_front(event);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
