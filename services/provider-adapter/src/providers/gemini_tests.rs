//! The Gemini translator: both directions as pure functions, then the whole
//! provider against the Gemini emulator (streaming and error mapping).

use std::collections::HashMap;

use futures_util::StreamExt as _;
use llmgw_kit::config::Config;
use llmgw_kit::openai::parse_request;
use serde_json::{Value, json};

use super::*;

const KEY: &str = "gemini-test-key";
const GEM: Who<'static> = Who {
    name: "gem",
    kind: "google",
};

fn req(body: Value) -> ChatRequest {
    parse_request(body.to_string().as_bytes()).unwrap()
}

fn body(v: Value) -> Value {
    request_body(&req(v), GEM).unwrap()
}

fn err(v: Value) -> GwError {
    request_body(&req(v), GEM).unwrap_err()
}

#[test]
fn translates_messages_roles_and_parts() {
    let out = body(json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.JPG?x=1"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_2__thought__c2ln", "type": "function", "function": {"name": "lookup", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_2__thought__c2ln", "content": "plain text"}
        ]
    }));
    assert_eq!(
        out["systemInstruction"],
        json!({"parts": [{"text": "be brief"}, {"text": "and kind"}]})
    );
    let contents = out["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents.iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user", "model", "user"]);
    assert_eq!(contents[0]["parts"][0], json!({"text": "hi"}));
    assert_eq!(contents[0]["parts"][1], json!({"text": "what is this?"}));
    assert_eq!(
        contents[0]["parts"][2],
        json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(
        contents[0]["parts"][3],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a/cat.JPG?x=1"}})
    );
    assert_eq!(
        contents[1]["parts"][0],
        json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}})
    );
    assert_eq!(
        contents[2]["parts"][0],
        json!({"functionResponse": {"name": "get_weather", "response": {"temp": 21}}})
    );
    assert_eq!(
        contents[3]["parts"][0],
        json!({"functionCall": {"name": "lookup", "args": {}}, "thoughtSignature": "c2ln"})
    );
    assert_eq!(
        contents[4]["parts"][0],
        json!({"functionResponse": {"name": "lookup", "response": {"content": "plain text"}}})
    );
    assert!(out.get("generationConfig").is_none());
}

#[test]
fn translates_tools_choice_and_generation_config() {
    let out = body(json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "weather", "strict": true,
             "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "additionalProperties": false,
                "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f"]}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
            {"type": "function", "function": {"name": "ping", "parameters": {}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 50, "stop": ["END"], "n": 2, "seed": 7,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": true, "top_logprobs": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {
            "type": "object", "additionalProperties": false,
            "properties": {"city": {"$ref": "#/$defs/City"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["city"], "$defs": {"City": {"type": "string", "const": "Paris"}}}}},
        "reasoning_effort": "low"
    }));
    assert_eq!(
        out["tools"],
        json!([{"functionDeclarations": [
            {"name": "get_weather", "description": "weather", "parameters": {
                "type": "OBJECT", "required": ["city"], "properties": {
                    "city": {"type": "STRING"},
                    "unit": {"type": "STRING", "nullable": true, "enum": ["c", "f"]}}}},
            {"name": "now"},
            {"name": "ping"}
        ]}])
    );
    assert_eq!(
        out["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    let c = &out["generationConfig"];
    assert_eq!(c["temperature"], 0.2);
    assert_eq!(c["topP"], 0.9);
    assert_eq!(c["maxOutputTokens"], 50);
    assert_eq!(c["stopSequences"], json!(["END"]));
    assert_eq!(c["candidateCount"], 2);
    assert_eq!(c["seed"], 7);
    assert_eq!(c["presencePenalty"], 0.5);
    assert_eq!(c["frequencyPenalty"], -0.5);
    assert_eq!(c["responseLogprobs"], true);
    assert_eq!(c["logprobs"], 3);
    assert_eq!(c["responseMimeType"], "application/json");
    assert_eq!(
        c["responseSchema"],
        json!({"type": "OBJECT", "required": ["city"], "properties": {
            "city": {"type": "STRING", "enum": ["Paris"]},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}}}})
    );
    assert_eq!(
        c["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );

    for (choice, mode) in [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY")] {
        let out = body(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": choice
        }));
        assert_eq!(out["toolConfig"]["functionCallingConfig"], json!({"mode": mode}));
    }
    let out = body(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}, "max_tokens": 9}),
    );
    assert_eq!(
        out["generationConfig"],
        json!({"maxOutputTokens": 9, "responseMimeType": "application/json"})
    );
}

