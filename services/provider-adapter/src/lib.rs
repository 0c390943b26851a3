//! `provider-adapter`: say it to this provider, and say its answer back.
//!
//! [`service`] builds the [`AdapterService`] over every enabled provider in
//! the config. Each call names its provider (by config name) in
//! `req.target`; the adapter sends the canonical request in that provider's
//! wire format over one shared HTTP client and translates the answer (or the
//! stream of chunks) back. It neither retries nor falls back: it classifies
//! each failure (connect, timeout, rate limit, 5xx, rejection) so the edge
//! can decide.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use llmgw_kit::config::{Config, ProviderKind};
use llmgw_kit::services::{Adapter, AdapterService, ChunkStream};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto::{
    AdapterEmbeddingsRequest, AdapterRequest, ChatRequest, ChatResponse, EmbeddingsResponse, Target,
};
use tracing::Instrument as _;

mod fetch;
mod http;
mod providers;

use providers::Provider;

/// Builds the adapter service over every enabled provider in the config.
pub fn service(config: &Config) -> Result<Adapter, GwError> {
    let client = http::client()?;
    let mut map = HashMap::with_capacity(config.providers.len());
    for p in &config.providers {
        map.insert(p.name.clone(), (p.kind, providers::build(p, &client)?));
    }
    Ok(Arc::new(ProviderAdapter { providers: map }))
}

/// The providers by config name, built once at startup.
struct ProviderAdapter {
    providers: HashMap<String, (ProviderKind, Arc<dyn Provider>)>,
}

impl ProviderAdapter {
    fn resolve<'a>(
        &'a self,
        req: &'a AdapterRequest,
    ) -> Result<(&'a dyn Provider, &'a Target, &'a ChatRequest), GwError> {
        let (provider, target) = self.provider(req.target.as_ref())?;
        let chat = req
            .request
            .as_ref()
            .ok_or_else(|| GwError::internal("adapter request has no chat request"))?;
        Ok((provider, target, chat))
    }

    fn provider<'a>(&'a self, target: Option<&'a Target>) -> Result<(&'a dyn Provider, &'a Target), GwError> {
        let target = target.ok_or_else(|| GwError::internal("adapter request has no target"))?;
        let Some((kind, provider)) = self.providers.get(&target.provider) else {
            return Err(GwError::new(
                ErrorCode::Internal,
                format!("unknown provider `{}`", target.provider),
            ));
        };
        // The router and the adapter read the same config; a mismatch means
        // split services run with different files.
        if !target.provider_type.is_empty() && target.provider_type != kind.as_str() {
            return Err(GwError::internal(format!(
                "provider `{}` is type `{kind}` here, but the route says `{}`",
                target.provider, target.provider_type
            ))
            .with_provider(&target.provider));
        }
        Ok((provider.as_ref(), target))
    }
}

fn span(request_id: &str, target: &Target) -> tracing::Span {
    tracing::info_span!(
        "provider",
        request_id = %request_id,
        provider = %target.provider,
        gen_ai.system = %target.provider_type,
        gen_ai.request.model = %target.model,
    )
}

#[async_trait]
impl AdapterService for ProviderAdapter {
    async fn complete(&self, req: AdapterRequest) -> Result<ChatResponse, GwError> {
        let (provider, target, chat) = self.resolve(&req)?;
        let span = span(&req.request_id, target);
        async {
            let result = provider.complete(target, chat).await;
            if let Err(e) = &result {
                tracing::debug!(code = e.code().as_str_name(), "provider call failed");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn stream(&self, req: AdapterRequest) -> Result<ChunkStream, GwError> {
        let (provider, target, chat) = self.resolve(&req)?;
        let span = span(&req.request_id, target);
        async {
            let result = provider.stream(target, chat).await;
            if let Err(e) = &result {
                tracing::debug!(code = e.code().as_str_name(), "provider stream failed to start");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn embed(&self, req: AdapterEmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        let (provider, target) = self.provider(req.target.as_ref())?;
        let request = req
            .request
            .as_ref()
            .ok_or_else(|| GwError::internal("adapter request has no embeddings request"))?;
        provider
            .embed(target, request)
            .instrument(span(&req.request_id, target))
            .await
    }
}

#[cfg(test)]
mod tests;
