//! `POST /v1/images/generations` on `type: google` (AI Studio) and `type:
//! vertex-ai` through Imagen's `:predict`: OpenAI's parameters translated
//! (and the ones Imagen cannot honour refused by name before anything goes
//! upstream), the image bytes round-tripped, Google's errors and safety
//! filters in OpenAI's shape, each provider's own auth, and per-image
//! metering at config and catalog prices; one process and split.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::harness::{EMU_KEY, Gateway, Shape};

/// A throwaway key made for these tests (the emulator verifies with its public half).
const TEST_KEY_PEM: &str = include_str!("../emulators/src/gemini/test-service-account-key.pem");
const MODELS: &str = "  - name: imagen\n    target: gem/imagen-4.0-generate-001\n    price: { input_per_mtok: 0, output_per_mtok: 40000 }\n  - name: imagen-vx\n    target: vx/imagen-4.0-fast-generate-001\n    price: { input_per_mtok: 0, output_per_mtok: 20000 }\n";
const PREDICT: &str = "/v1beta/models/imagen-4.0-generate-001:predict";
const GENERATIONS: &str = "/v1/images/generations";

fn providers() -> String {
    let credentials = json!({
        "type": "service_account",
        "project_id": "proj-1",
        "private_key": TEST_KEY_PEM,
        "client_email": "gateway@proj-1.iam.gserviceaccount.com",
        "token_uri": "http://{emu}/token",
    });
    format!(
        "  - name: gem\n    type: google\n    base_url: http://{{emu}}/v1beta\n    api_key: ${{EMU_KEY}}\n  - name: vx\n    type: vertex-ai\n    base_url: http://{{emu}}/v1\n    project_id: proj-1\n    location: us-central1\n    credentials: '{credentials}'\n"
    )
}

/// The decoded images of an OpenAI images answer.
fn images(v: &Value) -> Vec<Vec<u8>> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {v}"))
        .iter()
        .map(|d| STANDARD.decode(d["b64_json"].as_str().unwrap()).unwrap())
        .collect()
}

/// Whether an emulated image's comment says `what`.
fn says(image: &[u8], what: &str) -> bool {
    String::from_utf8_lossy(image).contains(what)
}

