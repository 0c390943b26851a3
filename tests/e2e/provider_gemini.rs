//! `type: google` (Gemini on AI Studio) through the whole gateway: clients speak
//! OpenAI, the emulator speaks Gemini's `generateContent` and checks the wire.

use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Gateway, Shape, chunks, close, joined, user};

const PROVIDERS: &str =
    "  - name: gem\n    type: google\n    base_url: http://{emu}/v1beta\n    api_key: ${EMU_KEY}\n";
const MODELS: &str = "  - name: gemini-flash\n    target: gem/gemini-1.5-flash\n    price: { input_per_mtok: 0.075, output_per_mtok: 0.30 }\n";

async fn gateway() -> Gateway {
    Gateway::start_with(Shape::All, PROVIDERS, MODELS).await
}

/// Every streamed chunk before `[DONE]`, parsed.
#[tokio::test]
async fn gemini_chat_stream_usage_and_key_handling() {
    let gw = gateway().await;

    // ---- plain, with a system message, usage and cost
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello gemini"}
            ], "temperature": 0.3, "max_tokens": 40, "stop": ["END"], "seed": 7}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: hello gemini");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let u = &body["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_f64().unwrap(),
        u["completion_tokens"].as_f64().unwrap(),
    );
    assert!(p > 0.0 && c > 0.0, "{u}");
    assert!(
        close(u["cost_usd"].as_f64().unwrap(), p * 0.075 / 1e6 + c * 0.30 / 1e6),
        "{u}"
    );
    assert_eq!(body["metadata"]["used_provider"], "gem");
    assert_eq!(body["metadata"]["used_model"], "gemini-1.5-flash");

    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1beta/models/gemini-1.5-flash:generateContent");
    assert_eq!(
        up["body"]["systemInstruction"],
        json!({"parts": [{"text": "be brief"}]})
    );
    assert_eq!(
        up["body"]["contents"],
        json!([{"role": "user", "parts": [{"text": "hello gemini"}]}])
    );
    assert_eq!(
        up["body"]["generationConfig"],
        json!({"temperature": 0.3, "maxOutputTokens": 40, "stopSequences": ["END"], "seed": 7})
    );

    // ---- streaming with include_usage: text reassembles, usage with cost, [DONE]
    let events = gw
        .stream(
            &json!({"model": "gemini-flash", "messages": user("stream me please"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    let all = chunks(&events);
    assert_eq!(joined(&all, "content"), "You said: stream me please");
    assert_eq!(all[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(all.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let last = all.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let u = &last["usage"];
    assert!(close(
        u["cost_usd"].as_f64().unwrap(),
        u["prompt_tokens"].as_f64().unwrap() * 0.075 / 1e6
            + u["completion_tokens"].as_f64().unwrap() * 0.30 / 1e6
    ));
    assert_eq!(
        gw.last_upstream().await["path"],
        "/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse"
    );

    // ---- streaming without include_usage: no usage chunk reaches the client
    let events = gw
        .stream(&json!({"model": "gemini-flash", "messages": user("no usage"), "stream": true}))
        .await;
    for c in chunks(&events) {
        assert!(c.get("usage").is_none_or(Value::is_null), "usage leaked: {c}");
    }

    // ---- n=2: two candidates, two choices
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("twice"), "n": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[1]["message"]["content"], "You said: twice");
    assert_eq!(
        gw.last_upstream().await["body"]["generationConfig"]["candidateCount"],
        2
    );

    // ---- `google/<model>` (by provider type) and `@gem/<model>` (by slug)
    for model in ["google/gemini-2.0-flash", "@gem/gemini-2.0-flash"] {
        let (status, _, body) = gw
            .post(
                "/v1/chat/completions",
                &json!({"model": model, "messages": user("direct")}),
            )
            .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], "You said: direct");
        assert_eq!(
            gw.last_upstream().await["path"],
            "/v1beta/models/gemini-2.0-flash:generateContent"
        );
    }

    // ---- the key only ever went in x-goog-api-key: never in a URL, never the client's
    let seen = gw.upstream_requests().await;
    assert!(seen.len() >= 6);
    for r in &seen {
        assert_eq!(r["headers"]["x-goog-api-key"], EMU_KEY, "{r}");
        assert!(r["headers"].get("authorization").is_none(), "{r}");
        let path = r["path"].as_str().unwrap();
        assert!(!path.contains("key="), "{path}");
        assert!(!path.contains(EMU_KEY), "{path}");
        assert!(!r.to_string().contains(&gw.key), "client key leaked upstream");
    }
}

#[tokio::test]
async fn gemini_tools_images_and_formats() {
    let gw = gateway().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "strict": true,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": false}}}]);

    // ---- a tool call, then the tool result round trip
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("weather in Paris?"), "tools": tools,
                "tool_choice": "required"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let up = gw.last_upstream().await;
    assert_eq!(
        up["body"]["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    let params = &up["body"]["tools"][0]["functionDeclarations"][0]["parameters"];
    assert!(params.get("additionalProperties").is_none(), "{params}");

    let followup = json!({"model": "gemini-flash", "tools": tools, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"}
    ]});
    let (status, _, body) = gw.post("/v1/chat/completions", &followup).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        r#"Tool result: {"content":"sunny, 21C"}"#
    );
    let up = gw.last_upstream().await;
    assert_eq!(
        up["body"]["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]})
    );
    assert_eq!(
        up["body"]["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sunny, 21C"}}}]})
    );

    // ---- streamed tool calls reassemble into valid JSON
    let events = gw
        .stream(
            &json!({"model": "gemini-flash", "messages": user("weather?"), "tools": tools, "stream": true}),
        )
        .await;
    let (mut name, mut arguments) = (String::new(), String::new());
    let mut finish = None;
    for c in chunks(&events) {
        if let Some(tc) = c["choices"]
            .get(0)
            .and_then(|ch| ch["delta"]["tool_calls"].get(0))
        {
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            arguments.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = c["choices"].get(0).and_then(|ch| ch["finish_reason"].as_str()) {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(name, "get_weather");
    let args: Value = serde_json::from_str(&arguments).expect("streamed arguments are JSON");
    assert_eq!(args["city"], "Paris");
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    // ---- image parts: data URL inline, a Files API URI by reference (an
    // http(s) URL is fetched by the gateway's guard: see below)
    let files = "https://generativelanguage.googleapis.com/v1beta/files/cat.jpg";
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": files, "detail": "high"}}
            ]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: what is in these?"
    );
    let parts = &gw.last_upstream().await["body"]["contents"][0]["parts"];
    assert_eq!(
        parts[1],
        json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(
        parts[2],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": files}})
    );

    // ---- json_object and json_schema
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("as json"), "response_format": {"type": "json_object"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let parsed: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(parsed.is_object(), "{parsed}");
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
        "required": ["city", "temp"], "additionalProperties": false});
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("weather?"),
                "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": true}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let parsed: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        parsed["city"].is_string() && parsed["temp"].is_number(),
        "{parsed}"
    );
    let config = &gw.last_upstream().await["body"]["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseSchema"],
        json!({"type": "OBJECT", "required": ["city", "temp"],
            "properties": {"city": {"type": "STRING"}, "temp": {"type": "NUMBER"}}})
    );

    // ---- reasoning_effort: thoughts come back as reasoning, counted as reasoning tokens
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("think"), "reasoning_effort": "low"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: think");
    assert_eq!(
        gw.last_upstream().await["body"]["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 3, "{body}");

    // ---- a thinking model's function call comes back with its thought signature
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("weather, thinking"), "tools": tools,
                "reasoning_effort": "medium"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    let followup = json!({"model": "gemini-flash", "tools": tools, "messages": [
        {"role": "user", "content": "weather, thinking"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp\": 21}"}
    ]});
    let (status, _, body) = gw.post("/v1/chat/completions", &followup).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        r#"Tool result: {"temp":21}"#
    );
    let sent = &gw.last_upstream().await["body"]["contents"][1]["parts"][0];
    assert!(
        sent["thoughtSignature"].as_str().is_some_and(|s| !s.is_empty()),
        "{sent}"
    );
}

