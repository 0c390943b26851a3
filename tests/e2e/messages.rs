//! Anthropic's Messages API at the edge (`/v1/messages`, `count_tokens`):
//! Anthropic-shaped requests to an OpenAI-type model and to an
//! anthropic-type provider (the emulator serves both wire formats), plain,
//! streamed, with tools, images, system blocks and thinking; Anthropic-shaped
//! errors; in one process and across five.

use serde_json::{Value, json};

use crate::harness::{Gateway, Shape};

const PROVIDERS: &str = "  - name: claude\n    type: anthropic\n    base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}\n  - name: gem\n    type: google\n    base_url: http://{emu}/v1beta\n    api_key: ${EMU_KEY}\n";
const MODELS: &str = "  - name: claude-sonnet\n    target: claude/claude-3-5-sonnet-20241022\n    price: { input_per_mtok: 3.0, output_per_mtok: 15.0 }\n  - name: gemini-flash\n    target: gem/gemini-1.5-flash\n";

/// POSTs to `path` as the Anthropic SDK does (`x-api-key`,
/// `anthropic-version`); status, headers and body text.
async fn send(
    gw: &Gateway,
    key: &str,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = gw
        .client
        .post(gw.url(path))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

async fn create(gw: &Gateway, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let (status, headers, text) = send(gw, &gw.key, "/v1/messages", body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, headers, json)
}

/// A streamed request's events as `(event line, data)`, checking that each
/// `event:` line names its data's `type`.
async fn stream(gw: &Gateway, body: &Value) -> Vec<(String, Value)> {
    let (status, headers, text) = send(gw, &gw.key, "/v1/messages", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "text/event-stream");
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("event and data lines");
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
            assert_eq!(data["type"], name.as_str(), "{e}");
            (name, data)
        })
        .collect()
}

/// The event names, with consecutive deltas folded into one `…delta*`.
fn shape(events: &[(String, Value)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in events {
        let name = if name == "content_block_delta" {
            "content_block_delta*".to_owned()
        } else {
            name.clone()
        };
        if out.last() != Some(&name) || name != "content_block_delta*" {
            out.push(name);
        }
    }
    out
}

/// The deltas' `field` joined, over blocks of `kind`.
fn joined(events: &[(String, Value)], delta_type: &str, field: &str) -> String {
    events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == delta_type)
        .filter_map(|(_, d)| d["delta"][field].as_str())
        .collect()
}

