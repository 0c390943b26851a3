//! The store and the service on both backends: every test body runs against
//! a SQLite file in a temp dir (`sqlite::…`) and against a throwaway
//! PostgreSQL server (`postgres::…`).

use std::collections::HashMap;

use llmgw_kit::ErrorCode;
use llmgw_kit::on_both_backends;
use llmgw_kit::services::Metering;
use llmgw_kit::testing::TestDb;
use llmgw_proto as pb;
use sqlx::Row as _;

use super::*;

on_both_backends!(
    batch_is_recorded_and_summed,
    cost_is_computed_from_the_price,
    duplicates_are_counted_once,
    duplicates_are_counted_once_row_by_row,
    usage_is_scoped_to_the_org_asked_for,
    invalid_events_reject_the_whole_batch,
    events_survive_a_reopen,
    large_batches_span_several_statements_exactly,
    large_batches_row_by_row,
    hostile_input_is_stored_verbatim_or_refused,
    stores_sharing_a_database_keep_their_migrations_and_tables_apart,
    rollups_equal_the_sum_of_events,
    rollups_equal_the_sum_of_events_row_by_row,
    queries_group_and_filter_one_org,
    invalid_queries_name_the_field,
    retention_deletes_old_events_in_batches_and_keeps_rollups,
    the_rollup_migration_backfills_stored_events,
    concurrent_batches_roll_up_exactly,
);

async fn store(db: &TestDb) -> UsageStore {
    open(&db.config(&HashMap::new())).await.unwrap()
}

async fn metering(db: &TestDb) -> Metering {
    service(store(db).await)
}

async fn usage_of(m: &Metering, org_id: &str) -> Result<pb::UsageSummary, llmgw_kit::GwError> {
    m.get_usage(pb::UsageQuery {
        org_id: org_id.to_owned(),
    })
    .await
}

fn mini() -> pb::Price {
    pb::Price {
        input_per_mtok: 0.15,
        output_per_mtok: 0.60,
        cached_input_per_mtok: None,
    }
}

