//! Rate limits: requests and tokens per minute for each scope (org,
//! project, key) whose policy sets them, over a sliding window (this minute's
//! count plus last minute's, weighted by how much of it is still inside the
//! window). Admission checks every scope and counts the request in all of
//! them at once — or in none — so concurrent requests never overshoot.
//! Tokens are counted at admission from the prompt estimate and corrected
//! with the real count when the request ends.
//!
//! One node keeps the windows in process; with `redis:` configured they live
//! in Redis and one Lua script does the check-and-count atomically, so edge
//! replicas share one limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use llmgw_kit::secret::Secret;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;

const WINDOW_MS: u64 = 60_000;
/// In-process windows kept at most before idle ones are dropped.
const MAX_WINDOWS: usize = 100_000;

/// One scope's limits, as admission needs them.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `org:<id>`, `project:<id>` or `key:<id>`.
    id: String,
    label: String,
    rpm: u32,
    tpm: u32,
}

/// The scopes of a principal that have a limit; empty: nothing to do.
pub fn scopes(principal: &pb::Principal) -> Vec<Scope> {
    principal
        .policies
        .iter()
        .filter(|p| p.rpm.is_some() || p.tpm.is_some())
        .map(|p| {
            let id = llmgw_kit::services::policy_scope_id(principal, &p.scope);
            Scope {
                id: format!("{}:{id}", p.scope),
                label: p.scope.clone(),
                rpm: p.rpm.unwrap_or(0),
                tpm: p.tpm.unwrap_or(0),
            }
        })
        .collect()
}

/// What admission found: the tightest limits, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit_requests: Option<u32>,
    pub remaining_requests: u32,
    pub limit_tokens: Option<u32>,
    pub remaining_tokens: u32,
    /// Seconds until the window has moved on by a minute.
    pub reset_secs: u32,
}

pub enum Limiter {
    Local(Mutex<HashMap<String, Window>>),
    Redis(Box<RedisLimiter>),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    minute: u64,
    requests: f64,
    prev_requests: f64,
    tokens: f64,
    prev_tokens: f64,
}

impl Window {
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        let (r, t) = if minute == self.minute + 1 {
            (self.requests, self.tokens)
        } else {
            (0.0, 0.0)
        };
        *self = Self {
            minute,
            requests: 0.0,
            prev_requests: r,
            tokens: 0.0,
            prev_tokens: t,
        };
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 429 naming the scope and what ran out, with `retry-after`.
fn refused(scope: &Scope, what: &str, limit: u32, reset_secs: u32) -> GwError {
    GwError::new(
        ErrorCode::RateLimited,
        format!(
            "Rate limit reached for {what} per minute on the {} ({limit}); retry after {reset_secs} s.",
            scope.label
        ),
    )
    .with_retry_after(reset_secs.max(1))
}

impl Limiter {
    /// In process, or over Redis (connected on first use).
    pub fn new(redis_url: Option<&Secret>) -> Result<Arc<Self>, GwError> {
        Ok(Arc::new(match redis_url {
            None => Self::Local(Mutex::new(HashMap::new())),
            Some(url) => Self::Redis(Box::new(RedisLimiter::new(url)?)),
        }))
    }

    /// Admits a request of about `tokens` tokens against every scope, or
    /// refuses it with 429 naming the scope.
    pub async fn admit(&self, scopes: &[Scope], tokens: u32) -> Result<Quota, GwError> {
        let now = now_ms();
        let (minute, frac) = (now / WINDOW_MS, (now % WINDOW_MS) as f64 / WINDOW_MS as f64);
        let reset_secs = u32::try_from((WINDOW_MS - now % WINDOW_MS).div_ceil(1000)).unwrap_or(60);
        match self {
            Self::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                if map.len() > MAX_WINDOWS {
                    map.retain(|_, w| w.minute + 1 >= minute);
                }
                let mut seen = Vec::with_capacity(scopes.len());
                for s in scopes {
                    let w = map.entry(s.id.clone()).or_default();
                    w.roll(minute);
                    let r = w.prev_requests * (1.0 - frac) + w.requests;
                    let t = w.prev_tokens * (1.0 - frac) + w.tokens;
                    check(s, r, t, tokens, reset_secs)?;
                    seen.push((r, t));
                }
                for s in scopes {
                    if let Some(w) = map.get_mut(&s.id) {
                        w.requests += 1.0;
                        w.tokens += f64::from(tokens);
                    }
                }
                Ok(quota(scopes, &seen, tokens, reset_secs))
            }
            Self::Redis(redis) => {
                let seen = redis.admit(scopes, minute, frac, tokens, reset_secs).await?;
                Ok(quota(scopes, &seen, tokens, reset_secs))
            }
        }
    }

