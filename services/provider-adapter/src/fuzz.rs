//! Entry points for the fuzz targets under `fuzz/` at the repository root:
//! hidden, not an API, free to change with them.
//!
//! Each runs the adapter's own decoders on bytes as a provider would send
//! them, with no network and no runtime: a whole response body, an error
//! body, or a stream body cut into the given pieces (as the network may
//! deliver it) and drained to its end, framing (SSE, NDJSON, AWS event
//! stream) included. The streams are the ones `Provider::stream` returns.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use llmgw_kit::GwError;
use llmgw_proto::{ChatChunk, ChatRequest, ChatResponse};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::http::Peer;
use crate::providers::{anthropic, bedrock, gemini, ollama, openai};

/// The wire formats with a decoder of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions (and every compatible host, Mistral, Azure).
    OpenAi,
    Anthropic,
    /// Gemini on AI Studio and on Vertex AI.
    Gemini,
    Bedrock,
    Ollama,
}

/// What a stream yielded, in order, and whether it stopped yielding while
/// its body still had bytes ready (in production: a stream that hangs).
#[derive(Debug)]
pub struct Drained {
    pub items: Vec<Result<ChatChunk, GwError>>,
    pub stalled: bool,
}

fn peer(wire: Wire) -> Peer {
    Peer::new(
        match wire {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
            Wire::Bedrock => "bedrock",
            Wire::Ollama => "ollama",
        },
        None,
    )
}

/// A non-streaming answer's body, decoded as `Provider::complete` does
/// (`json_mode`: `response_format` was emulated with a tool, where the
/// provider does that).
pub fn response(wire: Wire, body: &[u8], json_mode: bool) -> Result<ChatResponse, String> {
    match wire {
        Wire::OpenAi => llmgw_kit::openai::parse_response(body),
        Wire::Anthropic => anthropic::parse_response(body, json_mode),
        Wire::Gemini => gemini::parse_response(body, "gemini-model").ok_or_else(|| "invalid".to_owned()),
        Wire::Bedrock => bedrock::parse_response(body, "req-id", "bedrock-model", json_mode),
        Wire::Ollama => ollama::response(body),
    }
}

/// A non-2xx answer's body, classified as each provider's `send` does (the
/// OpenAI format: as OpenAI, Azure and Mistral each do).
pub fn error(wire: Wire, status: u16, body: &[u8]) -> Vec<GwError> {
    let peer = peer(wire);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = HeaderMap::new();
    let classify = |body: &[u8]| peer.status_error(status, &headers, body);
    match wire {
        Wire::OpenAi => [None, openai::azure_error(body), openai::mistral_error(body)]
            .iter()
            .map(|rewritten| classify(rewritten.as_deref().unwrap_or(body)))
            .collect(),
        Wire::Anthropic => vec![anthropic::refine(&peer, classify(body))],
        Wire::Gemini => vec![gemini::refine_error(&peer, classify(body), status, body)],
        Wire::Bedrock => vec![classify(&bedrock::openai_error(body, None).0)],
        Wire::Ollama => vec![classify(ollama::openai_error(body).as_deref().unwrap_or(body))],
    }
}

/// A streaming answer's body, delivered in `pieces`, decoded to its end.
pub fn stream(wire: Wire, pieces: &[&[u8]], json_mode: bool) -> Drained {
    let body = futures_util::stream::iter(
        pieces
            .iter()
            .map(|p| Ok::<_, reqwest::Error>(Bytes::copy_from_slice(p)))
            .collect::<Vec<_>>(),
    );
    let peer = peer(wire);
    match wire {
        Wire::OpenAi => drain(openai::decode_stream(body, peer)),
        Wire::Anthropic => drain(anthropic::decode_stream(body, peer, json_mode)),
        Wire::Gemini => drain(gemini::decode_stream(body, peer, "gemini-model")),
        Wire::Bedrock => drain(bedrock::decode_stream(
            body,
            bedrock::Translator::new(peer, "req-id".to_owned(), "bedrock-model".to_owned(), json_mode),
        )),
        Wire::Ollama => drain(ollama::decode_stream(body, peer)),
    }
}

/// Polls `stream` until it ends. Its body is always ready, so `Pending`
/// means the decoder would wait for nothing.
fn drain(stream: impl Stream<Item = Result<ChatChunk, GwError>>) -> Drained {
    let mut stream = pin!(stream);
    let mut cx = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    loop {
        match stream.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(item)) => items.push(item),
            Poll::Ready(None) => {
                return Drained {
                    items,
                    stalled: false,
                };
            }
            Poll::Pending => return Drained { items, stalled: true },
        }
    }
}

/// Writes `req` (a request the edge accepted) in every provider's wire
/// format, as each provider's `complete` and `stream` would; the errors are
/// the 400s a client would see.
pub fn requests(req: &ChatRequest) -> Vec<Result<Vec<u8>, GwError>> {
    let mut out = Vec::with_capacity(8);
    for include_usage in [None, Some(true)] {
        out.push(llmgw_kit::openai::request_json(req, "model", include_usage));
    }
    let mut mistral = req.clone();
    out.push(
        openai::mistral_request(&mut mistral)
            .and_then(|()| llmgw_kit::openai::request_json(&mistral, "m", None)),
    );
    for stream in [false, true] {
        out.push(anthropic::request_body(req, "claude", stream, 4096, "anthropic").map(|(body, _)| body));
    }
    for kind in ["google", "vertex-ai"] {
        let who = gemini::Who { name: "gemini", kind };
        out.push(gemini::request_body(req, who).map(|v| v.to_string().into_bytes()));
    }
    out.push(bedrock::request_body(req, "bedrock").map(|(body, _)| body));
    out
}