#[test]
fn refuses_what_gemini_cannot_honour() {
    let base = |extra: Value| {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    let cases = [
        (json!({"logit_bias": {"1": 2}}), "logit_bias"),
        (
            json!({"parallel_tool_calls": false, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "parallel_tool_calls",
        ),
        (json!({"service_tier": "flex"}), "service_tier"),
        (json!({"store": true}), "store"),
        (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
        (json!({"some_new_param": 1}), "some_new_param"),
    ];
    for (extra, param) in cases {
        let e = err(base(extra));
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{param}");
        assert_eq!(e.param(), Some(param));
        assert_eq!(e.provider(), Some("gem"));
        assert!(
            e.message().contains("provider `gem` (google) does not support"),
            "{}",
            e.message()
        );
    }
    let e = err(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/picture"}}]}]}));
    assert_eq!(e.param(), Some("messages[0].content[0].image_url"));
    let e = err(json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}));
    assert_eq!(e.param(), Some("messages[1].tool_calls[0].function.arguments"));
    let e = err(json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}));
    assert_eq!(e.param(), Some("messages[1].tool_call_id"));
    let e = err(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}));
    assert_eq!(e.param(), Some("top_logprobs"));
    body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {}}));
    let e = err(json!({"model": "m", "messages": [{"role": "system", "content": "only"}]}));
    assert_eq!(e.param(), Some("messages"));
}

#[test]
fn schema_cleanup_handles_refs_unions_and_depth() {
    let schema = json!({
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "b": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "c": {"allOf": [{"$ref": "#/definitions/C"}]},
            "d": {"type": ["integer", "string"]},
            "e": {"type": "string", "format": "email"},
            "f": {"type": "string", "format": "date-time"},
            "g": {"type": "integer", "enum": [1, 2]}
        },
        "definitions": {"C": {"type": "boolean", "description": "flag", "examples": [true]}}
    });
    let out = to_gemini_schema(&schema, &schema, 0).unwrap();
    assert_eq!(
        out,
        json!({"type": "OBJECT", "properties": {
            "a": {"type": "STRING", "nullable": true},
            "b": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
            "c": {"type": "BOOLEAN", "description": "flag"},
            "d": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
            "e": {"type": "STRING"},
            "f": {"type": "STRING", "format": "date-time"},
            "g": {"type": "INTEGER"}
        }})
    );
    let recursive = json!({"$ref": "#"});
    assert!(to_gemini_schema(&recursive, &recursive, 0).is_err());
}

