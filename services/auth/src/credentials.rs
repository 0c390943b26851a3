//! BYOK: orgs' own provider credentials, sealed at rest.
//!
//! A credential is a provider type, its non-secret settings (stored as JSON)
//! and its secrets, stored only sealed: AES-256-GCM under a key derived from
//! the master key for this purpose alone (HKDF-SHA256, info
//! `llmgw provider credentials v1`), a fresh random 96-bit nonce per write,
//! and `org_id \0 name \0 type` as associated data, so a sealed value moved
//! to another org or row no longer opens. Each row records the key's
//! fingerprint (`key_version`); `LLMGW_MASTER_KEY_PREVIOUS` keeps the rows
//! of the previous master key readable until
//! [`AuthStore::rotate_credentials`] has re-sealed them.
//!
//! Secrets leave this module only in [`AuthStore::get_credential`], for the
//! provider-adapter; the admin API shows settings, never a secret, and
//! nothing here logs one.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use llmgw_kit::config::{ProviderKind, ProviderSpec, provider_config, valid_provider_name};
use llmgw_kit::db::db_error;
use llmgw_kit::secret::Secret;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;

use crate::admin::{body, not_found, reply};
use crate::keys;
use crate::store::{AuthStore, now_ms};

/// HKDF info: this key seals provider credentials and nothing else.
const KEY_INFO: &[u8] = b"llmgw provider credentials v1";

/// Longest secret or setting, in bytes (a service-account JSON is ~2.5 KB).
const MAX_VALUE_BYTES: usize = 32 * 1024;

/// Most credentials an org holds.
const MAX_PER_ORG: i64 = 256;

/// One sealing key and its fingerprint.
#[derive(Clone)]
struct SealKey {
    version: String,
    key: Arc<LessSafeKey>,
}

impl SealKey {
    fn derive(master_key: &Secret) -> Result<Self, GwError> {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let mut bytes = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(master_key.expose().as_bytes())
            .expand(&[KEY_INFO], Len32)
            .and_then(|okm| okm.fill(&mut bytes))
            .map_err(|_| GwError::internal("cannot derive the credential key"))?;
        let fingerprint = Sha256::new()
            .chain_update(b"llmgw credential key version\0")
            .chain_update(bytes)
            .finalize();
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| GwError::internal("cannot key the credential cipher"))?;
        Ok(Self {
            version: hex::encode(&fingerprint[..4]),
            key: Arc::new(LessSafeKey::new(key)),
        })
    }
}

/// Seals with the current master key's credential key; opens with it or
/// with the previous master key's.
#[derive(Clone)]
pub(crate) struct Sealer {
    current: SealKey,
    previous: Option<SealKey>,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("version", &self.current.version)
            .finish_non_exhaustive()
    }
}

/// The associated data binding a sealed value to its row.
fn aad(org_id: &str, name: &str, kind: &str) -> Vec<u8> {
    [org_id.as_bytes(), b"\0", name.as_bytes(), b"\0", kind.as_bytes()].concat()
}

impl Sealer {
    pub(crate) fn new(master_key: &Secret, previous: Option<&Secret>) -> Result<Self, GwError> {
        Ok(Self {
            current: SealKey::derive(master_key)?,
            previous: previous.map(SealKey::derive).transpose()?,
            rng: SystemRandom::new(),
        })
    }

    /// The current key's fingerprint.
    pub(crate) fn version(&self) -> &str {
        &self.current.version
    }

