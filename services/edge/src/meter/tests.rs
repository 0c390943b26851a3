use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use llmgw_kit::services::MeteringService;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;

use super::*;

/// Fails the first `fail` calls, then records request ids.
#[derive(Default)]
struct Flaky {
    fail: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl MeteringService for Flaky {
    async fn record(&self, events: Vec<UsageEvent>) -> Result<pb::RecordAck, GwError> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(GwError::new(ErrorCode::Unavailable, "down"));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.extend(events.iter().map(|e| e.request_id.clone()));
        Ok(pb::RecordAck {
            accepted: events.len() as u64,
            duplicates: 0,
        })
    }
    async fn get_usage(&self, _q: pb::UsageQuery) -> Result<pb::UsageSummary, GwError> {
        Ok(pb::UsageSummary::default())
    }
}

fn event(i: usize) -> UsageEvent {
    UsageEvent {
        request_id: format!("r{i}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn batches_survive_an_outage_in_order() {
    let flaky = Arc::new(Flaky {
        fail: AtomicUsize::new(3),
        ..Default::default()
    });
    let config = MeteringConfig {
        flush_interval: Duration::from_millis(10),
        batch_size: 4,
        buffer: 1000,
    };
    let (tx, task) = spawn(flaky.clone(), config);
    for i in 0..10 {
        tx.send(event(i));
    }
    drop(tx);
    task.await.unwrap();
    let seen = flaky.seen.lock().unwrap().clone();
    let want: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    assert_eq!(seen, want);
}