    /// Corrects the token count once the real count is known (`delta` =
    /// real − estimated). Best effort: never fails a request.
    pub fn settle(self: &Arc<Self>, scopes: Vec<Scope>, delta: i64) {
        if delta == 0 || scopes.iter().all(|s| s.tpm == 0) {
            return;
        }
        let minute = now_ms() / WINDOW_MS;
        match &**self {
            Self::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                for s in &scopes {
                    if let Some(w) = map.get_mut(&s.id) {
                        w.roll(minute);
                        w.tokens = (w.tokens + delta as f64).max(0.0);
                    }
                }
            }
            Self::Redis(_) => {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Self::Redis(redis) = &*this {
                        redis.add_tokens(&scopes, minute, delta).await;
                    }
                });
            }
        }
    }
}

fn check(s: &Scope, requests: f64, tokens_used: f64, tokens: u32, reset_secs: u32) -> Result<(), GwError> {
    if s.rpm > 0 && requests + 1.0 > f64::from(s.rpm) {
        return Err(refused(s, "requests", s.rpm, reset_secs));
    }
    // A request bigger than the whole limit still passes an idle window.
    if s.tpm > 0 && tokens_used > 0.0 && tokens_used + f64::from(tokens) > f64::from(s.tpm) {
        return Err(refused(s, "tokens", s.tpm, reset_secs));
    }
    Ok(())
}

fn quota(scopes: &[Scope], seen: &[(f64, f64)], tokens: u32, reset_secs: u32) -> Quota {
    let mut q = Quota {
        reset_secs,
        ..Quota::default()
    };
    let left = |limit: u32, used: f64| (f64::from(limit) - used).max(0.0) as u32;
    for (s, (r, t)) in scopes.iter().zip(seen) {
        if s.rpm > 0 {
            let remaining = left(s.rpm, r + 1.0);
            if q.limit_requests.is_none() || remaining < q.remaining_requests {
                q.limit_requests = Some(s.rpm);
                q.remaining_requests = remaining;
            }
        }
        if s.tpm > 0 {
            let remaining = left(s.tpm, t + f64::from(tokens));
            if q.limit_tokens.is_none() || remaining < q.remaining_tokens {
                q.limit_tokens = Some(s.tpm);
                q.remaining_tokens = remaining;
            }
        }
    }
    q
}

