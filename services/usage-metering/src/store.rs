//! The usage store and the `MeteringService` over it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use llmgw_kit::GwError;
use llmgw_kit::config::Config;
use llmgw_kit::db::{self, Backend, MigrationSpec, db_error};
use llmgw_kit::pricing::{Tokens, cost_usd};
use llmgw_kit::services::{Metering, MeteringService};
use llmgw_proto as pb;
use sqlx::{AnyPool, Row as _};

use crate::rollup::Rollups;

/// The schema, in order; portable SQL.
pub(crate) const MIGRATIONS: &[MigrationSpec] = &[
    (1, "usage events", include_str!("../migrations/0001_init.sql")),
    (2, "byok", include_str!("../migrations/0002_byok.sql")),
    (
        3,
        "usage daily roll-ups",
        include_str!("../migrations/0003_usage_daily.sql"),
    ),
];

/// The `usage_events` column list every insert names, in the order of
/// [`EventRow`] (plus `recorded_at`).
macro_rules! insert_events {
    () => {
        "INSERT INTO usage_events (request_id, org_id, project_id, key_id, model, provider, \
         provider_model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd, \
         estimated, streamed, status, http_status, started_at, latency_ms, recorded_at, byok) "
    };
}

const INSERT_EVENT: &str = concat!(
    insert_events!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
     ON CONFLICT (request_id) DO NOTHING"
);

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
    pub(crate) pool: AnyPool,
    /// The one statement that inserts a whole batch, as JSON, on this
    /// backend (one round trip); `None`: row by row in a transaction, the
    /// portable fallback.
    insert_batch: Option<&'static str>,
}

/// One batch as a single statement on SQLite: the events travel as one JSON
/// array of arrays (every value bound, none spliced into SQL) and
/// `json_each` turns them into rows, in order. (`WHERE true` keeps SQLite
/// from reading `ON CONFLICT` as a join constraint.)
const INSERT_EVENTS_SQLITE: &str = concat!(
    insert_events!(),
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
     json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
     json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]'), \
     json_extract(value, '$[9]'), json_extract(value, '$[10]'), json_extract(value, '$[11]'), \
     json_extract(value, '$[12]'), json_extract(value, '$[13]'), json_extract(value, '$[14]'), \
     json_extract(value, '$[15]'), json_extract(value, '$[16]'), json_extract(value, '$[17]'), $2, \
     json_extract(value, '$[18]') \
     FROM json_each($1) WHERE true \
     ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
);

/// The same batch, the same JSON, on PostgreSQL: `jsonb_array_elements`
/// (in order, by ordinality, so the first of two equal request ids wins as
/// on SQLite) and explicit casts to the column types. Both return the ids
/// they inserted, for the roll-ups.
const INSERT_EVENTS_POSTGRES: &str = concat!(
    insert_events!(),
    "SELECT e->>0, e->>1, e->>2, e->>3, e->>4, e->>5, e->>6, \
     (e->>7)::BIGINT, (e->>8)::BIGINT, (e->>9)::BIGINT, (e->>10)::BIGINT, (e->>11)::DOUBLE PRECISION, \
     (e->>12)::BOOLEAN, (e->>13)::BOOLEAN, e->>14, (e->>15)::INTEGER, (e->>16)::BIGINT, \
     (e->>17)::DOUBLE PRECISION, $2, (e->>18)::BOOLEAN \
     FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS batch (e, i) ORDER BY i \
     ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
);

/// An event as the JSON row the batch statements read: a tuple struct,
/// so it is written as an array, in column order.
#[derive(serde::Serialize)]
struct EventRow<'a>(
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    u32,
    u32,
    u32,
    u32,
    f64,
    bool,
    bool,
    &'a str,
    u32,
    i64,
    f64,
    bool,
);

impl UsageStore {
    /// The portable row-by-row insert, the fallback on any backend.
    #[cfg(test)]
    pub(crate) fn row_by_row(mut self) -> Self {
        self.insert_batch = None;
        self
    }

    async fn record_batch(
        &self,
        statement: &'static str,
        events: &[pb::UsageEvent],
        recorded_at: i64,
    ) -> Result<pb::RecordAck, GwError> {
        let rows: Vec<EventRow<'_>> = events
            .iter()
            .map(|e| {
                let cost = cost_usd(
                    &e.price.unwrap_or_default(),
                    Tokens {
                        input: e.input_tokens,
                        output: e.output_tokens,
                        cached: e.cached_tokens,
                    },
                );
                EventRow(
                    e.request_id.as_str(),
                    e.org_id.as_str(),
                    e.project_id.as_deref(),
                    e.key_id.as_str(),
                    e.model.as_str(),
                    e.provider.as_str(),
                    e.provider_model.as_str(),
                    e.input_tokens,
                    e.output_tokens,
                    e.cached_tokens,
                    e.reasoning_tokens,
                    cost,
                    e.estimated,
                    e.streamed,
                    e.status.as_str(),
                    e.http_status.min(i32::MAX as u32),
                    e.started_at_ms,
                    e.latency_ms,
                    e.byok,
                )
            })
            .collect();
        let json = serde_json::to_string(&rows)
            .map_err(|e| GwError::internal(format!("cannot encode usage: {e}")))?;
        let mut tx = self.pool.begin().await.map_err(db_error("recording usage"))?;
        let ids = sqlx::query(statement)
            .bind(json)
            .bind(recorded_at)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error("recording usage"))?;
        // An id inserted is its first event in the batch (the statements
        // insert in batch order, and later equal ids conflict).
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            first.entry(e.request_id.as_str()).or_insert(i);
        }
        let mut rollups = Rollups::default();
        for row in &ids {
            let id: String = row.try_get(0).map_err(db_error("recording usage"))?;
            if let Some(&i) = first.get(id.as_str()) {
                rollups.add(&events[i], rows[i].11); // .11: its cost
            }
        }
        rollups.write(&mut tx).await?;
        tx.commit().await.map_err(db_error("recording usage"))?;
        let inserted = ids.len() as u64;
        let ack = pb::RecordAck {
            accepted: inserted,
            duplicates: events.len() as u64 - inserted,
        };
        if ack.duplicates > 0 {
            tracing::debug!(
                accepted = ack.accepted,
                duplicates = ack.duplicates,
                "usage batch had duplicates"
            );
        }
        Ok(ack)
    }
}

