//! OpenAI clients using Bedrock models through the gateway: a `type: bedrock`
//! provider against the emulator's Converse API, every request SigV4-signed and
//! verified by the emulator.

use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Gateway, Shape, chunks, close, joined, user};

const PROVIDERS: &str = "  - name: aws\n    type: bedrock\n    base_url: http://{emu}\n    region: us-east-1\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: ${EMU_KEY}\n  - name: aws-wrong\n    type: bedrock\n    base_url: http://{emu}\n    region: us-east-1\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: wrong-aws-secret-value\n    max_retries: 0\n";
const MODELS: &str = "  - name: claude-bedrock\n    target: aws/anthropic.claude-3-5-sonnet-20240620-v1:0\n    price: { input_per_mtok: 3.0, output_per_mtok: 15.0 }\n";
const CONVERSE_PATH: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";

async fn start(shape: Shape) -> Gateway {
    Gateway::start_with(shape, PROVIDERS, MODELS).await
}

/// A plain chat and a stream with usage and cost: what both shapes must do.
async fn chat_and_stream(gw: &Gateway) {
    // ---- plain, with a system message, usage and cost
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello bedrock"}
            ], "max_tokens": 50, "temperature": 0.5}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: hello bedrock"
    );
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
    assert_eq!(body["metadata"]["used_provider"], "aws");
    assert_eq!(
        body["metadata"]["used_model"],
        "anthropic.claude-3-5-sonnet-20240620-v1:0"
    );

    // The emulator verified a SigV4 signature; the client key never went upstream.
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], CONVERSE_PATH);
    let auth = up["headers"]["authorization"].as_str().unwrap_or("");
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{up}"
    );
    assert!(up["headers"]["x-amz-date"].is_string(), "{up}");
    assert!(!up.to_string().contains(&gw.key), "client key leaked upstream");
    assert!(!up.to_string().contains(EMU_KEY), "the secret is never sent");
    assert_eq!(up["body"]["system"], json!([{"text": "be brief"}]));
    assert_eq!(
        up["body"]["messages"],
        json!([{"role": "user", "content": [{"text": "hello bedrock"}]}])
    );
    assert_eq!(
        up["body"]["inferenceConfig"],
        json!({"maxTokens": 50, "temperature": 0.5})
    );

    // ---- streaming with include_usage: text reassembles, usage with cost, [DONE]
    let events = gw
        .stream(
            &json!({"model": "claude-bedrock", "messages": user("[emu:chunk_delay_ms=2] stream me please"), "stream": true,
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
    assert_eq!(
        gw.last_upstream().await["path"],
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_chat_stream_and_images() {
    let gw = start(Shape::All).await;
    chat_and_stream(&gw).await;

    // ---- streaming without include_usage: no usage reaches the client
    let events = gw
        .stream(&json!({"model": "claude-bedrock", "messages": user("quiet"), "stream": true}))
        .await;
    let cs = chunks(&events);
    assert_eq!(joined(&cs, "content"), "You said: quiet");
    assert!(cs.iter().all(|c| c.get("usage").is_none()), "usage leaked");

    // ---- image data URLs become inline bytes; an http(s) URL is a clear 400
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: what is this?"
    );
    let content = &gw.last_upstream().await["body"]["messages"][0]["content"];
    assert_eq!(
        content[1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    // An http(s) image URL is fetched through the guard (Bedrock takes
    // bytes): a loopback host (here, the emulator itself) is refused with a
    // 400 naming the part, and nothing reaches the provider.
    let before = gw.upstream_requests().await.len();
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("http://{}/cat.png", gw.emu.addr)}}
            ]}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages[0].content[0].image_url");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("loopback"),
        "{body}"
    );
    assert_eq!(gw.upstream_requests().await.len(), before);

    // ---- stop sequences and max_tokens map to finish reasons
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": user("[emu:words=40] long"), "max_tokens": 5}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": user("[emu:finish=content_filter] hi")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");

    // ---- json_schema: emulated with a forced tool, answered as JSON text
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
        "required": ["city", "temp"], "additionalProperties": false});
    let format = json!({"type": "json_schema", "json_schema": {"name": "w", "schema": schema}});
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": user("weather?"), "response_format": format}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let parsed: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        parsed["city"].is_string() && parsed["temp"].is_number(),
        "{parsed}"
    );
    assert_eq!(
        gw.last_upstream().await["body"]["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        schema
    );
    let events = gw
        .stream(&json!({"model": "claude-bedrock", "messages": user("weather?"), "response_format": format, "stream": true}))
        .await;
    let streamed: Value = serde_json::from_str(&joined(&chunks(&events), "content")).unwrap();
    assert_eq!(streamed, parsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_tools_and_errors() {
    let gw = start(Shape::All).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);

    // ---- tools: a call, then the tool result round trip
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-bedrock", "messages": user("weather in Paris?"), "tools": tools,
                "tool_choice": "required"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = body["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("tooluse_"));
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());
    let up = gw.last_upstream().await;
    assert_eq!(up["body"]["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        up["body"]["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        tools[0]["function"]["parameters"]
    );

    let followup = json!({"model": "claude-bedrock", "tools": tools, "messages": [
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
    assert_eq!(
        up["body"]["messages"][1]["content"][0]["toolUse"]["toolUseId"],
        call["id"]
    );
    assert_eq!(
        up["body"]["messages"][2]["content"][0]["toolResult"],
        json!({"toolUseId": call["id"], "content": [{"text": "sunny, 21C"}]})
    );

    // ---- streamed tool-call deltas reassemble into valid JSON
    let events = gw
        .stream(
            &json!({"model": "claude-bedrock", "messages": user("weather?"), "tools": tools, "stream": true}),
        )
        .await;
    let (mut name, mut args, mut ids, mut finish) = (String::new(), String::new(), 0, String::new());
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
            finish = f.to_owned();
        }
    }
    assert_eq!(
        (name.as_str(), ids, finish.as_str()),
        ("get_weather", 1, "tool_calls")
    );
    let args: Value = serde_json::from_str(&args).expect("streamed arguments are JSON");
    assert!(args["city"].is_string());

    // ---- parameters Converse has no equivalent for: 400 naming param and provider
    for (param, value) in [
        ("n", json!(2)),
        ("seed", json!(7)),
        ("logprobs", json!(true)),
        ("presence_penalty", json!(0.5)),
    ] {
        let mut req = json!({"model": "claude-bedrock", "messages": user("hi")});
        req[param] = value;
        let (status, _, body) = gw.post("/v1/chat/completions", &req).await;
        assert_eq!(status, 400, "{param}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("aws") && message.contains("bedrock"),
            "{message}"
        );
    }

    // ---- upstream errors, classified
    let ask = |text: &str| json!({"model": "claude-bedrock", "messages": user(text)});
    let (status, headers, body) = gw
        .post("/v1/chat/completions", &ask("[emu:status=429] slow"))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"), "retry-after passed on");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ThrottlingException"),
        "{body}"
    );
    let (status, _, body) = gw
        .post("/v1/chat/completions", &ask("[emu:status=500] boom"))
        .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("aws") && message.contains("InternalServerException"),
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

    // ---- a wrong secret: the emulator refuses the signature, the client sees a 502
    // that names the provider and never the secret
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "@aws-wrong/anthropic.claude-3-5-sonnet-20240620-v1:0", "messages": user("hi")}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("aws-wrong") && text.contains("InvalidSignatureException"),
        "{body}"
    );
    assert!(
        !text.contains("wrong-aws-secret-value") && !text.contains(EMU_KEY),
        "{body}"
    );

    // ---- a stream that fails midway ends with an error event and no [DONE]
    for directive in ["[emu:error_mid_stream]", "[emu:abort_mid_stream]"] {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&json!({"model": "claude-bedrock", "stream": true,
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
            last["error"]["message"].as_str().unwrap().contains("aws"),
            "{directive}: {last}"
        );
        assert!(!events.iter().any(|e| e == "[DONE]"), "{directive}");
    }

    // ---- the emulator is as strict as the real API: no signature, no answer
    let r = gw
        .client
        .post(format!("http://{}{CONVERSE_PATH}", gw.emu.addr))
        .json(&json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .split(':')
            .next(),
        Some("MissingAuthenticationTokenException")
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["message"], "Missing Authentication Token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_split() {
    let gw = start(Shape::Split).await;
    chat_and_stream(&gw).await;
}
