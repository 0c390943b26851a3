//! One request, whatever door it came in by: authenticate (cached) → route →
//! attempt each target in order (falling back only on retryable errors, only
//! before the first byte, within one total deadline) → meter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmgw_kit::config::{Backoff, Config, RetryBudget};
use llmgw_kit::metrics::{self, GenAiLabels, Rejection};
use llmgw_kit::pricing::{Tokens, cost_usd};
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use llmgw_kit::error::error_type;

mod forward;
pub use forward::{Forward, Meter};

use crate::Deps;
use crate::auth_cache::AuthCache;
use crate::cache::{self, Cache, Directive, Plan};
use crate::limits::{self, Limiter, Quota};
use crate::meter::MeterSender;
use crate::report::{Release, Try};
use crate::stream::{Held, metered};

pub struct Pipeline {
    deps: Deps,
    meter: MeterSender,
    auth_cache: AuthCache,
    request_timeout: Duration,
    stream_idle_timeout: Duration,
    /// One permit per request in flight (a stream holds its permit until it
    /// ends); none left means overload, answered at once.
    in_flight: Arc<Semaphore>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    budget: Budget,
    backoff: Backoff,
    limiter: Arc<Limiter>,
    /// The response cache ([`crate::cache`]).
    cache: Arc<Cache>,
    /// What `/health` checks.
    pub health: crate::health::Health,
}

/// What a request says about routing besides its model: the routing config
/// it names (`x-llmgw-config`), and, only when a config applies, the
/// headers its targeting rules may read.
#[derive(Debug, Default)]
pub struct Hints {
    pub config: Option<String>,
    pub headers: HashMap<String, String>,
    /// What the request's `cache-control` asks of the response cache.
    pub cache: Directive,
    /// The in-flight permit the door took as the request came in
    /// ([`Pipeline::admit`]); without one, the pipeline takes it itself.
    pub admitted: Option<OwnedSemaphorePermit>,
}

/// Headers never handed to routing rules: credentials.
const PRIVATE_HEADERS: [&str; 6] = [
    "authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "proxy-authorization",
    "x-goog-api-key",
];
/// Headers handed to routing rules at most.
const MAX_HINT_HEADERS: usize = 64;

impl Hints {
    /// The hints of a request whose `x-llmgw-config` is `config`; `pairs`
    /// (its headers or gRPC metadata) are read only when a config applies.
    pub fn new<'a, I>(principal: &pb::Principal, config: Option<&str>, pairs: impl FnOnce() -> I) -> Self
    where
        I: Iterator<Item = (&'a str, Option<&'a str>)>,
    {
        let config = config.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        if config.is_none() && principal.routing_config.is_none() {
            return Self::default();
        }
        let headers = pairs()
            .filter_map(|(name, value)| Some((name.to_ascii_lowercase(), value?.to_owned())))
            .filter(|(name, _)| !PRIVATE_HEADERS.contains(&name.as_str()))
            .take(MAX_HINT_HEADERS)
            .collect();
        Self {
            config,
            headers,
            cache: Directive::default(),
            admitted: None,
        }
    }
}

/// The header naming a routing config.
pub const CONFIG_HEADER: &str = "x-llmgw-config";

/// The retry budget: tries after the first, in flight across all requests,
/// stay under `ratio` × requests in flight, or `min` — whichever is more —
/// so that a failing provider cannot multiply the load.
struct Budget {
    requests: AtomicUsize,
    retries: AtomicUsize,
    ratio: f64,
    min: usize,
}

impl Budget {
    fn new(config: &RetryBudget) -> Self {
        Self {
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            ratio: config.ratio,
            min: config.min_concurrency as usize,
        }
    }

    fn request(&self) -> BudgetGuard<'_> {
        self.requests.fetch_add(1, Relaxed);
        BudgetGuard(&self.requests)
    }

    fn retry(&self) -> Option<BudgetGuard<'_>> {
        let allowed = ((self.requests.load(Relaxed) as f64 * self.ratio) as usize).max(self.min);
        let now = self.retries.fetch_add(1, Relaxed);
        let guard = BudgetGuard(&self.retries);
        (now < allowed).then_some(guard)
    }
}

struct BudgetGuard<'a>(&'a AtomicUsize);

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What a chat request produced.
pub enum ChatOutput {
    Complete(Box<pb::ChatResponse>, Option<Quota>),
    Stream(ChatStream),
}

/// A stream that has started: the provider accepted the request.
pub struct ChatStream {
    /// Routing so far (for response headers); the last chunk repeats it.
    pub metadata: Arc<pb::RoutingMetadata>,
    pub chunks: ChunkStream,
    /// Rate-limit headroom, when a limit applies.
    pub quota: Option<Quota>,
}

impl Pipeline {
    pub fn new(
        config: &Config,
        deps: Deps,
        meter: MeterSender,
        limiter: Arc<Limiter>,
        cache: Arc<Cache>,
    ) -> Self {
        Self {
            health: crate::health::Health::new(config, deps.clone(), config.redis_url.as_ref()),
            deps,
            meter,
            auth_cache: AuthCache::new(config.edge.auth_cache_ttl),
            request_timeout: config.edge.request_timeout,
            stream_idle_timeout: config.edge.stream_idle_timeout,
            in_flight: Arc::new(Semaphore::new(config.edge.max_in_flight)),
            max_body_bytes: config.edge.max_body_bytes,
            budget: Budget::new(&config.routing.retry_budget),
            backoff: config.routing.backoff.clone(),
            limiter,
            cache,
        }
    }

