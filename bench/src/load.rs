//! Open-loop load (S3, S6): requests sent on a fixed schedule whatever the
//! answers do (a slow target never holds the next request back, so there
//! is no coordinated omission), each on an idle keep-alive connection (a
//! new one when none is idle). A request is timed from when the load
//! generator issues it: the timer wakes up to a millisecond late, and
//! requests that fell behind go out at once, in a burst.
//!
//! - S3 raises the rate step by step until a step's p99 reaches
//!   [`S3_P99_MS`] or any request fails; the ceiling is the last clean step.
//! - S6 sends twice a gateway's S3 ceiling for a while: the excess must be
//!   refused at once (429 / 503), the rest answered, and every answered
//!   request metered (the gateway's usage API against the emulator's count).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::StatusCode;
use tokio::task::JoinSet;

use crate::client::{Conn, Target, snippet};
use crate::scenarios::{Errors, Faults, Params, histogram, ms, record};

/// S3's latency bound: a step passes when its p99 is below this.
pub const S3_P99_MS: f64 = 10.0;
/// S3 gives up above this rate (a safety net, far above one core's reach).
const S3_MAX_RPS: f64 = 200_000.0;
/// Connections the load generator holds open at most; a request due when
/// all are busy counts as `client_saturated`, not as the target's error.
const MAX_CONNS: usize = 4096;
/// An open-loop request slower than this is a timeout.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one open-loop run saw.
#[derive(Clone, Debug)]
pub struct OpenRun {
    pub rate: f64,
    pub sent: u64,
    /// Answered 200.
    pub ok: u64,
    /// Answered 429 or 503.
    pub refused: u64,
    pub ok_p50_ms: f64,
    pub ok_p99_ms: f64,
    pub refused_p50_ms: f64,
    pub refused_p99_ms: f64,
    /// Requests that found every connection busy.
    pub client_saturated: u64,
    /// Timeouts, broken connections and other statuses.
    pub errors: Errors,
}

enum Outcome {
    Ok,
    Refused,
    Failed(String),
}

/// The idle connections, shared by the requests in flight.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    open: Mutex<usize>,
}

impl Pool {
    fn take(&self) -> Option<Conn> {
        self.idle.lock().ok()?.pop()
    }

    fn put(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Reserves room for a new connection; false when at [`MAX_CONNS`].
    fn reserve(&self) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        if *open >= MAX_CONNS {
            return false;
        }
        *open += 1;
        true
    }

    fn release(&self) {
        if let Ok(mut open) = self.open.lock() {
            *open = open.saturating_sub(1);
        }
    }
}

/// One request issued at `issued`: its outcome and its latency.
async fn one(
    target: Arc<Target>,
    pool: Arc<Pool>,
    body: Bytes,
    issued: Instant,
) -> Option<(Outcome, Duration)> {
    let conn = match pool.take() {
        Some(c) => Some(c),
        None if pool.reserve() => None,
        None => return None,
    };
    let attempt = async {
        let mut conn = match conn {
            Some(c) => c,
            None => Conn::open(target.addr).await?,
        };
        let answer = conn.post_answer(&target, body).await?;
        anyhow::Ok((conn, answer))
    };
    let outcome = match tokio::time::timeout(OPEN_TIMEOUT, attempt).await {
        Ok(Ok((conn, answer))) => {
            pool.put(conn);
            match answer.status {
                StatusCode::OK => Outcome::Ok,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Outcome::Refused,
                s => Outcome::Failed(format!("status {s}: {}", snippet(&answer.body))),
            }
        }
        Ok(Err(e)) => {
            pool.release();
            Outcome::Failed(format!("{e:#}"))
        }
        Err(_) => {
            pool.release();
            Outcome::Failed(format!("no answer within {OPEN_TIMEOUT:?}"))
        }
    };
    Some((outcome, issued.elapsed()))
}

