//! Anthropic translation, both ways, its stream, its errors, and the provider
//! against the Messages emulator.

use std::collections::{HashMap, VecDeque};

use futures_util::StreamExt as _;
use llmgw_kit::config::Config;
use llmgw_kit::openai::parse_request;
use llmgw_kit::secret::Secret;
use llmgw_proto::{AdapterRequest, ChatChunk, FinishReason, Target};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::*;

fn canonical(body: &Value) -> ChatRequest {
    parse_request(body.to_string().as_bytes()).unwrap()
}

fn wire(body: &Value) -> (Value, bool) {
    let (bytes, json_mode) = request_body(&canonical(body), "claude-x", false, 4096, "claude").unwrap();
    (serde_json::from_slice(&bytes).unwrap(), json_mode)
}

fn wire_err(body: &Value) -> GwError {
    request_body(&canonical(body), "claude-x", false, 4096, "claude").unwrap_err()
}

#[test]
fn translates_a_conversation() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let (w, json_mode) = wire(&json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
            {"role": "user", "content": "first"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": tools, "tool_choice": "required", "parallel_tool_calls": false,
        "max_completion_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-1",
    }));
    assert!(!json_mode);
    assert_eq!(
        w,
        json!({
            "model": "claude-x",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "first"},
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "thanks"}
                ]}
            ],
            "metadata": {"user_id": "u-1"},
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_p": 0.9,
            "tools": [{"name": "get_weather", "description": "weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[test]
fn one_system_message_is_a_string_and_tool_choices_map() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let (w, _) = wire(
        &json!({"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    );
    assert_eq!(w["system"], "s");
    assert_eq!(w["max_tokens"], 4096, "the provider's default");
    assert_eq!(w["tool_choice"], json!({"type": "tool", "name": "f"}));
    assert_eq!(w["tools"][0]["input_schema"], json!({"type": "object"}));
    let (w, _) = wire(
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "none"}),
    );
    assert_eq!(w["tool_choice"], json!({"type": "none"}));
    let (w, _) = wire(
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "auto"}),
    );
    assert_eq!(w["tool_choice"], json!({"type": "auto"}));
    let (w, _) = wire(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 5}));
    assert_eq!(w["top_k"], 5, "unknown fields pass through");
}

#[test]
fn files_audio_and_passthrough_conflicts() {
    let (w, _) = wire(&json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}]}]}));
    assert_eq!(
        w["messages"][0]["content"][0],
        json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}})
    );
    let e = wire_err(&json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}));
    assert_eq!(e.param(), Some("messages[0].content[0]"));
    assert!(
        e.message().contains("(anthropic) does not support audio input"),
        "{}",
        e.message()
    );
    // A passthrough field never overrides a translated one.
    let e = wire_err(
        &json!({"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "system": "other"}),
    );
    assert_eq!((e.code(), e.param()), (ErrorCode::InvalidRequest, Some("system")));
}

#[test]
fn reasoning_effort_enables_thinking_above_the_budget() {
    let base = |effort: &str| json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort});
    let (w, _) = wire(&base("low"));
    assert_eq!(w["thinking"], json!({"type": "enabled", "budget_tokens": 1024}));
    assert_eq!(w["max_tokens"], 4096);
    let (w, _) = wire(&base("high"));
    assert_eq!(w["thinking"]["budget_tokens"], 16384);
    assert_eq!(w["max_tokens"], 16384 + 4096);
    let (w, _) = wire(&base("medium"));
    assert_eq!(w["thinking"]["budget_tokens"], 4096);
    assert_eq!(w["max_tokens"], 4096 + 4096);

    let mut hot = base("low");
    hot["temperature"] = json!(0.5);
    let e = wire_err(&hot);
    assert_eq!(e.param(), Some("temperature"));
}

#[test]
fn unsupported_parameters_are_refused_by_name() {
    for (param, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
        ("seed", json!(7)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.5)),
        ("logit_bias", json!({"12": 3})),
        ("temperature", json!(1.5)),
    ] {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body[param] = value;
        if param == "top_logprobs" {
            body["logprobs"] = json!(false);
        }
        let e = wire_err(&body);
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{param}");
        assert_eq!(e.param(), Some(param));
        assert_eq!(e.provider(), Some("claude"));
        assert!(
            e.message()
                .contains("provider `claude` (anthropic) does not support"),
            "{}",
            e.message()
        );
        assert_eq!(e.http_status(), 400);
    }
    // Values that ask for nothing are fine.
    wire(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "logprobs": false}));
}

