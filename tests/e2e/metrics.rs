//! Prometheus metrics end to end: the five services split, real traffic
//! (plain and streamed chat, a fallback, an upstream error, a rate-limit
//! refusal), a real Prometheus scraping every service's `/metrics`, and its
//! HTTP API asked for the series with the labels and values the traffic
//! must have produced. The Grafana dashboards are checked against the same
//! processes: every metric a panel queries must be one they export. One
//! process (`llmgw all`) serves every series on the edge's `/metrics`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::{Gateway, Shape, free_addr, user};
use crate::limits::key_with_policy;

const PROVIDERS: &str =
    "  - name: mfail\n    type: openai\n    base_url: http://{emu}/_f/mfail/v1\n    api_key: ${EMU_KEY}\n";
/// Two failures in a row eject a target: the test's two failures of
/// `mfail` eject it once.
const ROUTING: &str = "routing:\n  ejection: { consecutive_failures: 2 }\n";
const MODELS: &str = r#"  - name: fb
    strategy: priority
    targets: [{ target: mfail/gpt-4o-mini }, { target: emu/gpt-4o-mini }]
  - name: broken
    target: mfail/gpt-4o-mini
"#;

/// A Prometheus server of its own (temp dir, free port), scraping `targets`
/// (job name → `host:port`) every second.
struct Prometheus {
    addr: SocketAddr,
    client: reqwest::Client,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let bin = std::env::var("LLMGW_PROMETHEUS_BIN")
            .expect("LLMGW_PROMETHEUS_BIN (scripts/setup-prometheus.sh prints it; `make test-rust` sets it)");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs: [{{ targets: ['{addr}'] }}]\n"
            ));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let addr = free_addr();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let prom = Prometheus {
            addr,
            client: crate::harness::http_client(),
            _child: child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prom
                .client
                .get(format!("http://{addr}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prom;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query's result vector.
    async fn query(&self, q: &str) -> Vec<Value> {
        let r = self
            .client
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", q)])
            .send()
            .await
            .expect("prometheus query");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of `q` (a `sum(...)`, say); `None` when empty.
    async fn value(&self, q: &str) -> Option<f64> {
        let result = self.query(q).await;
        assert!(result.len() <= 1, "{q}: more than one series: {result:?}");
        result
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    /// Polls `q` until `pred` holds for its value (scrapes are every
    /// second; metering is asynchronous), for up to 30 s; the last value.
    async fn until(&self, q: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.value(q).await;
            if let Some(v) = v
                && pred(v)
            {
                return v;
            }
            assert!(Instant::now() < deadline, "{q}: still {v:?} after 30 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Tokens a successful response reported: (prompt, completion).
fn tokens(usage: &Value) -> (u64, u64) {
    (
        usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        usage["completion_tokens"].as_u64().expect("completion_tokens"),
    )
}

/// POSTs a chat request with `key`; status, the overhead header (ms), the
/// client-side latency (ms) and the body.
async fn timed_chat(gw: &Gateway, key: &str, body: &Value) -> (u16, Option<f64>, f64, Value) {
    let started = Instant::now();
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let overhead = r
        .headers()
        .get("x-llmgw-overhead-ms")
        .map(|v| v.to_str().unwrap().parse::<f64>().expect("overhead is a number"));
    let text = r.text().await.expect("body");
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, overhead, latency, body)
}

/// Every metric name the OpenMetrics text `exposition` exports, as
/// Prometheus stores them: sample names, and each family's names by type
/// (`_total` for counters; `_bucket`, `_sum`, `_count` for histograms) so
/// a family without samples yet still counts.
fn exported_names(exposition: &str, names: &mut BTreeSet<String>) {
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
}

/// Metric names in a PromQL expression: identifiers that are not
/// functions, keywords, label names (inside `{}` or `by (...)`), strings,
/// durations or numbers.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 28] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        "atan2",
        "start",
        "end", // aggregations may put `by (...)` before their `(`
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    // Drop strings, label matchers, ranges and grouping clauses.
    let mut clean = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                // Quoted label values may hold the closing bracket.
                let mut quote = None;
                for d in chars.by_ref() {
                    match quote {
                        Some(q) if d == q => quote = None,
                        Some(_) => {}
                        None if d == '"' || d == '\'' => quote = Some(d),
                        None if d == close => break,
                        None => {}
                    }
                }
                clean.push(' ');
            }
            _ => clean.push(c),
        }
    }
    let mut names = BTreeSet::new();
    let bytes = clean.as_bytes();
    let mut i = 0;
    let mut skip_group = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &clean[start..i];
            let next = clean[i..].trim_start().chars().next();
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word) {
                // Label names follow in parentheses, if any.
                skip_group = next == Some('(');
            } else if next == Some('(') || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                // a function call or a keyword
            } else if !skip_group {
                names.insert(word.to_owned());
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number (0.99, 1e-9) or a duration (5m): skip it whole.
            i += 1;
            while i < bytes.len() && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            continue;
        } else if c == ')' {
            skip_group = false;
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` of every panel (nested rows included) of a dashboard.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(targets)) = map.get("targets") {
                for t in targets {
                    if let Some(e) = t["expr"].as_str() {
                        out.push(e.to_owned());
                    }
                }
            }
            for (k, child) in map {
                if k != "targets" {
                    exprs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

/// Every dashboard under `helm/llmgw/dashboards` queries only metrics in
/// `exported`, through the `${datasource}` variable.
fn check_dashboards(exported: &BTreeSet<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/llmgw/dashboards");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let dash: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            dash["title"].is_string() && dash["uid"].is_string(),
            "{}",
            path.display()
        );
        let vars = dash["templating"]["list"].as_array().expect("templating");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{}: no Prometheus `datasource` variable",
            path.display()
        );
        let mut found = Vec::new();
        exprs(&dash, &mut found);
        assert!(!found.is_empty(), "{}: no queries", path.display());
        for expr in found {
            let names = promql_metric_names(&expr);
            assert!(!names.is_empty(), "{}: no metric in `{expr}`", path.display());
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{}: `{expr}` queries `{name}`, which no service exports",
                    path.display()
                );
            }
        }
    }
    assert!(seen >= 5, "expected the five dashboards, found {seen}");
}

#[test]
fn promql_names_are_found_and_nothing_else() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (le, provider) (rate(llmgw_x_seconds_bucket{job=~"$job", a="b{c}"}[$__rate_interval]))) / ignoring(le) group_left sum(rate(gen_ai_y_total[5m] offset 1h)) > 0.5 and on(provider) up2"#,
    );
    let want: BTreeSet<String> = ["llmgw_x_seconds_bucket", "gen_ai_y_total", "up2"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
}

#[tokio::test]
async fn split_services_export_their_series_to_a_real_prometheus() {
    let gw = Gateway::start_full(Shape::Split, PROVIDERS, MODELS, ROUTING).await;
    gw.fault("mfail", json!({"status": 500})).await;
    let (mut input, mut output) = (0u64, 0u64);
    let mut ok = 0u64;

    // ---- plain chat: usage, and the overhead header within the latency.
    for i in 0..3 {
        let (status, overhead, latency, body) = timed_chat(
            &gw,
            &gw.key,
            &json!({"model": "gpt-4o-mini", "messages": user(&format!("hello {i}"))}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let overhead = overhead.expect("x-llmgw-overhead-ms on a JSON response");
        assert!(
            overhead >= 0.0 && overhead <= latency,
            "overhead {overhead} ms within the latency {latency} ms"
        );
        let (i, o) = tokens(&body["usage"]);
        (input, output, ok) = (input + i, output + o, ok + 1);
    }
    // A provider that takes 400 ms: the adapter's measure of it crosses the
    // gRPC hop, so the edge counts none of it as its own.
    let (status, overhead, latency, body) = timed_chat(
        &gw,
        &gw.key,
        &json!({"model": "gpt-4o-mini", "messages": user("slow [emu:delay_ms=400]")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let overhead = overhead.expect("x-llmgw-overhead-ms");
    assert!(latency >= 400.0, "{latency}");
    assert!(
        overhead < 200.0,
        "overhead {overhead} ms of {latency} ms: the provider's 400 ms counted as the gateway's"
    );
    let (i, o) = tokens(&body["usage"]);
    (input, output, ok) = (input + i, output + o, ok + 1);

    // ---- a stream, with usage.
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(
            &json!({"model": "gpt-4o-mini", "messages": user("stream please"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers().contains_key("x-llmgw-overhead-ms"),
        "on a stream's headers"
    );
    let events = crate::harness::sse_data(&r.text().await.expect("body"));
    let usage = crate::harness::chunks(&events)
        .into_iter()
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone();
    let (i, o) = tokens(&usage);
    (input, output, ok) = (input + i, output + o, ok + 1);

    // ---- a fallback: mfail answers 500, emu serves.
    let (status, overhead, _, body) = timed_chat(
        &gw,
        &gw.key,
        &json!({"model": "fb", "messages": user("fall back")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(overhead.is_some());
    assert_eq!(body["metadata"]["used_provider"], "emu");
    let (i, o) = tokens(&body["usage"]);
    (input, output, ok) = (input + i, output + o, ok + 1);

    // ---- an upstream error with nowhere to fall back to.
    let (status, overhead, _, body) = timed_chat(
        &gw,
        &gw.key,
        &json!({"model": "broken", "messages": user("fail")}),
    )
    .await;
    assert!(status >= 500, "{status}: {body}");
    assert!(overhead.is_none(), "no overhead on a failure");

    // ---- a rate-limit refusal (one request a minute).
    let limited = key_with_policy(&gw, json!({"rpm": 1})).await;
    let body = json!({"model": "gpt-4o-mini", "messages": user("once")});
    let (status, _, _, first) = timed_chat(&gw, &limited, &body).await;
    assert_eq!(status, 200, "{first}");
    let (i, o) = tokens(&first["usage"]);
    (input, output, ok) = (input + i, output + o, ok + 1);
    let (status, _, _, body) = timed_chat(&gw, &limited, &body).await;
    assert_eq!(status, 429, "{body}");

    // ---- a real Prometheus scrapes every service.
    let [auth, router, adapter, metering] = gw.services;
    let jobs = [
        ("edge", gw.http),
        ("auth", auth),
        ("router", router),
        ("adapter", adapter),
        ("metering", metering),
    ];
    let prom = Prometheus::start(&jobs).await;
    prom.until("sum(up)", |v| v == 5.0).await;

    let chat = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",llmgw_provider="emu""#;
    let got = prom
        .until(
            &format!(r#"sum(gen_ai_client_token_usage_sum{{{chat},gen_ai_token_type="input"}})"#),
            |v| v >= input as f64,
        )
        .await;
    assert_eq!(got, input as f64, "input tokens as the emulator reported them");
    let got = prom
        .value(&format!(
            r#"sum(gen_ai_client_token_usage_sum{{{chat},gen_ai_token_type="output"}})"#
        ))
        .await;
    assert_eq!(got, Some(output as f64), "output tokens");
    assert_eq!(
        prom.value(&format!(
            r#"sum(gen_ai_client_token_usage_count{{{chat},gen_ai_token_type="input"}})"#
        ))
        .await,
        Some(ok as f64),
        "one observation per successful request"
    );
    assert_eq!(
        prom.value(&format!(
            r#"sum(gen_ai_client_operation_duration_seconds_count{{{chat},error_type=""}})"#
        ))
        .await,
        Some(ok as f64)
    );
    assert_eq!(
        prom.value(r#"sum(gen_ai_client_operation_duration_seconds_count{llmgw_provider="mfail",error_type="error"})"#)
            .await,
        Some(1.0),
        "the request that failed everywhere"
    );
    assert_eq!(
        prom.value(&format!(
            r#"sum(gen_ai_server_time_to_first_token_seconds_count{{{chat}}})"#
        ))
        .await,
        Some(1.0),
        "one stream"
    );
    let cost = prom
        .value(r#"sum(llmgw_cost_usd_total{llmgw_provider="emu"})"#)
        .await;
    assert!(cost.is_some_and(|c| c > 0.0), "cost {cost:?}");

    // The gateway's own time: one observation per successful response,
    // each at most the request's whole time.
    assert_eq!(
        prom.value(r#"sum(llmgw_gateway_overhead_seconds_count{job="edge"})"#)
            .await,
        Some(ok as f64)
    );
    assert_eq!(
        prom.value(r#"sum(llmgw_gateway_overhead_seconds_count{kind="chat_stream"})"#)
            .await,
        Some(1.0)
    );
    let own = prom
        .value("sum(llmgw_gateway_overhead_seconds_sum)")
        .await
        .unwrap();
    let total = prom
        .value(r#"sum(llmgw_http_request_duration_seconds_sum{route="/v1/chat/completions",code="200"})"#)
        .await
        .unwrap();
    assert!(own > 0.0 && own <= total, "overhead {own} s within {total} s");

    assert!(
        prom.value(r#"sum(llmgw_fallbacks_total{provider="mfail"})"#)
            .await
            >= Some(1.0)
    );
    assert_eq!(
        prom.value(r#"sum(llmgw_upstream_errors_total{provider="mfail",code="upstream_error"})"#)
            .await,
        Some(2.0),
        "the fallback's first try and the broken request"
    );
    assert_eq!(
        prom.value(r#"sum(llmgw_attempts_total{provider="emu",outcome="ok"})"#)
            .await,
        Some(ok as f64)
    );
    assert_eq!(
        prom.value(r#"llmgw_rejections_total{reason="rate_limit"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        prom.value(r#"llmgw_rejections_total{reason="budget"}"#).await,
        Some(0.0)
    );
    assert_eq!(
        prom.value(
            r#"sum(llmgw_http_requests_total{route="/v1/chat/completions",code="429",status_class="4xx"})"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        prom.value("llmgw_in_flight_streams").await,
        Some(0.0),
        "the stream ended"
    );

    // Internal services, each on its own gRPC port.
    assert!(
        prom.value(r#"sum(llmgw_grpc_server_requests_total{job="router",grpc_method="/llmgw.v1.Router/Route",grpc_code="OK"})"#)
            .await
            >= Some(7.0)
    );
    assert!(
        prom.value(
            r#"sum(llmgw_grpc_server_requests_total{job="auth",grpc_method="/llmgw.v1.Auth/Authenticate"})"#
        )
        .await
            >= Some(1.0)
    );
    assert_eq!(
        prom.value(
            r#"sum(llmgw_adapter_upstream_requests_total{job="adapter",provider="mfail",status="500"})"#
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        prom.value(r#"sum(llmgw_router_ejections_total{job="router",provider="mfail"})"#)
            .await,
        Some(1.0),
        "ejected after its second failure in a row"
    );
    assert_eq!(
        prom.value(r#"llmgw_router_ejected_targets{job="router"}"#).await,
        Some(1.0),
        "and still ejected (30 s)"
    );
    assert!(
        prom.value(r#"sum(llmgw_auth_cache_requests_total{result="hit"})"#)
            .await
            >= Some(1.0),
        "the key was cached after its first use"
    );
    // Every request is metered (the failed one too), asynchronously.
    prom.until(
        r#"sum(llmgw_metering_events_recorded_total{job="metering"})"#,
        |v| v >= (ok + 1) as f64,
    )
    .await;
    assert!(prom.value(r#"sum(llmgw_metering_batches_total)"#).await >= Some(1.0));
    // Per org: every request of this one org, and its spend.
    prom.until(r#"count(llmgw_org_requests_total{job="metering"})"#, |v| v == 1.0)
        .await;
    prom.until(r#"sum(llmgw_org_requests_total{job="metering"})"#, |v| {
        v >= (ok + 1) as f64
    })
    .await;
    assert!(
        prom.value(r#"sum(llmgw_org_cost_usd_total{job="metering"})"#)
            .await
            > Some(0.0)
    );

    // ---- the dashboards query only what these processes export.
    let mut exported = BTreeSet::new();
    for (_, addr) in jobs {
        let text = gw
            .client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(text.ends_with("# EOF\n"), "{addr}: OpenMetrics text");
        exported_names(&text, &mut exported);
    }
    check_dashboards(&exported);
}

#[tokio::test]
async fn one_process_serves_every_series_on_the_edge() {
    let gw = Gateway::start(Shape::All).await;
    let (status, overhead, latency, body) = timed_chat(
        &gw,
        &gw.key,
        &json!({"model": "gpt-4o-mini", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(overhead.is_some_and(|o| o <= latency));
    let r = gw.client.get(gw.url("/metrics")).send().await.expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = r.text().await.expect("text");
    for series in [
        r#"gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",llmgw_provider="emu",gen_ai_token_type="output"} 1"#,
        r#"llmgw_adapter_upstream_requests_total{provider="emu",status="200"} 1"#,
        r#"llmgw_http_requests_total{route="/v1/chat/completions",code="200",status_class="2xx"} 1"#,
        "# TYPE llmgw_metering_events_recorded counter",
        "# TYPE llmgw_meter_events_dropped counter",
        r#"llmgw_gateway_overhead_seconds_count{kind="chat"} 1"#,
    ] {
        assert!(text.contains(series), "missing `{series}` in:\n{text}");
    }
    // Once, not once per service.
    assert_eq!(
        text.matches("# TYPE gen_ai_client_token_usage histogram").count(),
        1
    );
    assert!(
        !text.contains("org_id") && !text.contains(&gw.key),
        "no org ids or keys"
    );
}
