//! The response cache: exact match on one org's canonical chat request.
//!
//! A request is cached only when something opts it in: its `cache-control`
//! header (`max-age=N`), a policy of its key, project or org
//! (`cache: {ttl}`), or the routing config that routed it (`cache: {ttl}`).
//! `cache-control: no-cache` skips the lookup (a fresh upstream call) and
//! stores the answer again; `no-store` neither reads nor writes.
//!
//! The key is SHA-256 over the org id, the routing config and variant that
//! chose the answer, and the request as the provider would get it (after
//! the variant's parameters apply) with what cannot change the answer
//! cleared: `stream`, `stream_options`, `user` and `metadata`. Everything
//! else — model (as the client named it), messages, tools, tool_choice,
//! response_format, every sampling parameter, stop, n, seed, logprobs,
//! reasoning_effort, `extra` passthrough — is part of it. No org can ever
//! read another's entry: the org id is hashed in.
//!
//! Entries are whole chat completions (a streamed answer is assembled once
//! it ended cleanly; a broken or abandoned stream is never stored), kept in
//! process in a byte-bounded `quick_cache` (S3-FIFO eviction), or in Redis
//! with `SET … EX` when `redis:` is configured. A streaming request replays
//! a hit as a stream.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use llmgw_kit::config::CacheConfig;
use llmgw_kit::secret::Secret;
use llmgw_kit::services::ChunkStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

/// Longest a cache read or write may take (Redis) before it counts as a miss.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// What a request's `cache-control` header asks of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directive {
    /// `max-age=N`: opts in; answers at most N seconds old are served, and
    /// the answer is stored for N seconds (capped by `cache.max_ttl`).
    pub max_age: Option<u32>,
    /// `no-cache`: no lookup; a fresh answer replaces the entry.
    pub no_cache: bool,
    /// `no-store`: neither read nor write.
    pub no_store: bool,
}

impl Directive {
    /// Reads `cache-control` (directives are case-insensitive; unknown ones
    /// are ignored, as HTTP says).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            d.read(value);
        }
        d
    }

    /// One `cache-control` value (as gRPC metadata carries it).
    pub fn from_value(value: &str) -> Self {
        let mut d = Self::default();
        d.read(value);
        d
    }

    fn read(&mut self, value: &str) {
        for part in value.split(',') {
            let part = part.trim();
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part, None),
            };
            if name.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                self.max_age = Some(u32::try_from(secs).unwrap_or(u32::MAX));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What the cache does for one request.
pub struct Lookup {
    key: [u8; 32],
    /// Whether a stored answer may be served, and how old it may be.
    read: Option<Duration>,
    /// How long the answer is stored; `None`: not stored.
    write: Option<Duration>,
}

/// A stored answer, found.
pub struct Hit {
    pub response: pb::ChatResponse,
    pub age_secs: u32,
}