fn weather_tool() -> Value {
    json!([{"name": "get_weather", "description": "the weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

async fn scenario(shape_: Shape) {
    let gw = Gateway::start_with(shape_, PROVIDERS, MODELS).await;

    // ---- plain, to an OpenAI-type model
    let (status, headers, body) = create(
        &gw,
        &json!({"model": "gpt-4o-mini", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "You said: hello there"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0, "{body}");
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(headers["x-llmgw-provider"], "emu");
    assert!(headers["request-id"].to_str().unwrap().starts_with("req_"));
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1/chat/completions");
    assert_eq!(up["body"]["max_tokens"], 64);
    assert!(!up.to_string().contains(&gw.key), "client key leaked upstream");

    // `Authorization: Bearer` works as well as `x-api-key`.
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "bearer"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // ---- system as blocks, stop_sequences, metadata.user_id, sampling
    let (status, _, body) = create(
        &gw,
        &json!({"model": "gpt-4o-mini", "max_tokens": 64,
            "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind", "cache_control": {"type": "ephemeral"}}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u-42"}, "temperature": 0.3, "top_p": 0.9,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "with system"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let up = gw.last_upstream().await["body"].clone();
    assert_eq!(
        up["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(up["messages"][1], json!({"role": "system", "content": "be kind"}));
    assert_eq!(up["messages"][2]["role"], "user");
    assert_eq!(up["stop"], json!(["END"]));
    assert_eq!(up["user"], "u-42");
    assert_eq!(up["temperature"], 0.3);

    // ...and to the anthropic-type provider, whose system is blocks again.
    let (status, headers, body) = create(
        &gw,
        &json!({"model": "claude-sonnet", "max_tokens": 64,
            "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
            "top_k": 5, "stop_sequences": ["END"],
            "messages": [{"role": "user", "content": "hello claude"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "You said: hello claude"}])
    );
    assert_eq!(body["model"], "claude-3-5-sonnet-20241022");
    assert_eq!(headers["x-llmgw-provider"], "claude");
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1/messages");
    assert_eq!(
        up["body"]["system"],
        json!([{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}])
    );
    assert_eq!(up["body"]["top_k"], 5);
    assert_eq!(up["body"]["max_tokens"], 64);
    assert_eq!(up["body"]["stop_sequences"], json!(["END"]));

    // ---- a stop sequence the anthropic-type provider names, plain and streamed
    let ask = json!({"model": "claude-sonnet", "max_tokens": 64, "stop_sequences": ["STOP"],
        "messages": [{"role": "user", "content": "one two STOP three"}]});
    let (status, _, body) = create(&gw, &ask).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stop_reason"], "stop_sequence", "{body}");
    assert_eq!(body["stop_sequence"], "STOP");
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let events = stream(&gw, &streamed).await;
    let delta = &events[events.len() - 2].1["delta"];
    assert_eq!(
        *delta,
        json!({"stop_reason": "stop_sequence", "stop_sequence": "STOP"})
    );

    // ---- image blocks, base64 and url
    let (status, _, body) = create(
        &gw,
        &json!({"model": "gpt-4o-mini", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let content = &gw.last_upstream().await["body"]["messages"][0]["content"];
    assert_eq!(
        content[1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(content[2]["image_url"]["url"], "https://example.com/cat.png");

    // ---- a Gemini model, plain and streamed
    let (status, headers, body) = create(
        &gw,
        &json!({"model": "gemini-flash", "max_tokens": 64, "system": "be brief",
            "messages": [{"role": "user", "content": "hello gemini"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "You said: hello gemini"}])
    );
    assert_eq!(headers["x-llmgw-provider"], "gem");
    let events = stream(
        &gw,
        &json!({"model": "gemini-flash", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "stream gemini"}]}),
    )
    .await;
    assert_eq!(joined(&events, "text_delta", "text"), "You said: stream gemini");
    assert_eq!(events.last().unwrap().0, "message_stop");

    // ---- tools round trip: tool_use out, tool_result in (each provider type)
    for model in ["gpt-4o-mini", "claude-sonnet", "gemini-flash"] {
        let question = json!({"role": "user", "content": "weather in Paris?"});
        let (status, _, body) = create(
            &gw,
            &json!({"model": model, "max_tokens": 256, "tools": weather_tool(),
                "tool_choice": {"type": "auto"}, "messages": [question]}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["stop_reason"], "tool_use", "{model}: {body}");
        let call = body["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .unwrap_or_else(|| panic!("{model}: no tool_use in {body}"))
            .clone();
        assert_eq!(call["name"], "get_weather");
        assert!(call["input"]["city"].is_string(), "{call}");
        let (status, _, body) = create(
            &gw,
            &json!({"model": model, "max_tokens": 256, "tools": weather_tool(), "messages": [
                question,
                {"role": "assistant", "content": body["content"]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny, 21C"}]}]}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["stop_reason"], "end_turn", "{model}: {body}");
        assert_eq!(body["content"][0]["type"], "text");
        let up = gw.last_upstream().await["body"].clone();
        match model {
            "gpt-4o-mini" => {
                let msgs = up["messages"].as_array().unwrap();
                assert_eq!(msgs[1]["tool_calls"][0]["id"], call["id"]);
                assert_eq!(
                    msgs[2],
                    json!({"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"})
                );
            }
            "claude-sonnet" => assert_eq!(
                up["messages"][2]["content"][0],
                json!({"type": "tool_result", "tool_use_id": call["id"],
                    "content": [{"type": "text", "text": "sunny, 21C"}]})
            ),
            _ => assert!(up["contents"].to_string().contains("functionResponse"), "{up}"),
        }
    }

    // ---- streaming: Anthropic's events in order, text reassembles
    let events = stream(
        &gw,
        &json!({"model": "gpt-4o-mini", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "stream me please"}]}),
    )
    .await;
    assert_eq!(
        shape(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta*",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["content"], json!([]));
    assert_eq!(events[2].1["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(
        joined(&events, "text_delta", "text"),
        "You said: stream me please"
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0, "{delta}");
    assert!(delta["usage"]["input_tokens"].as_u64().unwrap() > 0, "{delta}");

    // Streamed tool use from the anthropic-type provider: input_json_delta
    // reassembles to the tool's input.
    let events = stream(
        &gw,
        &json!({"model": "claude-sonnet", "max_tokens": 256, "stream": true, "tools": weather_tool(),
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await;
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    assert!(
        start.1["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    let input: Value = serde_json::from_str(&joined(&events, "input_json_delta", "partial_json")).unwrap();
    assert!(input["city"].is_string(), "{input}");
    assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events.last().unwrap().0, "message_stop");

    // A provider failing mid-stream: one `error` event, no `message_stop`.
    let events = stream(
        &gw,
        &json!({"model": "claude-sonnet", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "[emu:error_mid_stream] fail"}]}),
    )
    .await;
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error", "{events:?}");
    assert_eq!(data["error"]["type"], "api_error", "{data}");
    assert!(events.iter().all(|(n, _)| n != "message_stop"));

    // ---- thinking: a budget becomes extended thinking upstream, and the
    // signed thinking block comes back first, streamed too
    let (status, _, body) = create(
        &gw,
        &json!({"model": "claude-sonnet", "max_tokens": 8192, "thinking": {"type": "enabled", "budget_tokens": 4096},
            "messages": [{"role": "user", "content": "think hard"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"][0]["type"], "thinking", "{body}");
    assert!(!body["content"][0]["signature"].as_str().unwrap().is_empty());
    assert_eq!(
        body["content"][1],
        json!({"type": "text", "text": "You said: think hard"})
    );
    assert_eq!(
        gw.last_upstream().await["body"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    let events = stream(
        &gw,
        &json!({"model": "claude-sonnet", "max_tokens": 8192, "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "think aloud"}]}),
    )
    .await;
    assert_eq!(events[2].1["content_block"]["type"], "thinking");
    assert!(joined(&events, "thinking_delta", "thinking").contains("think aloud"));
    assert!(!joined(&events, "signature_delta", "signature").is_empty());
    assert_eq!(joined(&events, "text_delta", "text"), "You said: think aloud");

    // ---- output_config.format: structured output as JSON text (OpenAI's
    // json_schema; the anthropic provider's forced tool), effort as reasoning
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    for model in ["gpt-4o-mini", "claude-sonnet"] {
        let (status, _, body) = create(
            &gw,
            &json!({"model": model, "max_tokens": 256,
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
                "messages": [{"role": "system", "content": "answer in JSON"}, {"role": "user", "content": "weather?"}]}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["stop_reason"], "end_turn", "{model}: {body}");
        let parsed: Value = serde_json::from_str(body["content"][0]["text"].as_str().unwrap()).unwrap();
        assert!(parsed["city"].is_string(), "{model}: {parsed}");
    }
    assert_eq!(
        gw.last_upstream().await["body"]["system"],
        "answer in JSON",
        "a system turn in `messages` is a system prompt"
    );

    // ---- count_tokens: the edge's estimate, growing with the prompt
    let count =
        |text: &str| json!({"model": "claude-sonnet", "messages": [{"role": "user", "content": text}]});
    let (status, _, short) = send(&gw, &gw.key, "/v1/messages/count_tokens", &count("hi")).await;
    assert_eq!(status, 200, "{short}");
    let short: Value = serde_json::from_str(&short).unwrap();
    let (_, _, long) = send(
        &gw,
        &gw.key,
        "/v1/messages/count_tokens",
        &count(&"word ".repeat(100)),
    )
    .await;
    let long: Value = serde_json::from_str(&long).unwrap();
    let (s, l) = (
        short["input_tokens"].as_u64().unwrap(),
        long["input_tokens"].as_u64().unwrap(),
    );
    assert!(s > 0 && l >= s + 100, "{short} {long}");

    // ---- /v1/models in Anthropic's shape for clients sending anthropic-version
    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .header("x-api-key", &gw.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let list: Value = r.json().await.unwrap();
    let claude = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "claude-sonnet")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(claude["type"], "model");
    assert!(claude["created_at"].as_str().unwrap().ends_with('Z'), "{claude}");
    assert_eq!(list["has_more"], false);
    let (status, text) = gw.call(&gw.key, "GET", "/v1/models", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["object"],
        "list",
        "OpenAI's shape otherwise"
    );

    // ---- errors, in Anthropic's shape with the right status
    let error = |status: u16, text: &str, kind: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(v["type"], "error", "{text}");
        assert_eq!(v["error"]["type"], kind, "{status}: {text}");
        v["error"]["message"].as_str().unwrap().to_owned()
    };
    let (status, _, text) = send(
        &gw,
        &gw.key,
        "/v1/messages",
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error(status, &text, "invalid_request_error").contains("max_tokens"));
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .json(
            &json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 401);
    assert!(error(status, &text, "authentication_error").contains("x-api-key"));
    let (status, _, text) = send(
        &gw,
        "sk-not-a-key",
        "/v1/messages",
        &json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 401);
    error(status, &text, "authentication_error");
    let (status, _, text) = send(
        &gw,
        &gw.key,
        "/v1/messages",
        &json!({"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 404);
    error(status, &text, "not_found_error");
    let (status, text) = gw.call(&gw.key, "GET", "/v1/messages", None).await;
    assert_eq!(status, 405);
    error(status, &text, "invalid_request_error");
    // An upstream failure is Anthropic-shaped too.
    let (status, _, text) = send(
        &gw,
        &gw.key,
        "/v1/messages",
        &json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "[emu:status=429] x"}]}),
    )
    .await;
    assert_eq!(status, 429, "{text}");
    error(status, &text, "rate_limit_error");

    // Metered like any chat request.
    let usage = gw
        .usage_until("acme", |v| v["requests"].as_u64().unwrap_or(0) >= 12)
        .await;
    assert!(usage["requests"].as_u64().unwrap() >= 12, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_one_process() {
    scenario(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_across_five_processes() {
    scenario(Shape::Split).await;
}
