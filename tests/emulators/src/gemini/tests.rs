use serde_json::json;

use super::*;

fn parse(body: serde_json::Value) -> Result<GenerateRequest, GoogleError> {
    let req: GenerateRequest = serde_json::from_value(body)
        .map_err(|e| GoogleError::invalid(format!("Invalid JSON payload received. {e}")))?;
    req.validate()?;
    Ok(req)
}

#[test]
fn echoes_and_counts() -> Result<(), Box<dyn std::error::Error>> {
    let req = parse(json!({
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "generationConfig": {"candidateCount": 2, "maxOutputTokens": 3}
    }))
    .map_err(|e| e.message)?;
    let plan = plan(&req, "gemini-x", &IdGen::new()).map_err(|e| e.message)?;
    let out = completion(&plan);
    assert_eq!(
        out["candidates"][1]["content"]["parts"][0]["text"],
        "You said: hello"
    );
    assert_eq!(out["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(out["usageMetadata"]["candidatesTokenCount"], 6);
    Ok(())
}

#[test]
fn rejects_what_google_rejects() {
    let bad = [
        json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}),
        json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "temperatur": 1}),
        json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
        json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
               "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}}]}]}),
        json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
               "generationConfig": {"responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}}}),
    ];
    for body in bad {
        assert!(parse(body.clone()).is_err(), "accepted {body}");
    }
}

#[test]
fn calls_a_declared_function_and_streams_it() -> Result<(), Box<dyn std::error::Error>> {
    let req = parse(json!({
        "contents": [{"role": "user", "parts": [{"text": "weather?"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]
    }))
    .map_err(|e| e.message)?;
    let plan = plan(&req, "gemini-x", &IdGen::new()).map_err(|e| e.message)?;
    let events = stream_events(&plan);
    assert_eq!(events.len(), 1);
    let text = std::str::from_utf8(&events[0])?;
    assert!(
        text.starts_with("data: {") && text.ends_with("}\r\n\r\n"),
        "{text}"
    );
    assert!(
        text.contains(r#""functionCall":{"args":{"city":"Paris"},"name":"get_weather"}"#),
        "{text}"
    );
    assert!(text.contains("usageMetadata"));
    Ok(())
}

#[test]
fn keys_only_in_the_header() {
    let state = State::new(
        crate::Options {
            api_key: Some("k".into()),
            record: false,
        },
        Default::default(),
    );
    let mut h = HeaderMap::new();
    assert_eq!(
        check_auth(&state, Auth::ApiKey, None, &h).unwrap_err().status,
        403
    );
    h.insert("x-goog-api-key", HeaderValue::from_static("k"));
    assert!(check_auth(&state, Auth::ApiKey, Some("alt=sse"), &h).is_ok());
    assert_eq!(
        check_auth(&state, Auth::ApiKey, Some("alt=sse&key=k"), &h)
            .unwrap_err()
            .status,
        400,
        "a key in the URL is refused even when the header is right"
    );
    h.insert("x-goog-api-key", HeaderValue::from_static("wrong"));
    assert_eq!(
        check_auth(&state, Auth::ApiKey, None, &h).unwrap_err().status,
        400
    );
    // Vertex routes want an OAuth token from `/token`, not a key.
    assert_eq!(check_auth(&state, Auth::OAuth, None, &h).unwrap_err().status, 401);
    h.insert("authorization", HeaderValue::from_static("Bearer ya29.emu-abc"));
    assert!(check_auth(&state, Auth::OAuth, None, &h).is_ok());
}
