//! `AuthService::authenticate`: an API key in, its principal out.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use llmgw_kit::db::db_error;
use llmgw_kit::services::{Auth, AuthService};
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use sqlx::Row as _;
use subtle::ConstantTimeEq as _;
use tracing::Instrument as _;

use crate::admin::role_from_str;
use crate::keys::MAX_KEY_LEN;
use crate::store::{AuthStore, now_ms};

/// The auth service over `store`, as the one client type the edge uses.
pub fn service(store: AuthStore) -> Auth {
    tokio::spawn(settle_stale(store.clone()));
    Arc::new(AuthServiceImpl { store })
}

/// A reservation older than this was never settled (its edge died).
const STALE_RESERVATION: Duration = Duration::from_secs(20 * 60);

/// Every minute, settles the reservations whose settlement never came.
async fn settle_stale(store: AuthStore) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = store.settle_stale(STALE_RESERVATION).await {
            tracing::warn!(error = %e, "settling stale reservations failed");
        }
    }
}

struct AuthServiceImpl {
    store: AuthStore,
}

impl AuthServiceImpl {
    /// The key row (and its org and project) stored under `hash`.
    async fn key_row(&self, hash: &str) -> Result<Option<sqlx::any::AnyRow>, GwError> {
        sqlx::query(
            "SELECT k.id, k.key_hash, k.revoked_at, k.expires_at, o.id, o.name, p.id, p.name, k.routing_config, k.role \
             FROM api_keys k \
             JOIN orgs o ON o.id = k.org_id \
             LEFT JOIN projects p ON p.id = k.project_id \
             WHERE k.key_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(db_error("authenticating"))
    }
}

/// The one answer for every rejected key: it says nothing about why, and
/// never contains the key or its hash.
fn invalid_key() -> GwError {
    GwError::new(ErrorCode::Unauthenticated, "invalid api key")
}

impl AuthServiceImpl {
    /// The principal of the key `req` presents.
    async fn principal_of(&self, req: pb::AuthenticateRequest) -> Result<pb::Principal, GwError> {
        let key = req.api_key;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(invalid_key());
        }
        let mut hash = self.store.hasher.hash(&key);
        let mut row = self.key_row(&hash).await?;
        // During a master key rotation a key may still be hashed under the
        // previous master key: found that way, it is re-hashed under the
        // current one.
        if row.is_none()
            && let Some(previous) = &self.store.previous_hasher
        {
            let old = previous.hash(&key);
            if let Some(found) = self.key_row(&old).await? {
                sqlx::query("UPDATE api_keys SET key_hash = $1 WHERE key_hash = $2")
                    .bind(&hash)
                    .bind(&old)
                    .execute(&self.store.pool)
                    .await
                    .map_err(db_error("re-hashing a key"))?;
                hash = old;
                row = Some(found);
            }
        }
        let Some(row) = row else {
            tracing::debug!(reason = "unknown", "api key rejected");
            return Err(invalid_key());
        };
        let read = || -> Result<_, sqlx::Error> {
            Ok((
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<Option<i64>, _>(2)?,
                row.try_get::<Option<i64>, _>(3)?,
                pb::Principal {
                    org_id: row.try_get(4)?,
                    org_name: row.try_get(5)?,
                    project_id: row.try_get(6)?,
                    project_name: row.try_get(7)?,
                    key_id: String::new(),
                    routing_config: row.try_get(8)?,
                    role: role_from_str(&row.try_get::<String, _>(9)?) as i32,
                    policies: Vec::new(),
                    providers: Vec::new(),
                },
            ))
        };
        let (key_id, stored_hash, revoked_at, expires_at, mut principal) =
            read().map_err(db_error("authenticating"))?;
        // The lookup already matched the hash; comparing again in constant
        // time keeps a collation or index quirk from ever deciding alone.
        if !bool::from(stored_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(invalid_key());
        }
        if revoked_at.is_some() {
            tracing::debug!(key_id, reason = "revoked", "api key rejected");
            return Err(invalid_key());
        }
        if expires_at.is_some_and(|at| at <= now_ms()) {
            tracing::debug!(key_id, reason = "expired", "api key rejected");
            return Err(invalid_key());
        }
        principal.policies = self.store.policies_of(&principal, &key_id).await?;
        principal.providers = self.store.org_providers(&principal.org_id).await?;
        principal.key_id = key_id;
        Ok(principal)
    }
}

#[async_trait]
impl AuthService for AuthServiceImpl {
    async fn authenticate(&self, req: pb::AuthenticateRequest) -> Result<pb::Principal, GwError> {
        // Ids only: never the key, nor its hash.
        let span = llmgw_kit::otel_span!(
            "authenticate",
            llmgw.org_id = tracing::field::Empty,
            llmgw.key_id = tracing::field::Empty,
        );
        let principal = self.principal_of(req).instrument(span.clone()).await?;
        span.record("llmgw.org_id", principal.org_id.as_str());
        span.record("llmgw.key_id", principal.key_id.as_str());
        Ok(principal)
    }

    async fn admin(&self, call: pb::AdminCall) -> Result<pb::AdminReply, GwError> {
        self.store.admin(call).await
    }

    async fn admit(&self, req: pb::AdmitRequest) -> Result<pb::Admission, GwError> {
        let span = llmgw_kit::otel_span!("admit", llmgw.request_id = %req.request_id, llmgw.reserve_usd = req.reserve_usd);
        self.store.admit(req).instrument(span).await
    }

    async fn settle(&self, req: pb::SettleRequest) -> Result<pb::SettleAck, GwError> {
        let span = llmgw_kit::otel_span!("settle", llmgw.request_id = %req.request_id, llmgw.spent_usd = req.spent_usd);
        self.store.settle(req).instrument(span).await
    }

    async fn get_credential(&self, req: pb::GetCredentialRequest) -> Result<pb::ProviderCredential, GwError> {
        // The credential's id, never its contents.
        let span = llmgw_kit::otel_span!("get_credential", llmgw.credential_id = %req.credential_id);
        self.store
            .get_credential(&req.org_id, &req.credential_id)
            .instrument(span)
            .await
    }
}
