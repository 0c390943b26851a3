//! The admin API's operations (`AdminCall` in, JSON out), on behalf of an
//! admin key: an org admin acts on its own org only, a platform admin on
//! any. A resource of another org is answered exactly as one that does not
//! exist (404), so an org cannot learn what another holds. Every query is
//! parameterised; bodies are parsed with unknown fields refused.

use std::collections::BTreeMap;

use llmgw_kit::db::db_error;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use pb::{AdminOp, KeyRole};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row as _;

use crate::keys;

/// A key's columns as the API shows them (never the hash), then `$rest`:
/// a static SQL string.
macro_rules! key_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, org_id, project_id, role, name, metadata, routing_config, ",
            "created_at, expires_at, revoked_at FROM api_keys ",
            $rest
        )
    };
}

use crate::store::{AuthStore, now_ms, validate_name};

/// Most entries in a policy list, and characters in one pattern.
const MAX_PATTERNS: usize = 256;
const MAX_PATTERN_CHARS: usize = 256;
/// Most metadata entries on a key, and characters in a key or value.
const MAX_METADATA: usize = 64;
const MAX_METADATA_CHARS: usize = 512;
/// The endpoints a policy may allow.
pub const ENDPOINTS: [&str; 7] = [
    "chat",
    "embeddings",
    "completions",
    "images",
    "audio",
    "models",
    "usage",
];

/// A scope's policy as the admin API reads and writes it.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyBody {
    pub allowed_models: Vec<String>,
    pub denied_models: Vec<String>,
    pub allowed_providers: Vec<String>,
    pub denied_providers: Vec<String>,
    pub allowed_endpoints: Vec<String>,
    pub max_tokens: Option<u32>,
    /// Requests per minute for the whole scope.
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute for the whole scope.
    pub tpm: Option<u32>,
    /// Spend limits per period.
    pub budgets: Vec<BudgetBody>,
    /// Opts the scope's chat requests into the response cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheBody>,
}

/// `cache: {ttl: "10m"}` (absent `ttl`: the gateway's `cache.default_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheBody {
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// `daily`, `monthly` or `total`.
    pub period: String,
    pub limit_usd: f64,
}