#[test]
fn reads_candidates_usage_and_finish_reasons() {
    let resp: GenerateResponse = serde_json::from_value(json!({
        "candidates": [
            {"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true}, {"text": "Hello"}, {"text": " world"}]},
             "finishReason": "STOP", "index": 0,
             "logprobsResult": {"chosenCandidates": [{"token": "Hello", "logProbability": -0.5}],
                                "topCandidates": [{"candidates": [{"token": "Hello", "logProbability": -0.5}]}]}},
            {"content": {"role": "model", "parts": [
                {"functionCall": {"name": "f", "args": {"x": 1}}}, {"functionCall": {"name": "g"}, "thoughtSignature": "c2ln"}]},
             "finishReason": "STOP", "index": 1}
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                          "cachedContentTokenCount": 4, "totalTokenCount": 18},
        "modelVersion": "gemini-1.5-flash-002", "responseId": "abc"
    }))
    .unwrap();
    let out = response_from(resp, "gemini-1.5-flash");
    assert_eq!(out.model, "gemini-1.5-flash-002");
    assert_eq!(out.id, "chatcmpl-abc");
    let first = out.choices[0].message.as_ref().unwrap();
    assert_eq!(
        first.content.as_ref().unwrap().value,
        Some(content::Value::Text("Hello world".into()))
    );
    assert_eq!(first.reasoning.as_deref(), Some("thinking..."));
    assert_eq!(out.choices[0].finish_reason, FinishReason::Stop as i32);
    let logprobs: Value = serde_json::from_str(out.choices[0].logprobs_json.as_deref().unwrap()).unwrap();
    assert_eq!(logprobs["content"][0]["token"], "Hello");
    assert_eq!(logprobs["content"][0]["top_logprobs"][0]["logprob"], -0.5);
    let second = out.choices[1].message.as_ref().unwrap();
    assert!(second.content.is_none());
    assert_eq!(out.choices[1].finish_reason, FinishReason::ToolCalls as i32);
    assert_eq!(second.tool_calls.len(), 2);
    assert!(second.tool_calls[0].id.starts_with("call_"));
    assert_ne!(second.tool_calls[0].id, second.tool_calls[1].id);
    let f = second.tool_calls[0].function.as_ref().unwrap();
    assert_eq!((f.name.as_str(), f.arguments.as_str()), ("f", r#"{"x":1}"#));
    assert_eq!(second.tool_calls[1].function.as_ref().unwrap().arguments, "{}");
    assert!(
        second.tool_calls[1].id.ends_with("__thought__c2ln"),
        "{}",
        second.tool_calls[1].id
    );
    let usage = out.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        (10, 8, 18)
    );
    assert_eq!((usage.cached_tokens, usage.reasoning_tokens), (Some(4), Some(3)));

    for (reason, want) in [
        ("MAX_TOKENS", FinishReason::Length),
        ("SAFETY", FinishReason::ContentFilter),
        ("RECITATION", FinishReason::ContentFilter),
        ("BLOCKLIST", FinishReason::ContentFilter),
        ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
        ("SPII", FinishReason::ContentFilter),
        ("OTHER", FinishReason::Stop),
    ] {
        assert_eq!(finish_from(reason, false), want, "{reason}");
    }

    let blocked: GenerateResponse = serde_json::from_value(json!({
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}
    }))
    .unwrap();
    let out = response_from(blocked, "m");
    assert_eq!(out.choices.len(), 1);
    assert_eq!(out.choices[0].finish_reason, FinishReason::ContentFilter as i32);
}

#[test]
fn stream_events_become_openai_chunks() {
    let mut state = StreamState::new("gemini-x");
    let event = |v: Value| serde_json::from_value::<GenerateResponse>(v).unwrap();
    let c1 = state
        .on_event(event(
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}}),
        ))
        .unwrap();
    let d = c1.choices[0].delta.as_ref().unwrap();
    assert_eq!(d.role, Some(Role::Assistant as i32));
    assert_eq!(d.content.as_deref(), Some("Hel"));
    let c2 = state
        .on_event(event(json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "lo"}, {"functionCall": {"name": "f", "args": {"a": "b"}}}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}})))
        .unwrap();
    let d = c2.choices[0].delta.as_ref().unwrap();
    assert_eq!(d.role, None);
    assert_eq!(d.content.as_deref(), Some("lo"));
    assert_eq!(d.tool_calls[0].index, 0);
    assert_eq!(d.tool_calls[0].arguments.as_deref(), Some(r#"{"a":"b"}"#));
    assert_eq!(c2.choices[0].finish_reason, FinishReason::ToolCalls as i32);
    assert!(
        state
            .on_event(event(
                json!({"usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 6}})
            ))
            .is_none()
    );
    assert!(state.finished_any);
    assert_eq!(usage_from(state.usage.unwrap()).prompt_tokens, 4);
}

#[test]
fn refines_google_errors() {
    let peer = Peer::new("gem", Some(llmgw_kit::secret::Secret::new(KEY)));
    let body = br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED",
        "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12.5s"}]}}"#;
    let e = peer.status_error(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
    let e = refine_error(&peer, e, StatusCode::TOO_MANY_REQUESTS, body);
    assert_eq!(
        (e.code(), e.retry_after_secs()),
        (ErrorCode::UpstreamRateLimited, Some(13))
    );

    let body = br#"{"error":{"code":400,"message":"The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
    let e = peer.status_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
    let e = refine_error(&peer, e, StatusCode::BAD_REQUEST, body);
    assert_eq!(e.code(), ErrorCode::ContextLengthExceeded);
    assert_eq!(e.param(), Some("messages"));
    assert!(e.message().contains("context_length_exceeded"), "{}", e.message());
}

