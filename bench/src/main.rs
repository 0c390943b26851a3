//! `llmgw-bench`: what the gateway costs, measured against the same upstream
//! called directly. One run starts the OpenAI emulator, a one-process gateway
//! (`llmgw all`) and a split one (five processes talking gRPC), then runs each
//! scenario in rounds that alternate direct / one-process / split with the
//! same request bodies, and reports medians of the rounds with their spread.
//! S4a and S4b stream through the gateway's Anthropic and Bedrock adapters
//! and compare with the emulator called directly in that provider's format.
//! The Bedrock route is served by a second emulator started without
//! `--api-key`, which then checks no SigV4 signature: the gateway still signs
//! every request (its cost counts as gateway overhead), the direct client
//! sends unsigned ones, and neither pays for a verification.
//! R measures the router: a one-target model vs a pool of three (R1), and
//! the pool with one target failing every fifth request (R2), which the
//! gateway answers by falling back; `--only R` runs just that.
//! S2 runs closed-loop clients (16 / 64 / 256) against an upstream that
//! waits 20 or 60 ms; S3 raises an open-loop rate until p99 reaches 10 ms;
//! S4 also streams 64 chunks 20 ms apart: one at a time, 256 in flight (starts spread), 256 started together; S5
//! holds 1,000 six-second streams and reads every process's RSS; S6 sends
//! twice each gateway's S3 ceiling and checks the excess is refused at once
//! and every answered request metered. S1 also compares the gateway's own
//! `x-llmgw-overhead-ms` (and `llmgw_gateway_overhead_seconds`) with the
//! added latency the client sees. The peer, LiteLLM's proxy, runs S1, S2
//! and S4 beside the gateway against the same emulator (`--no-peer` skips).
//! Results go to `bench/results/latest.json`; `scripts/bench.sh` builds and
//! runs it (`make bench`). `BENCH_QUICK=1` is a short smoke run.
#![expect(clippy::print_stdout, reason = "the bench prints its report")]

mod client;
mod governance;
mod load;
mod peer;
mod procs;
mod report;
mod rss;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use serde_json::json;

use crate::client::{CHAT_PATH, Target};
use crate::load::{S3_P99_MS, S3Round, S6_MODEL, S6Run};
use crate::procs::{BEDROCK_UPSTREAM, MAX_IN_FLIGHT, MODEL, Pinning, Procs, ROUTER_POOL, ROUTER_SINGLE};
use crate::report::{Compare, Row, TARGETS, spread};
use crate::rss::Rss;
use crate::scenarios::{
    Bodies, Errors, Faults, PACED_CHUNKS, PACED_GAP_MS, PACED_STREAMS, Paced, Params, R2_FAIL_EVERY,
    R2_STATUS, ROUTER_PROFILES, Reference, RouterRound, S1Round, S2Round, S4P_GAP_MS, S4P_STREAM, S4Round,
    S5_CHUNKS, S5_GAP_MS, STREAM_CHUNKS,
};

/// The scenarios `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    S1,
    S2,
    /// The open-loop ceiling.
    S3,
    /// Back-to-back streams, and paced ones (1 at a time, 256 in flight, 256 started together).
    S4,
    /// S4a and its paced check.
    S4a,
    /// S4b and its paced check.
    S4b,
    /// R1 and R2, the router.
    R,
    /// Governance: rate limits and budgets on the hot path, in process and Redis.
    G,
    /// 1,000 concurrent streams: memory.
    S5,
    /// Overload at twice the S3 ceiling (runs S3 first when it is not chosen).
    S6,
    /// S1, S2 and S4, which the peer runs too.
    Peer,
}

#[derive(Parser, Debug)]
#[command(
    name = "llmgw-bench",
    about = "Direct vs gateway (one process and split) against the provider emulator"
)]
struct Args {
    /// A ~30 s smoke run: fewer rounds and requests.
    #[arg(long, env = "BENCH_QUICK", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    quick: bool,
    /// The `llmgw` binary; default: next to this one.
    #[arg(long)]
    llmgw: Option<PathBuf>,
    /// The `openai-emulator` binary; default: next to this one.
    #[arg(long)]
    emulator: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest.json"))]
    out: PathBuf,
    /// Rounds (each runs every target once per scenario).
    #[arg(long)]
    rounds: Option<usize>,
    /// S1 requests per target per round.
    #[arg(long)]
    s1_requests: Option<usize>,
    /// S2 measured seconds per target per round.
    #[arg(long)]
    s2_seconds: Option<f64>,
    /// S2 concurrent clients (one connection each), e.g. `16,64,256`.
    #[arg(long, value_delimiter = ',')]
    clients: Vec<usize>,
    /// S2 upstream delays in ms, e.g. `20,60`.
    #[arg(long, value_delimiter = ',')]
    delays: Vec<u64>,
    /// S6's length in seconds.
    #[arg(long)]
    s6_seconds: Option<f64>,
    /// LiteLLM's `litellm` command (scripts/setup-litellm.sh prints it);
    /// without it there is no peer.
    #[arg(long, env = "BENCH_LITELLM")]
    litellm: Option<PathBuf>,
    /// Run no peer even when `--litellm` is given.
    #[arg(long)]
    no_peer: bool,
    /// S4 streams per target per round.
    #[arg(long)]
    s4_streams: Option<usize>,
    /// Keep the temp dir (configs, data, process logs) and print its path.
    #[arg(long)]
    keep: bool,
    /// The split deployment finds its services through a Consul dev agent
    /// (this `consul` binary, e.g. from scripts/setup-consul.sh) instead
    /// of static addresses.
    #[arg(long, env = "BENCH_CONSUL")]
    consul: Option<PathBuf>,
    /// Run only these scenarios (comma-separated, e.g. `--only R` or
    /// `--only s1,r`); default: all.
    #[arg(long, value_enum, value_delimiter = ',', ignore_case = true)]
    only: Vec<Scenario>,
}

impl Args {
    fn runs(&self, scenario: Scenario) -> bool {
        let peer = self.only.contains(&Scenario::Peer)
            && matches!(scenario, Scenario::S1 | Scenario::S2 | Scenario::S4);
        self.only.is_empty() || self.only.contains(&scenario) || peer
    }