#[test]
fn invalid_tool_arguments_name_the_param() {
    let e = wire_err(&json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "x"}
    ]}));
    assert_eq!(e.param(), Some("messages[1].tool_calls[0].function.arguments"));
    assert_eq!(e.http_status(), 400);
}

#[test]
fn json_schema_is_a_forced_tool_and_comes_back_as_text() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let (w, json_mode) = wire(
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}}),
    );
    assert!(json_mode);
    assert_eq!(w["tools"][0]["name"], JSON_TOOL);
    assert_eq!(w["tools"][0]["input_schema"], schema);
    assert_eq!(w["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));

    let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 3}});
    let r = parse_response(answer.to_string().as_bytes(), true).unwrap();
    let m = r.choices[0].message.as_ref().unwrap();
    assert_eq!(
        m.content,
        Some(Content {
            value: Some(ContentValue::Text(r#"{"city":"Paris"}"#.into()))
        })
    );
    assert!(m.tool_calls.is_empty());
    assert_eq!(r.choices[0].finish_reason, FinishReason::Stop as i32);

    let e = wire_err(
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}, "reasoning_effort": "low"}),
    );
    assert_eq!(e.param(), Some("response_format"));
}

#[test]
fn parses_a_message_with_thinking_tools_and_cache_usage() {
    let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "let me check"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "server_tool_use", "id": "x", "name": "web_search", "input": {}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7}});
    let r = parse_response(answer.to_string().as_bytes(), false).unwrap();
    assert_eq!((r.id.as_str(), r.model.as_str()), ("msg_1", "claude-x"));
    let c = &r.choices[0];
    let m = c.message.as_ref().unwrap();
    assert_eq!(m.reasoning.as_deref(), Some("hmm"));
    assert_eq!(
        m.content,
        Some(Content {
            value: Some(ContentValue::Text("let me check".into()))
        })
    );
    assert_eq!(m.tool_calls[0].id, "toolu_1");
    let f = m.tool_calls[0].function.as_ref().unwrap();
    assert_eq!(
        (f.name.as_str(), f.arguments.as_str()),
        ("get_weather", r#"{"city":"Paris"}"#)
    );
    assert_eq!(c.finish_reason, FinishReason::ToolCalls as i32);
    let u = r.usage.unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (115, 7, 122)
    );
    assert_eq!(u.cached_tokens, Some(100));

    for (reason, want) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("refusal", FinishReason::ContentFilter),
    ] {
        assert_eq!(finish_reason(Some(reason), false), want, "{reason}");
    }
}

fn peer() -> Peer {
    Peer::new("claude", Some(Secret::new("sk-ant-secret")))
}

fn translate(events: &[Value], json_mode: bool) -> (Vec<ChatChunk>, Result<bool, GwError>) {
    let mut t = Translator::new(peer(), json_mode);
    let mut out = VecDeque::new();
    let mut last = Ok(false);
    for e in events {
        last = t.on_event(&e.to_string(), &mut out);
        if !matches!(last, Ok(false)) {
            break;
        }
    }
    (out.into(), last)
}

