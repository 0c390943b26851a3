//! Bedrock translation, both ways, its event stream (split at every byte),
//! its errors, its signature, and the provider against the Converse emulator.

use std::collections::HashMap;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue as FrameValue};
use futures_util::StreamExt as _;
use llmgw_kit::config::Config;
use llmgw_kit::openai::parse_request;
use llmgw_kit::secret::Secret;
use llmgw_proto::AdapterRequest;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;

fn canonical(body: &Value) -> ChatRequest {
    parse_request(body.to_string().as_bytes()).unwrap()
}

fn wire(body: &Value) -> Value {
    let (bytes, json_mode) = request_body(&canonical(body), "aws").unwrap();
    assert!(!json_mode);
    serde_json::from_slice(&bytes).unwrap()
}

fn wire_err(body: &Value) -> GwError {
    request_body(&canonical(body), "aws").unwrap_err()
}

#[test]
fn translates_a_conversation() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let w = wire(&json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
            {"role": "user", "content": "first"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
            ]},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "{\"temp\":21}"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": tools, "tool_choice": "required",
        "max_completion_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-1",
        "top_k": 5,
    }));
    assert_eq!(
        w,
        json!({
            "system": [{"text": "be brief"}, {"text": "be kind"}],
            "messages": [
                {"role": "user", "content": [
                    {"text": "first"},
                    {"text": "look"},
                    {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}}
                ]},
                {"role": "assistant", "content": [
                    {"text": "calling"},
                    {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"json": {"temp": 21}}]}},
                    {"text": "thanks"}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "get_weather", "description": "weather",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}],
                "toolChoice": {"any": {}}
            },
            "additionalModelRequestFields": {"top_k": 5}
        })
    );
}

#[test]
fn tool_choices_map_and_none_leaves_tools_out() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let user = json!([{"role": "user", "content": "hi"}]);
    let w = wire(&json!({"model": "m", "messages": user, "tools": tools}));
    assert_eq!(
        w["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]})
    );
    assert!(w.get("inferenceConfig").is_none());
    let w = wire(&json!({"model": "m", "messages": user, "tools": tools, "tool_choice": "auto"}));
    assert_eq!(w["toolConfig"]["toolChoice"], json!({"auto": {}}));
    let w = wire(
        &json!({"model": "m", "messages": user, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    );
    assert_eq!(w["toolConfig"]["toolChoice"], json!({"tool": {"name": "f"}}));
    let w = wire(&json!({"model": "m", "messages": user, "tools": tools, "tool_choice": "none"}));
    assert!(w.get("toolConfig").is_none(), "{w}");
}

#[test]
fn unsupported_parameters_are_refused_by_name() {
    let user = json!([{"role": "user", "content": "hi"}]);
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    for (extra, param) in [
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"seed": 1}), "seed"),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"logit_bias": {"1": 2}}), "logit_bias"),
        (json!({"reasoning_effort": "high"}), "reasoning_effort"),
        (
            json!({"tools": tools, "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"tools": tools, "parallel_tool_calls": false}),
            "parallel_tool_calls",
        ),
    ] {
        let mut body = json!({"model": "m", "messages": user});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e = wire_err(&body);
        assert_eq!(e.param(), Some(param), "{body}");
        assert_eq!(e.provider(), Some("aws"));
        assert!(e.message().contains("(bedrock)"), "{}", e.message());
        assert_eq!(e.http_status(), 400);
    }
    let e = wire_err(&json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}));
    assert_eq!(e.param(), Some("messages[0].content[0].image_url.url"));
    let e = wire_err(&json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}]}));
    assert!(e.message().contains("image/bmp"), "{}", e.message());
    let e = wire_err(
        &json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
    );
    assert_eq!(e.param(), Some("messages[0].tool_calls[0].function.arguments"));
}

