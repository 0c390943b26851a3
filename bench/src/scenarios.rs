//! The scenarios. Each runs once per round against one target and returns
//! that round's figures; `main` alternates the targets round by round.
//!
//! - S1: sequential non-streaming requests, zero upstream delay: latency.
//! - S2: many concurrent keep-alive clients for a fixed time: throughput.
//! - S4: sequential streams: time to first content and the gaps between chunks.
//! - S4a / S4b: the same through the gateway's Anthropic and Bedrock adapters
//!   (an OpenAI stream from the gateway), against the emulator called
//!   directly in its native format (Anthropic Messages SSE, Bedrock
//!   ConverseStream event-stream frames).
//! - R: the router, sequential like S1 through the emulator's fault profiles
//!   p1, p2, p3: a one-target model vs a pool of the three (R1), and the pool
//!   with p2 failing every [`R2_FAIL_EVERY`]th request, which the gateway
//!   answers by falling back to another target (R2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::StatusCode;
use tokio::task::JoinSet;

use crate::client::{Answer, Conn, StreamOutcome, Target, message_content, snippet};
use crate::procs::{ANTHROPIC_MODEL, ANTHROPIC_UPSTREAM, BEDROCK_MODEL};

/// How much work each scenario does per round.
#[derive(Clone, Debug)]
pub struct Params {
    pub rounds: usize,
    pub s1_warmup: usize,
    pub s1_requests: usize,
    /// S1 stops early past this, so a slow target cannot stretch the run.
    pub s1_max: Duration,
    /// S2's upstream delays (ms before the answer) and client counts: every
    /// pair is one S2 case.
    pub s2_delays_ms: Vec<u64>,
    pub s2_clients: Vec<usize>,
    pub s2_warmup: Duration,
    pub s2_duration: Duration,
    /// S3: rounds (at most `rounds`), the first rate, each step's factor
    /// and length.
    pub s3_rounds: usize,
    pub s3_start_rps: f64,
    pub s3_factor: f64,
    pub s3_step: Duration,
    pub s4_warmup: usize,
    pub s4_streams: usize,
    /// S4 stops early past this.
    pub s4_max: Duration,
    /// S4 paced (chunks [`S4P_GAP_MS`] apart): sequential streams a round,
    /// and the concurrent case's clients (one stream each).
    pub s4p_streams: usize,
    pub s4p_clients: usize,
    /// S5: concurrent streams.
    pub s5_streams: usize,
    /// S6: how long the overload lasts.
    pub s6_duration: Duration,
    /// A request slower than this is an error (a stall), not a sample.
    pub request_timeout: Duration,
}

