use std::collections::HashMap;

use futures_util::StreamExt as _;
use llmgw_kit::config::Config;
use llmgw_proto::{
    ContentPart, ContentParts, FunctionDef, ImageUrl, JsonSchemaFormat, ResponseFormat, Stop, Tool,
    ToolChoice,
};
use serde_json::json;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn provider(base_url: &str) -> Result<Ollama, Box<dyn std::error::Error>> {
    let text = format!(
        "data_dir: /tmp\nproviders:\n  - name: local\n    type: ollama\n    base_url: {base_url}\n    api_key: ${{KEY}}\nmodels: []\n"
    );
    let env = HashMap::from([("KEY".to_owned(), "k-1".to_owned())]);
    let config = Config::parse(&text, "test.yaml", &env).map_err(|e| e.message)?;
    let p = config.providers.first().ok_or("no provider")?;
    Ok(Ollama::new(p, crate::http::client()?)?)
}

fn target(model: &str) -> Target {
    Target {
        model: model.to_owned(),
        ..Target::default()
    }
}

fn text(role: Role, t: &str) -> Message {
    Message {
        role: role as i32,
        content: Some(llmgw_proto::Content {
            value: Some(content::Value::Text(t.to_owned())),
        }),
        ..Message::default()
    }
}

fn user(t: &str) -> ChatRequest {
    ChatRequest {
        model: "m".to_owned(),
        messages: vec![text(Role::User, t)],
        ..ChatRequest::default()
    }
}

fn weather_tool() -> Tool {
    Tool {
        r#type: "function".to_owned(),
        function: Some(FunctionDef {
            name: "get_weather".to_owned(),
            description: Some("weather".to_owned()),
            parameters_json: Some(
                r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.to_owned(),
            ),
            strict: None,
        }),
    }
}

#[test]
fn writes_the_native_body() -> TestResult {
    let p = provider("http://127.0.0.1:1")?;
    let mut req = user("hi");
    req.messages.insert(0, text(Role::Developer, "be brief"));
    req.messages[1].content = Some(llmgw_proto::Content {
        value: Some(content::Value::Parts(ContentParts {
            parts: vec![
                ContentPart {
                    part: Some(content_part::Part::Text("what is this?".to_owned())),
                },
                ContentPart {
                    part: Some(content_part::Part::ImageUrl(ImageUrl {
                        url: "data:image/png;base64,aGVsbG8=".to_owned(),
                        detail: None,
                    })),
                },
            ],
        })),
    });
    req.messages.push(Message {
        role: Role::Assistant as i32,
        tool_calls: vec![ToolCall {
            id: "call_1".to_owned(),
            r#type: "function".to_owned(),
            function: Some(FunctionCall {
                name: "get_weather".to_owned(),
                arguments: r#"{"city":"Paris"}"#.to_owned(),
            }),
        }],
        ..Message::default()
    });
    req.messages.push(Message {
        tool_call_id: Some("call_1".to_owned()),
        ..text(Role::Tool, "sunny")
    });
    req.tools = vec![weather_tool()];
    req.temperature = Some(0.5);
    req.max_tokens = Some(9);
    req.seed = Some(3);
    req.stop = Some(Stop {
        sequences: vec!["END".to_owned()],
        single: true,
    });
    req.reasoning_effort = Some("low".to_owned());
    req.response_format = Some(ResponseFormat {
        format: Some(response_format::Format::JsonObject(true)),
    });
    let body: Value = serde_json::from_slice(&p.body(&target("llama3.2"), &req, true)?)?;
    assert_eq!(
        body,
        json!({
            "model": "llama3.2",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is this?", "images": ["aGVsbG8="]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                "parameters": {"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
            "format": "json",
            "options": {"temperature": 0.5, "num_predict": 9, "stop": ["END"], "seed": 3},
            "stream": true,
            "think": true
        })
    );

    let mut req = user("hi");
    req.response_format = Some(ResponseFormat {
        format: Some(response_format::Format::JsonSchema(JsonSchemaFormat {
            name: "x".to_owned(),
            schema_json: Some(r#"{"type":"object"}"#.to_owned()),
            ..JsonSchemaFormat::default()
        })),
    });
    let body: Value = serde_json::from_slice(&p.body(&target("m"), &req, false)?)?;
    assert_eq!(body["format"], json!({"type": "object"}));
    assert_eq!(body["stream"], false);
    assert!(body.get("options").is_none());
    Ok(())
}

#[test]
fn refuses_what_ollama_lacks() -> TestResult {
    let p = provider("http://127.0.0.1:1")?;
    type Edit = fn(&mut ChatRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("n", |r| r.n = Some(2)),
        ("logprobs", |r| r.logprobs = Some(true)),
        ("logit_bias", |r| r.logit_bias_json = Some("{}".to_owned())),
        ("tool_choice", |r| {
            r.tool_choice = Some(ToolChoice {
                choice: Some(tool_choice::Choice::Mode(ToolChoiceMode::Required as i32)),
            });
        }),
        ("messages[0].content[0].image_url", |r| {
            r.messages[0].content = Some(llmgw_proto::Content {
                value: Some(content::Value::Parts(ContentParts {
                    parts: vec![ContentPart {
                        part: Some(content_part::Part::ImageUrl(ImageUrl {
                            url: "ftp://example.com/cat.png".to_owned(),
                            detail: None,
                        })),
                    }],
                })),
            });
        }),
    ];
    for (param, edit) in cases {
        let mut req = user("hi");
        edit(&mut req);
        let err = p.body(&target("m"), &req, false).err().ok_or(param)?;
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(err.param(), Some(param));
        assert!(err.message().contains("`local` (ollama)"), "{}", err.message());
    }
    Ok(())
}

#[test]
fn reads_a_response_with_tool_calls() -> TestResult {
    let body = br#"{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"",
        "tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},
        "done":true,"done_reason":"stop","prompt_eval_count":12,"eval_count":5}"#;
    let r = response(body)?;
    let choice = r.choices.first().ok_or("no choice")?;
    assert_eq!(choice.finish_reason, FinishReason::ToolCalls as i32);
    let m = choice.message.as_ref().ok_or("no message")?;
    assert!(m.content.is_none());
    let f = m.tool_calls[0].function.as_ref().ok_or("no function")?;
    assert_eq!(
        (f.name.as_str(), f.arguments.as_str()),
        ("get_weather", r#"{"city":"Paris"}"#)
    );
    assert!(m.tool_calls[0].id.starts_with("call_"));
    let u = r.usage.ok_or("no usage")?;
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (12, 5, 17)
    );
    Ok(())
}

