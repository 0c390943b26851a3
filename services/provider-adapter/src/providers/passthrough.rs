//! OpenAI's pass-through endpoints (legacy completions, images, audio): the
//! client's body goes to the provider as it came, only its `model` replaced
//! by the target's, and the provider's answer comes back byte for byte.
//! Only the paths in [`PATHS`] are ever sent: the edge names one, never the
//! caller.

use futures_util::StreamExt as _;
use llmgw_kit::GwError;
use llmgw_kit::services::ForwardStream;
use llmgw_proto::{FormField, ForwardChunk};
use serde_json::{Map, Value};

use crate::http::Peer;

/// The endpoints that may be passed through, below `/v1`.
pub(crate) const PATHS: [&str; 6] = [
    "completions",
    "images/generations",
    "images/edits",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
];

/// The path as one of [`PATHS`], or an internal error (the edge sent
/// something it should not).
pub(crate) fn known_path(path: &str) -> Result<&'static str, GwError> {
    PATHS
        .iter()
        .find(|p| **p == path)
        .copied()
        .ok_or_else(|| GwError::internal(format!("`{path}` is not an endpoint that can be passed through")))
}

/// The client's JSON body with `model` set (or removed when `model` is
/// `None`, as Azure names the deployment in the URL).
pub(crate) fn json_body(json: &str, model: Option<&str>) -> Result<Vec<u8>, GwError> {
    let mut body: Map<String, Value> = serde_json::from_str(json)
        .map_err(|e| GwError::invalid("", format!("the request body is not a JSON object: {e}")))?;
    match model {
        Some(m) => {
            body.insert("model".to_owned(), Value::String(m.to_owned()));
        }
        None => {
            body.remove("model");
        }
    }
    serde_json::to_vec(&body).map_err(|e| GwError::internal(format!("cannot write the request: {e}")))
}

/// A `multipart/form-data` body of `form` with a fresh boundary: the
/// `model` field set to `model` (or left out when `None`). Returns the
/// content type and the body.
pub(crate) fn multipart_body(form: &[FormField], model: Option<&str>) -> Result<(String, Vec<u8>), GwError> {
    let mut random = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| GwError::internal("no randomness for a multipart boundary"))?;
    let boundary: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let boundary = format!("llmgw-{boundary}");
    let size: usize = form.iter().map(|f| f.data.len() + 160).sum();
    let mut out = Vec::with_capacity(size + 64);
    let mut model_written = false;
    for field in form {
        let data: &[u8] = if field.name == "model" && field.filename.is_none() {
            match model {
                Some(m) if !model_written => {
                    model_written = true;
                    m.as_bytes()
                }
                _ => continue,
            }
        } else {
            &field.data
        };
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
        quoted(&mut out, &field.name);
        out.push(b'"');
        if let Some(name) = &field.filename {
            out.extend_from_slice(b"; filename=\"");
            quoted(&mut out, name);
            out.push(b'"');
        }
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = &field.content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend(ct.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    Ok((format!("multipart/form-data; boundary={boundary}"), out))
}

/// A quoted-string's content as browsers write it: `"`, CR and LF
/// percent-encoded, so no name can break out of its header.
fn quoted(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"%22"),
            b'\r' => out.extend_from_slice(b"%0D"),
            b'\n' => out.extend_from_slice(b"%0A"),
            _ => out.push(b),
        }
    }
}

/// The provider's 2xx answer as it comes: its status and content type
/// first, then each piece of the body as it arrives (never collected).
pub(crate) fn answer(peer: &Peer, response: reqwest::Response) -> ForwardStream {
    let head = ForwardChunk {
        status: u32::from(response.status().as_u16()),
        content_type: response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned(),
        data: bytes::Bytes::new(),
    };
    let peer = peer.clone();
    let body = response.bytes_stream().map(move |piece| match piece {
        Ok(data) => Ok(ForwardChunk {
            data,
            ..Default::default()
        }),
        Err(e) => Err(peer.body_error(&e)),
    });
    Box::pin(futures_util::stream::once(async move { Ok(head) }).chain(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_replaces_model_and_escapes_names() -> Result<(), Box<dyn std::error::Error>> {
        let form = vec![
            FormField {
                name: "model".into(),
                data: bytes::Bytes::from_static(b"whisper"),
                ..Default::default()
            },
            FormField {
                name: "file".into(),
                filename: Some("a\"b\r\n.wav".into()),
                content_type: Some("audio/wav".into()),
                data: bytes::Bytes::from_static(b"RIFF"),
            },
        ];
        let (ct, body) = multipart_body(&form, Some("whisper-1"))?;
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").ok_or("ct")?;
        let text = String::from_utf8(body)?;
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"model\"\r\n\r\nwhisper-1\r\n"), "{text}");
        assert!(
            text.contains("filename=\"a%22b%0D%0A.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n"),
            "{text}"
        );
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        let (_, without) = multipart_body(&form, None)?;
        assert!(!String::from_utf8(without)?.contains("name=\"model\""));
        Ok(())
    }

    #[test]
    fn json_model_is_set_or_removed() -> Result<(), Box<dyn std::error::Error>> {
        let body: Value = serde_json::from_slice(&json_body(r#"{"model":"a","prompt":"x"}"#, Some("b"))?)?;
        assert_eq!(body, serde_json::json!({"model": "b", "prompt": "x"}));
        let body: Value = serde_json::from_slice(&json_body(r#"{"model":"a","prompt":"x"}"#, None)?)?;
        assert_eq!(body, serde_json::json!({"prompt": "x"}));
        assert!(known_path("../admin").is_err());
        Ok(())
    }
}
