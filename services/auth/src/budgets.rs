//! Budgets: spend limits in USD per org, project and key, per calendar
//! period (UTC day or month) or in total. Admission reserves a request's
//! worst-case cost against every budget that applies, in one transaction
//! whose conditional updates (`spent + reserved + this <= limit`) are atomic
//! on SQLite (one writer) and PostgreSQL (row locks, the condition
//! re-checked after a wait) alike — so concurrent requests, from any number
//! of edges, never admit more than a budget holds. Settlement replaces the
//! reservation with the real cost, once per request. Reservations whose
//! settlement never came (an edge that died) are settled at their reserved
//! amount after a while: a budget may be over-counted, never overrun.

use std::time::Duration;

use llmgw_kit::db::db_error;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde_json::{Value, json};
use sqlx::Row as _;

use crate::store::{AuthStore, now_ms};

/// The periods a budget may have.
pub const PERIODS: [&str; 3] = ["daily", "monthly", "total"];

/// When the period containing `now_ms` began (Unix ms, UTC).
pub fn period_start(period: &str, now_ms: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    match period {
        "daily" => now_ms - now_ms.rem_euclid(DAY),
        "monthly" => {
            let day_start = now_ms - now_ms.rem_euclid(DAY);
            time::OffsetDateTime::from_unix_timestamp(day_start / 1000)
                .ok()
                .and_then(|t| t.replace_day(1).ok())
                .map_or(day_start, |t| t.unix_timestamp() * 1000)
        }
        _ => 0,
    }
}

/// One budget a request is admitted against.
struct Entry {
    scope: String,
    scope_id: String,
    period: String,
    start: i64,
    limit: f64,
}

fn entries(p: &pb::Principal, now: i64) -> Vec<Entry> {
    p.policies
        .iter()
        .flat_map(|policy| {
            let scope_id = llmgw_kit::services::policy_scope_id(p, &policy.scope).to_owned();
            policy.budgets.iter().map(move |b| Entry {
                scope: policy.scope.clone(),
                scope_id: scope_id.clone(),
                period: b.period.clone(),
                start: period_start(&b.period, now),
                limit: b.limit_usd,
            })
        })
        .collect()
}

fn over_budget(e: &Entry) -> GwError {
    GwError::new(
        ErrorCode::BudgetExceeded,
        format!(
            "the {} {} budget of ${} would be exceeded by this request",
            e.scope, e.period, e.limit
        ),
    )
}

impl AuthStore {
    /// Reserves `req.reserve_usd` against every budget of the principal.
    pub async fn admit(&self, req: pb::AdmitRequest) -> Result<pb::Admission, GwError> {
        let principal = req.principal.unwrap_or_default();
        let now = now_ms();
        let entries = entries(&principal, now);
        if entries.is_empty() {
            return Ok(pb::Admission { reserved: false });
        }
        let amount = req.reserve_usd;
        if !(amount.is_finite() && amount >= 0.0) || req.request_id.is_empty() || req.request_id.len() > 128 {
            return Err(GwError::invalid(
                "reserve_usd",
                "a reservation needs a request id and a non-negative amount",
            ));
        }
        let keys: Vec<Value> = entries
            .iter()
            .map(|e| json!([e.scope, e.scope_id, e.period, e.start]))
            .collect();
        let _one_writer = self.ledger.lock().await;
        let mut tx = self.pool.begin().await.map_err(db_error("admitting a request"))?;
        // The first statement writes, so SQLite takes its lock before any read.
        let fresh = sqlx::query(
            "INSERT INTO budget_reservations (request_id, entries, amount_usd, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&req.request_id)
        .bind(Value::Array(keys).to_string())
        .bind(amount)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error("admitting a request"))?
        .rows_affected();
        if fresh == 0 {
            // Admitted already (a retried call): nothing more to reserve.
            return Ok(pb::Admission { reserved: true });
        }
        for e in &entries {
            // One statement per budget: creates this period's row with the
            // reservation, or adds it to the row only while it fits; no
            // row changed means over budget.
            if amount > e.limit {
                return Err(over_budget(e));
            }
            let done = sqlx::query(
                "INSERT INTO budget_ledger (scope, scope_id, period, period_start, spent_usd, reserved_usd) \
                 VALUES ($1, $2, $3, $4, 0, $5) \
                 ON CONFLICT (scope, scope_id, period, period_start) DO UPDATE \
                 SET reserved_usd = budget_ledger.reserved_usd + excluded.reserved_usd \
                 WHERE budget_ledger.spent_usd + budget_ledger.reserved_usd + excluded.reserved_usd <= $6",
            )
            .bind(&e.scope)
            .bind(&e.scope_id)
            .bind(&e.period)
            .bind(e.start)
            .bind(amount)
            .bind(e.limit)
            .execute(&mut *tx)
            .await
            .map_err(db_error("admitting a request"))?;
            if done.rows_affected() == 0 {
                // Dropping the transaction rolls every reservation back.
                return Err(over_budget(e));
            }
        }
        tx.commit().await.map_err(db_error("admitting a request"))?;
        Ok(pb::Admission { reserved: true })
    }