/// An answer as it is stored: when, and the encoded completion.
#[derive(Clone)]
struct Entry {
    stored_at_ms: u64,
    expires_at_ms: u64,
    body: Bytes,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<[u8; 32], Entry> for Weigh {
    fn weight(&self, _key: &[u8; 32], e: &Entry) -> u64 {
        e.body.len() as u64 + 64
    }
}

type Local = quick_cache::sync::Cache<[u8; 32], Entry, Weigh>;

pub struct Cache {
    local: Option<Local>,
    redis: Option<RedisCache>,
    default_ttl: Duration,
    max_ttl: Duration,
    max_entry_bytes: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Cache {
    /// In process (bounded by `max_bytes`), or in Redis when `redis` is set.
    pub fn new(config: &CacheConfig, redis: Option<&Secret>) -> Result<Self, GwError> {
        let redis = redis.map(RedisCache::new).transpose()?;
        let local = (redis.is_none() && config.max_bytes > 0).then(|| {
            // quick_cache sizes its shards from an item estimate: ~4 KiB each.
            let items = usize::try_from(config.max_bytes / 4096)
                .unwrap_or(usize::MAX)
                .max(16);
            Local::with_weighter(items, config.max_bytes, Weigh)
        });
        Ok(Self {
            local,
            redis,
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
            max_entry_bytes: usize::try_from(config.max_entry_bytes).unwrap_or(usize::MAX),
        })
    }

    fn enabled(&self) -> bool {
        self.local.is_some() || self.redis.is_some()
    }

    /// What to do for `req` of `principal`, routed by `meta` (its config
    /// and variant) with the routing config's TTL `config_ttl_secs`; `None`:
    /// the cache is not involved (nothing opted in, nothing asked).
    pub fn plan(
        &self,
        principal: &pb::Principal,
        meta: &pb::RoutingMetadata,
        config_ttl_secs: Option<u32>,
        directive: Directive,
        req: &pb::ChatRequest,
    ) -> Option<Plan> {
        if directive.no_store {
            return Some(Plan::Bypass);
        }
        // Opt-ins, each a TTL in seconds (0: the default).
        let policy_ttl = principal
            .policies
            .iter()
            .filter_map(|p| p.cache_ttl_secs)
            .min_by_key(|t| if *t == 0 { u32::MAX } else { *t });
        let secs = |s: u32| {
            if s == 0 {
                self.default_ttl
            } else {
                Duration::from_secs(u64::from(s))
            }
        };
        // `max-age=0`: nothing stored is fresh enough; like `no-cache`.
        let (asked, no_cache) = match directive.max_age {
            Some(0) => (None, true),
            age => (age, directive.no_cache),
        };
        let ttl = match (asked, policy_ttl.or(config_ttl_secs)) {
            (Some(age), _) => Duration::from_secs(u64::from(age)),
            (None, Some(s)) => secs(s),
            (None, None) if directive.is_empty() => return None,
            // `no-cache` alone opts nothing in.
            (None, None) => return Some(Plan::Bypass),
        }
        .min(self.max_ttl);
        if !self.enabled() || ttl.is_zero() {
            return Some(Plan::Bypass);
        }
        Some(Plan::Use(Lookup {
            key: key(principal, meta, req),
            read: (!no_cache).then_some(ttl),
            write: Some(ttl),
        }))
    }

    /// The stored answer for `lookup`, if one is fresh enough.
    pub async fn get(&self, lookup: &Lookup) -> Option<Hit> {
        let max_age = lookup.read?;
        let entry = if let Some(local) = &self.local {
            local.get(&lookup.key)
        } else if let Some(redis) = &self.redis {
            redis.get(&lookup.key).await
        } else {
            None
        }?;
        let now = now_ms();
        let age_ms = now.saturating_sub(entry.stored_at_ms);
        if now >= entry.expires_at_ms {
            // Expired entries leave at once rather than when evicted.
            if let Some(local) = &self.local {
                local.remove(&lookup.key);
            }
            return None;
        }
        if age_ms > max_age.as_millis() as u64 {
            return None;
        }
        let response = match pb::ChatResponse::decode(entry.body.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable cache entry");
                return None;
            }
        };
        Some(Hit {
            response,
            age_secs: u32::try_from(age_ms / 1000).unwrap_or(u32::MAX),
        })
    }