#[test]
fn converts_the_error_object() {
    let e = openai_error(br#"{"error":"model \"x\" not found, try pulling it first"}"#).unwrap_or_default();
    let parsed = llmgw_kit::openai::parse_upstream_error(&e).map(|u| u.message);
    assert_eq!(
        parsed.as_deref(),
        Some("model \"x\" not found, try pulling it first")
    );
}

async fn emulator() -> Result<(llmgw_emulators::Emulator, Ollama), Box<dyn std::error::Error>> {
    let emu = llmgw_emulators::spawn(llmgw_emulators::Options {
        api_key: Some("k-1".to_owned()),
        record: true,
    })
    .await?;
    let p = provider(&format!("http://{}", emu.addr))?;
    Ok((emu, p))
}

#[tokio::test]
async fn against_the_emulator() -> TestResult {
    let (_emu, p) = emulator().await?;

    // plain
    let r = p.complete(&target("llama3.2"), &user("hello there")).await?;
    let m = r.choices[0].message.as_ref().ok_or("no message")?;
    assert_eq!(
        m.content.as_ref().and_then(|c| c.value.clone()),
        Some(content::Value::Text("You said: hello there".to_owned()))
    );
    assert_eq!(r.choices[0].finish_reason, FinishReason::Stop as i32);
    assert!(r.usage.is_some_and(|u| u.completion_tokens == 4));

    // stream: role, words, finish, usage
    let chunks: Vec<ChatChunk> = p
        .stream(&target("llama3.2"), &user("hello there"))
        .await?
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let text: String = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.as_ref()?.content.clone())
        .collect();
    assert_eq!(text, "You said: hello there");
    let first = chunks.first().ok_or("no chunk")?;
    assert_eq!(
        first.choices[0].delta.as_ref().and_then(|d| d.role),
        Some(Role::Assistant as i32)
    );
    let last = chunks.last().ok_or("no chunk")?;
    assert!(last.choices.is_empty());
    assert!(
        last.usage
            .is_some_and(|u| u.prompt_tokens > 0 && u.completion_tokens == 4)
    );
    let finish = &chunks[chunks.len() - 2].choices[0];
    assert_eq!(finish.finish_reason, FinishReason::Stop as i32);

    // streamed tool call
    let mut req = user("weather?");
    req.tools = vec![weather_tool()];
    let chunks: Vec<ChatChunk> = p
        .stream(&target("llama3.2"), &req)
        .await?
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let call = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.as_ref())
        .flat_map(|d| &d.tool_calls)
        .next()
        .ok_or("no tool call")?;
    assert_eq!(call.name.as_deref(), Some("get_weather"));
    let args: Value = serde_json::from_str(call.arguments.as_deref().unwrap_or(""))?;
    assert!(args["city"].is_string());
    assert!(
        chunks
            .iter()
            .flat_map(|c| &c.choices)
            .any(|c| c.finish_reason == FinishReason::ToolCalls as i32)
    );

    // the model is missing
    let err = p
        .complete(&target("nope"), &user("[emu:status=404] hi"))
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(err.code(), ErrorCode::UpstreamRejected);
    assert_eq!(err.http_status(), 404);
    assert_eq!(err.param(), Some("model"));
    assert!(
        err.message().contains("model \"nope\" not found"),
        "{}",
        err.message()
    );

    // a stream that breaks off
    let mut stream = p
        .stream(&target("m"), &user("[emu:abort_mid_stream] [emu:words=20] go"))
        .await?;
    let mut saw_error = false;
    while let Some(item) = stream.next().await {
        if item.is_err() {
            saw_error = true;
        }
    }
    assert!(saw_error);
    Ok(())
}

