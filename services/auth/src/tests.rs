//! The store and the service on both backends: every test body runs against
//! SQLite files in a temp dir (`sqlite::…`) and against a throwaway
//! PostgreSQL server (`postgres::…`).

use std::collections::HashMap;
use std::path::Path;

use llmgw_kit::config::Config;
use llmgw_kit::on_both_backends;
use llmgw_kit::services::Auth;
use llmgw_kit::testing::TestDb;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use sqlx::Row as _;

use super::*;
use crate::keys::{KEY_BODY_LEN, KEY_PREFIX, MASTER_KEY_FILE};

on_both_backends!(
    created_key_authenticates_to_its_principal,
    wrong_empty_revoked_and_expired_keys_are_rejected,
    only_the_keyed_hash_is_stored,
    default_org_is_created_once_even_by_concurrent_callers,
    no_default_org_once_any_org_exists,
    master_key_file_is_created_once_and_reused,
    configured_master_key_needs_no_file,
    malformed_master_key_file_is_an_error_without_its_content,
    names_are_validated,
    two_processes_starting_at_once_share_one_master_key_and_one_default_org,
    routing_config_is_set_and_cleared,
    hostile_input_is_stored_verbatim_or_refused,
    a_missing_data_dir_is_created_for_the_master_key,
);

/// `db`'s config, with `LLMGW_MASTER_KEY` set to `master_key` if given.
fn config(db: &TestDb, master_key: Option<&str>) -> Config {
    config_in(db, db.dir(), master_key)
}

/// As [`config`], with another `data_dir` (the same database).
fn config_in(db: &TestDb, data_dir: &Path, master_key: Option<&str>) -> Config {
    let env: HashMap<String, String> = master_key
        .map(|k| ("LLMGW_MASTER_KEY".to_owned(), k.to_owned()))
        .into_iter()
        .collect();
    db.config_in(data_dir, &env)
}

async fn store(db: &TestDb) -> AuthStore {
    open(&config(db, None)).await.unwrap()
}

async fn authenticate(auth: &Auth, key: &str) -> Result<pb::Principal, GwError> {
    auth.authenticate(pb::AuthenticateRequest {
        api_key: key.to_owned(),
    })
    .await
}

fn assert_invalid_key(result: Result<pb::Principal, GwError>) {
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated);
    assert_eq!(err.message(), "invalid api key");
}