    /// Resolves a presented API key to its principal, asking `auth` only when
    /// the key is not in the short-lived cache.
    pub async fn authenticate(&self, key: Option<&str>) -> Result<pb::Principal, GwError> {
        let key = key.map(str::trim).filter(|k| !k.is_empty()).ok_or_else(|| {
            GwError::new(
                ErrorCode::Unauthenticated,
                "You didn't provide an API key. Provide it in the Authorization header as 'Bearer YOUR_KEY'.",
            )
        })
        .inspect_err(count_rejection)?;
        let digest = AuthCache::digest(key);
        let cached = self.auth_cache.get(&digest);
        metrics::edge().auth_cache(cached.is_some());
        if let Some(principal) = cached {
            return Ok(principal);
        }
        let principal = self
            .deps
            .auth
            .authenticate(pb::AuthenticateRequest {
                api_key: key.to_owned(),
            })
            .await
            .inspect_err(count_rejection)?;
        self.auth_cache.put(digest, principal.clone());
        Ok(principal)
    }

    /// One admin API operation for `principal` (the auth service checks the
    /// key may administer what it names).
    pub async fn admin(
        &self,
        principal: pb::Principal,
        route: llmgw_kit::admin::Route,
        body_json: String,
    ) -> Result<pb::AdminReply, GwError> {
        self.deps
            .auth
            .admin(pb::AdminCall {
                caller: Some(principal),
                op: route.op as i32,
                scope: route.scope.to_owned(),
                id: route.id,
                body_json,
            })
            .await
    }

    /// One org's usage report from metering (the caller chose and checked
    /// the org: see [`crate::usage`]).
    pub async fn query_usage(&self, req: pb::UsageQueryRequest) -> Result<pb::UsageReport, GwError> {
        self.deps.metering.query_usage(req).await
    }

    pub async fn list_models(&self, principal: pb::Principal) -> Result<pb::ModelList, GwError> {
        allow_endpoint(&principal, "models")?;
        self.deps
            .router
            .list_models(pb::ModelsRequest {
                principal: Some(principal),
            })
            .await
    }

    /// Runs a chat request to its first byte: a complete response, or a
    /// started stream.
    pub async fn chat(
        &self,
        principal: pb::Principal,
        req: pb::ChatRequest,
        hints: Hints,
    ) -> Result<ChatOutput, GwError> {
        // Boxed: the request's whole future below this point lives on the
        // heap, so the futures above it (the HTTP and gRPC handlers) stay
        // small and are not copied through at every level.
        Box::pin(self.run_chat(principal, req, hints))
            .await
            .inspect_err(count_rejection)
    }

    async fn run_chat(
        &self,
        principal: pb::Principal,
        mut req: pb::ChatRequest,
        hints: Hints,
    ) -> Result<ChatOutput, GwError> {
        allow_endpoint(&principal, "chat")?;
        cap_max_tokens(&principal, &mut req)?;
        let (quota, debt) = self
            .rate_limit(&principal, estimate_tokens(prompt_chars(&req)))
            .await?;
        let streaming = req.stream;
        let client_wants_usage = streaming
            && req
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        let directive = hints.cache;
        let Begun {
            permit,
            deadline,
            request_id,
            targets,
            mut meta,
            params,
            system,
            cache_ttl_secs,
        } = self
            .begin(
                &principal,
                &req.model,
                req.user.clone(),
                needed_capabilities(&req),
                hints,
            )
            .await?;
        apply_variant(&mut req, params, system);
        let lookup = match self
            .cache
            .plan(&principal, &meta, cache_ttl_secs, directive, &req)
        {
            None => None,
            Some(Plan::Bypass) => {
                meta.cache = Some("bypass".to_owned());
                metrics::edge().response_cache("bypass");
                None
            }
            Some(Plan::Use(lookup)) => {
                if let Some(hit) = self.cache.get(&lookup).await {
                    // The router counted the plan's first try as started.
                    if let Some(first) = targets.first() {
                        drop(crate::report::Try::begin(&self.deps.router, first, false));
                    }
                    let mut guard =
                        MeterGuard::new(self.meter.clone(), &principal, &request_id, &req, streaming);
                    guard.debt = debt;
                    return Ok(serve_hit(hit, meta, guard, streaming, client_wants_usage, quota));
                }
                meta.cache = Some("miss".to_owned());
                metrics::edge().response_cache("miss");
                Some(lookup)
            }
        };
        let mut guard = MeterGuard::new(self.meter.clone(), &principal, &request_id, &req, streaming);
        guard.debt = debt;
        let max_output = req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(DEFAULT_MAX_OUTPUT);
        guard.settle = self
            .reserve(
                &principal,
                &request_id,
                &targets,
                prompt_upper_bound(&req),
                max_output,
            )
            .await
            .inspect_err(|_| guard.forget())?;

        let mut req = Some(req);
        let adapter = &self.deps.adapter;
        let (outcome, target, release) = self
            .run_attempts(targets, deadline, &mut meta, &mut guard, |last, target| {
                let request = if last { req.take() } else { req.clone() };
                let adapter_req = pb::AdapterRequest {
                    request_id: request_id.clone(),
                    target: Some(target),
                    request,
                    org_id: principal.org_id.clone(),
                };
                async move {
                    if streaming {
                        adapter.stream(adapter_req).await.map(Outcome::Stream)
                    } else {
                        adapter
                            .complete(adapter_req)
                            .await
                            .map(|r| Outcome::Complete(Box::new(r)))
                    }
                }
            })
            .await?;
        let price = target.price.unwrap_or_default();
        Ok(match outcome {
            Outcome::Complete(mut resp) => {
                if resp.usage.is_none() {
                    resp.usage = Some(guard.estimated_usage(&resp));
                }
                let usage = resp.usage.get_or_insert_default();
                usage.cost_usd = Some(cost(&price, usage));
                guard.record("ok", 200, Some(usage));
                drop(release);
                resp.metadata = Some(meta);
                if let Some(lookup) = &lookup {
                    self.cache.put(lookup, &resp);
                }
                ChatOutput::Complete(resp, quota)
            }
            Outcome::Stream(chunks) => {
                // A miss is stored once the provider's stream ended cleanly.
                let chunks = match lookup {
                    Some(lookup) => {
                        let used = pb::RoutingMetadata {
                            used_provider: meta.used_provider.clone(),
                            used_model: meta.used_model.clone(),
                            ..Default::default()
                        };
                        cache::store_when_done(chunks, self.cache.clone(), lookup, used)
                    }
                    None => chunks,
                };
                let metadata = Arc::new(meta);
                let chunks = metered(
                    chunks,
                    Held { permit, release },
                    guard,
                    metadata.clone(),
                    price,
                    client_wants_usage,
                    self.stream_idle_timeout,
                );
                ChatOutput::Stream(ChatStream {
                    metadata,
                    chunks,
                    quota,
                })
            }
        })
    }

