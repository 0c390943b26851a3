//! A short-lived cache of authenticated keys, so most requests skip the
//! `auth` hop. Entries are keyed by the SHA-256 of the key (the key itself is
//! never kept), live for `edge.auth_cache_ttl`, and only successes are
//! cached: a newly created key works at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmgw_proto::Principal;
use sha2::{Digest, Sha256};

/// At most this many keys are cached; a full cache is cleared of expired
/// entries, then emptied if that was not enough.
const MAX_ENTRIES: usize = 65_536;

pub struct AuthCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

pub type Digest32 = [u8; 32];

impl AuthCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn digest(key: &str) -> Digest32 {
        Sha256::digest(key.as_bytes()).into()
    }

    pub fn get(&self, digest: &Digest32) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (principal, at) = entries.get(digest)?;
        (at.elapsed() < self.ttl).then(|| principal.clone())
    }

    pub fn put(&self, digest: Digest32, principal: Principal) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (principal, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let cache = AuthCache::new(Duration::from_millis(30));
        let d = AuthCache::digest("sk-1");
        cache.put(
            d,
            Principal {
                org_id: "o".into(),
                ..Default::default()
            },
        );
        assert_eq!(cache.get(&d).map(|p| p.org_id), Some("o".into()));
        assert!(cache.get(&AuthCache::digest("sk-2")).is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&d).is_none());
    }
}
