//! The auth store: orgs, projects and API keys over one `sqlx::AnyPool`.
//!
//! Every write that may race with another process runs in one transaction
//! whose first statement is a write (so SQLite takes its write lock before
//! reading anything) and leans on a unique constraint, so PostgreSQL is just
//! as safe.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use llmgw_kit::config::Config;
use llmgw_kit::db::{self, MigrationSpec, db_error};
use llmgw_kit::secret::Secret;
use llmgw_kit::{ErrorCode, GwError};
use sqlx::{Any, AnyPool, Row as _, Transaction};

use crate::credentials::Sealer;
use crate::keys::{self, KeyHasher};

/// The schema, in order; portable SQL.
const MIGRATIONS: &[MigrationSpec] = &[
    (
        1,
        "orgs projects api keys",
        include_str!("../migrations/0001_init.sql"),
    ),
    (
        2,
        "key routing config",
        include_str!("../migrations/0002_key_routing_config.sql"),
    ),
    (
        3,
        "key roles names metadata and policies",
        include_str!("../migrations/0003_admin.sql"),
    ),
    (4, "budget ledger", include_str!("../migrations/0004_budgets.sql")),
    (
        5,
        "byok provider credentials",
        include_str!("../migrations/0005_credentials.sql"),
    ),
];

/// Longest org or project name, in characters.
const MAX_NAME_CHARS: usize = 64;

/// The org [`AuthStore::ensure_default_org`] creates in an empty store.
pub const DEFAULT_ORG: &str = "default";

/// Orgs, projects and API keys. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct AuthStore {
    pub(crate) pool: AnyPool,
    pub(crate) hasher: KeyHasher,
    /// The API-key hash under `LLMGW_MASTER_KEY_PREVIOUS`, during a rotation.
    pub(crate) previous_hasher: Option<KeyHasher>,
    /// Seals and opens BYOK provider credentials.
    pub(crate) sealer: Sealer,
    /// `byok.allowed_base_urls`: the only base URLs a credential may name.
    pub(crate) allowed_base_urls: Arc<[String]>,
    /// Budget ledger writes of this process, one at a time: on SQLite two
    /// concurrent write transactions meet SQLite's busy handler, which
    /// sleeps in milliseconds; queued here they take microseconds. Other
    /// processes (and PostgreSQL's row locks) keep the ledger correct; this
    /// only keeps it fast.
    pub(crate) ledger: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthStore").finish_non_exhaustive()
    }
}

/// A key just created. `key` is its only copy: show it once, then drop it.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: Secret,
    pub key_id: String,
    pub org_id: String,
    pub org_name: String,
    pub project_id: Option<String>,
}

/// Opens (creating and migrating if needed) `<data_dir>/auth.db`, or the
/// `auth` schema of the configured PostgreSQL database, and loads
/// the master key: `LLMGW_MASTER_KEY` when set, else `<data_dir>/master.key`,
/// created on first use.
pub async fn open(config: &Config) -> Result<AuthStore, GwError> {
    let pool = db::open(config, "auth.db", MIGRATIONS).await?;
    let master_key = keys::master_key(config.master_key.as_ref(), &config.data_dir)?;
    Ok(AuthStore {
        pool,
        hasher: KeyHasher::new(&master_key)?,
        previous_hasher: config
            .master_key_previous
            .as_ref()
            .map(KeyHasher::new)
            .transpose()?,
        sealer: Sealer::new(&master_key, config.master_key_previous.as_ref())?,
        allowed_base_urls: config.byok.allowed_base_urls.clone().into(),
        ledger: Arc::default(),
    })
}

impl AuthStore {
    /// Sets (or, with `None`, clears) the routing config a key's requests
    /// use when they name none.
    pub async fn set_routing_config(&self, key_id: &str, config: Option<&str>) -> Result<(), GwError> {
        if let Some(c) = config
            && (c.is_empty() || c.len() > 128 || c.chars().any(char::is_control))
        {
            return Err(GwError::invalid(
                "routing_config",
                "a routing config name is 1 to 128 characters, without control characters",
            ));
        }
        if !storable(key_id) {
            return Err(GwError::new(ErrorCode::NotFound, "no such key"));
        }
        let done = sqlx::query("UPDATE api_keys SET routing_config = $1 WHERE id = $2")
            .bind(config)
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(db_error("setting a key's routing config"))?;
        if done.rows_affected() == 0 {
            return Err(GwError::new(ErrorCode::NotFound, format!("no key `{key_id}`")));
        }
        Ok(())
    }

