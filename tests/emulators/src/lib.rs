//! Provider emulators for end-to-end tests and benchmarks.
//!
//! Several wire formats on one router, each built from its provider's API reference:
//! OpenAI's Chat Completions API (`/v1/chat/completions`, `/v1/models`, `/v1/models/{id}`) — completion and
//! chunk objects, usage details, logprobs, tool calls streamed as argument fragments, the error object —
//! and its legacy Completions, Images and Audio APIs ([`surface`]),
//! with Azure OpenAI and Mistral flavours beside it ([`flavours`]), Ollama's native
//! `/api/chat` ([`ollama`]), and Anthropic's Messages API (`/v1/messages`, see `anthropic`),
//! each as strict as the real one. Test behaviour is steered by `[emu:...]` directives in the
//! last user message (see [`directives`]), and requests can be recorded and read back through
//! `GET /_emu/requests`.
//!
//! ## Fault profiles
//!
//! Every route is also served under `/_f/{profile}/...`, so several gateway providers can
//! point at one emulator and misbehave differently: `base_url: http://EMU/_f/a/v1` reaches
//! `/_f/a/v1/chat/completions`, and `/_f/a/mistral/v1/...`, `/_f/a/v1/messages`,
//! `/_f/a/model/{id}/converse` and the rest work the same way. A middleware in front of the
//! router ([`faults`]) strips the prefix, counts the request against the profile and applies
//! its faults before the normal handler runs, so every wire format gets them and `[emu:...]`
//! directives still work inside a profile. A profile never set answers normally but is still
//! counted. Bedrock's SigV4 check uses the path the client sent (and signed), prefix
//! included; recorded requests (`GET /_emu/requests`) show the stripped path, except
//! Bedrock's, which show the signed one.
//!
//! | request | effect |
//! |---|---|
//! | `PUT /_emu/faults/{profile}` | replace the profile's settings (JSON below) and zero its counters; 204 |
//! | `GET /_emu/faults/{profile}` | `{"requests": N, "failed": M, "in_flight": K}` |
//! | `DELETE /_emu/faults` | forget every profile; 204 |
//!
//! | setting (all optional) | effect |
//! |---|---|
//! | `"delay_ms": N` | wait N ms before the response headers, on every request |
//! | `"status": N` | failures answer N with the route's `[emu:status=N]` error body (Anthropic, Bedrock, Gemini; OpenAI's error object elsewhere); alone, every request fails |
//! | `"fail_every": N` | requests N, 2N, 3N, … (counting from 1) fail, with `status` or 500 |
//! | `"fail_first": N` | the first N requests fail, with `status` or 500, then all succeed |
//! | `"retry_after": S` | failures carry `retry-after: S` |
//! | `"reset": true` | failures drop the connection with no HTTP response; alone, every request does |
//! | `"context_bytes": N` | a request body over N bytes answers OpenAI's 400 `context_length_exceeded` (a small window) |
//!
//! `requests` counts every request that reached the profile, `failed` those answered with a
//! fault (resets included), and `in_flight` the requests being handled now (also decremented
//! when a client hangs up mid-request). Failures are deterministic: no randomness.
//!
//! It is also the upstream of `make bench`, so the hot path avoids needless work: the request
//! body is deserialised borrowing from the received bytes, responses are serialised straight
//! from borrowed structs, and a stream is encoded into one buffer that is then sent slice by
//! slice. Nothing is recorded unless [`Options::record`] is set.
//!
//! ## The ledger
//!
//! `GET /_emu/ledger` tallies chat completions (OpenAI format) that name a `user`, by the
//! `user` up to its last `-`: completed ones with their prompt and completion tokens,
//! cancelled ones (the client left first) with the tokens the answer would have had and
//! the time each was cancelled, and aborted ones; plus `open_connections`, the TCP
//! connections open now. `DELETE /_emu/ledger` starts it over. Soak tests hold the
//! gateway's metering and its connection handling against it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post, put};
use axum::serve::ListenerExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod anthropic;
mod bedrock;
mod chat;
pub mod directives;
mod embeddings;
mod faults;
mod flavours;
mod gemini;
mod ollama;
mod record;
mod routes;
mod schema;
mod surface;
mod wire;