    /// Whether the peer runs: a `litellm` given, not `--no-peer`, and a
    /// scenario it takes part in chosen.
    fn peer(&self) -> bool {
        self.litellm.is_some()
            && !self.no_peer
            && [Scenario::S1, Scenario::S2, Scenario::S4]
                .into_iter()
                .any(|s| self.runs(s))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let pinning = Pinning::detect();
    // Before the runtime exists, so every thread inherits the pinning.
    if let Err(e) = pinning.pin_self() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    // One thread: the load generator has one core (shared with the emulator).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped, and with it every child process.
    let outcome = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(args, pinning) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow!("terminated")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: requests failed or answers were wrong (see the errors above and in the JSON)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Next to this executable (all three binaries share a target dir).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench executable has no directory")?;
    Ok(dir.join(name))
}

fn params(args: &Args) -> Params {
    let mut p = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(n) = args.rounds {
        p.rounds = n.max(1);
    }
    if let Some(n) = args.s1_requests {
        p.s1_requests = n.max(1);
    }
    if let Some(s) = args.s2_seconds {
        p.s2_duration = Duration::from_secs_f64(s.max(0.1));
    }
    if !args.clients.is_empty() {
        p.s2_clients = args.clients.iter().map(|n| (*n).max(1)).collect();
    }
    if !args.delays.is_empty() {
        p.s2_delays_ms = args.delays.clone();
    }
    if let Some(s) = args.s6_seconds {
        p.s6_duration = Duration::from_secs_f64(s.max(0.5));
    }
    if let Some(n) = args.s4_streams {
        p.s4_streams = n.max(1);
    }
    p
}

/// Per target (in [`TARGETS`] order), the rounds of each scenario.
#[derive(Default)]
struct Rounds {
    s1: [Vec<S1Round>; 4],
    s2: Vec<S2Case>,
    s3: [Vec<S3Round>; 4],
    s4: [Vec<S4Round>; 4],
    /// S4 paced: one stream at a time; `s4p_clients` in flight, their
    /// starts spread out; as many started in the same instant.
    s4p_one: [Vec<S4Round>; 4],
    s4p_many: [Vec<S4Round>; 4],
    s4p_burst: [Vec<S4Round>; 4],
    s4a: [Vec<S4Round>; 4],
    s4b: [Vec<S4Round>; 4],
    /// S5 by target: every process's memory, and the streams.
    s5: Vec<S5Run>,
    /// S6 by gateway: the rate sent and the run.
    s6: Vec<(usize, S6Run)>,
    /// S1's overhead as the gateways report it, by target: the mean of
    /// `llmgw_gateway_overhead_seconds{kind="chat"}` over S1.
    overhead_metric_ms: [f64; 4],
    /// Cores the gateway runs on (1 when pinned).
    gateway_cores: usize,
    /// The paced (buffering) checks, by target.
    s4a_paced: Vec<Paced>,
    s4b_paced: Vec<Paced>,
    /// R1: model `single`, and `pool3` all healthy; R2: `pool3` with p2
    /// failing. The direct slot holds one run (the emulator's p1 profile),
    /// the baseline of all three.
    r1_single: [Vec<RouterRound>; 4],
    r1_pool: [Vec<RouterRound>; 4],
    r2_pool: [Vec<RouterRound>; 4],
}

/// S5 against one target (its index): every process's memory, and the streams.
type S5Run = (usize, Vec<Rss>, S4Round);

/// One S2 case: the upstream's delay and the clients.
struct S2Case {
    delay_ms: u64,
    clients: usize,
    rounds: [Vec<S2Round>; 4],
}

/// Runs the bench; `Ok(false)` when it ran but saw errors.
async fn run(args: Args, pinning: Pinning) -> anyhow::Result<bool> {
    let started = Instant::now();
    let p = params(&args);
    let llmgw = args.llmgw.clone().map_or_else(|| sibling("llmgw"), Ok)?;
    let emulator = args
        .emulator
        .clone()
        .map_or_else(|| sibling("openai-emulator"), Ok)?;
    for bin in [&llmgw, &emulator] {
        if !bin.is_file() {
            bail!(
                "{} not found; build it first: cargo build --release -p llmgw -p llmgw-emulators",
                bin.display()
            );
        }
    }

    let mut tmp = tempfile::Builder::new().prefix("llmgw-bench-").tempdir()?;
    if args.keep {
        tmp.disable_cleanup(true);
        eprintln!("keeping {}", tmp.path().display());
    }
    let dir = tmp.path().to_owned();
    // Declared after `tmp`, so dropped (children killed) before the dir goes.
    let mut procs = Procs::new(&dir);

    eprintln!("{}", pinning.note);
    let emu_key = format!("bench-emu-{}", std::process::id());
    let emu_addr = procs
        .start_emulator(&emulator, pinning.client_core, Some(&emu_key), "emulator")
        .await?;
    // Bedrock (S4b): without a key, so it verifies no signature.
    let unsigned_addr = procs
        .start_emulator(&emulator, pinning.client_core, None, "emulator-unsigned")
        .await?;
    let env = [("EMU_KEY", emu_key.as_str()), ("NO_COLOR", "1")];

    // Ports: one-process http, grpc; split http, grpc, auth, router, adapter, metering.
    let ports = procs::free_ports(8)?;
    let one_cfg = write_config(
        &dir,
        "one",
        procs::gateway_config(
            &dir.join("one"),
            ports[0],
            ports[1],
            emu_addr,
            unsigned_addr,
            None,
        )?,
    )?;
    let split_services = [ports[4], ports[5], ports[6], ports[7]];
    let mut split_yaml = procs::gateway_config(
        &dir.join("split"),
        ports[2],
        ports[3],
        emu_addr,
        unsigned_addr,
        Some(split_services),
    )?;
    if let Some(consul) = &args.consul {
        let http = procs::free_ports(1)?[0];
        procs.start_consul(consul, http)?;
        // Continues the `services:` section the config ends with.
        split_yaml.push_str(&format!(
            "  discovery: consul\n  consul: {{addr: \"http://{http}\", check_interval: 1s}}\n"
        ));
    }
    let split_cfg = write_config(&dir, "split", split_yaml)?;
    let one_key = procs::create_key(&llmgw, &one_cfg, &env).await?;
    let split_key = procs::create_key(&llmgw, &split_cfg, &env).await?;

    let core = pinning.gateway_core;
    procs.start_llmgw(&llmgw, core, "all", &one_cfg, &env, "one-process")?;
    for service in ["auth", "router", "adapter", "metering", "edge"] {
        procs.start_llmgw(
            &llmgw,
            core,
            service,
            &split_cfg,
            &env,
            &format!("split-{service}"),
        )?;
    }

    let mut targets = vec![
        Arc::new(Target::new(TARGETS[0], emu_addr, &emu_key)?),
        Arc::new(Target::new(TARGETS[1], ports[0], &one_key)?),
        Arc::new(Target::new(TARGETS[2], ports[2], &split_key)?),
    ];
    if let (true, Some(bin)) = (args.peer(), &args.litellm) {
        targets.push(peer::start(&mut procs, bin, &dir, core, emu_addr, &emu_key)?);
    }
    // Targets of S1, S2 and S4 (the peer's too); of the other scenarios, the first three.
    let n = targets.len();
    let anthropic_direct = Arc::new(Target::anthropic(TARGETS[0], emu_addr, &emu_key)?);
    let bedrock_direct = Arc::new(Target::bedrock(TARGETS[0], unsigned_addr, BEDROCK_UPSTREAM)?);
    let bodies = Bodies::new(MODEL);
    for (i, t) in targets.iter().enumerate() {
        // The gateways' /health first; the peer's /health calls its models.
        procs.wait_ready(t, &bodies.chat, i == 1 || i == 2).await?;
    }
    let reference = Reference::capture(&targets[0], &anthropic_direct, &bedrock_direct, &bodies).await?;
    // Every process ready, nothing measured yet: idle memory.
    let idle_rss: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            process_labels(i)
                .iter()
                .map(|l| procs.pid(l).map_or(f64::NAN, rss::rss_mb))
                .collect()
        })
        .collect();
    eprintln!(
        "ready in {:.1}s; request {} B, answer content {} B, stream {} chunks; {} rounds{}{}",
        started.elapsed().as_secs_f64(),
        bodies.chat.len(),
        reference.content.len(),
        reference.deltas.len(),
        p.rounds,
        if args.quick { " (quick)" } else { "" },
        if n > 3 { "; peer: LiteLLM" } else { "" },
    );

    let mut r = Rounds {
        gateway_cores: if pinning.gateway_core.is_some() {
            1
        } else {
            pinning.cores
        },
        overhead_metric_ms: [f64::NAN; 4],
        ..Rounds::default()
    };
    if args.runs(Scenario::S1) {
        let before = overhead_metrics(&targets).await;
        for round in 0..p.rounds {
            for i in order(round, n) {
                let x = scenarios::s1(&targets[i], &bodies.chat, &reference.content, &p, None).await?;
                procs.check_alive()?;
                progress(
                    "S1",
                    round,
                    &p,
                    i,
                    &format!(
                        "{} requests, p50 {:.4} ms p99 {:.4} ms",
                        x.measured, x.p50_ms, x.p99_ms
                    ),
                    &x.errors,
                );
                r.s1[i].push(x);
            }
        }
        let after = overhead_metrics(&targets).await;
        for i in 0..4 {
            let (s0, c0) = before[i];
            let (s1, c1) = after[i];
            r.overhead_metric_ms[i] = if c1 > c0 {
                (s1 - s0) / (c1 - c0) * 1e3
            } else {
                f64::NAN
            };
        }
    }
    if args.runs(Scenario::S2) {
        for &delay_ms in &p.s2_delays_ms {
            let body = Bodies::chat_delayed(MODEL, delay_ms);
            for &clients in &p.s2_clients {
                let mut case = S2Case {
                    delay_ms,
                    clients,
                    rounds: Default::default(),
                };
                let name = format!("S2 {delay_ms} ms x{clients}");
                for round in 0..p.rounds {
                    for i in order(round, n) {
                        let x = scenarios::s2(&targets[i], &body, clients, &p).await?;
                        procs.check_alive()?;
                        let what =
                            format!("{:.0} req/s p50 {:.2} ms p99 {:.2} ms", x.rps, x.p50_ms, x.p99_ms);
                        progress(&name, round, &p, i, &what, &x.errors);
                        case.rounds[i].push(x);
                    }
                }
                r.s2.push(case);
            }
        }
    }
    // S6 needs each gateway's ceiling: one ramp when S3 itself is not chosen.
    let s3_rounds = if args.runs(Scenario::S3) {
        p.s3_rounds.min(p.rounds)
    } else if args.runs(Scenario::S6) {
        1
    } else {
        0
    };
    for round in 0..s3_rounds {
        for i in order(round, 3) {
            // From half the last ceiling, so later rounds climb fewer steps.
            let last = r.s3[i].last().map_or(0.0, |x: &S3Round| x.ceiling_rps / 2.0);
            let x = load::s3(&targets[i], &bodies.chat, last.max(p.s3_start_rps), &p).await?;
            procs.check_alive()?;
            let what = format!(
                "ceiling {:.0} req/s ({:.0} answered/s), {} steps; stopped: {}",
                x.ceiling_rps,
                x.achieved_rps,
                x.steps.len(),
                x.stopped_by
            );
            progress("S3", round, &p, i, &what, &Errors::default());
            r.s3[i].push(x);
        }
    }
    if args.runs(Scenario::S4) {
        let s4_bodies = vec![&bodies.stream; n];
        r.s4 = stream_rounds("S4", &targets, &s4_bodies, &reference.deltas, &p, &mut procs).await?;
        let paced = Bodies::stream_paced(MODEL, STREAM_CHUNKS, S4P_GAP_MS);
        let want = Arc::new(scenarios::stream_reference(&targets[0], paced.clone()).await?);
        for round in 0..p.rounds {
            for i in order(round, n) {
                let t = &targets[i];
                let one = scenarios::streams(t, &paced, &want, 1, p.s4p_streams, Duration::ZERO, &p).await?;
                // Two streams per client, the starts spread over a stream's
                // length: the second wave runs with all of them in flight.
                let many = scenarios::streams(t, &paced, &want, p.s4p_clients, 2, S4P_STREAM, &p).await?;
                let burst =
                    scenarios::streams(t, &paced, &want, p.s4p_clients, 1, Duration::ZERO, &p).await?;
                procs.check_alive()?;
                for (what, x) in [
                    ("1 at a time", &one),
                    ("in flight", &many),
                    ("started together", &burst),
                ] {
                    let line = format!(
                        "{} streams {what}, TTFT p99 {:.2} ms, gap p99 {:.2} ms",
                        x.measured, x.ttft_p99_ms, x.gap_p99_ms
                    );
                    progress("S4 paced", round, &p, i, &line, &x.errors);
                }
                r.s4p_one[i].push(one);
                r.s4p_many[i].push(many);
                r.s4p_burst[i].push(burst);
            }
        }
    }
    let s4a_targets = [anthropic_direct, targets[1].clone(), targets[2].clone()];
    let s4a_bodies = [
        &bodies.native.anthropic_direct,
        &bodies.native.anthropic_gateway,
        &bodies.native.anthropic_gateway,
    ];
    if args.runs(Scenario::S4a) {
        r.s4a = stream_rounds(
            "S4a",
            &s4a_targets,
            &s4a_bodies,
            &reference.anthropic_deltas,
            &p,
            &mut procs,
        )
        .await?;
    }
    let s4b_targets = [bedrock_direct, targets[1].clone(), targets[2].clone()];
    let s4b_bodies = [
        &bodies.native.bedrock_direct,
        &bodies.native.bedrock_gateway,
        &bodies.native.bedrock_gateway,
    ];
    if args.runs(Scenario::S4b) {
        r.s4b = stream_rounds(
            "S4b",
            &s4b_targets,
            &s4b_bodies,
            &reference.bedrock_deltas,
            &p,
            &mut procs,
        )
        .await?;
    }
    let paced_a = [
        &bodies.paced.anthropic_direct,
        &bodies.paced.anthropic_gateway,
        &bodies.paced.anthropic_gateway,
    ];
    if args.runs(Scenario::S4a) {
        r.s4a_paced = paced_checks("S4a", &s4a_targets, paced_a, &p, &mut procs).await?;
    }
    let paced_b = [
        &bodies.paced.bedrock_direct,
        &bodies.paced.bedrock_gateway,
        &bodies.paced.bedrock_gateway,
    ];
    if args.runs(Scenario::S4b) {
        r.s4b_paced = paced_checks("S4b", &s4b_targets, paced_b, &p, &mut procs).await?;
    }
    // Direct for R is the emulator's chat route under p1's profile, so it
    // pays the fault middleware's (small) cost too.
    let r_direct = Arc::new(
        Target::new(TARGETS[0], emu_addr, &emu_key)?
            .with_path(format!("/_f/{}{CHAT_PATH}", ROUTER_PROFILES[0])),
    );
    let r_targets = [r_direct, targets[1].clone(), targets[2].clone()];
    if args.runs(Scenario::R) {
        let faults = Faults::new(targets[0].clone());
        router_rounds(
            &r_targets,
            &bodies,
            &reference.content,
            &p,
            &faults,
            &mut procs,
            &mut r,
        )
        .await?;
    }

    if args.runs(Scenario::S5) {
        // The direct stream's first S5_CHUNKS chunks: the emulator's words
        // are the same whatever their number.
        let want = Arc::new(reference.deltas[..S5_CHUNKS.min(reference.deltas.len())].to_vec());
        let body = Bodies::stream_paced(MODEL, S5_CHUNKS, S5_GAP_MS);
        for i in 0..3 {
            let x = s5(&targets[i], &body, &want, &idle_rss[i], i, &p, &mut procs).await?;
            r.s5.push(x);
        }
    }
    if args.runs(Scenario::S6) {
        let faults = Faults::new(targets[0].clone());
        let body = Bodies::chat(S6_MODEL);
        for i in [1, 2] {
            let mut ceiling = spread(&r.s3[i].iter().map(|x| x.ceiling_rps).collect::<Vec<_>>()).median;
            if ceiling.is_nan() || ceiling <= 0.0 {
                // Not even S3's first step passed (a busy host): overload
                // from there all the same.
                eprintln!(
                    "S6 {:<11} no S3 ceiling; taking S3's first rate, {:.0} req/s",
                    TARGETS[i], p.s3_start_rps
                );
                ceiling = p.s3_start_rps;
            }
            let x = load::s6(&targets[i], &body, 2.0 * ceiling, &faults, &p).await?;
            procs.check_alive()?;
            let what = format!(
                "{:.0} req/s for {:.0} s: {} sent, {} answered (p99 {:.2} ms), {} refused (p99 {:.2} ms), \
                 {} no free connection; upstream {} calls, metered {} requests and {} answers' tokens",
                x.run.rate,
                p.s6_duration.as_secs_f64(),
                x.run.sent,
                x.run.ok,
                x.run.ok_p99_ms,
                x.run.refused,
                x.run.refused_p99_ms,
                x.run.client_saturated,
                x.upstream,
                x.metered.requests,
                x.upstream as f64 - x.unmetered_answers(),
            );
            note("S6", i, &what, &x.run.errors);
            r.s6.push((i, x));
        }
    }

    let mut gov = None;
    if args.runs(Scenario::G) {
        let t = governance::targets(
            &llmgw,
            &mut procs,
            &dir,
            &env,
            core,
            &targets[1],
            &one_cfg,
            (emu_addr, unsigned_addr),
            &bodies.chat,
        )
        .await?;
        gov = Some(governance::rounds(&t, &bodies.chat, &reference.content, &p, &mut procs).await?);
    }

    let rows = rows(&r, &p);
    let errors = error_samples(&r);
    let gov_errors: u64 = gov
        .iter()
        .flat_map(|g| g.iter().flatten())
        .map(|x| x.errors.count)
        .sum();
    let checks = checks(&r);
    let clean = errors.iter().all(|(_, _, e)| e.count == 0) && gov_errors == 0 && checks.iter().all(|c| c.ok);
    let (gov_lines, gov_json) = gov.as_ref().map(governance::report).unzip();
    let logs: Vec<(String, usize, Vec<String>)> = procs
        .logs()
        .map(|(name, path)| {
            let (n, samples) = procs::scan_log(path);
            (name.to_owned(), n, samples)
        })
        .collect();
    let elapsed = started.elapsed().as_secs_f64();

    println!();
    println!(
        "llmgw bench: {} rounds, direct / one-process / split{} alternating; cells are the median of round values (min–max)",
        p.rounds,
        if args.consul.is_some() {
            " (through Consul)"
        } else {
            ""
        }
    );
    println!("{}", pinning.note);
    // A line for each scenario that ran (`--only`).
    let ran = |s: Scenario| args.runs(s);
    if ran(Scenario::S1) {
        println!(
            "S1: up to {} sequential requests a round ({} B request, {} B answer content; a round stops after {:.0} s); \
             x-llmgw-overhead-ms is the gateway's own account of its time",
            p.s1_requests,
            bodies.chat.len(),
            reference.content.len(),
            p.s1_max.as_secs_f64(),
        );
    }
    if ran(Scenario::S2) {
        println!(
            "S2: {:?} keep-alive clients sending back to back, the upstream waiting {:?} ms before it answers; \
             {:.1} s measured a round",
            p.s2_clients,
            p.s2_delays_ms,
            p.s2_duration.as_secs_f64(),
        );
    }
    if s3_rounds > 0 {
        println!(
            "S3: open loop (a fixed schedule, whatever the answers) from {:.0} req/s, x{} every {:.1} s, until a step \
             has p99 >= {S3_P99_MS} ms or any failure twice running; the ceiling is the last clean step ({s3_rounds} rounds)",
            p.s3_start_rps,
            p.s3_factor,
            p.s3_step.as_secs_f64(),
        );
    }
    if ran(Scenario::S4) {
        println!(
            "S4: up to {} sequential streams of {} chunks a round, sent back to back by the upstream (a round stops \
             after {:.0} s): direct gaps are ~0 (one read), gateway gaps show how it paces chunks it forwards; \
             S4 paced: {STREAM_CHUNKS} chunks {S4P_GAP_MS} ms apart, {} streams one at a time; {} in flight \
             (two each, their starts spread over a stream's length, as under a steady load: the target); as many \
             started in the same instant (a burst: its TTFT is the queue of setups); every chunk checked in order",
            p.s4_streams,
            reference.deltas.len(),
            p.s4_max.as_secs_f64(),
            p.s4p_streams,
            p.s4p_clients,
        );
    }
    if ran(Scenario::S4a) || ran(Scenario::S4b) {
        println!(
            "S4a / S4b: direct is the emulator in the provider's own format (Anthropic /v1/messages SSE; Bedrock ConverseStream frames, \
             unsigned: that emulator checks no signature, the gateway still signs); the gateways stream OpenAI chunks translated by the \
             anthropic / bedrock adapter; \"to end\" is message_stop / the metadata frame direct, [DONE] through the gateway"
        );
    }
    if ran(Scenario::S5) {
        println!(
            "S5: {} streams at once, {S5_CHUNKS} chunks {S5_GAP_MS} ms apart; VmRSS of every process (direct: the emulator; \
             split: the five summed, each below) at start-up (idle), before, at the peak while streaming, 2 s after",
            p.s5_streams,
        );
    }
    if ran(Scenario::S6) {
        println!(
            "S6: twice each gateway's median S3 ceiling for {:.0} s, open loop; edge.max_in_flight {MAX_IN_FLIGHT}: beyond it \
             the edge answers 503 at once; the usage API's request count (model `{S6_MODEL}`) against the emulator's",
            p.s6_duration.as_secs_f64(),
        );
    }
    if n > 3 {
        println!(
            "peer: LiteLLM's proxy {} (scripts/setup-litellm.sh), one worker on the gateway's core, the same emulator, \
             in S1, S2 and S4",
            peer::VERSION
        );
    }
    if args.runs(Scenario::R) {
        println!(
            "R: like S1 (up to {} requests a round); models `{ROUTER_SINGLE}` (p1) and `{ROUTER_POOL}` \
             (weighted over p1, p2, p3; fallback on), each provider the emulator under its own fault profile; \
             direct is the emulator's p1 profile, the baseline of every R row; R1 all healthy, R2 p2 failing \
             every {R2_FAIL_EVERY}th request with {R2_STATUS}; fault counters cover the measured requests",
            p.s1_requests
        );
    }
    println!();
    print!("{}", report::table(&rows));
    if !r.s4a_paced.is_empty() {
        println!("{}", paced_line("S4a", &r.s4a_paced));
    }
    if !r.s4b_paced.is_empty() {
        println!("{}", paced_line("S4b", &r.s4b_paced));
    }
    for (k, x) in r.s5.iter().flat_map(|x| x.1.iter().map(move |m| (x.0, m))) {
        println!(
            "S5 {} {}: RSS idle {:.1} MB, before {:.1}, under load {:.1}, after {:.1}",
            TARGETS[k], x.process, x.idle_mb, x.before_mb, x.load_mb, x.after_mb
        );
    }
    for c in &checks {
        println!("check {}: {}", if c.ok { "ok" } else { "FAILED" }, c.what);
    }
    for (target, scenario, e) in &errors {
        if e.count > 0 {
            println!(
                "errors {target} {scenario}: {} — e.g. {}",
                e.count,
                e.samples.join(" | ")
            );
        }
    }
    for (name, n, samples) in &logs {
        if *n > 0 {
            println!(
                "log {name}: {n} warning/error lines, first: {}",
                samples.join(" | ")
            );
        }
    }
    for line in gov_lines.iter().flatten() {
        println!("{line}");
    }
    println!("total {elapsed:.0} s; results in {}", args.out.display());

    let json = json!({
        "meta": meta(&pinning, &args, elapsed),
        "params": {
            "rounds": p.rounds,
            "s1": {"warmup": p.s1_warmup, "requests": p.s1_requests, "max_s": p.s1_max.as_secs_f64()},
            "s2": {"clients": p.s2_clients, "upstream_delays_ms": p.s2_delays_ms, "warmup_s": p.s2_warmup.as_secs_f64(), "duration_s": p.s2_duration.as_secs_f64()},
            "s3": {"p99_bound_ms": S3_P99_MS, "start_rps": p.s3_start_rps, "factor": p.s3_factor, "step_s": p.s3_step.as_secs_f64(), "rounds": p.s3_rounds.min(p.rounds), "gateway_cores": r.gateway_cores},
            "s4_paced": {"chunks": STREAM_CHUNKS, "upstream_gap_ms": S4P_GAP_MS, "sequential_streams": p.s4p_streams, "concurrent_streams": p.s4p_clients},
            "s5": {"streams": p.s5_streams, "chunks": S5_CHUNKS, "upstream_gap_ms": S5_GAP_MS},
            "s6": {"duration_s": p.s6_duration.as_secs_f64(), "model": S6_MODEL, "max_in_flight": MAX_IN_FLIGHT},
            "peer": if n > 3 { json!({"name": "litellm", "version": peer::VERSION, "workers": 1}) } else { serde_json::Value::Null },
            "s4": {"warmup": p.s4_warmup, "streams": p.s4_streams, "max_s": p.s4_max.as_secs_f64(), "chunks": reference.deltas.len()},
            "s4a": {
                "direct": "POST /v1/messages (Anthropic SSE), x-api-key checked",
                "gateway": "OpenAI stream, model targeting a type: anthropic provider",
                "chunks": reference.anthropic_deltas.len(),
            },
            "s4b": {
                "direct": format!("POST /model/{}/converse-stream (event-stream frames), unsigned", BEDROCK_UPSTREAM.replace(':', "%3A")),
                "gateway": "OpenAI stream, model targeting a type: bedrock provider (SigV4-signed; the emulator does not verify)",
                "chunks": reference.bedrock_deltas.len(),
            },

            "r": {
                "requests": p.s1_requests,
                "direct": format!("/_f/{}{CHAT_PATH}", ROUTER_PROFILES[0]),
                "models": {ROUTER_SINGLE: "p1", ROUTER_POOL: "weighted over p1, p2, p3, fallback on"},
                "r2_fault": {"profile": "p2", "fail_every": R2_FAIL_EVERY, "status": R2_STATUS},
            },
            "only": args.only.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>(),
            "request_bytes": bodies.chat.len(),
            "answer_content_bytes": reference.content.len(),
        },
        "results": report::rows_json(&rows),
        "paced_checks": {"S4a": paced_json(&r.s4a_paced), "S4b": paced_json(&r.s4b_paced)},
        "governance": gov_json,
        "s3_steps": r.s3.iter().zip(TARGETS).filter(|(x, _)| !x.is_empty()).map(|(rounds, t)| json!({
            "target": t,
            "rounds": rounds.iter().map(|x| json!({
                "ceiling_rps": x.ceiling_rps, "stopped_by": x.stopped_by,
                "steps": x.steps.iter().map(|s| json!({"rate": s.rate, "sent": s.sent, "ok": s.ok, "refused": s.refused, "p50_ms": s.ok_p50_ms, "p99_ms": s.ok_p99_ms, "errors": s.errors.count})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "s5_processes": r.s5.iter().flat_map(|x| x.1.iter().map(move |m| json!({
            "target": TARGETS[x.0], "process": m.process, "idle_mb": m.idle_mb, "before_mb": m.before_mb, "load_mb": m.load_mb, "after_mb": m.after_mb,
        }))).collect::<Vec<_>>(),
        "checks": checks.iter().map(|c| json!({"ok": c.ok, "what": c.what})).collect::<Vec<_>>(),
        "errors": errors.iter().map(|(t, s, e)| json!({"target": t, "scenario": s, "count": e.count, "samples": e.samples})).collect::<Vec<_>>(),
        "gateway_logs": logs.iter().map(|(name, n, samples)| json!({"process": name, "warn_error_lines": n, "first": samples})).collect::<Vec<_>>(),
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(clean)
}

/// S5 against target `i`: `s5_streams` streams at once, each
/// [`S5_CHUNKS`] chunks [`S5_GAP_MS`] apart, with the memory of each of the
/// target's processes read before, every 200 ms during, and after.
async fn s5(
    target: &Arc<Target>,
    body: &bytes::Bytes,
    want: &Arc<Vec<String>>,
    idle: &[f64],
    i: usize,
    p: &Params,
    procs: &mut Procs,
) -> anyhow::Result<S5Run> {
    let labels = process_labels(i);
    let pids: Vec<Option<u32>> = labels.iter().map(|l| procs.pid(l)).collect();
    let read =
        |pids: &[Option<u32>]| -> Vec<f64> { pids.iter().map(|p| p.map_or(f64::NAN, rss::rss_mb)).collect() };
    let before = read(&pids);
    let (t, b, w, pp) = (target.clone(), body.clone(), want.clone(), p.clone());
    let run =
        tokio::spawn(
            async move { scenarios::streams(&t, &b, &w, pp.s5_streams, 1, Duration::ZERO, &pp).await },
        );
    let mut peak = before.clone();
    while !run.is_finished() {
        for (m, now) in peak.iter_mut().zip(read(&pids)) {
            *m = m.max(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let x = run.await??;
    procs.check_alive()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = read(&pids);
    let rss: Vec<Rss> = labels
        .iter()
        .enumerate()
        .map(|(k, l)| Rss {
            process: (*l).to_owned(),
            idle_mb: idle.get(k).copied().unwrap_or(f64::NAN),
            before_mb: before[k],
            load_mb: peak[k],
            after_mb: after[k],
        })
        .collect();
    let sum = |f: fn(&Rss) -> f64| rss.iter().map(f).sum::<f64>();
    let what = format!(
        "{} streams ({} bad, TTFT p99 {:.1} ms); RSS idle {:.1} MB, before {:.1}, under load {:.1}, after {:.1}",
        x.measured,
        x.errors.count,
        x.ttft_p99_ms,
        sum(|r| r.idle_mb),
        sum(|r| r.before_mb),
        sum(|r| r.load_mb),
        sum(|r| r.after_mb)
    );
    note("S5", i, &what, &x.errors);
    Ok((i, rss, x))
}

fn write_config(dir: &Path, name: &str, yaml: String) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join(name))?;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// Rounds of a streaming scenario; `bodies` and `want` per target (in
/// [`TARGETS`] order) and the direct stream's content chunks.
async fn stream_rounds(
    scenario: &str,
    targets: &[Arc<Target>],
    bodies: &[&bytes::Bytes],
    want: &[String],
    p: &Params,
    procs: &mut Procs,
) -> anyhow::Result<[Vec<S4Round>; 4]> {
    let mut rounds: [Vec<S4Round>; 4] = Default::default();
    for round in 0..p.rounds {
        for i in order(round, targets.len()) {
            let x = scenarios::s4(&targets[i], bodies[i], want, p).await?;
            procs.check_alive()?;
            let what = format!(
                "{} streams, TTFT p50 {:.4} ms, gap p50 {:.1} µs",
                x.measured,
                x.ttft_p50_ms,
                x.gap_p50_ms * 1e3
            );
            progress(scenario, round, p, i, &what, &x.errors);
            rounds[i].push(x);
        }
    }
    Ok(rounds)
}

/// R's rounds: direct once (the baseline of R1 and R2), and each gateway
/// with `single` and the healthy pool (which goes first alternates by
/// round), then the pool with p2 failing.
async fn router_rounds(
    targets: &[Arc<Target>; 3],
    bodies: &Bodies,
    want: &str,
    p: &Params,
    faults: &Faults,
    procs: &mut Procs,
    r: &mut Rounds,
) -> anyhow::Result<()> {
    let single = Bodies::chat(ROUTER_SINGLE);
    let pool = Bodies::chat(ROUTER_POOL);
    let show = |x: &RouterRound| {
        let u = &x.upstream;
        format!(
            "{} requests, p50 {:.4} ms p99 {:.4} ms; upstream p1/p2/p3 {}/{}/{} requests, {} failed; {} answers with >1 attempt",
            x.run.measured,
            x.run.p50_ms,
            x.run.p99_ms,
            u[0].requests,
            u[1].requests,
            u[2].requests,
            u.iter().map(|c| c.failed).sum::<u64>(),
            x.run.multi_attempt,
        )
    };
    for round in 0..p.rounds {
        for i in order(round, 3) {
            if i == 0 {
                let x = scenarios::router(&targets[0], &bodies.chat, want, p, faults, false).await?;
                progress("R", round, p, i, &show(&x), &x.run.errors);
                r.r1_single[0].push(x.clone());
                r.r1_pool[0].push(x.clone());
                r.r2_pool[0].push(x);
                continue;
            }
            let mut healthy = [("R1 single", &single), ("R1 pool3", &pool)];
            if round % 2 == 1 {
                healthy.reverse();
            }
            for (name, body) in healthy {
                let x = scenarios::router(&targets[i], body, want, p, faults, false).await?;
                procs.check_alive()?;
                progress(name, round, p, i, &show(&x), &x.run.errors);
                if name == "R1 single" {
                    r.r1_single[i].push(x);
                } else {
                    r.r1_pool[i].push(x);
                }
            }
            let x = scenarios::router(&targets[i], &pool, want, p, faults, true).await?;
            procs.check_alive()?;
            progress("R2 pool3", round, p, i, &show(&x), &x.run.errors);
            r.r2_pool[i].push(x);
        }
    }
    // Leave p2 healthy.
    faults.set(ROUTER_PROFILES[1], &json!({})).await
}

/// The paced check of S4a or S4b: direct first (its chunks are the
/// reference), then each gateway.
async fn paced_checks(
    scenario: &str,
    targets: &[Arc<Target>; 3],
    bodies: [&bytes::Bytes; 3],
    p: &Params,
    procs: &mut Procs,
) -> anyhow::Result<Vec<Paced>> {
    let mut out: Vec<Paced> = Vec::with_capacity(3);
    for i in 0..3 {
        let want = out.first().map(|d| d.deltas.as_slice());
        let x = scenarios::paced(&targets[i], bodies[i], want, p).await?;
        procs.check_alive()?;
        let what = format!(
            "{PACED_STREAMS} paced streams, TTFT {:.2} ms, gap p50 {:.2} ms min {:.2} ms, end {:.1} ms",
            x.ttft_ms, x.gap_p50_ms, x.gap_min_ms, x.end_ms
        );
        eprintln!("{scenario} paced {:<11} {what}", TARGETS[i]);
        out.push(x);
    }
    Ok(out)
}

fn paced_line(scenario: &str, checks: &[Paced]) -> String {
    let f = |g: fn(&Paced) -> f64| {
        checks
            .iter()
            .map(|x| format!("{:.2}", g(x)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    format!(
        "{scenario} paced check (upstream sends {PACED_CHUNKS} chunks {PACED_GAP_MS} ms apart; {} / {} / {}): \
         TTFT {} ms, chunk gap p50 {} ms (min {}), to end {} ms{}",
        TARGETS[0],
        TARGETS[1],
        TARGETS[2],
        f(|x| x.ttft_ms),
        f(|x| x.gap_p50_ms),
        f(|x| x.gap_min_ms),
        f(|x| x.end_ms),
        if checks.iter().all(|x| x.errors.count == 0) {
            ": chunks forwarded as they come, none buffered"
        } else {
            ": FAILED, see the errors"
        }
    )
}

fn paced_json(checks: &[Paced]) -> serde_json::Value {
    let mut v = json!({"chunks": PACED_CHUNKS, "upstream_gap_ms": PACED_GAP_MS, "streams": PACED_STREAMS});
    for (x, name) in checks.iter().zip(TARGETS) {
        v[name.replace('-', "_")] = json!({
            "ttft_p50_ms": x.ttft_ms, "gap_p50_ms": x.gap_p50_ms, "gap_min_ms": x.gap_min_ms,
            "end_p50_ms": x.end_ms, "errors": x.errors.count,
        });
    }
    v
}

/// The order of `n` targets in a round: rotated each round, so no target
/// always runs first (or right after another).
fn order(round: usize, n: usize) -> Vec<usize> {
    (0..n).map(|k| (round + k) % n).collect()
}

/// The processes of target `i` (labels in [`Procs`]): the emulator for
/// direct, the one gateway process, the five split ones, the peer.
fn process_labels(i: usize) -> &'static [&'static str] {
    match i {
        0 => &["emulator"],
        1 => &["one-process"],
        2 => &[
            "split-edge",
            "split-auth",
            "split-router",
            "split-adapter",
            "split-metering",
        ],
        _ => &[peer::LABEL],
    }
}

/// Per target, `llmgw_gateway_overhead_seconds{kind="chat"}`'s sum and
/// count from the edge's `/metrics` (zeros for direct and the peer, or
/// when unreadable).
async fn overhead_metrics(targets: &[Arc<Target>]) -> [(f64, f64); 4] {
    let mut out = [(0.0, 0.0); 4];
    for (i, t) in targets.iter().enumerate().take(3).skip(1) {
        let Ok(mut conn) = client::Conn::open(t.addr).await else {
            continue;
        };
        if let Ok((http::StatusCode::OK, body)) = conn.get(t, "/metrics").await {
            out[i] = overhead_sum_count(&String::from_utf8_lossy(&body));
        }
    }
    out
}

/// The sum and count of the chat overhead histogram in a Prometheus page.
fn overhead_sum_count(page: &str) -> (f64, f64) {
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("llmgw_gateway_overhead_seconds_") else {
            continue;
        };
        if !rest.contains("kind=\"chat\"") {
            continue;
        }
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if rest.starts_with("sum") {
            sum += value;
        } else if rest.starts_with("count") {
            count += value;
        }
    }
    (sum, count)
}

fn progress(scenario: &str, round: usize, p: &Params, i: usize, what: &str, errors: &Errors) {
    let errs = if errors.count > 0 {
        format!(", {} errors", errors.count)
    } else {
        String::new()
    };
    eprintln!(
        "{scenario} round {}/{} {:<11} {what}{errs}",
        round + 1,
        p.rounds,
        TARGETS[i]
    );
}

/// A line of progress for a scenario that runs once per target.
fn note(scenario: &str, i: usize, what: &str, errors: &Errors) {
    let errs = if errors.count > 0 {
        format!(", {} errors", errors.count)
    } else {
        String::new()
    };
    eprintln!("{scenario} {:<11} {what}{errs}", TARGETS[i]);
}

fn per_target<T>(rounds: &[Vec<T>; 4], f: impl Fn(&T) -> f64) -> [Vec<f64>; 4] {
    [0, 1, 2, 3].map(|i| rounds[i].iter().map(&f).collect())
}

/// `f(a) − f(b)` per round, for the gateways; direct has no value (n/a).
fn per_target_diff<T>(a: &[Vec<T>; 4], b: &[Vec<T>; 4], f: impl Fn(&T) -> f64) -> [Vec<f64>; 4] {
    [0, 1, 2, 3].map(|i| {
        if i == 0 {
            return vec![f64::NAN; a[0].len()];
        }
        a[i].iter().zip(&b[i]).map(|(x, y)| f(x) - f(y)).collect()
    })
}

/// A table row: metric, unit, how it compares, and its value in a round.
type Metric<T> = (&'static str, &'static str, Compare, fn(&T) -> f64);

fn rows(r: &Rounds, p: &Params) -> Vec<Row> {
    use Compare::{Added, AddedAndRatio, Ratio, Total};
    let s1: [Metric<S1Round>; 4] = [
        ("latency p50", "ms", AddedAndRatio, |x| x.p50_ms),
        ("latency p99", "ms", AddedAndRatio, |x| x.p99_ms),
        ("requests", "count", Total, |x| x.measured as f64),
        ("errors", "count", Total, |x| x.errors.count as f64),
    ];
    let s2: [Metric<S2Round>; 4] = [
        ("throughput", "req/s", Ratio, |x| x.rps),
        ("latency p50", "ms", AddedAndRatio, |x| x.p50_ms),
        ("latency p99", "ms", AddedAndRatio, |x| x.p99_ms),
        ("errors", "count", Total, |x| x.errors.count as f64),
    ];
    let s4: [Metric<S4Round>; 8] = [
        ("TTFT p50", "ms", Added, |x| x.ttft_p50_ms),
        ("TTFT p99", "ms", Added, |x| x.ttft_p99_ms),
        ("chunk gap p50", "µs", Added, |x| x.gap_p50_ms * 1e3),
        ("chunk gap p99", "µs", Added, |x| x.gap_p99_ms * 1e3),
        ("to [DONE] p50", "ms", Added, |x| x.done_p50_ms),
        ("to [DONE] p99", "ms", Added, |x| x.done_p99_ms),
        ("streams", "count", Total, |x| x.measured as f64),
        ("bad streams", "count", Total, |x| x.errors.count as f64),
    ];
    let mut rows = Vec::new();
    for (metric, unit, compare, f) in s1 {
        rows.push(Row {
            scenario: "S1 sequential".into(),
            metric,
            unit,
            values: per_target(&r.s1, f),
            compare,
        });
    }
    // The gateway's own account of its overhead (x-llmgw-overhead-ms).
    rows.push(Row {
        scenario: "S1 sequential".into(),
        metric: "x-llmgw-overhead-ms p50",
        unit: "ms",
        values: per_target(&r.s1, |x| x.overhead_p50_ms),
        compare: Compare::Plain { signed: false },
    });
    for case in &r.s2 {
        for (metric, unit, compare, f) in s2 {
            rows.push(Row {
                scenario: format!("S2 upstream {} ms, {} clients", case.delay_ms, case.clients),
                metric,
                unit,
                values: per_target(&case.rounds, f),
                compare,
            });
        }
    }
    s3_rows(r, &mut rows);
    for (metric, unit, compare, f) in s4 {
        rows.push(Row {
            scenario: "S4 streaming".into(),
            metric,
            unit,
            values: per_target(&r.s4, f),
            compare,
        });
    }
    let paced = [
        (format!("S4 paced ({S4P_GAP_MS} ms), 1 at a time"), &r.s4p_one),
        (
            format!("S4 paced ({S4P_GAP_MS} ms), {} in flight", p.s4p_clients),
            &r.s4p_many,
        ),
        (
            format!("S4 paced ({S4P_GAP_MS} ms), {} started together", p.s4p_clients),
            &r.s4p_burst,
        ),
    ];
    for (scenario, rounds) in paced {
        for (metric, unit, compare, f) in s4 {
            if metric.starts_with("to [DONE]") {
                continue;
            }
            rows.push(Row {
                scenario: scenario.clone(),
                metric,
                unit,
                values: per_target(rounds, f),
                compare,
            });
        }
    }
    // The same figures; the end is message_stop / metadata direct, [DONE] via the gateway.
    for (scenario, rounds) in [("S4a anthropic stream", &r.s4a), ("S4b bedrock stream", &r.s4b)] {
        for (metric, unit, compare, f) in s4 {
            let metric = match metric {
                "to [DONE] p50" => "to end p50",
                "to [DONE] p99" => "to end p99",
                m => m,
            };
            rows.push(Row {
                scenario: scenario.into(),
                metric,
                unit,
                values: per_target(rounds, f),
                compare,
            });
        }
    }
    router_rows(r, &mut rows);
    s5_rows(r, &mut rows);
    s6_rows(r, &mut rows);
    // Scenarios left out by `--only` have no rounds.
    rows.retain(|row| row.values.iter().any(|v| !v.is_empty()));
    rows
}

/// R1 and R2. "vs direct" is against the emulator's p1 profile called
/// directly; "vs single" and "vs healthy pool3" are taken per round within
/// each gateway.
fn router_rows(r: &Rounds, rows: &mut Vec<Row>) {
    use Compare::{AddedAndRatio, Plain, Total};
    let latency: [Metric<RouterRound>; 2] = [
        ("latency p50", "ms", AddedAndRatio, |x| x.run.p50_ms),
        ("latency p99", "ms", AddedAndRatio, |x| x.run.p99_ms),
    ];
    let counts: [Metric<RouterRound>; 2] = [
        ("requests", "count", Total, |x| x.run.measured as f64),
        ("errors", "count", Total, |x| x.run.errors.count as f64),
    ];
    let r2: [Metric<RouterRound>; 5] = [
        ("success", "%", Plain { signed: false }, |x| {
            100.0 * x.run.ok as f64 / x.run.measured.max(1) as f64
        }),
        ("upstream failures", "count", Total, |x| {
            x.upstream.iter().map(|c| c.failed).sum::<u64>() as f64
        }),
        ("answers with >1 attempt", "count", Total, |x| {
            x.run.multi_attempt as f64
        }),
        ("p50 of those answers", "ms", Plain { signed: false }, |x| {
            x.run.multi_p50_ms
        }),
        ("p2 requests", "count", Total, |x| x.upstream[1].requests as f64),
    ];
    let r2_name = "R2 pool3, p2 failing";
    let groups = [
        ("R1 single", &r.r1_single, [latency, counts].concat()),
        ("R1 pool3", &r.r1_pool, [latency, counts].concat()),
        (r2_name, &r.r2_pool, latency.to_vec()),
        (r2_name, &r.r2_pool, [&r2[..], &counts].concat()),
    ];
    // Differences taken per round within each gateway: (scenario, metric,
    // rounds, baseline rounds, figure); each goes after its scenario's rows.
    let diffs = [
        (
            "R1 pool3 vs single",
            "added p50",
            &r.r1_pool,
            &r.r1_single,
            latency[0].3,
        ),
        (
            "R1 pool3 vs single",
            "added p99",
            &r.r1_pool,
            &r.r1_single,
            latency[1].3,
        ),
        (
            r2_name,
            "p50 vs healthy pool3",
            &r.r2_pool,
            &r.r1_pool,
            latency[0].3,
        ),
        (
            r2_name,
            "p99 vs healthy pool3",
            &r.r2_pool,
            &r.r1_pool,
            latency[1].3,
        ),
    ];
    for (i, (scenario, rounds, metrics)) in groups.into_iter().enumerate() {
        for (metric, unit, compare, f) in metrics {
            rows.push(Row {
                scenario: scenario.into(),
                metric,
                unit,
                values: per_target(rounds, f),
                compare,
            });
        }
        // R1's differences follow R1 pool3's rows; R2's, its latency.
        let here = match i {
            1 => &diffs[..2],
            2 => &diffs[2..],
            _ => &[],
        };
        for &(scenario, metric, a, b, f) in here {
            rows.push(Row {
                scenario: scenario.into(),
                metric,
                unit: "ms",
                values: per_target_diff(a, b, f),
                compare: Plain { signed: true },
            });
        }
    }
}

/// S3: the ceiling, as a ratio to direct and per gateway core.
fn s3_rows(r: &Rounds, rows: &mut Vec<Row>) {
    use Compare::{Plain, Ratio};
    let scenario = || format!("S3 open loop, p99 < {S3_P99_MS} ms");
    rows.push(Row {
        scenario: scenario(),
        metric: "ceiling",
        unit: "req/s",
        values: per_target(&r.s3, |x| x.ceiling_rps),
        compare: Ratio,
    });
    rows.push(Row {
        scenario: scenario(),
        metric: "answered at the ceiling",
        unit: "req/s",
        values: per_target(&r.s3, |x| x.achieved_rps),
        compare: Plain { signed: false },
    });
    let cores = r.gateway_cores as f64;
    let mut per_core = per_target(&r.s3, |x| x.ceiling_rps / cores);
    per_core[0] = vec![f64::NAN; per_core[0].len()];
    rows.push(Row {
        scenario: scenario(),
        metric: "ceiling per gateway core",
        unit: "req/s",
        values: per_core,
        compare: Plain { signed: false },
    });
}

/// S5: each target's memory (the split's five processes summed; each is in
/// the JSON).
fn s5_rows(r: &Rounds, rows: &mut Vec<Row>) {
    use Compare::{Plain, Total};
    let plain = Plain { signed: false };
    let one = |f: &dyn Fn(&S5Run) -> f64| {
        let mut v: [Vec<f64>; 4] = Default::default();
        for x in &r.s5 {
            v[x.0] = vec![f(x)];
        }
        v
    };
    let memory: [Metric<Rss>; 4] = [
        ("RSS idle", "MB", plain, |x| x.idle_mb),
        ("RSS before", "MB", plain, |x| x.before_mb),
        ("RSS under load", "MB", plain, |x| x.load_mb),
        ("RSS after", "MB", plain, |x| x.after_mb),
    ];
    for (metric, unit, compare, f) in memory {
        rows.push(Row {
            scenario: "S5 concurrent streams".into(),
            metric,
            unit,
            values: one(&|x| x.1.iter().map(f).sum()),
            compare,
        });
    }
    rows.push(Row {
        scenario: "S5 concurrent streams".into(),
        metric: "after / idle",
        unit: "x",
        values: one(&|x| {
            x.1.iter().map(|m| m.after_mb).sum::<f64>() / x.1.iter().map(|m| m.idle_mb).sum::<f64>()
        }),
        compare: plain,
    });
    let streams: [Metric<S4Round>; 3] = [
        ("streams", "count", Total, |x| x.measured as f64),
        ("bad streams", "count", Total, |x| x.errors.count as f64),
        ("TTFT p99", "ms", plain, |x| x.ttft_p99_ms),
    ];
    for (metric, unit, compare, f) in streams {
        rows.push(Row {
            scenario: "S5 concurrent streams".into(),
            metric,
            unit,
            values: one(&|x| f(&x.2)),
            compare,
        });
    }
}

/// S6: what twice the ceiling did to each gateway.
fn s6_rows(r: &Rounds, rows: &mut Vec<Row>) {
    use Compare::{Plain, Total};
    let figures: [Metric<S6Run>; 12] = [
        ("rate sent", "req/s", Plain { signed: false }, |x| x.run.rate),
        ("sent", "count", Total, |x| x.run.sent as f64),
        ("answered 200", "count", Total, |x| x.run.ok as f64),
        ("refused 429/503", "count", Total, |x| x.run.refused as f64),
        ("refused p99", "ms", Plain { signed: false }, |x| {
            x.run.refused_p99_ms
        }),
        ("answered p50", "ms", Plain { signed: false }, |x| x.run.ok_p50_ms),
        ("answered p99", "ms", Plain { signed: false }, |x| x.run.ok_p99_ms),
        ("timeouts, other errors", "count", Total, |x| {
            x.run.errors.count as f64
        }),
        ("no free client connection", "count", Total, |x| {
            x.run.client_saturated as f64
        }),
        ("upstream calls (emulator)", "count", Total, |x| x.upstream as f64),
        ("metered requests (usage API)", "count", Total, |x| {
            x.metered.requests as f64
        }),
        ("upstream answers not metered", "count", Total, |x| {
            x.unmetered_answers()
        }),
    ];
    for (metric, unit, compare, f) in figures {
        let mut values: [Vec<f64>; 4] = Default::default();
        for (i, x) in &r.s6 {
            values[*i] = vec![f(x)];
        }
        rows.push(Row {
            scenario: "S6 twice the S3 ceiling".into(),
            metric,
            unit,
            values,
            compare,
        });
    }
}

/// A verdict the bench checks beside the errors.
struct Check {
    ok: bool,
    what: String,
}

/// How far the gateway's own overhead figure may stray from the added
/// latency the client sees (S1 p50): 0.2 ms, or half the added latency.
const OVERHEAD_TOLERANCE_MS: f64 = 0.2;

/// The checks: each gateway's `x-llmgw-overhead-ms` against the client's
/// added latency (S1), and S6's metering against the emulator's count.
fn checks(r: &Rounds) -> Vec<Check> {
    let mut out = Vec::new();
    for i in [1, 2] {
        if r.s1[i].is_empty() || r.s1[0].is_empty() {
            continue;
        }
        let added: Vec<f64> = r.s1[i]
            .iter()
            .zip(&r.s1[0])
            .map(|(g, d)| g.p50_ms - d.p50_ms)
            .collect();
        let added = spread(&added).median;
        let header = spread(&r.s1[i].iter().map(|x| x.overhead_p50_ms).collect::<Vec<_>>()).median;
        let tolerance = OVERHEAD_TOLERANCE_MS.max(added.abs() / 2.0);
        out.push(Check {
            ok: (header - added).abs() <= tolerance,
            what: format!(
                "{} S1: x-llmgw-overhead-ms p50 {header:.4} ms vs client-side added p50 {added:+.4} ms \
                 (within {tolerance:.2} ms); llmgw_gateway_overhead_seconds mean {:.4} ms",
                TARGETS[i], r.overhead_metric_ms[i]
            ),
        });
    }
    for (i, x) in &r.s6 {
        let unmetered = x.unmetered_answers();
        out.push(Check {
            ok: unmetered == 0.0 && x.run.ok <= x.upstream,
            what: format!(
                "{} S6: {} answered, {} upstream calls; metered {} requests, {} output tokens = {:.0} answers \
                 of {} tokens ({unmetered:.0} upstream answers not metered; counted {:.1} s after the load)",
                TARGETS[*i],
                x.run.ok,
                x.upstream,
                x.metered.requests,
                x.metered.output_tokens,
                x.metered.output_tokens as f64 / x.answer_tokens.max(1) as f64,
                x.answer_tokens,
                x.metered_after_s
            ),
        });
    }
    out
}

/// Errors by target and scenario, merged over the rounds.
fn error_samples(r: &Rounds) -> Vec<(&'static str, &'static str, Errors)> {
    fn merged<'a>(rounds: impl Iterator<Item = &'a Errors>) -> Errors {
        let mut all = Errors::default();
        for e in rounds {
            all.count += e.count;
            for s in &e.samples {
                if all.samples.len() < 5 && !all.samples.contains(s) {
                    all.samples.push(s.clone());
                }
            }
        }
        all
    }
    let mut out = Vec::new();
    for (i, target) in TARGETS.iter().enumerate() {
        out.push((*target, "S1", merged(r.s1[i].iter().map(|x| &x.errors))));
        for case in &r.s2 {
            out.push((*target, "S2", merged(case.rounds[i].iter().map(|x| &x.errors))));
        }
        out.push((*target, "S4", merged(r.s4[i].iter().map(|x| &x.errors))));
        out.push((
            *target,
            "S4 paced",
            merged(r.s4p_one[i].iter().map(|x| &x.errors)),
        ));
        out.push((
            *target,
            "S4 paced",
            merged(r.s4p_many[i].iter().map(|x| &x.errors)),
        ));
        out.push((
            *target,
            "S4 paced",
            merged(r.s4p_burst[i].iter().map(|x| &x.errors)),
        ));
        out.push((
            *target,
            "S5",
            merged(r.s5.iter().filter(|x| x.0 == i).map(|x| &x.2.errors)),
        ));
        out.push((
            *target,
            "S6",
            merged(r.s6.iter().filter(|x| x.0 == i).map(|x| &x.1.run.errors)),
        ));
        out.push((*target, "S4a", merged(r.s4a[i].iter().map(|x| &x.errors))));
        out.push((*target, "S4b", merged(r.s4b[i].iter().map(|x| &x.errors))));
        out.push((
            *target,
            "S4a paced",
            merged(r.s4a_paced.get(i).map(|x| &x.errors).into_iter()),
        ));
        out.push((
            *target,
            "S4b paced",
            merged(r.s4b_paced.get(i).map(|x| &x.errors).into_iter()),
        ));
        // Direct's one R run sits in every R slot; count it once.
        let r_runs = [
            ("R1 single", &r.r1_single),
            ("R1 pool3", &r.r1_pool),
            ("R2 pool3", &r.r2_pool),
        ];
        let r_runs = if i == 0 { &r_runs[..1] } else { &r_runs[..] };
        for &(scenario, rounds) in r_runs {
            let scenario = if i == 0 { "R" } else { scenario };
            out.push((*target, scenario, merged(rounds[i].iter().map(|x| &x.run.errors))));
        }
    }
    out
}

fn meta(pinning: &Pinning, args: &Args, elapsed: f64) -> serde_json::Value {
    let git = |a: &[&str]| {
        std::process::Command::new("git")
            .args(["-C", concat!(env!("CARGO_MANIFEST_DIR"), "/..")])
            .args(a)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "unix_time": unix,
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        "cores": pinning.cores,
        "pinning": pinning.note,
        "client_core": pinning.client_core,
        "gateway_core": pinning.gateway_core,
        "quick": args.quick,
        "elapsed_s": elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_every_target() {
        assert_eq!(order(0, 3), [0, 1, 2]);
        assert_eq!(order(1, 4), [1, 2, 3, 0]);
        assert_eq!(order(5, 3), [2, 0, 1]);
    }

    #[test]
    fn overhead_is_read_from_the_chat_series() {
        let page = "# TYPE llmgw_gateway_overhead_seconds histogram\n\
            llmgw_gateway_overhead_seconds_bucket{kind=\"chat\",le=\"0.001\"} 9\n\
            llmgw_gateway_overhead_seconds_sum{kind=\"chat\"} 0.002\n\
            llmgw_gateway_overhead_seconds_count{kind=\"chat\"} 10\n\
            llmgw_gateway_overhead_seconds_sum{kind=\"chat_stream\"} 5\n\
            llmgw_gateway_overhead_seconds_count{kind=\"chat_stream\"} 7\n";
        assert_eq!(overhead_sum_count(page), (0.002, 10.0));
        assert_eq!(overhead_sum_count(""), (0.0, 0.0));
    }
}
