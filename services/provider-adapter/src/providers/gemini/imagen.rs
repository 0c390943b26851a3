//! Images for `type: google` and `type: vertex-ai`: OpenAI's
//! `POST /v1/images/generations` said to Imagen's `:predict` and its answer
//! said back in OpenAI's shape.
//!
//! AI Studio: `POST {base_url}/models/{model}:predict` with `x-goog-api-key`;
//! Vertex AI: `POST {base_url}/projects/{p}/locations/{l}/publishers/google/models/{model}:predict`
//! with the service account's bearer token. The body is
//! `{"instances": [{"prompt"}], "parameters": {"sampleCount", ...}}`; the
//! answer `{"predictions": [{"bytesBase64Encoded", "mimeType", "prompt"?} |
//! {"raiFilteredReason"}]}` becomes `{"created", "data": [{"b64_json",
//! "revised_prompt"?}], "output_format"}`.
//!
//! OpenAI's parameters, translated (anything Imagen cannot honour is a 400
//! naming it, never dropped):
//!
//! - `n` (1–4) → `sampleCount`;
//! - `size` → `aspectRatio` (1:1, 3:4, 4:3, 9:16 or 16:9, within 8%, as
//!   Imagen's own sizes such as 1280x896 are not exact) and
//!   the nearer of Imagen's two resolutions by pixel count: 1K, or 2K
//!   (`sampleImageSize`) above 1536×1536; `1792x1024` is 16:9 at 1K,
//!   `2048x2048` 1:1 at 2K; `auto` leaves both to Imagen;
//! - `quality`: `hd`/`high` ask for 2K, `standard`/`medium`/`low`/`auto` for
//!   the default; 2K only on the Imagen 4 models that make it (not
//!   Imagen 3, not Fast);
//! - `response_format`: `b64_json` (also when absent, as for `gpt-image-1`);
//!   `url` is a 400: Imagen returns bytes, and the gateway keeps none to
//!   serve from a URL;
//! - `output_format` `png`/`jpeg` and `output_compression` → `outputOptions`;
//!   `webp` is refused;
//! - `moderation: low` → `safetySetting: block_only_high`;
//! - `background` may be `auto` or `opaque`, `stream` false, `partial_images`
//!   0; `style` is refused (say the style in the prompt); `user` only labels.
//!
//! Imagen's own parameters may come as extra fields (Google's SDK names):
//! `aspect_ratio`, `image_size` (`1K`/`2K`), `person_generation`,
//! `safety_filter_level`, `language`, and on Vertex AI only (AI Studio
//! refuses them) `negative_prompt`, `seed`, `enhance_prompt`, `add_watermark`.
//!
//! `includeRaiReason` is always asked for: an image blocked by Google's
//! safety filters is left out of `data` (and so not metered: Google does not
//! charge for it), and when every image is blocked the answer is a 400
//! naming `prompt` with Google's reason.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use llmgw_kit::services::ForwardStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{ForwardChunk, ForwardRequest, Target};
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Gemini, JSON, Who, invalid, unsupported};

/// The most images one `:predict` makes (Imagen 3 and 4).
const MAX_IMAGES: u64 = 4;
/// Imagen's aspect ratios, as `(name, width, height)`.
const RATIOS: [(&str, u32, u32); 5] = [
    ("1:1", 1, 1),
    ("3:4", 3, 4),
    ("4:3", 4, 3),
    ("9:16", 9, 16),
    ("16:9", 16, 9),
];
/// How far a `size` may be from an aspect ratio and still have it: Imagen's
/// own sizes are not exact (1280x896 is its 4:3, 1408x768 its 16:9), and 3:2
/// (1536x1024) stays out.
const RATIO_SLACK: f64 = 0.08;
/// Above this many pixels a `size` asks for 2K (1536×1536, between 1K and 2K).
const TWO_K_PIXELS: u64 = 1536 * 1536;
/// The answer goes to the edge in pieces of at most this many bytes.
const PIECE: usize = 1 << 20;