fn event(request_id: &str, org_id: &str, model: &str, input: u32, output: u32) -> pb::UsageEvent {
    pb::UsageEvent {
        request_id: request_id.to_owned(),
        org_id: org_id.to_owned(),
        project_id: None,
        key_id: "key_1".to_owned(),
        model: model.to_owned(),
        provider: "openai".to_owned(),
        provider_model: model.to_owned(),
        input_tokens: input,
        output_tokens: output,
        cached_tokens: 0,
        reasoning_tokens: 0,
        price: Some(mini()),
        estimated: false,
        streamed: true,
        status: "ok".to_owned(),
        http_status: 200,
        started_at_ms: 1_700_000_000_000,
        latency_ms: 12.5,
        byok: false,
        traceparent: String::new(),
        cache_hit: false,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

async fn batch_is_recorded_and_summed(db: TestDb) {
    let m = metering(&db).await;
    let ack = m
        .record(vec![
            event("r1", "org_a", "gpt-4o-mini", 1000, 500),
            event("r2", "org_a", "gpt-4o-mini", 2000, 0),
            event("r3", "org_a", "gpt-4o", 10, 10),
        ])
        .await
        .unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (3, 0));

    let usage = usage_of(&m, "org_a").await.unwrap();
    assert_eq!(usage.requests, 3);
    assert_eq!(usage.input_tokens, 3010);
    assert_eq!(usage.output_tokens, 510);
    let want = (3010.0 * 0.15 + 510.0 * 0.60) / 1e6;
    assert!(close(usage.cost_usd, want), "{} != {want}", usage.cost_usd);
    assert_eq!(usage.by_model.len(), 2);
    assert_eq!(usage.by_model[0].model, "gpt-4o-mini");
    assert_eq!(usage.by_model[0].provider, "openai");
    assert_eq!(usage.by_model[0].requests, 2);

    assert_eq!(m.record(Vec::new()).await.unwrap(), pb::RecordAck::default());
}

async fn cost_is_computed_from_the_price(db: TestDb) {
    let m = metering(&db).await;
    let mut cached = event("r2", "org_a", "cached", 1000, 0);
    cached.cached_tokens = 400;
    cached.price = Some(pb::Price {
        cached_input_per_mtok: Some(0.075),
        ..mini()
    });
    let mut free = event("r3", "org_a", "free", 1000, 1000);
    free.price = None;
    m.record(vec![event("r1", "org_a", "gpt-4o-mini", 1000, 500), cached, free])
        .await
        .unwrap();

    let usage = usage_of(&m, "org_a").await.unwrap();
    let cost = |model: &str| usage.by_model.iter().find(|u| u.model == model).unwrap().cost_usd;
    // 1000 × 0.15 + 500 × 0.60 per million tokens.
    assert!(close(cost("gpt-4o-mini"), 0.00045), "{}", cost("gpt-4o-mini"));
    assert!(close(cost("cached"), (600.0 * 0.15 + 400.0 * 0.075) / 1e6));
    assert!(close(cost("free"), 0.0));
    // Costliest first.
    let models: Vec<&str> = usage.by_model.iter().map(|u| u.model.as_str()).collect();
    assert_eq!(models, ["gpt-4o-mini", "cached", "free"]);
}

async fn duplicates_are_counted_once(db: TestDb) {
    duplicates_on(metering(&db).await).await;
}

/// The row-by-row fallback keeps the same contract as the one-statement batch.
async fn duplicates_are_counted_once_row_by_row(db: TestDb) {
    duplicates_on(service(store(&db).await.row_by_row())).await;
}

async fn duplicates_on(m: Metering) {
    let batch = vec![
        event("r1", "org_a", "gpt-4o-mini", 1000, 500),
        event("r2", "org_a", "gpt-4o-mini", 1000, 500),
    ];
    let ack = m.record(batch.clone()).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (2, 0));

    // The same batch resent, and a duplicate inside one batch.
    let ack = m.record(batch).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (0, 2));
    let ack = m
        .record(vec![
            event("r3", "org_a", "gpt-4o-mini", 1000, 500),
            event("r3", "org_a", "gpt-4o-mini", 9999, 9999),
            event("r1", "org_a", "gpt-4o-mini", 9999, 9999),
        ])
        .await
        .unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (1, 2));

    let usage = usage_of(&m, "org_a").await.unwrap();
    assert_eq!(usage.requests, 3);
    assert_eq!((usage.input_tokens, usage.output_tokens), (3000, 1500));
    assert!(close(usage.cost_usd, 3.0 * 0.00045));
}

async fn usage_is_scoped_to_the_org_asked_for(db: TestDb) {
    let m = metering(&db).await;
    m.record(vec![
        event("r1", "org_a", "gpt-4o-mini", 1000, 500),
        event("r2", "org_b", "gpt-4o-mini", 7000, 7000),
        event("r3", "org_b", "other-model", 1, 1),
    ])
    .await
    .unwrap();

    let a = usage_of(&m, "org_a").await.unwrap();
    assert_eq!((a.requests, a.input_tokens, a.output_tokens), (1, 1000, 500));
    assert_eq!(a.by_model.len(), 1);
    let b = usage_of(&m, "org_b").await.unwrap();
    assert_eq!((b.requests, b.input_tokens), (2, 7001));
    let none = usage_of(&m, "org_c").await.unwrap();
    assert_eq!(none, pb::UsageSummary::default());

    let err = usage_of(&m, "").await.unwrap_err();
    assert_eq!(
        (err.code(), err.param()),
        (ErrorCode::InvalidRequest, Some("org_id"))
    );
}

