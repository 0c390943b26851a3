//! The HTTP client: hyper 1 over one keep-alive TCP connection per simulated
//! client, TCP_NODELAY, no pool and no TLS, so the client costs the same for
//! the emulator and for the gateway and adds as little as it can.
//!
//! Streams are read in the wire format of the target: OpenAI SSE (the
//! gateway, and the emulator's OpenAI route), Anthropic Messages SSE, or
//! Bedrock ConverseStream's binary event-stream frames (decoded with
//! `aws-smithy-eventstream`), so a native stream straight from the emulator
//! can be compared with the same stream translated by the gateway.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The chat endpoint every scenario calls, on the emulator and on the gateway.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// The wire format a target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions (the gateway, and the emulator's OpenAI route).
    OpenAi,
    /// Anthropic Messages, `POST /v1/messages`, SSE with `event:` lines.
    Anthropic,
    /// Bedrock ConverseStream, `application/vnd.amazon.eventstream` frames.
    Bedrock,
}

impl Wire {
    /// The event that ends a complete stream.
    pub fn end_marker(self) -> &'static str {
        match self {
            Self::OpenAi => "data: [DONE]",
            Self::Anthropic => "a message_stop event",
            Self::Bedrock => "messageStop and metadata frames",
        }
    }
}

/// Where requests go: the emulator itself (`direct`) or a gateway edge.
#[derive(Debug)]
pub struct Target {
    /// `direct`, `one-process` or `split`.
    pub name: &'static str,
    pub addr: SocketAddr,
    pub wire: Wire,
    /// The path requests are POSTed to.
    path: String,
    host: HeaderValue,
    /// The header carrying the key, if any.
    auth: Option<(HeaderName, HeaderValue)>,
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_LLMGW_ATTEMPTS: HeaderName = HeaderName::from_static("x-llmgw-attempts");
const X_LLMGW_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-llmgw-overhead-ms");

impl Target {
    /// An OpenAI-compatible endpoint with a bearer key.
    pub fn new(name: &'static str, addr: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            addr,
            wire: Wire::OpenAi,
            path: CHAT_PATH.to_owned(),
            host: HeaderValue::try_from(addr.to_string())?,
            auth: Some((AUTHORIZATION, HeaderValue::try_from(format!("Bearer {api_key}"))?)),
        })
    }

    /// The emulator's Anthropic Messages route, as Anthropic's own clients
    /// call it (`x-api-key`, `anthropic-version`).
    pub fn anthropic(name: &'static str, addr: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            addr,
            wire: Wire::Anthropic,
            path: "/v1/messages".to_owned(),
            host: HeaderValue::try_from(addr.to_string())?,
            auth: Some((X_API_KEY, HeaderValue::try_from(api_key)?)),
        })
    }

    /// The same endpoint under another path (R: the emulator's chat route
    /// under a fault profile, `/_f/{profile}/v1/chat/completions`).
    pub fn with_path(mut self, path: String) -> Self {
        self.path = path;
        self
    }

    /// The emulator's Bedrock ConverseStream route for `model_id`, unsigned:
    /// it must be an emulator started without `--api-key`, which then
    /// verifies no signature (see `bench/src/main.rs`).
    pub fn bedrock(name: &'static str, addr: SocketAddr, model_id: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            addr,
            wire: Wire::Bedrock,
            // The model id in the path is percent-encoded (`:` is `%3A`), as
            // the AWS SDKs and the gateway send it.
            path: format!("/model/{}/converse-stream", model_id.replace(':', "%3A")),
            host: HeaderValue::try_from(addr.to_string())?,
            auth: None,
        })
    }
}

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the peer or we close the connection; errors show up
            // on the next request, where they are counted.
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    async fn send(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))?;
        let headers = req.headers_mut();
        headers.insert(HOST, target.host.clone());
        if let Some((name, value)) = &target.auth {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if target.wire == Wire::Anthropic {
            headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static("2023-06-01"));
        }
        self.sender.ready().await.context("connection closed")?;
        Ok(self.sender.send_request(req).await?)
    }

    /// POSTs `body` and reads the whole answer.
    pub async fn post(&mut self, target: &Target, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        let a = self.post_answer(target, body).await?;
        Ok((a.status, a.body))
    }

    /// [`Conn::post`], also returning the gateway's `x-llmgw-attempts` and
    /// `x-llmgw-overhead-ms` headers.
    pub async fn post_answer(&mut self, target: &Target, body: Bytes) -> anyhow::Result<Answer> {
        let resp = self.send(target, Method::POST, &target.path, body).await?;
        let status = resp.status();
        let header = |name: &HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let attempts = header(&X_LLMGW_ATTEMPTS).and_then(|v| v.parse().ok());
        let overhead_ms = header(&X_LLMGW_OVERHEAD_MS).and_then(|v| v.parse().ok());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            attempts,
            overhead_ms,
            body,
        })
    }

    /// PUTs `body` to `path` (the emulator's `/_emu/faults/{profile}`).
    pub async fn put(
        &mut self,
        target: &Target,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.send(target, Method::PUT, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// GETs `path` and reads the whole answer.
    pub async fn get(&mut self, target: &Target, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.send(target, Method::GET, path, Bytes::new()).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// POSTs a streaming request and reads its events as they come, in the
    /// target's wire format.
    pub async fn stream(&mut self, target: &Target, body: Bytes) -> anyhow::Result<StreamOutcome> {
        let started = Instant::now();
        let resp = self.send(target, Method::POST, &target.path, body).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let text = resp.into_body().collect().await?.to_bytes();
            bail!("status {status}: {}", snippet(&text));
        }
        let mut body = resp.into_body();
        let mut out = StreamOutcome::default();
        let mut decoder = Decoder::new(target.wire);
        let mut items = Vec::with_capacity(128);
        let mut last_content: Option<Instant> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            let now = Instant::now();
            // Every complete event in the buffer arrived at `now`.
            decoder.feed(&data, &mut items)?;
            for item in items.drain(..) {
                if out.done {
                    out.after_done += 1;
                }
                match item {
                    Item::End => {
                        if !out.done {
                            out.done = true;
                            out.done_after = Some(now - started);
                        }
                    }
                    Item::Content(content) => {
                        match last_content {
                            None => out.ttft = Some(now - started),
                            Some(prev) => out.gaps.push(now - prev),
                        }
                        last_content = Some(now);
                        out.deltas.push(content);
                    }
                    Item::Other => {}
                }
            }
        }
        decoder.finish()?;
        Ok(out)
    }
}

