//! The `cache_hit` flag (answers the edge served from its response cache)
//! is stored on both backends, by the batch statement and row by row, and
//! such events cost nothing.

use std::collections::HashMap;

use llmgw_kit::on_both_backends;
use llmgw_kit::testing::TestDb;
use llmgw_proto as pb;
use sqlx::Row as _;

use super::*;

on_both_backends!(cache_hits_are_stored_in_a_batch, cache_hits_are_stored_row_by_row);

fn event(request_id: &str, cache_hit: bool) -> pb::UsageEvent {
    pb::UsageEvent {
        request_id: request_id.to_owned(),
        org_id: "org_a".to_owned(),
        key_id: "key_1".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        provider: "emu".to_owned(),
        provider_model: "gpt-4o-mini".to_owned(),
        status: "ok".to_owned(),
        input_tokens: 1_000_000,
        // The edge sends a hit without a price: no upstream cost.
        price: (!cache_hit).then_some(pb::Price {
            input_per_mtok: 2.0,
            ..Default::default()
        }),
        started_at_ms: 1_700_000_000_000,
        cache_hit,
        ..Default::default()
    }
}

async fn stored(store: UsageStore) {
    let pool = store.pool.clone();
    let m = service(store);
    m.record(vec![event("hit", true), event("miss", false)])
        .await
        .unwrap();
    // The Any driver reads no SQLite booleans: as a BIGINT on both.
    let rows = sqlx::query(
        "SELECT request_id, CAST(CASE WHEN cache_hit THEN 1 ELSE 0 END AS BIGINT), cost_usd \
         FROM usage_events ORDER BY request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let got: Vec<(String, i64, f64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, [("hit".to_owned(), 1, 0.0), ("miss".to_owned(), 0, 2.0)]);
    let report = m
        .query_usage(pb::UsageQueryRequest {
            org_id: "org_a".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let totals = report.totals.unwrap();
    assert_eq!(totals.requests, 2, "a hit is a request");
    assert_eq!(totals.cache_hits, 1, "counted apart in the roll-ups");
    assert!((totals.cost_usd - 2.0).abs() < 1e-9, "{totals:?}");
}

async fn cache_hits_are_stored_in_a_batch(db: TestDb) {
    stored(open(&db.config(&HashMap::new())).await.unwrap()).await;
}

async fn cache_hits_are_stored_row_by_row(db: TestDb) {
    stored(open(&db.config(&HashMap::new())).await.unwrap().row_by_row()).await;
}