impl PolicyBody {
    fn validate(&self) -> Result<(), GwError> {
        for (field, list) in [
            ("allowed_models", &self.allowed_models),
            ("denied_models", &self.denied_models),
            ("allowed_providers", &self.allowed_providers),
            ("denied_providers", &self.denied_providers),
        ] {
            if list.len() > MAX_PATTERNS {
                return Err(GwError::invalid(
                    field,
                    format!("at most {MAX_PATTERNS} patterns"),
                ));
            }
            if let Some(p) = list.iter().find(|p| {
                p.is_empty() || p.chars().count() > MAX_PATTERN_CHARS || p.chars().any(char::is_control)
            }) {
                let shown: String = p.chars().take(40).collect();
                return Err(GwError::invalid(
                    field,
                    format!(
                        "pattern `{shown}` must be 1 to {MAX_PATTERN_CHARS} characters, without control characters"
                    ),
                ));
            }
        }
        if let Some(e) = self
            .allowed_endpoints
            .iter()
            .find(|e| !ENDPOINTS.contains(&e.as_str()))
        {
            let shown: String = e.chars().take(40).collect();
            return Err(GwError::invalid(
                "allowed_endpoints",
                format!("unknown endpoint `{shown}`; one of: {}", ENDPOINTS.join(", ")),
            ));
        }
        let mut periods = Vec::new();
        for b in &self.budgets {
            if !crate::budgets::PERIODS.contains(&b.period.as_str()) || periods.contains(&&b.period) {
                return Err(GwError::invalid(
                    "budgets",
                    "each budget has a distinct period: daily, monthly or total",
                ));
            }
            if !(b.limit_usd.is_finite() && b.limit_usd >= 0.0) {
                return Err(GwError::invalid(
                    "budgets",
                    "limit_usd must be a non-negative number",
                ));
            }
            periods.push(&b.period);
        }
        for (param, v) in [
            ("max_tokens", self.max_tokens),
            ("rpm", self.rpm),
            ("tpm", self.tpm),
        ] {
            if v == Some(0) {
                return Err(GwError::invalid(
                    param,
                    format!("{param} must be at least 1 (leave it out for no limit)"),
                ));
            }
        }
        if let Some(CacheBody { ttl: Some(ttl) }) = self.cache
            && ttl.as_secs() == 0
        {
            return Err(GwError::invalid("cache", "cache.ttl must be at least 1s"));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn into_proto(self, scope: &str) -> pb::Policy {
        pb::Policy {
            scope: scope.to_owned(),
            allowed_models: self.allowed_models,
            denied_models: self.denied_models,
            allowed_providers: self.allowed_providers,
            denied_providers: self.denied_providers,
            allowed_endpoints: self.allowed_endpoints,
            max_tokens: self.max_tokens,
            rpm: self.rpm,
            tpm: self.tpm,
            cache_ttl_secs: self.cache.map(|c| {
                c.ttl
                    .map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX))
            }),
            budgets: self
                .budgets
                .into_iter()
                .map(|b| pb::Budget {
                    period: b.period,
                    limit_usd: b.limit_usd,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KeyCreate {
    project_id: Option<String>,
    name: Option<String>,
    role: Option<String>,
    /// Unix seconds.
    expires_at: Option<i64>,
    metadata: BTreeMap<String, String>,
    routing_config: Option<String>,
}

/// A PATCH: an absent field is left alone, `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KeyUpdate {
    #[serde(deserialize_with = "patch")]
    name: Option<Option<String>>,
    #[serde(deserialize_with = "patch")]
    expires_at: Option<Option<i64>>,
    #[serde(deserialize_with = "patch")]
    metadata: Option<Option<BTreeMap<String, String>>>,
    #[serde(deserialize_with = "patch")]
    routing_config: Option<Option<String>>,
}

fn patch<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// RFC 7396: objects merge key by key, `null` removes a key (the field's
/// default), anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(doc) = target {
        for (name, value) in fields {
            if value.is_null() {
                doc.remove(name);
            } else {
                merge_patch(doc.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

pub(crate) fn body<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, GwError> {
    let text = if text.trim().is_empty() {
        "{}"
    } else {
        text.trim_start()
    };
    // serde would also read a struct from an array of its fields in order.
    if !text.starts_with('{') {
        return Err(GwError::invalid("body", "the request body must be a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| {
        // serde names the field in its message; no input is echoed beyond it.
        let msg = e.to_string();
        let param = msg
            .split('`')
            .nth(1)
            .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or("body")
            .to_owned();
        GwError::invalid(
            param,
            format!(
                "invalid request body: {}",
                msg.split(" at line ").next().unwrap_or(&msg)
            ),
        )
    })
}

pub(crate) fn not_found(what: &str) -> GwError {
    GwError::new(ErrorCode::NotFound, format!("no such {what}"))
}

fn forbidden(message: &str) -> GwError {
    GwError::new(ErrorCode::PermissionDenied, message.to_owned())
}

fn role_str(role: KeyRole) -> &'static str {
    match role {
        KeyRole::Admin => "admin",
        KeyRole::PlatformAdmin => "platform_admin",
        _ => "member",
    }
}

pub(crate) fn role_from_str(s: &str) -> KeyRole {
    match s {
        "admin" => KeyRole::Admin,
        "platform_admin" => KeyRole::PlatformAdmin,
        _ => KeyRole::Member,
    }
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), GwError> {
    if m.len() > MAX_METADATA
        || m.iter().any(|(k, v)| {
            k.is_empty() || k.chars().count() > MAX_METADATA_CHARS || v.chars().count() > MAX_METADATA_CHARS
        })
    {
        return Err(GwError::invalid(
            "metadata",
            format!(
                "at most {MAX_METADATA} entries, keys of 1 to {MAX_METADATA_CHARS} characters, values of at most {MAX_METADATA_CHARS}"
            ),
        ));
    }
    Ok(())
}

fn check_optional_name(param: &'static str, name: Option<&str>) -> Result<(), GwError> {
    match name {
        Some(n) => validate_name(param, n),
        None => Ok(()),
    }
}

pub(crate) fn reply(status: u32, value: &Value) -> pb::AdminReply {
    pb::AdminReply {
        body_json: value.to_string(),
        status,
    }
}

impl AuthStore {
    /// Runs one admin operation for `call.caller`.
    pub async fn admin(&self, call: pb::AdminCall) -> Result<pb::AdminReply, GwError> {
        let caller = call.caller.clone().unwrap_or_default();
        let role = caller.role();
        if !matches!(role, KeyRole::Admin | KeyRole::PlatformAdmin) {
            return Err(forbidden("the admin API needs an admin key"));
        }
        let platform = role == KeyRole::PlatformAdmin;
        let op = call.op();
        let id = call.id.as_str();
        match op {
            AdminOp::OrgCreate => {
                if !platform {
                    return Err(forbidden("only a platform admin key may create orgs"));
                }
                let b: NameBody = body(&call.body_json)?;
                validate_name("name", &b.name)?;
                let org_id = keys::new_id("org")?;
                let now = now_ms();
                let done = sqlx::query(
                    "INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&org_id)
                .bind(&b.name)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_error("creating an org"))?;
                if done.rows_affected() == 0 {
                    return Err(GwError::invalid("name", "an org with this name exists"));
                }
                Ok(reply(201, &org_json(&org_id, &b.name, now)))
            }
            AdminOp::OrgList => {
                let rows = if platform {
                    sqlx::query("SELECT id, name, created_at FROM orgs ORDER BY created_at, id")
                        .fetch_all(&self.pool)
                        .await
                } else {
                    sqlx::query("SELECT id, name, created_at FROM orgs WHERE id = $1")
                        .bind(&caller.org_id)
                        .fetch_all(&self.pool)
                        .await
                }
                .map_err(db_error("listing orgs"))?;
                let data = rows
                    .iter()
                    .map(|r| {
                        Ok(org_json(
                            &r.try_get::<String, _>(0)?,
                            &r.try_get::<String, _>(1)?,
                            r.try_get(2)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(db_error("listing orgs"))?;
                Ok(reply(200, &json!({"object": "list", "data": data})))
            }
            AdminOp::OrgGet => {
                self.own_org(&caller, platform, id).await?;
                let row = sqlx::query("SELECT id, name, created_at FROM orgs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("reading an org"))?;
                let read = || -> Result<Value, sqlx::Error> {
                    Ok(org_json(
                        &row.try_get::<String, _>(0)?,
                        &row.try_get::<String, _>(1)?,
                        row.try_get(2)?,
                    ))
                };
                Ok(reply(200, &read().map_err(db_error("reading an org"))?))
            }
            AdminOp::ProjectCreate => {
                self.own_org(&caller, platform, id).await?;
                let b: NameBody = body(&call.body_json)?;
                validate_name("name", &b.name)?;
                let project_id = keys::new_id("proj")?;
                let now = now_ms();
                let done = sqlx::query(
                    "INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (org_id, name) DO NOTHING",
                )
                .bind(&project_id)
                .bind(id)
                .bind(&b.name)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_error("creating a project"))?;
                if done.rows_affected() == 0 {
                    return Err(GwError::invalid(
                        "name",
                        "a project with this name exists in the org",
                    ));
                }
                Ok(reply(201, &project_json(&project_id, id, &b.name, now)))
            }
            AdminOp::ProjectList => {
                self.own_org(&caller, platform, id).await?;
                let rows = sqlx::query(
                    "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 ORDER BY created_at, id",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error("listing projects"))?;
                let data = rows
                    .iter()
                    .map(|r| {
                        Ok(project_json(
                            &r.try_get::<String, _>(0)?,
                            &r.try_get::<String, _>(1)?,
                            &r.try_get::<String, _>(2)?,
                            r.try_get(3)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(db_error("listing projects"))?;
                Ok(reply(200, &json!({"object": "list", "data": data})))
            }
            AdminOp::KeyCreate => {
                self.own_org(&caller, platform, id).await?;
                let b: KeyCreate = body(&call.body_json)?;
                let role = match b.role.as_deref() {
                    None | Some("member") => KeyRole::Member,
                    Some("admin") => KeyRole::Admin,
                    Some("platform_admin") if platform => KeyRole::PlatformAdmin,
                    Some("platform_admin") => {
                        return Err(forbidden(
                            "only a platform admin key may create platform admin keys",
                        ));
                    }
                    Some(_) => return Err(GwError::invalid("role", "role is `member` or `admin`")),
                };
                check_optional_name("name", b.name.as_deref())?;
                check_metadata(&b.metadata)?;
                check_optional_name("routing_config", b.routing_config.as_deref())?;
                let expires_at = b.expires_at.map(expiry).transpose()?;
                if let Some(project) = &b.project_id {
                    self.project_in_org(project, id).await?;
                }
                let metadata = (!b.metadata.is_empty()).then(|| json!(b.metadata).to_string());
                let created = self
                    .create_key_in(
                        id,
                        b.project_id.as_deref(),
                        role_str(role),
                        b.name.as_deref(),
                        metadata.as_deref(),
                        expires_at,
                        b.routing_config.as_deref(),
                    )
                    .await?;
                let mut out = self.key_json(&created.key_id).await?;
                out["key"] = Value::String(created.key.expose().to_owned());
                Ok(reply(201, &out))
            }
            AdminOp::KeyList => {
                self.own_org(&caller, platform, id).await?;
                let rows = sqlx::query(key_select!("WHERE org_id = $1 ORDER BY created_at, id"))
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("listing keys"))?;
                let data = rows
                    .iter()
                    .map(key_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(db_error("listing keys"))?;
                Ok(reply(200, &json!({"object": "list", "data": data})))
            }
            AdminOp::KeyGet => {
                self.own_key(&caller, platform, id).await?;
                Ok(reply(200, &self.key_json(id).await?))
            }
            AdminOp::KeyUpdate => {
                self.own_key(&caller, platform, id).await?;
                let b: KeyUpdate = body(&call.body_json)?;
                if let Some(name) = &b.name {
                    check_optional_name("name", name.as_deref())?;
                    self.set_key_text(id, "name", name.as_deref()).await?;
                }
                if let Some(metadata) = &b.metadata {
                    let text = match metadata {
                        Some(m) => {
                            check_metadata(m)?;
                            Some(json!(m).to_string())
                        }
                        None => None,
                    };
                    self.set_key_text(id, "metadata", text.as_deref()).await?;
                }
                if let Some(config) = &b.routing_config {
                    check_optional_name("routing_config", config.as_deref())?;
                    self.set_key_text(id, "routing_config", config.as_deref()).await?;
                }
                if let Some(at) = b.expires_at {
                    let at = at.map(expiry).transpose()?;
                    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
                        .bind(at)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(db_error("updating a key"))?;
                }
                Ok(reply(200, &self.key_json(id).await?))
            }
            AdminOp::KeyRevoke => {
                self.own_key(&caller, platform, id).await?;
                self.revoke_key(id).await?;
                Ok(reply(200, &self.key_json(id).await?))
            }
            AdminOp::KeyRotate => {
                self.own_key(&caller, platform, id).await?;
                let key = keys::generate_key()?;
                let done =
                    sqlx::query("UPDATE api_keys SET key_hash = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(self.hasher.hash(key.expose()))
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(db_error("rotating a key"))?;
                if done.rows_affected() == 0 {
                    return Err(GwError::invalid("key", "a revoked key cannot be rotated"));
                }
                tracing::info!(key_id = id, "rotated an api key");
                let mut out = self.key_json(id).await?;
                out["key"] = Value::String(key.expose().to_owned());
                Ok(reply(200, &out))
            }
            AdminOp::PolicyGet => {
                let org = self.scope_org(&caller, platform, &call.scope, id).await?;
                let policy = self.policy(&call.scope, id).await?.unwrap_or_default();
                Ok(reply(200, &policy_json(&call.scope, id, &org, &policy)))
            }
            AdminOp::PolicyPut => {
                let org = self.scope_org(&caller, platform, &call.scope, id).await?;
                let policy: PolicyBody = body(&call.body_json)?;
                policy.validate()?;
                let text = serde_json::to_string(&policy).map_err(|e| GwError::internal(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO policies (scope, scope_id, org_id, body, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (scope, scope_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                )
                .bind(&call.scope)
                .bind(id)
                .bind(&org)
                .bind(&text)
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(db_error("storing a policy"))?;
                tracing::info!(scope = %call.scope, id, "policy set");
                Ok(reply(200, &policy_json(&call.scope, id, &org, &policy)))
            }
            AdminOp::PolicyPatch => {
                let org = self.scope_org(&caller, platform, &call.scope, id).await?;
                let policy = self.patch_policy(&call.scope, id, &org, &call.body_json).await?;
                tracing::info!(scope = %call.scope, id, "policy patched");
                Ok(reply(200, &policy_json(&call.scope, id, &org, &policy)))
            }
            AdminOp::BudgetStatus => {
                self.scope_org(&caller, platform, &call.scope, id).await?;
                let policy = self.policy(&call.scope, id).await?.unwrap_or_default();
                Ok(reply(
                    200,
                    &self.budget_status(&call.scope, id, &policy.budgets).await?,
                ))
            }
            AdminOp::CredentialCreate => {
                self.own_org(&caller, platform, id).await?;
                self.credential_create(id, &call.body_json).await
            }
            AdminOp::CredentialList => {
                self.own_org(&caller, platform, id).await?;
                self.credential_list(id).await
            }
            AdminOp::CredentialDelete => match self.credential_org(id).await? {
                Some(org) if platform || org == caller.org_id => self.credential_delete(id, &org).await,
                _ => Err(not_found("credential")),
            },
            AdminOp::Unspecified => Err(GwError::invalid("op", "no admin operation named")),
        }
    }

    /// The org `id` when the caller may act on it; 404 otherwise (an org
    /// admin is told of no org but its own).
    async fn own_org(&self, caller: &pb::Principal, platform: bool, id: &str) -> Result<(), GwError> {
        if !platform && caller.org_id != id {
            return Err(not_found("org"));
        }
        let exists = sqlx::query("SELECT 1 FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading an org"))?;
        exists.map(|_| ()).ok_or_else(|| not_found("org"))
    }

    async fn org_of(&self, table: &'static str, id: &str) -> Result<Option<String>, GwError> {
        let sql = match table {
            "api_keys" => "SELECT org_id FROM api_keys WHERE id = $1",
            "projects" => "SELECT org_id FROM projects WHERE id = $1",
            _ => "SELECT id FROM orgs WHERE id = $1",
        };
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading an owner"))?;
        row.map(|r| r.try_get(0))
            .transpose()
            .map_err(db_error("reading an owner"))
    }

    async fn own_key(&self, caller: &pb::Principal, platform: bool, id: &str) -> Result<String, GwError> {
        match self.org_of("api_keys", id).await? {
            Some(org) if platform || org == caller.org_id => Ok(org),
            _ => Err(not_found("key")),
        }
    }

    async fn project_in_org(&self, project: &str, org: &str) -> Result<(), GwError> {
        match self.org_of("projects", project).await? {
            Some(o) if o == org => Ok(()),
            _ => {
                Err(GwError::new(ErrorCode::NotFound, "no such project in this org").with_param("project_id"))
            }
        }
    }

    /// The org owning a policy scope, when the caller may act on it.
    async fn scope_org(
        &self,
        caller: &pb::Principal,
        platform: bool,
        scope: &str,
        id: &str,
    ) -> Result<String, GwError> {
        let table = match scope {
            "org" => "orgs",
            "project" => "projects",
            "key" => "api_keys",
            _ => return Err(GwError::invalid("scope", "scope is org, project or key")),
        };
        match self.org_of(table, id).await? {
            Some(org) if platform || org == caller.org_id => Ok(org),
            _ => Err(not_found(scope)),
        }
    }

    /// The policies with any rule of a key's org, project and key.
    pub(crate) async fn policies_of(
        &self,
        p: &pb::Principal,
        key_id: &str,
    ) -> Result<Vec<pb::Policy>, GwError> {
        let rows = sqlx::query(
            "SELECT scope, body FROM policies WHERE (scope = 'org' AND scope_id = $1) \
             OR (scope = 'project' AND scope_id = $2) OR (scope = 'key' AND scope_id = $3)",
        )
        .bind(&p.org_id)
        .bind(p.project_id.as_deref().unwrap_or(""))
        .bind(key_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("reading policies"))?;
        let mut out = Vec::new();
        for row in rows {
            let scope: String = row.try_get(0).map_err(db_error("reading policies"))?;
            let text: String = row.try_get(1).map_err(db_error("reading policies"))?;
            let policy: PolicyBody = serde_json::from_str(&text)
                .map_err(|_| GwError::internal("a stored policy is unreadable"))?;
            if !policy.is_empty() {
                out.push(policy.into_proto(&scope));
            }
        }
        Ok(out)
    }

    /// The stored policy of a scope, if any.
    pub(crate) async fn policy(&self, scope: &str, id: &str) -> Result<Option<PolicyBody>, GwError> {
        let row = sqlx::query("SELECT body FROM policies WHERE scope = $1 AND scope_id = $2")
            .bind(scope)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading a policy"))?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get(0).map_err(db_error("reading a policy"))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|_| GwError::internal("a stored policy is unreadable"))
    }

    /// Applies a JSON merge patch to a scope's policy (none yet: the
    /// default). Compare-and-set on the stored text, so two patches at once,
    /// on any number of auth replicas, both land.
    async fn patch_policy(
        &self,
        scope: &str,
        id: &str,
        org: &str,
        patch: &str,
    ) -> Result<PolicyBody, GwError> {
        let patch: Value = body(patch)?;
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT body FROM policies WHERE scope = $1 AND scope_id = $2")
                    .bind(scope)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("reading a policy"))?;
            let current: PolicyBody = match &stored {
                Some(text) => serde_json::from_str(text)
                    .map_err(|_| GwError::internal("a stored policy is unreadable"))?,
                None => PolicyBody::default(),
            };
            let mut doc = serde_json::to_value(&current).map_err(|e| GwError::internal(e.to_string()))?;
            merge_patch(&mut doc, &patch);
            let policy: PolicyBody = body(&doc.to_string())?;
            policy.validate()?;
            let text = serde_json::to_string(&policy).map_err(|e| GwError::internal(e.to_string()))?;
            let done = match &stored {
                None => sqlx::query(
                    "INSERT INTO policies (scope, scope_id, org_id, body, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (scope, scope_id) DO NOTHING",
                )
                .bind(scope)
                .bind(id)
                .bind(org)
                .bind(&text)
                .bind(now_ms()),
                Some(old) => sqlx::query(
                    "UPDATE policies SET body = $4, updated_at = $5 WHERE scope = $1 AND scope_id = $2 AND body = $3",
                )
                .bind(scope)
                .bind(id)
                .bind(old.as_str())
                .bind(&text)
                .bind(now_ms()),
            }
            .execute(&self.pool)
            .await
            .map_err(db_error("storing a policy"))?;
            if done.rows_affected() == 1 {
                return Ok(policy);
            }
        }
        Err(GwError::new(
            ErrorCode::Unavailable,
            "the policy kept changing while it was patched; try again",
        ))
    }

    async fn set_key_text(&self, id: &str, column: &'static str, value: Option<&str>) -> Result<(), GwError> {
        let sql = match column {
            "name" => "UPDATE api_keys SET name = $1 WHERE id = $2",
            "metadata" => "UPDATE api_keys SET metadata = $1 WHERE id = $2",
            _ => "UPDATE api_keys SET routing_config = $1 WHERE id = $2",
        };
        sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error("updating a key"))?;
        Ok(())
    }

    async fn key_json(&self, id: &str) -> Result<Value, GwError> {
        let row = sqlx::query(key_select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading a key"))?
            .ok_or_else(|| not_found("key"))?;
        key_row(&row).map_err(db_error("reading a key"))
    }
}

fn key_row(r: &sqlx::any::AnyRow) -> Result<Value, sqlx::Error> {
    let metadata: Option<String> = r.try_get(5)?;
    let metadata: Value = metadata
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_else(|| json!({}));
    let secs = |ms: Option<i64>| ms.map(|ms| ms / 1000);
    Ok(json!({
        "object": "api_key",
        "id": r.try_get::<String, _>(0)?,
        "org_id": r.try_get::<String, _>(1)?,
        "project_id": r.try_get::<Option<String>, _>(2)?,
        "role": r.try_get::<String, _>(3)?,
        "name": r.try_get::<Option<String>, _>(4)?,
        "metadata": metadata,
        "routing_config": r.try_get::<Option<String>, _>(6)?,
        "created_at": secs(Some(r.try_get::<i64, _>(7)?)),
        "expires_at": secs(r.try_get::<Option<i64>, _>(8)?),
        "revoked_at": secs(r.try_get::<Option<i64>, _>(9)?),
    }))
}

fn org_json(id: &str, name: &str, created_ms: i64) -> Value {
    json!({"object": "organization", "id": id, "name": name, "created_at": created_ms / 1000})
}

fn project_json(id: &str, org: &str, name: &str, created_ms: i64) -> Value {
    json!({"object": "project", "id": id, "org_id": org, "name": name, "created_at": created_ms / 1000})
}

fn policy_json(scope: &str, id: &str, org: &str, p: &PolicyBody) -> Value {
    let mut v = json!(p);
    v["object"] = json!("policy");
    v["scope"] = json!(scope);
    v["scope_id"] = json!(id);
    v["org_id"] = json!(org);
    v
}

/// An expiry in Unix seconds as stored milliseconds; it must be in the future.
fn expiry(secs: i64) -> Result<i64, GwError> {
    let ms = secs
        .checked_mul(1000)
        .filter(|ms| *ms > now_ms())
        .ok_or_else(|| GwError::invalid("expires_at", "expires_at must be a future Unix time in seconds"))?;
    Ok(ms)
}