#[tokio::test]
async fn gemini_errors_and_unsupported_params() {
    let gw = gateway().await;
    let before = gw.upstream_requests().await.len();

    // ---- parameters Gemini cannot honour: 400 naming the param and the provider, nothing sent
    for (extra, param) in [
        (json!({"logit_bias": {"1234": -50}}), "logit_bias"),
        (
            json!({"parallel_tool_calls": false, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "parallel_tool_calls",
        ),
        (json!({"some_new_param": {"nested": true}}), "some_new_param"),
    ] {
        let mut body = json!({"model": "gemini-flash", "messages": user("hi")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, _, b) = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains("`gem`") && message.contains("google"), "{b}");
    }
    let (status, _, b) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "gopher://example.com/image.png"}}]}]}),
        )
        .await;
    assert_eq!(status, 400, "{b}");
    assert_eq!(b["error"]["param"], "messages[0].content[0].image_url", "{b}");
    // The guard is on: an http(s) image on a loopback host (the emulator
    // itself, which is listening) is refused, naming the param and why.
    for url in [
        format!("http://{}/v1beta/models", gw.emu.addr),
        format!("http://localhost:{}/cat.png", gw.emu.addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let (status, _, b) = gw
            .post(
                "/v1/chat/completions",
                &json!({"model": "gemini-flash", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": url}}]}]}),
            )
            .await;
        assert_eq!(status, 400, "{b}");
        assert_eq!(b["error"]["param"], "messages[0].content[1].image_url", "{b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`gem` (google)") && message.contains("cannot fetch the image url"),
            "{b}"
        );
        assert!(
            message.contains("loopback") || message.contains("link-local"),
            "{b}"
        );
    }
    assert_eq!(
        gw.upstream_requests().await.len(),
        before,
        "nothing reached the provider"
    );

    // ---- upstream failures, mapped
    let up = |text: &str| json!({"model": "gemini-flash", "messages": user(text)});
    let (s, h, b) = gw
        .post("/v1/chat/completions", &up("[emu:status=429] slow down"))
        .await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(
        h["retry-after"].to_str().unwrap(),
        "2",
        "RetryInfo becomes retry-after"
    );
    assert!(b["error"]["message"].as_str().unwrap().contains("gem"), "{b}");
    let (s, _, b) = gw
        .post("/v1/chat/completions", &up("[emu:status=500] boom"))
        .await;
    assert_eq!(s, 502, "{b}");
    let (s, _, b) = gw
        .post("/v1/chat/completions", &up("[emu:status=400] too long"))
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["param"], "messages", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context_length_exceeded"),
        "{b}"
    );
    let (s, _, b) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "google/not-a-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(s, 404, "an unknown upstream model is passed on as not found: {b}");
    assert_eq!(b["error"]["code"], "upstream_rejected", "{b}");
}

