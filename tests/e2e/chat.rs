//! The chat slice through every layer, in both shapes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Gateway, Shape, close, user};

async fn scenario(shape: Shape) {
    let gw = Gateway::start(shape).await;

    // ---- non-streaming, with usage, cost and routing metadata
    let (status, headers, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o-mini", "messages": user("hello gateway")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: hello gateway"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    );
    assert!(p > 0.0 && c > 0.0);
    assert!(
        close(
            usage["cost_usd"].as_f64().unwrap(),
            p * 0.15 / 1e6 + c * 0.60 / 1e6
        ),
        "{usage}"
    );
    let meta = &body["metadata"];
    assert_eq!(meta["requested_model"], "gpt-4o-mini");
    assert_eq!(meta["used_provider"], "emu");
    assert_eq!(meta["used_model"], "gpt-4o-mini");
    assert_eq!(meta["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(meta["attempts"][0]["status"], "ok");
    assert_eq!(
        headers["x-request-id"].to_str().unwrap(),
        meta["request_id"].as_str().unwrap()
    );

    // The provider saw the provider's key, never the client's.
    let up = gw.last_upstream().await;
    assert_eq!(up["headers"]["authorization"], format!("Bearer {EMU_KEY}"));
    assert!(!up.to_string().contains(&gw.key), "client key leaked upstream");

    // ---- every parameter passed through exactly, nothing invented
    let full = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
            ]}
        ],
        "temperature": 0.3, "top_p": 0.95, "max_tokens": 40, "presence_penalty": 0.25, "frequency_penalty": -0.5,
        "stop": ["END", "STOP"], "n": 2, "seed": 7, "user": "end-user-1", "logprobs": true, "top_logprobs": 2,
        "logit_bias": {"1234": -50}, "metadata": {"team": "a"}, "reasoning_effort": "low",
        "response_format": {"type": "json_object"}, "service_tier": "auto", "store": false,
        "some_new_param": {"nested": [1, 2, 3]}
    });
    let (status, _, body) = gw.post("/v1/chat/completions", &full).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(content.is_object(), "json_object answer is JSON");
    assert_eq!(
        gw.last_upstream().await["body"],
        full,
        "the body reached the provider exactly as sent"
    );

    let minimal = json!({"model": "gpt-4o-mini", "messages": user("just this")});
    gw.post("/v1/chat/completions", &minimal).await;
    assert_eq!(gw.last_upstream().await["body"], minimal, "nothing invented");

    // ---- json_schema
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
        "required": ["city", "temp"], "additionalProperties": false});
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o-mini", "messages": user("weather?"),
                "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": true}}}),
        )
        .await;
    assert_eq!(status, 200);
    let parsed: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        parsed["city"].is_string() && parsed["temp"].is_number(),
        "{parsed}"
    );
    assert_eq!(
        gw.last_upstream().await["body"]["response_format"]["json_schema"]["schema"],
        schema
    );

    // ---- tools: a call, then the tool result round trip
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o-mini", "messages": user("weather in Paris?"), "tools": tools, "tool_choice": "required"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());
    let followup = json!({"model": "gpt-4o-mini", "tools": tools, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"}
    ]});
    let (status, _, body) = gw.post("/v1/chat/completions", &followup).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Tool result: sunny, 21C"
    );
    assert_eq!(gw.last_upstream().await["body"]["messages"], followup["messages"]);

    // ---- streaming with include_usage: text, usage with cost, metadata, [DONE]
    let events = gw
        .stream(
            &json!({"model": "gpt-4o-mini", "messages": user("stream me please"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()))
        .collect();
    assert_eq!(text, "You said: stream me please");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let u = &last["usage"];
    assert!(close(
        u["cost_usd"].as_f64().unwrap(),
        u["prompt_tokens"].as_f64().unwrap() * 0.15 / 1e6
            + u["completion_tokens"].as_f64().unwrap() * 0.60 / 1e6
    ));
    assert_eq!(last["metadata"]["used_provider"], "emu");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"
                && c["metadata"]["used_model"] == "gpt-4o-mini")
    );

    // ---- streaming without include_usage: no usage chunk reaches the client
    let events = gw
        .stream(&json!({"model": "gpt-4o-mini", "messages": user("no usage"), "stream": true}))
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(c.get("usage").is_none(), "usage leaked: {c}");
        assert!(
            !c["choices"].as_array().unwrap().is_empty(),
            "empty-choices chunk: {c}"
        );
    }
    // ...though the gateway asked the provider for it, to meter the stream.
    assert_eq!(
        gw.last_upstream().await["body"]["stream_options"],
        json!({"include_usage": true})
    );

    // ---- streamed tool-call deltas reassemble into valid JSON
    let events = gw
        .stream(
            &json!({"model": "gpt-4o-mini", "messages": user("weather?"), "tools": tools, "stream": true}),
        )
        .await;
    let mut name = String::new();
    let mut args = String::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(tc) = c["choices"]
            .get(0)
            .and_then(|ch| ch["delta"]["tool_calls"].get(0))
        {
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name, "get_weather");
    let args: Value = serde_json::from_str(&args).expect("streamed arguments are JSON");
    assert!(args["city"].is_string());

    // ---- /v1/models lists the enabled platform models first, then the
    // built-in models a configured provider type offers
    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids[..3],
        ["gpt-4o-mini", "slow-model", "dead-model"],
        "ghost-model's provider has no key set"
    );
    assert!(
        ids.contains(&"gpt-4.1-nano"),
        "offered by the openai-type providers: {ids:?}"
    );
    assert!(
        !ids.iter().any(|id| id.starts_with("claude")),
        "no anthropic provider is configured: {ids:?}"
    );

    // ---- metering: every request above, with tokens and cost
    let sent = 9;
    let usage = gw.usage_until("acme", |u| u["requests"] == sent).await;
    assert_eq!(usage["requests"], sent, "{usage}");
    assert!(usage["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);

    // ---- a client that disconnects mid-stream cancels upstream and is metered
    let before = gw.usage_until("acme", |_| true).await;
    let mut resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "gpt-4o-mini", "stream": true,
            "messages": user("[emu:words=200] [emu:chunk_delay_ms=30] long story")}))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 4 {
        seen.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().expect("more chunks"),
        ));
    }
    drop(resp);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = gw.last_upstream().await;
        if last["outcome"] == "cancelled" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream never saw the cancel: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = gw
        .usage_until("acme", |u| {
            u["requests"].as_u64() == before["requests"].as_u64().map(|r| r + 1)
        })
        .await;
    assert_eq!(
        after["requests"].as_u64(),
        before["requests"].as_u64().map(|r| r + 1),
        "cancelled stream metered"
    );
    assert!(
        after["output_tokens"].as_u64().unwrap() > before["output_tokens"].as_u64().unwrap(),
        "what was streamed before the disconnect is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_in_one_process() {
    scenario(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_across_five_processes() {
    scenario(Shape::Split).await;
}

/// `upstream.idle_timeout`: pooled connections to a provider are closed
/// once idle that long (counted at the emulator), and kept under the
/// default.
#[tokio::test]
async fn idle_upstream_connections_close_after_upstream_idle_timeout() {
    let (short, default) = tokio::join!(
        Gateway::start_full(Shape::All, "", "", "upstream:\n  idle_timeout: 1s\n"),
        Gateway::start(Shape::All),
    );
    // The emulator's count of open connections, less the one asking.
    let open = async |gw: &Gateway| {
        let ledger: Value = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
            .get(format!("http://{}/_emu/ledger", gw.emu.addr))
            .send()
            .await
            .expect("ledger")
            .json()
            .await
            .expect("ledger json");
        ledger["open_connections"].as_i64().expect("open_connections") - 1
    };
    // Three at once: three upstream connections, then pooled.
    let three = async |gw: &Gateway| {
        let one = || async {
            let r = gw
                .client
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&gw.key)
                .json(&json!({"model": "gpt-4o-mini", "messages": user("hi [emu:delay_ms=200]")}))
                .send()
                .await
                .expect("chat");
            assert_eq!(r.status(), 200);
        };
        tokio::join!(one(), one(), one());
    };
    tokio::join!(three(&short), three(&default));
    assert!(open(&short).await >= 3, "pooled right after");
    assert!(open(&default).await >= 3, "pooled right after");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open(&short).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connections still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(open(&default).await >= 3, "the default keeps them (90 s)");
}
