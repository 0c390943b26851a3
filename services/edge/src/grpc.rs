//! The public gRPC API, `llmgw.v1.Gateway`: the same pipeline as REST, with
//! canonical protobuf messages in and out. The API key travels in metadata
//! `authorization: Bearer <key>`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{Stream, StreamExt as _};
use llmgw_kit::grpc::MAX_MESSAGE_BYTES;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::pipeline::{CONFIG_HEADER, ChatOutput, Hints, OVERHEAD_HEADER, Pipeline, overhead, overhead_ms};

pub fn routes(pipeline: Arc<Pipeline>) -> Routes {
    Routes::new(
        pb::gateway_server::GatewayServer::new(GatewayGrpc(pipeline))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

struct GatewayGrpc(Arc<Pipeline>);

/// `x-llmgw-overhead-ms` in the response's metadata, as on REST.
fn with_overhead<T>(mut resp: Response<T>, overhead: Option<Duration>) -> Response<T> {
    if let Some(own) = overhead
        && let Ok(v) = overhead_ms(own).parse()
    {
        resp.metadata_mut().insert(OVERHEAD_HEADER, v);
    }
    resp
}

fn bearer<T>(req: &Request<T>) -> Option<&str> {
    let v = req.metadata().get("authorization")?.to_str().ok()?.trim();
    Some(
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v),
    )
}

/// Routing hints from the call's metadata (ASCII entries only).
fn hints<T>(principal: &pb::Principal, req: &Request<T>) -> Hints {
    let metadata = req.metadata();
    let config = metadata.get(CONFIG_HEADER).and_then(|v| v.to_str().ok());
    let mut hints = Hints::new(principal, config, || {
        metadata.iter().filter_map(|entry| match entry {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.as_str(), v.to_str().ok())),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
    });
    if let Some(v) = metadata.get("cache-control").and_then(|v| v.to_str().ok()) {
        hints.cache = crate::cache::Directive::from_value(v);
    }
    hints
}

impl GatewayGrpc {
    async fn run(&self, req: Request<pb::ChatRequest>, stream: bool) -> Result<ChatOutput, GwError> {
        let admitted = self.0.admit()?;
        let principal = self.0.authenticate(bearer(&req)).await?;
        let mut hints = hints(&principal, &req);
        hints.admitted = Some(admitted);
        let mut chat = req.into_inner();
        chat.stream = stream;
        llmgw_kit::openai::validate_request(&chat)?;
        self.0.chat(principal, chat, hints).await
    }
}

type ChunkStatusStream = Pin<Box<dyn Stream<Item = Result<pb::ChatChunk, Status>> + Send + 'static>>;

#[async_trait]
impl pb::gateway_server::Gateway for GatewayGrpc {
    async fn chat(&self, req: Request<pb::ChatRequest>) -> Result<Response<pb::ChatResponse>, Status> {
        let started = Instant::now();
        match self.run(req, false).await? {
            ChatOutput::Complete(resp, _) => {
                let own = resp.metadata.as_ref().map(|m| overhead("chat", started, m));
                Ok(with_overhead(Response::new(*resp), own))
            }
            ChatOutput::Stream(_) => Err(GwError::internal("expected a complete response").to_status()),
        }
    }

    type ChatStreamStream = ChunkStatusStream;

    async fn chat_stream(
        &self,
        req: Request<pb::ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let started = Instant::now();
        match self.run(req, true).await? {
            ChatOutput::Stream(s) => {
                let own = overhead("chat_stream", started, &s.metadata);
                Ok(with_overhead(
                    Response::new(Box::pin(s.chunks.map(|c| c.map_err(|e| e.to_status())))),
                    Some(own),
                ))
            }
            ChatOutput::Complete(..) => {
                Err(GwError::new(ErrorCode::Internal, "expected a stream").to_status())
            }
        }
    }

    async fn embeddings(
        &self,
        req: Request<pb::EmbeddingsRequest>,
    ) -> Result<Response<pb::EmbeddingsResponse>, Status> {
        let started = Instant::now();
        let admitted = self.0.admit()?;
        let principal = self.0.authenticate(bearer(&req)).await?;
        let mut hints = hints(&principal, &req);
        hints.admitted = Some(admitted);
        let embed = req.into_inner();
        if embed.model.trim().is_empty() {
            return Err(GwError::invalid("model", "Invalid value for 'model': it must not be empty.").into());
        }
        if embed.inputs.is_empty() {
            return Err(GwError::invalid("input", "Invalid 'input': expected at least one input.").into());
        }
        let resp = self.0.embed(principal, embed, hints).await?;
        let own = resp.metadata.as_ref().map(|m| overhead("embeddings", started, m));
        Ok(with_overhead(Response::new(resp), own))
    }

    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ModelList>, Status> {
        let principal = self.0.authenticate(bearer(&req)).await?;
        Ok(Response::new(self.0.list_models(principal).await?))
    }
}