/// A whole non-streamed answer.
pub struct Answer {
    pub status: StatusCode,
    /// `x-llmgw-attempts`: the tries the gateway made, fallbacks included.
    pub attempts: Option<u32>,
    /// `x-llmgw-overhead-ms`: the gateway's own time, by its own account.
    pub overhead_ms: Option<f64>,
    pub body: Bytes,
}

/// What a decoder found in a stream.
enum Item {
    /// Text content, in order.
    Content(String),
    /// The event that ends the stream.
    End,
    /// Anything else (role, stop reason, usage, pings).
    Other,
}

/// Splits a stream into events, whatever the bytes' chunking.
enum Decoder {
    /// SSE: bytes not yet making a complete event.
    Sse { wire: Wire, buf: Vec<u8> },
    /// AWS event-stream frames.
    Frames {
        buf: BytesMut,
        decoder: MessageFrameDecoder,
        /// `messageStop` seen (`metadata` ends the stream after it).
        stopped: bool,
    },
}

impl Decoder {
    fn new(wire: Wire) -> Self {
        match wire {
            Wire::OpenAi | Wire::Anthropic => Self::Sse {
                wire,
                buf: Vec::with_capacity(16 << 10),
            },
            Wire::Bedrock => Self::Frames {
                buf: BytesMut::with_capacity(16 << 10),
                decoder: MessageFrameDecoder::new(),
                stopped: false,
            },
        }
    }

    fn feed(&mut self, data: &[u8], items: &mut Vec<Item>) -> anyhow::Result<()> {
        match self {
            Self::Sse { wire, buf } => {
                buf.extend_from_slice(data);
                while let Some(end) = find_event_end(buf) {
                    let event: Vec<u8> = buf.drain(..end.1).take(end.0).collect();
                    match wire {
                        Wire::Anthropic => items.push(anthropic_event(&event)?),
                        _ => openai_event(&event, items)?,
                    }
                }
            }
            Self::Frames {
                buf,
                decoder,
                stopped,
            } => {
                buf.extend_from_slice(data);
                while let DecodedFrame::Complete(message) = decoder
                    .decode_frame(&mut *buf)
                    .context("bad event-stream frame")?
                {
                    items.push(bedrock_frame(&message, stopped)?);
                }
            }
        }
        Ok(())
    }

