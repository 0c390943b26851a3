//! `provider-adapter`: say it to this provider, and say its answer back.
//!
//! [`service`] builds the [`AdapterService`] over every enabled provider in
//! the config. Each call names its provider (by config name) in
//! `req.target`; the adapter sends the canonical request in that provider's
//! wire format over one shared HTTP client and translates the answer (or the
//! stream of chunks) back. It neither retries nor falls back: it classifies
//! each failure (connect, timeout, rate limit, 5xx, rejection) so the edge
//! can decide.
//!
//! A BYOK target (`target.credential_id`, an org's own credential) is built
//! from the credential auth opens for the caller's org
//! ([`AuthService::get_credential`], checked against `org_id` there), and
//! kept for [`BYOK_TTL`] so the hot path rarely asks auth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use llmgw_kit::GwError;
use llmgw_kit::config::{Config, ProviderKind, ProviderSpec, provider_config};
use llmgw_kit::services::{Adapter, AdapterService, Auth, ChunkStream, ForwardStream};
use llmgw_proto::{
    AdapterEmbeddingsRequest, AdapterRequest, ChatRequest, ChatResponse, EmbeddingsResponse, ForwardRequest,
    Target,
};
use tracing::Instrument as _;

mod fetch;
#[doc(hidden)]
pub mod fuzz;
mod http;
mod providers;

use providers::Provider;

/// Builds the adapter service over every enabled provider in the config.
/// BYOK targets are refused: use [`service_with_credentials`].
pub fn service(config: &Config) -> Result<Adapter, GwError> {
    llmgw_kit::metrics::adapter();
    Ok(Arc::new(ProviderAdapter::new(config, None)?))
}

/// [`service`], plus orgs' own provider credentials (BYOK) opened by `auth`.
pub fn service_with_credentials(config: &Config, auth: Auth) -> Result<Adapter, GwError> {
    llmgw_kit::metrics::adapter();
    Ok(Arc::new(ProviderAdapter::new(config, Some(auth))?))
}

/// How long a provider built from a BYOK credential is reused before auth
/// is asked again (a deleted credential stops working within it).
pub const BYOK_TTL: Duration = Duration::from_secs(60);
/// BYOK providers kept at most; beyond it the oldest goes.
const BYOK_CACHE: usize = 1024;

/// The providers by config name, built once at startup.
struct ProviderAdapter {
    providers: HashMap<String, (ProviderKind, Arc<dyn Provider>)>,
    client: reqwest::Client,
    auth: Option<Auth>,
    byok: Mutex<HashMap<(String, String), Built>>,
}

/// (org id, credential id) → when it was built, its type, the provider.
type Built = (Instant, ProviderKind, Arc<dyn Provider>);

impl ProviderAdapter {
    fn new(config: &Config, auth: Option<Auth>) -> Result<Self, GwError> {
        let client = http::pooled(&config.upstream)?;
        let mut map = HashMap::with_capacity(config.providers.len());
        for p in &config.providers {
            map.insert(p.name.clone(), (p.kind, providers::build(p, &client)?));
        }
        Ok(Self {
            providers: map,
            client,
            auth,
            byok: Mutex::new(HashMap::new()),
        })
    }

    async fn resolve<'a>(
        &self,
        req: &'a AdapterRequest,
    ) -> Result<(Arc<dyn Provider>, &'a Target, &'a ChatRequest), GwError> {
        let (provider, target) = self.provider(&req.org_id, req.target.as_ref()).await?;
        let chat = req
            .request
            .as_ref()
            .ok_or_else(|| GwError::internal("adapter request has no chat request"))?;
        Ok((provider, target, chat))
    }

    async fn provider<'a>(
        &self,
        org_id: &str,
        target: Option<&'a Target>,
    ) -> Result<(Arc<dyn Provider>, &'a Target), GwError> {
        let target = target.ok_or_else(|| GwError::internal("adapter request has no target"))?;
        let (kind, provider) = match target.credential_id.as_deref() {
            Some(id) => self.byok_provider(org_id, id).await?,
            None => self
                .providers
                .get(&target.provider)
                .cloned()
                .ok_or_else(|| GwError::internal(format!("unknown provider `{}`", target.provider)))?,
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
        Ok((provider, target))
    }

    /// The provider for an org's credential: cached, else built from what
    /// auth opens (auth checks that the credential is the org's).
    async fn byok_provider(
        &self,
        org_id: &str,
        id: &str,
    ) -> Result<(ProviderKind, Arc<dyn Provider>), GwError> {
        let key = (org_id.to_owned(), id.to_owned());
        {
            let cache = self.byok.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, kind, provider)) = cache.get(&key)
                && at.elapsed() < BYOK_TTL
            {
                return Ok((*kind, provider.clone()));
            }
        }
        let auth = self
            .auth
            .as_ref()
            .ok_or_else(|| GwError::internal("this adapter has no auth service for BYOK credentials"))?;
        let cred = auth
            .get_credential(llmgw_proto::GetCredentialRequest {
                org_id: org_id.to_owned(),
                credential_id: id.to_owned(),
            })
            .await?;
        let (kind, provider) = build_byok(&cred, &self.client)?;
        let mut cache = self.byok.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= BYOK_CACHE {
            cache.retain(|_, (at, _, _)| at.elapsed() < BYOK_TTL);
            if cache.len() >= BYOK_CACHE
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (at, _, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (Instant::now(), kind, provider.clone()));
        Ok((kind, provider))
    }
}

