//! The Messages emulator's validation and answers.

use serde_json::{Value, json};

use super::*;

fn check(body: Value) -> Result<(), String> {
    validate::request(&body).map(|_| ()).map_err(|e| e.message)
}

fn base() -> Value {
    json!({"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
}

/// A change to a valid request.
type Edit = &'static dyn Fn(&mut Value);

#[test]
fn is_as_strict_as_the_real_api() {
    assert_eq!(check(base()), Ok(()));
    let cases: [(Edit, &str); 9] = [
        (
            &|b| drop(b.as_object_mut().map(|o| o.remove("max_tokens"))),
            "max_tokens: Field required",
        ),
        (
            &|b| b["frequency_penalty"] = json!(1),
            "frequency_penalty: Extra inputs are not permitted",
        ),
        (
            &|b| {
                b["messages"] = json!([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
            },
            "Unexpected role \"system\"",
        ),
        (
            &|b| b["messages"] = json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            "roles must alternate",
        ),
        (
            &|b| {
                b["messages"] =
                    json!([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}])
            },
            "first message must use the \"user\" role",
        ),
        (
            &|b| {
                b["messages"] = json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}])
            },
            "unexpected `tool_use_id`",
        ),
        (
            &|b| {
                b["messages"] = json!([{"role": "user", "content": "a"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                    {"role": "user", "content": "no result"}])
            },
            "without `tool_result` blocks",
        ),
        (
            &|b| b["thinking"] = json!({"type": "enabled", "budget_tokens": 2048}),
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            &|b| b["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": ""}]}]),
            "text content blocks must be non-empty",
        ),
    ];
    for (edit, want) in cases {
        let mut body = base();
        edit(&mut body);
        let got = check(body).expect_err(want);
        assert!(got.contains(want), "{got} does not say {want}");
    }
}

fn answer(body: &Value) -> (Vec<String>, Vec<Value>) {
    let req = validate::request(body).expect("valid");
    let ids = IdGen::new();
    let plan = plan(&req, &ids);
    let events = wire::stream_events("msg_1", req.model, &plan);
    let text = String::from_utf8(events.buf).expect("utf8");
    let mut names = Vec::new();
    let mut data = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let mut lines = event.lines();
        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("event: "))
            .expect("event line");
        let d: Value =
            serde_json::from_str(lines.next().and_then(|l| l.strip_prefix("data: ")).expect("data"))
                .expect("json");
        assert_eq!(d["type"], name, "the event line names the data's type");
        names.push(name.to_owned());
        data.push(d);
    }
    (names, data)
}

#[test]
fn streams_the_documented_event_sequence() {
    let (names, data) = answer(&base());
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = data
        .iter()
        .filter_map(|d| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "You said: hi");
    assert_eq!(data[7]["delta"]["stop_reason"], "end_turn");
    assert!(data[0]["message"]["usage"]["input_tokens"].as_u64() > Some(0));
}

#[test]
fn thinks_and_calls_tools_from_the_schema() {
    let mut body = base();
    body["max_tokens"] = json!(2048);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let (names, data) = answer(&body);
    assert_eq!(data[1]["content_block"]["type"], "thinking");
    assert!(names.iter().filter(|n| *n == "content_block_start").count() == 2);
    let args: String = data
        .iter()
        .filter_map(|d| d.pointer("/delta/partial_json").and_then(Value::as_str))
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("json"),
        json!({"city": "Paris"})
    );
    let stop = data
        .iter()
        .find(|d| d["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");

    // The tool result round trip answers with text.
    // With thinking on, the turn that used the tool must carry its signed
    // thinking block back, as the real API requires.
    body["messages"] = json!([{"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]);
    let err = super::validate::request(&body)
        .err()
        .expect("refused without the thinking block");
    assert!(
        err.message.contains("must start with a thinking block"),
        "{}",
        err.message
    );
    body["messages"][1]["content"] = json!([
        {"type": "thinking", "thinking": "let me check", "signature": "forged"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]);
    let err = super::validate::request(&body)
        .err()
        .expect("refused with a forged signature");
    assert!(err.message.contains("Invalid `signature`"), "{}", err.message);
    body["messages"][1]["content"][0]["signature"] = json!(super::wire::SIGNATURE);
    let (_, data) = answer(&body);
    let text: String = data
        .iter()
        .filter_map(|d| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "Tool result: sunny");
}
