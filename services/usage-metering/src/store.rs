//! The usage store and the `MeteringService` over it.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use llmgw_kit::GwError;
use llmgw_kit::config::Config;
use llmgw_kit::db::{self, MigrationSpec, db_error};
use llmgw_kit::pricing::{Tokens, cost_usd};
use llmgw_kit::services::{Metering, MeteringService};
use llmgw_proto as pb;
use sqlx::{AnyPool, Row as _};

/// The schema, in order; portable SQL.
const MIGRATIONS: &[MigrationSpec] = &[(1, "usage events", include_str!("../migrations/0001_init.sql"))];

const INSERT_EVENT: &str = "INSERT INTO usage_events (\
     request_id, org_id, project_id, key_id, model, provider, provider_model, \
     input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd, \
     estimated, streamed, status, http_status, started_at, latency_ms, recorded_at\
     ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
     ON CONFLICT (request_id) DO NOTHING";

/// Sums are cast so both backends return BIGINT and DOUBLE PRECISION
/// (PostgreSQL's `SUM(BIGINT)` is NUMERIC, which the Any driver cannot read).
const USAGE_BY_MODEL: &str = "SELECT model, provider, COUNT(*), \
     CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
     CAST(SUM(cost_usd) AS DOUBLE PRECISION) \
     FROM usage_events WHERE org_id = $1 \
     GROUP BY model, provider \
     ORDER BY SUM(cost_usd) DESC, model, provider";

/// Usage events. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct UsageStore {
    pool: AnyPool,
}

impl fmt::Debug for UsageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageStore").finish_non_exhaustive()
    }
}

/// Opens (creating and migrating if needed) `<data_dir>/metering.db`.
pub async fn open(config: &Config) -> Result<UsageStore, GwError> {
    let pool = db::open_sqlite(&config.data_dir, "metering.db", MIGRATIONS).await?;
    Ok(UsageStore { pool })
}

/// The metering service over `store`, as the one client type callers use.
pub fn service(store: UsageStore) -> Metering {
    Arc::new(store)
}

#[async_trait]
impl MeteringService for UsageStore {
    /// Writes the batch in one transaction: all of it or none. An event whose
    /// request id is already stored (or earlier in the batch) is a duplicate
    /// and changes nothing.
    async fn record(&self, events: Vec<pb::UsageEvent>) -> Result<pb::RecordAck, GwError> {
        for (i, event) in events.iter().enumerate() {
            validate(i, event)?;
        }
        let mut ack = pb::RecordAck::default();
        if events.is_empty() {
            return Ok(ack);
        }
        let recorded_at = now_ms();
        // The first statement is a write, so SQLite takes its write lock at once.
        let mut tx = self.pool.begin().await.map_err(db_error("recording usage"))?;
        for event in &events {
            let price = event.price.unwrap_or_default();
            let cost = cost_usd(
                &price,
                Tokens {
                    input: event.input_tokens,
                    output: event.output_tokens,
                    cached: event.cached_tokens,
                },
            );
            let inserted = sqlx::query(INSERT_EVENT)
                .bind(&event.request_id)
                .bind(&event.org_id)
                .bind(event.project_id.as_deref())
                .bind(&event.key_id)
                .bind(&event.model)
                .bind(&event.provider)
                .bind(&event.provider_model)
                .bind(i64::from(event.input_tokens))
                .bind(i64::from(event.output_tokens))
                .bind(i64::from(event.cached_tokens))
                .bind(i64::from(event.reasoning_tokens))
                .bind(cost)
                .bind(event.estimated)
                .bind(event.streamed)
                .bind(&event.status)
                .bind(i32::try_from(event.http_status).unwrap_or(i32::MAX))
                .bind(event.started_at_ms)
                .bind(event.latency_ms)
                .bind(recorded_at)
                .execute(&mut *tx)
                .await
                .map_err(db_error("recording usage"))?
                .rows_affected();
            if inserted == 0 {
                ack.duplicates += 1;
            } else {
                ack.accepted += 1;
            }
        }
        tx.commit().await.map_err(db_error("recording usage"))?;
        if ack.duplicates > 0 {
            tracing::debug!(
                accepted = ack.accepted,
                duplicates = ack.duplicates,
                "usage batch had duplicates"
            );
        }
        Ok(ack)
    }

    /// One org's totals and its breakdown per (model, provider), costliest first.
    async fn get_usage(&self, query: pb::UsageQuery) -> Result<pb::UsageSummary, GwError> {
        if query.org_id.is_empty() {
            return Err(GwError::invalid("org_id", "org_id must not be empty"));
        }
        let rows = sqlx::query(USAGE_BY_MODEL)
            .bind(&query.org_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading usage"))?;
        let mut summary = pb::UsageSummary::default();
        for row in rows {
            let read = || -> Result<pb::ModelUsage, sqlx::Error> {
                Ok(pb::ModelUsage {
                    model: row.try_get(0)?,
                    provider: row.try_get(1)?,
                    requests: count(row.try_get(2)?),
                    input_tokens: count(row.try_get(3)?),
                    output_tokens: count(row.try_get(4)?),
                    cost_usd: row.try_get(5)?,
                })
            };
            let usage = read().map_err(db_error("reading usage"))?;
            summary.requests = summary.requests.saturating_add(usage.requests);
            summary.input_tokens = summary.input_tokens.saturating_add(usage.input_tokens);
            summary.output_tokens = summary.output_tokens.saturating_add(usage.output_tokens);
            summary.cost_usd += usage.cost_usd;
            summary.by_model.push(usage);
        }
        Ok(summary)
    }
}

/// Rejects an event that cannot be stored or would corrupt the totals,
/// naming the field and its place in the batch.
fn validate(i: usize, event: &pb::UsageEvent) -> Result<(), GwError> {
    for (field, value) in [("request_id", &event.request_id), ("org_id", &event.org_id)] {
        if value.is_empty() {
            return Err(GwError::invalid(
                field,
                format!("event {i}: {field} must not be empty"),
            ));
        }
    }
    if !(event.latency_ms.is_finite() && event.latency_ms >= 0.0) {
        return Err(GwError::invalid(
            "latency_ms",
            format!("event {i}: latency_ms must be a non-negative number"),
        ));
    }
    if let Some(price) = &event.price {
        let prices = [
            Some(price.input_per_mtok),
            Some(price.output_per_mtok),
            price.cached_input_per_mtok,
        ];
        if !prices.into_iter().flatten().all(|p| p.is_finite() && p >= 0.0) {
            return Err(GwError::invalid(
                "price",
                format!("event {i}: prices must be non-negative numbers"),
            ));
        }
    }
    Ok(())
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