    /// Fails when the stream ended inside an event.
    fn finish(&self) -> anyhow::Result<()> {
        match self {
            Self::Sse { buf, .. } if !buf.iter().all(u8::is_ascii_whitespace) => {
                bail!("stream ended inside an event: {}", snippet(buf))
            }
            Self::Frames { buf, .. } if !buf.is_empty() => {
                bail!("stream ended inside a frame ({} bytes left)", buf.len())
            }
            _ => Ok(()),
        }
    }
}

/// The `data:` lines of an OpenAI SSE event.
fn openai_event(event: &[u8], items: &mut Vec<Item>) -> anyhow::Result<()> {
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(payload) = line.strip_prefix(b"data:") else {
            continue;
        };
        let payload = payload.strip_prefix(b" ").unwrap_or(payload);
        if payload == b"[DONE]" {
            items.push(Item::End);
            continue;
        }
        items.push(match delta_content(payload)? {
            Some(content) => Item::Content(content),
            None => Item::Other,
        });
    }
    Ok(())
}

/// One Anthropic SSE event: `event: NAME` and `data: {"type": NAME, ...}`.
fn anthropic_event(event: &[u8]) -> anyhow::Result<Item> {
    let mut name: Option<&[u8]> = None;
    let mut data: Option<&[u8]> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"event:") {
            name = Some(v.strip_prefix(b" ").unwrap_or(v));
        } else if let Some(v) = line.strip_prefix(b"data:") {
            data = Some(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    let data = data.with_context(|| format!("event without data: {}", snippet(event)))?;
    let v: serde_json::Value =
        serde_json::from_slice(data).with_context(|| format!("bad SSE data: {}", snippet(data)))?;
    let kind = v
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if name.is_some_and(|n| n != kind.as_bytes()) {
        bail!("event name does not match its data's type: {}", snippet(event));
    }
    Ok(match kind {
        "error" => bail!("error event in stream: {}", snippet(data)),
        "message_stop" => Item::End,
        "content_block_delta" => match v.pointer("/delta/text").and_then(serde_json::Value::as_str) {
            Some(text) if !text.is_empty() && v.pointer("/delta/type").is_some_and(|t| t == "text_delta") => {
                Item::Content(text.to_owned())
            }
            _ => Item::Other,
        },
        _ => Item::Other,
    })
}

/// One ConverseStream frame: an event (`:event-type`) with a JSON payload,
/// or an exception.
fn bedrock_frame(
    message: &aws_smithy_types::event_stream::Message,
    stopped: &mut bool,
) -> anyhow::Result<Item> {
    let header = |name: &str| {
        message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str().to_owned())
    };
    let payload = message.payload();
    if header(":message-type").as_deref() != Some("event") {
        bail!(
            "{} frame in stream: {}",
            header(":exception-type").unwrap_or_else(|| "non-event".into()),
            snippet(payload)
        );
    }
    let kind = header(":event-type").context("frame without :event-type")?;
    Ok(match kind.as_str() {
        "contentBlockDelta" => {
            let v: serde_json::Value = serde_json::from_slice(payload)
                .with_context(|| format!("bad frame payload: {}", snippet(payload)))?;
            match v.pointer("/delta/text").and_then(serde_json::Value::as_str) {
                Some(text) if !text.is_empty() => Item::Content(text.to_owned()),
                _ => Item::Other,
            }
        }
        "messageStop" => {
            *stopped = true;
            Item::Other
        }
        "metadata" if *stopped => Item::End,
        "metadata" => bail!("metadata frame before messageStop"),
        _ => Item::Other,
    })
}

/// What one streamed answer looked like to the client.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// Time from sending the request to the first event with content.
    pub ttft: Option<Duration>,
    /// Time between successive content events.
    pub gaps: Vec<Duration>,
    /// Content deltas in arrival order.
    pub deltas: Vec<String>,
    /// Whether the stream's end was seen (`data: [DONE]`, Anthropic's
    /// `message_stop`, Bedrock's `metadata` after `messageStop`).
    pub done: bool,
    /// Time from sending the request to that end.
    pub done_after: Option<Duration>,
    /// Events after the end (there should be none).
    pub after_done: usize,
}