    /// Creates a key for `org` (and `project` in it), creating either if
    /// missing. Names are 1 to 64 characters, without control characters or
    /// surrounding whitespace.
    pub async fn create_key(&self, org: &str, project: Option<&str>) -> Result<CreatedKey, GwError> {
        validate_name("org", org)?;
        if let Some(project) = project {
            validate_name("project", project)?;
        }
        let mut tx = self.pool.begin().await.map_err(db_error("creating a key"))?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(keys::new_id("org")?)
        .bind(org)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error("creating an org"))?;
        let org_id: String = sqlx::query("SELECT id FROM orgs WHERE name = $1")
            .bind(org)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db_error("reading an org"))?;
        let project_id = match project {
            None => None,
            Some(project) => {
                sqlx::query(
                    "INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (org_id, name) DO NOTHING",
                )
                .bind(keys::new_id("proj")?)
                .bind(&org_id)
                .bind(project)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_error("creating a project"))?;
                let id: String = sqlx::query("SELECT id FROM projects WHERE org_id = $1 AND name = $2")
                    .bind(&org_id)
                    .bind(project)
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(db_error("reading a project"))?;
                Some(id)
            }
        };
        let created = self.insert_key(&mut tx, org_id, org, project_id, now).await?;
        tx.commit().await.map_err(db_error("creating a key"))?;
        Ok(created)
    }

    /// Creates a key in the existing org `org_id` with its role, name,
    /// metadata (JSON text), expiry (Unix ms) and default routing config.
    #[expect(
        clippy::too_many_arguments,
        reason = "one column each; the admin API validated them"
    )]
    pub(crate) async fn create_key_in(
        &self,
        org_id: &str,
        project_id: Option<&str>,
        role: &str,
        name: Option<&str>,
        metadata: Option<&str>,
        expires_at: Option<i64>,
        routing_config: Option<&str>,
    ) -> Result<CreatedKey, GwError> {
        let mut tx = self.pool.begin().await.map_err(db_error("creating a key"))?;
        let org_name: String = sqlx::query("SELECT name FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db_error("reading an org"))?;
        let created = self
            .insert_key(
                &mut tx,
                org_id.to_owned(),
                &org_name,
                project_id.map(str::to_owned),
                now_ms(),
            )
            .await?;
        sqlx::query(
            "UPDATE api_keys SET role = $1, name = $2, metadata = $3, expires_at = $4, routing_config = $5              WHERE id = $6",
        )
        .bind(role)
        .bind(name)
        .bind(metadata)
        .bind(expires_at)
        .bind(routing_config)
        .bind(&created.key_id)
        .execute(&mut *tx)
        .await
        .map_err(db_error("creating a key"))?;
        tx.commit().await.map_err(db_error("creating a key"))?;
        Ok(created)
    }

    /// Sets a key's role: `member`, `admin` (its org) or `platform_admin`.
    pub async fn set_role(&self, key_id: &str, role: &str) -> Result<(), GwError> {
        if !["member", "admin", "platform_admin"].contains(&role) {
            return Err(GwError::invalid(
                "role",
                "role is member, admin or platform_admin",
            ));
        }
        sqlx::query("UPDATE api_keys SET role = $1 WHERE id = $2")
            .bind(role)
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(db_error("setting a key's role"))?;
        Ok(())
    }

    /// In a store without any org, creates org `default` and one key for it
    /// and returns that key; otherwise `None`. Safe when several processes
    /// start at once: exactly one of them gets the key.
    pub async fn ensure_default_org(&self) -> Result<Option<CreatedKey>, GwError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_error("creating the default org"))?;
        let now = now_ms();
        let org_id = keys::new_id("org")?;
        // One statement, so SQLite's write lock covers the check; on PostgreSQL
        // a concurrent insert of the same name waits on the unique index and
        // then does nothing.
        let inserted = sqlx::query(
            "INSERT INTO orgs (id, name, created_at) SELECT $1, $2, $3 \
             WHERE NOT EXISTS (SELECT 1 FROM orgs) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&org_id)
        .bind(DEFAULT_ORG)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error("creating the default org"))?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let created = self.insert_key(&mut tx, org_id, DEFAULT_ORG, None, now).await?;
        tx.commit().await.map_err(db_error("creating the default org"))?;
        Ok(Some(created))
    }

    /// The id of the org named `name`, if there is one.
    pub async fn org_id(&self, name: &str) -> Result<Option<String>, GwError> {
        if validate_name("org", name).is_err() {
            return Ok(None);
        }
        let row = sqlx::query("SELECT id FROM orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading an org"))?;
        row.map(|row| row.try_get(0))
            .transpose()
            .map_err(db_error("reading an org"))
    }

    /// Revokes key `key_id`; false when there is no such key or it was
    /// already revoked. Edges that cached it trust it until their cache expires.
    pub async fn revoke_key(&self, key_id: &str) -> Result<bool, GwError> {
        if !storable(key_id) {
            return Ok(false);
        }
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(db_error("revoking a key"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_key(
        &self,
        tx: &mut Transaction<'static, Any>,
        org_id: String,
        org_name: &str,
        project_id: Option<String>,
        now: i64,
    ) -> Result<CreatedKey, GwError> {
        let key = keys::generate_key()?;
        let key_id = keys::new_id("key")?;
        sqlx::query(
            "INSERT INTO api_keys (id, org_id, project_id, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key_id)
        .bind(&org_id)
        .bind(project_id.as_deref())
        .bind(self.hasher.hash(key.expose()))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_error("storing a key"))?;
        tracing::info!(key_id, org_id, project_id, "created an api key");
        Ok(CreatedKey {
            key,
            key_id,
            org_id,
            org_name: org_name.to_owned(),
            project_id,
        })
    }
}

/// Whether `text` can be stored (or looked up) on every backend: PostgreSQL's
/// TEXT cannot hold NUL, so such text names nothing stored.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Checks an org or project name; `what` is the param named in the error.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<(), GwError> {
    let problem = if name.is_empty() {
        "must not be empty"
    } else if name.chars().count() > MAX_NAME_CHARS {
        "must be at most 64 characters"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else if name.trim() != name {
        "must not start or end with whitespace"
    } else {
        return Ok(());
    };
    Err(GwError::invalid(what, format!("{what} name {problem}")))
}

/// Now, in Unix epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
