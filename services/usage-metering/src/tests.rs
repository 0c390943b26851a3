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