    /// Embeddings: the same admission, routing, attempts and metering as a
    /// chat completion; billed on input tokens.
    pub async fn embed(
        &self,
        principal: pb::Principal,
        req: pb::EmbeddingsRequest,
        hints: Hints,
    ) -> Result<pb::EmbeddingsResponse, GwError> {
        // Boxed for the reason given at `chat`.
        Box::pin(self.run_embed(principal, req, hints))
            .await
            .inspect_err(count_rejection)
    }

    async fn run_embed(
        &self,
        principal: pb::Principal,
        req: pb::EmbeddingsRequest,
        hints: Hints,
    ) -> Result<pb::EmbeddingsResponse, GwError> {
        allow_endpoint(&principal, "embeddings")?;
        let input_chars: usize = req
            .inputs
            .iter()
            .map(|i| match &i.value {
                Some(pb::embedding_input::Value::Text(t)) => t.len(),
                Some(pb::embedding_input::Value::Tokens(t)) => t.ids.len() * 4,
                None => 0,
            })
            .sum();
        let (_quota, debt) = self.rate_limit(&principal, estimate_tokens(input_chars)).await?;
        let Begun {
            permit: _permit,
            deadline,
            request_id,
            targets,
            mut meta,
            ..
        } = self
            .begin(
                &principal,
                &req.model,
                req.user.clone(),
                pb::Capabilities {
                    embeddings: true,
                    ..Default::default()
                },
                hints,
            )
            .await?;
        let mut guard = MeterGuard::start(
            self.meter.clone(),
            &principal,
            &request_id,
            &req.model,
            false,
            estimate_tokens(input_chars),
        );
        guard.operation = "embeddings";
        guard.debt = debt;
        guard.settle = self
            .reserve(
                &principal,
                &request_id,
                &targets,
                u32::try_from(input_chars).unwrap_or(u32::MAX),
                0,
            )
            .await
            .inspect_err(|_| guard.forget())?;
        let mut req = Some(req);
        let adapter = &self.deps.adapter;
        let (mut resp, target, _release) = self
            .run_attempts(targets, deadline, &mut meta, &mut guard, |last, target| {
                let request = if last { req.take() } else { req.clone() };
                let adapter_req = pb::AdapterEmbeddingsRequest {
                    request_id: request_id.clone(),
                    target: Some(target),
                    request,
                    org_id: principal.org_id.clone(),
                };
                adapter.embed(adapter_req)
            })
            .await?;
        let usage = resp.usage.get_or_insert_with(|| pb::Usage {
            prompt_tokens: guard.prompt_estimate,
            total_tokens: guard.prompt_estimate,
            estimated: true,
            ..Default::default()
        });
        usage.cost_usd = Some(cost(&target.price.unwrap_or_default(), usage));
        guard.record("ok", 200, Some(usage));
        resp.metadata = Some(meta);
        Ok(resp)
    }

    /// Counts the request against the rate limits of its scopes (429 when
    /// one is spent); the returned debt corrects the token estimate later.
    async fn rate_limit(
        &self,
        principal: &pb::Principal,
        estimate: u32,
    ) -> Result<(Option<Quota>, Option<TokenDebt>), GwError> {
        let scopes = limits::scopes(principal);
        if scopes.is_empty() {
            return Ok((None, None));
        }
        let quota = self.limiter.admit(&scopes, estimate).await?;
        Ok((
            Some(quota),
            Some(TokenDebt {
                limiter: self.limiter.clone(),
                scopes,
                estimate,
            }),
        ))
    }

    /// Reserves the request's worst case (the prompt estimate and
    /// `max_output` tokens at the dearest target's prices) against the
    /// principal's budgets; 402 when one would be overrun. The returned
    /// client settles it when the request is metered.
    async fn reserve(
        &self,
        principal: &pb::Principal,
        request_id: &str,
        targets: &[pb::Target],
        prompt: u32,
        max_output: u32,
    ) -> Result<Option<Settle>, GwError> {
        if principal.policies.iter().all(|p| p.budgets.is_empty()) {
            return Ok(None);
        }
        let worst = targets
            .iter()
            .map(|t| {
                let price = t.price.unwrap_or_default();
                cost_usd(
                    &price,
                    Tokens {
                        input: prompt,
                        output: max_output,
                        cached: 0,
                    },
                )
            })
            .fold(0.0, f64::max);
        let admitted = self
            .deps
            .auth
            .admit(pb::AdmitRequest {
                principal: Some(principal.clone()),
                request_id: request_id.to_owned(),
                reserve_usd: worst,
            })
            .await;
        match admitted {
            Ok(a) if a.reserved => Ok(Some(Settle {
                auth: self.deps.auth.clone(),
                request_id: request_id.to_owned(),
                traceparent: llmgw_kit::telemetry::current_traceparent(),
            })),
            Ok(_) => Ok(None),
            Err(e) => {
                // The router counted the plan's first try as started.
                if let Some(first) = targets.first() {
                    drop(crate::report::Try::begin(&self.deps.router, first, false));
                }
                Err(e)
            }
        }
    }