    /// Stores `resp` for `lookup` (if it writes), off the request's path
    /// when it goes to Redis. Usage is kept (tokens), its cost is not.
    pub fn put(self: &Arc<Self>, lookup: &Lookup, resp: &pb::ChatResponse) {
        let Some(ttl) = lookup.write else { return };
        let mut stored = resp.clone();
        if let Some(u) = stored.usage.as_mut() {
            u.cost_usd = None;
        }
        stored.metadata = resp.metadata.as_ref().map(|m| pb::RoutingMetadata {
            used_provider: m.used_provider.clone(),
            used_model: m.used_model.clone(),
            ..Default::default()
        });
        let body = stored.encode_to_vec();
        if body.len() > self.max_entry_bytes {
            tracing::debug!(bytes = body.len(), "answer too large to cache");
            return;
        }
        let now = now_ms();
        let entry = Entry {
            stored_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
            body: Bytes::from(body),
        };
        if let Some(local) = &self.local {
            local.insert(lookup.key, entry);
        } else if self.redis.is_some() {
            let this = self.clone();
            let key = lookup.key;
            tokio::spawn(async move {
                if let Some(redis) = &this.redis {
                    redis.set(&key, entry, ttl).await;
                }
            });
        }
    }
}

/// Whether and how a request uses the cache.
pub enum Plan {
    /// Asked for, but not used (`no-store`, or the cache is off).
    Bypass,
    Use(Lookup),
}

/// SHA-256 over the org, the config and variant, and the canonical request.
fn key(principal: &pb::Principal, meta: &pb::RoutingMetadata, req: &pb::ChatRequest) -> [u8; 32] {
    // Every field named (no `..`), so a new request field must be placed
    // on one side or the other here. Cloned once, for opted-in requests only.
    let canonical = pb::ChatRequest {
        model: req.model.clone(),
        messages: req.messages.clone(),
        tools: req.tools.clone(),
        tool_choice: req.tool_choice.clone(),
        response_format: req.response_format.clone(),
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        max_completion_tokens: req.max_completion_tokens,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        stop: req.stop.clone(),
        n: req.n,
        seed: req.seed,
        reasoning_effort: req.reasoning_effort.clone(),
        logprobs: req.logprobs,
        top_logprobs: req.top_logprobs,
        logit_bias_json: req.logit_bias_json.clone(),
        parallel_tool_calls: req.parallel_tool_calls,
        service_tier: req.service_tier.clone(),
        store: req.store,
        extra_json: req.extra_json.clone(),
        // What does not change the answer.
        user: None,
        stream: false,
        stream_options: None,
        metadata: Default::default(),
    };
    let mut h = Sha256::new();
    for part in [
        "llmgw-cache-v1",
        principal.org_id.as_str(),
        meta.config.as_deref().unwrap_or(""),
        meta.variant.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(canonical.encode_to_vec());
    h.finalize().into()
}

// ---- streams ------------------------------------------------------------------

/// A stored completion as a stream: per choice, one chunk with the role and
/// the whole content (text, reasoning, tool calls), then one finishing chunk
/// carrying `meta`; then the usage chunk when the client asked for it.
pub fn replay(resp: pb::ChatResponse, meta: &pb::RoutingMetadata, with_usage: bool) -> ChunkStream {
    let chunk = |choices: Vec<pb::ChunkChoice>| pb::ChatChunk {
        id: resp.id.clone(),
        created: resp.created,
        model: resp.model.clone(),
        choices,
        system_fingerprint: resp.system_fingerprint.clone(),
        service_tier: resp.service_tier.clone(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(resp.choices.len() * 2 + 1);
    for c in &resp.choices {
        let m = c.message.clone().unwrap_or_default();
        let content = match m.content {
            Some(pb::Content {
                value: Some(pb::content::Value::Text(t)),
            }) => Some(t),
            _ => None,
        };
        let tool_calls = m
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, t)| pb::ToolCallDelta {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                id: Some(t.id.clone()),
                r#type: Some(if t.r#type.is_empty() {
                    "function".to_owned()
                } else {
                    t.r#type.clone()
                }),
                name: t.function.as_ref().map(|f| f.name.clone()),
                arguments: t.function.as_ref().map(|f| f.arguments.clone()),
            })
            .collect();
        out.push(chunk(vec![pb::ChunkChoice {
            index: c.index,
            delta: Some(pb::Delta {
                role: Some(pb::Role::Assistant as i32),
                content,
                tool_calls,
                refusal: m.refusal,
                reasoning: m.reasoning,
                thinking_blocks: m.thinking_blocks,
            }),
            logprobs_json: c.logprobs_json.clone(),
            ..Default::default()
        }]));
        let mut finish = chunk(vec![pb::ChunkChoice {
            index: c.index,
            delta: Some(pb::Delta::default()),
            finish_reason: c.finish_reason,
            stop_sequence: c.stop_sequence.clone(),
            ..Default::default()
        }]);
        finish.metadata = Some(meta.clone());
        out.push(finish);
    }
    if with_usage && let Some(usage) = resp.usage {
        let mut last = chunk(Vec::new());
        last.usage = Some(usage);
        last.metadata = Some(meta.clone());
        out.push(last);
    }
    Box::pin(futures_util::stream::iter(out.into_iter().map(Ok)))
}