#[test]
fn json_schema_is_a_forced_tool_and_comes_back_as_text() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}});
    let (bytes, json_mode) = request_body(&canonical(&body), "aws").unwrap();
    assert!(json_mode);
    let w: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(w["toolConfig"]["tools"][0]["toolSpec"]["name"], JSON_TOOL);
    assert_eq!(
        w["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        schema
    );
    assert_eq!(
        w["toolConfig"]["toolChoice"],
        json!({"tool": {"name": JSON_TOOL}})
    );

    let answer = json!({"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": JSON_TOOL, "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 1}});
    let r = parse_response(answer.to_string().as_bytes(), "i", "m", true).unwrap();
    let m = r.choices[0].message.as_ref().unwrap();
    assert!(m.tool_calls.is_empty());
    assert_eq!(
        m.content,
        Some(Content {
            value: Some(ContentValue::Text("{\"city\":\"Paris\"}".into()))
        })
    );
    assert_eq!(r.choices[0].finish_reason, FinishReason::Stop as i32);

    let mut buf = Vec::new();
    frame(&mut buf, "messageStart", &json!({"role": "assistant"}));
    frame(
        &mut buf,
        "contentBlockStart",
        &json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t1", "name": JSON_TOOL}}}),
    );
    for part in ["{\"ci", "ty\":\"Paris\"}"] {
        frame(
            &mut buf,
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": part}}}),
        );
    }
    frame(&mut buf, "messageStop", &json!({"stopReason": "tool_use"}));
    frame(
        &mut buf,
        "metadata",
        &json!({"usage": {"inputTokens": 1, "outputTokens": 1}}),
    );
    let (chunks, done) = translate_mode(&buf, 4, true);
    assert!(done.unwrap());
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.choices
                .first()
                .and_then(|c| c.delta.as_ref())
                .and_then(|d| d.content.clone())
        })
        .collect();
    assert_eq!(text, "{\"city\":\"Paris\"}");
    assert!(chunks.iter().all(|c| {
        c.choices
            .iter()
            .all(|ch| ch.delta.as_ref().is_none_or(|d| d.tool_calls.is_empty()))
    }));
    assert!(chunks.iter().any(|c| {
        c.choices
            .first()
            .is_some_and(|ch| ch.finish_reason == FinishReason::Stop as i32)
    }));
}

#[test]
fn parses_a_response_with_tools_reasoning_and_cache_usage() {
    let body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
            {"text": "Let me check."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, "cacheReadInputTokens": 4},
        "metrics": {"latencyMs": 10}
    });
    let r = parse_response(body.to_string().as_bytes(), "chatcmpl-1", "m", false).unwrap();
    let c = &r.choices[0];
    assert_eq!(c.finish_reason, FinishReason::ToolCalls as i32);
    let m = c.message.as_ref().unwrap();
    assert_eq!(m.reasoning.as_deref(), Some("hmm"));
    assert_eq!(
        m.content,
        Some(Content {
            value: Some(ContentValue::Text("Let me check.".into()))
        })
    );
    let f = m.tool_calls[0].function.as_ref().unwrap();
    assert_eq!(
        (m.tool_calls[0].id.as_str(), f.name.as_str()),
        ("tooluse_1", "get_weather")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&f.arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let u = r.usage.unwrap();
    assert_eq!(
        (
            u.prompt_tokens,
            u.completion_tokens,
            u.total_tokens,
            u.cached_tokens
        ),
        (14, 5, 19, Some(4))
    );
    assert_eq!((r.id.as_str(), r.model.as_str()), ("chatcmpl-1", "m"));

    for (reason, finish) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("guardrail_intervened", FinishReason::ContentFilter),
        ("content_filtered", FinishReason::ContentFilter),
    ] {
        let body = json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
            "stopReason": reason, "usage": {"inputTokens": 1, "outputTokens": 1}});
        let r = parse_response(body.to_string().as_bytes(), "i", "m", false).unwrap();
        assert_eq!(r.choices[0].finish_reason, finish as i32, "{reason}");
    }
    assert!(parse_response(b"{}", "i", "m", false).is_err());
}

fn peer() -> Peer {
    Peer::new("aws", Some(Secret::new("aws-secret-key")))
}

fn frame(buf: &mut Vec<u8>, kind: &str, payload: &Value) {
    let frame = Frame::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":event-type",
            FrameValue::String(kind.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            FrameValue::String("application/json".into()),
        ))
        .add_header(Header::new(":message-type", FrameValue::String("event".into())));
    write_message_to(&frame, buf).unwrap();
}