    /// One of the `max_in_flight` permits, or 503 at once. The doors take
    /// it first thing, before authentication and the body, so that a
    /// saturated gateway spends as little as it can on what it refuses.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, GwError> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            GwError::new(
                ErrorCode::Unavailable,
                "the gateway is at capacity; retry shortly",
            )
            .with_retry_after(1)
        })
    }

    /// Admits a request (unless its door did), names it and routes it.
    async fn begin(
        &self,
        principal: &pb::Principal,
        model: &str,
        user: Option<String>,
        needed: pb::Capabilities,
        hints: Hints,
    ) -> Result<Begun, GwError> {
        let permit = match hints.admitted {
            Some(permit) => permit,
            None => self.admit()?,
        };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
        let configured = hints.config.is_some() || principal.routing_config.is_some();
        let plan = self
            .deps
            .router
            .route(pb::RouteRequest {
                model: model.to_owned(),
                principal: Some(principal.clone()),
                needed: Some(needed),
                config: hints.config,
                // Targeting reads these only when a config applies.
                user: if configured { user } else { None },
                headers: hints.headers,
            })
            .await?;
        let meta = pb::RoutingMetadata {
            request_id: request_id.clone(),
            requested_model: model.to_owned(),
            requested_provider: plan.requested_provider,
            config: plan.config,
            variant: plan.variant,
            config_version: plan.config_version,
            strategy: plan.strategy,
            ..Default::default()
        };
        Ok(Begun {
            permit,
            deadline,
            request_id,
            targets: plan.targets,
            meta,
            params: plan.params,
            system: plan.system,
            cache_ttl_secs: plan.cache_ttl_secs,
        })
    }

    /// Tries each target in order until one succeeds: the next only after a
    /// retryable error (or, after a context-length error, the next with a
    /// larger window), only while the request's deadline and the retry
    /// budget allow. Each try is reported to the router and written into
    /// `meta`; when all fail, the failure is metered and the last error
    /// returned.
    async fn run_attempts<T, F, Fut>(
        &self,
        targets: Vec<pb::Target>,
        deadline: tokio::time::Instant,
        meta: &mut pb::RoutingMetadata,
        guard: &mut MeterGuard,
        mut call: F,
    ) -> Result<(T, pb::Target, Release), GwError>
    where
        F: FnMut(bool, pb::Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, GwError>>,
    {
        if targets.is_empty() {
            return Err(GwError::new(
                ErrorCode::ModelNotFound,
                format!("no provider can serve `{}`", meta.requested_model),
            )
            .with_param("model"));
        }
        let _request = self.budget.request();
        let attempts = targets.len();
        let mut last_error = None;
        let mut tries = 0usize;
        // After a context-length error: only a larger window can help.
        let mut min_window: Option<u32> = None;
        'targets: for (i, target) in targets.into_iter().enumerate() {
            if let Some(w) = min_window
                && target.context_window <= w
            {
                continue;
            }
            for retry in 0..=target.max_retries {
                // Every try after the first needs room in the retry budget.
                let _retry = if tries > 0 {
                    match self.budget.retry() {
                        Some(g) => Some(g),
                        None => {
                            tracing::info!(provider = %target.provider, "retry budget exhausted; no further try");
                            break 'targets;
                        }
                    }
                } else {
                    None
                };
                guard.set_target(&target);
                // The router counted the plan's first try itself.
                let report = Try::begin(&self.deps.router, &target, tries > 0);
                let attempt_started = Instant::now();
                // The last try that can happen may take the request; earlier
                // ones copy it (only when retries or fallbacks are configured).
                let last = i + 1 == attempts && retry == target.max_retries;
                // One span per attempt (the adapter's `chat {model}` client
                // span is its child); GenAI attributes, never the prompt.
                // Only while spans are exported: the log line of a failed try
                // names its provider itself, and a span's fields are
                // formatted for the log on every request (~2 % of a request's
                // CPU).
                let span = llmgw_kit::otel_span!(
                    "attempt",
                    gen_ai.system = llmgw_kit::telemetry::genai_provider_name(&target.provider_type),
                    gen_ai.provider.name = llmgw_kit::telemetry::genai_provider_name(&target.provider_type),
                    gen_ai.request.model = %target.model,
                    llmgw.provider = %target.provider,
                    llmgw.attempt = tries + 1,
                    error.type = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                let (result, upstream) = tracing::Instrument::instrument(
                    llmgw_kit::upstream::measure(tokio::time::timeout_at(
                        deadline,
                        call(last, target.clone()),
                    )),
                    span.clone(),
                )
                .await;
                let upstream_ms = upstream.map(|d| d.as_secs_f64() * 1000.0);
                let result = result.unwrap_or_else(|_| {
                    Err(GwError::new(
                        ErrorCode::UpstreamTimeout,
                        format!(
                            "provider `{}`: request timed out after {:?}",
                            target.provider, self.request_timeout
                        ),
                    )
                    .with_provider(target.provider.clone()))
                });
                tries += 1;
                let latency_ms = attempt_started.elapsed().as_secs_f64() * 1000.0;
                let provider = provider_name(&target);
                match result {
                    Ok(value) => {
                        metrics::edge().attempt(&provider, None);
                        meta.attempts.push(pb::Attempt {
                            provider: target.provider.clone(),
                            model: target.model.clone(),
                            status: "ok".to_owned(),
                            error_type: None,
                            http_status: Some(200),
                            latency_ms,
                            upstream_ms,
                        });
                        meta.used_provider.clone_from(&target.provider);
                        meta.used_model.clone_from(&target.model);
                        let release = report.succeeded(latency_ms);
                        return Ok((value, target, release));
                    }
                    Err(e) => {
                        let kind = error_type(&e);
                        metrics::edge().attempt(&provider, Some(kind));
                        span.record("error.type", kind);
                        span.record("otel.status_code", "ERROR");
                        tracing::info!(
                            provider = %target.provider,
                            code = e.code().as_str_name(),
                            retryable = e.retryable(),
                            attempt = tries,
                            "attempt failed"
                        );
                        meta.attempts.push(pb::Attempt {
                            provider: target.provider.clone(),
                            model: target.model.clone(),
                            status: "error".to_owned(),
                            error_type: Some(kind.to_owned()),
                            http_status: Some(u32::from(
                                e.upstream_status().unwrap_or_else(|| e.http_status()),
                            )),
                            latency_ms,
                            upstream_ms,
                        });
                        let retryable = e.retryable();
                        let too_long = e.code() == ErrorCode::ContextLengthExceeded;
                        // Only a provider-side failure says the target is unwell.
                        report.failed(latency_ms, retryable);
                        let pause = backoff(&self.backoff, retry, e.retry_after_secs());
                        last_error = Some(e);
                        if too_long {
                            min_window = Some(target.context_window);
                            if target.context_window > 0 && i + 1 < attempts {
                                metrics::edge().fallback(&provider);
                                continue 'targets;
                            }
                            break 'targets;
                        }
                        if !retryable {
                            break 'targets;
                        }
                        let more_here = retry < target.max_retries;
                        // Wait before trying the same target again, only if
                        // the deadline leaves room for the pause and a try.
                        if more_here && tokio::time::Instant::now() + pause < deadline {
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                        if i + 1 < attempts && tokio::time::Instant::now() < deadline {
                            metrics::edge().fallback(&provider);
                            continue 'targets;
                        }
                        break 'targets;
                    }
                }
            }
        }
        let err = last_error.unwrap_or_else(|| GwError::internal("no attempt was made"));
        guard.record("error", err.http_status(), None);
        Err(err)
    }
}

/// The pause before trying a target again: the provider's `retry-after`
/// when it gave one, else exponential backoff from `base` (doubling, at most
/// `max`) with full jitter.
fn backoff(policy: &Backoff, retry: u32, retry_after_secs: Option<u32>) -> Duration {
    if let Some(secs) = retry_after_secs {
        return Duration::from_secs(u64::from(secs));
    }
    let cap = policy.base.saturating_mul(1 << retry.min(16)).min(policy.max);
    // Jitter from the clock's nanoseconds: enough to spread retries apart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    cap.mul_f64(f64::from(nanos % 1000 + 1) / 1000.0)
}

/// An admitted, routed request.
struct Begun {
    permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    request_id: String,
    targets: Vec<pb::Target>,
    meta: pb::RoutingMetadata,
    /// What a routing config's variant sets over the request.
    params: Option<pb::ChatRequest>,
    system: Option<String>,
    /// The routing config opts the request into the response cache.
    cache_ttl_secs: Option<u32>,
}

/// A chat answer from the response cache: no upstream call, metered at
/// zero cost (`cache_hit`), streamed again when the client streams.
fn serve_hit(
    hit: cache::Hit,
    mut meta: pb::RoutingMetadata,
    mut guard: MeterGuard,
    streaming: bool,
    with_usage: bool,
    quota: Option<Quota>,
) -> ChatOutput {
    let mut resp = hit.response;
    if let Some(used) = resp.metadata.take() {
        meta.used_provider = used.used_provider;
        meta.used_model = used.used_model;
    }
    meta.cache = Some("hit".to_owned());
    meta.cache_age_secs = Some(hit.age_secs);
    if let Some(u) = resp.usage.as_mut() {
        u.cost_usd = Some(0.0);
    }
    guard.cache_hit(&meta.used_provider, &meta.used_model);
    guard.record("ok", 200, resp.usage.as_ref());
    metrics::edge().response_cache("hit");
    if streaming {
        let metadata = Arc::new(meta);
        let chunks = cache::replay(resp, &metadata, with_usage);
        ChatOutput::Stream(ChatStream {
            metadata,
            chunks,
            quota,
        })
    } else {
        resp.metadata = Some(meta);
        ChatOutput::Complete(Box::new(resp), quota)
    }
}

/// 403 unless every policy of the key that names endpoints names this one.
pub(crate) fn allow_endpoint(principal: &pb::Principal, endpoint: &str) -> Result<(), GwError> {
    match principal
        .policies
        .iter()
        .find(|p| !p.allowed_endpoints.is_empty() && !p.allowed_endpoints.iter().any(|e| e == endpoint))
    {
        Some(p) => Err(GwError::new(
            ErrorCode::PermissionDenied,
            format!(
                "the `{endpoint}` endpoint is not allowed by the {} policy",
                p.scope
            ),
        )),
        None => Ok(()),
    }
}

/// Applies the policies' max tokens per request: a request asking for more
/// is refused (403 naming `max_tokens`); one asking for none gets the limit.
fn cap_max_tokens(principal: &pb::Principal, req: &mut pb::ChatRequest) -> Result<(), GwError> {
    let Some((limit, scope)) = policy_max_tokens(principal) else {
        return Ok(());
    };
    let (asked, param) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(n), _) => (Some(n), "max_completion_tokens"),
        (None, Some(n)) => (Some(n), "max_tokens"),
        (None, None) => (None, "max_tokens"),
    };
    match asked {
        Some(n) if n > limit => Err(GwError::new(
            ErrorCode::PermissionDenied,
            format!("{param} {n} is above the {scope} policy's limit of {limit} tokens per request"),
        )
        .with_param(param)),
        Some(_) => Ok(()),
        None => {
            req.max_tokens = Some(limit);
            Ok(())
        }
    }
}

