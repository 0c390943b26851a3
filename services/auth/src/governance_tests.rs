//! The admin API, policies and budgets on both backends (SQLite files and a
//! throwaway PostgreSQL server), through the store and the service.

use std::collections::HashMap;

use llmgw_kit::on_both_backends;
use llmgw_kit::testing::TestDb;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use pb::{AdminOp, KeyRole};
use serde_json::{Value, json};

use super::*;

on_both_backends!(
    admin_operations_stay_inside_the_callers_org,
    keys_rotate_and_revoke,
    policies_reach_the_principal,
    policy_patches_change_only_what_they_name,
    budgets_hold_under_concurrent_admissions,
    stale_reservations_are_settled_at_their_amount,
);

async fn store(db: &TestDb) -> AuthStore {
    open(&db.config_in(db.dir(), &HashMap::new())).await.unwrap()
}

/// What `created` authenticates to.
async fn principal_of(store: &AuthStore, created: &CreatedKey) -> pb::Principal {
    service(store.clone())
        .authenticate(pb::AuthenticateRequest {
            api_key: created.key.expose().to_owned(),
        })
        .await
        .unwrap()
}

pub(crate) fn caller(org_id: &str, role: KeyRole) -> pb::Principal {
    pb::Principal {
        org_id: org_id.to_owned(),
        role: role as i32,
        ..Default::default()
    }
}

async fn admin(
    store: &AuthStore,
    who: &pb::Principal,
    op: AdminOp,
    scope: &str,
    id: &str,
    body: Value,
) -> Result<Value, GwError> {
    let reply = store
        .admin(pb::AdminCall {
            caller: Some(who.clone()),
            op: op as i32,
            scope: scope.to_owned(),
            id: id.to_owned(),
            body_json: if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
        })
        .await?;
    Ok(serde_json::from_str(&reply.body_json).unwrap())
}