impl Params {
    pub fn full() -> Self {
        Self {
            rounds: 5,
            s1_warmup: 200,
            s1_requests: 2000,
            s1_max: Duration::from_secs(8),
            s2_delays_ms: vec![20, 60],
            s2_clients: vec![16, 64, 256],
            s2_warmup: Duration::from_millis(500),
            s2_duration: Duration::from_secs(2),
            s3_rounds: 3,
            s3_start_rps: 250.0,
            s3_factor: 1.2,
            s3_step: Duration::from_millis(1500),
            s4_warmup: 40,
            s4_streams: 400,
            s4_max: Duration::from_secs(8),
            s4p_streams: 3,
            s4p_clients: 256,
            s5_streams: 1000,
            s6_duration: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// A short smoke run, every scenario on a small scale.
    pub fn quick() -> Self {
        Self {
            rounds: 2,
            s1_warmup: 50,
            s1_requests: 300,
            s1_max: Duration::from_secs(2),
            s2_delays_ms: vec![20],
            s2_clients: vec![16, 256],
            s2_warmup: Duration::from_millis(200),
            s2_duration: Duration::from_millis(800),
            s3_rounds: 1,
            s3_start_rps: 250.0,
            s3_factor: 1.6,
            s3_step: Duration::from_millis(500),
            s4_warmup: 10,
            s4_streams: 60,
            s4_max: Duration::from_secs(2),
            s4p_streams: 1,
            s4p_clients: 64,
            s5_streams: 200,
            s6_duration: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Words in the non-streamed answer: about 1.4 KB of content.
pub const ANSWER_WORDS: usize = 230;
/// Content chunks in a streamed answer (the emulator streams a word a chunk).
pub const STREAM_CHUNKS: usize = 64;
/// The paced check (S4a / S4b): content chunks, the upstream's spacing of
/// its events, and streams per target.
pub const PACED_CHUNKS: usize = 8;
pub const PACED_GAP_MS: u64 = 5;
pub const PACED_STREAMS: usize = 3;
/// S4 paced: the upstream sends [`STREAM_CHUNKS`] chunks this far apart.
pub const S4P_GAP_MS: u64 = 20;
/// S4 paced: one stream's length.
pub const S4P_STREAM: Duration = Duration::from_millis(S4P_GAP_MS * STREAM_CHUNKS as u64);
/// S5: each stream sends this many chunks this far apart (6 s in all).
pub const S5_CHUNKS: usize = 60;
pub const S5_GAP_MS: u64 = 100;

/// `max_tokens` of the S4a / S4b requests, sent both direct and through
/// the gateway, so the emulator gets the same request either way.
const NATIVE_MAX_TOKENS: u32 = 1024;

/// The request bodies, identical for every target (S4a / S4b: the same
/// request in the provider's format direct, in OpenAI's via the gateway).
pub struct Bodies {
    pub chat: Bytes,
    pub stream: Bytes,
    /// S4a / S4b, unpaced: [`STREAM_CHUNKS`] chunks back to back.
    pub native: NativeBodies,
    /// The paced check: [`PACED_CHUNKS`] events [`PACED_GAP_MS`] apart.
    pub paced: NativeBodies,
}

/// One streamed request for S4a and S4b, direct and through the gateway.
pub struct NativeBodies {
    /// S4a direct: Anthropic Messages, `stream: true`.
    pub anthropic_direct: Bytes,
    /// S4a via the gateway: OpenAI, model targeting the anthropic provider.
    pub anthropic_gateway: Bytes,
    /// S4b direct: Bedrock ConverseStream (the model id is in the path).
    pub bedrock_direct: Bytes,
    /// S4b via the gateway: OpenAI, model targeting the bedrock provider.
    pub bedrock_gateway: Bytes,
}

impl NativeBodies {
    fn new(prompt: &str) -> Self {
        let anthropic_direct = serde_json::json!({
            "model": ANTHROPIC_UPSTREAM,
            "max_tokens": NATIVE_MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
            "stream": true,
        });
        let gateway = |model: &str| {
            let body = serde_json::json!({
                "model": model,
                "max_tokens": NATIVE_MAX_TOKENS,
                "messages": [{"role": "user", "content": prompt}],
                "stream": true,
            });
            Bytes::from(body.to_string())
        };
        let bedrock_direct = serde_json::json!({
            "messages": [{"role": "user", "content": [{"text": prompt}]}],
            "inferenceConfig": {"maxTokens": NATIVE_MAX_TOKENS},
        });
        Self {
            anthropic_direct: Bytes::from(anthropic_direct.to_string()),
            anthropic_gateway: gateway(ANTHROPIC_MODEL),
            bedrock_direct: Bytes::from(bedrock_direct.to_string()),
            bedrock_gateway: gateway(BEDROCK_MODEL),
        }
    }
}

impl Bodies {
    /// S1's request (~200 B) for `model`; R sends it for its models too.
    pub fn chat(model: &str) -> Bytes {
        Self::chat_delayed(model, 0)
    }

    /// S1's request with the upstream waiting `delay_ms` before answering
    /// (S2); the answer is the same.
    pub fn chat_delayed(model: &str, delay_ms: u64) -> Bytes {
        let delay = if delay_ms > 0 {
            format!(" [emu:delay_ms={delay_ms}]")
        } else {
            String::new()
        };
        let chat = serde_json::json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": format!("Describe load testing in one paragraph. [emu:words={ANSWER_WORDS}]{delay}")},
            ],
            "temperature": 0.2,
        });
        Bytes::from(chat.to_string())
    }

    /// A streamed request for `model`: `words` chunks `gap_ms` apart.
    pub fn stream_paced(model: &str, words: usize, gap_ms: u64) -> Bytes {
        let stream = serde_json::json!({
            "model": model,
            "messages": [
                {"role": "user", "content": format!("Stream a paragraph about latency. [emu:words={words}] [emu:chunk_delay_ms={gap_ms}]")},
            ],
            "stream": true,
        });
        Bytes::from(stream.to_string())
    }

    pub fn new(model: &str) -> Self {
        let stream = serde_json::json!({
            "model": model,
            "messages": [
                {"role": "user", "content": format!("Stream a paragraph about latency. [emu:words={STREAM_CHUNKS}]")},
            ],
            "stream": true,
        });
        let prompt = format!("Stream a paragraph about latency. [emu:words={STREAM_CHUNKS}]");
        let paced = format!(
            "Stream a paragraph about latency. [emu:words={PACED_CHUNKS}] [emu:chunk_delay_ms={PACED_GAP_MS}]"
        );
        Self {
            chat: Self::chat(model),
            stream: Bytes::from(stream.to_string()),
            native: NativeBodies::new(&prompt),
            paced: NativeBodies::new(&paced),
        }
    }
}

/// What the emulator answers when called directly: the yardstick every
/// answer through the gateway is checked against.
pub struct Reference {
    pub content: String,
    pub deltas: Vec<String>,
    /// S4a: the text deltas of the direct Anthropic stream.
    pub anthropic_deltas: Vec<String>,
    /// S4b: the text deltas of the direct Bedrock stream.
    pub bedrock_deltas: Vec<String>,
}

impl Reference {
    /// `direct` is the OpenAI route; `anthropic` and `bedrock` the native ones.
    pub async fn capture(
        direct: &Target,
        anthropic: &Target,
        bedrock: &Target,
        bodies: &Bodies,
    ) -> anyhow::Result<Self> {
        let mut conn = Conn::open(direct.addr).await?;
        let (status, body) = conn.post(direct, bodies.chat.clone()).await?;
        if status != StatusCode::OK {
            bail!("the emulator answered {status}: {}", snippet(&body));
        }
        let content = message_content(&body)?;
        let stream = conn.stream(direct, bodies.stream.clone()).await?;
        if !stream.done || stream.deltas.len() != STREAM_CHUNKS {
            bail!(
                "the emulator's reference stream is off: {} content chunks (want {STREAM_CHUNKS}), [DONE] {}",
                stream.deltas.len(),
                stream.done
            );
        }
        let anthropic_deltas = stream_reference(anthropic, bodies.native.anthropic_direct.clone()).await?;
        let bedrock_deltas = stream_reference(bedrock, bodies.native.bedrock_direct.clone()).await?;
        Ok(Self {
            content,
            deltas: stream.deltas,
            anthropic_deltas,
            bedrock_deltas,
        })
    }
}

/// The content chunks of a direct stream of [`STREAM_CHUNKS`] chunks, in
/// the target's format (OpenAI's or a provider's own).
pub async fn stream_reference(target: &Target, body: Bytes) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::open(target.addr).await?;
    let stream = conn.stream(target, body).await?;
    if !stream.done || stream.after_done > 0 || stream.deltas.len() != STREAM_CHUNKS {
        bail!(
            "the emulator's reference {:?} stream is off: {} content chunks (want {STREAM_CHUNKS}), \
             end seen {}, {} events after it",
            target.wire,
            stream.deltas.len(),
            stream.done,
            stream.after_done
        );
    }
    Ok(stream.deltas)
}

/// Errors seen in a round: how many, and the first few messages.
#[derive(Clone, Debug, Default)]
pub struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, message: String) {
        self.count += 1;
        if self.samples.len() < 5 && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }

    fn merge(&mut self, other: Self) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < 5 && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}

pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Nanoseconds, 1 ns to 10 min, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 600_000_000_000, 3)?)
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

/// A quantile of a nanosecond histogram, in milliseconds.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1e6
    }
}

/// A request bounded by `timeout`; past it, the request is an error (a stall).
async fn timed<T>(timeout: Duration, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => bail!("no complete answer within {timeout:?} (stall)"),
    }
}

/// A connection that reopens after an error.
struct Client {
    target: Arc<Target>,
    conn: Option<Conn>,
}

impl Client {
    fn new(target: Arc<Target>, conn: Option<Conn>) -> Self {
        Self { target, conn }
    }

    async fn conn(&mut self) -> anyhow::Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(self.target.addr).await?);
        }
        self.conn.as_mut().context("no connection")
    }

    /// POSTs the chat body; a 200 answer, or an error. The connection is
    /// dropped on any error, since its state is then unknown.
    async fn post(&mut self, body: &Bytes, timeout: Duration) -> anyhow::Result<Answer> {
        let target = self.target.clone();
        let result = timed(timeout, async {
            let answer = self.conn().await?.post_answer(&target, body.clone()).await?;
            if answer.status != StatusCode::OK {
                bail!("status {}: {}", answer.status, snippet(&answer.body));
            }
            Ok(answer)
        })
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn stream(&mut self, body: &Bytes, timeout: Duration) -> anyhow::Result<StreamOutcome> {
        let target = self.target.clone();
        let result = timed(timeout, async {
            self.conn().await?.stream(&target, body.clone()).await
        })
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

#[derive(Clone, Debug)]
pub struct S1Round {
    /// Requests measured (fewer than asked when `s1_max` cut the round short).
    pub measured: u64,
    /// Measured requests answered 200 with the direct answer's content.
    pub ok: u64,
    /// Measured answers whose `x-llmgw-attempts` was above 1 (a fallback).
    pub multi_attempt: u64,
    /// The median latency of those answers alone (NaN when none).
    pub multi_p50_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The median of the gateway's own `x-llmgw-overhead-ms` over the
    /// measured answers (NaN when absent: direct, or another gateway).
    pub overhead_p50_ms: f64,
    pub errors: Errors,
}

/// S1: sequential non-streaming requests of `body` over one connection,
/// each answer checked against `want`, the direct answer's content. With
/// `faults` (R), the emulator's fault profiles are set between the warm-up
/// and the measured requests, which also zeroes their counters.
pub async fn s1(
    target: &Arc<Target>,
    body: &Bytes,
    want: &str,
    p: &Params,
    faults: Option<(&Faults, &[(&str, serde_json::Value)])>,
) -> anyhow::Result<S1Round> {
    let mut client = Client::new(target.clone(), None);
    let mut errors = Errors::default();
    let warm_until = Instant::now() + p.s1_max / 4;
    for _ in 0..p.s1_warmup {
        if Instant::now() > warm_until {
            break;
        }
        if let Err(e) = client.post(body, p.request_timeout).await {
            errors.add(format!("{e:#}"));
        }
    }
    if let Some((faults, settings)) = faults {
        for (profile, setting) in settings {
            faults.set(profile, setting).await?;
        }
    }
    let mut h = histogram()?;
    let mut multi = histogram()?;
    let mut overhead = histogram()?;
    let mut measured = 0;
    let mut ok = 0;
    let mut multi_attempt = 0;
    let stop = Instant::now() + p.s1_max;
    for _ in 0..p.s1_requests {
        let started = Instant::now();
        if started > stop {
            break;
        }
        measured += 1;
        match client.post(body, p.request_timeout).await {
            Ok(answer) => {
                let took = started.elapsed();
                let fell_back = answer.attempts.is_some_and(|n| n > 1);
                if fell_back {
                    multi_attempt += 1;
                }
                match message_content(&answer.body) {
                    Ok(c) if c == want => {
                        ok += 1;
                        record(&mut h, took);
                        if let Some(own) = answer.overhead_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                            record(&mut overhead, Duration::from_secs_f64(own / 1e3));
                        }
                        if fell_back {
                            record(&mut multi, took);
                        }
                    }
                    Ok(c) => errors.add(format!(
                        "answer differs from direct ({} vs {} bytes)",
                        c.len(),
                        want.len()
                    )),
                    Err(e) => errors.add(format!("{e:#}")),
                }
            }
            Err(e) => errors.add(format!("{e:#}")),
        }
    }
    Ok(S1Round {
        measured,
        ok,
        multi_attempt,
        multi_p50_ms: ms(&multi, 0.5),
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        overhead_p50_ms: ms(&overhead, 0.5),
        errors,
    })
}

/// R's fault profiles on the emulator: the pool's three providers.
pub const ROUTER_PROFILES: [&str; 3] = ["p1", "p2", "p3"];
/// R2: p2 fails requests N, 2N, … of its own with [`R2_STATUS`]. One in
/// five never makes the 5 consecutive failures that eject a target (the
/// default), so the gateway keeps choosing p2 and falling back.
pub const R2_FAIL_EVERY: u32 = 5;
pub const R2_STATUS: u16 = 500;

/// The emulator's fault control (`/_emu/faults/{profile}`).
pub struct Faults {
    /// The emulator, for its host and key.
    emu: Arc<Target>,
}

/// What a fault profile counted since it was last set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
}