async fn invalid_events_reject_the_whole_batch(db: TestDb) {
    let m = metering(&db).await;
    let mut bad_latency = event("r3", "org_a", "m", 1, 1);
    bad_latency.latency_ms = f64::NAN;
    let mut bad_price = event("r3", "org_a", "m", 1, 1);
    bad_price.price = Some(pb::Price {
        input_per_mtok: -1.0,
        ..mini()
    });
    for (bad, param) in [
        (event("", "org_a", "m", 1, 1), "request_id"),
        (event("r3", "", "m", 1, 1), "org_id"),
        (bad_latency, "latency_ms"),
        (bad_price, "price"),
    ] {
        let err = m
            .record(vec![event("r1", "org_a", "m", 1, 1), bad])
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(err.param(), Some(param));
        assert!(err.message().contains("event 1"), "{}", err.message());
    }
    let usage = usage_of(&m, "org_a").await.unwrap();
    assert_eq!(usage.requests, 0, "nothing of a rejected batch is kept");
}

async fn events_survive_a_reopen(db: TestDb) {
    metering(&db)
        .await
        .record(vec![event("r1", "org_a", "m", 5, 5)])
        .await
        .unwrap();
    let m = metering(&db).await;
    let ack = m.record(vec![event("r1", "org_a", "m", 5, 5)]).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (0, 1));
    assert_eq!(usage_of(&m, "org_a").await.unwrap().requests, 1);
}

async fn large_batches_span_several_statements_exactly(db: TestDb) {
    large_batches_on(metering(&db).await).await;
}

async fn large_batches_row_by_row(db: TestDb) {
    large_batches_on(service(store(&db).await.row_by_row())).await;
}

async fn large_batches_on(m: Metering) {
    // 300 events: two full multi-row statements and a partial one, with
    // duplicates inside the batch and across statement boundaries.
    let mut events: Vec<_> = (0..300)
        .map(|i| event(&format!("r{i}"), "org_a", "m", 10, 5))
        .collect();
    events.push(event("r5", "org_a", "m", 10, 5));
    events.push(event("r200", "org_a", "m", 10, 5));
    let ack = m.record(events).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (300, 2));
    let again = m
        .record(
            (250..400)
                .map(|i| event(&format!("r{i}"), "org_a", "m", 10, 5))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (100, 50));
    let summary = usage_of(&m, "org_a").await.unwrap();
    assert_eq!(summary.requests, 400);
    assert_eq!(summary.input_tokens, 4000);
    assert_eq!(summary.output_tokens, 2000);
}

/// SQL in values, 10 KB strings and unicode are stored and read back
/// verbatim by both insert paths; NUL, which PostgreSQL's TEXT cannot hold,
/// is refused on both backends before anything is written.
async fn hostile_input_is_stored_verbatim_or_refused(db: TestDb) {
    let store = store(&db).await;
    let injection = "'; DROP TABLE usage_events; --";
    let long = "x".repeat(10 * 1024);
    let unicode = "模型 🚀 Ωmega \u{202e}ltr é\u{fffd}";

    let mut first = event(injection, injection, unicode, 1, 1);
    first.provider.clone_from(&long);
    first.project_id = Some(injection.to_owned());
    first.estimated = true;
    first.streamed = false;
    first.http_status = 529;
    let second = event(&long, injection, injection, 2, 2);
    let batch = service(store.clone());
    let row_by_row = service(store.clone().row_by_row());
    let ack = batch.record(vec![first.clone()]).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (1, 0), "{}", db.backend());
    let ack = row_by_row.record(vec![second, first.clone()]).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (1, 1), "{}", db.backend());

    let usage = usage_of(&batch, injection).await.unwrap();
    assert_eq!((usage.requests, usage.input_tokens), (2, 3));
    let mut models: Vec<(&str, &str)> = usage
        .by_model
        .iter()
        .map(|u| (u.model.as_str(), u.provider.as_str()))
        .collect();
    models.sort_unstable();
    assert_eq!(models, [(injection, "openai"), (unicode, long.as_str())]);

    // Every column type reads back as written: TEXT, BOOLEAN (cast, see
    // `kit::db`), INTEGER, BIGINT and DOUBLE PRECISION through the Any driver.
    let row = sqlx::query(
        "SELECT project_id, provider, CAST(estimated AS INTEGER), CAST(streamed AS INTEGER), \
         http_status, started_at, latency_ms, cost_usd FROM usage_events WHERE request_id = $1",
    )
    .bind(injection)
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(
        row.try_get::<Option<String>, _>(0).unwrap().as_deref(),
        Some(injection)
    );
    assert_eq!(row.try_get::<String, _>(1).unwrap(), long);
    assert_eq!(row.try_get::<i64, _>(2).unwrap(), 1);
    assert_eq!(row.try_get::<i64, _>(3).unwrap(), 0);
    assert_eq!(row.try_get::<i32, _>(4).unwrap(), 529);
    assert_eq!(row.try_get::<i64, _>(5).unwrap(), first.started_at_ms);
    assert!(close(row.try_get::<f64, _>(6).unwrap(), 12.5));
    assert!(close(row.try_get::<f64, _>(7).unwrap(), 0.75e-6));

    for (field, mut bad) in [
        ("request_id", event("r\0", "org_nul", "m", 1, 1)),
        ("model", event("r_nul", "org_nul", "m\0odel", 1, 1)),
        ("project_id", event("r_nul", "org_nul", "m", 1, 1)),
    ] {
        if field == "project_id" {
            bad.project_id = Some("\0".to_owned());
        }
        for m in [&batch, &row_by_row] {
            let err = m.record(vec![bad.clone()]).await.unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidRequest, "{}", db.backend());
            assert_eq!(err.param(), Some(field));
        }
    }
    let nothing = usage_of(&batch, "org_nul").await.unwrap();
    assert_eq!(nothing.requests, 0);
    let err = usage_of(&batch, "org\0").await.unwrap_err();
    assert_eq!(
        (err.code(), err.param()),
        (ErrorCode::InvalidRequest, Some("org_id"))
    );
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM usage_events")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "the table is intact");
}

