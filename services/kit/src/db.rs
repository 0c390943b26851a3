//! The storage layer's connection pools: one `sqlx::AnyPool` per service
//! store, on one of two backends chosen by the config's `database:` section:
//!
//! - absent: SQLite, a file per store under `data_dir` (the embedded default);
//! - `database: { url: postgres://… }`: PostgreSQL, one database that every
//!   store shares.
//!
//! Queries use `$1` placeholders, which both backends accept, are always
//! parameterised, and the migrations are portable SQL run on both.
//!
//! ## Two stores, one PostgreSQL database
//!
//! sqlx's `Migrator` keeps its bookkeeping in one `_sqlx_migrations` table and
//! checks every applied version against its own list: two stores with their
//! own version 1 in one table would fail with a checksum mismatch (and each
//! would see the other's versions as "applied but missing"). So each store
//! gets its own PostgreSQL **schema**, named after its SQLite file's stem
//! (`auth.db` → `auth`, `metering.db` → `metering`): the migrator creates it,
//! and every connection of the store's pool sets `search_path` to it alone.
//! Each store then has its own `_sqlx_migrations` and its own tables, found
//! by their plain names, so the SQL and the migrations stay identical on both
//! backends, and version numbers never need coordinating. (A migrations table
//! per store in one schema would work for the bookkeeping but leave every
//! store's tables and index names in one namespace.) The migrator's advisory
//! lock is per database, so stores and processes starting at once take turns.
//!
//! ## Types through the Any driver
//!
//! Write `bool`, `i32`, `i64`, `f64`, `String` and `Option`s of them; read
//! INTEGER and BIGINT as `i64` (either decodes from both backends),
//! DOUBLE PRECISION as `f64`, and cast aggregates (`SUM` of BIGINT is NUMERIC
//! on PostgreSQL, which Any cannot read). A BOOLEAN column does not read the
//! same way on both: Any rejects SQLite's BOOLEAN outright and PostgreSQL's
//! decodes only as `bool`, so select `CAST(col AS INTEGER)` and compare with 0.
//! TEXT on PostgreSQL cannot hold NUL: stores refuse it before writing.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Executor as _};

use crate::config::{Config, DatabaseConfig};
use crate::error::GwError;

/// A migration: version, description and SQL, embedded in the binary.
pub type MigrationSpec = (i64, &'static str, &'static str);

/// Which backend a store runs on, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend `config` selects.
    pub fn of(config: &Config) -> Self {
        if config.database.is_some() {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }
}

/// Opens a store's pool and runs its `migrations`: the SQLite file
/// `sqlite_file` under `data_dir`, or, with `database:` configured, the
/// PostgreSQL schema named after that file's stem (see the module docs).
pub async fn open(
    config: &Config,
    sqlite_file: &str,
    migrations: &[MigrationSpec],
) -> Result<AnyPool, GwError> {
    sqlx::any::install_default_drivers();
    match &config.database {
        None => open_sqlite(&config.data_dir, sqlite_file, migrations).await,
        Some(database) => open_postgres(database, &schema_name(sqlite_file)?, migrations).await,
    }
}

/// The PostgreSQL schema of the store whose SQLite file is `file`.
fn schema_name(file: &str) -> Result<String, GwError> {
    let stem = file.split('.').next().unwrap_or_default();
    let valid = stem.starts_with(|c: char| c.is_ascii_lowercase())
        && stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(stem.to_owned())
    } else {
        Err(GwError::internal(format!(
            "store file `{file}` does not name a schema"
        )))
    }
}