impl Faults {
    pub fn new(emu: Arc<Target>) -> Self {
        Self { emu }
    }

    /// Replaces `profile`'s settings and zeroes its counters.
    pub async fn set(&self, profile: &str, settings: &serde_json::Value) -> anyhow::Result<()> {
        let mut conn = Conn::open(self.emu.addr).await?;
        let path = format!("/_emu/faults/{profile}");
        let (status, body) = conn
            .put(&self.emu, &path, Bytes::from(settings.to_string()))
            .await?;
        if status != StatusCode::NO_CONTENT {
            bail!("PUT {path} answered {status}: {}", snippet(&body));
        }
        Ok(())
    }

    pub async fn counts(&self, profile: &str) -> anyhow::Result<Counts> {
        let mut conn = Conn::open(self.emu.addr).await?;
        let path = format!("/_emu/faults/{profile}");
        let (status, body) = conn.get(&self.emu, &path).await?;
        if status != StatusCode::OK {
            bail!("GET {path} answered {status}: {}", snippet(&body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let field = |name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("GET {path}: no {name} in {}", snippet(&body)))
        };
        Ok(Counts {
            requests: field("requests")?,
            failed: field("failed")?,
        })
    }
}

/// One R run and what the emulator's profiles saw during its measured part.
#[derive(Clone, Debug)]
pub struct RouterRound {
    pub run: S1Round,
    /// By profile, in [`ROUTER_PROFILES`] order.
    pub upstream: [Counts; 3],
}

/// R: S1 against `target` with `body` (its model a single target or the
/// pool), the profiles healthy or, when `faulty`, p2 failing (R2). Every
/// failure p2 counts must come back as one answer with two attempts; when
/// it does not, or p2 never failed though faulty, that is an error.
pub async fn router(
    target: &Arc<Target>,
    body: &Bytes,
    want: &str,
    p: &Params,
    faults: &Faults,
    faulty: bool,
) -> anyhow::Result<RouterRound> {
    let healthy = serde_json::json!({});
    let failing = serde_json::json!({"fail_every": R2_FAIL_EVERY, "status": R2_STATUS});
    let settings = ROUTER_PROFILES.map(|name| {
        let s = if faulty && name == "p2" {
            &failing
        } else {
            &healthy
        };
        (name, s.clone())
    });
    let mut run = s1(target, body, want, p, Some((faults, &settings))).await?;
    let mut upstream = [Counts::default(); 3];
    for (counts, name) in upstream.iter_mut().zip(ROUTER_PROFILES) {
        *counts = faults.counts(name).await?;
    }
    let failed: u64 = upstream.iter().map(|c| c.failed).sum();
    if run.multi_attempt != failed {
        run.errors.add(format!(
            "{} answers with more than one attempt, but the upstream failed {failed} times",
            run.multi_attempt
        ));
    }
    if faulty && failed == 0 && upstream[1].requests >= u64::from(R2_FAIL_EVERY) {
        run.errors.add("p2 was set to fail but never did".to_owned());
    }
    Ok(RouterRound { run, upstream })
}

#[derive(Clone, Debug)]
pub struct S2Round {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: Errors,
}

struct ClientTally {
    ok: u64,
    h: Histogram<u64>,
    errors: Errors,
}

/// S2: `clients` keep-alive clients send `body` back to back for a fixed
/// time; answers completed inside the measured window count.
pub async fn s2(target: &Arc<Target>, body: &Bytes, clients: usize, p: &Params) -> anyhow::Result<S2Round> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(target.addr).await?);
    }
    let start = Instant::now();
    let from = start + p.s2_warmup;
    let until = from + p.s2_duration;
    let mut set = JoinSet::new();
    for conn in conns {
        let mut client = Client::new(target.clone(), Some(conn));
        let body = body.clone();
        let timeout = p.request_timeout;
        let mut tally = ClientTally {
            ok: 0,
            h: histogram()?,
            errors: Errors::default(),
        };
        set.spawn(async move {
            loop {
                let started = Instant::now();
                if started >= until {
                    break;
                }
                match client.post(&body, timeout).await {
                    Ok(_) => {
                        let done = Instant::now();
                        if done >= from && done <= until {
                            tally.ok += 1;
                            record(&mut tally.h, done - started);
                        }
                    }
                    Err(e) => {
                        tally.errors.add(format!("{e:#}"));
                        // Do not spin on a refused connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    let mut ok = 0;
    let mut h = histogram()?;
    let mut errors = Errors::default();
    while let Some(tally) = set.join_next().await {
        let tally = tally?;
        ok += tally.ok;
        h.add(&tally.h)?;
        errors.merge(tally.errors);
    }
    Ok(S2Round {
        rps: ok as f64 / p.s2_duration.as_secs_f64(),
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        errors,
    })
}

#[derive(Clone, Debug)]
pub struct S4Round {
    /// Streams measured (fewer than asked when `s4_max` cut the round short).
    pub measured: u64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub gap_p50_ms: f64,
    pub gap_p99_ms: f64,
    /// Time to `data: [DONE]`: the whole stream.
    pub done_p50_ms: f64,
    pub done_p99_ms: f64,
    /// Streams that failed, lacked `[DONE]`, or whose chunks differed from
    /// the direct stream's (missing, extra or out of order).
    pub errors: Errors,
}

/// The figures of good streams, and the problems of the others.
struct StreamTally {
    measured: u64,
    ttft: Histogram<u64>,
    gaps: Histogram<u64>,
    done: Histogram<u64>,
    errors: Errors,
}

impl StreamTally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            measured: 0,
            ttft: histogram()?,
            gaps: histogram()?,
            done: histogram()?,
            errors: Errors::default(),
        })
    }

    /// Counts one stream: its figures when complete and its chunks are
    /// `want`'s, in order; otherwise an error.
    fn add(&mut self, target: &Target, out: anyhow::Result<StreamOutcome>, want: &[String]) {
        self.measured += 1;
        let out = match out {
            Ok(out) => out,
            Err(e) => return self.errors.add(format!("{e:#}")),
        };
        let end = target.wire.end_marker();
        if !out.done {
            self.errors.add(format!("stream ended without {end}"));
        } else if out.after_done > 0 {
            self.errors.add(format!("{} events after {end}", out.after_done));
        } else if out.deltas != want {
            let first_diff = out.deltas.iter().zip(want).position(|(a, b)| a != b);
            self.errors.add(format!(
                "chunks differ from direct: {} content chunks (want {}), first difference at {first_diff:?}",
                out.deltas.len(),
                want.len()
            ));
        } else if let Some(t) = out.ttft {
            record(&mut self.ttft, t);
            if let Some(d) = out.done_after {
                record(&mut self.done, d);
            }
            for g in out.gaps {
                record(&mut self.gaps, g);
            }
        }
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.measured += other.measured;
        self.ttft.add(&other.ttft)?;
        self.gaps.add(&other.gaps)?;
        self.done.add(&other.done)?;
        self.errors.merge(other.errors);
        Ok(())
    }

    fn round(self) -> S4Round {
        S4Round {
            measured: self.measured,
            ttft_p50_ms: ms(&self.ttft, 0.5),
            ttft_p99_ms: ms(&self.ttft, 0.99),
            gap_p50_ms: ms(&self.gaps, 0.5),
            gap_p99_ms: ms(&self.gaps, 0.99),
            done_p50_ms: ms(&self.done, 0.5),
            done_p99_ms: ms(&self.done, 0.99),
            errors: self.errors,
        }
    }
}

/// S4 (and S4a / S4b): sequential streams of `body` over one connection,
/// each checked against `want`, the direct stream's content chunks.
pub async fn s4(target: &Arc<Target>, body: &Bytes, want: &[String], p: &Params) -> anyhow::Result<S4Round> {
    let mut client = Client::new(target.clone(), None);
    let mut tally = StreamTally::new()?;
    let warm_until = Instant::now() + p.s4_max / 4;
    for _ in 0..p.s4_warmup {
        if Instant::now() > warm_until {
            break;
        }
        if let Err(e) = client.stream(body, p.request_timeout).await {
            tally.errors.add(format!("{e:#}"));
        }
    }
    let stop = Instant::now() + p.s4_max;
    for _ in 0..p.s4_streams {
        if Instant::now() > stop {
            break;
        }
        let out = client.stream(body, p.request_timeout).await;
        tally.add(target, out, want);
    }
    Ok(tally.round())
}

/// S4 paced and S5: `clients` clients on their own connections, each
/// streaming `body` `per_client` times in a row, all checked against
/// `want`. The connections are opened first, so no stream waits for one.
/// Client `k` starts `k / clients` of `stagger` late: with `stagger` one
/// stream's length, the starts are spread as under a steady load of
/// `clients` streams in flight; with zero, they all start together.
pub async fn streams(
    target: &Arc<Target>,
    body: &Bytes,
    want: &Arc<Vec<String>>,
    clients: usize,
    per_client: usize,
    stagger: Duration,
    p: &Params,
) -> anyhow::Result<S4Round> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(target.addr).await?);
    }
    let mut set = JoinSet::new();
    let start = tokio::time::Instant::now();
    for (k, conn) in conns.into_iter().enumerate() {
        let mut client = Client::new(target.clone(), Some(conn));
        let (body, want, target) = (body.clone(), want.clone(), target.clone());
        let mut tally = StreamTally::new()?;
        let timeout = p.request_timeout;
        let late = stagger.mul_f64(k as f64 / clients as f64);
        set.spawn(async move {
            tokio::time::sleep_until(start + late).await;
            for _ in 0..per_client {
                let out = client.stream(&body, timeout).await;
                tally.add(&target, out, &want);
            }
            tally
        });
    }
    let mut all = StreamTally::new()?;
    while let Some(tally) = set.join_next().await {
        all.merge(tally?)?;
    }
    Ok(all.round())
}