/// `(event length, event length + separator)` of the first complete event.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// `choices[0].delta.content` of a chunk when it is a non-empty string; an
/// error object in the stream is an error.
fn delta_content(payload: &[u8]) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).with_context(|| format!("bad SSE data: {}", snippet(payload)))?;
    if v.get("error").is_some() {
        bail!("error event in stream: {}", snippet(payload));
    }
    Ok(v.pointer("/choices/0/delta/content")
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned))
}

/// `choices[0].message.content` of a non-streamed answer.
pub fn message_content(body: &[u8]) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).with_context(|| format!("bad JSON answer: {}", snippet(body)))?;
    v.pointer("/choices/0/message/content")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no choices[0].message.content in {}", snippet(body)))
}

/// The first 200 bytes of a body, for error messages.
pub fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines() {
        assert_eq!(find_event_end(b"data: a\n\ndata: b\n\n"), Some((7, 9)));
        assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 11)));
        assert_eq!(find_event_end(b"data: a\n"), None);
    }

    #[test]
    fn content_is_read_from_the_delta() {
        let chunk = br#"{"choices":[{"index":0,"delta":{"content":" ipsum"}}]}"#;
        assert_eq!(delta_content(chunk).unwrap().as_deref(), Some(" ipsum"));
        let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(delta_content(role).unwrap(), None);
        assert!(delta_content(br#"{"error":{"message":"x"}}"#).is_err());
    }

    #[test]
    fn anthropic_events_give_text_deltas_and_the_end() {
        let mut d = Decoder::new(Wire::Anthropic);
        let mut items = Vec::new();
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,",
            "\"delta\":{\"type\":\"text_delta\",\"text\":\"lorem\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        // Split mid-event: nothing is lost or produced early.
        let (a, b) = stream.split_at(70);
        d.feed(a.as_bytes(), &mut items).unwrap();
        assert_eq!(items.len(), 1);
        d.feed(b.as_bytes(), &mut items).unwrap();
        d.finish().unwrap();
        assert!(
            matches!(items[..], [Item::Other, Item::Other, Item::Content(ref t), Item::End] if t == "lorem")
        );
        let err = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        assert!(
            Decoder::new(Wire::Anthropic)
                .feed(err.as_bytes(), &mut items)
                .is_err()
        );
        let mismatch = "event: ping\ndata: {\"type\":\"message_stop\"}\n\n";
        assert!(
            Decoder::new(Wire::Anthropic)
                .feed(mismatch.as_bytes(), &mut items)
                .is_err()
        );
    }

    fn frame(buf: &mut Vec<u8>, kind: &'static str, payload: &str) {
        use aws_smithy_types::event_stream::{Header, HeaderValue as V, Message};
        let m = Message::new(payload.as_bytes().to_vec())
            .add_header(Header::new(":event-type", V::String(kind.into())))
            .add_header(Header::new(":message-type", V::String("event".into())));
        aws_smithy_eventstream::frame::write_message_to(&m, buf).unwrap();
    }

    #[test]
    fn bedrock_frames_give_text_deltas_and_the_end() {
        let mut buf = Vec::new();
        frame(&mut buf, "messageStart", r#"{"role":"assistant"}"#);
        frame(
            &mut buf,
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"lorem"}}"#,
        );
        frame(
            &mut buf,
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":" ipsum"}}"#,
        );
        frame(&mut buf, "contentBlockStop", r#"{"contentBlockIndex":0}"#);
        frame(&mut buf, "messageStop", r#"{"stopReason":"end_turn"}"#);
        frame(&mut buf, "metadata", r#"{"usage":{}}"#);
        // Fed a few bytes at a time, as a socket may deliver them.
        let mut d = Decoder::new(Wire::Bedrock);
        let mut items = Vec::new();
        for piece in buf.chunks(7) {
            d.feed(piece, &mut items).unwrap();
        }
        d.finish().unwrap();
        let texts: Vec<&str> = items
            .iter()
            .filter_map(|i| match i {
                Item::Content(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["lorem", " ipsum"]);
        assert!(matches!(items.last(), Some(Item::End)));
        assert_eq!(items.len(), 6);

        // Metadata without messageStop, and a truncated frame, are errors.
        let mut early = Vec::new();
        frame(&mut early, "metadata", "{}");
        assert!(Decoder::new(Wire::Bedrock).feed(&early, &mut items).is_err());
        let mut d = Decoder::new(Wire::Bedrock);
        d.feed(&buf[..buf.len() - 3], &mut items).unwrap();
        assert!(d.finish().is_err());
    }
}