fn state() -> StreamState {
    StreamState {
        peer: Peer::new("local", None),
        id: "chatcmpl-x".to_owned(),
        created: 1,
        buf: Vec::new(),
        pending: VecDeque::new(),
        started: false,
        tool_calls: 0,
        finished: false,
        failed: None,
    }
}

#[test]
fn ndjson_lines_split_anywhere() -> TestResult {
    let body = concat!(
        r#"{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}"#,
        "\n",
        r#"{"model":"m","message":{"role":"assistant","content":"lo","thinking":"hmm"},"done":false}"#,
        "\n",
        r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","prompt_eval_count":3,"eval_count":2}"#,
        "\n",
    );
    for split in [1, 7, 50, body.len()] {
        let mut s = state();
        for piece in body.as_bytes().chunks(split) {
            s.buf.extend_from_slice(piece);
            s.lines()?;
        }
        assert!(s.finished);
        let chunks: Vec<ChatChunk> = s.pending.drain(..).collect();
        let delta = |i: usize| chunks[i].choices[0].delta.clone().unwrap_or_default();
        assert_eq!(delta(0).role, Some(Role::Assistant as i32));
        assert_eq!(delta(1).content.as_deref(), Some("Hel"));
        assert_eq!(delta(2).reasoning.as_deref(), Some("hmm"));
        assert_eq!(delta(3).content.as_deref(), Some("lo"));
        assert_eq!(chunks[4].choices[0].finish_reason, FinishReason::Length as i32);
        assert!(chunks[5].choices.is_empty());
        assert_eq!(chunks[5].usage.map(|u| u.total_tokens), Some(5));
        assert_eq!(chunks.len(), 6);
    }
    Ok(())
}

#[test]
fn an_error_line_ends_the_stream() {
    let mut s = state();
    s.buf
        .extend_from_slice(b"{\"error\":\"an error was encountered while running the model\"}\n");
    let err = s.lines().err();
    assert!(
        err.as_ref().is_some_and(
            |e| e.code() == ErrorCode::UpstreamError && e.message().contains("an error was encountered")
        ),
        "{err:?}"
    );
}

/// Found by the `ollama_decode` fuzz target: an error line that came in the
/// same read as the lines before it dropped their chunks, so what a client
/// saw depended on how the network cut the body.
#[tokio::test]
async fn an_error_line_comes_after_the_lines_before_it_however_the_body_is_cut() {
    let body: &[u8] = include_bytes!("../../../../../fuzz/corpus/ollama_decode/regression-error-after-lines");
    for size in [1, 7, body.len()] {
        let pieces: Vec<reqwest::Result<Bytes>> =
            body.chunks(size).map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        let items: Vec<_> = decode_stream(futures_util::stream::iter(pieces), Peer::new("local", None))
            .collect()
            .await;
        let contents: Vec<_> = items
            .iter()
            .map(|i| match i {
                Ok(c) => c.choices[0].delta.as_ref().and_then(|d| d.content.clone()),
                Err(e) => Some(e.message().to_owned()),
            })
            .collect();
        assert_eq!(
            contents,
            [
                Some(String::new()),
                Some("Hel".to_owned()),
                Some("provider `local`: out of memory".to_owned())
            ],
            "cut into {size}-byte pieces"
        );
        assert!(items[2].is_err());
    }
}

fn image_request(url: &str) -> ChatRequest {
    let mut req = user("what is it?");
    req.messages[0].content = Some(llmgw_proto::Content {
        value: Some(content::Value::Parts(ContentParts {
            parts: vec![
                ContentPart {
                    part: Some(content_part::Part::Text("what is it?".to_owned())),
                },
                ContentPart {
                    part: Some(content_part::Part::ImageUrl(ImageUrl {
                        url: url.to_owned(),
                        detail: None,
                    })),
                },
            ],
        })),
    });
    req
}

