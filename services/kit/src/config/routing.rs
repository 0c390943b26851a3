//! The routing part of the config: platform models and pools (`models:`)
//! and the router's policy (`routing:`): outlier ejection, the retry budget,
//! backoff, the latency strategy's exploration, and routing configs with
//! their variants.
//!
//! ```yaml
//! models:
//!   - name: smart                    # a pool: several targets, one strategy
//!     aliases: [best]
//!     strategy: latency              # weighted | latency | cheapest | least-busy | priority
//!     fallback: true                 # try the others after a retryable failure
//!     targets:
//!       - { target: openai/gpt-4o, weight: 3 }
//!       - { target: anthropic/claude-sonnet-4-5, context_window: 200000 }
//! routing:
//!   configs:
//!     - name: support
//!       version: 2
//!       sticky: user
//!       variants:
//!         - { name: control, weight: 90, model: gpt-4o-mini }
//!         - { name: candidate, weight: 10, model: smart, params: { temperature: 0.2 } }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::{DisabledProvider, Price, ProviderConfig, suggest};

// ---- models and pools -----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    name: String,
    /// Other names for the same model.
    #[serde(default)]
    aliases: Vec<String>,
    /// One target, `provider/model`.
    #[serde(default)]
    target: Option<String>,
    /// A pool: several targets.
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    strategy: Option<Strategy>,
    #[serde(default)]
    fallback: Option<bool>,
    // Defaults for the targets; each target may set its own.
    #[serde(default)]
    price: Option<Price>,
    #[serde(default)]
    context_window: Option<u32>,
    #[serde(default)]
    capabilities: Option<Vec<Capability>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    target: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    price: Option<Price>,
    #[serde(default)]
    context_window: Option<u32>,
    #[serde(default)]
    capabilities: Option<Vec<Capability>>,
}

/// How a pool orders its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// A random pick in proportion to the weights.
    #[default]
    Weighted,
    /// The lowest recent latency (an EWMA; time to first token for streams).
    Latency,
    /// The lowest price.
    Cheapest,
    /// The fewest requests in flight.
    LeastBusy,
    /// The order written, the first healthy one first.
    Priority,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weighted => "weighted",
            Self::Latency => "latency",
            Self::Cheapest => "cheapest",
            Self::LeastBusy => "least-busy",
            Self::Priority => "priority",
        }
    }
}

/// What a target can do; a request needing more skips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Tools,
    Vision,
    JsonSchema,
    Streaming,
    Embeddings,
}

/// A set of [`Capability`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub tools: bool,
    pub vision: bool,
    pub json_schema: bool,
    pub streaming: bool,
    pub embeddings: bool,
}

impl Capabilities {
    /// A model nothing is known of: it is assumed to do everything asked of
    /// it, and the provider answers if not.
    pub const ANY: Self = Self {
        tools: true,
        vision: true,
        json_schema: true,
        streaming: true,
        embeddings: true,
    };

    pub fn from_list(list: &[Capability]) -> Self {
        let mut c = Self::default();
        for cap in list {
            match cap {
                Capability::Tools => c.tools = true,
                Capability::Vision => c.vision = true,
                Capability::JsonSchema => c.json_schema = true,
                Capability::Streaming => c.streaming = true,
                Capability::Embeddings => c.embeddings = true,
            }
        }
        c
    }
}

/// A platform model: a name (and aliases) clients use, and the targets
/// behind it — one, or a pool.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub aliases: Vec<String>,
    /// In the order written; targets of disabled providers are left out.
    pub targets: Vec<TargetConfig>,
    pub strategy: Strategy,
    /// Whether the other targets are tried after a retryable failure.
    pub fallback: bool,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// The provider's config name.
    pub provider: String,
    /// The model name the provider knows.
    pub upstream_model: String,
    /// `None`: the built-in catalog's price, else free.
    pub price: Option<Price>,
    pub weight: u32,
    /// `None`: the built-in catalog's.
    pub context_window: Option<u32>,
    /// `None`: the built-in catalog's, else [`Capabilities::ANY`].
    pub capabilities: Option<Capabilities>,
}

fn check_price(at: &str, p: &Price) -> Result<(), String> {
    for (field, v) in [
        ("input_per_mtok", Some(p.input_per_mtok)),
        ("output_per_mtok", Some(p.output_per_mtok)),
        ("cached_input_per_mtok", p.cached_input_per_mtok),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(format!("`{at}.price.{field}` must be a non-negative number"));
        }
    }
    Ok(())
}

