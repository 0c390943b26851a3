//! OpenAI's pass-through endpoints through the gateway: legacy
//! `/v1/completions` (plain, several prompts, echo/suffix/logprobs,
//! streaming), `/v1/images/generations`, multipart `/v1/images/edits`,
//! `/v1/audio/transcriptions` and `/translations` in every format,
//! `/v1/audio/speech` streamed through, on OpenAI and Azure; the clear
//! refusals (a provider without the endpoint, a missing file, an oversized
//! upload, a policy), and the metering of each.

use serde_json::{Value, json};

use crate::harness::{Gateway, Shape, sse_data};

const PROVIDERS: &str = "  - name: az\n    type: azure-openai\n    base_url: http://{emu}\n    api_key: ${EMU_KEY}\n  - name: claude\n    type: anthropic\n    base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}\n";
const MODELS: &str = "  - name: instruct\n    target: emu/gpt-3.5-turbo-instruct\n    price: { input_per_mtok: 1.5, output_per_mtok: 2.0 }\n  - name: dall-e-2\n    target: emu/dall-e-2\n    price: { input_per_mtok: 0, output_per_mtok: 20000 }\n  - name: whisper-1\n    target: emu/whisper-1\n    price: { input_per_mtok: 100, output_per_mtok: 0 }\n  - name: tts-1\n    target: emu/tts-1\n    price: { input_per_mtok: 15, output_per_mtok: 0 }\n";

