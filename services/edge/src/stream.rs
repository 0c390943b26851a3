//! Passes a provider's chunk stream through to the client, one chunk at a
//! time (never buffered), while metering it: usage is taken from the
//! provider's usage chunk (priced, and passed on only if the client asked for
//! it), routing metadata rides on each finishing chunk, a silent provider is
//! cut off after the idle timeout, and a client that goes away drops this
//! stream — which drops the provider's — and is metered for what was sent.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use llmgw_kit::metrics::GaugeGuard;
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use tokio::sync::OwnedSemaphorePermit;

use crate::pipeline::{MeterGuard, cost};
use crate::report::Release;

struct State {
    inner: ChunkStream,
    /// Held until the stream ends or is dropped.
    _permit: OwnedSemaphorePermit,
    /// Tells the router when the stream is over (or broke).
    release: Option<Release>,
    guard: MeterGuard,
    metadata: Arc<pb::RoutingMetadata>,
    price: pb::Price,
    client_wants_usage: bool,
    idle: Duration,
    done: bool,
    /// `llmgw_in_flight_streams`, held while the stream lives.
    _streaming: GaugeGuard,
    /// Whether a chunk has gone out (time to first token is recorded once).
    started: bool,
}

/// What a running stream holds until it ends: its in-flight permit, and
/// the try the router counts as in flight.
pub struct Held {
    pub permit: OwnedSemaphorePermit,
    pub release: Release,
}

pub fn metered(
    inner: ChunkStream,
    Held { permit, release }: Held,
    guard: MeterGuard,
    metadata: Arc<pb::RoutingMetadata>,
    price: pb::Price,
    client_wants_usage: bool,
    idle: Duration,
) -> ChunkStream {
    let state = State {
        inner,
        _permit: permit,
        release: Some(release),
        guard,
        metadata,
        price,
        client_wants_usage,
        idle,
        done: false,
        _streaming: GaugeGuard::new(&llmgw_kit::metrics::edge().in_flight_streams),
        started: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let item = match tokio::time::timeout(st.idle, st.inner.next()).await {
                Ok(item) => item,
                Err(_) => {
                    let provider = st.metadata.used_provider.clone();
                    let err = GwError::new(
                        ErrorCode::UpstreamTimeout,
                        format!("provider `{provider}` sent nothing for {:?}", st.idle),
                    )
                    .with_provider(provider);
                    st.guard.record("error", err.http_status(), None);
                    if let Some(release) = st.release.take() {
                        release.failed();
                    }
                    st.done = true;
                    return Some((Err(err), st));
                }
            };
            match item {
                None => {
                    st.guard.record("ok", 200, None);
                    st.release.take();
                    return None;
                }
                Some(Err(err)) => {
                    st.guard.record("error", err.http_status(), None);
                    if let Some(release) = st.release.take() {
                        release.failed();
                    }
                    st.done = true;
                    return Some((Err(err), st));
                }
                Some(Ok(mut chunk)) => {
                    if !st.started {
                        st.started = true;
                        st.guard.first_chunk();
                    }
                    st.guard.count(&chunk);
                    if let Some(mut usage) = chunk.usage.take() {
                        usage.cost_usd = Some(cost(&st.price, &usage));
                        if st.client_wants_usage {
                            chunk.usage = Some(usage);
                            chunk.metadata = Some((*st.metadata).clone());
                        }
                        st.guard.usage = Some(usage);
                        if !st.client_wants_usage && chunk.choices.is_empty() {
                            continue;
                        }
                    }
                    if chunk
                        .choices
                        .iter()
                        .any(|c| c.finish_reason != pb::FinishReason::Unspecified as i32)
                    {
                        chunk.metadata = Some((*st.metadata).clone());
                    }
                    return Some((Ok(chunk), st));
                }
            }
        }
    }))
}