/// The tightest max tokens per request of the key's policies, and its scope.
fn policy_max_tokens(principal: &pb::Principal) -> Option<(u32, &str)> {
    principal
        .policies
        .iter()
        .filter_map(|p| p.max_tokens.map(|m| (m, p.scope.as_str())))
        .min_by_key(|(m, _)| *m)
}

/// Puts a variant's parameters over the request's, and its system prompt
/// first among the messages.
fn apply_variant(req: &mut pb::ChatRequest, params: Option<pb::ChatRequest>, system: Option<String>) {
    if let Some(p) = params {
        macro_rules! over {
            ($($field:ident),*) => { $( if p.$field.is_some() { req.$field = p.$field; } )* };
        }
        over!(
            temperature,
            top_p,
            max_tokens,
            max_completion_tokens,
            presence_penalty,
            frequency_penalty,
            seed,
            reasoning_effort
        );
    }
    if let Some(text) = system {
        req.messages.insert(
            0,
            pb::Message {
                role: pb::Role::System as i32,
                content: Some(pb::Content {
                    value: Some(pb::content::Value::Text(text)),
                }),
                ..Default::default()
            },
        );
    }
}

enum Outcome {
    Complete(Box<pb::ChatResponse>),
    Stream(ChunkStream),
}

/// Counts a refusal of the gateway's own (not a provider's) by its reason.
fn count_rejection(e: &GwError) {
    let why = match e.code() {
        ErrorCode::Unauthenticated => Rejection::Auth,
        ErrorCode::PermissionDenied => Rejection::Policy,
        ErrorCode::RateLimited => Rejection::RateLimit,
        ErrorCode::BudgetExceeded => Rejection::Budget,
        _ => return,
    };
    metrics::edge().rejected(why);
}

