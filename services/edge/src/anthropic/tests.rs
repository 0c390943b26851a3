use bytes::BytesMut;
use llmgw_proto as pb;
use serde_json::{Value, json};

use super::read::{Route, parse_request};
use super::write::{StreamWriter, message_json};

fn parse(body: Value) -> pb::ChatRequest {
    parse_request(body.to_string().as_bytes(), Route::Messages).expect("valid request")
}

fn refused(body: Value) -> String {
    let e = parse_request(body.to_string().as_bytes(), Route::Messages).expect_err("refused");
    assert_eq!(e.http_status(), 400);
    e.message().to_owned()
}

#[test]
fn a_full_request_translates() {
    let req = parse(json!({
        "model": "claude", "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "be kind"}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"z": 1, "a": 18446744073709551615u64}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "thanks"}]}
        ],
        "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9, "top_k": 5,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "stream": true
    }));
    let roles: Vec<i32> = req.messages.iter().map(|m| m.role).collect();
    use pb::Role::*;
    assert_eq!(
        roles,
        [System, System, User, Assistant, Tool, User].map(|r| r as i32)
    );
    let call = &req.messages[3].tool_calls[0];
    assert_eq!(call.id, "toolu_1");
    let f = call.function.as_ref().unwrap();
    // (`json!` sorts keys; raw text keeps them: see the next test.)
    assert_eq!(f.arguments, r#"{"a":18446744073709551615,"z":1}"#);
    assert_eq!(req.messages[4].tool_call_id.as_deref(), Some("toolu_1"));
    let Some(pb::content::Value::Parts(parts)) =
        req.messages[2].content.as_ref().and_then(|c| c.value.clone())
    else {
        panic!("parts")
    };
    assert!(
        matches!(&parts.parts[1].part, Some(pb::content_part::Part::ImageUrl(u)) if u.url == "data:image/png;base64,iVBO")
    );
    assert!(
        matches!(&parts.parts[2].part, Some(pb::content_part::Part::ImageUrl(u)) if u.url == "https://x/cat.png")
    );
    assert_eq!(req.max_tokens, Some(100));
    assert_eq!(req.user.as_deref(), Some("u1"));
    assert_eq!(req.reasoning_effort.as_deref(), Some("medium"));
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.stop.as_ref().unwrap().sequences, ["END"]);
    assert_eq!(req.extra_json.as_deref(), Some(r#"{"top_k":5}"#));
    assert!(req.stream);
    assert_eq!(req.stream_options.unwrap().include_usage, Some(true));
    assert!(matches!(
        req.tool_choice.unwrap().choice,
        Some(pb::tool_choice::Choice::Mode(m)) if m == pb::ToolChoiceMode::Required as i32
    ));
}

#[test]
fn tool_input_and_schemas_stay_raw_text() {
    let body = r#"{"model":"c","max_tokens":5,"messages":[{"role":"assistant","content":[
        {"type":"tool_use","id":"t","name":"f","input":{"z":1,"a":18446744073709551615}}]}],
        "tools":[{"name":"f","input_schema":{"type":"object","properties":{"z":{},"a":{}}}}]}"#;
    let req = parse_request(body.as_bytes(), Route::Messages).unwrap();
    let f = req.messages[0].tool_calls[0].function.as_ref().unwrap();
    assert_eq!(f.arguments, r#"{"z":1,"a":18446744073709551615}"#);
    assert_eq!(
        req.tools[0].function.as_ref().unwrap().parameters_json.as_deref(),
        Some(r#"{"type":"object","properties":{"z":{},"a":{}}}"#)
    );
}

/// Raw JSON passed on must decode: a lone surrogate escape in a tool's
/// schema or input is refused (the fuzzer's find), a surrogate pair is not.
#[test]
fn raw_json_with_a_lone_surrogate_is_refused() {
    let with = |text: &str| {
        let body = format!(
            r#"{{"model":"c","max_tokens":5,"messages":[{{"role":"assistant","content":[
            {{"type":"tool_use","id":"t","name":"f","input":{{"q":"{text}"}}}}]}}],
            "tools":[{{"name":"f","input_schema":{{"type":"object","title":"{text}"}}}}]}}"#
        );
        parse_request(body.as_bytes(), Route::Messages)
    };
    assert!(with(r"\ud83c\udf1e").is_ok());
    for bad in [r"\ud800", r"\udfff"] {
        let e = with(bad).expect_err(bad);
        assert_eq!(e.code(), llmgw_kit::ErrorCode::InvalidRequest, "{bad}");
        assert_eq!(e.param(), Some("messages.0.content.0.input"), "{bad}");
    }
    // A number past f64's range (the fuzzer's second find), named too.
    let body = r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"x"}],
        "tools":[{"name":"f","input_schema":{"type":"object","maximum":-1e3080}}]}"#;
    let e = parse_request(body.as_bytes(), Route::Messages).unwrap_err();
    assert_eq!(e.param(), Some("tools.0.input_schema"));
}

