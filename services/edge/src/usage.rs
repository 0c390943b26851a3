//! The usage API, served by the edge from `usage-metering`'s daily roll-ups:
//!
//! - `GET /v1/usage` — the caller's own org, for any key of it (403 when the
//!   key's policies list endpoints without `usage`);
//! - `GET /admin/v1/usage` — admin keys: an org admin its own org only
//!   (another `org_id` is 404, as the admin API answers for orgs it hides),
//!   a platform admin any org (`?org_id=`; its own without); members 403.
//!
//! Query parameters: `start`, `end` (Unix seconds or `YYYY-MM-DD`, UTC; a day
//! counts when it starts before `end`, and `start` counts its whole day),
//! `group_by` (comma-separated: `day`, `key`, `project`, `model`),
//! `project_id`, `key_id`, `model` (filters; `project_id=` alone means
//! requests without a project). Anything else is a 400 naming the `param`.
//! The org always comes from the key (or, for a platform admin, `org_id`),
//! never from a filter, and metering filters every query by it.

use axum::extract::Query;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde_json::{Map, Value, json};

use crate::pipeline::{Pipeline, allow_endpoint};

/// Which door a usage request came in by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `/v1/usage`: the key's own org.
    Own,
    /// `/admin/v1/usage`: admin keys, `org_id` for platform admins.
    Admin,
}

/// Answers a usage request: the report as the JSON body.
pub async fn usage(p: &Pipeline, key: Option<&str>, uri: &http::Uri, door: Door) -> Result<Value, GwError> {
    let principal = p.authenticate(key).await?;
    let params = params(uri)?;
    let asked_org = params
        .iter()
        .find(|(k, _)| k == "org_id")
        .map(|(_, v)| v.as_str());
    let org_id = match door {
        Door::Own => {
            allow_endpoint(&principal, "usage")?;
            if asked_org.is_some() {
                return Err(GwError::invalid(
                    "org_id",
                    "/v1/usage reports the key's own org; `org_id` is for /admin/v1/usage",
                ));
            }
            principal.org_id.clone()
        }
        Door::Admin => {
            let role = pb::KeyRole::try_from(principal.role).unwrap_or(pb::KeyRole::Unspecified);
            match (role, asked_org) {
                (pb::KeyRole::PlatformAdmin, Some(org)) if !org.is_empty() => org.to_owned(),
                (pb::KeyRole::PlatformAdmin | pb::KeyRole::Admin, None) => principal.org_id.clone(),
                (pb::KeyRole::PlatformAdmin | pb::KeyRole::Admin, Some(org)) if org == principal.org_id => {
                    principal.org_id.clone()
                }
                (pb::KeyRole::PlatformAdmin | pb::KeyRole::Admin, Some(_)) => {
                    return Err(GwError::new(ErrorCode::NotFound, "no such org").with_param("org_id"));
                }
                _ => {
                    return Err(GwError::new(
                        ErrorCode::PermissionDenied,
                        "the admin API needs an admin key",
                    ));
                }
            }
        }
    };
    let req = query_request(org_id, &params, door)?;
    let group_by = req.group_by.clone();
    let (start_ms, end_ms) = (req.start_ms, req.end_ms);
    let org = req.org_id.clone();
    let report = p.query_usage(req).await?;
    let data: Vec<Value> = report.rows.iter().map(row_json).collect();
    Ok(json!({
        "object": "list",
        "org_id": org,
        "start": (start_ms > 0).then_some(start_ms / 1000),
        "end": (end_ms > 0).then_some(end_ms / 1000),
        "group_by": group_by,
        "data": data,
        "totals": row_json(&report.totals.unwrap_or_default()),
    }))
}

/// The query string as name–value pairs, decoded.
fn params(uri: &http::Uri) -> Result<Vec<(String, String)>, GwError> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| GwError::invalid("query", format!("invalid query string: {e}")))
}

fn query_request(
    org_id: String,
    params: &[(String, String)],
    door: Door,
) -> Result<pb::UsageQueryRequest, GwError> {
    let mut req = pb::UsageQueryRequest {
        org_id,
        ..Default::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in params {
        if seen.contains(&name.as_str()) {
            return Err(GwError::invalid(name.clone(), format!("`{name}` is given twice")));
        }
        seen.push(name);
        match name.as_str() {
            "start" => req.start_ms = time_ms("start", value)?,
            "end" => req.end_ms = time_ms("end", value)?,
            "group_by" => {
                for group in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                    if !["day", "key", "project", "model"].contains(&group) {
                        return Err(GwError::invalid(
                            "group_by",
                            format!("cannot group by `{group}`: day, key, project or model"),
                        ));
                    }
                    req.group_by.push(group.to_owned());
                }
            }
            "project_id" => req.project_id = Some(value.clone()),
            "key_id" => req.key_id = Some(filter("key_id", value)?),
            "model" => req.model = Some(filter("model", value)?),
            "org_id" if door == Door::Admin => {}
            _ => {
                return Err(GwError::invalid(
                    name.clone(),
                    format!("unknown parameter `{name}`: start, end, group_by, project_id, key_id, model"),
                ));
            }
        }
    }
    if let Some(project) = &req.project_id
        && !project.is_empty()
    {
        filter("project_id", project)?;
    }
    if req.start_ms > 0 && req.end_ms > 0 && req.end_ms <= req.start_ms {
        return Err(GwError::invalid("end", "`end` must be after `start`"));
    }
    Ok(req)
}