/// A target's provider as a metric label: its config name, or `byok` for
/// an org's own credential (whose name is the org's text).
fn provider_name(target: &pb::Target) -> metrics::Name {
    if target.byok {
        metrics::name("byok")
    } else {
        metrics::name(&target.provider)
    }
}

/// The gateway's own time on a request that began at `started`: all of it
/// but the tries' time waiting on providers (`meta.attempts`, as the
/// adapter measured it; a try it said nothing of counts whole); recorded in
/// `llmgw_gateway_overhead_seconds{kind}` and returned, for the
/// `x-llmgw-overhead-ms` header.
pub fn overhead(kind: &'static str, started: Instant, meta: &pb::RoutingMetadata) -> Duration {
    let upstream_ms: f64 = meta
        .attempts
        .iter()
        .map(|a| a.upstream_ms.unwrap_or(a.latency_ms))
        .sum();
    let total = started.elapsed();
    let own = total.saturating_sub(Duration::from_secs_f64(upstream_ms.max(0.0) / 1000.0));
    metrics::edge().overhead(kind, own);
    own
}

/// The header carrying [`overhead`], in milliseconds.
pub const OVERHEAD_HEADER: &str = "x-llmgw-overhead-ms";

/// [`OVERHEAD_HEADER`]'s value: milliseconds with three decimals, rounded
/// to the microsecond (integer formatting: a float's `{:.3}` costs more than
/// the rest of the header work together).
pub fn overhead_ms(own: Duration) -> String {
    let us = (own.as_nanos() + 500) / 1000;
    format!("{}.{:03}", us / 1000, us % 1000)
}

pub fn cost(price: &pb::Price, usage: &pb::Usage) -> f64 {
    cost_usd(
        price,
        Tokens {
            input: usage.prompt_tokens,
            output: usage.completion_tokens,
            cached: usage.cached_tokens.unwrap_or(0),
        },
    )
}

fn needed_capabilities(req: &pb::ChatRequest) -> pb::Capabilities {
    let vision = req.messages.iter().any(|m| {
        matches!(&m.content, Some(pb::Content { value: Some(pb::content::Value::Parts(p)) })
            if p.parts.iter().any(|p| matches!(p.part, Some(pb::content_part::Part::ImageUrl(_)))))
    });
    let json_schema = matches!(
        req.response_format,
        Some(pb::ResponseFormat {
            format: Some(pb::response_format::Format::JsonSchema(_))
        })
    );
    pb::Capabilities {
        embeddings: false,
        tools: !req.tools.is_empty(),
        vision,
        json_schema,
        streaming: req.stream,
    }
}

/// Rough token count of text, for when a provider reports none: four
/// characters a token, at least one for non-empty text.
pub fn estimate_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The prompt's token estimate as rate-limit admission makes it, plus the
/// tools' definitions: what `/v1/messages/count_tokens` answers.
pub fn prompt_estimate(req: &pb::ChatRequest) -> u32 {
    let tools: usize = req
        .tools
        .iter()
        .filter_map(|t| t.function.as_ref())
        .map(|f| {
            f.name.len()
                + f.description.as_ref().map_or(0, String::len)
                + f.parameters_json.as_ref().map_or(0, String::len)
        })
        .sum();
    estimate_tokens(prompt_chars(req) + tools)
}

/// How a prompt is sized: what an image and a message's framing count, and
/// whether other parts (audio, files) and participant names count.
struct Measure {
    image: usize,
    framing: usize,
    everything: bool,
}

/// The prompt's messages in bytes (or byte-like units), as `m` counts them.
fn prompt_size(req: &pb::ChatRequest, m: &Measure) -> usize {
    req.messages
        .iter()
        .map(|msg| {
            let content = match &msg.content {
                Some(pb::Content {
                    value: Some(pb::content::Value::Text(t)),
                }) => t.len(),
                Some(pb::Content {
                    value: Some(pb::content::Value::Parts(p)),
                }) => p
                    .parts
                    .iter()
                    .map(|p| match &p.part {
                        Some(pb::content_part::Part::Text(t)) => t.len(),
                        Some(pb::content_part::Part::ImageUrl(_)) => m.image,
                        Some(other) if m.everything => other.encoded_len(),
                        _ => 0,
                    })
                    .sum(),
                _ => 0,
            };
            let calls: usize = msg
                .tool_calls
                .iter()
                .map(|t| {
                    t.function
                        .as_ref()
                        .map_or(0, |f| f.name.len() + f.arguments.len())
                })
                .sum();
            let name = if m.everything {
                msg.name.as_ref().map_or(0, String::len)
            } else {
                0
            };
            content + calls + name + m.framing
        })
        .sum()
}