fn tool_stream() -> Vec<u8> {
    let mut buf = Vec::new();
    frame(&mut buf, "messageStart", &json!({"role": "assistant"}));
    frame(
        &mut buf,
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "Checking"}}),
    );
    frame(
        &mut buf,
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": " now."}}),
    );
    frame(&mut buf, "contentBlockStop", &json!({"contentBlockIndex": 0}));
    frame(
        &mut buf,
        "contentBlockStart",
        &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
    );
    for part in ["{\"ci", "ty\":\"Par", "is\"}"] {
        frame(
            &mut buf,
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": part}}}),
        );
    }
    frame(&mut buf, "contentBlockStop", &json!({"contentBlockIndex": 1}));
    frame(&mut buf, "messageStop", &json!({"stopReason": "tool_use"}));
    frame(
        &mut buf,
        "metadata",
        &json!({"usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10}, "metrics": {"latencyMs": 5}}),
    );
    buf
}

/// Feeds `bytes` in pieces of `step` bytes, as a network would.
fn translate(bytes: &[u8], step: usize) -> (Vec<ChatChunk>, Result<bool, GwError>) {
    translate_mode(bytes, step, false)
}

fn translate_mode(bytes: &[u8], step: usize, json_mode: bool) -> (Vec<ChatChunk>, Result<bool, GwError>) {
    let mut decoder = MessageFrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut translator = Translator::new(peer(), "chatcmpl-x".into(), "m".into(), json_mode);
    let mut out = VecDeque::new();
    let mut done = Ok(false);
    'feed: for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut decoder, &mut buf, &mut translator, &mut out) {
                Ok(None) => break,
                Ok(Some(false)) => {}
                Ok(Some(true)) => {
                    done = Ok(true);
                    break 'feed;
                }
                Err(e) => {
                    done = Err(e);
                    break 'feed;
                }
            }
        }
    }
    (out.into_iter().collect(), done)
}

#[test]
fn decodes_the_event_stream_split_anywhere() {
    let bytes = tool_stream();
    let (whole, done) = translate(&bytes, bytes.len());
    assert!(done.unwrap());
    for step in [1, 2, 3, 7, 13, 64] {
        let (chunks, done) = translate(&bytes, step);
        assert!(done.unwrap(), "step {step}");
        assert_eq!(chunks, whole, "step {step}");
    }
    let delta = |c: &ChatChunk| {
        c.choices
            .first()
            .and_then(|c| c.delta.clone())
            .unwrap_or_default()
    };
    assert_eq!(delta(&whole[0]).role, Some(Role::Assistant as i32));
    let text: String = whole.iter().filter_map(|c| delta(c).content).collect();
    assert_eq!(text, "Checking now.");
    let calls: Vec<ToolCallDelta> = whole.iter().flat_map(|c| delta(c).tool_calls).collect();
    assert_eq!(calls[0].id.as_deref(), Some("tooluse_1"));
    assert_eq!(calls[0].name.as_deref(), Some("get_weather"));
    let args: String = calls.iter().filter_map(|c| c.arguments.clone()).collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert!(calls.iter().all(|c| c.index == 0));
    let finish = &whole[whole.len() - 2];
    assert_eq!(finish.choices[0].finish_reason, FinishReason::ToolCalls as i32);
    let last = whole.last().unwrap();
    assert!(last.choices.is_empty());
    let u = last.usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 3));
    assert!(whole.iter().all(|c| c.id == "chatcmpl-x"));
}