/// Check every scope, then count in all: atomically, in one script.
/// KEYS: per scope, this and last minute's request and token counters.
/// ARGV: the window fraction, the token estimate, then per scope rpm, tpm.
/// Returns `{0, scope index (1-based), 1 = requests | 2 = tokens}` when
/// refused, else `{1, r1, t1, r2, t2, …}` (used before this request, ×1000).
const ADMIT_LUA: &str = r"
local frac = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local n = #KEYS / 4
local seen = {1}
for i = 0, n - 1 do
  local rpm = tonumber(ARGV[3 + 2 * i])
  local tpm = tonumber(ARGV[4 + 2 * i])
  local rc = tonumber(redis.call('GET', KEYS[4 * i + 1]) or '0')
  local rp = tonumber(redis.call('GET', KEYS[4 * i + 2]) or '0')
  local tc = tonumber(redis.call('GET', KEYS[4 * i + 3]) or '0')
  local tp = tonumber(redis.call('GET', KEYS[4 * i + 4]) or '0')
  local r = rp * (1 - frac) + rc
  local t = tp * (1 - frac) + tc
  if rpm > 0 and r + 1 > rpm then return {0, i + 1, 1} end
  if tpm > 0 and t > 0 and t + est > tpm then return {0, i + 1, 2} end
  seen[#seen + 1] = math.floor(r * 1000)
  seen[#seen + 1] = math.floor(t * 1000)
end
for i = 0, n - 1 do
  redis.call('INCR', KEYS[4 * i + 1])
  redis.call('PEXPIRE', KEYS[4 * i + 1], 130000)
  redis.call('INCRBY', KEYS[4 * i + 3], est)
  redis.call('PEXPIRE', KEYS[4 * i + 3], 130000)
end
return seen
";

pub struct RedisLimiter {
    client: redis::Client,
    /// Connected on first use (and reconnected by the manager after that).
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    admit: redis::Script,
}

fn redis_error(e: &redis::RedisError) -> GwError {
    // The URL (and its password) is never part of the message.
    tracing::warn!(kind = ?e.kind(), "redis error");
    GwError::new(
        ErrorCode::Unavailable,
        "the rate-limit store is unavailable; retry shortly",
    )
    .with_retry_after(1)
}

fn counter(scope: &Scope, kind: &str, minute: u64) -> String {
    format!("llmgw:rl:{}:{kind}:{minute}", scope.id)
}

impl RedisLimiter {
    fn new(url: &Secret) -> Result<Self, GwError> {
        let client = redis::Client::open(url.expose())
            .map_err(|_| GwError::internal("`redis.url` is not a valid Redis URL"))?;
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
            admit: redis::Script::new(ADMIT_LUA),
        })
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, GwError> {
        self.conn
            .get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
            .map_err(|e| redis_error(&e))
    }

    async fn admit(
        &self,
        scopes: &[Scope],
        minute: u64,
        frac: f64,
        tokens: u32,
        reset_secs: u32,
    ) -> Result<Vec<(f64, f64)>, GwError> {
        let mut inv = self.admit.prepare_invoke();
        for s in scopes {
            inv.key(counter(s, "r", minute))
                .key(counter(s, "r", minute.saturating_sub(1)))
                .key(counter(s, "t", minute))
                .key(counter(s, "t", minute.saturating_sub(1)));
        }
        inv.arg(frac).arg(tokens);
        for s in scopes {
            inv.arg(s.rpm).arg(s.tpm);
        }
        let mut conn = self.conn().await?;
        let reply: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(|e| redis_error(&e))?;
        match reply.as_slice() {
            [1, rest @ ..] => Ok(rest
                .chunks(2)
                .map(|c| {
                    (
                        c[0] as f64 / 1000.0,
                        c.get(1).copied().unwrap_or(0) as f64 / 1000.0,
                    )
                })
                .collect()),
            [0, i, what] => {
                let s = usize::try_from(*i - 1)
                    .ok()
                    .and_then(|i| scopes.get(i))
                    .unwrap_or(&scopes[0]);
                Err(if *what == 1 {
                    refused(s, "requests", s.rpm, reset_secs)
                } else {
                    refused(s, "tokens", s.tpm, reset_secs)
                })
            }
            _ => Err(GwError::internal("unexpected rate-limit script reply")),
        }
    }

    async fn add_tokens(&self, scopes: &[Scope], minute: u64, delta: i64) {
        let mut pipe = redis::pipe();
        for s in scopes.iter().filter(|s| s.tpm > 0) {
            pipe.cmd("INCRBY")
                .arg(counter(s, "t", minute))
                .arg(delta)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(counter(s, "t", minute))
                .arg(130_000)
                .ignore();
        }
        let Ok(mut conn) = self.conn().await else { return };
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            redis_error(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(rpm: u32, tpm: u32) -> Scope {
        Scope {
            id: format!("key:k{rpm}-{tpm}"),
            label: "key".into(),
            rpm,
            tpm,
        }
    }

    #[tokio::test]
    async fn local_windows_count_requests_and_tokens_in_every_scope_or_none() {
        let l = Limiter::new(None).unwrap();
        let tight = scope(3, 0);
        let loose = scope(100, 0);
        for i in 0..3 {
            let q = l.admit(&[loose.clone(), tight.clone()], 1).await.unwrap();
            assert_eq!((q.limit_requests, q.remaining_requests), (Some(3), 2 - i));
        }
        let e = l.admit(&[loose.clone(), tight.clone()], 1).await.unwrap_err();
        assert_eq!((e.http_status(), e.retry_after_secs().is_some()), (429, true));
        assert!(e.message().contains("requests per minute on the key"), "{e:?}");
        // The refused request was counted nowhere: loose still has 97 left.
        let q = l.admit(std::slice::from_ref(&loose), 1).await.unwrap();
        assert_eq!(q.remaining_requests, 96);

        let tokens = scope(0, 100);
        l.admit(std::slice::from_ref(&tokens), 60).await.unwrap();
        let e = l.admit(std::slice::from_ref(&tokens), 60).await.unwrap_err();
        assert!(e.message().contains("tokens"), "{e:?}");
        // The first used fewer than estimated: the correction makes room.
        l.settle(vec![tokens.clone()], -30);
        l.admit(std::slice::from_ref(&tokens), 60).await.unwrap();
    }

    #[test]
    fn windows_slide() {
        let mut w = Window {
            minute: 10,
            requests: 8.0,
            ..Window::default()
        };
        w.roll(11);
        assert_eq!((w.prev_requests, w.requests), (8.0, 0.0));
        w.roll(13);
        assert_eq!((w.prev_requests, w.requests), (0.0, 0.0), "a gap forgets");
    }
}