/// Another store in the same database (as `auth` shares PostgreSQL with
/// metering) with its own version 1 and even a table of the same name:
/// each store's schema keeps its migrations and tables apart, in either
/// order of opening and on reopen.
async fn stores_sharing_a_database_keep_their_migrations_and_tables_apart(db: TestDb) {
    let config = db.config(&HashMap::new());
    let other_migrations: &[llmgw_kit::db::MigrationSpec] = &[
        (1, "other", "CREATE TABLE usage_events (other_id BIGINT NOT NULL)"),
        (2, "other more", "CREATE TABLE other_things (id TEXT PRIMARY KEY)"),
    ];
    let other = llmgw_kit::db::open(&config, "other.db", other_migrations)
        .await
        .unwrap();
    let m = metering(&db).await;
    m.record(vec![event("r1", "org_a", "m", 1, 1)]).await.unwrap();
    sqlx::query("INSERT INTO usage_events (other_id) VALUES ($1)")
        .bind(7_i64)
        .execute(&other)
        .await
        .unwrap();
    // Reopening both runs their migrators again against what is applied.
    llmgw_kit::db::open(&config, "other.db", other_migrations)
        .await
        .unwrap();
    let m = metering(&db).await;
    let usage = usage_of(&m, "org_a").await.unwrap();
    assert_eq!(usage.requests, 1, "{}", db.backend());
    let other_id: i64 = sqlx::query("SELECT other_id FROM usage_events")
        .fetch_one(&other)
        .await
        .unwrap()
        .get(0);
    assert_eq!(other_id, 7);
}

const DAY: i64 = 86_400_000;
/// 2023-11-14 00:00 UTC, a day start.
const DAY0: i64 = 1_699_920_000_000;

/// An event with every dimension set: `day` days after [`DAY0`] plus some hours.
#[expect(clippy::too_many_arguments, reason = "a test row, every column named")]
fn full_event(
    request_id: &str,
    org: &str,
    project: Option<&str>,
    key: &str,
    model: &str,
    day: i64,
    input: u32,
    output: u32,
) -> pb::UsageEvent {
    pb::UsageEvent {
        project_id: project.map(str::to_owned),
        key_id: key.to_owned(),
        cached_tokens: input / 4,
        reasoning_tokens: output / 2,
        started_at_ms: DAY0 + day * DAY + 3_600_000 * (day % 23),
        ..event(request_id, org, model, input, output)
    }
}

