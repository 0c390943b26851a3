use llmgw_proto as pb;
use serde_json::{Value, json};

use super::*;

fn roundtrip(body: Value) -> Value {
    let req = parse_request(body.to_string().as_bytes()).expect("parses");
    let model = req.model.clone();
    serde_json::from_slice(&request_json(&req, &model, None).expect("writes")).expect("json")
}

#[test]
fn every_field_survives_exactly() {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "dev note"},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer", "maximum": 12345678901234567890u64}}, "required": ["city"]},
            "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object", "b": 1, "a": 2}, "strict": true}},
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 50, "max_completion_tokens": 60,
        "presence_penalty": -0.5, "frequency_penalty": 1.5, "stop": "END", "n": 2, "seed": -42,
        "user": "u-1", "reasoning_effort": "low", "logprobs": true, "top_logprobs": 3,
        "logit_bias": {"50256": -100}, "parallel_tool_calls": false, "service_tier": "auto", "store": false,
        "metadata": {"k": "v"}, "prediction": {"type": "content", "content": "x"}
    });
    let out = roundtrip(body.clone());
    assert_eq!(out, body);
}

#[test]
fn absent_parameters_stay_absent() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(roundtrip(body.clone()), body);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"], "stream": true,
        "stream_options": {"include_usage": true}});
    assert_eq!(roundtrip(body.clone()), body);
}

#[test]
fn raw_json_keeps_key_order_and_big_integers() {
    let text = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"z":1,"a":18446744073709551615}}}]}"#;
    let req = parse_request(text.as_bytes()).unwrap();
    let out = String::from_utf8(request_json(&req, "m", None).unwrap()).unwrap();
    assert!(
        out.contains(r#""parameters":{"z":1,"a":18446744073709551615}"#),
        "{out}"
    );
}

#[test]
fn include_usage_override_on_streams() {
    let req =
        parse_request(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#).unwrap();
    let out: Value = serde_json::from_slice(&request_json(&req, "up", Some(true)).unwrap()).unwrap();
    assert_eq!(out["stream_options"]["include_usage"], json!(true));
    assert_eq!(out["model"], json!("up"));
}

fn err(body: &str) -> crate::GwError {
    parse_request(body.as_bytes()).unwrap_err()
}

#[test]
fn errors_name_the_param() {
    assert_eq!(err("{").param(), None);
    assert!(err("{").message().contains("parse the JSON"));
    assert_eq!(err("[1]").code(), crate::ErrorCode::InvalidRequest);
    assert_eq!(
        err(r#"{"messages":[{"role":"user","content":"x"}]}"#).param(),
        Some("model")
    );
    assert_eq!(err(r#"{"model":"m"}"#).param(), Some("messages"));
    assert_eq!(err(r#"{"model":"m","messages":[]}"#).param(), Some("messages"));
    assert_eq!(err(r#"{"model":"m","messages":"hi"}"#).param(), Some("messages"));
    assert_eq!(
        err(r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#).param(),
        Some("model")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#).param(),
        Some("temperature")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#).param(),
        Some("temperature")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).param(),
        Some("messages[0].role")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"content":"x"}]}"#).param(),
        Some("messages[0].role")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).param(),
        Some("messages[0].content")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user"}]}"#).param(),
        Some("messages[0].content")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#).param(),
        Some("messages[0].tool_call_id")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#).param(),
        Some("max_tokens")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"always","tools":[{"type":"function","function":{"name":"f"}}]}"#).param(),
        Some("tool_choice")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}"#)
            .param(),
        Some("response_format.type")
    );
    assert_eq!(
        err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#).param(),
        Some("stream_options")
    );
}

#[test]
fn response_and_chunk_round_trip() {
    let upstream = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}},
        "system_fingerprint": "fp_x"
    });
    let resp = parse_response(upstream.to_string().as_bytes()).unwrap();
    assert_eq!(resp.choices[0].finish_reason, pb::FinishReason::ToolCalls as i32);
    assert_eq!(resp.usage.as_ref().unwrap().cached_tokens, Some(2));
    let out: Value = serde_json::from_slice(&response_json(&resp).unwrap()).unwrap();
    assert_eq!(out, upstream);

    let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a"}}]},
        "logprobs": null, "finish_reason": null}]});
    let parsed = parse_chunk(chunk.to_string().as_bytes()).unwrap();
    let mut buf = Vec::new();
    chunk_json(&parsed, &mut buf).unwrap();
    let out: Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(out, chunk);
}

#[test]
fn upstream_error_body() {
    let e = parse_upstream_error(
        br#"{"error":{"message":"bad","type":"invalid_request_error","param":"x","code":null}}"#,
    )
    .unwrap();
    assert_eq!(e.param.as_deref(), Some("x"));
    assert_eq!(e.message, "bad");
    assert!(parse_upstream_error(b"<html>").is_none());
}