// ---- the provider against the emulator

fn provider(addr: std::net::SocketAddr) -> Gemini {
    let yaml = format!(
        "providers:\n  - name: gem\n    type: google\n    base_url: http://{addr}/v1beta\n    api_key: {KEY}\n"
    );
    let config = Config::parse(&yaml, "test.yaml", &HashMap::new()).unwrap();
    Gemini::new(&config.providers[0], crate::http::client().unwrap()).unwrap()
}

fn target(model: &str) -> Target {
    Target {
        provider: "gem".into(),
        provider_type: "google".into(),
        model: model.into(),
        price: None,
        timeout_ms: 5_000,
        max_retries: 0,
        ..Default::default()
    }
}

async fn emulator() -> llmgw_emulators::Emulator {
    llmgw_emulators::spawn(llmgw_emulators::Options {
        api_key: Some(KEY.into()),
        record: true,
    })
    .await
    .unwrap()
}

async fn recorded(emu: &llmgw_emulators::Emulator) -> Vec<Value> {
    let url = format!("http://{}/_emu/requests", emu.addr);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

fn user(text: &str) -> ChatRequest {
    req(json!({"model": "x", "messages": [{"role": "user", "content": text}]}))
}

#[tokio::test]
async fn completes_and_streams_against_the_emulator() {
    let emu = emulator().await;
    let p = provider(emu.addr);
    let out = p
        .complete(&target("gemini-1.5-flash"), &user("hello"))
        .await
        .unwrap();
    let msg = out.choices[0].message.as_ref().unwrap();
    assert_eq!(
        msg.content.as_ref().unwrap().value,
        Some(content::Value::Text("You said: hello".into()))
    );
    assert!(out.usage.unwrap().prompt_tokens > 0);

    let chunks: Vec<_> = p
        .stream(&target("gemini-1.5-flash"), &user("stream me please"))
        .await
        .unwrap()
        .collect()
        .await;
    let chunks: Vec<ChatChunk> = chunks.into_iter().map(Result::unwrap).collect();
    let text: String = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.as_ref()?.content.clone())
        .collect();
    assert_eq!(text, "You said: stream me please");
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(last.usage.unwrap().completion_tokens, 5);
    assert!(
        chunks
            .iter()
            .flat_map(|c| &c.choices)
            .any(|c| c.finish_reason == FinishReason::Stop as i32)
    );

    let seen = recorded(&emu).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["path"], "/v1beta/models/gemini-1.5-flash:generateContent");
    assert_eq!(
        seen[1]["path"],
        "/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse"
    );
    for s in &seen {
        assert_eq!(s["headers"]["x-goog-api-key"], KEY);
        assert!(!s["path"].as_str().unwrap().contains(KEY));
    }
}

