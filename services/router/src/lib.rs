//! The router: "which targets, in what order?"
//!
//! It owns the model catalog — the built-in one ([`builtin`]) under the
//! config's platform models and pools — and resolves every addressing form a
//! client may write:
//!
//! - `name` (or an alias): a platform model or pool from the config;
//! - `@slug/model`: one named provider config, the model as written;
//! - `provider/model`: the provider config of that name, or else the first
//!   configured provider of that type;
//! - a built-in model's name with no provider: every configured provider
//!   that offers it, cheapest first.
//!
//! An org's own provider credentials (BYOK, `Principal.providers`) come
//! first for that org alone: `@name/model` names one, and `type/model`
//! prefers the org's credential of that type over the configured providers.
//! Their targets carry `credential_id` (the adapter fetches the credential
//! from auth) and `byok`; they are not tracked for health.
//!
//! A pool's targets are ordered by its strategy (`weighted`, `latency`,
//! `cheapest`, `least-busy`, `priority`); targets lacking a capability the
//! request needs are left out, ejected ones go last. Routing configs
//! (`x-llmgw-config`, or the key's default) choose a variant first, which may
//! set the model, parameters and a system prompt. The edge reports how each
//! attempt went ([`RouterService::report`]), which feeds latency, in-flight
//! counts and outlier ejection ([`health`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use llmgw_kit::config::{Capabilities, Config, Ejection, ProviderConfig, Strategy};
use llmgw_kit::services::{Router, RouterService};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use pb::attempt_report::Event;

pub mod builtin;
mod configs;
mod health;
mod policy;
mod strategy;

use builtin::Builtin;
use configs::Configs;
use health::{Clock, Stats};
use strategy::{Candidate, Rng};

pub use configs::HEADER as CONFIG_HEADER;

/// Builds the router over the config's enabled providers and models.
pub fn service(config: &Config) -> Router {
    llmgw_kit::metrics::router();
    let catalog = Arc::new(Catalog::new(config));
    // The process's first router reports its ejected targets at each scrape.
    let weak = Arc::downgrade(&catalog);
    llmgw_kit::metrics::gauge_fn(
        "llmgw_router_ejected_targets",
        "Targets ejected now (skipped by routing until their ejection ends)",
        move || weak.upgrade().map_or(0, |c| c.ejected_now()),
    );
    catalog
}

/// Targets met through `provider/model` addressing are tracked up to this
/// many; beyond it they are routed without health.
const MAX_TRACKED_TARGETS: usize = 4096;
/// The key of a target the router does not track.
const UNTRACKED: u32 = u32::MAX;

struct ProviderEntry {
    name: String,
    kind: &'static str,
    timeout_ms: u32,
    /// What `@slug` alone resolves to.
    default_model: Option<String>,
    max_retries: u32,
}

/// One upstream (provider, model): what health is kept for, shared by every
/// pool that names it.
struct Upstream {
    key: u32,
    provider: usize,
    provider_name: String,
    model: String,
    stats: Stats,
}

/// A target as a model or pool offers it.
#[derive(Clone)]
struct PoolTarget {
    upstream: Arc<Upstream>,
    weight: u32,
    price: pb::Price,
    context_window: u32,
    caps: Capabilities,
}

struct Pool {
    name: String,
    targets: Vec<PoolTarget>,
    strategy: Strategy,
    fallback: bool,
}

#[derive(Default)]
struct Upstreams {
    list: Vec<Arc<Upstream>>,
    index: HashMap<(usize, String), u32>,
}

/// The catalog and the health of its targets.
struct Catalog {
    providers: Vec<ProviderEntry>,
    by_provider_name: HashMap<String, usize>,
    pools: Vec<Pool>,
    /// Names and aliases → index into `pools`.
    by_model_name: HashMap<String, usize>,
    /// The first platform entry of each (provider, model): the price and
    /// capabilities a directly addressed target inherits.
    platform: HashMap<(usize, String), PoolTarget>,
    upstreams: RwLock<Upstreams>,
    builtin: &'static Builtin,
    configs: Configs,
    ejection: Ejection,
    explore: f64,
    rng: Rng,
    clock: Clock,
    created: i64,
}