    /// `plaintext` sealed for the row (org, name, type): base64 of nonce ||
    /// ciphertext || tag, and the key version.
    pub(crate) fn seal(
        &self,
        org_id: &str,
        name: &str,
        kind: &str,
        plaintext: &[u8],
    ) -> Result<String, GwError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| GwError::internal("no randomness available"))?;
        let mut sealed = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(org_id, name, kind)),
                &mut sealed,
            )
            .map_err(|_| GwError::internal("cannot seal a credential"))?;
        Ok(BASE64.encode([&nonce[..], &sealed].concat()))
    }

    /// Opens a sealed value of the row (org, name, type) sealed under key
    /// `version`. Fails (without saying more) when the key is unknown or the
    /// value was tampered with or moved.
    pub(crate) fn open(
        &self,
        org_id: &str,
        name: &str,
        kind: &str,
        sealed: &str,
        version: &str,
    ) -> Result<Vec<u8>, GwError> {
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.version == version)
            .ok_or_else(|| {
                GwError::internal(format!(
                    "a provider credential is sealed with key version {version}, which is neither \
                     LLMGW_MASTER_KEY nor LLMGW_MASTER_KEY_PREVIOUS"
                ))
            })?;
        let bytes = BASE64
            .decode(sealed)
            .map_err(|_| GwError::internal("a stored provider credential is unreadable"))?;
        if bytes.len() < NONCE_LEN {
            return Err(GwError::internal("a stored provider credential is unreadable"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| GwError::internal("a stored provider credential is unreadable"))?;
        let mut rest = rest.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(aad(org_id, name, kind)), &mut rest)
            .map_err(|_| GwError::internal("a stored provider credential does not open under its key"))?;
        Ok(plain.to_vec())
    }
}

/// The secret part of a credential: stored only sealed.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Secrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_ad_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Vertex AI service-account JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

/// The settings a credential shows: nothing secret.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
}

/// `POST /admin/v1/orgs/{org}/credentials`: one flat object, split into
/// settings and secrets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    base_url: Option<String>,
    api_version: Option<String>,
    region: Option<String>,
    project_id: Option<String>,
    location: Option<String>,
    default_model: Option<String>,
    api_key: Option<String>,
    azure_ad_token: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    credentials: Option<String>,
}

impl CreateBody {
    fn settings(&self) -> Settings {
        let keep = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        Settings {
            base_url: keep(&self.base_url).map(|u| u.trim_end_matches('/').to_owned()),
            api_version: keep(&self.api_version),
            region: keep(&self.region),
            project_id: keep(&self.project_id),
            location: keep(&self.location),
            default_model: keep(&self.default_model),
        }
    }

    fn secrets(&self) -> Secrets {
        let keep = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        Secrets {
            api_key: keep(&self.api_key),
            azure_ad_token: keep(&self.azure_ad_token),
            access_key_id: keep(&self.access_key_id),
            secret_access_key: keep(&self.secret_access_key),
            session_token: keep(&self.session_token),
            credentials: keep(&self.credentials),
        }
    }
}

impl Settings {
    fn values(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("base_url", self.base_url.as_deref()),
            ("api_version", self.api_version.as_deref()),
            ("region", self.region.as_deref()),
            ("project_id", self.project_id.as_deref()),
            ("location", self.location.as_deref()),
            ("default_model", self.default_model.as_deref()),
        ]
    }
}

impl Secrets {
    fn values(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("api_key", self.api_key.as_deref()),
            ("azure_ad_token", self.azure_ad_token.as_deref()),
            ("access_key_id", self.access_key_id.as_deref()),
            ("secret_access_key", self.secret_access_key.as_deref()),
            ("session_token", self.session_token.as_deref()),
            ("credentials", self.credentials.as_deref()),
        ]
    }
}

/// The provider spec a credential stands for.
fn spec(name: &str, kind: &str, settings: Settings, secrets: Secrets) -> ProviderSpec {
    ProviderSpec {
        name: name.to_owned(),
        kind: kind.to_owned(),
        base_url: settings.base_url,
        api_key: secrets.api_key,
        default_model: settings.default_model,
        api_version: settings.api_version,
        azure_ad_token: secrets.azure_ad_token,
        project_id: settings.project_id,
        location: settings.location,
        credentials: secrets.credentials,
        region: settings.region,
        access_key_id: secrets.access_key_id,
        secret_access_key: secrets.secret_access_key,
        session_token: secrets.session_token,
        ..ProviderSpec::default()
    }
}