#[test]
fn newer_sdk_fields_translate() {
    let req = parse(json!({
        "model": "c", "max_tokens": 10,
        "messages": [{"role": "system", "content": "rules"}, {"role": "user", "content": "hi"}],
        "thinking": {"type": "adaptive", "display": "summarized"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    }));
    assert_eq!(req.messages[0].role, pb::Role::System as i32);
    assert_eq!(req.reasoning_effort.as_deref(), Some("medium"));
    let Some(pb::response_format::Format::JsonSchema(s)) = req.response_format.and_then(|f| f.format) else {
        panic!("json schema")
    };
    assert_eq!(s.schema_json.as_deref(), Some(r#"{"type":"object"}"#));
    let req = parse(
        json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"effort": "max"}}),
    );
    assert_eq!(req.reasoning_effort.as_deref(), Some("high"));
    assert!(
        refused(
            json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"effort": "huge"}})
        )
        .starts_with("output_config.effort")
    );
    assert!(
        refused(json!({"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}))
            .starts_with("max_tokens")
    );
}

#[test]
fn errors_name_the_field() {
    let m = json!([{"role": "user", "content": "hi"}]);
    assert_eq!(
        refused(json!({"model": "c", "messages": m})),
        "max_tokens: Field required"
    );
    assert!(
        refused(json!({"model": "c", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}))
            .starts_with("messages.0.role")
    );
    assert!(
        refused(json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}))
            .starts_with("messages.0.content")
    );
    assert!(
        refused(json!({"model": "c", "max_tokens": 5, "messages": m, "temperature": 1.5}))
            .starts_with("temperature")
    );
    assert!(
        refused(
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]})
        )
        .starts_with("messages.0.content.0.source.type")
    );
    assert!(
        refused(json!({"model": "c", "max_tokens": 5, "messages": m,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
        .starts_with("tools.0.type")
    );
    assert!(
        refused(json!({"model": "c", "max_tokens": 5, "messages": m,
        "tool_choice": {"type": "tool", "name": "nope"},
        "tools": [{"name": "get", "input_schema": {}}]}))
        .starts_with("tool_choice.name")
    );
    // count_tokens needs no max_tokens.
    assert!(
        parse_request(
            json!({"model": "c", "messages": m}).to_string().as_bytes(),
            Route::CountTokens
        )
        .is_ok()
    );
}

fn response() -> pb::ChatResponse {
    pb::ChatResponse {
        id: "chatcmpl-1".into(),
        model: "gpt-4o-mini".into(),
        choices: vec![pb::Choice {
            message: Some(pb::Message {
                role: pb::Role::Assistant as i32,
                content: Some(pb::Content {
                    value: Some(pb::content::Value::Text("hello".into())),
                }),
                tool_calls: vec![pb::ToolCall {
                    id: "call_1".into(),
                    r#type: "function".into(),
                    function: Some(pb::FunctionCall {
                        name: "get".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    }),
                }],
                ..Default::default()
            }),
            finish_reason: pb::FinishReason::ToolCalls as i32,
            ..Default::default()
        }],
        usage: Some(pb::Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            total_tokens: 13,
            cached_tokens: Some(4),
            ..Default::default()
        }),
        metadata: Some(pb::RoutingMetadata {
            request_id: "req_abc".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_response_is_a_message() {
    let v: Value = serde_json::from_slice(&message_json(&response()).unwrap()).unwrap();
    assert_eq!(
        v,
        json!({
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "tool_use", "id": "call_1", "name": "get", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 6, "output_tokens": 3,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}
        })
    );
}

fn delta(d: pb::Delta) -> pb::ChatChunk {
    pb::ChatChunk {
        model: "m".into(),
        choices: vec![pb::ChunkChoice {
            delta: Some(d),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `(event name, data)` pairs of an SSE text, checking each `event:` line
/// names its data's `type`.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

#[test]
fn a_stream_becomes_anthropic_events_in_order() {
    let meta = pb::RoutingMetadata {
        request_id: "req_1".into(),
        used_model: "m".into(),
        ..Default::default()
    };
    let mut w = StreamWriter::new(&meta, 7);
    let mut buf = BytesMut::new();
    for chunk in [
        delta(pb::Delta {
            role: Some(pb::Role::Assistant as i32),
            content: Some(String::new()),
            ..Default::default()
        }),
        delta(pb::Delta {
            reasoning: Some("hmm".into()),
            ..Default::default()
        }),
        delta(pb::Delta {
            content: Some("Hel".into()),
            ..Default::default()
        }),
        delta(pb::Delta {
            content: Some("lo".into()),
            ..Default::default()
        }),
        delta(pb::Delta {
            tool_calls: vec![pb::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("get".into()),
                arguments: Some(String::new()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        delta(pb::Delta {
            tool_calls: vec![pb::ToolCallDelta {
                index: 0,
                arguments: Some(r#"{"a":1}"#.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        pb::ChatChunk {
            choices: vec![pb::ChunkChoice {
                delta: Some(pb::Delta::default()),
                finish_reason: pb::FinishReason::ToolCalls as i32,
                ..Default::default()
            }],
            ..Default::default()
        },
        pb::ChatChunk {
            usage: Some(pb::Usage {
                prompt_tokens: 9,
                completion_tokens: 5,
                ..Default::default()
            }),
            ..Default::default()
        },
    ] {
        w.chunk(&chunk, &mut buf);
    }
    w.finish(&mut buf);
    let evs = events(std::str::from_utf8(&buf).unwrap());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(evs[0].1["message"]["id"], "msg_1");
    assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 7);
    assert_eq!(evs[2].1["content_block"]["type"], "thinking");
    assert_eq!(
        evs[3].1["delta"],
        json!({"type": "thinking_delta", "thinking": "hmm"})
    );
    assert_eq!(evs[5].1["index"], 1);
    assert_eq!(evs[7].1["delta"], json!({"type": "text_delta", "text": "lo"}));
    assert_eq!(
        evs[9].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "get", "input": {}})
    );
    assert_eq!(
        evs[10].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"a\":1}"})
    );
    assert_eq!(evs[12].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(evs[12].1["usage"]["input_tokens"], 9);
    assert_eq!(evs[12].1["usage"]["output_tokens"], 5);
}

#[test]
fn errors_are_in_anthropic_shape() {
    let e = llmgw_kit::GwError::new(llmgw_kit::ErrorCode::Unauthenticated, "bad key");
    let v: Value = serde_json::from_slice(&super::error_json(&e)).unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})
    );
}

/// Every value in a full request replaced by each hostile value in turn:
/// the parser answers (a request or a 400), never panics.
#[test]
fn mutated_requests_never_panic() {
    let base = json!({
        "model": "c", "max_tokens": 100, "system": [{"type": "text", "text": "s"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "t"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "h", "signature": "s"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": true,
                "content": [{"type": "text", "text": "r"}]}]}
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f"}, "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "low"}, "metadata": {"user_id": "u"}, "stop_sequences": ["x"],
        "temperature": 0.5, "top_p": 0.5, "top_k": 3, "stream": true
    });
    let hostile = [
        Value::Null,
        json!(0),
        json!(-1),
        json!(1e308),
        json!(18446744073709551615u64),
        json!(""),
        json!("\u{0}"),
        json!([]),
        json!({}),
        json!([null]),
        json!(true),
    ];
    fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    at.push(k.clone());
                    paths(x, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    at.push(i.to_string());
                    paths(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(&base, &mut Vec::new(), &mut all);
    let mut answered = 0;
    for path in &all {
        for h in &hostile {
            let mut v = base.clone();
            let mut slot = &mut v;
            for k in path {
                slot = match slot {
                    Value::Object(m) => m.get_mut(k).unwrap(),
                    Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                };
            }
            *slot = h.clone();
            let body = v.to_string();
            for route in [Route::Messages, Route::CountTokens] {
                if let Err(e) = parse_request(body.as_bytes(), route) {
                    assert_eq!(e.http_status(), 400, "{body}: {e:?}");
                }
                answered += 1;
            }
        }
    }
    assert!(answered > 500, "{answered}");
}

#[test]
fn created_at_is_rfc3339() {
    assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}
