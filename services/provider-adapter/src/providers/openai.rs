//! `type: openai`: OpenAI's Chat Completions API, and any host that speaks it
//! (the base URL is config).
//!
//! The wire format itself lives in `llmgw_kit::openai` (shared with the edge,
//! which speaks it to clients); this module is the HTTP side: the request's
//! URL and headers, and the SSE stream turned into canonical chunks as each
//! event arrives.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::{Event, EventStream, EventStreamError};
use futures_util::Stream;
use llmgw_kit::config::{CompatHost, ProviderConfig, ProviderKind};
use llmgw_kit::grpc::MAX_MESSAGE_BYTES;

use llmgw_kit::openai::{parse_chunk, parse_response, parse_upstream_error, request_json};
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{ChatChunk, ChatRequest, ChatResponse, Target};
use pin_project_lite::pin_project;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::Provider;
use crate::http::Peer;

const ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
const PROJECT: HeaderName = HeaderName::from_static("openai-project");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// An OpenAI-compatible provider.
pub(crate) struct OpenAi {
    peer: Peer,
    /// `{base_url}/chat/completions`, parsed once.
    url: reqwest::Url,
    /// Sent on every request: the provider's key (marked sensitive), its
    /// organization and project, the content type. Nothing from the client.
    headers: HeaderMap,
    /// The provider's own per-try timeout, used when the target names none.
    timeout: Duration,
    /// The host's quirks (an OpenAI-compatible row); `None` for OpenAI.
    host: Option<&'static CompatHost>,
    client: reqwest::Client,
}

impl OpenAi {
    pub(crate) fn new(config: &ProviderConfig, client: reqwest::Client) -> Result<Self, GwError> {
        let name = &config.name;
        let invalid =
            |what: &str| GwError::internal(format!("provider `{name}`: {what}")).with_provider(name);
        let url = reqwest::Url::parse(&format!("{}/chat/completions", config.base_url))
            .map_err(|e| invalid(&format!("invalid base_url: {e}")))?;
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            let header = HeaderName::try_from(header.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| invalid(&format!("`headers.{header}` is not a valid header value")))?;
            headers.insert(header, value);
        }
        headers.insert(CONTENT_TYPE, JSON);
        if let Some(key) = &config.api_key {
            // Never echo the value: it is a secret.
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| invalid("the api key is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        for (header, value, field) in [
            (ORGANIZATION, &config.organization, "organization"),
            (PROJECT, &config.project, "project"),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                let value = HeaderValue::try_from(value)
                    .map_err(|_| invalid(&format!("`{field}` is not a valid header value")))?;
                headers.insert(header, value);
            }
        }
        Ok(Self {
            peer: Peer::new(name, config.api_key.clone()),
            url,
            headers,
            timeout: config.timeout,
            host: match config.kind {
                ProviderKind::Compatible(host) => Some(host),
                _ => None,
            },
            client,
        })
    }

    fn timeout(&self, target: &Target) -> Duration {
        match target.timeout_ms {
            0 => self.timeout,
            ms => Duration::from_millis(u64::from(ms)),
        }
    }

    /// The request for `req`, for the provider's `model`. The body's `stream`
    /// follows the call (whatever the canonical request says), and streams
    /// always ask for usage: the gateway meters every stream (the edge drops
    /// the usage chunk when the client did not ask for it).
    fn request(
        &self,
        target: &Target,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, GwError> {
        let req = if req.stream == stream {
            Cow::Borrowed(req)
        } else {
            Cow::Owned(ChatRequest {
                stream,
                ..req.clone()
            })
        };
        if let Some(host) = self.host
            && !host.multiple_choices
            && req.n.is_some_and(|n| n > 1)
        {
            return Err(GwError::invalid(
                "n",
                format!(
                    "provider `{}` ({}) does not support `n` > 1",
                    self.peer.name(),
                    host.type_name
                ),
            )
            .with_provider(self.peer.name()));
        }
        let force_usage = stream && self.host.is_none_or(|h| h.stream_usage);
        let body = request_json(&req, &target.model, force_usage.then_some(true))
            .map_err(|e| e.with_provider(self.peer.name()))?;
        Ok(self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(ACCEPT, if stream { EVENT_STREAM } else { JSON })
            .body(body))
    }
}

