//! Imagen's `:predict` (image generation), on AI Studio
//! (`/v1beta/models/imagen-…:predict`) and Vertex AI
//! (`/v1/projects/{p}/locations/{l}/publishers/google/models/imagen-…:predict`), from Google's
//! Imagen API reference.
//!
//! The body is `{"instances": [{"prompt"}], "parameters": {...}}` with one instance. Checked as
//! the API checks them: `sampleCount` 1–4 (default 4), `aspectRatio` 1:1, 3:4, 4:3, 9:16 or
//! 16:9, `sampleImageSize` `1K`/`2K` (2K on Imagen 4 Standard and Ultra only),
//! `outputOptions.mimeType` `image/png`/`image/jpeg` with `compressionQuality` 0–100,
//! `personGeneration`, `safetySetting`, and a `seed` only with `addWatermark: false`. The Gemini
//! API (AI Studio) refuses the Vertex-only `seed`, `negativePrompt`, `enhancePrompt`,
//! `addWatermark` and `storageUri`, `personGeneration: allow_all` and `safetySetting:
//! block_none`. Unknown fields are refused (an emulator rule: the real API's `parameters` is a
//! free-form `Value`, but a gateway that sends a field Imagen does not know has a bug).
//!
//! Each image is a tiny valid image of the asked type (PNG, or JPEG for `image/jpeg`) carrying
//! a comment `imagen model=M aspect=R size=S image=I/N prompt=P`, so a test can see that bytes
//! and parameters made the round trip. `enhancePrompt: true` adds the rewritten `prompt` to each
//! prediction.
//!
//! Directives in the prompt: `[emu:status=N]` and `[emu:delay_ms=N]` as elsewhere, and
//! `[emu:rai_filtered=K]`: the last K images are blocked by the safety filters, reported as
//! `{"raiFilteredReason"}` predictions when `includeRaiReason` is true and left out otherwise
//! (all blocked without reasons: `{}`, as the API answers); `[emu:image_kb=N]`: each image
//! carries N KiB more (a padded comment), for answers too large to keep whole.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use super::GoogleError;
use crate::directives;