/// How an emulator behaves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The key clients must send as `Authorization: Bearer <key>`; `None` accepts anything.
    pub api_key: Option<String>,
    /// Keep the last 200 API requests for `GET /_emu/requests`. Off for benchmarks.
    pub record: bool,
}

/// A running emulator on a loopback port; dropping it stops accepting connections.
#[derive(Debug)]
pub struct Emulator {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
}

impl Emulator {
    /// The OpenAI base URL of this emulator, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops accepting connections (connections already open finish on their own).
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `127.0.0.1:0` and serves in a background task.
pub async fn spawn(opts: Options) -> io::Result<Emulator> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, opts));
    Ok(Emulator { addr, task })
}

/// Serves the emulator on `listener` until the task is dropped or the listener fails.
/// Open connections are counted (`open_connections` in `GET /_emu/ledger`).
pub async fn serve(listener: TcpListener, opts: Options) -> io::Result<()> {
    let open = Arc::new(AtomicI64::new(0));
    let listener = Counted {
        inner: listener.tap_io(|tcp| {
            // Best effort: a socket that refuses NODELAY still works, only slower.
            let _ = tcp.set_nodelay(true);
        }),
        open: Arc::clone(&open),
    };
    axum::serve(listener, app(opts, open)).await
}

/// A listener whose connections count themselves in `open` while they live.
struct Counted<L> {
    inner: L,
    open: Arc<AtomicI64>,
}

impl<L: axum::serve::Listener> axum::serve::Listener for Counted<L> {
    type Io = CountedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        self.open.fetch_add(1, Ordering::Relaxed);
        let open = Arc::clone(&self.open);
        (CountedIo { io, open }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

struct CountedIo<T> {
    io: T,
    open: Arc<AtomicI64>,
}

impl<T> Drop for CountedIo<T> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The emulator's routes, for callers that want to mount it themselves (connections are
/// not counted then).
pub fn router(opts: Options) -> Router {
    app(opts, Arc::default())
}

fn app(opts: Options, open_connections: Arc<AtomicI64>) -> Router {
    let state = Arc::new(routes::State::new(opts, open_connections));
    let routes = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/completions", post(surface::completions))
        .route("/v1/images/generations", post(surface::image_generations))
        .route("/v1/images/edits", post(surface::image_edits))
        .route("/v1/audio/transcriptions", post(surface::transcriptions))
        .route("/v1/audio/translations", post(surface::translations))
        .route("/v1/audio/speech", post(surface::speech))
        .route(
            "/openai/deployments/{deployment}/completions",
            post(surface::azure_completions),
        )
        .route("/openai/deployments/{deployment}/{a}/{b}", post(surface::azure))
        .route("/v1/models", get(routes::list_models))
        .route("/v1/models/{id}", get(routes::get_model))
        .route("/v1/messages", post(anthropic::messages))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(flavours::azure_chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings::azure_embeddings),
        )
        .route("/mistral/v1/chat/completions", post(flavours::mistral_chat))
        .route("/mistral/v1/embeddings", post(embeddings::embeddings))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(embeddings::ollama_embed))
        .route("/v1beta/models/{model_action}", post(gemini::generate))
        .route(
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{model_action}",
            post(gemini::vertex_generate),
        )
        .route("/token", post(gemini::token))
        .route("/model/{model_id}/converse", post(bedrock::converse))
        .route("/model/{model_id}/invoke", post(bedrock::invoke))
        .route(
            "/model/{model_id}/converse-stream",
            post(bedrock::converse_stream),
        )
        .route(
            "/_emu/requests",
            get(routes::recorded).delete(routes::clear_recorded),
        )
        .route("/_emu/ledger", get(routes::ledger).delete(routes::clear_ledger))
        .route("/_emu/faults", delete(faults::clear))
        .route("/_emu/faults/{profile}", put(faults::put).get(faults::get))
        .fallback(routes::not_found)
        // Image parts may carry base64 data URLs; OpenAI accepts large bodies, so do we.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(Arc::clone(&state));
    // `Router::layer` runs after routing, so the routes go behind a fallback: the fault
    // middleware sees every request first and can strip `/_f/{profile}` before routing.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(state, faults::middleware))
}