/// A tiny deterministic generator (xorshift), so the test needs no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(v: &mut Value, rng: &mut Rng, depth: usize) {
    let replacements = [
        json!(null),
        json!(true),
        json!(-1),
        json!(1e308),
        json!(18446744073709551615u64),
        json!(""),
        json!("\u{0}\u{ffff}"),
        json!([]),
        json!({}),
        json!([{"type": "image_url"}]),
        json!({"type": "function"}),
    ];
    match v {
        Value::Object(map) if !map.is_empty() && depth < 6 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            match rng.below(4) {
                0 => {
                    map.remove(k);
                }
                1 => {
                    map.insert(k.clone(), replacements[rng.below(replacements.len())].clone());
                }
                _ => mutate(map.get_mut(k).unwrap(), rng, depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 6 => {
            let i = rng.below(items.len());
            if rng.below(3) == 0 {
                items[i] = replacements[rng.below(replacements.len())].clone();
            } else {
                mutate(&mut items[i], rng, depth + 1);
            }
        }
        other => *other = replacements[rng.below(replacements.len())].clone(),
    }
}

/// No body, however broken, makes parsing panic; every rejection is a 400.
#[test]
fn mutated_requests_never_panic() {
    let base = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
        "stop": ["x"], "stream": true, "stream_options": {"include_usage": true}, "temperature": 1, "n": 1
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5000 {
        let mut v = base.clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut v, &mut rng, 0);
        }
        let mut bytes = v.to_string().into_bytes();
        if rng.below(8) == 0 {
            let cut = rng.below(bytes.len());
            bytes.truncate(cut);
        }
        if rng.below(8) == 0 {
            let i = rng.below(bytes.len().max(1));
            if let Some(b) = bytes.get_mut(i) {
                *b = (rng.next() & 0xff) as u8;
            }
        }
        match parse_request(&bytes) {
            Ok(req) => {
                // What parses is written back out without error.
                request_json(&req, "m", None).unwrap();
            }
            Err(e) => assert_eq!(e.code(), crate::ErrorCode::InvalidRequest, "{e:?}"),
        }
    }
}

/// `logit_bias` reaches providers as written: only numbers from -100 to 100
/// pass (the fuzzer found one past f64's range that did).
#[test]
fn logit_bias_values_are_numbers_in_range() {
    let with = |bias: &str| {
        let text =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"logit_bias":{bias}}}"#);
        parse_request(text.as_bytes())
    };
    assert!(with(r#"{"50256": -100, "7": 2.5}"#).is_ok());
    assert!(with("null").is_ok());
    for bad in [r#"{"1": -1e400}"#, r#"{"1": 101}"#, r#"{"1": "x"}"#, "[1]", "5"] {
        assert_eq!(with(bad).unwrap_err().param(), Some("logit_bias"), "{bad}");
    }
}

/// Tool schemas travel as raw JSON, so a lone surrogate escape in one (which
/// the typed parse never decodes) is refused as unreadable JSON rather than
/// passed to providers; a surrogate pair (an emoji, as `json.dumps` writes
/// it) is fine.
#[test]
fn raw_json_with_a_lone_surrogate_is_refused() {
    let with = |description: &str| {
        let text = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x \ud83d\ude00"}}],
            "tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"object","description":"{description}"}}}}}}]}}"#
        );
        parse_request(text.as_bytes())
    };
    let req = with(r"sun \ud83c\udf1e").expect("a surrogate pair decodes");
    let params = req.tools[0]
        .function
        .as_ref()
        .unwrap()
        .parameters_json
        .as_deref()
        .unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(params).is_ok(),
        "{params}"
    );
    for bad in [r"\ud800", r"\uDC00 x", r"\ud83d\u0041", r"\ud83d"] {
        let e = with(bad).expect_err(bad);
        assert_eq!(e.code(), crate::ErrorCode::InvalidRequest, "{bad}");
    }
    // A decoded field was refused already, by the typed parse.
    let text = r#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#;
    assert!(parse_request(text.as_bytes()).is_err());
}

/// A number past f64's range in raw JSON is refused too, naming the field.
#[test]
fn raw_json_with_a_number_out_of_range_is_refused() {
    let body = |n: &str| {
        format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],
            "tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"number","maximum":{n}}}}}}}],
            "response_format":{{"type":"json_schema","json_schema":{{"name":"o","schema":{{"maximum":1}}}}}}}}"#
        )
    };
    assert!(parse_request(body("1e300").as_bytes()).is_ok());
    for bad in ["-1e3080", "1e999", &"9".repeat(400)] {
        let e = parse_request(body(bad).as_bytes()).expect_err(bad);
        assert_eq!(e.param(), Some("tools[0].function.parameters"), "{bad}");
    }
    let text = r#"{"model":"m","messages":[{"role":"user","content":"x"}],
        "response_format":{"type":"json_schema","json_schema":{"name":"o","schema":{"maximum":1e999}}}}"#;
    assert_eq!(
        parse_request(text.as_bytes()).unwrap_err().param(),
        Some("response_format.json_schema.schema")
    );
}