#[async_trait]
impl Provider for OpenAi {
    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError> {
        let request = self.request(target, req, false)?;
        let timeout = self.timeout(target);
        let call = async {
            let mut response = self.peer.send(request).await?;
            self.peer
                .read_limited(&mut response, MAX_MESSAGE_BYTES, true)
                .await
        };
        let body = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        parse_response(&body).map_err(|_| {
            let name = self.peer.name();
            match parse_upstream_error(&body) {
                // Some hosts answer 200 with an error object.
                Some(e) if !e.message.is_empty() => self.peer.error(
                    ErrorCode::UpstreamError,
                    format!("provider `{name}`: {}", e.message),
                ),
                _ => self.peer.error(
                    ErrorCode::UpstreamError,
                    format!("provider `{name}` sent an invalid response"),
                ),
            }
        })
    }

    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError> {
        let request = self.request(target, req, true)?;
        let timeout = self.timeout(target);
        let response = tokio::time::timeout(timeout, self.peer.send(request))
            .await
            .map_err(|_| self.peer.timeout_error(timeout))??;
        Ok(Box::pin(Chunks {
            events: EventStream::new(response.bytes_stream()),
            peer: self.peer.clone(),
            finished: false,
        }))
    }
}

pin_project! {
    /// The provider's SSE events as canonical chunks, one per `data:` event,
    /// yielded as each arrives. Owns the response body: dropping this drops
    /// the connection, which is how a client's disconnect cancels the call.
    struct Chunks<S> {
        #[pin]
        events: S,
        peer: Peer,
        // Set after `[DONE]` or an error: nothing more is read.
        finished: bool,
    }
}

impl<S> Stream for Chunks<S>
where
    S: Stream<Item = Result<Event, EventStreamError<reqwest::Error>>>,
{
    type Item = Result<ChatChunk, GwError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.finished {
                return Poll::Ready(None);
            }
            let name = this.peer.name();
            let event = match ready!(this.events.as_mut().poll_next(cx)) {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    *this.finished = true;
                    let err = match &e {
                        EventStreamError::Transport(e) => this.peer.body_error(e),
                        EventStreamError::Utf8(_) | EventStreamError::Parser(_) => this.peer.error(
                            ErrorCode::UpstreamError,
                            format!("provider `{name}` sent a malformed event stream"),
                        ),
                    };
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    *this.finished = true;
                    let err = this.peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{name}` closed the stream early"),
                    );
                    return Poll::Ready(Some(Err(err)));
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                *this.finished = true;
                // One more look, never a wait: when the body's end has already
                // arrived, reading it lets the connection go back to the pool.
                let _ = this.events.as_mut().poll_next(cx);
                return Poll::Ready(None);
            }
            // Cheap pre-check: a chunk never has an `"error"` key, and text
            // inside a chunk's strings has its quotes escaped.
            if (event.event == "error" || data.contains("\"error\""))
                && let Some(e) = parse_upstream_error(data.as_bytes())
            {
                *this.finished = true;
                let what = if e.message.is_empty() {
                    "an error mid-stream"
                } else {
                    e.message.as_str()
                };
                return Poll::Ready(Some(Err(this
                    .peer
                    .error(ErrorCode::UpstreamError, format!("provider `{name}`: {what}")))));
            }
            if event.event == "error" {
                *this.finished = true;
                let err = this.peer.error(
                    ErrorCode::UpstreamError,
                    format!("provider `{name}` sent an error event"),
                );
                return Poll::Ready(Some(Err(err)));
            }
            return Poll::Ready(Some(match parse_chunk(data.as_bytes()) {
                Ok(chunk) => Ok(chunk),
                Err(_) => {
                    *this.finished = true;
                    Err(this.peer.error(
                        ErrorCode::UpstreamError,
                        format!("provider `{name}` sent an invalid stream chunk"),
                    ))
                }
            }));
        }
    }
}