async fn admin_operations_stay_inside_the_callers_org(db: TestDb) {
    let store = store(&db).await;
    let acme = store.create_key("acme", None).await.unwrap();
    let platform = caller("", KeyRole::PlatformAdmin);
    let beta = admin(
        &store,
        &platform,
        AdminOp::OrgCreate,
        "",
        "",
        json!({"name": "beta"}),
    )
    .await
    .unwrap();
    let beta_id = beta["id"].as_str().unwrap().to_owned();
    let beta_admin = caller(&beta_id, KeyRole::Admin);

    let member = caller(&beta_id, KeyRole::Member);
    let e = admin(&store, &member, AdminOp::OrgList, "", "", Value::Null)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    let e = admin(
        &store,
        &beta_admin,
        AdminOp::OrgCreate,
        "",
        "",
        json!({"name": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);

    let list = admin(&store, &beta_admin, AdminOp::OrgList, "", "", Value::Null)
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let all = admin(&store, &platform, AdminOp::OrgList, "", "", Value::Null)
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);

    // Everything of acme is "not found" to beta's admin.
    for (op, scope, id) in [
        (AdminOp::OrgGet, "", acme.org_id.as_str()),
        (AdminOp::KeyList, "", acme.org_id.as_str()),
        (AdminOp::KeyCreate, "", acme.org_id.as_str()),
        (AdminOp::ProjectList, "", acme.org_id.as_str()),
        (AdminOp::KeyGet, "", acme.key_id.as_str()),
        (AdminOp::KeyRevoke, "", acme.key_id.as_str()),
        (AdminOp::KeyRotate, "", acme.key_id.as_str()),
        (AdminOp::PolicyGet, "key", acme.key_id.as_str()),
        (AdminOp::PolicyPut, "org", acme.org_id.as_str()),
        (AdminOp::BudgetStatus, "org", acme.org_id.as_str()),
    ] {
        let e = admin(&store, &beta_admin, op, scope, id, json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{op:?}");
        assert!(!e.message().contains(id), "{op:?} echoes the id");
    }

    // Its own: a project and a key, listed without any secret.
    let project = admin(
        &store,
        &beta_admin,
        AdminOp::ProjectCreate,
        "",
        &beta_id,
        json!({"name": "p"}),
    )
    .await
    .unwrap();
    let key = admin(
        &store,
        &beta_admin,
        AdminOp::KeyCreate,
        "",
        &beta_id,
        json!({"project_id": project["id"], "metadata": {"team": "x"}}),
    )
    .await
    .unwrap();
    let secret = key["key"].as_str().unwrap();
    let listed = admin(&store, &beta_admin, AdminOp::KeyList, "", &beta_id, Value::Null)
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(secret));
    // A project of another org cannot hold beta's key.
    let other = store.create_key("gamma", Some("g")).await.unwrap();
    let e = admin(
        &store,
        &beta_admin,
        AdminOp::KeyCreate,
        "",
        &beta_id,
        json!({"project_id": other.project_id}),
    )
    .await
    .unwrap_err();
    assert_eq!((e.code(), e.param()), (ErrorCode::NotFound, Some("project_id")));
}

async fn keys_rotate_and_revoke(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", None).await.unwrap();
    let auth = service(store.clone());
    let admin_of = caller(&created.org_id, KeyRole::Admin);
    let rotated = admin(
        &store,
        &admin_of,
        AdminOp::KeyRotate,
        "",
        &created.key_id,
        Value::Null,
    )
    .await
    .unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let check = |key: String| {
        let auth = auth.clone();
        async move { auth.authenticate(pb::AuthenticateRequest { api_key: key }).await }
    };
    assert!(
        check(created.key.expose().to_owned()).await.is_err(),
        "the old secret is gone"
    );
    assert_eq!(
        check(new_key.clone()).await.unwrap().key_id,
        created.key_id,
        "same key"
    );
    admin(
        &store,
        &admin_of,
        AdminOp::KeyRevoke,
        "",
        &created.key_id,
        Value::Null,
    )
    .await
    .unwrap();
    assert!(check(new_key).await.is_err());
    let e = admin(
        &store,
        &admin_of,
        AdminOp::KeyRotate,
        "",
        &created.key_id,
        Value::Null,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest, "a revoked key stays revoked");
}

async fn policies_reach_the_principal(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", Some("p")).await.unwrap();
    let admin_of = caller(&created.org_id, KeyRole::Admin);
    admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "org",
        &created.org_id,
        json!({"denied_providers": ["x*"], "rpm": 60, "cache": {}}),
    )
    .await
    .unwrap();
    admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "key",
        &created.key_id,
        json!({"allowed_models": ["gpt-*"], "max_tokens": 10, "budgets": [{"period": "daily", "limit_usd": 2.5}], "cache": {"ttl": "10m"}}),
    )
    .await
    .unwrap();
    // An empty policy on the project adds nothing.
    let project = created.project_id.clone().unwrap();
    admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "project",
        &project,
        json!({}),
    )
    .await
    .unwrap();
    let p = principal_of(&store, &created).await;
    let mut scopes: Vec<&str> = p.policies.iter().map(|p| p.scope.as_str()).collect();
    scopes.sort_unstable();
    assert_eq!(scopes, ["key", "org"]);
    let key = p.policies.iter().find(|p| p.scope == "key").unwrap();
    assert_eq!((key.max_tokens, key.budgets[0].limit_usd), (Some(10), 2.5));
    assert_eq!(key.cache_ttl_secs, Some(600), "the key's cache TTL");
    let org = p.policies.iter().find(|p| p.scope == "org").unwrap();
    assert_eq!(org.cache_ttl_secs, Some(0), "cache: {{}} is the default TTL");
    assert_eq!(
        (org.rpm, org.denied_providers.as_slice()),
        (Some(60), &["x*".to_owned()][..])
    );
    let e = admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "key",
        &created.key_id,
        json!({"budgets": [{"period": "weekly", "limit_usd": 1}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.param(), Some("budgets"));
    let e = admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "key",
        &created.key_id,
        json!({"cache": {"ttl": "0s"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.param(), Some("cache"));
}

async fn policy_patches_change_only_what_they_name(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", None).await.unwrap();
    let admin_of = caller(&created.org_id, KeyRole::Admin);
    let key = created.key_id.as_str();
    let patch = |body: Value| admin(&store, &admin_of, AdminOp::PolicyPatch, "key", key, body);
    // No policy yet: the patch applies to the default.
    let p = patch(json!({"allowed_models": ["gpt-*"], "rpm": 60}))
        .await
        .unwrap();
    assert_eq!(
        (p["allowed_models"].clone(), p["rpm"].clone()),
        (json!(["gpt-*"]), json!(60))
    );
    // The limits alone, then the budgets alone; the rest stays.
    patch(json!({"tpm": 1000, "rpm": 30})).await.unwrap();
    let p = patch(json!({"budgets": [{"period": "daily", "limit_usd": 5}]}))
        .await
        .unwrap();
    assert_eq!(p["allowed_models"], json!(["gpt-*"]));
    assert_eq!((p["rpm"].clone(), p["tpm"].clone()), (json!(30), json!(1000)));
    assert_eq!(p["budgets"], json!([{"period": "daily", "limit_usd": 5.0}]));
    // `null` resets a field; a bad field is refused by name and changes nothing.
    let p = patch(json!({"rpm": null})).await.unwrap();
    assert_eq!((p["rpm"].clone(), p["tpm"].clone()), (Value::Null, json!(1000)));
    let e = patch(json!({"rpn": 5})).await.unwrap_err();
    assert_eq!(e.param(), Some("rpn"));
    // Only objects: serde would read a struct from an array of its fields.
    for not_an_object in [json!(["gpt-*"]), json!([null, null]), json!("x")] {
        let e = patch(not_an_object.clone()).await.unwrap_err();
        assert_eq!(e.param(), Some("body"), "{not_an_object}");
        for op in [AdminOp::KeyCreate, AdminOp::ProjectCreate] {
            let e = admin(&store, &admin_of, op, "", &created.org_id, not_an_object.clone())
                .await
                .unwrap_err();
            assert_eq!(e.param(), Some("body"), "{op:?} {not_an_object}");
        }
    }
    let e = patch(json!({"budgets": [{"period": "weekly", "limit_usd": 1}]}))
        .await
        .unwrap_err();
    assert_eq!(e.param(), Some("budgets"));
    assert!(patch(json!([1])).await.is_err());
    // Patches at once, each naming its own field: every one lands.
    let fields = [
        ("denied_models", json!(["o1*"])),
        ("allowed_providers", json!(["openai"])),
        ("denied_providers", json!(["x*"])),
        ("allowed_endpoints", json!(["chat"])),
        ("max_tokens", json!(100)),
        ("rpm", json!(7)),
    ];
    let patches = fields.iter().map(|(name, value)| {
        let mut body = serde_json::Map::new();
        body.insert((*name).to_owned(), value.clone());
        patch(Value::Object(body))
    });
    for result in futures_util::future::join_all(patches).await {
        result.unwrap();
    }
    let p = admin(&store, &admin_of, AdminOp::PolicyGet, "key", key, Value::Null)
        .await
        .unwrap();
    for (name, value) in &fields {
        assert_eq!(&p[*name], value, "{p}");
    }
    assert_eq!(
        (p["allowed_models"].clone(), p["tpm"].clone()),
        (json!(["gpt-*"]), json!(1000))
    );
}

async fn budgets_hold_under_concurrent_admissions(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", None).await.unwrap();
    let admin_of = caller(&created.org_id, KeyRole::Admin);
    admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "key",
        &created.key_id,
        json!({"budgets": [{"period": "total", "limit_usd": 1.0}]}),
    )
    .await
    .unwrap();
    let principal = principal_of(&store, &created).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (store, principal) = (store.clone(), principal.clone());
            tokio::spawn(async move {
                let r = store
                    .admit(pb::AdmitRequest {
                        principal: Some(principal),
                        request_id: format!("req_{i}"),
                        reserve_usd: 0.03,
                    })
                    .await;
                (i, r)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r {
            Ok(a) => {
                assert!(a.reserved);
                admitted.push(i);
            }
            Err(e) => assert_eq!(e.code(), ErrorCode::BudgetExceeded, "{e:?}"),
        }
    }
    assert_eq!(admitted.len(), 33, "33 × $0.03 fit in $1, a 34th does not");
    let status = admin(
        &store,
        &admin_of,
        AdminOp::BudgetStatus,
        "key",
        &created.key_id,
        Value::Null,
    )
    .await
    .unwrap();
    assert!(
        (status["data"][0]["reserved_usd"].as_f64().unwrap() - 0.99).abs() < 1e-9,
        "{status}"
    );
    for i in &admitted {
        for _ in 0..2 {
            // Settling twice counts once.
            store
                .settle(pb::SettleRequest {
                    request_id: format!("req_{i}"),
                    spent_usd: 0.01,
                })
                .await
                .unwrap();
        }
    }
    let status = admin(
        &store,
        &admin_of,
        AdminOp::BudgetStatus,
        "key",
        &created.key_id,
        Value::Null,
    )
    .await
    .unwrap();
    let b = &status["data"][0];
    assert!((b["spent_usd"].as_f64().unwrap() - 0.33).abs() < 1e-9, "{status}");
    assert!(b["reserved_usd"].as_f64().unwrap().abs() < 1e-9, "{status}");
}

async fn stale_reservations_are_settled_at_their_amount(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", None).await.unwrap();
    let admin_of = caller(&created.org_id, KeyRole::Admin);
    admin(
        &store,
        &admin_of,
        AdminOp::PolicyPut,
        "org",
        &created.org_id,
        json!({"budgets": [{"period": "monthly", "limit_usd": 5}]}),
    )
    .await
    .unwrap();
    let principal = principal_of(&store, &created).await;
    store
        .admit(pb::AdmitRequest {
            principal: Some(principal),
            request_id: "req_lost".into(),
            reserve_usd: 0.5,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .settle_stale(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "not stale yet"
    );
    assert_eq!(store.settle_stale(std::time::Duration::ZERO).await.unwrap(), 1);
    let status = admin(
        &store,
        &admin_of,
        AdminOp::BudgetStatus,
        "org",
        &created.org_id,
        Value::Null,
    )
    .await
    .unwrap();
    let b = &status["data"][0];
    assert_eq!(
        (b["spent_usd"].as_f64(), b["reserved_usd"].as_f64()),
        (Some(0.5), Some(0.0)),
        "{status}"
    );
}