#[test]
fn translates_the_event_stream() {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-x", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hel"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "lo"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}}),
        json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        json!({"type": "content_block_stop", "index": 3}),
        json!({"type": "some_future_event"}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
    ];
    let (chunks, last) = translate(&events, false);
    assert!(matches!(last, Ok(true)));
    assert!(chunks.iter().all(|c| c.id == "msg_1" && c.model == "claude-x"));
    let delta = |i: usize| chunks[i].choices[0].delta.clone().unwrap();
    assert_eq!(delta(0).role, Some(Role::Assistant as i32));
    assert_eq!(delta(1).reasoning.as_deref(), Some("hmm"));
    // The signature completes the block: it is sent once, whole.
    let signed = &delta(2).thinking_blocks[0];
    assert_eq!(
        (
            signed.r#type.as_str(),
            signed.thinking.as_deref(),
            signed.signature.as_deref()
        ),
        ("thinking", Some("hmm"), Some("s"))
    );
    assert_eq!(delta(3).content.as_deref(), Some("Hel"));
    assert_eq!(delta(4).content.as_deref(), Some("lo"));
    let first = &delta(5).tool_calls[0];
    assert_eq!(
        (first.index, first.id.as_deref(), first.name.as_deref()),
        (0, Some("toolu_1"), Some("f"))
    );
    assert_eq!(delta(6).tool_calls[0].arguments.as_deref(), Some("{\"a\":"));
    assert_eq!(delta(7).tool_calls[0].arguments.as_deref(), Some("1}"));
    assert_eq!(delta(7).tool_calls[0].index, 0);
    assert_eq!(delta(8).tool_calls[0].index, 1);
    assert_eq!(delta(8).tool_calls[0].id.as_deref(), Some("toolu_2"));
    assert_eq!(delta(9).tool_calls[0].arguments.as_deref(), Some("{}"));
    assert_eq!(
        chunks[10].choices[0].finish_reason,
        FinishReason::ToolCalls as i32
    );
    let last = &chunks[11];
    assert!(last.choices.is_empty());
    let u = last.usage.unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        (15, 9, Some(3))
    );
    assert_eq!(chunks.len(), 12);
}

#[test]
fn json_mode_streams_the_tool_input_as_content() {
    let events = [
        json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":1}"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        json!({"type": "message_stop"}),
    ];
    let (chunks, _) = translate(&events, true);
    assert_eq!(
        chunks[1].choices[0].delta.as_ref().unwrap().content.as_deref(),
        Some("{\"a\":1}")
    );
    assert_eq!(chunks[2].choices[0].finish_reason, FinishReason::Stop as i32);
}

#[test]
fn an_error_event_ends_the_stream_with_an_error() {
    let events = [
        json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}}),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ];
    let (chunks, last) = translate(&events, false);
    assert_eq!(chunks.len(), 1);
    let e = last.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamError);
    assert!(e.message().contains("Overloaded"));
    assert_eq!(e.provider(), Some("claude"));
}

#[test]
fn error_statuses_are_classified() {
    let p = peer();
    let body = |kind: &str, message: &str| {
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
            .to_string()
    };
    let e = p.status_error(
        StatusCode::from_u16(529).unwrap(),
        &HeaderMap::new(),
        body("overloaded_error", "Overloaded").as_bytes(),
    );
    assert_eq!(
        (e.code(), e.retryable(), e.http_status()),
        (ErrorCode::UpstreamError, true, 502)
    );
    assert!(e.message().contains("Overloaded"));

    let mut h = HeaderMap::new();
    h.insert("retry-after", "3".parse().unwrap());
    let e = p.status_error(
        StatusCode::TOO_MANY_REQUESTS,
        &h,
        body("rate_limit_error", "slow down").as_bytes(),
    );
    assert_eq!(
        (e.code(), e.retryable(), e.retry_after_secs()),
        (ErrorCode::UpstreamRateLimited, true, Some(3))
    );

    let e = p.status_error(
        StatusCode::UNAUTHORIZED,
        &HeaderMap::new(),
        body("authentication_error", "invalid x-api-key sk-ant-secret").as_bytes(),
    );
    assert_eq!((e.code(), e.http_status()), (ErrorCode::UpstreamRejected, 502));
    assert!(!e.message().contains("sk-ant-secret"));

    let e = p.status_error(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        body(
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
        )
        .as_bytes(),
    );
    let e = refine(&p, e);
    assert_eq!(
        (e.code(), e.http_status(), e.param()),
        (ErrorCode::ContextLengthExceeded, 400, Some("messages"))
    );
    assert!(
        e.message()
            .contains("context_length_exceeded: prompt is too long"),
        "{}",
        e.message()
    );
    assert!(!e.retryable());

    let e = p.status_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &HeaderMap::new(),
        body("request_too_large", "too big").as_bytes(),
    );
    assert_eq!((e.code(), e.http_status()), (ErrorCode::UpstreamRejected, 413));
}

// ---- against the Messages emulator ------------------------------------------

const EMU_KEY: &str = "sk-ant-emu";

async fn emulator() -> (llmgw_emulators::Emulator, crate::Adapter) {
    let emu = llmgw_emulators::spawn(llmgw_emulators::Options {
        api_key: Some(EMU_KEY.into()),
        record: true,
    })
    .await
    .unwrap();
    let yaml = format!(
        "providers:\n  - name: claude\n    type: anthropic\n    base_url: http://{}/v1\n    api_key: {EMU_KEY}\n    default_max_tokens: 64\n",
        emu.addr
    );
    let config = Config::parse(&yaml, "test.yaml", &HashMap::new()).unwrap();
    (emu, crate::service(&config).unwrap())
}

