//! Azure OpenAI, Mistral, Ollama and an OpenAI-compatible host row through the whole
//! gateway (one process), each against its emulator: plain, streaming with usage and cost,
//! tools (a round trip and streamed calls), `json_object`, unsupported parameters, an
//! upstream error, and the provider credential in the provider's own header.

use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Gateway, Shape, chunks, user};

const PROVIDERS: &str = r#"  - name: az
    type: azure-openai
    base_url: http://{emu}
    api_key: ${EMU_KEY}
  - name: azad
    type: azure-openai
    base_url: http://{emu}
    azure_ad_token: ${EMU_KEY}
    api_version: 2025-01-01-preview
  - name: mi
    type: mistral
    base_url: http://{emu}/mistral/v1
    api_key: ${EMU_KEY}
  - name: ol
    type: ollama
    base_url: http://{emu}
    api_key: ${EMU_KEY}
  - name: gq
    type: groq
    base_url: http://{emu}/v1
    api_key: ${EMU_KEY}
"#;

const MODELS: &str = r#"  - name: az-model
    target: az/my-deployment
    price: { input_per_mtok: 1.0, output_per_mtok: 2.0 }
  - name: azad-model
    target: azad/my-deployment
  - name: mi-model
    target: mi/mistral-small-latest
    price: { input_per_mtok: 1.0, output_per_mtok: 2.0 }
  - name: ol-model
    target: ol/llama3.2
    price: { input_per_mtok: 1.0, output_per_mtok: 2.0 }
  - name: gq-model
    target: gq/llama-3.1-8b-instant
