//! One translator per provider wire format, each behind [`Provider`].
//!
//! A provider gets the canonical request and the router's [`Target`] and
//! answers in canonical types; its wire types stay private to its module.
//! OpenAI-compatible hosts are rows of config (`type: openai` with their own
//! `base_url`), not modules.

use std::sync::Arc;

use async_trait::async_trait;
use llmgw_kit::GwError;
use llmgw_kit::config::{ProviderConfig, ProviderKind};
use llmgw_kit::services::ChunkStream;
use llmgw_proto::{ChatRequest, ChatResponse, Target};

pub(crate) mod openai;

/// Says a request to one configured provider and says its answer back.
#[async_trait]
pub(crate) trait Provider: Send + Sync + 'static {
    /// One non-streaming completion; the per-try timeout covers the whole body.
    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError>;

    /// A streaming completion. Resolves once the provider answered with 2xx
    /// headers, so every error before the first chunk is still retryable;
    /// dropping the stream cancels the upstream call.
    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError>;
}

/// Builds the provider for `config`, sharing `client`.
pub(crate) fn build(config: &ProviderConfig, client: &reqwest::Client) -> Result<Arc<dyn Provider>, GwError> {
    Ok(match config.kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAi::new(config, client.clone())?),
    })
}