    /// Replaces a reservation with what was spent; a second call finds
    /// nothing to do.
    pub async fn settle(&self, req: pb::SettleRequest) -> Result<pb::SettleAck, GwError> {
        let spent = if req.spent_usd.is_finite() {
            req.spent_usd.max(0.0)
        } else {
            0.0
        };
        let _one_writer = self.ledger.lock().await;
        let mut tx = self.pool.begin().await.map_err(db_error("settling a request"))?;
        let row = sqlx::query(
            "DELETE FROM budget_reservations WHERE request_id = $1 RETURNING entries, amount_usd",
        )
        .bind(&req.request_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error("settling a request"))?;
        let Some(row) = row else {
            return Ok(pb::SettleAck {});
        };
        let text: String = row.try_get(0).map_err(db_error("settling a request"))?;
        let amount: f64 = row.try_get(1).map_err(db_error("settling a request"))?;
        let keys: Vec<(String, String, String, i64)> = serde_json::from_str(&text)
            .map_err(|_| GwError::internal("a stored reservation is unreadable"))?;
        for (scope, scope_id, period, start) in keys {
            sqlx::query(
                "UPDATE budget_ledger SET spent_usd = spent_usd + $5, \
                 reserved_usd = CASE WHEN reserved_usd > $6 THEN reserved_usd - $6 ELSE 0 END \
                 WHERE scope = $1 AND scope_id = $2 AND period = $3 AND period_start = $4",
            )
            .bind(&scope)
            .bind(&scope_id)
            .bind(&period)
            .bind(start)
            .bind(spent)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .map_err(db_error("settling a request"))?;
        }
        tx.commit().await.map_err(db_error("settling a request"))?;
        Ok(pb::SettleAck {})
    }

    /// Settles, at their reserved amount, reservations older than `max_age`.
    pub async fn settle_stale(&self, max_age: Duration) -> Result<usize, GwError> {
        let before = now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT request_id, amount_usd FROM budget_reservations WHERE created_at <= $1 LIMIT 500",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("reading stale reservations"))?;
        let mut settled = 0;
        for row in rows {
            let request_id: String = row.try_get(0).map_err(db_error("reading stale reservations"))?;
            let amount: f64 = row.try_get(1).map_err(db_error("reading stale reservations"))?;
            tracing::warn!(
                request_id,
                "reservation never settled; counted at its reserved amount"
            );
            self.settle(pb::SettleRequest {
                request_id,
                spent_usd: amount,
            })
            .await?;
            settled += 1;
        }
        Ok(settled)
    }

    /// A scope's budgets with this period's spend and reservations.
    pub(crate) async fn budget_status(
        &self,
        scope: &str,
        scope_id: &str,
        budgets: &[crate::admin::BudgetBody],
    ) -> Result<Value, GwError> {
        let now = now_ms();
        let mut data = Vec::new();
        for b in budgets {
            let start = period_start(&b.period, now);
            let row = sqlx::query(
                "SELECT spent_usd, reserved_usd FROM budget_ledger \
                 WHERE scope = $1 AND scope_id = $2 AND period = $3 AND period_start = $4",
            )
            .bind(scope)
            .bind(scope_id)
            .bind(&b.period)
            .bind(start)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading a budget"))?;
            let (spent, reserved): (f64, f64) = match row {
                Some(r) => (
                    r.try_get(0).map_err(db_error("reading a budget"))?,
                    r.try_get(1).map_err(db_error("reading a budget"))?,
                ),
                None => (0.0, 0.0),
            };
            data.push(json!({
                "period": b.period,
                "limit_usd": b.limit_usd,
                "period_start": start / 1000,
                "spent_usd": spent,
                "reserved_usd": reserved,
            }));
        }
        Ok(json!({"object": "list", "scope": scope, "scope_id": scope_id, "data": data}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-11-22T04:05:06Z
        let now = 1_795_320_306_000;
        assert_eq!(period_start("daily", now), 1_795_305_600_000); // 2026-11-22T00:00Z
        assert_eq!(period_start("monthly", now), 1_793_491_200_000); // 2026-11-01T00:00Z
        assert_eq!(period_start("total", now), 0);
    }
}