/// Assembles a stream's chunks into the completion they add up to.
#[derive(Default)]
struct Assembly {
    resp: pb::ChatResponse,
    /// Thinking blocks cannot be stitched back from deltas: not stored.
    unstorable: bool,
}

impl Assembly {
    fn add(&mut self, chunk: &pb::ChatChunk) {
        let r = &mut self.resp;
        if r.id.is_empty() {
            r.id.clone_from(&chunk.id);
            r.created = chunk.created;
            r.model.clone_from(&chunk.model);
        }
        if chunk.system_fingerprint.is_some() {
            r.system_fingerprint.clone_from(&chunk.system_fingerprint);
        }
        if chunk.service_tier.is_some() {
            r.service_tier.clone_from(&chunk.service_tier);
        }
        if let Some(u) = chunk.usage {
            r.usage = Some(u);
        }
        for c in &chunk.choices {
            let at = match r.choices.iter().position(|x| x.index == c.index) {
                Some(at) => at,
                None => {
                    r.choices.push(pb::Choice {
                        index: c.index,
                        message: Some(pb::Message {
                            role: pb::Role::Assistant as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    r.choices.len() - 1
                }
            };
            let choice = &mut r.choices[at];
            if c.finish_reason != pb::FinishReason::Unspecified as i32 {
                choice.finish_reason = c.finish_reason;
            }
            if c.stop_sequence.is_some() {
                choice.stop_sequence.clone_from(&c.stop_sequence);
            }
            if c.logprobs_json.is_some() {
                // Logprobs arrive per chunk; joining them is not exact.
                self.unstorable = true;
            }
            let Some(d) = &c.delta else { continue };
            let m = choice.message.get_or_insert_default();
            if !d.thinking_blocks.is_empty() {
                self.unstorable = true;
            }
            if let Some(text) = &d.content {
                match &mut m.content {
                    Some(pb::Content {
                        value: Some(pb::content::Value::Text(t)),
                    }) => t.push_str(text),
                    _ => {
                        m.content = Some(pb::Content {
                            value: Some(pb::content::Value::Text(text.clone())),
                        });
                    }
                }
            }
            if let Some(text) = &d.reasoning {
                m.reasoning.get_or_insert_default().push_str(text);
            }
            if let Some(text) = &d.refusal {
                m.refusal.get_or_insert_default().push_str(text);
            }
            for t in &d.tool_calls {
                let i = t.index as usize;
                if i > m.tool_calls.len() || i > 1024 {
                    self.unstorable = true;
                    continue;
                }
                if i == m.tool_calls.len() {
                    m.tool_calls.push(pb::ToolCall {
                        r#type: "function".to_owned(),
                        function: Some(pb::FunctionCall::default()),
                        ..Default::default()
                    });
                }
                let call = &mut m.tool_calls[i];
                if let Some(id) = &t.id {
                    call.id.clone_from(id);
                }
                if let Some(ty) = &t.r#type {
                    call.r#type.clone_from(ty);
                }
                let f = call.function.get_or_insert_default();
                if let Some(name) = &t.name {
                    f.name.push_str(name);
                }
                if let Some(args) = &t.arguments {
                    f.arguments.push_str(args);
                }
            }
        }
    }
}

/// Passes a provider's stream through unchanged, assembling it; once it
/// has ended cleanly the whole answer is stored. A stream that fails or is
/// dropped early stores nothing.
pub fn store_when_done(
    inner: ChunkStream,
    cache: Arc<Cache>,
    lookup: Lookup,
    used: pb::RoutingMetadata,
) -> ChunkStream {
    use futures_util::StreamExt as _;
    struct St {
        inner: ChunkStream,
        cache: Arc<Cache>,
        lookup: Lookup,
        used: pb::RoutingMetadata,
        assembly: Assembly,
        failed: bool,
        bytes: usize,
    }
    let st = St {
        inner,
        cache,
        lookup,
        used,
        assembly: Assembly::default(),
        failed: false,
        bytes: 0,
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        match st.inner.next().await {
            Some(Ok(chunk)) => {
                if !st.failed {
                    st.bytes += chunk.encoded_len();
                    // Past the entry limit the answer will not be stored:
                    // stop assembling it.
                    if st.bytes > st.cache.max_entry_bytes {
                        st.failed = true;
                    } else {
                        st.assembly.add(&chunk);
                    }
                }
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.failed = true;
                Some((Err(e), st))
            }
            None => {
                let complete = st
                    .assembly
                    .resp
                    .choices
                    .iter()
                    .all(|c| c.finish_reason != pb::FinishReason::Unspecified as i32);
                if !st.failed && !st.assembly.unstorable && complete && !st.assembly.resp.choices.is_empty() {
                    let mut resp = std::mem::take(&mut st.assembly.resp);
                    resp.metadata = Some(std::mem::take(&mut st.used));
                    st.cache.put(&st.lookup, &resp);
                }
                None
            }
        }
    }))
}

// ---- redis --------------------------------------------------------------------

struct RedisCache {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

fn redis_key(key: &[u8; 32]) -> String {
    let mut s = String::with_capacity(13 + 64);
    s.push_str("llmgw:cache:");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl RedisCache {
    fn new(url: &Secret) -> Result<Self, GwError> {
        let client = redis::Client::open(url.expose())
            .map_err(|_| GwError::new(ErrorCode::Internal, "`redis.url` is not a valid Redis URL"))?;
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    async fn conn(&self) -> Option<redis::aio::ConnectionManager> {
        let init = self
            .conn
            .get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone()));
        match tokio::time::timeout(REDIS_TIMEOUT, init).await {
            Ok(Ok(c)) => Some(c.clone()),
            Ok(Err(e)) => {
                tracing::warn!(kind = ?e.kind(), "response cache: redis unavailable");
                None
            }
            Err(_) => None,
        }
    }

    /// The entry, or `None` (absent, unreadable, or Redis unavailable: a miss).
    async fn get(&self, key: &[u8; 32]) -> Option<Entry> {
        let mut conn = self.conn().await?;
        let cmd = redis::cmd("GET").arg(redis_key(key)).clone();
        let got = tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<Option<Vec<u8>>>(&mut conn)).await;
        let value = match got {
            Ok(Ok(v)) => v?,
            Ok(Err(e)) => {
                tracing::warn!(kind = ?e.kind(), "response cache: redis read failed");
                return None;
            }
            Err(_) => return None,
        };
        // 8 bytes stored-at, 8 bytes expires-at (ms, little-endian), the body.
        if value.len() < 16 {
            return None;
        }
        let (head, body) = value.split_at(16);
        let stored_at_ms = u64::from_le_bytes(head[..8].try_into().ok()?);
        let expires_at_ms = u64::from_le_bytes(head[8..].try_into().ok()?);
        Some(Entry {
            stored_at_ms,
            expires_at_ms,
            body: Bytes::copy_from_slice(body),
        })
    }

    async fn set(&self, key: &[u8; 32], entry: Entry, ttl: Duration) {
        let Some(mut conn) = self.conn().await else { return };
        let mut value = Vec::with_capacity(16 + entry.body.len());
        value.extend_from_slice(&entry.stored_at_ms.to_le_bytes());
        value.extend_from_slice(&entry.expires_at_ms.to_le_bytes());
        value.extend_from_slice(&entry.body);
        let cmd = redis::cmd("SET")
            .arg(redis_key(key))
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .clone();
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(kind = ?e.kind(), "response cache: redis write failed"),
            Err(_) => tracing::warn!("response cache: redis write timed out"),
        }
    }
}

#[cfg(test)]
mod tests;