#[tokio::test]
async fn maps_upstream_errors() {
    let emu = emulator().await;
    let p = provider(emu.addr);
    let t = target("gemini-1.5-flash");
    let e = p.complete(&t, &user("[emu:status=429] hi")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamRateLimited);
    assert_eq!(e.retry_after_secs(), Some(2));
    assert!(e.retryable());
    let e = p.complete(&t, &user("[emu:status=503] hi")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.upstream_status()),
        (ErrorCode::UpstreamError, Some(503))
    );
    assert!(e.retryable());
    let e = p.complete(&t, &user("[emu:status=400] hi")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.param()),
        (ErrorCode::ContextLengthExceeded, Some("messages"))
    );
    let e = p.stream(&t, &user("[emu:status=403] hi")).await.err().unwrap();
    assert_eq!(e.code(), ErrorCode::UpstreamRejected);
    let e = p.complete(&target("not-gemini"), &user("hi")).await.unwrap_err();
    assert_eq!(e.upstream_status(), Some(404));
    let e = p.complete(&target("../secrets"), &user("hi")).await.unwrap_err();
    assert_eq!((e.code(), e.param()), (ErrorCode::InvalidRequest, Some("model")));

    // A stream cut mid-way is an error, not a silent end.
    let chunks: Vec<_> = p
        .stream(&t, &user("[emu:words=12] [emu:abort_mid_stream]"))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(chunks.iter().any(Result::is_err));

    // A wrong key: Google answers 400 API_KEY_INVALID; the key never shows.
    let yaml = format!(
        "providers:\n  - name: gem\n    type: google\n    base_url: http://{}/v1beta\n    api_key: wrong-key\n",
        emu.addr
    );
    let config = Config::parse(&yaml, "test.yaml", &HashMap::new()).unwrap();
    let bad = Gemini::new(&config.providers[0], crate::http::client().unwrap()).unwrap();
    let e = bad.complete(&t, &user("hi")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamRejected);
    assert!(e.message().contains("credentials"), "{}", e.message());
    assert!(!e.message().contains("wrong-key"));
}

// ---- Vertex AI: the same wire format behind a service account's OAuth token

/// A throwaway key made for these tests (the emulator verifies with its public half).
const TEST_KEY_PEM: &str =
    include_str!("../../../../tests/emulators/src/gemini/test-service-account-key.pem");

fn credentials(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "test",
        "private_key": TEST_KEY_PEM,
        "client_email": "gateway@proj-1.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string()
}

fn vertex(addr: std::net::SocketAddr, creds: &str) -> Result<Gemini, GwError> {
    let yaml = format!(
        "providers:\n  - name: vx\n    type: vertex-ai\n    base_url: http://{addr}/v1\n    project_id: proj-1\n    location: us-central1\n    credentials: ${{VX_CREDENTIALS}}\n"
    );
    let env = HashMap::from([("VX_CREDENTIALS".to_owned(), creds.to_owned())]);
    let config = Config::parse(&yaml, "test.yaml", &env).unwrap();
    Gemini::new(&config.providers[0], crate::http::client().unwrap())
}

