//! Retention of the request log: a background task deletes the events that
//! started before `now - metering.retention`, in batches of [`BATCH`] rows
//! (each its own short statement, found through the `started_at` index),
//! pausing between batches so writers are never held up for long. Never on
//! the insert path. The daily roll-ups are kept.

use std::time::Duration;

use llmgw_kit::GwError;
use llmgw_kit::db::db_error;
use llmgw_kit::shutdown::CancellationToken;
use tokio::task::JoinHandle;

use crate::UsageStore;
use crate::store::now_ms;

/// Rows deleted per statement at most.
pub const BATCH: i64 = 10_000;
/// The pause between two batches of one sweep.
const PAUSE: Duration = Duration::from_millis(200);
/// The time between sweeps (the first runs a minute after start).
const INTERVAL: Duration = Duration::from_secs(3600);
const FIRST: Duration = Duration::from_secs(60);

/// `IN (SELECT … LIMIT)` rather than `DELETE … LIMIT`, which PostgreSQL
/// lacks (and SQLite only has as a compile option).
const DELETE_BATCH: &str = "DELETE FROM usage_events WHERE request_id IN \
     (SELECT request_id FROM usage_events WHERE started_at < $1 LIMIT $2)";

impl UsageStore {
    /// Deletes at most `batch` events that started before `cutoff_ms`; how
    /// many it deleted.
    pub async fn delete_expired_batch(&self, cutoff_ms: i64, batch: i64) -> Result<u64, GwError> {
        Ok(sqlx::query(DELETE_BATCH)
            .bind(cutoff_ms)
            .bind(batch)
            .execute(&self.pool)
            .await
            .map_err(db_error("deleting expired usage events"))?
            .rows_affected())
    }

    /// Deletes every event that started before `cutoff_ms`, `batch` rows at
    /// a time with `pause` between batches, until none is left or `stop` is
    /// cancelled; how many it deleted.
    pub async fn delete_expired(
        &self,
        cutoff_ms: i64,
        batch: i64,
        pause: Duration,
        stop: &CancellationToken,
    ) -> Result<u64, GwError> {
        let mut total = 0;
        loop {
            let deleted = self.delete_expired_batch(cutoff_ms, batch).await?;
            total += deleted;
            if deleted < u64::try_from(batch).unwrap_or(0) {
                return Ok(total);
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(total),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Starts the retention task for `retention` (none when it is zero: events
/// are kept forever); it stops when `stop` is cancelled.
pub fn spawn_retention(
    store: UsageStore,
    retention: Duration,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    if retention.is_zero() {
        return None;
    }
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    Some(tokio::spawn(async move {
        let mut wait = FIRST;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = INTERVAL;
            let cutoff = now_ms().saturating_sub(keep_ms);
            match store.delete_expired(cutoff, BATCH, PAUSE, &stop).await {
                Ok(0) => tracing::debug!("no usage events expired"),
                Ok(deleted) => tracing::info!(deleted, cutoff_ms = cutoff, "expired usage events deleted"),
                Err(e) => {
                    tracing::warn!(error = %e, "deleting expired usage events failed; retrying at the next sweep")
                }
            }
        }
    }))
}
