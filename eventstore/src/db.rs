//! Connecting and migrating, with errors that say what is wrong in one line.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::error::{StoreError, StoreResult};

/// Parses a database URL without echoing it (it may hold a password).
pub fn connect_options(database_url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(database_url).map_err(|e| {
        StoreError::Config(format!(
            "DATABASE_URL is not a valid postgres URL ({})",
            first_line(&e.to_string())
        ))
    })
}

/// Opens a pool and checks that the database answers.
pub async fn connect(database_url: &str, max_connections: u32) -> StoreResult<PgPool> {
    let options = connect_options(database_url)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(pool)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> StoreResult<()> {
    crate::MIGRATOR.run(pool).await.map_err(StoreError::from)
}

/// Refuses to go on unless every migration this binary knows has been
/// applied, unchanged: `queue serve` never migrates (it runs as roles that
/// cannot), and a half-migrated schema must not be served. A schema with
/// migrations this binary does not know (a newer release migrated it) is
/// accepted: migrations only add.
pub async fn check_migrated(pool: &PgPool) -> StoreResult<()> {
    const RUN_MIGRATE: &str = "run `queue migrate` with the owner's DATABASE_URL first";
    let applied: Vec<(i64, Vec<u8>, bool)> =
        match sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            // undefined_table: never migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                return Err(StoreError::Config(format!(
                    "the database is not migrated: {RUN_MIGRATE}"
                )));
            }
            // insufficient_privilege: migrated before migration 0315, which
            // grants every role the right to read the migration table.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                return Err(StoreError::Config(format!(
                    "this role cannot read _sqlx_migrations (the schema predates migration \
                     0315, or the role is not a member of queue_service, queue_sealer or \
                     queue_projector): {RUN_MIGRATE}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
    for migration in crate::MIGRATOR.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        let problem = match applied.iter().find(|(v, _, _)| *v == migration.version) {
            None => "has not been applied",
            Some((_, _, false)) => "failed part-way",
            Some((_, checksum, true)) if checksum[..] != migration.checksum[..] => {
                "was applied from a different file than this release's"
            }
            Some(_) => continue,
        };
        return Err(StoreError::Config(format!(
            "the database schema is not up to date: migration {:04} ({}) {problem}; {RUN_MIGRATE}",
            migration.version, migration.description
        )));
    }
    Ok(())
}

/// The table privileges a connection has that `queue serve`'s roles must
/// not have: a non-empty answer means it connected as the owner or a
/// superuser (ADR 0212), which `queue serve` logs as a warning.
pub async fn excess_privileges(pool: &PgPool) -> StoreResult<Vec<String>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT t || ' ' || p FROM unnest(ARRAY['events', 'ledger', 'checkpoints']) t, \
                unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) p \
         WHERE to_regclass(t) IS NOT NULL AND has_table_privilege(t, p) \
         UNION ALL SELECT 'superuser' WHERE (SELECT rolsuper FROM pg_roles \
                                             WHERE rolname = current_user)",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
