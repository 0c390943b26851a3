//! One translator per provider wire format, each behind [`Provider`].
//!
//! A provider gets the canonical request and the router's [`Target`] and
//! answers in canonical types; its wire types stay private to its module.
//! OpenAI-compatible hosts are rows of data (`kit::config::COMPAT_HOSTS`),
//! not modules.

use std::sync::Arc;

use async_trait::async_trait;
use llmgw_kit::GwError;
use llmgw_kit::config::{ProviderConfig, ProviderKind};
use llmgw_kit::services::{ChunkStream, ForwardStream};
use llmgw_proto::content::Value as ContentValue;
use llmgw_proto::content_part::Part;
use llmgw_proto::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ForwardRequest, Message, Target,
};

pub(crate) mod anthropic;
pub(crate) mod bedrock;
pub(crate) mod gemini;
pub(crate) mod ollama;
pub(crate) mod openai;
mod passthrough;
mod upstream;
pub(crate) mod vertex;

/// Says a request to one configured provider and says its answer back.
#[async_trait]
pub(crate) trait Provider: Send + Sync + 'static {
    /// One non-streaming completion; the per-try timeout covers the whole body.
    async fn complete(&self, target: &Target, req: &ChatRequest) -> Result<ChatResponse, GwError>;

    /// A streaming completion. Resolves once the provider answered with 2xx
    /// headers, so every error before the first chunk is still retryable;
    /// dropping the stream cancels the upstream call.
    async fn stream(&self, target: &Target, req: &ChatRequest) -> Result<ChunkStream, GwError>;

    /// Embeddings. A provider without them says so: a 400 naming `model`
    /// and the provider, never a silent failure.
    async fn embed(&self, target: &Target, _req: &EmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        Err(GwError::invalid(
            "model",
            format!(
                "provider `{}` ({}) does not offer embeddings through llmgw",
                target.provider, target.provider_type
            ),
        )
        .with_provider(&target.provider))
    }

    /// An OpenAI-shaped request of a pass-through endpoint (`req.path`:
    /// legacy completions, images, audio), passed through (the OpenAI
    /// family) or translated (Imagen behind `images/generations` on Google's
    /// providers). A provider without that endpoint says so: a 400 naming
    /// `model` and the provider.
    async fn forward(&self, target: &Target, req: &ForwardRequest) -> Result<ForwardStream, GwError> {
        Err(no_endpoint(target, &req.path))
    }
}

/// The 400 of a provider that has no `path` endpoint.
pub(crate) fn no_endpoint(target: &Target, path: &str) -> GwError {
    GwError::invalid(
        "model",
        format!(
            "provider `{}` ({}) does not offer `/v1/{path}` through llmgw",
            target.provider, target.provider_type
        ),
    )
    .with_provider(&target.provider)
}

/// Builds the provider for `config`, sharing `client`. OpenAI-compatible
/// hosts use the OpenAI module with their row's quirks.
pub(crate) fn build(config: &ProviderConfig, client: &reqwest::Client) -> Result<Arc<dyn Provider>, GwError> {
    Ok(match config.kind {
        ProviderKind::OpenAi
        | ProviderKind::AzureOpenAi
        | ProviderKind::Mistral
        | ProviderKind::Compatible(_) => Arc::new(openai::OpenAi::new(config, client.clone())?),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(config, client.clone())?),
        ProviderKind::Ollama => Arc::new(ollama::Ollama::new(config, client.clone())?),
        ProviderKind::Bedrock => Arc::new(bedrock::Bedrock::new(config, client.clone())?),
        ProviderKind::Google | ProviderKind::VertexAi => {
            Arc::new(gemini::Gemini::new(config, client.clone())?)
        }
    })
}

/// The non-empty texts of system or developer message `i`, for providers
/// that take system text apart from the turns; `Err` names the first part
/// that is not text (`messages[i].content[j]`).
pub(crate) fn system_texts(m: &Message, i: usize) -> Result<Vec<&str>, String> {
    match m.content.as_ref().and_then(|c| c.value.as_ref()) {
        None => Ok(Vec::new()),
        Some(ContentValue::Text(text)) => Ok(if text.is_empty() {
            Vec::new()
        } else {
            vec![text.as_str()]
        }),
        Some(ContentValue::Parts(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.parts.iter().enumerate() {
                match &part.part {
                    Some(Part::Text(text)) if !text.is_empty() => out.push(text.as_str()),
                    Some(Part::Text(_)) | None => {}
                    Some(_) => return Err(format!("messages[{i}].content[{j}]")),
                }
            }
            Ok(out)
        }
    }
}