/// A throwaway key made for these tests (the emulator verifies with its public half).
const TEST_KEY_PEM: &str = include_str!("../emulators/src/gemini/test-service-account-key.pem");

#[tokio::test]
async fn vertex_ai_with_a_service_account() {
    let credentials = json!({
        "type": "service_account",
        "project_id": "proj-1",
        "private_key": TEST_KEY_PEM,
        "client_email": "gateway@proj-1.iam.gserviceaccount.com",
        "token_uri": "http://{emu}/token",
    })
    .to_string();
    let providers = format!(
        "  - name: vx\n    type: vertex-ai\n    base_url: http://{{emu}}/v1\n    project_id: proj-1\n    location: us-central1\n    credentials: '{credentials}'\n"
    );
    let models = "  - name: gemini-vertex\n    target: vx/gemini-2.0-flash\n    price: { input_per_mtok: 0.1, output_per_mtok: 0.4 }\n  - name: vertex-embed\n    target: vx/text-embedding-005\n    price: { input_per_mtok: 0.1, output_per_mtok: 0 }\n";
    let gw = Gateway::start_with(Shape::All, &providers, models).await;

    // Embeddings through `:predict`, tokens counted by Vertex AI.
    let (status, _, body) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "vertex-embed", "input": ["alpha", "beta"], "dimensions": 8}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(body["usage"]["prompt_tokens"], 3, "{body}");
    assert!(body["usage"].get("estimated").is_none(), "{body}");
    assert!(
        (body["usage"]["cost_usd"].as_f64().unwrap() - 3.0 * 0.1 / 1e6).abs() < 1e-15,
        "{body}"
    );
    let up = gw.last_upstream().await;
    assert!(
        up["path"]
            .as_str()
            .unwrap()
            .ends_with("/models/text-embedding-005:predict"),
        "{up}"
    );
    let (status, _, e) = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "vertex-embed", "input": [[1, 2]]}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("input")),
        "{e}"
    );

    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-vertex", "messages": user("hello vertex")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: hello vertex");
    assert!(body["usage"]["cost_usd"].as_f64().unwrap() > 0.0, "{body}");
    assert_eq!(body["metadata"]["used_provider"], "vx");

    let events = gw
        .stream(&json!({"model": "gemini-vertex", "messages": user("stream on vertex"), "stream": true}))
        .await;
    assert_eq!(joined(&chunks(&events), "content"), "You said: stream on vertex");

    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "vertex-ai/gemini-2.0-flash", "messages": user("by type")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let seen = gw.upstream_requests().await;
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths.iter().filter(|p| **p == "/token").count(),
        1,
        "one token, cached: {paths:?}"
    );
    assert_eq!(
        paths.last().copied(),
        Some(
            "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"
        )
    );
    for r in seen.iter().filter(|r| r["path"] != "/token") {
        assert!(
            r["headers"]["authorization"]
                .as_str()
                .unwrap()
                .starts_with("Bearer ya29.emu-"),
            "{r}"
        );
        assert!(!r.to_string().contains(&gw.key), "client key leaked upstream");
    }
}

#[tokio::test]
async fn gemini_split_shape() {
    // Five processes over gRPC: reasoning, tool calls and usage survive the hops.
    let gw = Gateway::start_with(Shape::Split, PROVIDERS, MODELS).await;
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemini-flash", "messages": user("split"), "reasoning_effort": "high"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: split");
    assert_eq!(
        body["choices"][0]["message"]["reasoning"], "Thinking about: split",
        "{body}"
    );
    let details = &body["usage"]["completion_tokens_details"];
    assert_eq!(details["reasoning_tokens"], 3, "{body}");
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let events = gw
        .stream(
            &json!({"model": "gemini-flash", "messages": user("find"), "tools": tools, "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    let all = chunks(&events);
    let call = all
        .iter()
        .find_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["tool_calls"].get(0))
                .cloned()
        })
        .expect("a streamed tool call");
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], r#"{"q":"Paris"}"#);
    assert!(all.last().unwrap()["usage"]["total_tokens"].as_u64().unwrap() > 0);
}
