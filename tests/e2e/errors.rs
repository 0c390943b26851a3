//! Every error leaves in the OpenAI shape with the right status and `param`,
//! and no input brings a service down.

use serde_json::{Value, json};

use crate::harness::{Gateway, Shape};

fn assert_error(status: u16, body: &Value, want_status: u16, want_param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("code").is_some(), "{body}");
    assert_eq!(e["param"].as_str(), want_param, "{body}");
}

async fn raw(gw: &Gateway, content_type: Option<&str>, key: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = gw.client.post(gw.url("/v1/chat/completions")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

async fn errors(shape: Shape) {
    let gw = Gateway::start(shape).await;
    let key = gw.key.clone();
    let ok = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let json_ct = Some("application/json");

    // 401: missing, wrong; the rejected key is never echoed.
    let (s, b) = raw(&gw, json_ct, None, ok.to_string().into_bytes()).await;
    assert_error(s, &b, 401, None);
    let (s, b) = raw(
        &gw,
        json_ct,
        Some("sk-llmgw-not-a-real-key"),
        ok.to_string().into_bytes(),
    )
    .await;
    assert_error(s, &b, 401, None);
    assert!(!b.to_string().contains("not-a-real-key"));

    // 415 and 413 before anything is parsed.
    let (s, b) = raw(&gw, Some("text/plain"), Some(&key), ok.to_string().into_bytes()).await;
    assert_error(s, &b, 415, None);
    let (s, b) = raw(&gw, None, Some(&key), ok.to_string().into_bytes()).await;
    assert_error(s, &b, 415, None);
    let huge =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(2 << 20)}]});
    let (s, b) = raw(&gw, json_ct, Some(&key), huge.to_string().into_bytes()).await;
    assert_error(s, &b, 413, None);

    // ...also when the body is chunked, with no declared length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..40).map(|_| Ok(vec![b' '; 64 << 10])).collect();
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // 400s naming the param.
    let (s, b) = raw(&gw, json_ct, Some(&key), b"{\"model\": ".to_vec()).await;
    assert_error(s, &b, 400, None);
    let (s, b) = raw(&gw, json_ct, Some(&key), vec![0xff, 0xfe, 0x00]).await;
    assert_error(s, &b, 400, None);
    let cases = [
        (json!({"messages": [{"role": "user", "content": "hi"}]}), "model"),
        (json!({"model": "gpt-4o-mini"}), "messages"),
        (json!({"model": "gpt-4o-mini", "messages": []}), "messages"),
        (
            json!({"model": 42, "messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}),
            "temperature",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}),
            "max_tokens",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
            "stream",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": {"a": 1}}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 0}),
            "n",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
    ];
    for (body, param) in cases {
        let (s, b) = raw(&gw, json_ct, Some(&key), body.to_string().into_bytes()).await;
        assert_error(s, &b, 400, Some(param));
    }

    // 404 for an unknown model, naming `model`.
    for model in ["no-such-model", "@nobody/gpt-4o-mini", "ghost-model"] {
        let (s, _, b) = gw
            .post(
                "/v1/chat/completions",
                &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_error(s, &b, 404, Some("model"));
    }

    // Upstream failures, mapped, with the provider named.
    let upstream =
        |text: &str| json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    let (s, _, b) = gw
        .post("/v1/chat/completions", &upstream("[emu:status=500] boom"))
        .await;
    assert_error(s, &b, 502, None);
    assert!(b["error"]["message"].as_str().unwrap().contains("emu"), "{b}");
    let (s, h, b) = gw
        .post("/v1/chat/completions", &upstream("[emu:status=429] slow down"))
        .await;
    assert_error(s, &b, 429, None);
    assert!(h.contains_key("retry-after"), "retry-after passed on");
    let (s, _, b) = gw
        .post("/v1/chat/completions", &upstream("[emu:status=503]"))
        .await;
    assert_error(s, &b, 502, None);
    let (s, _, b) = gw
        .post("/v1/chat/completions", &upstream("[emu:status=400] bad"))
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, _, b) = gw
        .post("/v1/chat/completions", &json!({"model": "slow-model", "messages": [{"role": "user", "content": "[emu:delay_ms=3000] hi"}]}))
        .await;
    assert_error(s, &b, 504, None);
    assert!(b["error"]["message"].as_str().unwrap().contains("slow"), "{b}");
    let (s, _, b) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "dead-model", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_error(s, &b, 502, None);
    assert!(b["error"]["message"].as_str().unwrap().contains("dead"), "{b}");
    // A stream whose provider fails before the first byte is a plain HTTP error.
    let (s, _, b) = gw
        .post("/v1/chat/completions", &json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[emu:status=500]"}]}))
        .await;
    assert_error(s, &b, 502, None);
    // One that fails midway ends with an error event and no [DONE].
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[emu:abort_mid_stream] [emu:words=30] hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = crate::harness::sse_data(&r.text().await.unwrap());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].as_str().unwrap().contains("emu"),
        "{last}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));

    // Unknown routes and methods, in the same shape.
    let r = gw.client.get(gw.url("/v1/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    let r = gw
        .client
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // Overload: with `max_in_flight: 4` taken by open streams, the next
    // request is refused at once with 503 and retry-after, not queued.
    let mut open = Vec::new();
    for _ in 0..4 {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "stream": true,
                "messages": [{"role": "user", "content": "[emu:words=100] [emu:chunk_delay_ms=50] hold"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        open.push(r);
    }
    let started = std::time::Instant::now();
    let (s, h, b) = gw.post("/v1/chat/completions", &ok).await;
    assert_error(s, &b, 503, None);
    assert!(h.contains_key("retry-after"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused at once"
    );
    // Admission comes first: at capacity nothing else is looked at, not
    // even the key (the Anthropic door and embeddings too).
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-not-a-key")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    for (path, body) in [
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "x"}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        ),
    ] {
        let r = gw
            .client
            .post(gw.url(path))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{path}");
    }
    drop(open);

    // Still serving after all of that: nothing panicked, and the permits of
    // the dropped streams came back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (s, _, b) = gw.post("/v1/chat/completions", &ok).await;
        if s == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "permits never came back: {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_one_process() {
    errors(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_across_five_processes() {
    errors(Shape::Split).await;
}

/// A provider that goes quiet mid-stream is cut off after the idle timeout
/// with an error event (no `[DONE]`), instead of holding the client forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_hits_the_idle_timeout() {
    let gw = Gateway::start(Shape::All).await;
    let started = std::time::Instant::now();
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "[emu:chunk_delay_ms=5000] [emu:words=5] hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = crate::harness::sse_data(&r.text().await.unwrap());
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(4),
        "cut off by the 1 s idle timeout, took {elapsed:?}"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

/// SIGTERM drains and exits cleanly, and what was metered is flushed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_metering() {
    let mut gw = Gateway::start(Shape::All).await;
    for _ in 0..3 {
        let (s, _, b) = gw
            .post(
                "/v1/chat/completions",
                &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bye"}]}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    crate::harness::sigterm(gw.children.remove(0)).await;
    // Read straight from the store now that nothing is running.
    let usage = gw.usage_until("acme", |u| u["requests"] == 3).await;
    assert_eq!(usage["requests"], 3, "{usage}");
}

/// `max_retries`: a retryable failure is tried again (with backoff) before
/// the error is answered; a non-retryable one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_tries_the_provider_again() {
    let gw = Gateway::start_with(
        Shape::All,
        "  - name: flaky\n    type: openai\n    base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}\n    max_retries: 2\n",
        "  - name: flaky-model\n    target: flaky/gpt-4o-mini\n",
    )
    .await;
    let ask = |text: &str| json!({"model": "flaky-model", "messages": [{"role": "user", "content": text}]});
    let before = gw.upstream_requests().await.len();
    let (s, _, b) = gw
        .post("/v1/chat/completions", &ask("[emu:status=503] down"))
        .await;
    assert_error(s, &b, 502, None);
    assert_eq!(
        gw.upstream_requests().await.len() - before,
        3,
        "one try and two retries"
    );

    let before = gw.upstream_requests().await.len();
    let (s, _, b) = gw
        .post("/v1/chat/completions", &ask("[emu:status=400] bad"))
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        gw.upstream_requests().await.len() - before,
        1,
        "a rejection is not retried"
    );

    // Streams retry too, before the first byte.
    let before = gw.upstream_requests().await.len();
    let mut body = ask("[emu:status=500] down");
    body["stream"] = json!(true);
    let (s, _, b) = gw.post("/v1/chat/completions", &body).await;
    assert_error(s, &b, 502, None);
    assert_eq!(gw.upstream_requests().await.len() - before, 3);

    // And a success on the way reports every attempt.
    let (s, _, b) = gw.post("/v1/chat/completions", &ask("fine")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["metadata"]["attempts"].as_array().unwrap().len(), 1);
}

/// `llmgw check`: a good config is `ok` with nothing started or stored; a
/// mistake is named (file, key, the nearest valid one) with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_a_config_without_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str| {
        let path = dir.path().join("g.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(crate::harness::bin())
            .args(["check", "--config"])
            .arg(&path)
            .env("OPENAI_API_KEY", "sk-test")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let data = dir.path().join("data");
    let good = format!(
        "data_dir: {data:?}\nproviders:\n  - {{name: openai, type: openai, api_key: \"${{OPENAI_API_KEY}}\"}}\n"
    );
    let (ok, stdout, stderr) = check(&good);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("ok: ") && stdout.contains("1 providers"),
        "{stdout}"
    );
    assert!(!data.exists(), "check opened a store");
    assert!(!stdout.contains("sk-test") && !stderr.contains("sk-test"));

    let (ok, _, stderr) = check(&format!("{good}edgee: {{}}\n"));
    assert!(!ok);
    assert!(
        stderr.contains("g.yaml") && stderr.contains("edgee") && stderr.contains("edge"),
        "{stderr}"
    );
}
