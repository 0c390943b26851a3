//! Scenario G: what governance costs on the hot path. The same sequential
//! requests as S1 through the one-process gateway with a plain key, with a
//! key whose policy sets rate limits and a budget (so every request is
//! counted against limits and reserves and settles a budget), and through a
//! second one-process gateway whose rate-limit windows live in a real Redis.
//! Rounds alternate the three; figures are added latency over the plain key.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::client::Target;
use crate::procs::{self, Procs};
use crate::report::spread;
use crate::scenarios::{self, Params, S1Round};

/// Generous limits: every request is checked and counted, none refused.
const POLICY: &str =
    r#"{"rpm": 100000000, "tpm": 1000000000, "budgets": [{"period": "total", "limit_usd": 1000000}]}"#;

pub const LABELS: [&str; 3] = ["plain key", "governed key", "governed, Redis"];

/// Creates a key of org `bench-gov` on `config` with [`POLICY`].
async fn governed_key(bin: &Path, config: &Path, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(["keys", "create", "--org", "bench-gov", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .await?;
    if !out.status.success() {
        bail!("keys create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8(out.stdout)?;
    let mut lines = stdout.lines().rev();
    let key = lines.next().context("no key printed")?.trim().to_owned();
    let id = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .context("no key id printed")?;
    let out = tokio::process::Command::new(bin)
        .args([
            "admin",
            "PUT",
            &format!("/admin/v1/keys/{id}/policy"),
            "--body",
            POLICY,
            "--config",
        ])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .await?;
    if !out.status.success() {
        bail!("setting the policy: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(key)
}

/// Starts `redis-server` on a free port (`LLMGW_REDIS_BIN` or the PATH).
async fn redis(procs: &mut Procs, dir: &Path) -> anyhow::Result<SocketAddr> {
    let bin = std::env::var("LLMGW_REDIS_BIN").unwrap_or_else(|_| "redis-server".to_owned());
    let addr = procs::free_ports(1)?[0];
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "--port",
        &addr.port().to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    procs
        .start_command("redis", cmd)
        .with_context(|| format!("cannot start {bin}: run scripts/setup-redis.sh"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("redis did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(addr)
}

/// The three targets: the plain key and the governed key on the
/// one-process gateway, and a governed key on a Redis-backed gateway.
#[expect(
    clippy::too_many_arguments,
    reason = "the bench's shared setup, passed through"
)]
pub async fn targets(
    bin: &Path,
    procs: &mut Procs,
    dir: &Path,
    env: &[(&str, &str)],
    core: Option<usize>,
    plain: &Arc<Target>,
    one_cfg: &Path,
    emulators: (SocketAddr, SocketAddr),
    probe: &Bytes,
) -> anyhow::Result<[Arc<Target>; 3]> {
    let governed = governed_key(bin, one_cfg, env).await?;
    let redis_addr = redis(procs, dir).await?;
    let ports = procs::free_ports(2)?;
    let mut yaml = procs::gateway_config(
        &dir.join("gov-redis"),
        ports[0],
        ports[1],
        emulators.0,
        emulators.1,
        None,
    )?;
    yaml.push_str(&format!("redis:\n  url: redis://{redis_addr}\n"));
    let cfg = dir.join("gov-redis.yaml");
    std::fs::write(&cfg, yaml)?;
    let redis_key = governed_key(bin, &cfg, env).await?;
    procs.start_llmgw(bin, core, "all", &cfg, env, "gov-redis")?;
    let targets = [
        plain.clone(),
        Arc::new(Target::new(LABELS[1], plain.addr, &governed)?),
        Arc::new(Target::new(LABELS[2], ports[0], &redis_key)?),
    ];
    procs.wait_ready(&targets[2], probe, true).await?;
    Ok(targets)
}

/// Rounds of S1 over the three targets, rotated each round.
pub async fn rounds(
    targets: &[Arc<Target>; 3],
    body: &Bytes,
    want: &str,
    p: &Params,
    procs: &mut Procs,
) -> anyhow::Result<[Vec<S1Round>; 3]> {
    let mut out: [Vec<S1Round>; 3] = Default::default();
    for round in 0..p.rounds {
        for i in [round % 3, (round + 1) % 3, (round + 2) % 3] {
            let x = scenarios::s1(&targets[i], body, want, p, None).await?;
            procs.check_alive()?;
            eprintln!(
                "G round {}/{} {:<16} {} requests, p50 {:.4} ms p99 {:.4} ms{}",
                round + 1,
                p.rounds,
                LABELS[i],
                x.measured,
                x.p50_ms,
                x.p99_ms,
                if x.errors.count > 0 {
                    format!(", {} errors", x.errors.count)
                } else {
                    String::new()
                }
            );
            out[i].push(x);
        }
    }
    Ok(out)
}

/// The table lines and the JSON: each target's p50/p99, and the added
/// p50/p99 over the plain key per round (median and range).
pub fn report(r: &[Vec<S1Round>; 3]) -> (Vec<String>, Value) {
    let p50 = |i: usize| r[i].iter().map(|x| x.p50_ms).collect::<Vec<_>>();
    let p99 = |i: usize| r[i].iter().map(|x| x.p99_ms).collect::<Vec<_>>();
    let added = |a: Vec<f64>, b: Vec<f64>| a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<_>>();
    let mut lines = vec![
        "G: governance on the hot path (one process; S1 requests; ms, median of rounds (min–max))".to_owned(),
    ];
    let mut json_rows = Vec::new();
    for i in 0..3 {
        let (a, b) = (spread(&p50(i)), spread(&p99(i)));
        let mut line = format!(
            "  {:<16} p50 {:.4} ({:.4}–{:.4})  p99 {:.4} ({:.4}–{:.4})",
            LABELS[i], a.median, a.min, a.max, b.median, b.min, b.max
        );
        let mut row = json!({"target": LABELS[i], "p50_ms": a.median, "p99_ms": b.median,
            "errors": r[i].iter().map(|x| x.errors.count).sum::<u64>()});
        if i > 0 {
            let (d50, d99) = (spread(&added(p50(i), p50(0))), spread(&added(p99(i), p99(0))));
            line.push_str(&format!(
                "  added p50 {:+.4} ({:+.4}…{:+.4})  added p99 {:+.4}",
                d50.median, d50.min, d50.max, d99.median
            ));
            row["added_p50_ms"] = json!(d50.median);
            row["added_p99_ms"] = json!(d99.median);
        }
        lines.push(line);
        json_rows.push(row);
    }
    (lines, Value::Array(json_rows))
}