pub(super) fn parse_models(
    raw: Vec<RawModel>,
    providers: &[ProviderConfig],
    disabled: &[DisabledProvider],
) -> Result<Vec<ModelConfig>, String> {
    let mut models = Vec::new();
    let mut names = HashSet::new();
    for (i, m) in raw.into_iter().enumerate() {
        let at = format!("models[{i}]");
        if m.name.trim().is_empty() {
            return Err(format!("`{at}.name` is empty"));
        }
        for name in std::iter::once(&m.name).chain(&m.aliases) {
            if name.trim().is_empty() {
                return Err(format!("`{at}.aliases` has an empty name"));
            }
            if !names.insert(name.clone()) {
                return Err(format!("`{at}`: model name `{name}` is defined twice"));
            }
        }
        if let Some(p) = &m.price {
            check_price(&at, p)?;
        }
        let raw_targets: Vec<(String, RawTarget)> = match (m.target, m.targets.is_empty()) {
            (Some(target), true) => vec![(
                format!("{at}.target"),
                RawTarget {
                    target,
                    weight: None,
                    price: None,
                    context_window: None,
                    capabilities: None,
                },
            )],
            (None, false) => m
                .targets
                .into_iter()
                .enumerate()
                .map(|(j, t)| (format!("{at}.targets[{j}]"), t))
                .collect(),
            (Some(_), false) => return Err(format!("`{at}` has both `target` and `targets`; keep one")),
            (None, true) => return Err(format!("`{at}` needs `target` (one) or `targets` (a pool)")),
        };
        let mut targets = Vec::new();
        for (tat, t) in raw_targets {
            let Some((provider, upstream)) = t
                .target
                .split_once('/')
                .filter(|(p, m)| !p.is_empty() && !m.is_empty())
            else {
                return Err(format!("`{tat}` must be `provider/model`, got `{}`", t.target));
            };
            if disabled.iter().any(|d| d.name == provider) {
                continue;
            }
            if !providers.iter().any(|p| p.name == provider) {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "`{tat}`: no provider named `{provider}`{}",
                    suggest(provider, &known)
                ));
            }
            if let Some(p) = &t.price {
                check_price(&tat, p)?;
            }
            if t.weight == Some(0) {
                return Err(format!(
                    "`{tat}.weight` must be above 0 (leave a target out instead)"
                ));
            }
            targets.push(TargetConfig {
                provider: provider.to_owned(),
                upstream_model: upstream.to_owned(),
                price: t.price.or(m.price),
                weight: t.weight.unwrap_or(1),
                context_window: t.context_window.or(m.context_window),
                capabilities: t
                    .capabilities
                    .as_deref()
                    .or(m.capabilities.as_deref())
                    .map(Capabilities::from_list),
            });
        }
        if targets.is_empty() {
            // Every target's provider is disabled: the model is not offered.
            continue;
        }
        models.push(ModelConfig {
            name: m.name,
            aliases: m.aliases,
            targets,
            strategy: m.strategy.unwrap_or_default(),
            fallback: m.fallback.unwrap_or(true),
        });
    }
    Ok(models)
}

// ---- the router's policy --------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingPolicy {
    /// Seeds the router's random choices (weights, A/B splits), for
    /// reproducible runs; unset, a fresh seed each start.
    pub seed: Option<u64>,
    pub ejection: Ejection,
    pub retry_budget: RetryBudget,
    pub backoff: Backoff,
    /// The share of requests the `latency` strategy sends to a random
    /// target, so a recovered target's latency is seen again.
    pub latency_explore: f64,
    /// Routing configs, chosen by `x-llmgw-config` or a key's default.
    #[serde(rename = "configs")]
    raw_configs: Vec<RawRoutingConfig>,
    #[serde(skip)]
    pub configs: Vec<RoutingConfig>,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        Self {
            seed: None,
            ejection: Ejection::default(),
            retry_budget: RetryBudget::default(),
            backoff: Backoff::default(),
            latency_explore: 0.05,
            raw_configs: Vec::new(),
            configs: Vec::new(),
        }
    }
}

/// Outlier ejection: a target failing `consecutive_failures` times in a row
/// is skipped for `base_time` × the times it was ejected (at most
/// `max_time`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ejection {
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    pub base_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
        }
    }
}

/// Retries and fallbacks in flight stay under `ratio` of the requests in
/// flight, or `min_concurrency`, whichever is more.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_concurrency: 3,
        }
    }
}

/// The pause before trying a target again: exponential from `base`, at most
/// `max`, with full jitter (a provider's `retry-after` wins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

// ---- routing configs ------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutingConfig {
    name: String,
    #[serde(default = "one")]
    version: u32,
    #[serde(default)]
    sticky: Sticky,
    variants: Vec<RawVariant>,
    /// Caches the answers of requests routed by this config.
    #[serde(default)]
    cache: Option<ConfigCache>,
}

/// A routing config's response cache setting: `cache: {ttl: 10m}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigCache {
    /// How long an answer is served from the cache; absent: `cache.default_ttl`.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    #[serde(default)]
    weight: Option<u32>,
    /// Percent (0–100) of callers, by a stable hash of the sticky subject.
    #[serde(default)]
    rollout: Option<f64>,
    #[serde(default)]
    when: Option<When>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    params: Params,
    #[serde(default)]
    system: Option<String>,
}