#[test]
fn signs_a_verifiable_jwt_bearer_assertion() {
    let source = TokenSource::new(
        &credentials("https://oauth2.googleapis.com/token"),
        crate::http::client().unwrap(),
    )
    .unwrap();
    let jwt = source.assertion(1_700_000_000).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims,
        json!({"iss": "gateway@proj-1.iam.gserviceaccount.com", "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": "https://oauth2.googleapis.com/token", "iat": 1_700_000_000u64, "exp": 1_700_003_600u64})
    );
    let signature = b64.decode(parts[2]).unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        source.public_key_der(),
    )
    .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
    .unwrap();

    for bad in [
        "not json".to_owned(),
        json!({"type": "authorized_user", "client_email": "a", "private_key": TEST_KEY_PEM}).to_string(),
        json!({"client_email": "a", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"})
            .to_string(),
    ] {
        let e = TokenSource::new(&bad, crate::http::client().unwrap()).err().unwrap();
        assert!(!e.contains("BEGIN PRIVATE KEY"), "{e}");
    }
}

#[tokio::test]
async fn vertex_mints_caches_and_uses_a_token() {
    let emu = emulator().await;
    let p = vertex(emu.addr, &credentials(&format!("http://{}/token", emu.addr))).unwrap();
    let t = target("gemini-2.0-flash");
    let out = p.complete(&t, &user("hello vertex")).await.unwrap();
    assert_eq!(
        out.choices[0]
            .message
            .as_ref()
            .unwrap()
            .content
            .as_ref()
            .unwrap()
            .value,
        Some(content::Value::Text("You said: hello vertex".into()))
    );
    let chunks: Vec<_> = p.stream(&t, &user("and stream")).await.unwrap().collect().await;
    assert!(chunks.iter().all(Result::is_ok));
    let e = p.complete(&t, &user("[emu:status=429] hi")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamRateLimited);

    let seen = recorded(&emu).await;
    let paths: Vec<&str> = seen.iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/token",
            "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
            "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
        ],
        "one token, cached across calls"
    );
    for s in &seen[1..] {
        assert!(
            s["headers"]["authorization"]
                .as_str()
                .unwrap()
                .starts_with("Bearer ya29.emu-")
        );
        assert!(s["headers"].get("x-goog-api-key").is_none());
    }

    // A token Vertex refuses (401) is forgotten: the next call mints another.
    let e = p.complete(&t, &user("[emu:status=401] hi")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamRejected);
    p.complete(&t, &user("hi again")).await.unwrap();
    let tokens = recorded(&emu)
        .await
        .iter()
        .filter(|s| s["path"] == "/token")
        .count();
    assert_eq!(tokens, 2);

    // A token endpoint that refuses the account: a clear, non-retryable error.
    let other = vertex(
        emu.addr,
        &credentials(&format!("http://{}/token-nowhere", emu.addr)),
    )
    .unwrap();
    let e = other.complete(&t, &user("hi")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamRejected, "{}", e.message());
    assert!(!e.message().contains("PRIVATE KEY"));
}

/// A local server answering `GET /cat` with a PNG (no extension: the type
/// comes from the answer).
async fn image_server() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/cat",
        axum::routing::get(|| async { ([("content-type", "image/png")], &b"\x89PNG\r\n\x1a\nrest"[..]) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn with_images(urls: &[&str]) -> ChatRequest {
    let mut parts = vec![json!({"type": "text", "text": "what is it?"})];
    parts.extend(
        urls.iter()
            .map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
    );
    req(json!({"model": "x", "messages": [{"role": "user", "content": parts}]}))
}

#[tokio::test]
async fn ai_studio_fetches_http_images_and_inlines_them() {
    use base64::Engine as _;
    let emu = emulator().await;
    let images = image_server().await;
    let url = format!("http://{images}/cat");
    let mut p = provider(emu.addr);
    let t = target("gemini-2.0-flash");

    // The production guard refuses a loopback host; nothing goes upstream.
    let e = p.complete(&t, &with_images(&[&url])).await.unwrap_err();
    assert_eq!(e.http_status(), 400);
    assert_eq!(e.param(), Some("messages[0].content[1].image_url"));
    assert!(
        e.message().contains("`gem` (google)") && e.message().contains("loopback"),
        "{}",
        e.message()
    );
    assert!(recorded(&emu).await.is_empty());

    // Allowed (tests only): fetched and sent as inlineData; Files API and
    // gs:// URIs still go by reference.
    p.fetcher = Fetcher::for_tests(1 << 20, Duration::from_secs(5));
    let files = "https://generativelanguage.googleapis.com/v1beta/files/abc.png";
    p.complete(&t, &with_images(&[&url, files, "gs://bucket/dog.jpg"]))
        .await
        .unwrap();
    let sent = recorded(&emu).await;
    let parts = &sent[0]["body"]["contents"][0]["parts"];
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nrest");
    assert_eq!(
        parts[1],
        json!({"inlineData": {"mimeType": "image/png", "data": b64}})
    );
    assert_eq!(
        parts[2],
        json!({"fileData": {"mimeType": "image/png", "fileUri": files}})
    );
    assert_eq!(
        parts[3],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/dog.jpg"}})
    );
}

#[tokio::test]
async fn vertex_passes_http_images_by_reference() {
    let emu = emulator().await;
    let p = vertex(emu.addr, &credentials(&format!("http://{}/token", emu.addr))).unwrap();
    let url = "http://127.0.0.1:1/cat.jpg";
    p.complete(&target("gemini-2.0-flash"), &with_images(&[url]))
        .await
        .unwrap();
    let sent = recorded(&emu).await;
    let call = sent
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.contains(":generateContent")))
        .unwrap();
    assert_eq!(
        call["body"]["contents"][0]["parts"][1],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": url}})
    );
}

