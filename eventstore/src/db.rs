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

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
