//! Routing configs: named, versioned sets of variants. A request names one
//! in `x-llmgw-config` (`name` or `name@version`), or its key has a default.
//! The variant is chosen in three steps: the first targeted variant whose
//! `when` matches; else a rollout, by the caller's stable bucket; else a
//! weighted choice — sticky to the caller when the config says so.

use std::collections::HashMap;

use llmgw_kit::config::{Choice, RoutingConfig, Sticky, Variant, When};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;

use crate::strategy::{Rng, stable_unit};

/// The header a client names a config with, also the error's `param`.
pub const HEADER: &str = "x-llmgw-config";

pub struct Configs {
    /// Each name's versions, oldest first.
    by_name: HashMap<String, Vec<RoutingConfig>>,
}

/// What a request's config chose.
pub struct Chosen<'a> {
    pub config: &'a RoutingConfig,
    pub variant: Option<&'a Variant>,
}

impl Configs {
    pub fn new(configs: &[RoutingConfig]) -> Self {
        let mut by_name: HashMap<String, Vec<RoutingConfig>> = HashMap::new();
        for c in configs {
            by_name.entry(c.name.clone()).or_default().push(c.clone());
        }
        for versions in by_name.values_mut() {
            versions.sort_by_key(|c| c.version);
        }
        Self { by_name }
    }

    /// The config `spec` names (`name` for its latest version, or
    /// `name@version`).
    pub fn get(&self, spec: &str) -> Result<&RoutingConfig, GwError> {
        let (name, version) = match spec.rsplit_once('@') {
            Some((name, v)) => {
                let v = v.parse::<u32>().map_err(|_| {
                    GwError::invalid(
                        HEADER,
                        format!("`{spec}`: a routing config is named `name` or `name@version`"),
                    )
                })?;
                (name, Some(v))
            }
            None => (spec, None),
        };
        let unknown = || {
            GwError::new(ErrorCode::InvalidRequest, format!("no routing config `{spec}`")).with_param(HEADER)
        };
        let versions = self.by_name.get(name).ok_or_else(unknown)?;
        match version {
            None => versions.last().ok_or_else(unknown),
            Some(v) => versions.iter().find(|c| c.version == v).ok_or_else(unknown),
        }
    }

    /// Chooses the variant of `config` for this request.
    pub fn choose<'a>(&self, config: &'a RoutingConfig, req: &pb::RouteRequest, rng: &Rng) -> Chosen<'a> {
        let principal = req.principal.as_ref();
        let key = principal.map_or("", |p| p.key_id.as_str());
        let user = req.user.as_deref().filter(|u| !u.is_empty());
        let variant = config
            .variants
            .iter()
            .find(|v| matches!(&v.choice, Choice::When(w) if matches(w, req)))
            .or_else(|| {
                // Rollouts take the first buckets, in order, by the caller.
                let bucket = stable_unit(&[&config.name, user.unwrap_or(key)]) * 100.0;
                let mut edge = 0.0;
                config.variants.iter().find(|v| match v.choice {
                    Choice::Rollout(pct) => {
                        edge += pct;
                        bucket < edge
                    }
                    _ => false,
                })
            })
            .or_else(|| {
                let total: u64 = config
                    .variants
                    .iter()
                    .map(|v| match v.choice {
                        Choice::Weight(w) => u64::from(w),
                        _ => 0,
                    })
                    .sum();
                if total == 0 {
                    return None;
                }
                let draw = match config.sticky {
                    Sticky::None => rng.unit(),
                    Sticky::User => stable_unit(&[&config.name, "w", user.unwrap_or(key)]),
                    Sticky::Key => stable_unit(&[&config.name, "w", key]),
                };
                let mut point = draw * total as f64;
                config.variants.iter().find(|v| match v.choice {
                    Choice::Weight(w) => {
                        point -= f64::from(w);
                        point < 0.0
                    }
                    _ => false,
                })
            });
        Chosen { config, variant }
    }
}

fn matches(when: &When, req: &pb::RouteRequest) -> bool {
    let principal = req.principal.as_ref();
    let any = |list: &[String], values: &[Option<&str>]| {
        list.is_empty() || values.iter().flatten().any(|v| list.iter().any(|x| x == v))
    };
    any(&when.keys, &[principal.map(|p| p.key_id.as_str())])
        && any(
            &when.projects,
            &[
                principal.and_then(|p| p.project_name.as_deref()),
                principal.and_then(|p| p.project_id.as_deref()),
            ],
        )
        && any(&when.users, &[req.user.as_deref()])
        && when
            .headers
            .iter()
            .all(|(name, value)| req.headers.get(name) == Some(value))
}

/// The TTL a routing config caches its answers for, in seconds (0: the
/// cache's default); `None`: the config does not cache.
pub fn cache_ttl_secs(config: &RoutingConfig) -> Option<u32> {
    config.cache.map(|c| {
        c.ttl
            .map_or(0, |t| u32::try_from(t.as_secs().max(1)).unwrap_or(u32::MAX))
    })
}

/// The variant's parameters as the request fields they set.
pub fn params(variant: &Variant) -> Option<pb::ChatRequest> {
    let p = &variant.params;
    if *p == Default::default() {
        return None;
    }
    Some(pb::ChatRequest {
        temperature: p.temperature,
        top_p: p.top_p,
        max_tokens: p.max_tokens,
        max_completion_tokens: p.max_completion_tokens,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: p.seed,
        reasoning_effort: p.reasoning_effort.clone(),
        ..Default::default()
    })
}
