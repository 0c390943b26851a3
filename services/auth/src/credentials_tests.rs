//! BYOK provider credentials on both backends: sealed at rest, never shown,
//! bound to their row, rotated, and kept inside their org.

use std::collections::HashMap;

use base64::Engine as _;
use llmgw_kit::config::ProviderKind;
use llmgw_kit::on_both_backends;
use llmgw_kit::testing::TestDb;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use pb::{AdminOp, KeyRole};
use serde_json::{Value, json};
use sqlx::Row as _;

use super::*;
use crate::credentials::check_base_url;
use crate::governance_tests::caller;

on_both_backends!(
    credentials_are_sealed_and_never_shown,
    credentials_are_validated_like_config_providers,
    a_sealed_credential_is_bound_to_its_row,
    credentials_rotate_to_a_new_master_key,
    credentials_stay_inside_their_org,
);

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SECRET: &str = "sk-acme-very-secret-provider-key-123";

async fn store_with(db: &TestDb, current: &str, previous: Option<&str>, allowed: &[&str]) -> AuthStore {
    let mut env = HashMap::from([("LLMGW_MASTER_KEY".to_owned(), current.to_owned())]);
    if let Some(p) = previous {
        env.insert("LLMGW_MASTER_KEY_PREVIOUS".to_owned(), p.to_owned());
    }
    let mut config = db.config_in(db.dir(), &env);
    config.byok.allowed_base_urls = allowed.iter().map(|s| (*s).to_owned()).collect();
    open(&config).await.unwrap()
}

async fn store(db: &TestDb) -> AuthStore {
    store_with(db, KEY_A, None, &["http://127.0.0.1:1234/v1"]).await
}

/// The reply's raw text, and its JSON.
async fn admin(
    store: &AuthStore,
    who: &pb::Principal,
    op: AdminOp,
    id: &str,
    body: Value,
) -> Result<(String, Value), GwError> {
    let reply = store
        .admin(pb::AdminCall {
            caller: Some(who.clone()),
            op: op as i32,
            scope: String::new(),
            id: id.to_owned(),
            body_json: if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
        })
        .await?;
    let v = serde_json::from_str(&reply.body_json).unwrap();
    Ok((reply.body_json, v))
}

async fn create(store: &AuthStore, who: &pb::Principal, org: &str, body: Value) -> Result<Value, GwError> {
    admin(store, who, AdminOp::CredentialCreate, org, body)
        .await
        .map(|(_, v)| v)
}

