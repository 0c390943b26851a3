//! The `byok` flag is stored on both backends, by the batch statement and
//! row by row, and the roll-ups count what was billed to the org's own
//! provider account apart.

use std::collections::HashMap;

use llmgw_kit::on_both_backends;
use llmgw_kit::testing::TestDb;
use llmgw_proto as pb;
use sqlx::Row as _;

use super::*;

on_both_backends!(byok_is_stored_in_a_batch, byok_is_stored_row_by_row);

fn event(request_id: &str, byok: bool) -> pb::UsageEvent {
    pb::UsageEvent {
        request_id: request_id.to_owned(),
        org_id: "org_a".to_owned(),
        key_id: "key_1".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        provider: "mycred".to_owned(),
        provider_model: "gpt-4o-mini".to_owned(),
        status: "ok".to_owned(),
        input_tokens: if byok { 1_000_000 } else { 2_000_000 },
        price: Some(pb::Price {
            input_per_mtok: 1.5,
            ..Default::default()
        }),
        started_at_ms: 1_700_000_000_000,
        byok,
        ..Default::default()
    }
}

async fn stored(store: UsageStore) {
    let pool = store.pool.clone();
    let m = service(store);
    m.record(vec![event("own", true), event("platform", false)])
        .await
        .unwrap();
    // The Any driver reads no SQLite booleans: as a BIGINT on both.
    let rows = sqlx::query(
        "SELECT request_id, CAST(CASE WHEN byok THEN 1 ELSE 0 END AS BIGINT) FROM usage_events ORDER BY request_id",
    )
        .fetch_all(&pool)
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [("own".to_owned(), 1), ("platform".to_owned(), 0)]);

    let report = m
        .query_usage(pb::UsageQueryRequest {
            org_id: "org_a".to_owned(),
            group_by: vec!["model".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let totals = report.totals.unwrap();
    assert_eq!((totals.requests, totals.byok_requests), (2, 1));
    assert!((totals.cost_usd - 4.5).abs() < 1e-9, "{totals:?}");
    assert!((totals.byok_cost_usd - 1.5).abs() < 1e-9, "{totals:?}");
    assert_eq!(report.rows[0].byok_requests, 1);
}

async fn byok_is_stored_in_a_batch(db: TestDb) {
    stored(open(&db.config(&HashMap::new())).await.unwrap()).await;
}

async fn byok_is_stored_row_by_row(db: TestDb) {
    stored(open(&db.config(&HashMap::new())).await.unwrap().row_by_row()).await;
}