async fn imagen(shape: Shape) {
    let gw = Gateway::start_with(shape, &providers(), MODELS).await;
    let mut answers = Vec::new();

    // ---- AI Studio: n and size (→ aspectRatio) translated, the bytes round-trip
    let (s, h, v) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen", "prompt": "a lighthouse", "n": 2, "size": "1792x1024",
                "response_format": "b64_json", "user": "u-1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-llmgw-provider"], "gem");
    assert_eq!(h["x-llmgw-model"], "imagen-4.0-generate-001");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000, "{v}");
    assert_eq!(v["output_format"], "png");
    let imgs = images(&v);
    assert_eq!(imgs.len(), 2);
    for (i, img) in imgs.iter().enumerate() {
        assert!(img.starts_with(b"\x89PNG\r\n\x1a\n"));
        let want = format!(
            "imagen model=imagen-4.0-generate-001 aspect=16:9 size=1K image={}/2 prompt=a lighthouse",
            i + 1
        );
        assert!(says(img, &want), "{}", String::from_utf8_lossy(img));
    }
    answers.push(v.to_string());
    let up = gw.last_upstream().await;
    assert_eq!(up["path"], PREDICT);
    assert_eq!(
        up["body"],
        json!({"instances": [{"prompt": "a lighthouse"}],
            "parameters": {"sampleCount": 2, "aspectRatio": "16:9", "includeRaiReason": true}})
    );
    assert_eq!(up["headers"]["x-goog-api-key"], EMU_KEY, "{up}");
    assert!(up["headers"].get("authorization").is_none(), "{up}");
    assert!(!up.to_string().contains(&gw.key), "client key leaked upstream");

    // OpenAI's defaults (one image, bytes); `hd` asks for 2K, jpeg with its compression.
    let (s, _, v) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen", "prompt": "a boat", "quality": "hd",
                "output_format": "jpeg", "output_compression": 70}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let imgs = images(&v);
    assert_eq!(imgs.len(), 1);
    assert!(imgs[0].starts_with(&[0xff, 0xd8]), "a jpeg");
    assert!(says(&imgs[0], "aspect=1:1 size=2K image=1/1 prompt=a boat"));
    assert_eq!(v["output_format"], "jpeg");
    assert_eq!(
        gw.last_upstream().await["body"]["parameters"],
        json!({"sampleCount": 1, "sampleImageSize": "2K", "includeRaiReason": true,
            "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 70}})
    );
    answers.push(v.to_string());

    // ---- what Imagen cannot honour: a 400 naming the param, nothing sent upstream
    let before = gw.upstream_requests().await.len();
    for (body, param) in [
        (
            json!({"model": "imagen", "prompt": "x", "response_format": "url"}),
            "response_format",
        ),
        (json!({"model": "imagen", "prompt": "x", "n": 5}), "n"),
        (
            json!({"model": "imagen", "prompt": "x", "size": "1536x1024"}),
            "size",
        ),
        (
            json!({"model": "imagen", "prompt": "x", "style": "vivid"}),
            "style",
        ),
        (json!({"model": "imagen", "prompt": "x", "seed": 3}), "seed"),
        (
            json!({"model": "imagen", "prompt": "x", "background": "transparent"}),
            "background",
        ),
        (
            json!({"model": "imagen-vx", "prompt": "x", "size": "2048x2048"}),
            "size",
        ),
    ] {
        let (s, _, e) = gw.post(GENERATIONS, &body).await;
        assert_eq!(
            (s, e["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}: {e}"
        );
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(param) && message.contains("provider `"),
            "{message}"
        );
        answers.push(e.to_string());
    }
    assert_eq!(
        gw.upstream_requests().await.len(),
        before,
        "refused at the gateway"
    );

    // ---- Google's errors in OpenAI's shape, with Google's status
    let (s, _, e) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen", "prompt": "[emu:status=404] x"}),
        )
        .await;
    assert_eq!(s, 404, "{e}");
    assert_eq!(e["error"]["code"], "upstream_rejected", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("not found"),
        "{e}"
    );
    answers.push(e.to_string());

    // ---- safety filters: a blocked image is left out; all blocked is a 400 naming `prompt`
    let (s, _, v) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen", "prompt": "a storm [emu:rai_filtered=1]", "n": 3}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(images(&v).len(), 2);
    // An answer too large for the edge to keep (4 x 400 KiB) is still metered by what it holds.
    let (s, _, v) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen", "prompt": "big [emu:image_kb=400] [emu:rai_filtered=1]", "n": 4}),
        )
        .await;
    assert_eq!(s, 200);
    let imgs = images(&v);
    assert_eq!(imgs.len(), 3);
    assert!(imgs.iter().all(|i| i.len() > 400 << 10));
    assert!(says(&imgs[2], "image=3/4 prompt=big"));
    let (s, _, e) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen", "prompt": "a storm [emu:rai_filtered=2]", "n": 2}),
        )
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("prompt")), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Support codes: 56562880"),
        "{e}"
    );
    answers.push(e.to_string());

    // ---- edits are not Imagen's: a 400 naming `model`
    let form = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nimagen\r\n--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nadd a hat\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\u{89}PNG\r\n--b--\r\n";
    let r = gw
        .client
        .post(gw.url("/v1/images/edits"))
        .bearer_auth(&gw.key)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "model", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("images/edits"),
        "{e}"
    );

    // ---- Vertex AI: the bearer token, Vertex-only parameters, the rewritten prompt
    let (s, h, v) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen-vx", "prompt": "a fox", "size": "1024x1792",
                "negative_prompt": "fog", "seed": 7, "add_watermark": false,
                "enhance_prompt": true, "person_generation": "allow_all"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-llmgw-provider"], "vx");
    assert_eq!(v["data"][0]["revised_prompt"], "a fox, rendered in rich detail");
    let imgs = images(&v);
    assert!(says(
        &imgs[0],
        "model=imagen-4.0-fast-generate-001 aspect=9:16 size=1K image=1/1 prompt=a fox"
    ));
    answers.push(v.to_string());
    let up = gw.last_upstream().await;
    assert_eq!(
        up["path"],
        "/v1/projects/proj-1/locations/us-central1/publishers/google/models/imagen-4.0-fast-generate-001:predict"
    );
    assert!(
        up["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ya29.emu-"),
        "{up}"
    );
    assert!(up["headers"].get("x-goog-api-key").is_none(), "{up}");
    assert_eq!(
        up["body"]["parameters"],
        json!({"sampleCount": 1, "aspectRatio": "9:16", "includeRaiReason": true,
            "negativePrompt": "fog", "seed": 7, "addWatermark": false, "enhancePrompt": true,
            "personGeneration": "allow_all"})
    );
    // Vertex AI's own 400 (a seed with the watermark on) comes back as OpenAI's error.
    let (s, _, e) = gw
        .post(
            GENERATIONS,
            &json!({"model": "imagen-vx", "prompt": "a fox", "seed": 7}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["code"], "upstream_rejected", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("watermark"),
        "{e}"
    );
    answers.push(e.to_string());

    // ---- by provider type: the built-in catalog knows Imagen 3 and its price
    let (s, _, v) = gw
        .post(
            GENERATIONS,
            &json!({"model": "google/imagen-3.0-generate-002", "prompt": "a hill"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        gw.last_upstream().await["path"],
        "/v1beta/models/imagen-3.0-generate-002:predict"
    );
    answers.push(v.to_string());

    for text in &answers {
        assert!(!text.contains(EMU_KEY), "the provider key leaked: {text}");
    }

    // ---- metering: images made (blocked ones not), at the config's and the catalog's price
    let find = |u: &Value, name: &str| {
        u["by_model"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["model"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    let usage = gw
        .usage_until("acme", |u| {
            find(u, "imagen")["output_tokens"] == 8
                && find(u, "imagen-vx")["output_tokens"] == 1
                && find(u, "google/imagen-3.0-generate-002")["output_tokens"] == 1
        })
        .await;
    let cost = |name: &str| find(&usage, name)["cost_usd"].as_f64().unwrap_or(-1.0);
    // 2 + 1 + 2 (one blocked) + 3 (one blocked, counted as the answer passed).
    assert_eq!(find(&usage, "imagen")["output_tokens"], 8, "{usage}");
    assert!((cost("imagen") - 8.0 * 0.04).abs() < 1e-9, "{usage}");
    assert!((cost("imagen-vx") - 0.02).abs() < 1e-9, "{usage}");
    assert!(
        (cost("google/imagen-3.0-generate-002") - 0.03).abs() < 1e-9,
        "{usage}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagen_in_one_process() {
    imagen(Shape::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagen_across_five_processes() {
    imagen(Shape::Split).await;
}