/// The most tokens a prompt can be, for budget reservations: a token is at
/// least one byte of text, plus each message's framing, each image at the
/// most a high-detail image costs, and the tools' schemas.
fn prompt_upper_bound(req: &pb::ChatRequest) -> u32 {
    const FRAMING: usize = 8;
    let messages = prompt_size(
        req,
        &Measure {
            image: 1600,
            framing: FRAMING,
            everything: true,
        },
    );
    let tools: usize = req.tools.iter().map(prost::Message::encoded_len).sum();
    u32::try_from(messages + tools + FRAMING).unwrap_or(u32::MAX)
}

/// Characters of the prompt for the usual estimate (four a token): a
/// low-detail image is 85 tokens at OpenAI, a message's framing about four.
fn prompt_chars(req: &pb::ChatRequest) -> usize {
    prompt_size(
        req,
        &Measure {
            image: 340,
            framing: 16,
            everything: false,
        },
    )
}

/// Records a request's usage exactly once: when it ends, or, if the client
/// goes away first, when this guard is dropped (tokens counted from what was
/// streamed, marked estimated).
pub struct MeterGuard {
    sender: MeterSender,
    event: Option<pb::UsageEvent>,
    started: Instant,
    pub prompt_estimate: u32,
    streamed_chars: usize,
    /// Usage the provider reported, once it has.
    pub usage: Option<pb::Usage>,
    /// The rate-limit token estimate to correct with the real count.
    debt: Option<TokenDebt>,
    /// The budget reservation to settle with the real cost.
    settle: Option<Settle>,
    /// `chat` or `embeddings` (`gen_ai_operation_name`).
    operation: &'static str,
    /// The `gen_ai_*` labels of the target tried last.
    labels: Option<GenAiLabels>,
}

/// Output tokens a budget reservation assumes when the request sets no limit.
const DEFAULT_MAX_OUTPUT: u32 = 4096;
/// Tries at settling a reservation before the auth service's sweep takes over.
const SETTLE_TRIES: u32 = 5;

/// A budget reservation to settle with the real cost.
struct Settle {
    auth: llmgw_kit::services::Auth,
    request_id: String,
    /// The request's trace, which settling joins (empty unless exporting).
    traceparent: String,
}

impl Settle {
    /// Settles off the request's path, retrying while auth is unreachable.
    fn spend(self, spent_usd: f64) {
        let span = llmgw_kit::otel_span!("settle", llmgw.request_id = %self.request_id);
        llmgw_kit::telemetry::continue_from_traceparent(&span, &self.traceparent);
        let settle = async move {
            for attempt in 1..=SETTLE_TRIES {
                let req = pb::SettleRequest {
                    request_id: self.request_id.clone(),
                    spent_usd,
                };
                match self.auth.settle(req).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(request_id = %self.request_id, attempt, error = %e, "settling a budget reservation failed");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(settle, span));
    }
}

/// Tokens counted against rate limits at admission, from an estimate.
struct TokenDebt {
    limiter: Arc<Limiter>,
    scopes: Vec<limits::Scope>,
    estimate: u32,
}

impl MeterGuard {
    fn new(
        sender: MeterSender,
        principal: &pb::Principal,
        request_id: &str,
        req: &pb::ChatRequest,
        streamed: bool,
    ) -> Self {
        Self::start(
            sender,
            principal,
            request_id,
            &req.model,
            streamed,
            estimate_tokens(prompt_chars(req)),
        )
    }

    fn start(
        sender: MeterSender,
        principal: &pb::Principal,
        request_id: &str,
        model: &str,
        streamed: bool,
        prompt_estimate: u32,
    ) -> Self {
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            sender,
            event: Some(pb::UsageEvent {
                request_id: request_id.to_owned(),
                org_id: principal.org_id.clone(),
                project_id: principal.project_id.clone(),
                key_id: principal.key_id.clone(),
                model: model.to_owned(),
                streamed,
                started_at_ms,
                traceparent: llmgw_kit::telemetry::current_traceparent(),
                ..Default::default()
            }),
            started: Instant::now(),
            prompt_estimate,
            streamed_chars: 0,
            usage: None,
            debt: None,
            settle: None,
            operation: "chat",
            labels: None,
        }
    }

    fn set_target(&mut self, target: &pb::Target) {
        self.labels = Some(GenAiLabels {
            gen_ai_operation_name: self.operation,
            gen_ai_provider_name: metrics::name(&target.provider_type),
            gen_ai_request_model: metrics::name(&target.model),
            llmgw_provider: provider_name(target),
        });
        if let Some(ev) = self.event.as_mut() {
            ev.provider.clone_from(&target.provider);
            ev.provider_model.clone_from(&target.model);
            ev.price = target.price;
            ev.byok = target.byok;
        }
    }

    /// Served from the response cache: what answered it, at no cost.
    fn cache_hit(&mut self, provider: &str, model: &str) {
        if let Some(ev) = self.event.as_mut() {
            ev.cache_hit = true;
            provider.clone_into(&mut ev.provider);
            model.clone_into(&mut ev.provider_model);
            ev.price = None;
        }
    }

    /// A request refused before any attempt: nothing to meter.
    fn forget(&mut self) {
        self.event = None;
    }

    /// A stream's first chunk: time to first token.
    pub fn first_chunk(&self) {
        if let Some(labels) = &self.labels {
            metrics::gen_ai().first_token(labels, self.started);
        }
    }

