//! The storage layer's connection pools: one `sqlx::AnyPool` per service
//! store, SQLite (a file under `data_dir`, the embedded default) today and
//! PostgreSQL through the same type. Queries use `$1` placeholders, which
//! both backends accept, and are always parameterised.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor as _};

use crate::error::GwError;

/// A migration: version, description and SQL, embedded in the binary.
pub type MigrationSpec = (i64, &'static str, &'static str);

/// Opens (creating if needed) the SQLite store `file` under `data_dir`, in WAL
/// mode with a busy timeout so the CLI and a running service can share it, and
/// runs `migrations`.
pub async fn open_sqlite(
    data_dir: &Path,
    file: &str,
    migrations: &[MigrationSpec],
) -> Result<AnyPool, GwError> {
    sqlx::any::install_default_drivers();
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
        migrate(&pool, migrations).await
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

/// Applies the migrations not yet applied.
pub async fn migrate(pool: &AnyPool, migrations: &[MigrationSpec]) -> Result<(), GwError> {
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
    let migrator = Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    };
    migrator
        .run(pool)
        .await
        .map_err(|e| GwError::internal(format!("migration failed: {e}")))
}

/// Maps a storage error to an internal error without leaking SQL or values.
pub fn db_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> GwError {
    move |e| {
        tracing::error!(error = %e, context, "storage error");
        GwError::internal(format!("storage error while {context}"))
    }
}