#[test]
fn exceptions_and_corrupt_frames_end_the_stream_with_an_error() {
    let mut buf = Vec::new();
    frame(&mut buf, "messageStart", &json!({"role": "assistant"}));
    let exception = Frame::new(
        json!({"message": "Too many tokens, slow down"})
            .to_string()
            .into_bytes(),
    )
    .add_header(Header::new(
        ":exception-type",
        FrameValue::String("throttlingException".into()),
    ))
    .add_header(Header::new(
        ":message-type",
        FrameValue::String("exception".into()),
    ));
    write_message_to(&exception, &mut buf).unwrap();
    let (chunks, done) = translate(&buf, 5);
    assert_eq!(chunks.len(), 1);
    let e = done.unwrap_err();
    assert_eq!((e.code(), e.retryable()), (ErrorCode::UpstreamRateLimited, true));
    assert!(e.message().contains("slow down"), "{}", e.message());

    let mut corrupt = tool_stream();
    corrupt[20] ^= 0xff;
    let (_, done) = translate(&corrupt, 9);
    assert!(done.unwrap_err().message().contains("malformed event stream"));
}

#[test]
fn errors_are_rewritten_and_classified() {
    let p = peer();
    let classify = |status: u16, kind: &str, message: &str| {
        let (body, too_long) = openai_error(json!({"message": message}).to_string().as_bytes(), Some(kind));
        (
            p.status_error(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &body),
            too_long,
        )
    };
    let (e, _) = classify(429, "ThrottlingException", "Too many requests");
    assert_eq!((e.code(), e.retryable()), (ErrorCode::UpstreamRateLimited, true));
    assert!(
        e.message().contains("ThrottlingException: Too many requests"),
        "{}",
        e.message()
    );
    let (e, _) = classify(
        403,
        "UnrecognizedClientException",
        "The security token is invalid aws-secret-key",
    );
    assert_eq!(
        (e.code(), e.http_status(), e.retryable()),
        (ErrorCode::UpstreamRejected, 502, false)
    );
    assert!(!e.message().contains("aws-secret-key"));
    let (e, _) = classify(404, "ResourceNotFoundException", "no such model");
    assert_eq!(
        (e.code(), e.upstream_status()),
        (ErrorCode::UpstreamRejected, Some(404))
    );
    let (e, _) = classify(408, "ModelTimeoutException", "slow");
    assert_eq!(e.code(), ErrorCode::UpstreamTimeout);
    let (e, _) = classify(500, "InternalServerException", "oops");
    assert_eq!((e.code(), e.retryable()), (ErrorCode::UpstreamError, true));
    let (e, _) = classify(503, "ServiceUnavailableException", "busy");
    assert_eq!((e.code(), e.retryable()), (ErrorCode::UpstreamError, true));
    let (_, too_long) = classify(
        400,
        "ValidationException",
        "Input is too long for requested model.",
    );
    assert!(too_long);
    let (_, too_long) = classify(400, "ValidationException", "A conversation must alternate");
    assert!(!too_long);

    let mut h = HeaderMap::new();
    h.insert(
        "x-amzn-errortype",
        "ThrottlingException:http://internal.amazon.com/coral/"
            .parse()
            .unwrap(),
    );
    assert_eq!(error_type(&h).as_deref(), Some("ThrottlingException"));
}

fn provider(token: Option<&str>) -> Bedrock {
    let mut yaml = "providers:\n  - name: aws\n    type: bedrock\n    region: eu-west-3\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: aws-secret-key\n".to_owned();
    if let Some(token) = token {
        yaml.push_str(&format!("    session_token: {token}\n"));
    }
    let config = Config::parse(&yaml, "test.yaml", &HashMap::new()).unwrap();
    Bedrock::new(&config.providers[0], reqwest::Client::new()).unwrap()
}

#[test]
fn signs_each_request_and_never_shows_the_secret() {
    let p = provider(Some("session-token-value"));
    assert_eq!(p.base_url, "https://bedrock-runtime.eu-west-3.amazonaws.com");
    let url = format!("{}/model/m%3A0/converse", p.base_url);
    let headers = p.sign(&url, JSON, b"{}", SystemTime::now()).unwrap();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let auth = get("authorization").unwrap();
    assert!(auth.is_sensitive());
    let auth = auth.to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(auth.contains("/eu-west-3/bedrock/aws4_request"), "{auth}");
    assert!(
        auth.contains("SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token"),
        "{auth}"
    );
    assert!(!auth.contains("aws-secret-key"));
    assert!(get("x-amz-date").is_some());
    assert_eq!(get("x-amz-security-token").unwrap(), "session-token-value");
    // A different body (or time) is a different signature.
    let other = p.sign(&url, JSON, b"{\"a\":1}", SystemTime::now()).unwrap();
    assert_ne!(
        other
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.clone()),
        Some(get("authorization").unwrap())
    );

    let p = provider(None);
    let headers = p.sign(&url, JSON, b"{}", SystemTime::now()).unwrap();
    assert!(headers.iter().all(|(n, _)| n != "x-amz-security-token"));
}