/// A filter value: not empty, at most 256 bytes, no control characters.
fn filter(param: &str, value: &str) -> Result<String, GwError> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(GwError::invalid(
            param,
            format!("`{param}` must be 1 to 256 characters, none of them control characters"),
        ));
    }
    Ok(value.to_owned())
}

/// `start`/`end`: Unix seconds, or a UTC date `YYYY-MM-DD` (its midnight);
/// Unix epoch milliseconds out.
fn time_ms(param: &str, value: &str) -> Result<i64, GwError> {
    let bad = || {
        GwError::invalid(
            param,
            format!("`{param}` must be Unix seconds or a date YYYY-MM-DD"),
        )
    };
    if let Ok(secs) = value.parse::<i64>() {
        // Up to the year 9999; 0 and negatives mean nothing useful here.
        if !(1..=253_402_300_799).contains(&secs) {
            return Err(bad());
        }
        return Ok(secs * 1000);
    }
    let mut parts = value.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (y, m, d) = (
        y.parse::<i32>().map_err(|_| bad())?,
        m.parse::<u8>().map_err(|_| bad())?,
        d.parse::<u8>().map_err(|_| bad())?,
    );
    let month = time::Month::try_from(m).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(y, month, d).map_err(|_| bad())?;
    let days = i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY);
    if days <= 0 {
        return Err(bad());
    }
    Ok(days * 86_400_000)
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// `YYYY-MM-DD` of a UTC day start.
fn date(day_ms: i64) -> String {
    let days = day_ms.div_euclid(86_400_000);
    i32::try_from(days)
        .ok()
        .and_then(|d| time::Date::from_julian_day(d + UNIX_EPOCH_JULIAN_DAY).ok())
        .map_or_else(
            || day_ms.to_string(),
            |d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        )
}

fn row_json(r: &pb::UsageRow) -> Value {
    let mut m = Map::new();
    m.insert("object".into(), "usage.row".into());
    if let Some(day) = r.day {
        m.insert("day".into(), date(day).into());
        m.insert("start_time".into(), (day / 1000).into());
    }
    if let Some(project) = &r.project_id {
        // Requests without a project are rolled up under "".
        let v = if project.is_empty() {
            Value::Null
        } else {
            project.clone().into()
        };
        m.insert("project_id".into(), v);
    }
    if let Some(key) = &r.key_id {
        m.insert("key_id".into(), key.clone().into());
    }
    if let Some(model) = &r.model {
        m.insert("model".into(), model.clone().into());
    }
    m.insert("requests".into(), r.requests.into());
    m.insert("input_tokens".into(), r.input_tokens.into());
    m.insert("output_tokens".into(), r.output_tokens.into());
    m.insert("cached_tokens".into(), r.cached_tokens.into());
    m.insert("reasoning_tokens".into(), r.reasoning_tokens.into());
    m.insert("cost_usd".into(), json!(r.cost_usd));
    // Of which billed to the org's own provider accounts (BYOK).
    m.insert("byok_requests".into(), r.byok_requests.into());
    m.insert("byok_cost_usd".into(), json!(r.byok_cost_usd));
    m.insert("cache_hits".into(), r.cache_hits.into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &str, door: Door) -> Result<pb::UsageQueryRequest, GwError> {
        let uri: http::Uri = format!("/v1/usage?{query}").parse().unwrap();
        query_request("org_1".into(), &params(&uri)?, door)
    }

    #[test]
    fn parameters_parse_or_name_the_bad_one() {
        let r = req(
            "start=2026-11-01&end=1800000000&group_by=day,%20model&project_id=&model=gpt-4o",
            Door::Own,
        )
        .unwrap();
        assert_eq!(r.start_ms, 1_793_491_200_000);
        assert_eq!(r.end_ms, 1_800_000_000_000);
        assert_eq!(r.group_by, ["day", "model"]);
        assert_eq!(r.project_id.as_deref(), Some(""));
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert_eq!(r.org_id, "org_1");
        assert!(req("org_id=org_2", Door::Admin).is_ok());
        for (query, param) in [
            ("start=yesterday", "start"),
            ("start=2026-02-30", "start"),
            ("end=2026-1-01", "end"),
            ("end=-5", "end"),
            ("start=2026-11-02&end=2026-11-01", "end"),
            ("group_by=day,provider", "group_by"),
            ("model=", "model"),
            ("key_id=a%00b", "key_id"),
            ("org_id=org_2", "org_id"),
            ("limit=5", "limit"),
            ("model=a&model=b", "model"),
        ] {
            let e = req(query, Door::Own).unwrap_err();
            assert_eq!(
                (e.code(), e.param()),
                (ErrorCode::InvalidRequest, Some(param)),
                "{query}"
            );
        }
    }

    #[test]
    fn days_read_back_as_dates() {
        assert_eq!(date(time_ms("d", "2026-11-22").unwrap()), "2026-11-22");
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(time_ms("d", "1970-01-02").unwrap(), 86_400_000);
    }
}