const RATIOS: [&str; 5] = ["1:1", "3:4", "4:3", "9:16", "16:9"];
/// What Vertex AI says of a blocked image.
const RAI_REASON: &str = "Unable to show generated images. All images were filtered out because they violated Vertex AI's usage guidelines. You will not be charged for blocked images. Try rephrasing the prompt. If you think this was an error, send feedback. Support codes: 56562880";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Predict {
    instances: Vec<Instance>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Instance {
    prompt: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Parameters {
    sample_count: Option<i64>,
    aspect_ratio: Option<String>,
    sample_image_size: Option<String>,
    output_options: Option<OutputOptions>,
    person_generation: Option<String>,
    safety_setting: Option<String>,
    include_rai_reason: Option<bool>,
    include_safety_attributes: Option<bool>,
    language: Option<String>,
    negative_prompt: Option<String>,
    seed: Option<u32>,
    enhance_prompt: Option<bool>,
    add_watermark: Option<bool>,
    storage_uri: Option<String>,
    guidance_scale: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OutputOptions {
    mime_type: Option<String>,
    compression_quality: Option<i64>,
}

/// Answers `model:predict`; `vertex` says which API was called.
pub(crate) async fn predict(model: &str, body: &[u8], vertex: bool) -> Result<String, GoogleError> {
    let bad = |m: String| GoogleError::invalid(m);
    let req: Predict =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON payload received. {e}")))?;
    let [instance] = req.instances.as_slice() else {
        return Err(bad(format!(
            "Imagen takes exactly one instance; got {}.",
            req.instances.len()
        )));
    };
    let (d, prompt) = directives::parse(&instance.prompt);
    if prompt.trim().is_empty() {
        return Err(bad("The prompt is empty.".to_owned()));
    }
    let p = req.parameters.unwrap_or_default();
    let n = p.sample_count.unwrap_or(4);
    if !(1..=4).contains(&n) {
        return Err(bad(format!("sampleCount must be between 1 and 4, but got {n}.")));
    }
    let aspect = p.aspect_ratio.as_deref().unwrap_or("1:1");
    if !RATIOS.contains(&aspect) {
        return Err(bad(format!(
            "Unsupported aspect ratio: {aspect}. Supported: 1:1, 3:4, 4:3, 9:16, 16:9."
        )));
    }
    let size = match p.sample_image_size.as_deref().map(str::to_ascii_uppercase) {
        None => "1K".to_owned(),
        Some(s) if s == "1K" => s,
        Some(s) if s == "2K" => {
            if model.starts_with("imagen-3") || model.contains("-fast-") {
                return Err(bad(format!("sampleImageSize 2K is not supported by {model}.")));
            }
            s
        }
        Some(other) => {
            return Err(bad(format!(
                "Unsupported sampleImageSize: {other}. Supported: 1K, 2K."
            )));
        }
    };
    let mime = match &p.output_options {
        None => "image/png",
        Some(o) => {
            if let Some(q) = o.compression_quality
                && !(0..=100).contains(&q)
            {
                return Err(bad(format!(
                    "compressionQuality must be between 0 and 100, but got {q}."
                )));
            }
            match o.mime_type.as_deref() {
                None | Some("image/png") => "image/png",
                Some("image/jpeg") => "image/jpeg",
                Some(other) => {
                    return Err(bad(format!("Unsupported output mime type: {other}.")));
                }
            }
        }
    };
    if !vertex {
        let vertex_only = [
            ("seed", p.seed.is_some()),
            ("negativePrompt", p.negative_prompt.is_some()),
            ("enhancePrompt", p.enhance_prompt.is_some()),
            ("addWatermark", p.add_watermark.is_some()),
            ("storageUri", p.storage_uri.is_some()),
        ];
        if let Some((name, _)) = vertex_only.iter().find(|(_, set)| *set) {
            return Err(bad(format!("{name} is not supported in the Gemini API.")));
        }
    }
    let people: &[&str] = if vertex {
        &["dont_allow", "allow_adult", "allow_all"]
    } else {
        &["dont_allow", "allow_adult"]
    };
    if let Some(v) = &p.person_generation
        && !people.contains(&v.to_ascii_lowercase().as_str())
    {
        return Err(bad(format!("personGeneration {v} is not supported.")));
    }
    let levels: &[&str] = if vertex {
        &[
            "block_low_and_above",
            "block_medium_and_above",
            "block_only_high",
            "block_none",
            "block_most",
            "block_some",
            "block_few",
            "block_fewest",
        ]
    } else {
        &["block_low_and_above", "block_medium_and_above", "block_only_high"]
    };
    if let Some(v) = &p.safety_setting
        && !levels.contains(&v.to_ascii_lowercase().as_str())
    {
        return Err(bad(format!("safetySetting {v} is not supported.")));
    }
    if p.seed.is_some() && p.add_watermark.unwrap_or(true) {
        return Err(bad(
            "Seed is not supported when watermark is enabled; set addWatermark to false.".to_owned(),
        ));
    }
    let _ = (&p.language, p.include_safety_attributes, p.guidance_scale);
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    if let Some(status) = d.status.filter(|s| (400..=599).contains(s)) {
        return Err(GoogleError::for_status(status, model));
    }
    let filtered = number(&instance.prompt, "rai_filtered").min(n as usize);
    let padding = "x".repeat(number(&instance.prompt, "image_kb").min(16 << 10) << 10);
    let reasons = p.include_rai_reason == Some(true);
    let made = n as usize - filtered;
    let mut predictions = Vec::with_capacity(n as usize);
    for i in 0..made {
        let comment = format!(
            "imagen model={model} aspect={aspect} size={size} image={}/{n} prompt={prompt}{padding}",
            i + 1
        );
        let bytes = if mime == "image/jpeg" {
            jpeg(&comment)
        } else {
            png(&comment)
        };
        let mut one = json!({"mimeType": mime, "bytesBase64Encoded": STANDARD.encode(bytes)});
        if p.enhance_prompt == Some(true) {
            one["prompt"] = json!(format!("{prompt}, rendered in rich detail"));
        }
        predictions.push(one);
    }
    if reasons {
        predictions.extend((0..filtered).map(|_| json!({ "raiFilteredReason": RAI_REASON })));
    }
    if predictions.is_empty() {
        return Ok("{}".to_owned());
    }
    Ok(json!({ "predictions": predictions }).to_string())
}

/// `K` of `[emu:{name}=K]` in the prompt, else 0.
fn number(prompt: &str, name: &str) -> usize {
    let open = format!("[emu:{name}=");
    prompt
        .find(&open)
        .and_then(|at| {
            let rest = &prompt[at + open.len()..];
            rest[..rest.find(']')?].trim().parse().ok()
        })
        .unwrap_or(0)
}

/// A 1×1 PNG with a `tEXt` comment.
fn png(comment: &str) -> Vec<u8> {
    let png = crate::surface::PNG;
    // Everything before IEND (the last 12 bytes), the comment, then IEND.
    let (head, end) = png.split_at(png.len() - 12);
    let mut data = b"Comment\0".to_vec();
    data.extend(comment.bytes().map(|b| if b.is_ascii() { b } else { b'?' }));
    let mut out = head.to_vec();
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(b"tEXt");
    out.extend_from_slice(&data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(end);
    out
}

/// A JPEG's start, a comment segment, and its end: enough to be told apart as JPEG.
fn jpeg(comment: &str) -> Vec<u8> {
    let text: Vec<u8> = comment.bytes().take(60_000).collect();
    let mut out = vec![0xff, 0xd8, 0xff, 0xfe];
    out.extend_from_slice(&u16::try_from(text.len() + 2).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&[0xff, 0xd9]);
    out
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn crc_and_png_comment() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        let img = png("imagen aspect=16:9");
        assert!(img.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(img.ends_with(&[0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]));
        let text = b"tEXtComment\0imagen aspect=16:9";
        assert!(img.windows(text.len()).any(|w| w == text));
        assert_eq!(number("x [emu:rai_filtered=2]", "rai_filtered"), 2);
        assert_eq!(number("x [emu:image_kb=3]", "rai_filtered"), 0);
    }

    #[tokio::test]
    async fn predict_checks_and_answers() {
        let body = |v: Value| v.to_string().into_bytes();
        let ok = predict(
            "imagen-4.0-generate-001",
            &body(json!({"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}})),
            false,
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 2);
        let seed = json!({"instances": [{"prompt": "a"}], "parameters": {"seed": 1}});
        let e = predict("imagen-4.0-generate-001", &body(seed.clone()), false)
            .await
            .unwrap_err();
        assert!(
            e.message.contains("not supported in the Gemini API"),
            "{}",
            e.message
        );
        let e = predict("imagen-4.0-generate-001", &body(seed), true)
            .await
            .unwrap_err();
        assert!(e.message.contains("watermark"), "{}", e.message);
        let all =
            json!({"instances": [{"prompt": "a [emu:rai_filtered=4]"}], "parameters": {"sampleCount": 1}});
        assert_eq!(
            predict("imagen-3.0-generate-002", &body(all), true)
                .await
                .unwrap(),
            "{}"
        );
        let unknown = json!({"instances": [{"prompt": "a"}], "parameters": {"sampleCnt": 1}});
        assert!(
            predict("imagen-3.0-generate-002", &body(unknown), true)
                .await
                .is_err()
        );
    }
}