"#;

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// What every provider must do; `path` is where the emulator must have been called.
async fn common(gw: &Gateway, model: &str, provider: &str, path: &str) {
    // ---- plain
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": user("hello gateway")}),
        )
        .await;
    assert_eq!(status, 200, "{model}: {body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "You said: hello gateway",
        "{model}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["metadata"]["used_provider"], provider);
    let u = &body["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_f64().unwrap(),
        u["completion_tokens"].as_f64().unwrap(),
    );
    assert!(p > 0.0 && c > 0.0, "{model}: {u}");
    let up = gw.last_upstream().await;
    assert!(
        up["path"].as_str().unwrap().starts_with(path),
        "{model}: {}",
        up["path"]
    );
    assert!(!up.to_string().contains(&gw.key), "client key leaked upstream");

    // ---- streaming with usage: text, usage with cost, [DONE]
    let events = gw
        .stream(
            &json!({"model": model, "messages": user("stream me please"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    let cs = chunks(&events);
    let text: String = cs
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()))
        .collect();
    assert_eq!(text, "You said: stream me please", "{model}");
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{model}: {last}");
    let u = &last["usage"];
    let want = u["prompt_tokens"].as_f64().unwrap() * 1.0 / 1e6
        + u["completion_tokens"].as_f64().unwrap() * 2.0 / 1e6;
    assert!(
        (u["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{model}: {u}"
    );
    assert!(
        cs.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"),
        "{model}"
    );

    // ---- tools: a call, then the tool result
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": user("weather in Paris?"), "tools": tools()}),
        )
        .await;
    assert_eq!(status, 200, "{model}: {body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{model}");
    let call = body["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{model}: {args}");
    let followup = json!({"model": model, "tools": tools(), "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"}
    ]});
    let (status, _, body) = gw.post("/v1/chat/completions", &followup).await;
    assert_eq!(status, 200, "{model}: {body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "Tool result: sunny, 21C",
        "{model}"
    );

    // ---- streamed tool calls reassemble into valid JSON
    let events = gw
        .stream(&json!({"model": model, "messages": user("weather?"), "tools": tools(), "stream": true}))
        .await;
    let cs = chunks(&events);
    let mut name = String::new();
    let mut arguments = String::new();
    for c in &cs {
        for t in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            name.push_str(t["function"]["name"].as_str().unwrap_or(""));
            arguments.push_str(t["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name, "get_weather", "{model}");
    let args: Value = serde_json::from_str(&arguments).unwrap();
    assert!(args["city"].is_string(), "{model}: {args}");
    assert!(
        cs.iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"),
        "{model}"
    );

    // ---- json_object
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": user("answer in json"),
                "response_format": {"type": "json_object"}}),
        )
        .await;
    assert_eq!(status, 200, "{model}: {body}");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(content.is_object(), "{model}: {content}");
}

/// A 400 naming `param` and the provider, and nothing sent upstream.
async fn refused(gw: &Gateway, body: Value, param: &str, provider: &str) {
    let before = gw.upstream_requests().await.len();
    let (status, _, err) = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], param, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("`{provider}`")), "{message}");
    assert_eq!(
        gw.upstream_requests().await.len(),
        before,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn azure_mistral_ollama_and_a_compatible_host() {
    let gw = Gateway::start_with(Shape::All, PROVIDERS, MODELS).await;

    // ---- Azure OpenAI
    common(
        &gw,
        "az-model",
        "az",
        "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21",
    )
    .await;
    gw.post(
        "/v1/chat/completions",
        &json!({"model": "az-model", "messages": user("hi")}),
    )
    .await;
    let up = gw.last_upstream().await;
    assert_eq!(up["headers"]["api-key"], EMU_KEY);
    assert!(up["headers"].get("authorization").is_none(), "{up}");
    assert!(
        up["body"].get("model").is_none(),
        "azure takes the deployment: {up}"
    );
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "azad-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let up = gw.last_upstream().await;
    assert_eq!(up["headers"]["authorization"], format!("Bearer {EMU_KEY}"));
    assert!(up["headers"].get("api-key").is_none());
    assert!(
        up["path"]
            .as_str()
            .unwrap()
            .ends_with("?api-version=2025-01-01-preview")
    );
    // A filtered prompt: Azure's 400 content_filter, passed on clearly.
    let (status, _, err) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "az-model", "messages": user("[emu:content_filter] something bad")}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`az`")
            && message.contains("refused by azure's content filter")
            && message.contains("content management policy"),
        "{message}"
    );
    assert_eq!(err["error"]["param"], "messages", "{err}");
    // A filtered answer: finish_reason content_filter.
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "az-model", "messages": user("hi [emu:finish=content_filter]")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");

    // ---- Mistral
    common(&gw, "mi-model", "mi", "/mistral/v1/chat/completions").await;
    let up = gw.last_upstream().await;
    assert_eq!(up["headers"]["authorization"], format!("Bearer {EMU_KEY}"));
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "mi-model", "messages": user("weather?"), "tools": tools(),
                "tool_choice": "required", "seed": 42, "max_completion_tokens": 50,
                "safe_prompt": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = &gw.last_upstream().await["body"];
    assert_eq!(sent["tool_choice"], "any", "{sent}");
    assert_eq!(sent["random_seed"], 42, "{sent}");
    assert_eq!(sent["max_tokens"], 50, "{sent}");
    assert_eq!(sent["safe_prompt"], true, "{sent}");
    assert!(sent.get("seed").is_none() && sent.get("stream_options").is_none());
    for (param, value) in [
        ("logit_bias", json!({"1": 2})),
        ("logprobs", json!(true)),
        ("user", json!("u-1")),
    ] {
        let mut body = json!({"model": "mi-model", "messages": user("hi")});
        body[param] = value;
        refused(&gw, body, param, "mi").await;
    }
    // Mistral's own error shapes are read: a 400, and a 422 naming the field.
    let (status, _, err) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "mi-model", "messages": user("[emu:status=400] hi")}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider `mi` rejected the request (400): Emulated error"),
        "{err}"
    );
    let (status, _, err) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "mi-model", "messages": user("hi"), "made_up_field": 1}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["param"], "made_up_field", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Extra inputs are not permitted"),
        "{err}"
    );
    // Another provider's tool-call ids become ids Mistral takes, call and result alike.
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "mi-model", "tools": tools(), "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_Xy12ab34cd56", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_Xy12ab34cd56", "content": "sunny"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = &gw.last_upstream().await["body"]["messages"];
    let id = sent[1]["tool_calls"][0]["id"].as_str().unwrap();
    assert_eq!(id.len(), 9, "{sent}");
    assert_eq!(sent[2]["tool_call_id"], id);

    // ---- Ollama
    common(&gw, "ol-model", "ol", "/api/chat").await;
    let up = gw.last_upstream().await;
    assert_eq!(up["headers"]["authorization"], format!("Bearer {EMU_KEY}"));
    assert_eq!(up["body"]["format"], "json");
    refused(
        &gw,
        json!({"model": "ol-model", "messages": user("hi"), "n": 2}),
        "n",
        "ol",
    )
    .await;
    refused(
        &gw,
        json!({"model": "ol-model", "messages": user("hi"), "logprobs": true}),
        "logprobs",
        "ol",
    )
    .await;
    // http(s) images are fetched through the guard, which refuses the
    // loopback emulator (listening, so only the guard stops it).
    refused(
        &gw,
        json!({"model": "ol-model", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("http://{}/cat.png", gw.emu.addr)}}]}]}),
        "messages[0].content[0].image_url",
        "ol",
    )
    .await;
    let (_, _, err) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "ol-model", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("http://localhost:{}/cat.png", gw.emu.addr.port())}}]}]}),
        )
        .await;
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot fetch the image url: its host is a loopback address"),
        "{err}"
    );
    refused(
        &gw,
        json!({"model": "ol-model", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}]}]}),
        "messages[0].content[0].image_url",
        "ol",
    )
    .await;
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "ol-model", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}],
                "max_tokens": 30, "temperature": 0.2, "seed": 1, "stop": ["zzz"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = &gw.last_upstream().await["body"];
    assert_eq!(sent["messages"][0]["images"], json!(["aGVsbG8="]));
    assert_eq!(
        sent["options"],
        json!({"temperature": 0.2, "num_predict": 30, "seed": 1, "stop": ["zzz"]})
    );
    let (status, _, err) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "ol-model", "messages": user("[emu:status=404] hi")}),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`ol`") && message.contains("llama3.2"),
        "{message}"
    );

    // ---- an OpenAI-compatible host row: groq refuses n > 1
    let (status, _, body) = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "gq-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    refused(
        &gw,
        json!({"model": "gq-model", "messages": user("hi"), "n": 2}),
        "n",
        "gq",
    )
    .await;
}

/// The native stream translations also cross gRPC intact (five processes).
#[tokio::test]
async fn azure_mistral_ollama_streams_across_five_processes() {
    let gw = Gateway::start_with(Shape::Split, PROVIDERS, MODELS).await;
    for model in ["ol-model", "mi-model", "az-model"] {
        let events = gw
            .stream(
                &json!({"model": model, "messages": user("split stream"), "stream": true,
                "stream_options": {"include_usage": true}}),
            )
            .await;
        let cs = chunks(&events);
        let text: String = cs
            .iter()
            .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()))
            .collect();
        assert_eq!(text, "You said: split stream", "{model}");
        let last = cs.last().unwrap();
        assert_eq!(last["choices"], json!([]), "{model}: {last}");
        assert!(
            last["usage"]["cost_usd"].as_f64().unwrap() > 0.0,
            "{model}: {last}"
        );
    }
}