fn price(p: &llmgw_kit::config::Price) -> pb::Price {
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
        let seed = config.routing.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let mut catalog = Self {
            providers,
            by_provider_name,
            pools: Vec::new(),
            by_model_name: HashMap::new(),
            platform: HashMap::new(),
            upstreams: RwLock::new(Upstreams::default()),
            builtin: Builtin::load(),
            configs: Configs::new(&config.routing.configs),
            ejection: config.routing.ejection.clone(),
            explore: config.routing.latency_explore,
            rng: Rng::new(seed),
            clock: Clock::new(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        for m in &config.models {
            let targets: Vec<PoolTarget> = m
                .targets
                .iter()
                .filter_map(|t| {
                    let provider = *catalog.by_provider_name.get(&t.provider)?;
                    let known = catalog
                        .builtin
                        .for_upstream(catalog.providers[provider].kind, &t.upstream_model);
                    let target = PoolTarget {
                        upstream: catalog.upstream(provider, &t.upstream_model),
                        weight: t.weight,
                        price: t
                            .price
                            .as_ref()
                            .or(known.map(|k| &k.price))
                            .map(price)
                            .unwrap_or_default(),
                        context_window: t.context_window.or(known.map(|k| k.context_window)).unwrap_or(0),
                        caps: t
                            .capabilities
                            .or(known.map(|k| k.capabilities))
                            .unwrap_or(Capabilities::ANY),
                    };
                    catalog
                        .platform
                        .entry((provider, t.upstream_model.clone()))
                        .or_insert_with(|| target.clone());
                    Some(target)
                })
                .collect();
            let index = catalog.pools.len();
            for name in std::iter::once(&m.name).chain(&m.aliases) {
                catalog.by_model_name.insert(name.clone(), index);
            }
            catalog.pools.push(Pool {
                name: m.name.clone(),
                targets,
                strategy: m.strategy,
                fallback: m.fallback,
            });
        }
        catalog
    }

    /// The tracked upstream for (provider, model), made on first use.
    fn upstream(&self, provider: usize, model: &str) -> Arc<Upstream> {
        let key = (provider, model.to_owned());
        {
            let table = self.upstreams.read().unwrap_or_else(|e| e.into_inner());
            if let Some(&i) = table.index.get(&key) {
                return table.list[i as usize].clone();
            }
        }
        let mut table = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = table.index.get(&key) {
            return table.list[i as usize].clone();
        }
        let tracked = table.list.len() < MAX_TRACKED_TARGETS;
        let upstream = Arc::new(Upstream {
            key: if tracked {
                table.list.len() as u32
            } else {
                UNTRACKED
            },
            provider,
            provider_name: self.providers[provider].name.clone(),
            model: model.to_owned(),
            stats: Stats::new(),
        });
        if tracked {
            table.index.insert(key, upstream.key);
            table.list.push(upstream.clone());
        }
        upstream
    }

    /// A target addressed directly: priced as the platform entry of the same
    /// provider and model when there is one, else as the built-in catalog
    /// knows it.
    fn direct(&self, provider: usize, model: &str) -> PoolTarget {
        if let Some(t) = self.platform.get(&(provider, model.to_owned())) {
            return t.clone();
        }
        let known = self.builtin.for_upstream(self.providers[provider].kind, model);
        PoolTarget {
            upstream: self.upstream(provider, model),
            weight: 1,
            price: known.map(|k| price(&k.price)).unwrap_or_default(),
            context_window: known.map_or(0, |k| k.context_window),
            caps: known.map_or(Capabilities::ANY, |k| k.capabilities),
        }
    }

    fn resolve(&self, model: &str) -> Result<Resolved, GwError> {
        if let Some(&i) = self.by_model_name.get(model) {
            let pool = &self.pools[i];
            return Ok(Resolved {
                requested_provider: None,
                targets: pool.targets.clone(),
                strategy: (pool.targets.len() > 1).then_some(pool.strategy),
                fallback: pool.fallback,
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
                let Some(default) = self.providers[idx].default_model.as_deref() else {
                    return Err(GwError::new(
                        ErrorCode::ModelNotFound,
                        format!(
                            "`{model}` names provider `{slug}` but no model, and it has no `default_model`"
                        ),
                    )
                    .with_param("model"));
                };
                return Ok(self.single(idx, default));
            }
            let (slug, upstream) = split(rest).ok_or_else(|| not_found(model))?;
            let idx = *self
                .by_provider_name
                .get(slug)
                .ok_or_else(|| unknown_provider(model, slug))?;
            return Ok(self.single(idx, upstream));
        }
        if let Some((provider, upstream)) = split(model) {
            let idx = self
                .by_provider_name
                .get(provider)
                .copied()
                .or_else(|| self.providers.iter().position(|p| p.kind == provider));
            if let Some(idx) = idx {
                return Ok(self.single(idx, upstream));
            }
        }
        // A built-in model with no provider named: every configured provider
        // offering it, cheapest first.
        if let Some(known) = self.builtin.get(model) {
            let targets: Vec<PoolTarget> = known
                .offered_by
                .iter()
                .flat_map(|(kind, upstream)| {
                    self.providers
                        .iter()
                        .enumerate()
                        .filter(move |(_, p)| p.kind == kind)
                        .map(move |(i, _)| self.direct(i, upstream))
                })
                .collect();
            if !targets.is_empty() {
                return Ok(Resolved {
                    requested_provider: None,
                    targets,
                    strategy: Some(Strategy::Cheapest),
                    fallback: true,
                });
            }
        }
        Err(not_found(model))
    }

    fn single(&self, provider: usize, model: &str) -> Resolved {
        Resolved {
            requested_provider: Some(self.providers[provider].name.clone()),
            targets: vec![self.direct(provider, model)],
            strategy: None,
            fallback: false,
        }
    }

    fn target(&self, t: &PoolTarget) -> pb::Target {
        let p = &self.providers[t.upstream.provider];
        pb::Target {
            provider: p.name.clone(),
            provider_type: p.kind.to_owned(),
            model: t.upstream.model.clone(),
            price: Some(t.price),
            timeout_ms: p.timeout_ms,
            max_retries: p.max_retries,
            context_window: t.context_window,
            key: t.upstream.key,
            credential_id: None,
            byok: false,
        }
    }

    /// Orders the resolved targets: capability filter, strategy, health.
    fn plan(
        &self,
        model: &str,
        resolved: Resolved,
        needed: &pb::Capabilities,
    ) -> Result<Vec<pb::Target>, GwError> {
        let Resolved {
            targets,
            strategy,
            fallback,
            ..
        } = resolved;
        let capable: Vec<&PoolTarget> = targets.iter().filter(|t| has(&t.caps, needed)).collect();
        if capable.is_empty() {
            return Err(unsupported(model, needed, &targets));
        }
        let now = self.clock.now_ms();
        let mut candidates: Vec<Candidate> = capable
            .iter()
            .enumerate()
            .map(|(index, t)| Candidate {
                index,
                weight: t.weight,
                price: t.price.input_per_mtok + t.price.output_per_mtok,
                latency_ms: t.upstream.stats.latency_ms(),
                in_flight: t.upstream.stats.in_flight(),
                ejected: t.upstream.stats.ejected(now),
            })
            .collect();
        if candidates.len() > 1 {
            strategy::order(
                &mut candidates,
                strategy.unwrap_or_default(),
                &self.rng,
                self.explore,
            );
        }
        if !fallback {
            candidates.truncate(1);
        }
        if let Some(first) = candidates.first() {
            capable[first.index].upstream.stats.started();
        }
        Ok(candidates.iter().map(|c| self.target(capable[c.index])).collect())
    }

    /// Leaves out the targets the principal's policies refuse; 403 when none
    /// is left, naming what was refused.
    fn allowed(
        &self,
        model: &str,
        mut resolved: Resolved,
        policies: &[pb::Policy],
    ) -> Result<Resolved, GwError> {
        if policies.is_empty() {
            return Ok(resolved);
        }
        let mut refusal = None;
        resolved.targets.retain(|t| {
            let p = &self.providers[t.upstream.provider];
            match policy::check(policies, model, &p.name, p.kind, &t.upstream.model) {
                Ok(()) => true,
                Err(r) => {
                    refusal.get_or_insert(r);
                    false
                }
            }
        });
        match (resolved.targets.is_empty(), refusal) {
            (true, Some((policy::Refusal::Model, scope))) => Err(GwError::new(
                ErrorCode::PermissionDenied,
                format!("the model `{model}` is not allowed by the {scope} policy"),
            )
            .with_param("model")),
            (true, Some((policy::Refusal::Provider, scope))) => Err(GwError::new(
                ErrorCode::PermissionDenied,
                format!("the {scope} policy allows none of the providers that serve `{model}`"),
            )
            .with_param("model")),
            _ => Ok(resolved),
        }
    }

    /// Whether the principal may reach `model` through any of `targets`.
    fn listable(&self, model: &str, targets: &[(usize, &str)], policies: &[pb::Policy]) -> bool {
        policies.is_empty()
            || targets.iter().any(|(provider, upstream)| {
                let p = &self.providers[*provider];
                policy::check(policies, model, &p.name, p.kind, upstream).is_ok()
            })
    }

    fn stats(&self, report: &pb::AttemptReport) -> Option<Arc<Upstream>> {
        let table = self.upstreams.read().unwrap_or_else(|e| e.into_inner());
        let upstream = table.list.get(report.key as usize)?;
        // A key from another router's numbering (after a restart) is
        // ignored rather than charged to the wrong target.
        (upstream.model == report.model && upstream.provider_name == report.provider)
            .then(|| upstream.clone())
    }

    /// How many targets are ejected now (`llmgw_router_ejected_targets`).
    fn ejected_now(&self) -> i64 {
        let now = self.clock.now_ms();
        let table = self.upstreams.read().unwrap_or_else(|e| e.into_inner());
        table.list.iter().filter(|u| u.stats.ejected(now)).count() as i64
    }
}

/// A BYOK credential's default per-try timeout (config providers' default).
const BYOK_TIMEOUT_MS: u32 = 600_000;

impl Catalog {
    /// The principal's own credential `model` names, if any: `@name[/model]`
    /// or `type/model` (the org's first credential of that type). Platform
    /// models keep their names.
    fn byok(&self, model: &str, principal: Option<&pb::Principal>) -> Result<Option<pb::Target>, GwError> {
        let Some(principal) = principal.filter(|p| !p.providers.is_empty()) else {
            return Ok(None);
        };
        if self.by_model_name.contains_key(model) {
            return Ok(None);
        }
        let (cred, upstream) = if let Some(rest) = model.strip_prefix('@') {
            let (slug, upstream) = match rest.split_once('/') {
                Some((slug, upstream)) => (slug, Some(upstream).filter(|u| !u.is_empty())),
                None => (rest, None),
            };
            let Some(cred) = principal.providers.iter().find(|p| p.name == slug) else {
                return Ok(None);
            };
            let upstream = match upstream.or(cred.default_model.as_deref()) {
                Some(u) => u,
                None => {
                    return Err(GwError::new(
                        ErrorCode::ModelNotFound,
                        format!(
                            "`{model}` names provider `{slug}` but no model, and it has no `default_model`"
                        ),
                    )
                    .with_param("model"));
                }
            };
            (cred, upstream)
        } else if let Some((kind, upstream)) = split(model) {
            match principal.providers.iter().find(|p| p.r#type == kind) {
                Some(cred) => (cred, upstream),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let known = self.builtin.for_upstream(&cred.r#type, upstream);
        Ok(Some(pb::Target {
            provider: cred.name.clone(),
            provider_type: cred.r#type.clone(),
            model: upstream.to_owned(),
            price: Some(known.map(|k| price(&k.price)).unwrap_or_default()),
            timeout_ms: BYOK_TIMEOUT_MS,
            max_retries: 0,
            context_window: known.map_or(0, |k| k.context_window),
            key: UNTRACKED,
            credential_id: Some(cred.id.clone()),
            byok: true,
        }))
    }

    /// The plan for one BYOK target: policies and capabilities apply as to
    /// any target.
    fn byok_plan(
        &self,
        req: &pb::RouteRequest,
        model: &str,
        target: pb::Target,
        chosen: Option<&configs::Chosen<'_>>,
        variant: Option<&llmgw_kit::config::Variant>,
    ) -> Result<pb::RoutePlan, GwError> {
        let policies = req.principal.as_ref().map_or(&[][..], |p| p.policies.as_slice());
        match policy::check(
            policies,
            model,
            &target.provider,
            &target.provider_type,
            &target.model,
        ) {
            Ok(()) => {}
            Err((policy::Refusal::Model, scope)) => {
                return Err(GwError::new(
                    ErrorCode::PermissionDenied,
                    format!("the model `{model}` is not allowed by the {scope} policy"),
                )
                .with_param("model"));
            }
            Err((policy::Refusal::Provider, scope)) => {
                return Err(GwError::new(
                    ErrorCode::PermissionDenied,
                    format!("the {scope} policy allows none of the providers that serve `{model}`"),
                )
                .with_param("model"));
            }
        }
        let caps = self
            .builtin
            .for_upstream(&target.provider_type, &target.model)
            .map_or(Capabilities::ANY, |k| k.capabilities);
        let needed = req.needed.unwrap_or_default();
        if !has(&caps, &needed) {
            return Err(GwError::invalid(
                "model",
                format!(
                    "The model `{model}` does not support this request's features (served by provider `{}` with `{}`).",
                    target.provider, target.model
                ),
            ));
        }
        Ok(pb::RoutePlan {
            requested_model: req.model.clone(),
            requested_provider: Some(target.provider.clone()),
            targets: vec![target],
            config: chosen.map(|c| c.config.name.clone()),
            config_version: chosen.map(|c| c.config.version),
            cache_ttl_secs: chosen.and_then(|c| configs::cache_ttl_secs(c.config)),
            variant: variant.map(|v| v.name.clone()),
            params: variant.and_then(configs::params),
            system: variant.and_then(|v| v.system.clone()),
            strategy: None,
        })
    }
}

/// A model resolved to its targets, before ordering.
struct Resolved {
    requested_provider: Option<String>,
    targets: Vec<PoolTarget>,
    /// `None`: one target, nothing to order.
    strategy: Option<Strategy>,
    fallback: bool,
}

fn has(caps: &Capabilities, needed: &pb::Capabilities) -> bool {
    if needed.embeddings {
        return caps.embeddings;
    }
    chats(caps)
        && (!needed.tools || caps.tools)
        && (!needed.vision || caps.vision)
        && (!needed.json_schema || caps.json_schema)
        && (!needed.streaming || caps.streaming)
}

/// Whether a target answers chat at all (an embedding model does not).
fn chats(caps: &Capabilities) -> bool {
    !caps.embeddings || caps.streaming
}

/// The 400 for a request asking what none of the model's targets can do,
/// naming the parameter that asked for it.
fn unsupported(model: &str, needed: &pb::Capabilities, targets: &[PoolTarget]) -> GwError {
    let lacking = |f: fn(&Capabilities) -> bool| targets.iter().all(|t| !f(&t.caps));
    let (what, param) = if needed.embeddings && lacking(|c| c.embeddings) {
        ("embeddings", "model")
    } else if !needed.embeddings && targets.iter().all(|t| !chats(&t.caps)) {
        ("chat completions (it is an embedding model)", "model")
    } else if needed.tools && lacking(|c| c.tools) {
        ("tools", "tools")
    } else if needed.vision && lacking(|c| c.vision) {
        ("image inputs", "messages")
    } else if needed.json_schema && lacking(|c| c.json_schema) {
        ("response_format json_schema", "response_format")
    } else if needed.streaming && lacking(|c| c.streaming) {
        ("streaming", "stream")
    } else {
        ("this combination of features", "model")
    };
    let behind: Vec<String> = targets
        .iter()
        .take(3)
        .map(|t| {
            format!(
                "provider `{}` with `{}`",
                t.upstream.provider_name, t.upstream.model
            )
        })
        .collect();
    GwError::invalid(
        param,
        format!(
            "The model `{model}` does not support {what} (served by {}).",
            behind.join(", ")
        ),
    )
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

impl Catalog {
    /// The plan for `req`.
    async fn route_plan(&self, req: pb::RouteRequest) -> Result<pb::RoutePlan, GwError> {
        let config_name = req
            .config
            .as_deref()
            .or_else(|| req.principal.as_ref().and_then(|p| p.routing_config.as_deref()))
            .filter(|c| !c.is_empty());
        let chosen = match config_name {
            Some(name) => Some(self.configs.choose(self.configs.get(name)?, &req, &self.rng)),
            None => None,
        };
        let variant = chosen.as_ref().and_then(|c| c.variant);
        let model = variant.and_then(|v| v.model.as_deref()).unwrap_or(&req.model);
        if model.is_empty() {
            return Err(GwError::invalid("model", "you must provide a model parameter"));
        }
        if let Some(target) = self.byok(model, req.principal.as_ref())? {
            return self.byok_plan(&req, model, target, chosen.as_ref(), variant);
        }
        let resolved = self
            .resolve(model)
            .map_err(|e| match (chosen.as_ref(), variant) {
                (Some(c), Some(v)) if v.model.is_some() => GwError::new(
                    e.code(),
                    format!(
                        "{} (chosen by variant `{}` of routing config `{}`)",
                        e.message(),
                        v.name,
                        c.config.name
                    ),
                )
                .with_param("model"),
                _ => e,
            })?;
        let policies = req.principal.as_ref().map_or(&[][..], |p| p.policies.as_slice());
        let resolved = self.allowed(model, resolved, policies)?;
        let requested_provider = resolved.requested_provider.clone();
        let strategy = resolved.strategy;
        let needed = req.needed.unwrap_or_default();
        let targets = self.plan(model, resolved, &needed)?;
        Ok(pb::RoutePlan {
            requested_model: req.model,
            requested_provider,
            targets,
            config: chosen.as_ref().map(|c| c.config.name.clone()),
            config_version: chosen.as_ref().map(|c| c.config.version),
            cache_ttl_secs: chosen.as_ref().and_then(|c| configs::cache_ttl_secs(c.config)),
            variant: variant.map(|v| v.name.clone()),
            params: variant.and_then(configs::params),
            system: variant.and_then(|v| v.system.clone()),
            strategy: strategy.map(|s| s.as_str().to_owned()),
        })
    }
}

#[async_trait]
impl RouterService for Catalog {
    async fn route(&self, req: pb::RouteRequest) -> Result<pb::RoutePlan, GwError> {
        let span = llmgw_kit::otel_span!(
            "route",
            gen_ai.request.model = %req.model,
            llmgw.targets = tracing::field::Empty,
            llmgw.strategy = tracing::field::Empty,
        );
        let plan = tracing::Instrument::instrument(self.route_plan(req), span.clone()).await?;
        span.record("llmgw.targets", plan.targets.len());
        if let Some(strategy) = &plan.strategy {
            span.record("llmgw.strategy", strategy.as_str());
        }
        Ok(plan)
    }

    async fn list_models(&self, req: pb::ModelsRequest) -> Result<pb::ModelList, GwError> {
        let policies = req.principal.as_ref().map_or(&[][..], |p| p.policies.as_slice());
        let mut data: Vec<pb::Model> = self
            .pools
            .iter()
            .filter(|p| !p.targets.is_empty())
            .filter(|p| {
                let targets: Vec<(usize, &str)> = p
                    .targets
                    .iter()
                    .map(|t| (t.upstream.provider, t.upstream.model.as_str()))
                    .collect();
                self.listable(&p.name, &targets, policies)
            })
            .map(|p| pb::Model {
                id: p.name.clone(),
                created: self.created,
                owned_by: match p.targets.as_slice() {
                    [one] => self.providers[one.upstream.provider].name.clone(),
                    _ => "llmgw".to_owned(),
                },
            })
            .collect();
        // Built-in models a configured provider offers, by their own names.
        for m in self.builtin.models() {
            if self.by_model_name.contains_key(&m.id) {
                continue;
            }
            let offering: Vec<(usize, &str)> = m
                .offered_by
                .iter()
                .flat_map(|(kind, upstream)| {
                    self.providers
                        .iter()
                        .enumerate()
                        .filter(move |(_, p)| p.kind == kind.as_str())
                        .map(move |(i, _)| (i, upstream.as_str()))
                })
                .collect();
            if let Some(&(i, _)) = offering.first()
                && self.listable(&m.id, &offering, policies)
            {
                let p = &self.providers[i];
                data.push(pb::Model {
                    id: m.id.clone(),
                    created: self.created,
                    owned_by: p.name.clone(),
                });
            }
        }
        Ok(pb::ModelList { data })
    }

    fn report(&self, report: pb::AttemptReport) {
        let Some(upstream) = self.stats(&report) else {
            return;
        };
        let stats = &upstream.stats;
        let now = self.clock.now_ms();
        match report.event() {
            Event::Started => stats.started(),
            Event::Succeeded => stats.succeeded(report.latency_ms, &self.ejection, now),
            Event::Finished | Event::Abandoned => stats.ended(),
            Event::Failed => {
                stats.ended();
                if stats.failed(&self.ejection, now) {
                    llmgw_kit::metrics::router().ejected(&report.provider);
                    tracing::warn!(
                        provider = %report.provider,
                        model = %report.model,
                        times = stats.times_ejected(),
                        "target ejected after consecutive failures"
                    );
                }
            }
            Event::Unspecified => {}
        }
    }
}

#[cfg(test)]
mod tests;