async fn created_key_authenticates_to_its_principal(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", Some("search")).await.unwrap();
    assert!(created.org_id.starts_with("org_"));
    assert!(created.key_id.starts_with("key_"));
    assert!(
        created
            .project_id
            .as_deref()
            .is_some_and(|p| p.starts_with("proj_"))
    );
    assert_eq!(created.org_name, "acme");

    let key = created.key.expose();
    assert!(key.starts_with(KEY_PREFIX));
    assert_eq!(key.len(), KEY_PREFIX.len() + KEY_BODY_LEN);
    assert!(key[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(!format!("{created:?}").contains(key));

    let auth = service(store.clone());
    let principal = authenticate(&auth, key).await.unwrap();
    assert_eq!(principal.org_id, created.org_id);
    assert_eq!(principal.org_name, "acme");
    assert_eq!(principal.project_id, created.project_id);
    assert_eq!(principal.project_name.as_deref(), Some("search"));
    assert_eq!(principal.key_id, created.key_id);

    // Org and project are reused; an org-wide key has no project.
    let again = store.create_key("acme", Some("search")).await.unwrap();
    assert_eq!(
        (&again.org_id, &again.project_id),
        (&created.org_id, &created.project_id)
    );
    assert_ne!(again.key_id, created.key_id);
    assert_ne!(again.key.expose(), key);
    let org_wide = store.create_key("acme", None).await.unwrap();
    let principal = authenticate(&auth, org_wide.key.expose()).await.unwrap();
    assert_eq!(principal.org_id, created.org_id);
    assert_eq!((principal.project_id, principal.project_name), (None, None));

    assert_eq!(store.org_id("acme").await.unwrap(), Some(created.org_id));
    assert_eq!(store.org_id("nobody").await.unwrap(), None);
}

async fn wrong_empty_revoked_and_expired_keys_are_rejected(db: TestDb) {
    let store = store(&db).await;
    let auth = service(store.clone());
    let created = store.create_key("acme", None).await.unwrap();
    let key = created.key.expose();

    assert_invalid_key(authenticate(&auth, "").await);
    assert_invalid_key(authenticate(&auth, "sk-llmgw-nope").await);
    assert_invalid_key(authenticate(&auth, &format!("{key}x")).await);
    assert_invalid_key(authenticate(&auth, &"k".repeat(10_000)).await);
    // A different master key hashes differently: the same key is unknown.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(&config_in(&db, other_dir.path(), Some("another-master-key")))
        .await
        .unwrap();
    assert_invalid_key(authenticate(&service(other), key).await);

    assert!(authenticate(&auth, key).await.is_ok());
    assert!(store.revoke_key(&created.key_id).await.unwrap());
    assert!(!store.revoke_key(&created.key_id).await.unwrap());
    assert!(!store.revoke_key("key_unknown").await.unwrap());
    let err = authenticate(&auth, key).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated);
    assert!(!err.message().contains(key));
    assert!(!err.message().contains(&store.hasher.hash(key)));

    let expiring = store.create_key("acme", None).await.unwrap();
    assert!(authenticate(&auth, expiring.key.expose()).await.is_ok());
    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
        .bind(crate::store::now_ms() - 1)
        .bind(&expiring.key_id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert_invalid_key(authenticate(&auth, expiring.key.expose()).await);
    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
        .bind(crate::store::now_ms() + 60_000)
        .bind(&expiring.key_id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert!(authenticate(&auth, expiring.key.expose()).await.is_ok());
}

async fn only_the_keyed_hash_is_stored(db: TestDb) {
    let store = store(&db).await;
    let created = store.create_key("acme", Some("web")).await.unwrap();
    let key = created.key.expose();
    let body = &key[KEY_PREFIX.len()..];

    let row = sqlx::query(
        "SELECT id, org_id, project_id, key_hash, created_at, revoked_at, expires_at FROM api_keys",
    )
    .fetch_one(&store.pool)
    .await
    .unwrap();
    let stored_hash: String = row.try_get("key_hash").unwrap();
    assert_eq!(stored_hash.len(), 64);
    assert_eq!(stored_hash, store.hasher.hash(key));
    for text in [
        row.try_get::<String, _>("id").unwrap(),
        row.try_get::<String, _>("org_id").unwrap(),
        row.try_get::<Option<String>, _>("project_id").unwrap().unwrap(),
        stored_hash,
    ] {
        assert!(!text.contains(body));
    }
    // Nor anywhere on disk: database, WAL, master key file.
    drop(row);
    store.pool.close().await;
    for entry in std::fs::read_dir(db.dir()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(body.len()).any(|w| w == body.as_bytes()));
    }
}

async fn default_org_is_created_once_even_by_concurrent_callers(db: TestDb) {
    // Two "processes": separate pools on the same files.
    let (a, b) = (store(&db).await, store(&db).await);
    let (ra, rb) = tokio::join!(
        tokio::spawn({
            let a = a.clone();
            async move { a.ensure_default_org().await }
        }),
        tokio::spawn({
            let b = b.clone();
            async move { b.ensure_default_org().await }
        }),
    );
    let created: Vec<CreatedKey> = [ra.unwrap().unwrap(), rb.unwrap().unwrap()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].org_name, DEFAULT_ORG);
    assert!(a.ensure_default_org().await.unwrap().is_none());

    let count = |sql: &'static str| {
        let pool = a.pool.clone();
        async move {
            sqlx::query(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM orgs").await, 1);
    assert_eq!(count("SELECT COUNT(*) FROM api_keys").await, 1);
    let principal = authenticate(&service(b), created[0].key.expose()).await.unwrap();
    assert_eq!(principal.org_name, DEFAULT_ORG);
}

async fn no_default_org_once_any_org_exists(db: TestDb) {
    let store = store(&db).await;
    store.create_key("acme", None).await.unwrap();
    assert!(store.ensure_default_org().await.unwrap().is_none());
    assert_eq!(store.org_id(DEFAULT_ORG).await.unwrap(), None);
}

async fn master_key_file_is_created_once_and_reused(db: TestDb) {
    let store_a = store(&db).await;
    let created = store_a.create_key("acme", None).await.unwrap();
    let path = db.dir().join(MASTER_KEY_FILE);
    let master = std::fs::read_to_string(&path).unwrap();
    assert_eq!(master.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    store_a.pool.close().await;
    drop(store_a);

    let reopened = store(&db).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), master);
    let principal = authenticate(&service(reopened), created.key.expose())
        .await
        .unwrap();
    assert_eq!(principal.key_id, created.key_id);

    // The file's content works unchanged as LLMGW_MASTER_KEY.
    let from_env = open(&config(&db, Some(&master))).await.unwrap();
    assert!(
        authenticate(&service(from_env), created.key.expose())
            .await
            .is_ok()
    );
}

async fn configured_master_key_needs_no_file(db: TestDb) {
    let store = open(&config(&db, Some("configured-master-key"))).await.unwrap();
    let created = store.create_key("acme", None).await.unwrap();
    assert!(!db.dir().join(MASTER_KEY_FILE).exists());
    let reopened = open(&config(&db, Some("configured-master-key"))).await.unwrap();
    assert!(
        authenticate(&service(reopened), created.key.expose())
            .await
            .is_ok()
    );
}

async fn malformed_master_key_file_is_an_error_without_its_content(db: TestDb) {
    std::fs::write(db.dir().join(MASTER_KEY_FILE), "not-a-key").unwrap();
    let err = open(&config(&db, None)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(err.message().contains("malformed"));
    assert!(!err.message().contains("not-a-key"));
}

async fn names_are_validated(db: TestDb) {
    let store = store(&db).await;
    let long = "n".repeat(65);
    for (org, project, param) in [
        ("", None, "org"),
        (long.as_str(), None, "org"),
        ("ac\nme", None, "org"),
        ("ac\u{7f}me", None, "org"),
        (" acme", None, "org"),
        ("acme", Some(""), "project"),
        ("acme", Some(long.as_str()), "project"),
        ("acme", Some("we\tb"), "project"),
    ] {
        let err = store.create_key(org, project).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{org:?} {project:?}");
        assert_eq!(err.param(), Some(param), "{org:?} {project:?}");
        assert!(err.message().starts_with(param), "{}", err.message());
    }
    assert_eq!(store.org_id("acme").await.unwrap(), None, "nothing was created");

    let longest = "é".repeat(64);
    let created = store.create_key(&longest, Some("my project")).await.unwrap();
    assert_eq!(created.org_name, longest);
}

async fn two_processes_starting_at_once_share_one_master_key_and_one_default_org(db: TestDb) {
    let start = |config: Config| {
        tokio::spawn(async move {
            let store = open(&config).await?;
            let created = store.ensure_default_org().await?;
            Ok::<_, GwError>((store, created))
        })
    };
    let (a, b) = tokio::join!(start(config(&db, None)), start(config(&db, None)));
    let ((store_a, created_a), (store_b, created_b)) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    let created: Vec<CreatedKey> = [created_a, created_b].into_iter().flatten().collect();
    assert_eq!(created.len(), 1);
    // Both hash with the same master key: each authenticates the one key.
    for store in [store_a, store_b] {
        assert!(
            authenticate(&service(store), created[0].key.expose())
                .await
                .is_ok()
        );
    }
}

async fn routing_config_is_set_and_cleared(db: TestDb) {
    let store = store(&db).await;
    let auth = service(store.clone());
    let created = store.create_key("acme", None).await.unwrap();
    let routing = |auth: &Auth| {
        let auth = auth.clone();
        let key = created.key.expose().to_owned();
        async move { authenticate(&auth, &key).await.unwrap().routing_config }
    };
    assert_eq!(routing(&auth).await, None);
    store
        .set_routing_config(&created.key_id, Some("fast"))
        .await
        .unwrap();
    assert_eq!(routing(&auth).await.as_deref(), Some("fast"));
    store.set_routing_config(&created.key_id, None).await.unwrap();
    assert_eq!(routing(&auth).await, None);

    let err = store
        .set_routing_config("key_unknown", Some("fast"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    for bad in [String::new(), "r".repeat(129), "a\nb".to_owned()] {
        let err = store
            .set_routing_config(&created.key_id, Some(&bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{bad:?}");
        assert_eq!(err.param(), Some("routing_config"));
    }
}

/// SQL in values, 10 KB strings, NUL bytes and unicode: stored and read back
/// verbatim where the rules allow them, refused (or simply not found) where
/// not, and never a storage error, on both backends. (PostgreSQL's TEXT
/// cannot hold NUL, so a NUL must never reach a query.)
async fn hostile_input_is_stored_verbatim_or_refused(db: TestDb) {
    let store = store(&db).await;
    let auth = service(store.clone());
    let injection = "'; DROP TABLE api_keys; --";
    let unicode = "組織 🚀 Ωmega é\u{fffd}";
    let long = "x".repeat(10 * 1024);

    let created = store.create_key(injection, Some(unicode)).await.unwrap();
    store
        .set_routing_config(&created.key_id, Some(injection))
        .await
        .unwrap();
    let principal = authenticate(&auth, created.key.expose()).await.unwrap();
    assert_eq!(principal.org_name, injection, "{}", db.backend());
    assert_eq!(principal.project_name.as_deref(), Some(unicode));
    assert_eq!(principal.routing_config.as_deref(), Some(injection));
    assert_eq!(
        store.org_id(injection).await.unwrap(),
        Some(created.org_id.clone())
    );

    for (org, project, param) in [
        (long.as_str(), None, "org"),
        ("ac\0me", None, "org"),
        ("acme", Some("p\0"), "project"),
        ("acme", Some(long.as_str()), "project"),
    ] {
        let err = store.create_key(org, project).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{}", db.backend());
        assert_eq!(err.param(), Some(param));
    }
    for bad in ["a\0b", long.as_str()] {
        let err = store
            .set_routing_config(&created.key_id, Some(bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{}", db.backend());
    }
    let err = store
        .set_routing_config("key_\0", Some("fast"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{}", db.backend());
    // (`injection` names the org created above; these name nothing.)
    for hostile in [
        "' OR '1'='1",
        "'; DROP TABLE orgs; --",
        "a\0b",
        long.as_str(),
        unicode,
    ] {
        assert_invalid_key(authenticate(&auth, hostile).await);
        assert_eq!(store.org_id(hostile).await.unwrap(), None, "{hostile:?}");
        assert!(!store.revoke_key(hostile).await.unwrap(), "{hostile:?}");
    }

    // Nothing was dropped, and the key still works.
    let keys: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 1);
    assert!(authenticate(&auth, created.key.expose()).await.is_ok());
}

/// On PostgreSQL the store creates no file, yet the master key still needs
/// `data_dir`.
async fn a_missing_data_dir_is_created_for_the_master_key(db: TestDb) {
    let data_dir = db.dir().join("not").join("yet");
    let store = open(&config_in(&db, &data_dir, None)).await.unwrap();
    assert!(data_dir.join(MASTER_KEY_FILE).is_file(), "{}", db.backend());
    let created = store.create_key("acme", None).await.unwrap();
    assert!(authenticate(&service(store), created.key.expose()).await.is_ok());
}
