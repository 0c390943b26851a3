//! `QueryUsage`: one org's usage from the daily roll-ups (`usage_daily`),
//! filtered by project, key and model, grouped by any of day, key, project
//! and model. The SQL is assembled only from fixed fragments chosen by
//! whitelisted group names; every value is bound.

use llmgw_kit::GwError;
use llmgw_kit::db::db_error;
use llmgw_proto as pb;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::UsageStore;
use crate::rollup::day_of;

/// What `group_by` may name, and the column each groups by.
const GROUPS: [(&str, &str); 4] = [
    ("day", "day"),
    ("key", "key_id"),
    ("project", "project_id"),
    ("model", "model"),
];

/// The sums every row carries, cast so both backends return BIGINT and
/// DOUBLE PRECISION.
const SUMS: &str = "CAST(COALESCE(SUM(requests), 0) AS BIGINT), \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION), \
     CAST(COALESCE(SUM(byok_requests), 0) AS BIGINT), \
     CAST(COALESCE(SUM(byok_cost_usd), 0) AS DOUBLE PRECISION), \
     CAST(COALESCE(SUM(cache_hits), 0) AS BIGINT)";

/// Rows per report at most (a year of days × 50 models, say); a query that
/// would return more is refused rather than truncated.
const MAX_ROWS: usize = 20_000;

impl UsageStore {
    pub(crate) async fn query(&self, req: pb::UsageQueryRequest) -> Result<pb::UsageReport, GwError> {
        let groups = validate(&req)?;
        let columns: Vec<&str> = groups.iter().map(|g| g.1).collect();
        let mut sql = String::from("SELECT ");
        for column in &columns {
            sql.push_str(column);
            sql.push_str(", ");
        }
        sql.push_str(SUMS);
        sql.push_str(" FROM usage_daily WHERE org_id = $1 AND day >= $2 AND day < $3");
        let filters = [
            ("project_id", req.project_id.as_deref()),
            ("key_id", req.key_id.as_deref()),
            ("model", req.model.as_deref()),
        ];
        let mut n = 3;
        for (column, value) in &filters {
            if value.is_some() {
                n += 1;
                sql.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        if !columns.is_empty() {
            let list = columns.join(", ");
            sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
        }
        sql.push_str(&format!(" LIMIT {}", MAX_ROWS + 1));

        let start = if req.start_ms <= 0 {
            i64::MIN
        } else {
            day_of(req.start_ms)
        };
        let end = if req.end_ms <= 0 { i64::MAX } else { req.end_ms };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&req.org_id)
            .bind(start)
            .bind(end);
        for value in filters.iter().filter_map(|f| f.1) {
            query = query.bind(value);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading usage"))?;
        if rows.len() > MAX_ROWS {
            return Err(GwError::invalid(
                "group_by",
                format!("the report has more than {MAX_ROWS} rows: narrow the range or group by less"),
            ));
        }
        let mut report = pb::UsageReport::default();
        let mut totals = pb::UsageRow::default();
        for row in &rows {
            let r = read(row, &columns).map_err(db_error("reading usage"))?;
            if r.requests == 0 {
                // No grouping and nothing in range: one row of zeros.
                continue;
            }
            totals.requests += r.requests;
            totals.input_tokens += r.input_tokens;
            totals.output_tokens += r.output_tokens;
            totals.cached_tokens += r.cached_tokens;
            totals.reasoning_tokens += r.reasoning_tokens;
            totals.cost_usd += r.cost_usd;
            totals.byok_requests += r.byok_requests;
            totals.byok_cost_usd += r.byok_cost_usd;
            totals.cache_hits += r.cache_hits;
            report.rows.push(r);
        }
        report.totals = Some(totals);
        Ok(report)
    }
}

fn read(row: &AnyRow, columns: &[&str]) -> Result<pb::UsageRow, sqlx::Error> {
    let mut out = pb::UsageRow::default();
    for (i, column) in columns.iter().enumerate() {
        match *column {
            "day" => out.day = Some(row.try_get(i)?),
            "key_id" => out.key_id = Some(row.try_get(i)?),
            "project_id" => out.project_id = Some(row.try_get(i)?),
            _ => out.model = Some(row.try_get(i)?),
        }
    }
    let at = columns.len();
    let count = |i: usize| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(row.try_get::<i64, _>(at + i)?).unwrap_or(0))
    };
    out.requests = count(0)?;
    out.input_tokens = count(1)?;
    out.output_tokens = count(2)?;
    out.cached_tokens = count(3)?;
    out.reasoning_tokens = count(4)?;
    out.cost_usd = row.try_get(at + 5)?;
    out.byok_requests = count(6)?;
    out.byok_cost_usd = row.try_get(at + 7)?;
    out.cache_hits = count(8)?;
    Ok(out)
}

/// The request's groups, in the order asked and without repeats; 400 naming
/// the field for anything else wrong.
fn validate(req: &pb::UsageQueryRequest) -> Result<Vec<(&'static str, &'static str)>, GwError> {
    if req.org_id.is_empty() {
        return Err(GwError::invalid("org_id", "org_id must not be empty"));
    }
    for (field, value) in [
        ("org_id", Some(req.org_id.as_str())),
        ("project_id", req.project_id.as_deref()),
        ("key_id", req.key_id.as_deref()),
        ("model", req.model.as_deref()),
    ] {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(GwError::invalid(
                field,
                format!("{field} must not contain NUL characters"),
            ));
        }
    }
    if req.start_ms > 0 && req.end_ms > 0 && req.end_ms <= req.start_ms {
        return Err(GwError::invalid("end", "end must be after start"));
    }
    let mut groups = Vec::new();
    for name in &req.group_by {
        let group = GROUPS.iter().find(|(n, _)| n == name).ok_or_else(|| {
            GwError::invalid(
                "group_by",
                format!("cannot group by `{name}`: day, key, project or model"),
            )
        })?;
        if !groups.contains(group) {
            groups.push(*group);
        }
    }
    Ok(groups)
}
