//! The request recorder behind `GET /_emu/requests`: a bounded ring under a plain mutex,
//! and a [`Tracker`] that writes each request's outcome when it ends or is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value};

/// How many requests are kept.
pub const CAPACITY: usize = 200;

/// How a recorded request ended. `Pending` while it is still being answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Completed,
    Cancelled,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

struct Entry {
    seq: u64,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    /// Raw bytes (a cheap reference-counted clone); parsed only when read back.
    body: Option<Bytes>,
    outcome: Outcome,
}

#[derive(Default)]
struct Ring {
    next_seq: u64,
    entries: VecDeque<Entry>,
}

/// The shared recorder.
#[derive(Default)]
pub struct Recorder {
    ring: Mutex<Ring>,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding this lock cannot leave the ring inconsistent.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request and returns the tracker that will write its outcome.
    pub fn start(
        self: &Arc<Self>,
        method: &'static str,
        path: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Tracker {
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            match pairs.iter_mut().find(|(n, _)| n == name.as_str()) {
                Some((_, v)) => {
                    v.push_str(", ");
                    v.push_str(&value);
                }
                None => pairs.push((name.as_str().to_owned(), value.into_owned())),
            }
        }
        let mut ring = self.lock();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.entries.len() == CAPACITY {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Entry {
            seq,
            method,
            path: path.to_owned(),
            headers: pairs,
            body,
            outcome: Outcome::Pending,
        });
        Tracker {
            recorder: Some(Arc::clone(self)),
            seq,
            tally: None,
        }
    }

    fn set_outcome(&self, seq: u64, outcome: Outcome) {
        let mut ring = self.lock();
        // Sequence numbers in the ring are contiguous: entries leave only from the front.
        let Some(front) = ring.entries.front().map(|e| e.seq) else {
            return;
        };
        let Some(index) = seq.checked_sub(front) else {
            return;
        };
        if let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| ring.entries.get_mut(i))
            .filter(|e| e.seq == seq)
        {
            entry.outcome = outcome;
        }
    }

    pub fn clear(&self) {
        self.lock().entries.clear();
    }

    /// The recorded requests, oldest first, as the JSON documented in the crate docs.
    pub fn to_json(&self) -> Value {
        let ring = self.lock();
        let list = ring
            .entries
            .iter()
            .map(|e| {
                let headers: Map<String, Value> = e
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                let body = e
                    .body
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                let mut obj = Map::new();
                obj.insert("method".into(), e.method.into());
                obj.insert("path".into(), e.path.clone().into());
                obj.insert("headers".into(), Value::Object(headers));
                obj.insert("body".into(), body);
                obj.insert("outcome".into(), e.outcome.as_str().into());
                Value::Object(obj)
            })
            .collect();
        Value::Array(list)
    }
}

/// Writes a request's outcome once; if dropped first (the client went away, or the stream
/// was dropped before its end), the outcome is `cancelled`. A no-op when not recording and
/// not [`Tracker::tally`]ing.
pub struct Tracker {
    recorder: Option<Arc<Recorder>>,
    seq: u64,
    tally: Option<(Arc<Ledger>, Ticket)>,
}

impl Tracker {
    /// A tracker for a request that is not recorded.
    pub fn none() -> Self {
        Self {
            recorder: None,
            seq: 0,
            tally: None,
        }
    }

    /// Also counts the request in `ledger` under `user` when it ends.
    pub fn tally(&mut self, ledger: &Arc<Ledger>, user: &str, prompt_tokens: u64, completion_tokens: u64) {
        self.tally = Some((
            Arc::clone(ledger),
            Ticket {
                user: user.to_owned(),
                prompt_tokens,
                completion_tokens,
            },
        ));
    }

    pub fn finish(&mut self, outcome: Outcome) {
        if let Some(recorder) = self.recorder.take() {
            recorder.set_outcome(self.seq, outcome);
        }
        if let Some((ledger, ticket)) = self.tally.take() {
            ledger.count(ticket, outcome);
        }
    }
}

/// What the ledger counts of one request.
struct Ticket {
    user: String,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Chat completions that named a `user`, tallied by its class (the `user` up to its last
/// `-`: `soak-ok-17` counts under `soak-ok`), for soak tests to hold the gateway's metering
/// against: `GET /_emu/ledger`. Cancelled requests also keep the time they were cancelled
/// (Unix milliseconds) under their full `user`, up to [`MAX_CANCELS`] of them.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

/// Most cancel times kept.
pub const MAX_CANCELS: usize = 200_000;

#[derive(Default)]
struct LedgerInner {
    classes: std::collections::BTreeMap<String, Tally>,
    cancelled_at_ms: std::collections::HashMap<String, u64>,
}

#[derive(Default, serde::Serialize)]
struct Tally {
    /// Answered in full.
    completed: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// The client went away first; their tokens are what the answer would have had.
    cancelled: u64,
    cancelled_prompt_tokens: u64,
    cancelled_completion_tokens: u64,
    /// Broken off by the emulator (`[emu:abort_mid_stream]`).
    aborted: u64,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, ticket: Ticket, outcome: Outcome) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut inner = self.lock();
        let class = ticket
            .user
            .rsplit_once('-')
            .map_or(ticket.user.as_str(), |(c, _)| c);
        let tally = match inner.classes.get_mut(class) {
            Some(t) => t,
            None => inner.classes.entry(class.to_owned()).or_default(),
        };
        match outcome {
            Outcome::Completed => {
                tally.completed += 1;
                tally.prompt_tokens += ticket.prompt_tokens;
                tally.completion_tokens += ticket.completion_tokens;
            }
            Outcome::Cancelled => {
                tally.cancelled += 1;
                tally.cancelled_prompt_tokens += ticket.prompt_tokens;
                tally.cancelled_completion_tokens += ticket.completion_tokens;
                if inner.cancelled_at_ms.len() < MAX_CANCELS {
                    inner.cancelled_at_ms.insert(ticket.user, now_ms);
                }
            }
            Outcome::Error | Outcome::Pending => tally.aborted += 1,
        }
    }

    pub fn clear(&self) {
        *self.lock() = LedgerInner::default();
    }

    /// `{"classes": {class: tally}, "cancelled_at_ms": {user: ms}}`.
    pub fn to_json(&self) -> Value {
        let inner = self.lock();
        serde_json::json!({"classes": inner.classes, "cancelled_at_ms": inner.cancelled_at_ms})
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}