/// Opens the store's pool on PostgreSQL, every connection in `schema`.
async fn open_postgres(
    database: &DatabaseConfig,
    schema: &str,
    migrations: &[MigrationSpec],
) -> Result<AnyPool, GwError> {
    let url = database.url.expose();
    // Messages show the URL with its password masked, and mask it in the
    // driver's words too, should they ever echo it.
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        GwError::internal(format!(
            "{what} {} (schema {schema}): {}",
            database.redacted_url(),
            database.mask_password(&e.to_string())
        ))
    };
    let search_path = format!("SET search_path TO \"{schema}\"");
    let pool = AnyPoolOptions::new()
        .max_connections(database.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            let search_path = search_path.clone();
            Box::pin(async move {
                conn.execute(AssertSqlSafe(search_path)).await?;
                // Keeps "schema already exists, skipping" and the like out
                // of the log on every start.
                conn.execute("SET client_min_messages TO warning").await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| failed("cannot connect to", &e))?;
    migrate(&pool, migrations, Some(schema))
        .await
        .map_err(|e| failed("cannot migrate", &e))?;
    Ok(pool)
}

/// Opens (creating if needed) the SQLite store `file` under `data_dir`, in WAL
/// mode with a busy timeout so the CLI and a running service can share it, and
/// runs `migrations`.
async fn open_sqlite(data_dir: &Path, file: &str, migrations: &[MigrationSpec]) -> Result<AnyPool, GwError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| GwError::internal(format!("cannot create data_dir {}: {e}", data_dir.display())))?;
    let path = data_dir.join(file);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                // A WAL that grew under a burst is truncated back to this
                // size at its next reset, not kept at its high-water mark.
                conn.execute("PRAGMA journal_size_limit = 67108864").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| GwError::internal(format!("cannot open {}: {e}", path.display())))?;
    // Two processes opening the same new file at once race on these two
    // steps: the loser's attempt fails ("database is locked", "table already
    // exists") and rolls back, and its retry finds the work done.
    retry(|| async {
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await
            .map_err(|e| GwError::internal(format!("cannot set WAL on {}: {e}", path.display())))?;
        migrate(&pool, migrations, None)
            .await
            .map_err(|e| GwError::internal(format!("migration failed: {e}")))
    })
    .await?;
    Ok(pool)
}

/// Attempts at a setup step that may lose a race with another process.
const SETUP_ATTEMPTS: u32 = 8;

async fn retry<F, Fut>(mut step: F) -> Result<(), GwError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), GwError>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Err(e) if attempt < SETUP_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "storage setup failed; retrying");
                tokio::time::sleep(Duration::from_millis(25 << attempt.min(5))).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Applies the migrations not yet applied; on PostgreSQL, `schema` is the
/// store's schema, created first (the pool's `search_path` points into it).
async fn migrate(
    pool: &AnyPool,
    migrations: &[MigrationSpec],
    schema: Option<&str>,
) -> Result<(), sqlx::migrate::MigrateError> {
    let migrations = migrations
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                (*description).into(),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    let mut migrator = Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    };
    if let Some(schema) = schema {
        migrator.create_schema(format!("\"{schema}\""));
    }
    migrator.run(pool).await
}

/// Maps a storage error to an internal error without leaking SQL or values.
pub fn db_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> GwError {
    move |e| {
        tracing::error!(error = %e, context, "storage error");
        GwError::internal(format!("storage error while {context}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The driver echoes a bad option's value: here it is the password, and
    /// comes out masked. (A bad option fails at once; a server that refuses
    /// connections is retried until the pool's 10 s acquire timeout.)
    #[tokio::test]
    async fn postgres_errors_never_show_the_password() {
        let yaml = "database: { url: 'postgres://gw:s3cr3t@127.0.0.1:1/llmgw?sslmode=s3cr3t' }";
        let config = Config::parse(yaml, "g.yaml", &HashMap::new()).unwrap();
        assert_eq!(Backend::of(&config), Backend::Postgres);
        let err = open(&config, "auth.db", &[]).await.unwrap_err();
        let message = err.message();
        assert!(
            message.contains("cannot connect to postgres://gw:***@127.0.0.1:1/llmgw (schema auth)"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(open(&config, "Bad Name.db", &[]).await.is_err());
    }
}