impl Gemini {
    /// `POST /v1/images/generations` through `:predict`.
    pub(super) async fn images(
        &self,
        target: &Target,
        req: &ForwardRequest,
    ) -> Result<ForwardStream, GwError> {
        let model = self.model(target)?;
        let body = predict_body(&req.json, model, self.who(), self.tokens.is_some())?;
        let request = self
            .client
            .post(format!("{}{model}:predict", self.models_url))
            .headers(self.headers.clone())
            .header(ACCEPT, JSON)
            .body(body);
        let answer = self
            .peer
            .call_within(self.timeout(target), self.send(request))
            .await?;
        let out = openai_images(&answer, self.who())?;
        Ok(pieces(out))
    }
}

/// Where an asked-for 2K came from, to name it when the model has no 2K.
#[derive(Clone, Copy)]
struct TwoK(&'static str);

/// The `:predict` body for OpenAI's images request `json` to `model`.
pub(super) fn predict_body(json: &str, model: &str, who: Who<'_>, vertex: bool) -> Result<Vec<u8>, GwError> {
    let body: Map<String, Value> = serde_json::from_str(json)
        .map_err(|e| GwError::invalid("", format!("the request body is not a JSON object: {e}")))?;
    let mut params = Map::new();
    let mut prompt = "";
    let mut n = 1;
    let mut size_ratio: Option<&'static str> = None;
    let mut asked_ratio: Option<&'static str> = None;
    let mut two_k: Option<TwoK> = None;
    let mut mime: Option<&str> = None;
    let mut compression: Option<u64> = None;
    let mut moderation_low = false;
    for (key, value) in &body {
        let key = key.as_str();
        if value.is_null() {
            continue;
        }
        match key {
            "model" | "user" => {}
            "prompt" => prompt = text(value, key, who)?,
            "n" => {
                n = value
                    .as_u64()
                    .filter(|n| (1..=MAX_IMAGES).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            who,
                            "n",
                            &format!("`n` must be an integer from 1 to {MAX_IMAGES}: imagen makes at most {MAX_IMAGES} images a request"),
                        )
                    })?;
            }
            "size" => match text(value, key, who)? {
                "auto" => {}
                size => {
                    let (name, big) = parse_size(size).ok_or_else(|| {
                        invalid(
                            who,
                            "size",
                            &format!(
                                "`{size}` is not a size imagen makes: give `WIDTHxHEIGHT` in one of the aspect ratios 1:1, 3:4, 4:3, 9:16, 16:9 (such as 1024x1024, 1792x1024, 1024x1792), or `auto`"
                            ),
                        )
                    })?;
                    size_ratio = Some(name);
                    if big {
                        two_k = Some(TwoK("size"));
                    }
                }
            },
            "quality" => match text(value, key, who)? {
                "auto" | "standard" | "medium" | "low" => {}
                "hd" | "high" => two_k = two_k.or(Some(TwoK("quality"))),
                other => return Err(one_of(who, key, other, "auto, standard, hd, low, medium, high")),
            },
            "response_format" => match text(value, key, who)? {
                "b64_json" => {}
                "url" => {
                    return Err(unsupported(
                        who,
                        key,
                        "`response_format: url`: imagen returns the image bytes, not a link; ask for `b64_json`",
                    ));
                }
                other => return Err(one_of(who, key, other, "url, b64_json")),
            },
            "output_format" => match text(value, key, who)? {
                "png" => mime = Some("image/png"),
                "jpeg" => mime = Some("image/jpeg"),
                "webp" => return Err(unsupported(who, key, "`output_format: webp` (png or jpeg)")),
                other => return Err(one_of(who, key, other, "png, jpeg, webp")),
            },
            "output_compression" => {
                compression = Some(value.as_u64().filter(|c| *c <= 100).ok_or_else(|| {
                    invalid(who, key, "`output_compression` must be an integer from 0 to 100")
                })?);
            }
            "background" => match text(value, key, who)? {
                "auto" | "opaque" => {}
                "transparent" => {
                    return Err(unsupported(
                        who,
                        key,
                        "`background: transparent` (its images are opaque)",
                    ));
                }
                other => return Err(one_of(who, key, other, "transparent, opaque, auto")),
            },
            "moderation" => match text(value, key, who)? {
                "auto" => {}
                "low" => moderation_low = true,
                other => return Err(one_of(who, key, other, "low, auto")),
            },
            "style" => {
                return Err(unsupported(
                    who,
                    key,
                    "`style` for images (describe the style in the prompt)",
                ));
            }
            "stream" if value == &Value::Bool(false) => {}
            "stream" => return Err(unsupported(who, key, "streamed images")),
            "partial_images" if value.as_u64() == Some(0) => {}
            "partial_images" => return Err(unsupported(who, key, "`partial_images`")),
            // Imagen's own parameters, by the names of Google's SDK.
            "aspect_ratio" => {
                let asked = text(value, key, who)?;
                asked_ratio = Some(
                    RATIOS
                        .iter()
                        .find(|(name, ..)| *name == asked)
                        .map(|(name, ..)| *name)
                        .ok_or_else(|| one_of(who, key, asked, "1:1, 3:4, 4:3, 9:16, 16:9"))?,
                );
            }
            "image_size" => match text(value, key, who)?.to_ascii_uppercase().as_str() {
                "1K" => {}
                "2K" => two_k = Some(TwoK("image_size")),
                _ => return Err(invalid(who, key, "`image_size` must be `1K` or `2K`")),
            },
            "person_generation" => {
                let v = lower(value, key, who)?;
                let allowed: &[&str] = if vertex {
                    &["dont_allow", "allow_adult", "allow_all"]
                } else {
                    &["dont_allow", "allow_adult"]
                };
                if !allowed.contains(&v.as_str()) {
                    return Err(one_of(who, key, &v, &allowed.join(", ")));
                }
                params.insert("personGeneration".into(), Value::String(v));
            }
            "safety_filter_level" => {
                let v = lower(value, key, who)?;
                let allowed: &[&str] = if vertex {
                    &[
                        "block_low_and_above",
                        "block_medium_and_above",
                        "block_only_high",
                        "block_none",
                    ]
                } else {
                    &["block_low_and_above", "block_medium_and_above", "block_only_high"]
                };
                if !allowed.contains(&v.as_str()) {
                    return Err(one_of(who, key, &v, &allowed.join(", ")));
                }
                params.insert("safetySetting".into(), Value::String(v));
            }
            "language" => {
                params.insert(
                    "language".into(),
                    Value::String(text(value, key, who)?.to_owned()),
                );
            }
            "negative_prompt" | "seed" | "enhance_prompt" | "add_watermark" if !vertex => {
                return Err(unsupported(
                    who,
                    key,
                    &format!("`{key}` (vertex ai takes it; the gemini api does not)"),
                ));
            }
            "negative_prompt" => {
                params.insert(
                    "negativePrompt".into(),
                    Value::String(text(value, key, who)?.to_owned()),
                );
            }
            "seed" => {
                let seed = value
                    .as_u64()
                    .filter(|s| u32::try_from(*s).is_ok())
                    .ok_or_else(|| invalid(who, key, "`seed` must be an integer from 0 to 4294967295"))?;
                params.insert("seed".into(), Value::from(seed));
            }
            "enhance_prompt" => {
                params.insert("enhancePrompt".into(), Value::Bool(flag(value, key, who)?));
            }
            "add_watermark" => {
                params.insert("addWatermark".into(), Value::Bool(flag(value, key, who)?));
            }
            other => {
                return Err(unsupported(who, other, &format!("`{other}` for images")));
            }
        }
    }
    if prompt.is_empty() {
        return Err(invalid(who, "prompt", "you must provide a `prompt`"));
    }
    if let Some(c) = compression {
        if mime != Some("image/jpeg") {
            return Err(invalid(
                who,
                "output_compression",
                "`output_compression` applies to `output_format: jpeg` only",
            ));
        }
        params.insert(
            "outputOptions".into(),
            json!({"mimeType": "image/jpeg", "compressionQuality": c}),
        );
    } else if let Some(m) = mime {
        params.insert("outputOptions".into(), json!({ "mimeType": m }));
    }
    if moderation_low && !params.contains_key("safetySetting") {
        params.insert("safetySetting".into(), Value::from("block_only_high"));
    }
    if let Some(TwoK(from)) = two_k {
        if model.starts_with("imagen-3") || model.contains("-fast-") {
            return Err(invalid(
                who,
                from,
                &format!(
                    "`{from}` asks for a 2K image, but `{model}` makes 1K images only (2K needs imagen-4.0-generate-001 or imagen-4.0-ultra-generate-001)"
                ),
            ));
        }
        params.insert("sampleImageSize".into(), Value::from("2K"));
    }
    let ratio = match (size_ratio, asked_ratio) {
        (Some(size), Some(asked)) if size != asked => {
            return Err(invalid(
                who,
                "aspect_ratio",
                &format!("`aspect_ratio` {asked} contradicts `size` ({size})"),
            ));
        }
        (size, asked) => asked.or(size),
    };
    if let Some(name) = ratio {
        params.insert("aspectRatio".into(), Value::from(name));
    }
    params.insert("sampleCount".into(), Value::from(n));
    params.insert("includeRaiReason".into(), Value::Bool(true));
    let body = json!({ "instances": [{ "prompt": prompt }], "parameters": params });
    serde_json::to_vec(&body).map_err(|e| {
        GwError::internal(format!("cannot encode the imagen request: {e}")).with_provider(who.name)
    })
}

