//! A scratch database per benchmark run, dropped afterwards.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct ScratchDb {
    admin: PgConnectOptions,
    pub name: String,
    pub pool: PgPool,
}

impl ScratchDb {
    pub async fn create(max_connections: u32) -> BenchResult<Self> {
        let url = std::env::var("DATABASE_URL")
            .map_err(|_| "DATABASE_URL is not set (a server where it may create databases)")?;
        let admin = PgConnectOptions::from_str(&url)?;
        let name = format!("queue_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(admin.clone().database(&name))
            .await?;
        Ok(Self { admin, name, pool })
    }

    pub async fn drop_db(self) -> BenchResult<()> {
        self.pool.close().await;
        let mut conn: PgConnection = self.admin.connect().await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

pub fn rate(count: u64, secs: f64) -> f64 {
    count as f64 / secs.max(1e-9)
}
