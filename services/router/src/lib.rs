//! The router: "which targets, in what order?"
//!
//! It owns the model catalog (platform models from the config, with their
//! prices) and resolves every addressing form a client may write:
//!
//! - `name`: a platform model, used by name;
//! - `@slug/model`: one named provider config, the model as written;
//! - `provider/model`: the provider config of that name, or else the first
//!   configured provider of that type.
//!
//! Pools, strategies, fallbacks across providers and routing configs build on
//! the [`RoutePlan`](pb::RoutePlan) this returns (more than one target).

pub mod builtin;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use llmgw_kit::config::{Config, ModelConfig, Price, ProviderConfig};
use llmgw_kit::services::{Router, RouterService};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;

/// Builds the router over the config's enabled providers and models.
pub fn service(config: &Config) -> Router {
    Arc::new(Catalog::new(config))
}

struct ProviderEntry {
    name: String,
    kind: &'static str,
    timeout_ms: u32,
    /// What `@slug` alone resolves to.
    default_model: Option<String>,
    max_retries: u32,
}

struct ModelEntry {
    provider: usize,
    upstream_model: String,
    price: pb::Price,
}

/// The catalog, fixed at startup.
struct Catalog {
    providers: Vec<ProviderEntry>,
    by_provider_name: HashMap<String, usize>,
    models: HashMap<String, ModelEntry>,
    /// Platform model names in config order, for `/v1/models`.
    model_order: Vec<String>,
    created: i64,
}

fn price(p: &Price) -> pb::Price {
    pb::Price {
        input_per_mtok: p.input_per_mtok,
        output_per_mtok: p.output_per_mtok,
        cached_input_per_mtok: p.cached_input_per_mtok,
    }
}

fn provider_entry(p: &ProviderConfig) -> ProviderEntry {
    ProviderEntry {
        name: p.name.clone(),
        kind: p.kind.as_str(),
        timeout_ms: u32::try_from(p.timeout.as_millis()).unwrap_or(u32::MAX),
        default_model: p.default_model.clone(),
        max_retries: p.max_retries,
    }
}

impl Catalog {
    fn new(config: &Config) -> Self {
        let providers: Vec<ProviderEntry> = config.providers.iter().map(provider_entry).collect();
        let by_provider_name = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let mut models = HashMap::new();
        let mut model_order = Vec::new();
        for ModelConfig {
            name,
            provider,
            upstream_model,
            price: p,
        } in &config.models
        {
            let Some(idx) = providers.iter().position(|e| &e.name == provider) else {
                continue;
            };
            models.insert(
                name.clone(),
                ModelEntry {
                    provider: idx,
                    upstream_model: upstream_model.clone(),
                    price: price(p),
                },
            );
            model_order.push(name.clone());
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Self {
            providers,
            by_provider_name,
            models,
            model_order,
            created,
        }
    }

    fn target(&self, provider: usize, model: &str) -> pb::Target {
        let p = &self.providers[provider];
        // A model addressed directly is billed at the platform price of the
        // same provider and model, when one is configured.
        let price = self
            .models
            .values()
            .find(|m| m.provider == provider && m.upstream_model == model)
            .map(|m| m.price)
            .unwrap_or_default();
        pb::Target {
            provider: p.name.clone(),
            provider_type: p.kind.to_owned(),
            model: model.to_owned(),
            price: Some(price),
            timeout_ms: p.timeout_ms,
            max_retries: p.max_retries,
        }
    }

    fn resolve(&self, model: &str) -> Result<pb::RoutePlan, GwError> {
        if let Some(entry) = self.models.get(model) {
            return Ok(pb::RoutePlan {
                requested_model: model.to_owned(),
                requested_provider: None,
                targets: vec![pb::Target {
                    price: Some(entry.price),
                    ..self.target(entry.provider, &entry.upstream_model)
                }],
            });
        }
        if let Some(rest) = model.strip_prefix('@') {
            // `@slug` alone: the provider's `default_model`.
            let slug = rest.strip_suffix('/').unwrap_or(rest);
            if !slug.contains('/') {
                let idx = *self
                    .by_provider_name
                    .get(slug)
                    .ok_or_else(|| unknown_provider(model, slug))?;
                let Some(default) = self.providers[idx].default_model.clone() else {
                    return Err(GwError::new(
                        ErrorCode::ModelNotFound,
                        format!(
                            "`{model}` names provider `{slug}` but no model, and it has no `default_model`"
                        ),
                    )
                    .with_param("model"));
                };
                return Ok(self.plan(model, idx, &default));
            }
            let (slug, upstream) = split(rest).ok_or_else(|| not_found(model))?;
            let idx = *self
                .by_provider_name
                .get(slug)
                .ok_or_else(|| unknown_provider(model, slug))?;
            return Ok(self.plan(model, idx, upstream));
        }
        if let Some((provider, upstream)) = split(model) {
            let idx = self
                .by_provider_name
                .get(provider)
                .copied()
                .or_else(|| self.providers.iter().position(|p| p.kind == provider));
            if let Some(idx) = idx {
                return Ok(self.plan(model, idx, upstream));
            }
        }
        Err(not_found(model))
    }

    fn plan(&self, model: &str, provider: usize, upstream: &str) -> pb::RoutePlan {
        pb::RoutePlan {
            requested_model: model.to_owned(),
            requested_provider: Some(self.providers[provider].name.clone()),
            targets: vec![self.target(provider, upstream)],
        }
    }
}

fn split(s: &str) -> Option<(&str, &str)> {
    s.split_once('/').filter(|(a, b)| !a.is_empty() && !b.is_empty())
}

fn not_found(model: &str) -> GwError {
    GwError::new(
        ErrorCode::ModelNotFound,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_param("model")
}

fn unknown_provider(model: &str, slug: &str) -> GwError {
    GwError::new(
        ErrorCode::ModelNotFound,
        format!("The model `{model}` names no configured provider `{slug}`."),
    )
    .with_param("model")
}

#[async_trait]
impl RouterService for Catalog {
    async fn route(&self, req: pb::RouteRequest) -> Result<pb::RoutePlan, GwError> {
        if req.model.is_empty() {
            return Err(GwError::invalid("model", "you must provide a model parameter"));
        }
        self.resolve(&req.model)
    }

    async fn list_models(&self, _req: pb::ModelsRequest) -> Result<pb::ModelList, GwError> {
        Ok(pb::ModelList {
            data: self
                .model_order
                .iter()
                .filter_map(|name| {
                    let entry = self.models.get(name)?;
                    Some(pb::Model {
                        id: name.clone(),
                        created: self.created,
                        owned_by: self.providers[entry.provider].name.clone(),
                    })
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