/// Who a weighted choice sticks to: the same subject always gets the same
/// variant (until the config's variants change).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// A fresh choice per request.
    #[default]
    None,
    /// By the request's `user` (falling back to the API key).
    User,
    /// By the API key.
    Key,
}

/// Targeting: a variant for the requests that match every condition given
/// (each list matches any of its values).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// API key ids.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Project names or ids.
    #[serde(default)]
    pub projects: Vec<String>,
    /// The request's `user`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Request headers (name, lowercase → exact value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Request parameters a variant sets over the caller's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub reasoning_effort: Option<String>,
}

/// One version of a named routing config.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub name: String,
    pub version: u32,
    pub sticky: Sticky,
    pub variants: Vec<Variant>,
    /// Answers of requests this config routes are cached (opt-in).
    pub cache: Option<ConfigCache>,
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub choice: Choice,
    /// The model (any addressing form) this variant sends to; `None`: the
    /// request's.
    pub model: Option<String>,
    pub params: Params,
    pub system: Option<String>,
}

/// How a variant is chosen. Targeted variants are checked first, in
/// order; then rollouts by the subject's bucket; then a weighted choice.
#[derive(Debug, Clone)]
pub enum Choice {
    When(When),
    Rollout(f64),
    Weight(u32),
}

impl RoutingPolicy {
    pub(super) fn validate(&mut self) -> Result<(), String> {
        let e = &self.ejection;
        if e.consecutive_failures == 0 || e.base_time.is_zero() || e.max_time < e.base_time {
            return Err(
                "`routing.ejection`: `consecutive_failures` and `base_time` must be above 0, and \
                 `max_time` at least `base_time`"
                    .to_owned(),
            );
        }
        let b = &self.retry_budget;
        if !(b.ratio.is_finite() && b.ratio >= 0.0) {
            return Err("`routing.retry_budget.ratio` must be a non-negative number".to_owned());
        }
        if self.backoff.max < self.backoff.base {
            return Err("`routing.backoff.max` must be at least `base`".to_owned());
        }
        if !(0.0..=1.0).contains(&self.latency_explore) {
            return Err("`routing.latency_explore` must be between 0 and 1".to_owned());
        }
        let mut seen = HashSet::new();
        for (i, c) in std::mem::take(&mut self.raw_configs).into_iter().enumerate() {
            let at = format!("routing.configs[{i}]");
            if c.name.is_empty() || c.name.contains('@') || c.name.contains(char::is_whitespace) {
                return Err(format!(
                    "`{at}.name` must be non-empty, without `@` or spaces, got `{}`",
                    c.name
                ));
            }
            if !seen.insert((c.name.clone(), c.version)) {
                return Err(format!(
                    "`{at}`: config `{}` version {} is defined twice",
                    c.name, c.version
                ));
            }
            if c.variants.is_empty() {
                return Err(format!("`{at}.variants` is empty"));
            }
            let mut names = HashSet::new();
            let mut rollout_total = 0.0;
            let mut variants = Vec::new();
            for (j, v) in c.variants.into_iter().enumerate() {
                let vat = format!("{at}.variants[{j}]");
                if v.name.is_empty() || !names.insert(v.name.clone()) {
                    return Err(format!("`{vat}.name` must be non-empty and unique in the config"));
                }
                let choice = match (v.when, v.rollout, v.weight) {
                    (Some(w), None, None) => Choice::When(w),
                    (None, Some(r), None) => {
                        if !(r.is_finite() && (0.0..=100.0).contains(&r)) {
                            return Err(format!("`{vat}.rollout` is a percentage, 0 to 100"));
                        }
                        rollout_total += r;
                        Choice::Rollout(r)
                    }
                    (None, None, w) => Choice::Weight(w.unwrap_or(1)),
                    _ => {
                        return Err(format!(
                            "`{vat}`: a variant is chosen by one of `when`, `rollout` or `weight`"
                        ));
                    }
                };
                if let Some(effort) = &v.params.reasoning_effort
                    && !["minimal", "low", "medium", "high"].contains(&effort.as_str())
                {
                    return Err(format!(
                        "`{vat}.params.reasoning_effort` must be minimal, low, medium or high"
                    ));
                }
                variants.push(Variant {
                    name: v.name,
                    choice,
                    model: v.model.filter(|m| !m.is_empty()),
                    params: v.params,
                    system: v.system,
                });
            }
            if rollout_total > 100.0 {
                return Err(format!("`{at}`: the variants' rollouts add up to more than 100"));
            }
            self.configs.push(RoutingConfig {
                name: c.name,
                version: c.version,
                sticky: c.sticky,
                variants,
                cache: c.cache,
            });
        }
        Ok(())
    }
}
