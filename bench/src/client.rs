//! The HTTP client: hyper 1 over one keep-alive TCP connection per simulated
//! client, TCP_NODELAY, no pool and no TLS, so the client costs the same for
//! the emulator and for the gateway and adds as little as it can.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The chat endpoint every scenario calls, on the emulator and on the gateway.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// Where requests go: the emulator itself (`direct`) or a gateway edge.
#[derive(Debug)]
pub struct Target {
    /// `direct`, `one-process` or `split`.
    pub name: &'static str,
    pub addr: SocketAddr,
    host: HeaderValue,
    auth: HeaderValue,
}

impl Target {
    pub fn new(name: &'static str, addr: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            addr,
            host: HeaderValue::try_from(addr.to_string())?,
            auth: HeaderValue::try_from(format!("Bearer {api_key}"))?,
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
        headers.insert(AUTHORIZATION, target.auth.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.sender.ready().await.context("connection closed")?;
        Ok(self.sender.send_request(req).await?)
    }

    /// POSTs `body` and reads the whole answer.
    pub async fn post(&mut self, target: &Target, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.send(target, Method::POST, CHAT_PATH, body).await?;
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

    /// POSTs a streaming chat request and reads its SSE events as they come.
    pub async fn stream(&mut self, target: &Target, body: Bytes) -> anyhow::Result<StreamOutcome> {
        let started = Instant::now();
        let resp = self.send(target, Method::POST, CHAT_PATH, body).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let text = resp.into_body().collect().await?.to_bytes();
            bail!("status {status}: {}", snippet(&text));
        }
        let mut body = resp.into_body();
        let mut out = StreamOutcome::default();
        let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut last_content: Option<Instant> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            let now = Instant::now();
            buf.extend_from_slice(&data);
            // Every complete event in the buffer arrived at `now`.
            while let Some(end) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end.1).take(end.0).collect();
                for line in event.split(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let Some(payload) = line.strip_prefix(b"data:") else {
                        continue;
                    };
                    let payload = payload.strip_prefix(b" ").unwrap_or(payload);
                    if payload == b"[DONE]" {
                        out.done = true;
                        out.done_after = Some(now - started);
                        continue;
                    }
                    if out.done {
                        out.after_done += 1;
                    }
                    let Some(content) = delta_content(payload)? else {
                        continue;
                    };
                    match last_content {
                        None => out.ttft = Some(now - started),
                        Some(prev) => out.gaps.push(now - prev),
                    }
                    last_content = Some(now);
                    out.deltas.push(content);
                }
            }
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            bail!("stream ended inside an event: {}", snippet(&buf));
        }
        Ok(out)
    }
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
    /// Whether `data: [DONE]` was seen.
    pub done: bool,
    /// Time from sending the request to `data: [DONE]`.
    pub done_after: Option<Duration>,
    /// Events after `[DONE]` (there should be none).
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
}
