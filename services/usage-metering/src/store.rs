//! The usage store and the `MeteringService` over it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
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
    (
        4,
        "byok in the roll-ups",
        include_str!("../migrations/0004_usage_daily_byok.sql"),
    ),
    (
        5,
        "response cache hits",
        include_str!("../migrations/0005_cache_hit.sql"),
    ),
    (
        6,
        "cache hits in the roll-ups",
        include_str!("../migrations/0006_usage_daily_cache_hits.sql"),
    ),
];

/// The `usage_events` column list every insert names, in the order of
/// [`EventRow`] (plus `recorded_at`).
macro_rules! insert_events {
    () => {
        "INSERT INTO usage_events (request_id, org_id, project_id, key_id, model, provider, \
         provider_model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd, \
         estimated, streamed, status, http_status, started_at, latency_ms, recorded_at, byok, cache_hit) "
    };
}

const INSERT_EVENT: &str = concat!(
    insert_events!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
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
    /// How this backend inserts a whole batch; `None`: row by row in a
    /// transaction, the portable fallback (tests).
    insert_batch: Option<BatchInsert>,
}

/// A batch's insert on each backend. Both insert in batch order, so the first
/// of two equal request ids wins, and return the ids they inserted, for the
/// roll-ups.
#[derive(Clone, Copy)]
enum BatchInsert {
    /// SQLite (in process, so its CPU is the gateway's): multi-row `VALUES`
    /// with every value bound, in chunks of a power of two rows up to
    /// [`VALUES_CHUNK`], so a handful of statements, each prepared once per
    /// connection, cover every batch. (A JSON array unpacked by `json_each`
    /// costs five times the CPU: SQLite parses each row's text once per
    /// column.)
    Values,
    /// PostgreSQL (another process, one round trip): the batch as one JSON
    /// array of arrays, unpacked by the server.
    Json(&'static str),
}

/// Rows per multi-row insert at most: 64 × 21 columns bound, far below
/// SQLite's limit of 32,766 parameters.
const VALUES_CHUNK: usize = 64;
/// Columns per row of [`insert_values`].
const EVENT_COLUMNS: usize = 21;

/// The multi-row insert of `rows` events (a power of two up to
/// [`VALUES_CHUNK`]), built once per size.
fn insert_values(rows: usize) -> &'static str {
    const SIZES: usize = VALUES_CHUNK.trailing_zeros() as usize + 1;
    static STATEMENTS: [OnceLock<String>; SIZES] = [const { OnceLock::new() }; SIZES];
    debug_assert!(rows.is_power_of_two() && rows <= VALUES_CHUNK);
    STATEMENTS[rows.trailing_zeros() as usize % SIZES].get_or_init(|| {
        let mut sql = String::from(insert_events!());
        sql.push_str("VALUES ");
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            // Anonymous `?`: sqlx looks up each numbered parameter's name,
            // which SQLite finds by a linear scan — quadratic in a wide statement.
            sql.push_str(&["?"; EVENT_COLUMNS].join(", "));
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
        sql
    })
}

/// A batch on PostgreSQL: one JSON array of arrays (every value bound, none
/// spliced into SQL), unpacked by `jsonb_array_elements` in order (by
/// ordinality, so the first of two equal request ids wins) with explicit
/// casts to the column types.
const INSERT_EVENTS_POSTGRES: &str = concat!(
    insert_events!(),
    "SELECT e->>0, e->>1, e->>2, e->>3, e->>4, e->>5, e->>6, \
     (e->>7)::BIGINT, (e->>8)::BIGINT, (e->>9)::BIGINT, (e->>10)::BIGINT, (e->>11)::DOUBLE PRECISION, \
     (e->>12)::BOOLEAN, (e->>13)::BOOLEAN, e->>14, (e->>15)::INTEGER, (e->>16)::BIGINT, \
     (e->>17)::DOUBLE PRECISION, $2, (e->>18)::BOOLEAN, (e->>19)::BOOLEAN \
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
    bool,
);

impl<'a> EventRow<'a> {
    /// Binds this row's columns, in the order of `insert_events!`.
    fn bind(
        &self,
        query: sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments>,
        recorded_at: i64,
    ) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
        query
            .bind(self.0)
            .bind(self.1)
            .bind(self.2)
            .bind(self.3)
            .bind(self.4)
            .bind(self.5)
            .bind(self.6)
            .bind(i64::from(self.7))
            .bind(i64::from(self.8))
            .bind(i64::from(self.9))
            .bind(i64::from(self.10))
            .bind(self.11)
            .bind(self.12)
            .bind(self.13)
            .bind(self.14)
            .bind(i32::try_from(self.15).unwrap_or(i32::MAX))
            .bind(self.16)
            .bind(self.17)
            .bind(recorded_at)
            .bind(self.18)
            .bind(self.19)
    }
}

impl UsageStore {
    /// The portable row-by-row insert, the fallback on any backend.
    #[cfg(test)]
    pub(crate) fn row_by_row(mut self) -> Self {
        self.insert_batch = None;
        self
    }

    async fn record_batch(
        &self,
        mode: BatchInsert,
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
                    e.cache_hit,
                )
            })
            .collect();
        let mut tx = self.pool.begin().await.map_err(db_error("recording usage"))?;
        let ids = match mode {
            BatchInsert::Json(statement) => {
                let json = serde_json::to_string(&rows)
                    .map_err(|e| GwError::internal(format!("cannot encode usage: {e}")))?;
                sqlx::query(statement)
                    .bind(json)
                    .bind(recorded_at)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error("recording usage"))?
            }
            BatchInsert::Values => {
                let mut ids = Vec::with_capacity(rows.len());
                let mut rest = &rows[..];
                while !rest.is_empty() {
                    // The largest power of two that fits: at most log2(64) + 1 statements.
                    let n = if rest.len() >= VALUES_CHUNK {
                        VALUES_CHUNK
                    } else {
                        1 << rest.len().ilog2()
                    };
                    let (chunk, tail) = rest.split_at(n);
                    let mut query = sqlx::query(insert_values(n));
                    for row in chunk {
                        query = row.bind(query, recorded_at);
                    }
                    ids.extend(
                        query
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(db_error("recording usage"))?,
                    );
                    rest = tail;
                }
                ids
            }
        };
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
        rollups.count();
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
        Backend::Sqlite => BatchInsert::Values,
        Backend::Postgres => BatchInsert::Json(INSERT_EVENTS_POSTGRES),
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

/// The span of one usage event's recording, a child of the request's span.
fn record_span(event: &pb::UsageEvent) -> tracing::Span {
    let span = tracing::info_span!(
        "record",
        llmgw.request_id = %event.request_id,
        llmgw.provider = %event.provider,
        gen_ai.request.model = %event.provider_model,
        gen_ai.usage.input_tokens = event.input_tokens,
        gen_ai.usage.output_tokens = event.output_tokens,
    );
    llmgw_kit::telemetry::continue_from_traceparent(&span, &event.traceparent);
    span
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
        // One `record` span per event in its request's trace, open while
        // the batch is written (only while spans are exported).
        let _spans: Vec<tracing::Span> = if llmgw_kit::telemetry::enabled() {
            events
                .iter()
                .filter(|e| !e.traceparent.is_empty())
                .map(record_span)
                .collect()
        } else {
            Vec::new()
        };
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
        if let Some(mode) = self.insert_batch {
            return self
                .record_batch(mode, &events, recorded_at)
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
                .bind(event.cache_hit)
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
        rollups.count();
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