/// A mixed load: two orgs, projects and none, two keys, three models, three
/// days, with duplicates inside and across batches.
fn mixed_batches() -> Vec<Vec<pb::UsageEvent>> {
    let mut batches = Vec::new();
    let mut n = 0;
    for round in 0..3 {
        let mut batch = Vec::new();
        for i in 0..40 {
            n += 1;
            let org = if i % 3 == 0 { "org_b" } else { "org_a" };
            let project = match i % 4 {
                0 => None,
                1 => Some("proj_x"),
                _ => Some("proj_y"),
            };
            let key = if i % 2 == 0 { "key_1" } else { "key_2" };
            let model = ["gpt-4o-mini", "gpt-4o", "claude"][i % 3];
            batch.push(full_event(
                &format!("r{n}"),
                org,
                project,
                key,
                model,
                (i % 3) as i64,
                10 * (i as u32 + 1),
                7 * (round + 1),
            ));
        }
        // Duplicates: inside the batch (with other numbers) and of the last batch.
        batch.push(full_event("r1", "org_a", None, "key_1", "gpt-4o", 0, 9999, 9999));
        let again = batch[5].clone();
        batch.push(again);
        batches.push(batch);
    }
    batches
}

/// `usage_daily` compared with the events it rolls up, column by column.
async fn rollups_match_events(store: &UsageStore) {
    let sums = "CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
                CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(reasoning_tokens) AS BIGINT), \
                CAST(SUM(cost_usd) AS DOUBLE PRECISION)";
    let events = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT (started_at / 86400000) * 86400000, org_id, COALESCE(project_id, ''), key_id, model, \
         COUNT(*), {sums} FROM usage_events \
         GROUP BY (started_at / 86400000) * 86400000, org_id, COALESCE(project_id, ''), key_id, model \
         ORDER BY 1, 2, 3, 4, 5"
    )))
    .fetch_all(&store.pool)
    .await
    .unwrap();
    let daily = sqlx::query(
        "SELECT day, org_id, project_id, key_id, model, requests, input_tokens, output_tokens, \
         cached_tokens, reasoning_tokens, cost_usd FROM usage_daily ORDER BY 1, 2, 3, 4, 5",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), daily.len());
    assert!(!daily.is_empty());
    for (e, d) in events.iter().zip(&daily) {
        for i in 0..10 {
            if (1..=4).contains(&i) {
                assert_eq!(e.get::<String, _>(i), d.get::<String, _>(i), "column {i}");
            } else {
                assert_eq!(e.get::<i64, _>(i), d.get::<i64, _>(i), "column {i}");
            }
        }
        let (a, b) = (e.get::<f64, _>(10), d.get::<f64, _>(10));
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }
}

async fn rollups_equal_the_sum_of_events(db: TestDb) {
    rollups_on(store(&db).await).await;
}

async fn rollups_equal_the_sum_of_events_row_by_row(db: TestDb) {
    rollups_on(store(&db).await.row_by_row()).await;
}