/// `WIDTHxHEIGHT` as Imagen's aspect ratio and whether it asks for 2K; `None`
/// when it is not a size or its ratio is none of Imagen's.
fn parse_size(size: &str) -> Option<(&'static str, bool)> {
    let (w, h) = size.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return None;
    }
    let asked = f64::from(w) / f64::from(h);
    let (name, ..) = RATIOS.iter().find(|(_, rw, rh)| {
        let ratio = f64::from(*rw) / f64::from(*rh);
        (asked / ratio - 1.0).abs() <= RATIO_SLACK
    })?;
    Some((name, u64::from(w) * u64::from(h) > TWO_K_PIXELS))
}

fn text<'a>(value: &'a Value, param: &str, who: Who<'_>) -> Result<&'a str, GwError> {
    value
        .as_str()
        .ok_or_else(|| invalid(who, param, &format!("`{param}` must be a string")))
}

fn lower(value: &Value, param: &str, who: Who<'_>) -> Result<String, GwError> {
    text(value, param, who).map(str::to_ascii_lowercase)
}

fn flag(value: &Value, param: &str, who: Who<'_>) -> Result<bool, GwError> {
    value
        .as_bool()
        .ok_or_else(|| invalid(who, param, &format!("`{param}` must be a boolean")))
}

fn one_of(who: Who<'_>, param: &str, value: &str, allowed: &str) -> GwError {
    let value: String = value.chars().take(64).collect();
    invalid(
        who,
        param,
        &format!("`{value}` is not a valid `{param}`: one of {allowed}"),
    )
}

