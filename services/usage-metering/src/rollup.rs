//! Daily roll-ups: the events a batch newly inserted, summed per (UTC day,
//! org, project, key, model) and added to `usage_daily` in the same
//! transaction, so the roll-ups always equal the sum of the events stored
//! (duplicates, which insert nothing, add nothing).

use std::collections::BTreeMap;

use llmgw_kit::GwError;
use llmgw_kit::db::db_error;
use llmgw_proto as pb;
use sqlx::AnyConnection;

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// Adds an event's counts to its day's row; the per-column sums on conflict.
const UPSERT_DAILY: &str = "INSERT INTO usage_daily (day, org_id, project_id, key_id, model, \
     requests, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd, \
     byok_requests, byok_cost_usd, cache_hits) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (day, org_id, project_id, key_id, model) DO UPDATE SET \
     requests = usage_daily.requests + excluded.requests, \
     input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
     output_tokens = usage_daily.output_tokens + excluded.output_tokens, \
     cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, \
     reasoning_tokens = usage_daily.reasoning_tokens + excluded.reasoning_tokens, \
     cost_usd = usage_daily.cost_usd + excluded.cost_usd, \
     byok_requests = usage_daily.byok_requests + excluded.byok_requests, \
     byok_cost_usd = usage_daily.byok_cost_usd + excluded.byok_cost_usd, \
     cache_hits = usage_daily.cache_hits + excluded.cache_hits";

/// The UTC day start of `ms` (Unix epoch milliseconds).
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// One roll-up row's key: day, org, project (`""` when none), key, model.
type Group<'a> = (i64, &'a str, &'a str, &'a str, &'a str);

#[derive(Default)]
struct Sums {
    requests: i64,
    input: i64,
    output: i64,
    cached: i64,
    reasoning: i64,
    cost: f64,
    /// Of which through the org's own credentials.
    byok_requests: i64,
    byok_cost: f64,
    /// Of which answered from the edge's response cache.
    cache_hits: i64,
}

/// A batch's newly inserted events, summed per group. Ordered, so every
/// transaction upserts its groups in the same order (no deadlocks between
/// concurrent batches on PostgreSQL).
#[derive(Default)]
pub struct Rollups<'a>(BTreeMap<Group<'a>, Sums>);

impl<'a> Rollups<'a> {
    /// Counts `event`, stored with `cost`.
    pub fn add(&mut self, event: &'a pb::UsageEvent, cost: f64) {
        let group = (
            day_of(event.started_at_ms),
            event.org_id.as_str(),
            event.project_id.as_deref().unwrap_or_default(),
            event.key_id.as_str(),
            event.model.as_str(),
        );
        let sums = self.0.entry(group).or_default();
        sums.requests += 1;
        sums.input += i64::from(event.input_tokens);
        sums.output += i64::from(event.output_tokens);
        sums.cached += i64::from(event.cached_tokens);
        sums.reasoning += i64::from(event.reasoning_tokens);
        sums.cost += cost;
        if event.byok {
            sums.byok_requests += 1;
            sums.byok_cost += cost;
        }
        if event.cache_hit {
            sums.cache_hits += 1;
        }
    }

    /// Adds the batch to the per-org series (once its transaction committed).
    pub fn count(&self) {
        let metrics = llmgw_kit::metrics::metering();
        let mut groups = self.0.iter().peekable();
        // Groups are ordered by day, then org: sum each run of one org.
        while let Some(((_, org, ..), s)) = groups.next() {
            let (mut requests, mut cost) = (s.requests, s.cost);
            while let Some(((_, next, ..), more)) = groups.peek() {
                if next != org {
                    break;
                }
                requests += more.requests;
                cost += more.cost;
                groups.next();
            }
            metrics.org_spend(org, u64::try_from(requests).unwrap_or(0), cost);
        }
    }

    /// One upsert per group, on the caller's transaction.
    pub async fn write(&self, tx: &mut AnyConnection) -> Result<(), GwError> {
        for ((day, org, project, key, model), s) in &self.0 {
            sqlx::query(UPSERT_DAILY)
                .bind(*day)
                .bind(*org)
                .bind(*project)
                .bind(*key)
                .bind(*model)
                .bind(s.requests)
                .bind(s.input)
                .bind(s.output)
                .bind(s.cached)
                .bind(s.reasoning)
                .bind(s.cost)
                .bind(s.byok_requests)
                .bind(s.byok_cost)
                .bind(s.cache_hits)
                .execute(&mut *tx)
                .await
                .map_err(db_error("rolling up usage"))?;
        }
        Ok(())
    }
}