// ---- against the Converse emulator -------------------------------------------

const EMU_KEY: &str = "emu-aws-secret";

async fn emulator(secret: &str) -> (llmgw_emulators::Emulator, crate::Adapter) {
    let emu = llmgw_emulators::spawn(llmgw_emulators::Options {
        api_key: Some(EMU_KEY.into()),
        record: true,
    })
    .await
    .unwrap();
    let yaml = format!(
        "providers:\n  - name: aws\n    type: bedrock\n    base_url: http://{}\n    region: us-east-1\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: {secret}\n",
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
            provider: "aws".into(),
            provider_type: "bedrock".into(),
            model: "anthropic.claude-3-5-sonnet-20240620-v1:0".into(),
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
    let (emu, adapter) = emulator(EMU_KEY).await;
    let r = adapter
        .complete(ask(json!({"model": "x", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello bedrock"}]})))
        .await
        .unwrap();
    let m = r.choices[0].message.as_ref().unwrap();
    assert_eq!(
        m.content,
        Some(Content {
            value: Some(ContentValue::Text("You said: hello bedrock".into()))
        })
    );
    assert!(r.id.starts_with("chatcmpl-"));
    assert!(r.usage.unwrap().prompt_tokens > 0);
    let seen = reqwest::get(format!("http://{}/_emu/requests", emu.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seen: Value = serde_json::from_str(&seen).unwrap();
    let last = seen.as_array().unwrap().last().unwrap();
    assert_eq!(
        last["path"],
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    assert_eq!(last["body"]["system"], json!([{"text": "sys"}]));

    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut stream = adapter
        .stream(ask(json!({"model": "x", "stream": true, "tools": tools,
            "messages": [{"role": "user", "content": "[emu:chunk_delay_ms=1] weather?"}]})))
        .await
        .unwrap();
    let (mut args, mut finish, mut usage) = (String::new(), 0, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(u) = chunk.usage {
            usage = Some(u);
        }
        for c in &chunk.choices {
            for t in &c.delta.clone().unwrap_or_default().tool_calls {
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
    assert_eq!(finish, FinishReason::ToolCalls as i32);
    assert!(usage.unwrap().completion_tokens > 0);

    let e = adapter
        .complete(ask(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi [emu:status=429]"}]}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.upstream_status(), e.retryable()),
        (ErrorCode::UpstreamRateLimited, Some(429), true)
    );
    let e = adapter
        .stream(ask(json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": "hi [emu:prompt_too_long]"}]})))
        .await
        .err()
        .unwrap();
    assert_eq!(e.param(), Some("messages"));
    assert!(e.message().contains("context_length_exceeded"), "{}", e.message());

    // A stream that breaks off mid-way, or with an exception, ends with an error.
    for prompt in [
        "[emu:abort_mid_stream] [emu:words=50] hi",
        "[emu:error_mid_stream] hi there",
    ] {
        let mut stream = adapter
            .stream(ask(
                json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": prompt}]}),
            ))
            .await
            .unwrap();
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        assert!(items.len() > 1 && items[0].is_ok(), "some chunks first: {prompt}");
        let e = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!((e.code(), e.provider()), (ErrorCode::UpstreamError, Some("aws")));
    }
}

#[tokio::test]
async fn a_wrong_secret_is_a_credential_failure_without_the_secret() {
    let (_emu, adapter) = emulator("not-the-secret").await;
    let e = adapter
        .complete(ask(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.upstream_status(), e.http_status()),
        (ErrorCode::UpstreamRejected, Some(403), 502)
    );
    assert!(
        e.message().contains("InvalidSignatureException"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("not-the-secret"));
}