/// A provider from a BYOK credential, validated as a config provider is.
/// Messages name fields, never values.
fn build_byok(
    cred: &llmgw_proto::ProviderCredential,
    client: &reqwest::Client,
) -> Result<(ProviderKind, Arc<dyn Provider>), GwError> {
    let unreadable = || GwError::internal(format!("provider credential `{}` is unreadable", cred.name));
    let mut fields = serde_json::Map::new();
    for text in [&cred.settings_json, &cred.secrets_json] {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => fields.extend(map),
            _ => return Err(unreadable()),
        }
    }
    fields.insert("name".into(), cred.name.clone().into());
    fields.insert("type".into(), cred.r#type.clone().into());
    let spec: ProviderSpec =
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|_| unreadable())?;
    let kind = ProviderKind::parse(&cred.r#type).ok_or_else(unreadable)?;
    let config = provider_config(spec, kind, "credential").map_err(|e| GwError::internal(e.message))?;
    Ok((config.kind, providers::build(&config, client)?))
}

/// The span of one adapter call (`complete`, `stream`, `embed`): log
/// context for everything the call does, BYOK credential lookup included.
fn span(op: &'static str, req_id: &str, target: Option<&Target>) -> tracing::Span {
    // Context for the adapter's debug logs and exported traces; otherwise
    // its fields would be formatted on every request for nothing.
    if !llmgw_kit::telemetry::enabled() && !tracing::enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    let (provider, model) = target.map_or(("", ""), |t| (t.provider.as_str(), t.model.as_str()));
    tracing::info_span!(
        "provider",
        otel.name = op,
        request_id = %req_id,
        provider = %provider,
        gen_ai.request.model = %model,
    )
}

/// The GenAI client span of one upstream call, `{operation} {model}`, per
/// the OpenTelemetry GenAI conventions; `server.address` and the W3C
/// `traceparent` are set where the HTTP request is sent
/// ([`http::send`]). Never the prompt, the answer or a credential.
/// `Span::none()` unless spans are exported.
fn client_span(operation: &'static str, target: &Target, chat: Option<&ChatRequest>) -> tracing::Span {
    if !llmgw_kit::telemetry::enabled() {
        return tracing::Span::none();
    }
    let provider = llmgw_kit::telemetry::genai_provider_name(&target.provider_type);
    let span = tracing::info_span!(
        "gen_ai",
        otel.name = format!("{operation} {}", target.model),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = operation,
        gen_ai.system = provider,
        gen_ai.provider.name = provider,
        gen_ai.request.model = %target.model,
        gen_ai.request.max_tokens = tracing::field::Empty,
        gen_ai.request.temperature = tracing::field::Empty,
        gen_ai.request.top_p = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.id = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        llmgw.provider = %target.provider,
    );
    if let Some(chat) = chat {
        if let Some(n) = chat.max_completion_tokens.or(chat.max_tokens) {
            span.record("gen_ai.request.max_tokens", n);
        }
        if let Some(t) = chat.temperature {
            span.record("gen_ai.request.temperature", t);
        }
        if let Some(p) = chat.top_p {
            span.record("gen_ai.request.top_p", p);
        }
    }
    span
}