/// The paced check: with the upstream spacing its events [`PACED_GAP_MS`]
/// apart, a stream forwarded as it comes shows the same spacing; one
/// buffered (translated whole, then sent) shows its chunks microseconds
/// apart and a TTFT near the whole stream's time.
#[derive(Clone, Debug)]
pub struct Paced {
    /// Medians over the good streams.
    pub ttft_ms: f64,
    pub gap_p50_ms: f64,
    /// The smallest gap between content chunks seen.
    pub gap_min_ms: f64,
    pub end_ms: f64,
    /// The content chunks of the last complete stream.
    pub deltas: Vec<String>,
    /// Failed, incomplete, differing or buffered streams.
    pub errors: Errors,
}

/// [`PACED_STREAMS`] paced streams of `body`; `want` is the direct stream's
/// chunks (none when this is the direct run).
pub async fn paced(
    target: &Arc<Target>,
    body: &Bytes,
    want: Option<&[String]>,
    p: &Params,
) -> anyhow::Result<Paced> {
    let mut client = Client::new(target.clone(), None);
    let mut errors = Errors::default();
    let mut ttft = histogram()?;
    let mut gaps = histogram()?;
    let mut end = histogram()?;
    let mut deltas = Vec::new();
    let spacing = Duration::from_millis(PACED_GAP_MS);
    for _ in 0..PACED_STREAMS {
        let out = match client.stream(body, p.request_timeout).await {
            Ok(out) => out,
            Err(e) => {
                errors.add(format!("{e:#}"));
                continue;
            }
        };
        let marker = target.wire.end_marker();
        let min_gap = out.gaps.iter().min().copied().unwrap_or_default();
        if !out.done || out.after_done > 0 {
            errors.add(format!(
                "stream incomplete: end ({marker}) seen {}, {} events after it",
                out.done, out.after_done
            ));
        } else if out.deltas.len() != PACED_CHUNKS || want.is_some_and(|w| out.deltas != w) {
            errors.add(format!(
                "paced chunks differ from direct: {} content chunks (want {PACED_CHUNKS})",
                out.deltas.len()
            ));
        } else if min_gap < spacing / 2 {
            errors.add(format!(
                "buffered: content chunks {min_gap:?} apart though the upstream sent them {spacing:?} apart"
            ));
        } else if let (Some(t), Some(d)) = (out.ttft, out.done_after) {
            record(&mut ttft, t);
            record(&mut end, d);
            for g in &out.gaps {
                record(&mut gaps, *g);
            }
            deltas = out.deltas;
        }
    }
    Ok(Paced {
        ttft_ms: ms(&ttft, 0.5),
        gap_p50_ms: ms(&gaps, 0.5),
        gap_min_ms: if gaps.is_empty() {
            f64::NAN
        } else {
            gaps.min() as f64 / 1e6
        },
        end_ms: ms(&end, 0.5),
        deltas,
        errors,
    })
}