impl fmt::Debug for UsageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageStore").finish_non_exhaustive()
    }
}

/// Opens (creating and migrating if needed) `<data_dir>/metering.db`, or the
/// `metering` schema of the configured PostgreSQL database.
pub async fn open(config: &Config) -> Result<UsageStore, GwError> {
    let pool = db::open(config, "metering.db", MIGRATIONS).await?;
    let insert_batch = match Backend::of(config) {
        Backend::Sqlite => INSERT_EVENTS_SQLITE,
        Backend::Postgres => INSERT_EVENTS_POSTGRES,
    };
    Ok(UsageStore {
        pool,
        insert_batch: Some(insert_batch),
    })
}

/// The metering service over `store`, as the one client type callers use.
pub fn service(store: UsageStore) -> Metering {
    llmgw_kit::metrics::metering();
    Arc::new(store)
}

#[async_trait]
impl MeteringService for UsageStore {
    /// Writes the batch and its daily roll-ups in one transaction: all of it
    /// or none. An event whose request id is already stored (or earlier in
    /// the batch) is a duplicate and changes nothing, roll-ups included.
    async fn record(&self, mut events: Vec<pb::UsageEvent>) -> Result<pb::RecordAck, GwError> {
        for (i, event) in events.iter().enumerate() {
            validate(i, event)?;
        }
        // Every batch takes its rows' locks in request id order, so two
        // batches sharing ids (a resend racing the original) cannot deadlock
        // on PostgreSQL. Stable: the first of two equal ids still wins.
        events.sort_by(|a, b| a.request_id.cmp(&b.request_id));
        let mut ack = pb::RecordAck::default();
        if events.is_empty() {
            return Ok(ack);
        }
        let recorded_at = now_ms();
        llmgw_kit::metrics::metering().batches.inc();
        if let Some(statement) = self.insert_batch {
            return self
                .record_batch(statement, &events, recorded_at)
                .await
                .inspect(count_recorded);
        }
        // The first statement is a write, so SQLite takes its write lock at once.
        let mut tx = self.pool.begin().await.map_err(db_error("recording usage"))?;
        let mut rollups = Rollups::default();
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
                .bind(event.byok)
                .execute(&mut *tx)
                .await
                .map_err(db_error("recording usage"))?
                .rows_affected();
            if inserted == 0 {
                ack.duplicates += 1;
            } else {
                ack.accepted += 1;
                rollups.add(event, cost);
            }
        }
        rollups.write(&mut tx).await?;
        tx.commit().await.map_err(db_error("recording usage"))?;
        if ack.duplicates > 0 {
            tracing::debug!(
                accepted = ack.accepted,
                duplicates = ack.duplicates,
                "usage batch had duplicates"
            );
        }
        count_recorded(&ack);
        Ok(ack)
    }

    /// One org's totals and its breakdown per (model, provider), costliest first.
    async fn get_usage(&self, query: pb::UsageQuery) -> Result<pb::UsageSummary, GwError> {
        if query.org_id.is_empty() {
            return Err(GwError::invalid("org_id", "org_id must not be empty"));
        }
        if query.org_id.contains('\0') {
            return Err(GwError::invalid(
                "org_id",
                "org_id must not contain NUL characters",
            ));
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

    async fn query_usage(&self, req: pb::UsageQueryRequest) -> Result<pb::UsageReport, GwError> {
        self.query(req).await
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
    // PostgreSQL's TEXT cannot hold NUL, SQLite's can: refuse it on both.
    let texts = [
        ("request_id", event.request_id.as_str()),
        ("org_id", &event.org_id),
        ("project_id", event.project_id.as_deref().unwrap_or_default()),
        ("key_id", &event.key_id),
        ("model", &event.model),
        ("provider", &event.provider),
        ("provider_model", &event.provider_model),
        ("status", &event.status),
    ];
    if let Some((field, _)) = texts.iter().find(|(_, value)| value.contains('\0')) {
        return Err(GwError::invalid(
            *field,
            format!("event {i}: {field} must not contain NUL characters"),
        ));
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

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `llmgw_metering_events_recorded_total` and `…_duplicate_events_total`.
fn count_recorded(ack: &pb::RecordAck) {
    let m = llmgw_kit::metrics::metering();
    m.events.inc_by(ack.accepted);
    m.duplicates.inc_by(ack.duplicates);
}