/// A local server answering `GET /cat.png` with a PNG.
async fn image_server() -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let png: &'static [u8] = b"\x89PNG\r\n\x1a\nrest";
    let app = axum::Router::new().route(
        "/cat.png",
        axum::routing::get(move || async move { ([("content-type", "image/png")], png) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::test]
async fn fetches_and_inlines_an_http_image() -> TestResult {
    use base64::Engine as _;
    let (emu, mut p) = emulator().await?;
    let images = image_server().await?;
    let url = format!("http://{images}/cat.png");

    // The production guard refuses the loopback image server.
    let err = p
        .complete(&target("llava"), &image_request(&url))
        .await
        .err()
        .ok_or("fetched from loopback")?;
    assert_eq!(err.http_status(), 400);
    assert_eq!(err.param(), Some("messages[0].content[1].image_url"));
    assert!(err.message().contains("loopback"), "{}", err.message());

    // With the test allowance the image is fetched and sent as base64.
    p.fetcher = crate::fetch::Fetcher::for_tests(1 << 20, Duration::from_secs(5));
    p.complete(&target("llava"), &image_request(&url)).await?;
    let stream = p.stream(&target("llava"), &image_request(&url)).await?;
    assert!(stream.collect::<Vec<_>>().await.iter().all(Result::is_ok));
    let recorded: Value = serde_json::from_slice(
        &reqwest::get(format!("http://{}/_emu/requests", emu.addr))
            .await?
            .bytes()
            .await?,
    )?;
    let sent: Vec<&Value> = recorded
        .as_array()
        .ok_or("no list")?
        .iter()
        .filter(|r| r["path"] == "/api/chat")
        .collect();
    assert_eq!(sent.len(), 2, "the refused request never reached ollama");
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nrest");
    for r in sent {
        assert_eq!(r["body"]["messages"][0]["images"], json!([b64]));
        assert_eq!(r["body"]["messages"][0]["content"], "what is it?");
    }
    Ok(())
}

fn embed_request(texts: &[&str], single: bool, dimensions: Option<u32>) -> EmbeddingsRequest {
    EmbeddingsRequest {
        model: "m".to_owned(),
        inputs: texts
            .iter()
            .map(|t| llmgw_proto::EmbeddingInput {
                value: Some(embedding_input::Value::Text((*t).to_owned())),
            })
            .collect(),
        single,
        dimensions,
        extra_json: Some(r#"{"truncate":false}"#.to_owned()),
        ..EmbeddingsRequest::default()
    }
}

#[tokio::test]
async fn embeds_against_the_emulator() -> TestResult {
    let (emu, p) = emulator().await?;
    let r = p
        .embed(
            &target("nomic-embed-text"),
            &embed_request(&["alpha", "beta"], false, Some(32)),
        )
        .await?;
    assert_eq!(r.data.len(), 2);
    assert_eq!((r.data[1].index, r.data[1].vector.len()), (1, 32));
    assert!(
        r.usage
            .is_some_and(|u| u.prompt_tokens == 3 && u.total_tokens == 3)
    );
    let one = p
        .embed(
            &target("nomic-embed-text"),
            &embed_request(&["alpha"], true, None),
        )
        .await?;
    assert_eq!(one.data[0].vector.len(), 768);
    let recorded: Value = serde_json::from_slice(
        &reqwest::get(format!("http://{}/_emu/requests", emu.addr))
            .await?
            .bytes()
            .await?,
    )?;
    let sent: Vec<&Value> = recorded
        .as_array()
        .ok_or("no list")?
        .iter()
        .filter(|r| r["path"] == "/api/embed")
        .map(|r| &r["body"])
        .collect();
    assert_eq!(
        sent,
        [
            &json!({"model": "nomic-embed-text", "input": ["alpha", "beta"], "dimensions": 32, "truncate": false}),
            &json!({"model": "nomic-embed-text", "input": "alpha", "truncate": false}),
        ]
    );

    // token ids: ollama embeds text only
    let mut tokens = embed_request(&["x"], true, None);
    tokens.inputs[0].value = Some(embedding_input::Value::Tokens(llmgw_proto::TokenIds {
        ids: vec![1, 2],
    }));
    let err = p
        .embed(&target("nomic-embed-text"), &tokens)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!((err.http_status(), err.param()), (400, Some("input")));
    assert!(err.message().contains("`local` (ollama)"), "{}", err.message());

    // a model ollama does not have
    let err = p
        .embed(&target("missing-model"), &embed_request(&["x"], true, None))
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!((err.http_status(), err.param()), (404, Some("model")));
    Ok(())
}