    /// Counts streamed output, for the estimate a cancelled stream needs.
    pub fn count(&mut self, chunk: &pb::ChatChunk) {
        for c in &chunk.choices {
            if let Some(d) = &c.delta {
                self.streamed_chars += d.content.as_ref().map_or(0, String::len)
                    + d.reasoning.as_ref().map_or(0, String::len)
                    + d.tool_calls
                        .iter()
                        .map(|t| t.arguments.as_ref().map_or(0, String::len))
                        .sum::<usize>();
            }
        }
    }

    fn estimated_usage(&self, resp: &pb::ChatResponse) -> pb::Usage {
        let chars: usize = resp
            .choices
            .iter()
            .filter_map(|c| c.message.as_ref())
            .map(|m| {
                let text = match &m.content {
                    Some(pb::Content {
                        value: Some(pb::content::Value::Text(t)),
                    }) => t.len(),
                    _ => 0,
                };
                text + m
                    .tool_calls
                    .iter()
                    .map(|t| t.function.as_ref().map_or(0, |f| f.arguments.len()))
                    .sum::<usize>()
            })
            .sum();
        let completion = estimate_tokens(chars);
        pb::Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: completion,
            total_tokens: self.prompt_estimate + completion,
            estimated: true,
            ..Default::default()
        }
    }

    /// Sends the event (once). Without `usage`, tokens are estimated from the
    /// prompt and from what was streamed.
    pub fn record(&mut self, status: &str, http_status: u16, usage: Option<&pb::Usage>) {
        let Some(mut ev) = self.event.take() else { return };
        let usage = usage.or(self.usage.as_ref());
        match usage {
            Some(u) => {
                ev.input_tokens = u.prompt_tokens;
                ev.output_tokens = u.completion_tokens;
                ev.cached_tokens = u.cached_tokens.unwrap_or(0);
                ev.reasoning_tokens = u.reasoning_tokens.unwrap_or(0);
                ev.estimated = u.estimated;
            }
            None if status == "error" && self.streamed_chars == 0 => {}
            None => {
                ev.input_tokens = self.prompt_estimate;
                ev.output_tokens = estimate_tokens(self.streamed_chars);
                ev.estimated = true;
            }
        }
        if let Some(debt) = self.debt.take() {
            let real = i64::from(ev.input_tokens) + i64::from(ev.output_tokens);
            debt.limiter.settle(debt.scopes, real - i64::from(debt.estimate));
        }
        let spent = cost_usd(
            &ev.price.unwrap_or_default(),
            Tokens {
                input: ev.input_tokens,
                output: ev.output_tokens,
                cached: ev.cached_tokens,
            },
        );
        if let Some(settle) = self.settle.take() {
            settle.spend(spent);
        }
        let elapsed = self.started.elapsed();
        if let Some(labels) = &self.labels {
            let known = ev.input_tokens > 0 || ev.output_tokens > 0;
            let error_type = match status {
                "ok" => "",
                "cancelled" => "cancelled",
                _ => "error",
            };
            // BYOK requests are billed to the org's own account.
            let cost = if ev.byok { 0.0 } else { spent };
            metrics::gen_ai().record(
                labels,
                known.then_some((ev.input_tokens, ev.output_tokens)),
                elapsed,
                error_type,
                cost,
            );
        }
        ev.status = status.to_owned();
        ev.http_status = u32::from(http_status);
        ev.latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.sender.send(ev);
    }
}

impl Drop for MeterGuard {
    fn drop(&mut self) {
        if self.event.is_some() {
            // 499: the client closed the request (nginx's convention).
            self.record("cancelled", 499, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_header_is_milliseconds_to_the_microsecond() {
        assert_eq!(overhead_ms(Duration::ZERO), "0.000");
        assert_eq!(overhead_ms(Duration::from_micros(555)), "0.555");
        // Rounded to the nearest microsecond, as `{:.3}` would.
        assert_eq!(overhead_ms(Duration::from_nanos(1_234_500)), "1.235");
        assert_eq!(overhead_ms(Duration::from_nanos(1_234_499)), "1.234");
        assert_eq!(overhead_ms(Duration::from_secs(12)), "12000.000");
    }

    #[test]
    fn retry_budget_is_a_share_of_requests_in_flight_with_a_floor() {
        let budget = Budget::new(&RetryBudget {
            ratio: 0.2,
            min_concurrency: 2,
        });
        let requests: Vec<_> = (0..20).map(|_| budget.request()).collect();
        // 20 in flight: 20% is 4 retries at once.
        let retries: Vec<_> = (0..4).map(|_| budget.retry().expect("within budget")).collect();
        assert!(budget.retry().is_none(), "a fifth is refused");
        drop(retries);
        assert!(budget.retry().is_some(), "room again once they end");
        drop(requests);
        // None in flight: the floor.
        let floor: Vec<_> = (0..2).map(|_| budget.retry().expect("floor")).collect();
        assert!(budget.retry().is_none());
        drop(floor);
        assert_eq!(
            budget.retries.load(Relaxed),
            0,
            "refused tries leave no count behind"
        );
    }

    #[test]
    fn a_variant_sets_params_and_puts_its_system_prompt_first() {
        let mut req = pb::ChatRequest {
            temperature: Some(1.0),
            top_p: Some(0.5),
            messages: vec![pb::Message {
                role: pb::Role::User as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let params = pb::ChatRequest {
            temperature: Some(0.2),
            seed: Some(3),
            ..Default::default()
        };
        apply_variant(&mut req, Some(params), Some("be brief".into()));
        assert_eq!(
            (req.temperature, req.top_p, req.seed),
            (Some(0.2), Some(0.5), Some(3))
        );
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.messages[0].role, pb::Role::System as i32);
    }
}