/// What a GenAI client span learns from an answer (or a chunk of one).
fn record_answer(span: &tracing::Span, id: &str, model: &str, usage: Option<&llmgw_proto::Usage>) {
    if !id.is_empty() {
        span.record("gen_ai.response.id", id);
    }
    if !model.is_empty() {
        span.record("gen_ai.response.model", model);
    }
    if let Some(u) = usage {
        span.record("gen_ai.usage.input_tokens", u.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", u.completion_tokens);
    }
}

fn record_error(span: &tracing::Span, e: &GwError) {
    span.record("error.type", llmgw_kit::error::error_type(e));
    span.record("otel.status_code", "ERROR");
}

/// `gen_ai.response.finish_reasons` from the finish reasons seen.
fn record_finish(span: &tracing::Span, reasons: impl Iterator<Item = i32>) {
    let reasons: Vec<String> = reasons
        .filter_map(|r| llmgw_proto::FinishReason::try_from(r).ok())
        .filter_map(llmgw_kit::openai::finish_str)
        .map(str::to_owned)
        .collect();
    llmgw_kit::telemetry::set_string_array(span, "gen_ai.response.finish_reasons", reasons);
}

/// Keeps `span` open while the stream runs and records on it what the
/// chunks say: response model and id, usage, finish reasons, an error.
fn traced_stream(stream: ChunkStream, span: tracing::Span) -> ChunkStream {
    let mut reasons: Vec<i32> = Vec::new();
    Box::pin(stream.inspect(move |item| match item {
        Ok(chunk) => {
            record_answer(&span, &chunk.id, &chunk.model, chunk.usage.as_ref());
            let before = reasons.len();
            reasons.extend(chunk.choices.iter().map(|c| c.finish_reason).filter(|r| *r != 0));
            if reasons.len() > before {
                record_finish(&span, reasons.iter().copied());
            }
        }
        Err(e) => record_error(&span, e),
    }))
}

#[async_trait]
impl AdapterService for ProviderAdapter {
    async fn complete(&self, req: AdapterRequest) -> Result<ChatResponse, GwError> {
        let span = span("complete", &req.request_id, req.target.as_ref());
        async {
            let (provider, target, chat) = self.resolve(&req).await?;
            let client = client_span("chat", target, Some(chat));
            let result = provider.complete(target, chat).instrument(client.clone()).await;
            match &result {
                Ok(resp) => {
                    record_answer(&client, &resp.id, &resp.model, resp.usage.as_ref());
                    record_finish(&client, resp.choices.iter().map(|c| c.finish_reason));
                }
                Err(e) => {
                    record_error(&client, e);
                    tracing::debug!(code = e.code().as_str_name(), "provider call failed");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn stream(&self, req: AdapterRequest) -> Result<ChunkStream, GwError> {
        let span = span("stream", &req.request_id, req.target.as_ref());
        async {
            let (provider, target, chat) = self.resolve(&req).await?;
            let client = client_span("chat", target, Some(chat));
            match provider.stream(target, chat).instrument(client.clone()).await {
                Ok(stream) if client.is_none() => Ok(stream),
                Ok(stream) => Ok(traced_stream(stream, client)),
                Err(e) => {
                    record_error(&client, &e);
                    tracing::debug!(code = e.code().as_str_name(), "provider stream failed to start");
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn embed(&self, req: AdapterEmbeddingsRequest) -> Result<EmbeddingsResponse, GwError> {
        let span = span("embed", &req.request_id, req.target.as_ref());
        async {
            let (provider, target) = self.provider(&req.org_id, req.target.as_ref()).await?;
            let request = req
                .request
                .as_ref()
                .ok_or_else(|| GwError::internal("adapter request has no embeddings request"))?;
            let client = client_span("embeddings", target, None);
            let result = provider.embed(target, request).instrument(client.clone()).await;
            match &result {
                Ok(resp) => record_answer(&client, "", &resp.model, resp.usage.as_ref()),
                Err(e) => record_error(&client, e),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn forward(&self, req: ForwardRequest) -> Result<ForwardStream, GwError> {
        let span = span("forward", &req.request_id, req.target.as_ref());
        async {
            let (provider, target) = self.provider(&req.org_id, req.target.as_ref()).await?;
            let client = client_span("forward", target, None);
            let result = provider.forward(target, &req).instrument(client.clone()).await;
            if let Err(e) = &result {
                record_error(&client, e);
            }
            result
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests;