fn ask(body: Value) -> AdapterRequest {
    AdapterRequest {
        org_id: String::new(),
        request_id: "req-1".into(),
        target: Some(Target {
            provider: "claude".into(),
            provider_type: "anthropic".into(),
            model: "claude-3-5-sonnet-20241022".into(),
            price: None,
            timeout_ms: 5_000,
            max_retries: 0,
            ..Default::default()
        }),
        request: Some(canonical(&body)),
    }
}

#[tokio::test]
async fn completes_and_streams_against_the_emulator() {
    let (emu, adapter) = emulator().await;
    let r = adapter
        .complete(ask(json!({"model": "x", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello claude"}]})))
        .await
        .unwrap();
    let m = r.choices[0].message.as_ref().unwrap();
    assert_eq!(
        m.content,
        Some(Content {
            value: Some(ContentValue::Text("You said: hello claude".into()))
        })
    );
    assert_eq!(r.choices[0].finish_reason, FinishReason::Stop as i32);
    assert!(r.usage.unwrap().prompt_tokens > 0);

    let seen = reqwest::get(format!("http://{}/_emu/requests", emu.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seen: Value = serde_json::from_str(&seen).unwrap();
    let last = seen.as_array().unwrap().last().unwrap();
    assert_eq!(last["path"], "/v1/messages");
    assert_eq!(last["headers"]["x-api-key"], EMU_KEY);
    assert_eq!(last["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(last["body"]["max_tokens"], 64);
    assert_eq!(last["body"]["system"], "sys");

    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut stream = adapter
        .stream(ask(
            json!({"model": "x", "stream": true, "tools": tools, "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "weather?"}]}),
        ))
        .await
        .unwrap();
    let (mut args, mut reasoning, mut finish, mut usage) = (String::new(), String::new(), 0, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(u) = chunk.usage {
            usage = Some(u);
        }
        for c in &chunk.choices {
            let d = c.delta.clone().unwrap_or_default();
            reasoning.push_str(d.reasoning.as_deref().unwrap_or(""));
            for t in &d.tool_calls {
                args.push_str(t.arguments.as_deref().unwrap_or(""));
            }
            if c.finish_reason != 0 {
                finish = c.finish_reason;
            }
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(reasoning.contains("weather?"), "{reasoning}");
    assert_eq!(finish, FinishReason::ToolCalls as i32);
    assert!(usage.unwrap().completion_tokens > 0);

    let e = adapter
        .complete(ask(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi [emu:status=529]"}]}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.upstream_status(), e.retryable()),
        (ErrorCode::UpstreamError, Some(529), true)
    );
    // A stream that breaks off mid-way ends with an error, never a silent end.
    let mut stream = adapter
        .stream(ask(json!({"model": "x", "stream": true,
            "messages": [{"role": "user", "content": "[emu:abort_mid_stream] [emu:words=50] hi"}]})))
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    assert!(items.len() > 1 && items[0].is_ok(), "some chunks first");
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(
        (e.code(), e.provider()),
        (ErrorCode::UpstreamError, Some("claude"))
    );

    let e = adapter
        .stream(ask(json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": "hi [emu:prompt_too_long]"}]})))
        .await
        .err()
        .unwrap();
    assert_eq!(e.param(), Some("messages"));
}

/// Tool-call arguments become Anthropic's `input` as JSON: text that is
/// JSON by grammar but not by every reader (a number past f64, a lone
/// surrogate) is refused naming the arguments, never sent.
#[test]
fn tool_arguments_must_read_as_json_everywhere() {
    assert!(super::tool_input(r#"{"a": 1e300, "b": "\ud83d\ude00"}"#, 1, 0).is_ok());
    for bad in [r#"{"a": 1e999}"#, r#"{"a": -1e3080}"#, r#"{"a": "\ud800"}"#] {
        let e = super::tool_input(bad, 1, 0).expect_err(bad);
        assert_eq!(
            e.param(),
            Some("messages[1].tool_calls[0].function.arguments"),
            "{bad}"
        );
    }
}
