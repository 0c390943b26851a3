//! OpenAI clients using Anthropic models through the gateway: a `type: anthropic`
//! provider against the emulator's Messages API, addressed as a platform model and
//! as `anthropic/<model>`.

use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Gateway, Shape, chunks, close, joined, user};

const PROVIDERS: &str = "  - name: claude\n    type: anthropic\n    base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}\n  - name: claude-slow\n    type: anthropic\n    base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}\n    timeout: 300ms\n";
const MODELS: &str = "  - name: claude-sonnet\n    target: claude/claude-3-5-sonnet-20241022\n    price: { input_per_mtok: 3.0, output_per_mtok: 15.0 }\n";

async fn start(shape: Shape) -> Gateway {
    Gateway::start_with(shape, PROVIDERS, MODELS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_chat_and_stream() {
    let gw = start(Shape::All).await;

    // ---- plain, with a system message, usage and cost
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello claude"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: hello claude");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let u = &body["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_f64().unwrap(),
        u["completion_tokens"].as_f64().unwrap(),
    );
    assert!(p > 0.0 && c > 0.0, "{u}");
    assert!(
        close(u["cost_usd"].as_f64().unwrap(), p * 3.0 / 1e6 + c * 15.0 / 1e6),
        "{u}"
    );
    assert_eq!(body["metadata"]["used_provider"], "claude");
    assert_eq!(body["metadata"]["used_model"], "claude-3-5-sonnet-20241022");

    // The emulator saw the provider key in x-api-key, never the client key.
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1/messages");
    assert_eq!(up["headers"]["x-api-key"], EMU_KEY);
    assert_eq!(up["headers"]["anthropic-version"], "2023-06-01");
    assert!(up["headers"].get("authorization").is_none(), "{up}");
    assert!(!up.to_string().contains(&gw.key), "client key leaked upstream");
    assert_eq!(up["body"]["system"], "be brief");
    assert_eq!(up["body"]["model"], "claude-3-5-sonnet-20241022");
    assert_eq!(
        up["body"]["max_tokens"], 4096,
        "the provider's default_max_tokens"
    );
    assert_eq!(
        up["body"]["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}])
    );

    // ---- `anthropic/<model>`: the router resolves the provider by type
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "anthropic/claude-3-5-haiku-20241022", "messages": user("by type"), "max_tokens": 20}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: by type");
    assert_eq!(body["metadata"]["used_provider"], "claude");
    let up = gw.last_upstream().await;
    assert_eq!(up["body"]["model"], "claude-3-5-haiku-20241022");
    assert_eq!(up["body"]["max_tokens"], 20);

    // ---- image parts
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let content = &gw.last_upstream().await["body"]["messages"][0]["content"];
    assert_eq!(
        content[1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(
        content[2],
        json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}})
    );

    // ---- streaming with include_usage: text reassembles, usage with cost, [DONE]
    let events = gw
        .stream(
            &json!({"model": "claude-sonnet", "messages": user("stream me please"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    let cs = chunks(&events);
    assert_eq!(cs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(joined(&cs, "content"), "You said: stream me please");
    assert!(cs.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let u = &last["usage"];
    assert!(
        u["prompt_tokens"].as_u64().unwrap() > 0 && u["completion_tokens"].as_u64().unwrap() > 0,
        "{u}"
    );
    assert!(close(
        u["cost_usd"].as_f64().unwrap(),
        u["prompt_tokens"].as_f64().unwrap() * 3.0 / 1e6
            + u["completion_tokens"].as_f64().unwrap() * 15.0 / 1e6
    ));
    assert_eq!(gw.last_upstream().await["body"]["stream"], true);

    // ---- streaming without include_usage: no usage reaches the client
    let events = gw
        .stream(&json!({"model": "claude-sonnet", "messages": user("[emu:chunk_delay_ms=5] quiet"), "stream": true}))
        .await;
    let cs = chunks(&events);
    assert_eq!(joined(&cs, "content"), "You said: quiet");
    assert!(cs.iter().all(|c| c.get("usage").is_none()), "usage leaked");

    // ---- reasoning_effort: extended thinking, returned as `reasoning`
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("think hard"), "reasoning_effort": "medium"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let m = &body["choices"][0]["message"];
    assert!(
        m["reasoning"].as_str().is_some_and(|r| r.contains("think hard")),
        "{body}"
    );
    assert_eq!(m["content"], "You said: think hard");
    let up = gw.last_upstream().await;
    assert_eq!(
        up["body"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert!(up["body"]["max_tokens"].as_u64().unwrap() > 4096);
    let events = gw
        .stream(&json!({"model": "claude-sonnet", "messages": user("think aloud"), "reasoning_effort": "low", "stream": true}))
        .await;
    let cs = chunks(&events);
    assert!(joined(&cs, "reasoning").contains("think aloud"), "{events:?}");
    assert_eq!(joined(&cs, "content"), "You said: think aloud");

    // ---- json_schema: emulated with a forced tool, answered as JSON text
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
        "required": ["city", "temp"], "additionalProperties": false});
    let format = json!({"type": "json_schema", "json_schema": {"name": "w", "schema": schema}});
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("weather?"), "response_format": format}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(
        body["choices"][0]["message"]
            .get("tool_calls")
            .is_none_or(Value::is_null),
        "{body}"
    );
    let parsed: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        parsed["city"].is_string() && parsed["temp"].is_number(),
        "{parsed}"
    );
    assert_eq!(
        gw.last_upstream().await["body"]["tools"][0]["input_schema"],
        schema
    );
    let events = gw
        .stream(&json!({"model": "claude-sonnet", "messages": user("weather?"), "response_format": format, "stream": true}))
        .await;
    let streamed: Value = serde_json::from_str(&joined(&chunks(&events), "content")).unwrap();
    assert_eq!(streamed, parsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tools_and_errors() {
    let gw = start(Shape::All).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);

    // ---- tools: a call, then the tool result round trip
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("weather in Paris?"), "tools": tools,
                "tool_choice": "required", "parallel_tool_calls": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"));
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());
    let up = gw.last_upstream().await;
    assert_eq!(
        up["body"]["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        up["body"]["tools"][0]["input_schema"],
        tools[0]["function"]["parameters"]
    );

    let followup = json!({"model": "claude-sonnet", "tools": tools, "messages": [
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
    let up = gw.last_upstream().await;
    assert_eq!(up["body"]["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(up["body"]["messages"][2]["content"][0]["tool_use_id"], call["id"]);

    // ---- streamed tool-call deltas reassemble into valid JSON
    let events = gw
        .stream(
            &json!({"model": "claude-sonnet", "messages": user("weather?"), "tools": tools, "stream": true}),
        )
        .await;
    let (mut name, mut args, mut ids) = (String::new(), String::new(), 0);
    for c in chunks(&events) {
        if let Some(tc) = c["choices"]
            .get(0)
            .and_then(|ch| ch["delta"]["tool_calls"].get(0))
        {
            assert_eq!(tc["index"], 0);
            ids += usize::from(tc.get("id").is_some_and(Value::is_string));
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = c["choices"].get(0).and_then(|ch| ch["finish_reason"].as_str()) {
            assert_eq!(f, "tool_calls");
        }
    }
    assert_eq!((name.as_str(), ids), ("get_weather", 1));
    let args: Value = serde_json::from_str(&args).expect("streamed arguments are JSON");
    assert!(args["city"].is_string());

    // ---- parameters Anthropic has no equivalent for: 400 naming param and provider
    for (param, value) in [("n", json!(2)), ("seed", json!(7)), ("logprobs", json!(true))] {
        let mut req = json!({"model": "claude-sonnet", "messages": user("hi")});
        req[param] = value;
        let (status, _, body) = gw.post("/v1/chat/completions", &req).await;
        assert_eq!(status, 400, "{param}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("claude") && message.contains("anthropic"),
            "{message}"
        );
    }
    // Invalid tool-call arguments name the parameter.
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "x"}
            ]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"],
        "messages[1].tool_calls[0].function.arguments"
    );

    // ---- upstream errors, classified
    let ask = |text: &str| json!({"model": "claude-sonnet", "messages": user(text)});
    let (status, headers, body) = gw
        .post("/v1/chat/completions", &ask("[emu:status=429] slow"))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"), "retry-after passed on");
    let (status, _, body) = gw
        .post("/v1/chat/completions", &ask("[emu:status=529] busy"))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Overloaded"),
        "{body}"
    );
    let (status, _, body) = gw
        .post("/v1/chat/completions", &ask("[emu:status=500] boom"))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("claude"),
        "{body}"
    );
    let (status, _, body) = gw
        .post("/v1/chat/completions", &ask("[emu:prompt_too_long] long"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context_length_exceeded"),
        "{body}"
    );
    assert!(
        !body.to_string().contains(EMU_KEY),
        "the provider key never leaves"
    );

    // ---- a stream that fails midway ends with an error event and no [DONE]
    for directive in ["[emu:error_mid_stream]", "[emu:abort_mid_stream]"] {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&json!({"model": "claude-sonnet", "stream": true,
                "messages": user(&format!("{directive} [emu:words=30] hi"))}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let events = crate::harness::sse_data(&r.text().await.unwrap());
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{directive}");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert!(
            last["error"]["message"].as_str().unwrap().contains("claude"),
            "{directive}: {last}"
        );
        assert!(!events.iter().any(|e| e == "[DONE]"), "{directive}");
    }

    // ---- the per-try timeout covers the wait for headers
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "@claude-slow/claude-x", "messages": user("[emu:delay_ms=3000] hi")}),
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("claude-slow"),
        "{body}"
    );

    // ---- a client that disconnects mid-stream cancels the upstream call
    let mut resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "claude-sonnet", "stream": true,
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let last = gw.last_upstream().await;
        if last["outcome"] == "cancelled" {
            assert_eq!(last["path"], "/v1/messages");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream never saw the cancel: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // ---- the emulator is as strict as the real API
    let url = format!("http://{}/v1/messages", gw.emu.addr);
    let minimal = json!({"model": "claude-x", "max_tokens": 10, "messages": user("hi")});
    let r = gw
        .client
        .post(&url)
        .json(&minimal)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["error"]["type"].as_str()),
        (Some("error"), Some("authentication_error"))
    );
    let r = gw
        .client
        .post(&url)
        .json(&minimal)
        .header("x-api-key", EMU_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "anthropic-version is required");
    let r = gw
        .client
        .post(&url)
        .json(&minimal)
        .header("x-api-key", EMU_KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the minimal valid request");
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["stop_reason"].as_str()),
        (Some("message"), Some("end_turn"))
    );
    assert_eq!(m["content"][0], json!({"type": "text", "text": "You said: hi"}));
    let r = gw
        .client
        .post(&url)
        .json(&json!({"model": "claude-x", "messages": user("hi")}))
        .header("x-api-key", EMU_KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "max_tokens is required");
}

/// The same translation over gRPC: errors keep their param and provider
/// across the hop, streams their chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_across_five_processes() {
    let gw = start(Shape::Split).await;
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("split hello")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: split hello");
    let events = gw
        .stream(
            &json!({"model": "anthropic/claude-x", "messages": user("split stream"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    let cs = chunks(&events);
    assert_eq!(joined(&cs, "content"), "You said: split stream");
    assert!(cs.last().unwrap()["usage"]["completion_tokens"].as_u64() > Some(0));
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("hi"), "seed": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "seed");
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("[emu:status=529]")}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
}

/// Extended thinking with tools over several turns: the signed thinking
/// blocks come back as `thinking_blocks` (whole, and streamed once signed)
/// and, sent back on the next turn, let the tool loop continue — without
/// them Anthropic refuses the turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_with_tools_over_turns() {
    let gw = start(Shape::All).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let (s, _, first) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-sonnet", "messages": user("weather in Paris?"), "tools": tools, "reasoning_effort": "low"}),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    let message = &first["choices"][0]["message"];
    let blocks = message["thinking_blocks"].as_array().expect("thinking_blocks");
    assert_eq!(blocks[0]["type"], "thinking");
    assert!(
        blocks[0]["signature"].as_str().is_some_and(|s| !s.is_empty()),
        "{message}"
    );
    assert_eq!(blocks[0]["thinking"], message["reasoning"]);
    let call = &message["tool_calls"][0];

    let turn = |assistant: Value| {
        json!({"model": "claude-sonnet", "tools": tools, "reasoning_effort": "low", "messages": [
            {"role": "user", "content": "weather in Paris?"},
            assistant,
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
        ]})
    };
    // Sent back as it came, the loop continues.
    let (s, _, second) = gw.post("/v1/chat/completions", &turn(message.clone())).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["choices"][0]["message"]["content"], "Tool result: sunny");
    let sent = gw.last_upstream().await;
    assert_eq!(
        sent["body"]["messages"][1]["content"][0]["type"], "thinking",
        "{sent}"
    );
    // Without them, Anthropic's refusal comes back as the client's 400.
    let (s, _, refused) = gw
        .post(
            "/v1/chat/completions",
            &turn(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
        )
        .await;
    assert_eq!(s, 400, "{refused}");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains("thinking"),
        "{refused}"
    );
    // A block without its signature is refused before anything is sent.
    let mut unsigned = message.clone();
    unsigned["thinking_blocks"][0]
        .as_object_mut()
        .unwrap()
        .remove("signature");
    let (s, _, e) = gw.post("/v1/chat/completions", &turn(unsigned)).await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("messages[1].thinking_blocks[0].signature")),
        "{e}"
    );

    // Streamed: the signed block arrives once, whole, after the reasoning deltas.
    let events = gw
        .stream(
            &json!({"model": "claude-sonnet", "messages": user("weather?"), "tools": tools,
            "reasoning_effort": "low", "stream": true}),
        )
        .await;
    let chunks = chunks(&events);
    let reasoning = joined(&chunks, "reasoning");
    let signed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"].get("thinking_blocks"))
        })
        .collect();
    assert_eq!(signed.len(), 1, "one signed block");
    assert_eq!(signed[0][0]["thinking"], json!(reasoning));
    assert!(signed[0][0]["signature"].as_str().is_some_and(|s| !s.is_empty()));
}