/// The fields a validation message may name, for its `param`.
const FIELDS: [&str; 13] = [
    "name",
    "type",
    "base_url",
    "api_version",
    "region",
    "project_id",
    "location",
    "default_model",
    "api_key",
    "azure_ad_token",
    "access_key_id",
    "secret_access_key",
    "credentials",
];

/// No caller-controlled upstream URL: a credential's `base_url` must be
/// under one of the operator's `byok.allowed_base_urls`, or, for Azure
/// OpenAI (whose endpoint is the customer's own resource), an Azure OpenAI
/// host: `https://<resource>.openai.azure.com` or
/// `https://<resource>.cognitiveservices.azure.com`.
pub(crate) fn check_base_url(
    kind: ProviderKind,
    url: Option<&str>,
    allowed: &[String],
) -> Result<(), GwError> {
    let Some(url) = url else { return Ok(()) };
    let under = |prefix: &String| {
        let prefix = prefix.trim_end_matches('/');
        !prefix.is_empty()
            && url
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if allowed.iter().any(under) {
        return Ok(());
    }
    if kind == ProviderKind::AzureOpenAi {
        let host = url
            .strip_prefix("https://")
            .map(|h| h.trim_end_matches('/'))
            .unwrap_or_default();
        let resource = host
            .strip_suffix(".openai.azure.com")
            .or_else(|| host.strip_suffix(".cognitiveservices.azure.com"));
        if resource.is_some_and(|r| {
            !r.is_empty() && r.len() <= 63 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            return Ok(());
        }
        return Err(GwError::invalid(
            "base_url",
            "base_url must be https://<resource>.openai.azure.com or https://<resource>.cognitiveservices.azure.com",
        ));
    }
    Err(GwError::invalid(
        "base_url",
        format!(
            "base_url cannot be set for type `{kind}`: it uses its own endpoint (an operator may allow \
             URL prefixes in `byok.allowed_base_urls`)"
        ),
    ))
}

/// Validates a credential's settings and secrets as the config loader
/// validates `providers:` entries, plus the BYOK rules. Returns its type
/// (`google` with a project and location is `vertex-ai`).
fn validate(b: &CreateBody, allowed: &[String]) -> Result<ProviderKind, GwError> {
    if !valid_provider_name(&b.name) || b.name.len() > 64 {
        return Err(GwError::invalid(
            "name",
            "name must be 1 to 64 letters, digits, `-`, `_` or `.`",
        ));
    }
    let kind = ProviderKind::parse(&b.kind).ok_or_else(|| {
        GwError::invalid(
            "type",
            format!(
                "unknown provider type; one of: {}",
                ProviderKind::names().join(", ")
            ),
        )
    })?;
    let (settings, secrets) = (b.settings(), b.secrets());
    for (field, value) in settings.values().into_iter().chain(secrets.values()) {
        if let Some(v) = value
            && (v.len() > MAX_VALUE_BYTES || v.contains('\0'))
        {
            return Err(GwError::invalid(
                field,
                format!("{field} must be at most {MAX_VALUE_BYTES} bytes, without NUL"),
            ));
        }
    }
    check_base_url(kind, settings.base_url.as_deref(), allowed)?;
    let config =
        provider_config(spec(&b.name, &b.kind, settings, secrets), kind, "credential").map_err(|e| {
            // The message names the field in backticks; it never holds a secret.
            let param = e
                .message
                .split('`')
                .skip(1)
                .step_by(2)
                .find_map(|t| FIELDS.iter().find(|f| t.ends_with(*f)))
                .copied()
                .unwrap_or("body");
            GwError::invalid(param, e.message)
        })?;
    let needs_key = !matches!(
        config.kind,
        ProviderKind::AzureOpenAi | ProviderKind::VertexAi | ProviderKind::Bedrock | ProviderKind::Ollama
    );
    if needs_key && config.api_key.is_none() {
        return Err(GwError::invalid(
            "api_key",
            format!("`api_key` is required for type `{}`", config.kind),
        ));
    }
    Ok(config.kind)
}

/// How a rotation went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotated {
    /// Rows re-sealed with the current key.
    pub rotated: u64,
    /// Rows already under the current key.
    pub current: u64,
}

fn credential_json(id: &str, org_id: &str, name: &str, kind: &str, settings: &str, created_ms: i64) -> Value {
    let settings: Value = serde_json::from_str(settings).unwrap_or_else(|_| json!({}));
    json!({
        "object": "provider_credential",
        "id": id,
        "org_id": org_id,
        "name": name,
        "type": kind,
        "settings": settings,
        "created_at": created_ms / 1000,
    })
}

impl AuthStore {
    /// `POST /admin/v1/orgs/{org}/credentials`: validates, seals, stores.
    pub(crate) async fn credential_create(
        &self,
        org_id: &str,
        body_json: &str,
    ) -> Result<pb::AdminReply, GwError> {
        let b: CreateBody = body(body_json)?;
        let kind = validate(&b, &self.allowed_base_urls)?.as_str();
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM provider_credentials WHERE org_id = $1")
            .bind(org_id)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_error("counting credentials"))?;
        if count >= MAX_PER_ORG {
            return Err(GwError::invalid(
                "name",
                format!("an org holds at most {MAX_PER_ORG} credentials"),
            ));
        }
        let id = keys::new_id("cred")?;
        let settings = serde_json::to_string(&b.settings()).map_err(|e| GwError::internal(e.to_string()))?;
        let secrets = serde_json::to_vec(&b.secrets()).map_err(|e| GwError::internal(e.to_string()))?;
        let sealed = self.sealer.seal(org_id, &b.name, kind, &secrets)?;
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO provider_credentials (id, org_id, name, type, settings, ciphertext, key_version, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (org_id, name) DO NOTHING",
        )
        .bind(&id)
        .bind(org_id)
        .bind(&b.name)
        .bind(kind)
        .bind(&settings)
        .bind(&sealed)
        .bind(self.sealer.version())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_error("storing a credential"))?;
        if done.rows_affected() == 0 {
            return Err(GwError::invalid(
                "name",
                "a credential with this name exists in the org",
            ));
        }
        tracing::info!(credential_id = %id, org_id, name = %b.name, kind, "stored a provider credential");
        Ok(reply(
            201,
            &credential_json(&id, org_id, &b.name, kind, &settings, now),
        ))
    }

    /// `GET /admin/v1/orgs/{org}/credentials`: names, types and settings.
    pub(crate) async fn credential_list(&self, org_id: &str) -> Result<pb::AdminReply, GwError> {
        let rows = sqlx::query(
            "SELECT id, org_id, name, type, settings, created_at FROM provider_credentials \
             WHERE org_id = $1 ORDER BY name",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("listing credentials"))?;
        let data = rows
            .iter()
            .map(|r| {
                Ok(credential_json(
                    &r.try_get::<String, _>(0)?,
                    &r.try_get::<String, _>(1)?,
                    &r.try_get::<String, _>(2)?,
                    &r.try_get::<String, _>(3)?,
                    &r.try_get::<String, _>(4)?,
                    r.try_get(5)?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_error("listing credentials"))?;
        Ok(reply(200, &json!({"object": "list", "data": data})))
    }

    /// `DELETE /admin/v1/credentials/{id}`, once the caller's org is checked.
    pub(crate) async fn credential_delete(&self, id: &str, org_id: &str) -> Result<pb::AdminReply, GwError> {
        let done = sqlx::query("DELETE FROM provider_credentials WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .execute(&self.pool)
            .await
            .map_err(db_error("deleting a credential"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("credential"));
        }
        tracing::info!(credential_id = id, org_id, "deleted a provider credential");
        Ok(reply(
            200,
            &json!({"object": "provider_credential", "id": id, "deleted": true}),
        ))
    }

    /// The org owning credential `id`, if any.
    pub(crate) async fn credential_org(&self, id: &str) -> Result<Option<String>, GwError> {
        let row = sqlx::query("SELECT org_id FROM provider_credentials WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading a credential"))?;
        row.map(|r| r.try_get(0))
            .transpose()
            .map_err(db_error("reading a credential"))
    }

    /// The org's credentials as the principal carries them: no secrets.
    pub(crate) async fn org_providers(&self, org_id: &str) -> Result<Vec<pb::OrgProvider>, GwError> {
        let rows = sqlx::query(
            "SELECT id, name, type, settings FROM provider_credentials WHERE org_id = $1 ORDER BY name",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("reading credentials"))?;
        rows.iter()
            .map(|r| {
                let settings: String = r.try_get(3)?;
                let settings: Settings = serde_json::from_str(&settings).unwrap_or_default();
                Ok(pb::OrgProvider {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    r#type: r.try_get(2)?,
                    default_model: settings.default_model,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_error("reading credentials"))
    }

    /// A credential of `org_id`, opened: for the provider-adapter only.
    /// Another org's credential is NOT_FOUND, as a missing one is.
    pub async fn get_credential(&self, org_id: &str, id: &str) -> Result<pb::ProviderCredential, GwError> {
        let row = sqlx::query(
            "SELECT name, type, settings, ciphertext, key_version FROM provider_credentials \
             WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error("reading a credential"))?
        .ok_or_else(|| GwError::new(ErrorCode::NotFound, "no such provider credential"))?;
        let read = || -> Result<(String, String, String, String, String), sqlx::Error> {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            ))
        };
        let (name, kind, settings, sealed, version) = read().map_err(db_error("reading a credential"))?;
        let secrets = self.sealer.open(org_id, &name, &kind, &sealed, &version)?;
        let secrets_json = String::from_utf8(secrets)
            .map_err(|_| GwError::internal("a stored provider credential is unreadable"))?;
        Ok(pb::ProviderCredential {
            id: id.to_owned(),
            org_id: org_id.to_owned(),
            name,
            r#type: kind,
            settings_json: settings,
            secrets_json,
        })
    }

    /// Re-seals every credential not under the current master key's key
    /// (those of `LLMGW_MASTER_KEY_PREVIOUS`); safe to run again, and
    /// alongside running services (a row changed meanwhile is left alone).
    pub async fn rotate_credentials(&self) -> Result<Rotated, GwError> {
        let rows =
            sqlx::query("SELECT id, org_id, name, type, ciphertext, key_version FROM provider_credentials")
                .fetch_all(&self.pool)
                .await
                .map_err(db_error("reading credentials"))?;
        let mut out = Rotated::default();
        for r in rows {
            let read = || -> Result<[String; 6], sqlx::Error> {
                Ok([
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                ])
            };
            let [id, org_id, name, kind, sealed, version] =
                read().map_err(db_error("reading credentials"))?;
            if version == self.sealer.version() {
                out.current += 1;
                continue;
            }
            let plain = self.sealer.open(&org_id, &name, &kind, &sealed, &version)?;
            let resealed = self.sealer.seal(&org_id, &name, &kind, &plain)?;
            let done = sqlx::query(
                "UPDATE provider_credentials SET ciphertext = $1, key_version = $2 WHERE id = $3 AND key_version = $4",
            )
            .bind(&resealed)
            .bind(self.sealer.version())
            .bind(&id)
            .bind(&version)
            .execute(&self.pool)
            .await
            .map_err(db_error("re-sealing a credential"))?;
            out.rotated += done.rows_affected();
        }
        tracing::info!(
            rotated = out.rotated,
            current = out.current,
            "provider credentials re-sealed"
        );
        Ok(out)
    }
}