#[derive(Deserialize)]
struct PredictAnswer<'a> {
    #[serde(default, borrow)]
    predictions: Vec<Picture<'a>>,
}

/// One prediction: an image, or the reason one was filtered out (or, with
/// safety attributes asked for, the prompt's scores, which are skipped).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Picture<'a> {
    #[serde(default, borrow)]
    bytes_base64_encoded: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    mime_type: Option<Cow<'a, str>>,
    /// The prompt as Imagen rewrote it (`enhancePrompt`).
    #[serde(default, borrow)]
    prompt: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    rai_filtered_reason: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct ImagesAnswer<'a> {
    created: u64,
    data: Vec<ImageItem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_format: Option<&'static str>,
}

#[derive(Serialize)]
struct ImageItem<'a> {
    b64_json: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revised_prompt: Option<&'a str>,
}

/// Imagen's `:predict` answer as OpenAI's images answer; every image
/// filtered out is a 400 naming `prompt` with Google's reason.
pub(super) fn openai_images(answer: &[u8], who: Who<'_>) -> Result<Vec<u8>, GwError> {
    let name = who.name;
    let broken = || {
        GwError::new(
            ErrorCode::UpstreamError,
            format!("provider {who} sent an invalid images response"),
        )
        .with_provider(name)
    };
    let parsed: PredictAnswer<'_> = serde_json::from_slice(answer).map_err(|_| broken())?;
    let mut data = Vec::with_capacity(parsed.predictions.len());
    let mut reasons: Vec<&str> = Vec::new();
    let mut format = None;
    for p in &parsed.predictions {
        match (&p.bytes_base64_encoded, &p.rai_filtered_reason) {
            (Some(bytes), _) if !bytes.is_empty() => {
                if format.is_none() {
                    format = p.mime_type.as_deref().and_then(|m| match m {
                        "image/png" => Some("png"),
                        "image/jpeg" => Some("jpeg"),
                        "image/webp" => Some("webp"),
                        _ => None,
                    });
                }
                data.push(ImageItem {
                    b64_json: bytes,
                    revised_prompt: p.prompt.as_deref(),
                });
            }
            (_, Some(reason)) if !reasons.contains(&reason.as_ref()) => reasons.push(reason),
            _ => {}
        }
    }
    if data.is_empty() {
        let why = if reasons.is_empty() {
            "no reason given".to_owned()
        } else {
            reasons.join("; ").chars().take(1024).collect()
        };
        return Err(GwError::new(
            ErrorCode::UpstreamRejected,
            format!("provider {who}: google's safety filters blocked every image: {why}"),
        )
        .with_param("prompt")
        .with_provider(name)
        .with_upstream_status(400));
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::to_vec(&ImagesAnswer {
        created,
        data,
        output_format: format,
    })
    .map_err(|_| broken())
}

/// A 200 JSON answer as a forward stream: the head, then the body in pieces
/// (slices of one buffer, no copies) small enough for any gRPC hop.
fn pieces(body: Vec<u8>) -> ForwardStream {
    let body = Bytes::from(body);
    let mut out = Vec::with_capacity(1 + body.len().div_ceil(PIECE));
    out.push(Ok(ForwardChunk {
        status: 200,
        content_type: "application/json".to_owned(),
        data: Bytes::new(),
    }));
    let mut at = 0;
    while at < body.len() {
        let end = (at + PIECE).min(body.len());
        out.push(Ok(ForwardChunk {
            data: body.slice(at..end),
            ..Default::default()
        }));
        at = end;
    }
    Box::pin(futures_util::stream::iter(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEM: Who<'static> = Who {
        name: "gem",
        kind: "google",
    };
    const VX: Who<'static> = Who {
        name: "vx",
        kind: "vertex-ai",
    };

    fn body(req: Value, model: &str, who: Who<'_>) -> Result<Value, GwError> {
        let bytes = predict_body(&req.to_string(), model, who, who.kind == "vertex-ai")?;
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn param(e: &GwError) -> Option<&str> {
        e.param()
    }

    #[test]
    fn sizes_map_to_aspect_ratios_and_resolutions() {
        assert_eq!(parse_size("1024x1024"), Some(("1:1", false)));
        assert_eq!(parse_size("1792x1024"), Some(("16:9", false)));
        assert_eq!(parse_size("1024x1792"), Some(("9:16", false)));
        assert_eq!(parse_size("1408x768"), Some(("16:9", false)));
        assert_eq!(parse_size("896x1280"), Some(("3:4", false)));
        assert_eq!(parse_size("1280x896"), Some(("4:3", false)));
        assert_eq!(parse_size("2048x2048"), Some(("1:1", true)));
        assert_eq!(parse_size("2816x1536"), Some(("16:9", true)));
        assert_eq!(parse_size("1536x1024"), None, "3:2 is not imagen's");
        assert_eq!(parse_size("0x10"), None);
        assert_eq!(parse_size("big"), None);
        assert_eq!(parse_size("1024x"), None);
    }

    #[test]
    fn an_openai_request_becomes_a_predict_body() -> Result<(), GwError> {
        let b = body(
            json!({"model": "imagen", "prompt": "a cat", "n": 3, "size": "1792x1024",
                "response_format": "b64_json", "quality": "standard", "user": "u1",
                "output_format": "jpeg", "output_compression": 80, "moderation": "low",
                "person_generation": "ALLOW_ADULT"}),
            "imagen-4.0-generate-001",
            GEM,
        )?;
        assert_eq!(
            b,
            json!({"instances": [{"prompt": "a cat"}], "parameters": {
                "sampleCount": 3, "aspectRatio": "16:9", "includeRaiReason": true,
                "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80},
                "safetySetting": "block_only_high", "personGeneration": "allow_adult"}})
        );
        let b = body(
            json!({"prompt": "a cat", "quality": "hd", "seed": 7, "negative_prompt": "fog",
                "add_watermark": false, "enhance_prompt": true, "aspect_ratio": "3:4"}),
            "imagen-4.0-ultra-generate-001",
            VX,
        )?;
        assert_eq!(
            b["parameters"],
            json!({"sampleCount": 1, "includeRaiReason": true, "sampleImageSize": "2K",
                "aspectRatio": "3:4", "seed": 7, "negativePrompt": "fog", "addWatermark": false,
                "enhancePrompt": true})
        );
        Ok(())
    }

    #[test]
    fn what_imagen_cannot_do_is_refused_by_name() {
        let refused = |req: Value, model: &str, who: Who<'_>| {
            body(req, model, who)
                .err()
                .and_then(|e| param(&e).map(str::to_owned))
        };
        let m = "imagen-4.0-generate-001";
        let cases = [
            (json!({"prompt": "x", "n": 5}), "n"),
            (json!({"prompt": "x", "n": 0}), "n"),
            (json!({"prompt": "x", "size": "1536x1024"}), "size"),
            (
                json!({"prompt": "x", "response_format": "url"}),
                "response_format",
            ),
            (json!({"prompt": "x", "style": "vivid"}), "style"),
            (json!({"prompt": "x", "output_format": "webp"}), "output_format"),
            (
                json!({"prompt": "x", "output_compression": 50}),
                "output_compression",
            ),
            (json!({"prompt": "x", "background": "transparent"}), "background"),
            (json!({"prompt": "x", "stream": true}), "stream"),
            (json!({"prompt": "x", "seed": 1}), "seed"),
            (
                json!({"prompt": "x", "person_generation": "allow_all"}),
                "person_generation",
            ),
            (
                json!({"prompt": "x", "size": "1024x1024", "aspect_ratio": "16:9"}),
                "aspect_ratio",
            ),
            (json!({"prompt": "x", "frobnicate": 1}), "frobnicate"),
            (json!({"n": 1}), "prompt"),
        ];
        for (req, want) in cases {
            assert_eq!(refused(req.clone(), m, GEM).as_deref(), Some(want), "{req}");
        }
        // No 2K on Imagen 3 or Fast: named by what asked for it.
        assert_eq!(
            refused(
                json!({"prompt": "x", "size": "2048x2048"}),
                "imagen-3.0-generate-002",
                VX
            )
            .as_deref(),
            Some("size")
        );
        assert_eq!(
            refused(
                json!({"prompt": "x", "quality": "hd"}),
                "imagen-4.0-fast-generate-001",
                VX
            )
            .as_deref(),
            Some("quality")
        );
        assert!(body(json!({"prompt": "x", "seed": 1}), m, VX).is_ok());
    }

    #[test]
    fn predictions_become_openai_images_and_filtered_ones_are_left_out()
    -> Result<(), Box<dyn std::error::Error>> {
        let answer = json!({"predictions": [
            {"bytesBase64Encoded": "iVBORw0K", "mimeType": "image/png", "prompt": "a fluffy cat"},
            {"raiFilteredReason": "filtered: 56562880"},
            {"bytesBase64Encoded": "iVBORw0L", "mimeType": "image/png"}
        ]});
        let out: Value = serde_json::from_slice(&openai_images(answer.to_string().as_bytes(), GEM)?)?;
        assert_eq!(
            out["data"],
            json!([{"b64_json": "iVBORw0K", "revised_prompt": "a fluffy cat"}, {"b64_json": "iVBORw0L"}])
        );
        assert_eq!(out["output_format"], "png");
        assert!(out["created"].as_u64().unwrap_or(0) > 0);

        let all = json!({"predictions": [{"raiFilteredReason": "blocked: 123"}, {"raiFilteredReason": "blocked: 123"}]});
        let e = openai_images(all.to_string().as_bytes(), GEM)
            .err()
            .ok_or("no error")?;
        assert_eq!((e.http_status(), e.param()), (400, Some("prompt")));
        assert!(
            e.message().ends_with("blocked every image: blocked: 123"),
            "{}",
            e.message()
        );
        let e = openai_images(b"{}", GEM).err().ok_or("no error")?;
        assert_eq!(e.param(), Some("prompt"));
        let e = openai_images(b"<html>", GEM).err().ok_or("no error")?;
        assert_eq!(e.code(), ErrorCode::UpstreamError);
        Ok(())
    }
}