fn embed_request(inputs: Vec<llmgw_proto::EmbeddingInput>, dimensions: Option<u32>) -> EmbeddingsRequest {
    EmbeddingsRequest {
        model: "x".into(),
        inputs,
        dimensions,
        extra_json: Some(r#"{"taskType":"RETRIEVAL_DOCUMENT"}"#.into()),
        ..EmbeddingsRequest::default()
    }
}

fn text_input(t: &str) -> llmgw_proto::EmbeddingInput {
    llmgw_proto::EmbeddingInput {
        value: Some(embedding_input::Value::Text(t.into())),
    }
}

#[tokio::test]
async fn embeds_on_ai_studio() {
    let emu = emulator().await;
    let p = provider(emu.addr);
    let t = target("text-embedding-004");
    let r = p
        .embed(
            &t,
            &embed_request(vec![text_input("alpha"), text_input("beta!")], Some(16)),
        )
        .await
        .unwrap();
    assert_eq!(r.data.len(), 2);
    assert_eq!((r.data[1].index, r.data[1].vector.len()), (1, 16));
    let norm: f32 = r.data[0].vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
    let u = r.usage.unwrap();
    assert_eq!((u.prompt_tokens, u.estimated), (4, true));
    let sent = recorded(&emu).await;
    assert_eq!(
        sent[0]["path"],
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    );
    assert_eq!(
        sent[0]["body"]["requests"][1],
        json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": "beta!"}]},
            "outputDimensionality": 16, "taskType": "RETRIEVAL_DOCUMENT"})
    );

    // token ids are refused before anything is sent
    let tokens = llmgw_proto::EmbeddingInput {
        value: Some(embedding_input::Value::Tokens(llmgw_proto::TokenIds {
            ids: vec![1],
        })),
    };
    let e = p.embed(&t, &embed_request(vec![tokens], None)).await.unwrap_err();
    assert_eq!((e.http_status(), e.param()), (400, Some("input")));
    // a chat model: Gemini's 404 comes back
    let e = p
        .embed(
            &target("gemini-2.0-flash"),
            &embed_request(vec![text_input("x")], None),
        )
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 404, "{}", e.message());
    assert_eq!(recorded(&emu).await.len(), 2);
}

#[tokio::test]
async fn embeds_on_vertex_ai() {
    let emu = emulator().await;
    let vx = vertex(emu.addr, &credentials(&format!("http://{}/token", emu.addr))).unwrap();
    let mut req = embed_request(vec![text_input("alpha"), text_input("beta!")], Some(8));
    req.extra_json = Some(r#"{"task_type":"RETRIEVAL_QUERY"}"#.into());
    let r = vx.embed(&target("text-embedding-005"), &req).await.unwrap();
    assert_eq!((r.data.len(), r.data[1].vector.len()), (2, 8));
    let u = r.usage.unwrap();
    assert_eq!((u.prompt_tokens, u.estimated), (4, false), "counted by vertex");
    let sent = recorded(&emu).await;
    let call = sent
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with(":predict")))
        .unwrap();
    assert_eq!(
        call["path"],
        "/v1/projects/proj-1/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    );
    assert_eq!(
        call["body"],
        json!({"instances": [{"content": "alpha", "task_type": "RETRIEVAL_QUERY"},
            {"content": "beta!", "task_type": "RETRIEVAL_QUERY"}],
            "parameters": {"outputDimensionality": 8}})
    );
    // The same unit vector as every emulator gives for the same text.
    let studio = provider(emu.addr)
        .embed(
            &target("text-embedding-004"),
            &embed_request(vec![text_input("alpha")], Some(8)),
        )
        .await
        .unwrap();
    assert_eq!(studio.data[0].vector, r.data[0].vector);
}