/// Sends `body` to `target` at `rate` per second for `duration`, then
/// waits for every answer.
pub async fn open_loop(
    target: &Arc<Target>,
    body: &Bytes,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<OpenRun> {
    let pool = Arc::new(Pool {
        idle: Mutex::new(Vec::new()),
        open: Mutex::new(0),
    });
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now() + Duration::from_millis(5);
    let end = start + duration;
    let mut set = JoinSet::new();
    let mut sent = 0u64;
    let mut run = OpenRun {
        rate,
        sent: 0,
        ok: 0,
        refused: 0,
        ok_p50_ms: f64::NAN,
        ok_p99_ms: f64::NAN,
        refused_p50_ms: f64::NAN,
        refused_p99_ms: f64::NAN,
        client_saturated: 0,
        errors: Errors::default(),
    };
    let mut ok_h = histogram()?;
    let mut refused_h = histogram()?;
    let mut tally = |r: Option<(Outcome, Duration)>, run: &mut OpenRun| match r {
        None => run.client_saturated += 1,
        Some((Outcome::Ok, d)) => {
            run.ok += 1;
            record(&mut ok_h, d);
        }
        Some((Outcome::Refused, d)) => {
            run.refused += 1;
            record(&mut refused_h, d);
        }
        Some((Outcome::Failed(e), _)) => run.errors.add(e),
    };
    loop {
        let due = start + interval.mul_f64(sent as f64);
        if due >= end {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        set.spawn(one(target.clone(), pool.clone(), body.clone(), Instant::now()));
        sent += 1;
        // Collect what has finished, so the set stays small.
        while let Some(done) = set.try_join_next() {
            tally(done?, &mut run);
        }
    }
    while let Some(done) = set.join_next().await {
        tally(done?, &mut run);
    }
    run.sent = sent;
    run.ok_p50_ms = ms(&ok_h, 0.5);
    run.ok_p99_ms = ms(&ok_h, 0.99);
    run.refused_p50_ms = ms(&refused_h, 0.5);
    run.refused_p99_ms = ms(&refused_h, 0.99);
    Ok(run)
}

/// One S3 ramp against one target.
#[derive(Clone, Debug)]
pub struct S3Round {
    /// The highest rate whose step passed (0 when none did).
    pub ceiling_rps: f64,
    /// Answers a second at that step.
    pub achieved_rps: f64,
    /// The first step that failed, and why.
    pub stopped_by: String,
    pub steps: Vec<OpenRun>,
}

impl OpenRun {
    /// Why this step fails S3, if it does.
    fn s3_failure(&self) -> Option<String> {
        let failed = self.refused + self.client_saturated + self.errors.count;
        if failed > 0 {
            let sample = self.errors.samples.first().map_or("", String::as_str);
            return Some(format!(
                "{failed} failed at {:.0}/s ({} refused, {} with no free connection) {sample}",
                self.rate, self.refused, self.client_saturated
            ));
        }
        if self.ok_p99_ms.is_nan() || self.ok_p99_ms >= S3_P99_MS {
            return Some(format!("p99 {:.2} ms at {:.0}/s", self.ok_p99_ms, self.rate));
        }
        None
    }
}

/// S3: from `start` requests a second, each step `s3_factor` times the
/// last, until a step fails twice in a row (once may be a hiccup of a
/// shared host).
pub async fn s3(target: &Arc<Target>, body: &Bytes, start: f64, p: &Params) -> anyhow::Result<S3Round> {
    let mut round = S3Round {
        ceiling_rps: 0.0,
        achieved_rps: 0.0,
        stopped_by: String::new(),
        steps: Vec::new(),
    };
    let mut rate = start;
    let mut retried = false;
    while rate <= S3_MAX_RPS {
        let step = open_loop(target, body, rate, p.s3_step).await?;
        let failure = step.s3_failure();
        let achieved = step.ok as f64 / p.s3_step.as_secs_f64();
        round.steps.push(step);
        if let Some(why) = failure {
            if !retried {
                retried = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            round.stopped_by = why;
            break;
        }
        retried = false;
        round.ceiling_rps = rate;
        round.achieved_rps = achieved;
        rate *= p.s3_factor;
        // Let the connections of the last step close and the target settle.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(round)
}

/// S6's model and the emulator's fault profile behind it (a profile of its
/// own, so the emulator counts exactly S6's upstream calls).
pub const S6_MODEL: &str = "overload";
pub const S6_PROFILE: &str = "s6";

/// One S6 run against one gateway.
#[derive(Clone, Debug)]
pub struct S6Run {
    pub run: OpenRun,
    /// Upstream calls the emulator counted.
    pub upstream: u64,
    /// What the gateway metered (its usage API, model [`S6_MODEL`]).
    pub metered: Metered,
    /// Output tokens of one answer (every answer is the same).
    pub answer_tokens: u64,
    /// How long metering took to catch up after the load.
    pub metered_after_s: f64,
}

impl S6Run {
    /// Upstream answers the gateway did not meter (negative: metered more
    /// than the upstream answered). Requests the gateway failed or refused
    /// may count as metered requests with no tokens, so the check is on
    /// tokens: every upstream answer's must be metered.
    pub fn unmetered_answers(&self) -> f64 {
        self.upstream as f64 - self.metered.output_tokens as f64 / self.answer_tokens.max(1) as f64
    }
}

/// The usage API's totals for [`S6_MODEL`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Metered {
    pub requests: u64,
    pub output_tokens: u64,
}

impl std::ops::Sub for Metered {
    type Output = Self;
    fn sub(self, b: Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(b.requests),
            output_tokens: self.output_tokens.saturating_sub(b.output_tokens),
        }
    }
}

/// S6: `rate` requests a second of `body` (model [`S6_MODEL`]) for
/// `s6_duration`, then what the gateway metered compared with what the
/// emulator answered.
pub async fn s6(
    target: &Arc<Target>,
    body: &Bytes,
    rate: f64,
    faults: &Faults,
    p: &Params,
) -> anyhow::Result<S6Run> {
    faults.set(S6_PROFILE, &serde_json::json!({})).await?;
    let before = metered(target).await?;
    // One answer first, for its token count (counted on both sides, like
    // the load's).
    let answer = Conn::open(target.addr)
        .await?
        .post_answer(target, body.clone())
        .await?;
    if answer.status != StatusCode::OK {
        bail!("S6's probe answered {}: {}", answer.status, snippet(&answer.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
    let answer_tokens = v
        .pointer("/usage/completion_tokens")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no usage.completion_tokens in {}", snippet(&answer.body)))?;
    let run = open_loop(target, body, rate, p.s6_duration).await?;
    let upstream = faults.counts(S6_PROFILE).await?.requests;
    // Metering is batched: wait (bounded) for the count to settle.
    let done = Instant::now();
    let want = upstream * answer_tokens;
    let mut count = metered(target).await? - before;
    while count.output_tokens < want && done.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        count = metered(target).await? - before;
    }
    Ok(S6Run {
        run,
        upstream,
        metered: count,
        answer_tokens,
        metered_after_s: done.elapsed().as_secs_f64(),
    })
}

/// What the gateway metered for [`S6_MODEL`], all time.
async fn metered(target: &Target) -> anyhow::Result<Metered> {
    let mut conn = Conn::open(target.addr).await?;
    let path = format!("/v1/usage?start=2000-01-01&end=2100-01-01&model={S6_MODEL}");
    let (status, body) = conn.get(target, &path).await?;
    if status != StatusCode::OK {
        bail!("GET {path} answered {status}: {}", snippet(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let field = |name: &str| {
        v.pointer(&format!("/totals/{name}"))
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("GET {path}: no totals.{name} in {}", snippet(&body)))
    };
    Ok(Metered {
        requests: field("requests")?,
        output_tokens: field("output_tokens")?,
    })
}
