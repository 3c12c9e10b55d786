//! Scratch databases: a database of its own per test or bench run, on the
//! server `DATABASE_URL` names (or beside an existing pool), dropped at the
//! end. Each test owning its database is what lets tests run in parallel on
//! one server.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// What can go wrong making or dropping a scratch database.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A name no other scratch database of any process has: `<prefix>_<pid>_<n>_<random>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    )
}

/// The server every scratch database goes on: `DATABASE_URL`.
pub fn base_options() -> Result<PgConnectOptions, Error> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (a server where tests may create databases)")?;
    Ok(PgConnectOptions::from_str(&url)?)
}

/// `DATABASE_URL` parsed as a URL (for callers that hand URLs to processes).
pub fn base_url() -> url::Url {
    let raw = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set for these tests");
    url::Url::parse(&raw).expect("DATABASE_URL is a URL")
}

/// An empty database of its own; [`ScratchDb::drop_db`] removes it.
pub struct ScratchDb {
    admin: PgConnectOptions,
    pub name: String,
    pub pool: PgPool,
}

impl ScratchDb {
    /// A new database on the `DATABASE_URL` server.
    pub async fn create(prefix: &str, max_connections: u32) -> Result<Self, Error> {
        Self::create_with(base_options()?, prefix, max_connections).await
    }

    /// A new database on the same server, as the same user, as `pool`.
    pub async fn beside(pool: &PgPool, prefix: &str, max_connections: u32) -> Result<Self, Error> {
        Self::create_with((*pool.connect_options()).clone(), prefix, max_connections).await
    }

    async fn create_with(
        admin: PgConnectOptions,
        prefix: &str,
        max_connections: u32,
    ) -> Result<Self, Error> {
        let name = unique_name(prefix);
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

    /// Runs Queue's migrations in it.
    pub async fn migrate(&self) -> Result<(), Error> {
        queue_eventstore::MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The database's URL (on the `DATABASE_URL` server), with an optional
    /// `application_name` (it shows in `pg_stat_activity`) and an optional
    /// local port standing in for the server's (a proxy in front of it).
    pub fn url(&self, application: Option<&str>, via_port: Option<u16>) -> String {
        let mut url = base_url();
        url.set_path(&format!("/{}", self.name));
        if let Some(port) = via_port {
            url.set_host(Some("127.0.0.1")).expect("loopback is a host");
            url.set_port(Some(port))
                .expect("a URL with a host takes a port");
        }
        url.set_query(
            application
                .map(|a| format!("application_name={a}"))
                .as_deref(),
        );
        url.to_string()
    }

    /// Closes the pool and drops the database, whoever is still connected.
    pub async fn drop_db(self) -> Result<(), Error> {
        // Bounded: a connection still checked out by a task that will never
        // return it would make an unbounded close wait forever; `WITH (FORCE)`
        // ends whatever is left.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pool.close()).await;
        let mut conn = self.admin.connect().await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }
}

/// A migrated [`ScratchDb`] dropped when this is dropped, for tests that
/// cannot await their clean-up (a panicking test still cleans up).
pub struct TestDb {
    db: Option<ScratchDb>,
}

impl TestDb {
    /// A new migrated database on the `DATABASE_URL` server.
    pub async fn create(prefix: &str) -> Self {
        let db = Self::create_unmigrated(prefix).await;
        db.db()
            .migrate()
            .await
            .expect("migrate the scratch database");
        db
    }

    /// A new empty database: nothing has migrated it.
    pub async fn create_unmigrated(prefix: &str) -> Self {
        // Small: a test's own checks need few connections, and the `queue
        // serve` instances beside it (three pools each) share the server's
        // max_connections with every other test running at the same time.
        let db = ScratchDb::create(prefix, 3)
            .await
            .expect("create a scratch database");
        Self { db: Some(db) }
    }

    fn db(&self) -> &ScratchDb {
        self.db.as_ref().expect("present until dropped")
    }

    pub fn name(&self) -> &str {
        &self.db().name
    }

    pub fn pool(&self) -> &PgPool {
        &self.db().pool
    }

    /// See [`ScratchDb::url`].
    pub fn url(&self, application: Option<&str>, via_port: Option<u16>) -> String {
        self.db().url(application, via_port)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        // Async drop is not a thing: a short-lived runtime on its own thread
        // (the test's runtime may be the one blocked in this drop).
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = db.drop_db().await;
            });
        })
        .join();
    }
}