async fn credentials_are_sealed_and_never_shown(db: TestDb) {
    let store = store(&db).await;
    let acme = store.create_key("acme", None).await.unwrap();
    let who = caller(&acme.org_id, KeyRole::Admin);
    let (text, created) = admin(
        &store,
        &who,
        AdminOp::CredentialCreate,
        &acme.org_id,
        json!({"name": "mycred", "type": "openai", "api_key": SECRET, "default_model": "gpt-4o-mini"}),
    )
    .await
    .unwrap();
    assert!(!text.contains(SECRET), "{text}");
    assert_eq!(created["name"], "mycred");
    assert_eq!(created["type"], "openai");
    assert_eq!(created["settings"], json!({"default_model": "gpt-4o-mini"}));
    let id = created["id"].as_str().unwrap().to_owned();

    let (text, list) = admin(&store, &who, AdminOp::CredentialList, &acme.org_id, Value::Null)
        .await
        .unwrap();
    assert!(!text.contains(SECRET) && !text.contains("api_key"), "{text}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // At rest: neither the text nor its base64 holds the secret.
    let row = sqlx::query("SELECT settings, ciphertext, key_version FROM provider_credentials WHERE id = $1")
        .bind(&id)
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let settings: String = row.get(0);
    let sealed: String = row.get(1);
    let version: String = row.get(2);
    assert!(!settings.contains(SECRET) && !sealed.contains(SECRET));
    let raw = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("sk-acme"));
    assert_eq!(version.len(), 8);
    // Two writes of the same secret never look alike (fresh nonce).
    create(
        &store,
        &who,
        &acme.org_id,
        json!({"name": "twin", "type": "openai", "api_key": SECRET}),
    )
    .await
    .unwrap();
    let sealed2: String = sqlx::query("SELECT ciphertext FROM provider_credentials WHERE name = 'twin'")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert_ne!(sealed, sealed2);

    // The adapter's view: opened, for this org only.
    let cred = store.get_credential(&acme.org_id, &id).await.unwrap();
    let secrets: Value = serde_json::from_str(&cred.secrets_json).unwrap();
    assert_eq!(secrets["api_key"], SECRET);
    assert_eq!(cred.r#type, "openai");
    let beta = store.create_key("beta", None).await.unwrap();
    let e = store.get_credential(&beta.org_id, &id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);

    // The principal carries names and types, never secrets.
    let auth = crate::service(store.clone());
    let p = auth
        .authenticate(pb::AuthenticateRequest {
            api_key: acme.key.expose().to_owned(),
        })
        .await
        .unwrap();
    let names: Vec<_> = p
        .providers
        .iter()
        .map(|c| (c.name.as_str(), c.r#type.as_str()))
        .collect();
    assert_eq!(names, [("mycred", "openai"), ("twin", "openai")]);
    assert_eq!(p.providers[0].default_model.as_deref(), Some("gpt-4o-mini"));
    assert!(!format!("{p:?}").contains(SECRET));
    let p = auth
        .authenticate(pb::AuthenticateRequest {
            api_key: beta.key.expose().to_owned(),
        })
        .await
        .unwrap();
    assert!(p.providers.is_empty());
}

async fn credentials_are_validated_like_config_providers(db: TestDb) {
    let store = store(&db).await;
    let acme = store.create_key("acme", None).await.unwrap();
    let who = caller(&acme.org_id, KeyRole::Admin);
    let org = acme.org_id.as_str();
    let refused = |body: Value, param: &'static str| {
        let store = store.clone();
        let who = who.clone();
        async move {
            let e = create(&store, &who, org, body.clone()).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{body}: {e:?}");
            assert_eq!(e.param(), Some(param), "{body}: {e:?}");
            assert!(!e.message().contains(SECRET), "{e:?}");
        }
    };
    refused(json!({"name": "x", "type": "nope", "api_key": SECRET}), "type").await;
    refused(
        json!({"name": "bad name", "type": "openai", "api_key": SECRET}),
        "name",
    )
    .await;
    refused(json!({"name": "x", "type": "openai"}), "api_key").await;
    refused(
        json!({"name": "x", "type": "openai", "api_key": SECRET, "headers": {"a": "b"}}),
        "headers",
    )
    .await;
    // No caller-controlled upstream URL.
    refused(
        json!({"name": "x", "type": "openai", "api_key": SECRET, "base_url": "http://169.254.169.254/v1"}),
        "base_url",
    )
    .await;
    refused(
        json!({"name": "x", "type": "openai-compatible", "api_key": SECRET}),
        "base_url",
    )
    .await;
    refused(
        json!({"name": "x", "type": "openai", "api_key": SECRET, "base_url": "http://127.0.0.1:12345/v1"}),
        "base_url",
    )
    .await;
    refused(
        json!({"name": "x", "type": "azure-openai", "api_key": SECRET, "base_url": "https://evil.example/openai.azure.com"}),
        "base_url",
    )
    .await;
    refused(
        json!({"name": "x", "type": "azure-openai", "api_key": SECRET}),
        "base_url",
    )
    .await;
    refused(
        json!({"name": "x", "type": "bedrock", "region": "us-east-1", "access_key_id": "AKIA"}),
        "secret_access_key",
    )
    .await;
    refused(
        json!({"name": "x", "type": "bedrock", "region": "evil.example/#", "access_key_id": "AKIA", "secret_access_key": SECRET}),
        "region",
    )
    .await;
    refused(
        json!({"name": "x", "type": "vertex-ai", "project_id": "p", "location": "us-central1"}),
        "credentials",
    )
    .await;

    for (name, body) in [
        (
            "az",
            json!({"type": "azure-openai", "api_key": SECRET, "base_url": "https://acme-res.openai.azure.com"}),
        ),
        (
            "br",
            json!({"type": "bedrock", "region": "us-east-1", "access_key_id": "AKIA", "secret_access_key": SECRET}),
        ),
        (
            "gv",
            json!({"type": "google", "project_id": "p", "location": "us-central1", "credentials": "{}"}),
        ),
        (
            "own",
            json!({"type": "openai", "api_key": SECRET, "base_url": "http://127.0.0.1:1234/v1/"}),
        ),
    ] {
        let mut body = body;
        body["name"] = json!(name);
        let v = create(&store, &who, org, body).await.unwrap();
        assert!(!v.to_string().contains(SECRET));
        assert!(!v.to_string().contains("AKIA"), "access_key_id is a secret: {v}");
    }
    let list = admin(&store, &who, AdminOp::CredentialList, org, Value::Null)
        .await
        .unwrap()
        .1;
    let kinds: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["azure-openai", "bedrock", "vertex-ai", "openai"]);
    refused(json!({"name": "az", "type": "openai", "api_key": SECRET}), "name").await;

    assert!(
        check_base_url(
            ProviderKind::OpenAi,
            Some("http://a/v1"),
            &["http://a/v1/".into()]
        )
        .is_ok()
    );
    assert!(
        check_base_url(
            ProviderKind::OpenAi,
            Some("http://a/v10"),
            &["http://a/v1".into()]
        )
        .is_err()
    );
    assert!(check_base_url(ProviderKind::OpenAi, Some("http://a"), &["".into()]).is_err());
    assert!(
        check_base_url(
            ProviderKind::AzureOpenAi,
            Some("https://r.cognitiveservices.azure.com/"),
            &[]
        )
        .is_ok()
    );
    assert!(
        check_base_url(
            ProviderKind::AzureOpenAi,
            Some("https://r.openai.azure.com.evil.example"),
            &[]
        )
        .is_err()
    );
}

async fn a_sealed_credential_is_bound_to_its_row(db: TestDb) {
    let store = store(&db).await;
    let acme = store.create_key("acme", None).await.unwrap();
    let beta = store.create_key("beta", None).await.unwrap();
    let platform = caller("", KeyRole::PlatformAdmin);
    let a = create(
        &store,
        &platform,
        &acme.org_id,
        json!({"name": "c", "type": "openai", "api_key": SECRET}),
    )
    .await
    .unwrap();
    let b = create(
        &store,
        &platform,
        &beta.org_id,
        json!({"name": "c", "type": "openai", "api_key": "sk-beta"}),
    )
    .await
    .unwrap();
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    // Moving acme's sealed secret into beta's row: it no longer opens.
    sqlx::query(
        "UPDATE provider_credentials SET ciphertext = (SELECT ciphertext FROM provider_credentials WHERE id = $1) \
         WHERE id = $2",
    )
    .bind(a_id)
    .bind(b_id)
    .execute(&store.pool)
    .await
    .unwrap();
    let e = store.get_credential(&beta.org_id, b_id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(!e.message().contains(SECRET));
    // Nor does a renamed or retyped row, nor a tampered one.
    store.get_credential(&acme.org_id, a_id).await.unwrap();
    for sql in [
        "UPDATE provider_credentials SET name = 'other' WHERE id = $1",
        "UPDATE provider_credentials SET name = 'c', type = 'groq' WHERE id = $1",
    ] {
        sqlx::query(sql).bind(a_id).execute(&store.pool).await.unwrap();
        assert!(store.get_credential(&acme.org_id, a_id).await.is_err(), "{sql}");
    }
}

async fn credentials_rotate_to_a_new_master_key(db: TestDb) {
    let old = store_with(&db, KEY_A, None, &[]).await;
    let acme = old.create_key("acme", None).await.unwrap();
    let created = create(
        &old,
        &caller(&acme.org_id, KeyRole::Admin),
        &acme.org_id,
        json!({"name": "c", "type": "anthropic", "api_key": SECRET}),
    )
    .await
    .unwrap();
    let id = created["id"].as_str().unwrap();
    let opened = |s: &AuthStore| {
        let s = s.clone();
        let org = acme.org_id.clone();
        let id = id.to_owned();
        async move { s.get_credential(&org, &id).await }
    };

    // The new key alone cannot open the old rows; with the previous key set
    // it can, and a rotation re-seals them under the new key.
    let new_only = store_with(&db, KEY_B, None, &[]).await;
    let e = opened(&new_only).await.unwrap_err();
    assert!(e.message().contains("LLMGW_MASTER_KEY_PREVIOUS"), "{e:?}");
    let both = store_with(&db, KEY_B, Some(KEY_A), &[]).await;
    assert!(opened(&both).await.unwrap().secrets_json.contains(SECRET));
    assert_eq!(
        both.rotate_credentials().await.unwrap(),
        Rotated {
            rotated: 1,
            current: 0
        }
    );
    assert_eq!(
        both.rotate_credentials().await.unwrap(),
        Rotated {
            rotated: 0,
            current: 1
        }
    );
    assert!(opened(&new_only).await.unwrap().secrets_json.contains(SECRET));
    assert!(opened(&old).await.is_err());
    assert_ne!(new_only.sealer.version(), old.sealer.version());

    // API keys hashed under the previous master key authenticate during the
    // rotation and are re-hashed under the new one.
    let authenticate = |s: &AuthStore| {
        let auth = crate::service(s.clone());
        let key = acme.key.expose().to_owned();
        async move { auth.authenticate(pb::AuthenticateRequest { api_key: key }).await }
    };
    assert!(authenticate(&new_only).await.is_err());
    assert_eq!(authenticate(&both).await.unwrap().org_id, acme.org_id);
    assert_eq!(authenticate(&new_only).await.unwrap().org_id, acme.org_id);
}

async fn credentials_stay_inside_their_org(db: TestDb) {
    let store = store(&db).await;
    let acme = store.create_key("acme", None).await.unwrap();
    let beta = store.create_key("beta", None).await.unwrap();
    let acme_admin = caller(&acme.org_id, KeyRole::Admin);
    let beta_admin = caller(&beta.org_id, KeyRole::Admin);
    let c = create(
        &store,
        &acme_admin,
        &acme.org_id,
        json!({"name": "c", "type": "openai", "api_key": SECRET}),
    )
    .await
    .unwrap();
    let id = c["id"].as_str().unwrap();

    let member = caller(&acme.org_id, KeyRole::Member);
    let e = admin(
        &store,
        &member,
        AdminOp::CredentialList,
        &acme.org_id,
        Value::Null,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    for (op, on) in [
        (AdminOp::CredentialList, acme.org_id.as_str()),
        (AdminOp::CredentialCreate, acme.org_id.as_str()),
        (AdminOp::CredentialDelete, id),
        (AdminOp::CredentialDelete, "cred_nonexistent"),
    ] {
        let body = json!({"name": "d", "type": "openai", "api_key": "k"});
        let e = admin(&store, &beta_admin, op, on, body).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{op:?}");
    }
    let (_, deleted) = admin(&store, &acme_admin, AdminOp::CredentialDelete, id, Value::Null)
        .await
        .unwrap();
    assert_eq!(deleted["deleted"], true);
    let e = store.get_credential(&acme.org_id, id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
}

#[test]
fn a_credential_message_never_debugs_its_secrets() {
    let cred = pb::ProviderCredential {
        name: "c".into(),
        secrets_json: format!(r#"{{"api_key":"{SECRET}"}}"#),
        settings_json: r#"{"region":"us-east-1"}"#.into(),
        ..Default::default()
    };
    let shown = format!("{cred:?}");
    assert!(!shown.contains(SECRET) && !shown.contains("us-east-1"), "{shown}");
}