/// One multipart field: `(name, filename, content type, bytes)`.
type Field<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A multipart body by hand.
fn form(parts: &[Field<'_>]) -> (String, Vec<u8>) {
    let boundary = "e2e-boundary-7d1f";
    let mut out = Vec::new();
    for (name, filename, ct, data) in parts {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
        );
        if let Some(f) = filename {
            out.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = ct {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), out)
}

/// A WAV file of `secs` seconds of silence (16 kHz, 8-bit mono).
fn wav(secs: usize) -> Vec<u8> {
    let mut w = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
    w.resize(44, 0);
    w[28..32].copy_from_slice(&16_000u32.to_le_bytes());
    w.extend(std::iter::repeat_n(0u8, 16_000 * secs));
    w
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n0000";

async fn post_form(gw: &Gateway, key: &str, path: &str, parts: &[Field<'_>]) -> (u16, String, String) {
    let (ct, body) = form(parts);
    let r = gw
        .client
        .post(gw.url(path))
        .bearer_auth(key)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

fn param(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v["error"]["param"].as_str().map(str::to_owned)
}

async fn surface(shape: Shape) {
    let gw = Gateway::start_with(shape, PROVIDERS, MODELS).await;

    // ---- legacy completions
    let (s, h, v) = gw
        .post(
            "/v1/completions",
            &json!({"model": "instruct", "prompt": "Say this is a test", "max_tokens": 5}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "This is a test of");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(h["x-llmgw-provider"], "emu");
    assert_eq!(h["x-llmgw-model"], "gpt-3.5-turbo-instruct");
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1/completions");
    assert_eq!(
        up["body"],
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 5})
    );
    // Several prompts, echo, suffix and logprobs pass through.
    let (s, _, v) = gw
        .post(
            "/v1/completions",
            &json!({"model": "instruct", "prompt": ["a ", "b "], "max_tokens": 2, "echo": true, "suffix": "!", "logprobs": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["text"], "b This is!");
    assert!(v["choices"][0]["logprobs"]["tokens"].is_array(), "{v}");
    // Streaming: text_completion chunks, usage when asked, [DONE].
    let r = gw
        .client
        .post(gw.url("/v1/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "instruct", "prompt": "x", "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(r.headers()["x-llmgw-provider"], "emu");
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "This is a");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
    // Azure names the deployment in the URL.
    let (s, _, v) = gw
        .post(
            "/v1/completions",
            &json!({"model": "az/my-instruct", "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let up = gw.last_upstream().await;
    assert!(
        up["path"]
            .as_str()
            .unwrap()
            .starts_with("/openai/deployments/my-instruct/completions?api-version="),
        "{up}"
    );
    assert!(up["body"].get("model").is_none(), "{up}");
    // Clear refusals: no such endpoint at the provider, no prompt.
    let (s, _, e) = gw
        .post(
            "/v1/completions",
            &json!({"model": "claude/claude-3-5-haiku", "prompt": "x"}),
        )
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("model")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("claude"), "{e}");
    let (s, _, e) = gw.post("/v1/completions", &json!({"model": "instruct"})).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("prompt")), "{e}");

    // ---- images
    let (s, _, v) = gw
        .post(
            "/v1/images/generations",
            &json!({"model": "dall-e-2", "prompt": "a cat", "n": 2, "size": "256x256"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(v["data"][0]["url"].is_string(), "{v}");
    let (s, _, v) = gw
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a cat", "response_format": "b64_json"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["data"][0]["b64_json"].is_string(), "{v}");
    let (s, _, e) = gw
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a cat", "response_format": "gif"}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("response_format")),
        "{e}"
    );
    // An upstream refusal comes back as OpenAI's error, naming its param.
    let (s, _, e) = gw
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a cat", "size": "7x7"}),
        )
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("size")), "{e}");

    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/images/edits",
        &[
            ("image", Some("cat.png"), Some("image/png"), PNG),
            ("mask", Some("mask.png"), Some("image/png"), PNG),
            ("prompt", None, None, b"add a hat"),
            ("model", None, None, b"dall-e-2"),
            ("n", None, None, b"1"),
            ("size", None, None, b"512x512"),
            ("response_format", None, None, b"b64_json"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["data"][0]["b64_json"].is_string(), "{v}");
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], "/v1/images/edits");
    assert_eq!(up["body"]["files"]["image"]["filename"], "cat.png");
    assert_eq!(up["body"]["files"]["mask"]["bytes"], PNG.len());
    assert_eq!(up["body"]["fields"]["prompt"], "add a hat");
    assert_eq!(up["body"]["fields"]["model"], "dall-e-2");
    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/images/edits",
        &[("prompt", None, None, b"add a hat")],
    )
    .await;
    assert_eq!((s, param(&text).as_deref()), (400, Some("image")), "{text}");
    // Over `edge.max_body_bytes` (1 MiB here): 413 naming the field.
    let big = vec![0u8; 1_500_000];
    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/images/edits",
        &[
            ("prompt", None, None, b"x"),
            ("image", Some("big.png"), Some("image/png"), &big),
        ],
    )
    .await;
    assert_eq!((s, param(&text).as_deref()), (413, Some("image")), "{text}");

    // ---- audio in: every response format, with its content type
    let audio = wav(2);
    for (format, ct, check) in [
        ("json", "application/json", "\"text\":\"hello from the emulator\""),
        ("text", "text/plain", "hello from the emulator\n"),
        ("srt", "text/plain", "00:00:00,000 --> 00:00:02,000"),
        ("vtt", "text/plain", "WEBVTT"),
        ("verbose_json", "application/json", "\"duration\":2.0"),
    ] {
        let (s, got_ct, text) = post_form(
            &gw,
            &gw.key,
            "/v1/audio/transcriptions",
            &[
                ("file", Some("a.wav"), Some("audio/wav"), &audio),
                ("model", None, None, b"whisper-1"),
                ("response_format", None, None, format.as_bytes()),
            ],
        )
        .await;
        assert_eq!(s, 200, "{format}: {text}");
        assert!(got_ct.starts_with(ct), "{format}: {got_ct}");
        assert!(text.contains(check), "{format}: {text}");
    }
    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/audio/translations",
        &[
            ("file", Some("a.wav"), Some("audio/wav"), &audio),
            ("model", None, None, b"whisper-1"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(gw.last_upstream().await["path"], "/v1/audio/translations");
    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/audio/transcriptions",
        &[("model", None, None, b"whisper-1")],
    )
    .await;
    assert_eq!((s, param(&text).as_deref()), (400, Some("file")), "{text}");
    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/audio/transcriptions",
        &[
            ("model", None, None, b"whisper-1"),
            ("file", Some("big.wav"), Some("audio/wav"), &big),
        ],
    )
    .await;
    assert_eq!((s, param(&text).as_deref()), (413, Some("file")), "{text}");
    // Not multipart: 415.
    let (s, _, _) = gw
        .post("/v1/audio/transcriptions", &json!({"model": "whisper-1"}))
        .await;
    assert_eq!(s, 415);

    // ---- speech: the audio streamed through with its content type
    let input = "Hello there";
    let r = gw
        .client
        .post(gw.url("/v1/audio/speech"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "tts-1", "input": input, "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    let audio_out = r.bytes().await.unwrap();
    assert!(audio_out.starts_with(b"ID3"));
    assert_eq!(audio_out.len(), 6 + 8 * 64 * input.len());
    let (s, _, e) = gw
        .post("/v1/audio/speech", &json!({"model": "tts-1", "input": "x"}))
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("voice")), "{e}");

    // ---- Azure: images, transcriptions and speech at the deployment's URL
    let (s, _, v) = gw
        .post(
            "/v1/images/generations",
            &json!({"model": "az/dall-e-3", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["data"][0]["revised_prompt"].is_string(), "{v}");
    let (s, _, text) = post_form(
        &gw,
        &gw.key,
        "/v1/audio/transcriptions",
        &[
            ("file", Some("a.wav"), Some("audio/wav"), &audio),
            ("model", None, None, b"az/whisper"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let up = gw.last_upstream().await;
    assert!(
        up["path"]
            .as_str()
            .unwrap()
            .starts_with("/openai/deployments/whisper/audio/transcriptions?api-version="),
        "{up}"
    );
    assert!(up["body"]["fields"].get("model").is_none(), "{up}");
    let r = gw
        .client
        .post(gw.url("/v1/audio/speech"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "az/tts", "input": "hi", "voice": "alloy", "response_format": "wav"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    assert!(r.bytes().await.unwrap().starts_with(b"RIFF"));
    assert!(
        gw.last_upstream().await["path"]
            .as_str()
            .unwrap()
            .starts_with("/openai/deployments/tts/audio/speech?"),
    );

    // ---- metering, in each endpoint's units
    let usage = gw
        .usage_until("acme", |u| {
            let m = |name: &str| {
                u["by_model"]
                    .as_array()
                    .and_then(|a| a.iter().find(|m| m["model"] == name).cloned())
                    .unwrap_or(Value::Null)
            };
            m("tts-1")["input_tokens"] == 11
                && m("whisper-1")["input_tokens"] == 8
                && m("dall-e-2")["output_tokens"] == 4
        })
        .await;
    let m = |name: &str| {
        usage["by_model"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {usage}"))
    };
    // Speech: characters. Images: 2 + 1 + 1 made. Audio: 2 s from each
    // answer that names a duration (json, srt, vtt, verbose_json); a `text`
    // transcript and a translation's json carry none.
    assert_eq!(m("tts-1")["input_tokens"], input.len());
    assert!((m("tts-1")["cost_usd"].as_f64().unwrap() - input.len() as f64 * 15.0 / 1e6).abs() < 1e-12);
    assert_eq!(m("dall-e-2")["output_tokens"], 4);
    assert!(
        (m("dall-e-2")["cost_usd"].as_f64().unwrap() - 0.08).abs() < 1e-9,
        "{usage}"
    );
    assert_eq!(m("whisper-1")["input_tokens"], 8);
    assert!(
        m("instruct")["output_tokens"].as_u64().unwrap() >= 5 + 4 + 3,
        "{usage}"
    );

    // ---- a policy without the endpoint refuses it
    let admin = gw.key_with_role("acme", "admin").await;
    let (_, orgs) = gw.call(&admin, "GET", "/admin/v1/orgs", None).await;
    let orgs: Value = serde_json::from_str(&orgs).unwrap();
    let acme = orgs["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, k) = gw
        .call(
            &admin,
            "POST",
            &format!("/admin/v1/orgs/{acme}/keys"),
            Some(json!({"name": "chat-only"})),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let k: Value = serde_json::from_str(&k).unwrap();
    let (s, p) = gw
        .call(
            &admin,
            "PUT",
            &format!("/admin/v1/keys/{}/policy", k["id"].as_str().unwrap()),
            Some(json!({"allowed_endpoints": ["chat", "completions"], "max_tokens": 50})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    let member = k["key"].as_str().unwrap();
    let (s, text) = gw
        .call(
            member,
            "POST",
            "/v1/images/generations",
            Some(json!({"prompt": "a cat"})),
        )
        .await;
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("`images` endpoint"), "{text}");
    let (s, _, text) = post_form(
        &gw,
        member,
        "/v1/audio/transcriptions",
        &[
            ("file", Some("a.wav"), Some("audio/wav"), &audio),
            ("model", None, None, b"whisper-1"),
        ],
    )
    .await;
    assert_eq!(s, 403, "{text}");
    let (s, text) = gw
        .call(
            member,
            "POST",
            "/v1/completions",
            Some(json!({"model": "instruct", "prompt": "x"})),
        )
        .await;
    assert_eq!(s, 200, "{text}");
    let (s, text) = gw
        .call(
            member,
            "POST",
            "/v1/completions",
            Some(json!({"model": "instruct", "prompt": "x", "max_tokens": 51})),
        )
        .await;
    assert_eq!((s, param(&text).as_deref()), (403, Some("max_tokens")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surface_in_one_process() {
    surface(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surface_across_five_processes() {
    surface(Shape::Split).await;
}
