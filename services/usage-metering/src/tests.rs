//! The store and the service against a real SQLite file in a temp dir.

use std::collections::HashMap;
use std::path::Path;

use llmgw_kit::ErrorCode;
use llmgw_kit::config::Config;
use llmgw_kit::services::Metering;
use llmgw_proto as pb;

use super::*;

async fn metering(dir: &Path) -> Metering {
    let mut config = Config::parse("{}", "test.yaml", &HashMap::new()).unwrap();
    config.data_dir = dir.to_path_buf();
    service(open(&config).await.unwrap())
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
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[tokio::test]
async fn batch_is_recorded_and_summed() {
    let dir = tempfile::tempdir().unwrap();
    let m = metering(dir.path()).await;
    let ack = m
        .record(vec![
            event("r1", "org_a", "gpt-4o-mini", 1000, 500),
            event("r2", "org_a", "gpt-4o-mini", 2000, 0),
            event("r3", "org_a", "gpt-4o", 10, 10),
        ])
        .await
        .unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (3, 0));

    let usage = m
        .get_usage(pb::UsageQuery {
            org_id: "org_a".to_owned(),
        })
        .await
        .unwrap();
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

#[tokio::test]
async fn cost_is_computed_from_the_price() {
    let dir = tempfile::tempdir().unwrap();
    let m = metering(dir.path()).await;
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

    let usage = m
        .get_usage(pb::UsageQuery {
            org_id: "org_a".to_owned(),
        })
        .await
        .unwrap();
    let cost = |model: &str| usage.by_model.iter().find(|u| u.model == model).unwrap().cost_usd;
    // 1000 × 0.15 + 500 × 0.60 per million tokens.
    assert!(close(cost("gpt-4o-mini"), 0.00045), "{}", cost("gpt-4o-mini"));
    assert!(close(cost("cached"), (600.0 * 0.15 + 400.0 * 0.075) / 1e6));
    assert!(close(cost("free"), 0.0));
    // Costliest first.
    let models: Vec<&str> = usage.by_model.iter().map(|u| u.model.as_str()).collect();
    assert_eq!(models, ["gpt-4o-mini", "cached", "free"]);
}

#[tokio::test]
async fn duplicates_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    duplicates_on(metering(dir.path()).await).await;
}

/// The row-by-row path (what PostgreSQL uses) keeps the same contract as
/// SQLite's one-statement batch.
#[tokio::test]
async fn duplicates_are_counted_once_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::parse("{}", "test.yaml", &HashMap::new()).unwrap();
    config.data_dir = dir.path().to_path_buf();
    duplicates_on(service(open(&config).await.unwrap().row_by_row())).await;
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

    let usage = m
        .get_usage(pb::UsageQuery {
            org_id: "org_a".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(usage.requests, 3);
    assert_eq!((usage.input_tokens, usage.output_tokens), (3000, 1500));
    assert!(close(usage.cost_usd, 3.0 * 0.00045));
}

#[tokio::test]
async fn usage_is_scoped_to_the_org_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let m = metering(dir.path()).await;
    m.record(vec![
        event("r1", "org_a", "gpt-4o-mini", 1000, 500),
        event("r2", "org_b", "gpt-4o-mini", 7000, 7000),
        event("r3", "org_b", "other-model", 1, 1),
    ])
    .await
    .unwrap();

    let a = m
        .get_usage(pb::UsageQuery {
            org_id: "org_a".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!((a.requests, a.input_tokens, a.output_tokens), (1, 1000, 500));
    assert_eq!(a.by_model.len(), 1);
    let b = m
        .get_usage(pb::UsageQuery {
            org_id: "org_b".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!((b.requests, b.input_tokens), (2, 7001));
    let none = m
        .get_usage(pb::UsageQuery {
            org_id: "org_c".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(none, pb::UsageSummary::default());

    let err = m
        .get_usage(pb::UsageQuery {
            org_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.param()),
        (ErrorCode::InvalidRequest, Some("org_id"))
    );
}

#[tokio::test]
async fn invalid_events_reject_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let m = metering(dir.path()).await;
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
    let usage = m
        .get_usage(pb::UsageQuery {
            org_id: "org_a".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(usage.requests, 0, "nothing of a rejected batch is kept");
}

#[tokio::test]
async fn events_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    metering(dir.path())
        .await
        .record(vec![event("r1", "org_a", "m", 5, 5)])
        .await
        .unwrap();
    let m = metering(dir.path()).await;
    let ack = m.record(vec![event("r1", "org_a", "m", 5, 5)]).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (0, 1));
    assert_eq!(
        m.get_usage(pb::UsageQuery {
            org_id: "org_a".to_owned()
        })
        .await
        .unwrap()
        .requests,
        1
    );
}

#[tokio::test]
async fn large_batches_span_several_statements_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let m = metering(dir.path()).await;
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
    let summary = m
        .get_usage(pb::UsageQuery {
            org_id: "org_a".into(),
        })
        .await
        .unwrap();
    assert_eq!(summary.requests, 400);
    assert_eq!(summary.input_tokens, 4000);
    assert_eq!(summary.output_tokens, 2000);
}