async fn rollups_on(store: UsageStore) {
    let m = service(store.clone());
    let mut accepted = 0;
    for batch in mixed_batches() {
        accepted += m.record(batch.clone()).await.unwrap().accepted;
        // Resent whole: nothing changes.
        let ack = m.record(batch).await.unwrap();
        assert_eq!(ack.accepted, 0);
    }
    assert_eq!(accepted, 120);
    rollups_match_events(&store).await;

    // The report's totals are the org's events, duplicates counted once.
    let report = m
        .query_usage(pb::UsageQueryRequest {
            org_id: "org_a".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let legacy = usage_of(&m, "org_a").await.unwrap();
    let totals = report.totals.unwrap();
    assert_eq!(totals.requests, legacy.requests);
    assert_eq!(totals.requests, 78, "26 of each 40 are org_a's");
    assert_eq!(totals.input_tokens, legacy.input_tokens);
    assert_eq!(totals.output_tokens, legacy.output_tokens);
    assert!((totals.cost_usd - legacy.cost_usd).abs() < 1e-12);
    assert_eq!(report.rows.len(), 1, "ungrouped: one row");
    assert_eq!(report.rows[0].day, None);
}

async fn report(m: &Metering, req: pb::UsageQueryRequest) -> pb::UsageReport {
    m.query_usage(req).await.unwrap()
}

fn of(org: &str, group_by: &[&str]) -> pb::UsageQueryRequest {
    pb::UsageQueryRequest {
        org_id: org.to_owned(),
        group_by: group_by.iter().map(|g| (*g).to_owned()).collect(),
        ..Default::default()
    }
}

async fn queries_group_and_filter_one_org(db: TestDb) {
    let m = metering(&db).await;
    m.record(vec![
        full_event("a1", "org_a", None, "key_1", "m1", 0, 100, 10),
        full_event("a2", "org_a", Some("p1"), "key_1", "m1", 0, 200, 20),
        full_event("a3", "org_a", Some("p1"), "key_2", "m2", 1, 300, 30),
        full_event("a4", "org_a", Some("p2"), "key_2", "m1", 2, 400, 40),
        full_event("b1", "org_b", Some("p1"), "key_1", "m1", 0, 5000, 500),
    ])
    .await
    .unwrap();

    // By day: three days, in order, each its UTC day start.
    let r = report(&m, of("org_a", &["day"])).await;
    let days: Vec<(Option<i64>, u64, u64)> = r
        .rows
        .iter()
        .map(|r| (r.day, r.requests, r.input_tokens))
        .collect();
    assert_eq!(
        days,
        [
            (Some(DAY0), 2, 300),
            (Some(DAY0 + DAY), 1, 300),
            (Some(DAY0 + 2 * DAY), 1, 400)
        ]
    );
    let t = r.totals.unwrap();
    assert_eq!((t.requests, t.input_tokens, t.output_tokens), (4, 1000, 100));
    assert_eq!(
        (t.cached_tokens, t.reasoning_tokens),
        (25 + 50 + 75 + 100, 5 + 10 + 15 + 20)
    );
    let legacy = usage_of(&m, "org_a").await.unwrap().cost_usd;
    assert!(
        t.cost_usd > 0.0 && (t.cost_usd - legacy).abs() < 1e-15,
        "{} != {legacy}",
        t.cost_usd
    );
    let by_day: f64 = r.rows.iter().map(|r| r.cost_usd).sum();
    assert!(close(t.cost_usd, by_day));

    // By model and key; by project ('' for none).
    let r = report(&m, of("org_a", &["model", "key"])).await;
    let rows: Vec<(&str, &str, u64)> = r
        .rows
        .iter()
        .map(|r| {
            (
                r.model.as_deref().unwrap(),
                r.key_id.as_deref().unwrap(),
                r.requests,
            )
        })
        .collect();
    assert_eq!(rows, [("m1", "key_1", 2), ("m1", "key_2", 1), ("m2", "key_2", 1)]);
    assert!(r.rows.iter().all(|r| r.day.is_none() && r.project_id.is_none()));
    let r = report(&m, of("org_a", &["project", "project"])).await;
    let rows: Vec<(&str, u64)> = r
        .rows
        .iter()
        .map(|r| (r.project_id.as_deref().unwrap(), r.requests))
        .collect();
    assert_eq!(rows, [("", 1), ("p1", 2), ("p2", 1)]);

    // Filters, alone and together, and the day range (end exclusive).
    let filtered = |f: fn(&mut pb::UsageQueryRequest)| {
        let mut req = of("org_a", &[]);
        f(&mut req);
        req
    };
    let count = |r: pb::UsageReport| r.totals.unwrap().requests;
    assert_eq!(
        count(report(&m, filtered(|r| r.project_id = Some("p1".into()))).await),
        2
    );
    assert_eq!(
        count(report(&m, filtered(|r| r.project_id = Some(String::new()))).await),
        1
    );
    assert_eq!(
        count(report(&m, filtered(|r| r.key_id = Some("key_2".into()))).await),
        2
    );
    assert_eq!(
        count(report(&m, filtered(|r| r.model = Some("m1".into()))).await),
        3
    );
    assert_eq!(
        count(
            report(
                &m,
                filtered(|r| {
                    r.model = Some("m1".into());
                    r.key_id = Some("key_2".into());
                })
            )
            .await
        ),
        1
    );
    // start mid-day 1 counts all of day 1; end at day 2's start excludes it.
    assert_eq!(
        count(
            report(
                &m,
                filtered(|r| {
                    r.start_ms = DAY0 + DAY + 5;
                    r.end_ms = DAY0 + 2 * DAY;
                })
            )
            .await
        ),
        1
    );
    assert_eq!(
        count(report(&m, filtered(|r| r.start_ms = DAY0 + 3 * DAY)).await),
        0
    );

    // Another org's filters never reach org_a's rows, and org_b sees its own only.
    let mut b = of("org_b", &["model", "key", "project", "day"]);
    b.project_id = Some("p1".into());
    let r = report(&m, b).await;
    assert_eq!(r.rows.len(), 1);
    assert_eq!((r.rows[0].requests, r.rows[0].input_tokens), (1, 5000));
    let none = report(&m, of("org_c", &["day"])).await;
    assert!(none.rows.is_empty());
    assert_eq!(none.totals.unwrap().requests, 0);
}

async fn invalid_queries_name_the_field(db: TestDb) {
    let m = metering(&db).await;
    let mut cases = vec![
        (of("", &[]), "org_id"),
        (of("org_a", &["day", "provider"]), "group_by"),
        (of("org_a", &["day; DROP TABLE usage_daily"]), "group_by"),
        (of("org\0", &[]), "org_id"),
    ];
    let mut bad_model = of("org_a", &[]);
    bad_model.model = Some("m\0".into());
    cases.push((bad_model, "model"));
    let mut backwards = of("org_a", &[]);
    backwards.start_ms = DAY0 + DAY;
    backwards.end_ms = DAY0;
    cases.push((backwards, "end"));
    for (req, field) in cases {
        let err = m.query_usage(req).await.unwrap_err();
        assert_eq!(
            (err.code(), err.param()),
            (ErrorCode::InvalidRequest, Some(field))
        );
    }
    // Hostile values are only ever bound.
    let mut hostile = of("'; DROP TABLE usage_daily; --", &["model"]);
    hostile.key_id = Some("' OR 1=1 --".into());
    assert!(report(&m, hostile).await.rows.is_empty());
}

async fn retention_deletes_old_events_in_batches_and_keeps_rollups(db: TestDb) {
    let store = store(&db).await;
    let m = service(store.clone());
    let events: Vec<_> = (0..25)
        .map(|i| full_event(&format!("old{i}"), "org_a", None, "key_1", "m", 0, 10, 1))
        .chain((0..5).map(|i| full_event(&format!("new{i}"), "org_a", None, "key_1", "m", 5, 10, 1)))
        .collect();
    m.record(events).await.unwrap();
    let before = report(&m, of("org_a", &["day"])).await;

    let cutoff = DAY0 + 2 * DAY;
    assert_eq!(store.delete_expired_batch(cutoff, 10).await.unwrap(), 10);
    let stop = llmgw_kit::shutdown::CancellationToken::new();
    let rest = store
        .delete_expired(cutoff, 10, std::time::Duration::from_millis(1), &stop)
        .await
        .unwrap();
    assert_eq!(rest, 15);
    assert_eq!(
        store
            .delete_expired(cutoff, 10, std::time::Duration::ZERO, &stop)
            .await
            .unwrap(),
        0
    );

    let ids: Vec<String> = sqlx::query("SELECT request_id FROM usage_events ORDER BY request_id")
        .fetch_all(&store.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["new0", "new1", "new2", "new3", "new4"], "{}", db.backend());
    // The roll-ups are untouched; the request log has only the recent events.
    assert_eq!(report(&m, of("org_a", &["day"])).await, before);
    assert_eq!(before.totals.unwrap().requests, 30);
    assert_eq!(usage_of(&m, "org_a").await.unwrap().requests, 5);
    // A deleted event resent is new to the log again, but it is the edge's
    // replay window (minutes), far inside any retention, that makes this moot.

    // Zero retention starts no task.
    assert!(spawn_retention(store.clone(), std::time::Duration::ZERO, stop.clone()).is_none());
    let task = spawn_retention(store, std::time::Duration::from_secs(3600), stop.clone()).unwrap();
    stop.cancel();
    task.await.unwrap();
}

/// Events stored before the roll-ups existed are rolled up by the migration:
/// the roll-ups and their migration are undone, and the store reopened.
async fn the_rollup_migration_backfills_stored_events(db: TestDb) {
    let events = vec![
        full_event("a1", "org_a", None, "key_1", "m1", 0, 100, 10),
        full_event("a2", "org_a", Some("p1"), "key_1", "m1", 0, 200, 20),
        full_event("a3", "org_a", Some("p1"), "key_1", "m1", 1, 300, 30),
    ];
    let before = store(&db).await;
    service(before.clone()).record(events).await.unwrap();
    for change in [
        "UPDATE usage_events SET cost_usd = 0.5",
        "UPDATE usage_events SET byok = TRUE WHERE request_id = 'a3'",
    ] {
        sqlx::query(change).execute(&before.pool).await.unwrap();
    }
    for undo in [
        "DROP TABLE usage_daily",
        "DROP INDEX usage_events_started",
        "DELETE FROM _sqlx_migrations WHERE version IN (3, 4, 6)",
    ] {
        sqlx::query(undo).execute(&before.pool).await.unwrap();
    }
    let pool = before.pool;
    pool.close().await;
    let store = store(&db).await;
    rollups_match_events(&store).await;
    let r = report(&service(store), of("org_a", &["day", "project"])).await;
    let rows: Vec<(i64, &str, u64, f64, u64, f64)> = r
        .rows
        .iter()
        .map(|r| {
            (
                r.day.unwrap(),
                r.project_id.as_deref().unwrap(),
                r.requests,
                r.cost_usd,
                r.byok_requests,
                r.byok_cost_usd,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (DAY0, "", 1, 0.5, 0, 0.0),
            (DAY0, "p1", 1, 0.5, 0, 0.0),
            (DAY0 + DAY, "p1", 1, 0.5, 1, 0.5)
        ]
    );
}

/// Eight writers at once, over the same groups in different orders and with
/// overlapping request ids (each id once in the log, whoever wins): no
/// deadlock, and the roll-ups still equal the events.
async fn concurrent_batches_roll_up_exactly(db: TestDb) {
    let store = store(&db).await;
    let tasks: Vec<_> = (0..8_usize)
        .map(|w| {
            let m = service(if w % 2 == 0 {
                store.clone()
            } else {
                store.clone().row_by_row()
            });
            tokio::spawn(async move {
                let mut accepted = 0;
                for round in 0..5_usize {
                    let mut batch: Vec<_> = (0..30_usize)
                        .map(|i| {
                            let n = (w * 7 + round * 30 + i) % 200;
                            let model = ["m1", "m2", "m3"][(i + w) % 3];
                            full_event(
                                &format!("c{n}"),
                                "org_a",
                                None,
                                "key_1",
                                model,
                                (i % 2) as i64,
                                10,
                                3,
                            )
                        })
                        .collect();
                    if w % 3 == 0 {
                        batch.reverse();
                    }
                    accepted += m.record(batch).await.unwrap().accepted;
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let events: i64 = sqlx::query("SELECT COUNT(*) FROM usage_events")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(accepted, u64::try_from(events).unwrap(), "{}", db.backend());
    rollups_match_events(&store).await;
    let m = service(store);
    assert_eq!(
        report(&m, of("org_a", &[])).await.totals.unwrap().requests,
        accepted
    );
}
