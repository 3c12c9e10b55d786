//! Real `queue` processes for the fault tests: a fresh database per test
//! (created here, dropped at the end), key files in a temp directory, and
//! `queue serve` instances each on its own free loopback port.

use std::collections::HashSet;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_eventstore::roles::Role;
use sqlx::PgPool;

use crate::{CHECKPOINT_KEY, MAC};

/// The audit writer's service token (at least 16 characters).
pub const AUDITOR: &str = "auditor-token-faults-0001";

use queue_testkit::db::unique_name as unique;

/// A database of its own, dropped (connections and all) when this is dropped.
pub struct TestDb {
    pub pool: PgPool,
    scratch: queue_testkit::db::TestDb,
}

impl TestDb {
    /// A migrated database, with the development LOGIN roles in place.
    pub async fn create(tag: &str) -> Self {
        let db = Self::create_unmigrated(tag).await;
        queue_eventstore::MIGRATOR.run(&db.pool).await.unwrap();
        // `queue serve` runs as the restricted roles (ADR 0212).
        queue_eventstore::roles::ensure_dev_logins(&db.pool)
            .await
            .unwrap();
        db
    }

    /// An empty database: nothing has migrated it.
    pub async fn create_unmigrated(tag: &str) -> Self {
        let scratch =
            queue_testkit::db::TestDb::create_unmigrated(&format!("queue_faults_{tag}")).await;
        Self {
            pool: scratch.pool().clone(),
            scratch,
        }
    }

    /// The URL an instance uses: its name shows in pg_stat_activity.
    pub fn url(&self, application: &str) -> String {
        self.scratch.url(Some(application), None)
    }

    /// The same database reached through a local port (a proxy).
    pub fn url_via(&self, port: u16, application: &str) -> String {
        self.scratch.url(Some(application), Some(port))
    }

    /// Which instance (application name) holds the sealer's advisory lock.
    pub async fn sealer_holder(&self) -> Option<String> {
        sqlx::query_scalar(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
        )
        .bind(queue_eventstore::sealer::SEALER_LOCK_KEY)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }

    /// Every Audit event id in the ledger.
    pub async fn sealed_audit_ids(&self) -> HashSet<String> {
        sqlx::query_scalar("SELECT aggregate_id FROM ledger WHERE aggregate_type = 'Audit'")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// After a final `queue seal`: `queue verify` says OK, the ledger's seq
    /// runs 1..=n without a gap, every event is sealed exactly once, and every
    /// accepted audit event is among them. Returns the ledger size.
    pub async fn assert_sealed_gap_free(&self, keys: &Keys, accepted: &[String]) -> i64 {
        let seal = keys.queue(&["seal"], &self.url("queue-seal")).await;
        assert!(seal.status.success(), "seal: {}", crate::stderr(&seal));
        let verify = keys
            .queue(&["--json", "verify"], &self.url("queue-verify"))
            .await;
        assert_eq!(
            verify.status.code(),
            Some(0),
            "verify: {}",
            crate::stderr(&verify)
        );
        let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["unsealed"], 0, "{report}");

        let (count, min, max): (i64, Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT count(*), min(seq), max(seq) FROM ledger")
                .fetch_one(&self.pool)
                .await
                .unwrap();
        assert!(count > 0);
        assert_eq!((min, max), (Some(1), Some(count)), "ledger seq has a gap");
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let unsealed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM ledger l \
             WHERE l.aggregate_type = e.aggregate_type AND l.aggregate_id = e.aggregate_id \
               AND l.sequence = e.sequence)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap();
        assert_eq!(unsealed, 0);
        // UNIQUE (aggregate_type, aggregate_id, sequence) on the ledger makes
        // "sealed" mean "sealed once"; equal counts leave no room for strays.
        assert_eq!(events, count, "events vs ledger entries");
        let sealed = self.sealed_audit_ids().await;
        let lost: Vec<&String> = accepted.iter().filter(|id| !sealed.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "accepted writes missing from the ledger: {lost:?}"
        );
        count
    }
}

/// A scratch directory (key files, mail, logs), removed on drop.
pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    /// A directory holding a JWT key file with one key, `k0`, and a
    /// checkpoint key file with `CHECKPOINT_KEY` (both rotatable).
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("queue-{}", unique(tag)));
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        let keys = Self { dir };
        let spec = queue_api::auth::jwt::JwtKeySet::generate("k0")
            .unwrap()
            .to_spec();
        for (path, spec) in [
            (keys.jwt_file(), spec.as_str()),
            (keys.checkpoint_file(), CHECKPOINT_KEY),
        ] {
            queue_eventstore::keys::write_key_file(
                &path,
                spec,
                queue_eventstore::keys::KeyFileWrite::Replace,
            )
            .unwrap();
        }
        keys
    }

    pub fn jwt_file(&self) -> PathBuf {
        self.dir.join("jwt_keys")
    }

    pub fn checkpoint_file(&self) -> PathBuf {
        self.dir.join("checkpoint.key")
    }

    /// Runs `queue <args>` against `database_url` with the shared keys.
    pub async fn queue(&self, args: &[&str], database_url: &str) -> Output {
        self.queue_with(args, database_url, &[]).await
    }

    /// [`Keys::queue`] with more environment variables.
    pub async fn queue_with(
        &self,
        args: &[&str],
        database_url: &str,
        extra: &[(&str, &str)],
    ) -> Output {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database_url.to_owned()),
            ("QUEUE_MAC_KEYS".to_owned(), MAC.to_owned()),
            (
                "QUEUE_CHECKPOINT_KEY_FILE".to_owned(),
                self.checkpoint_file().display().to_string(),
            ),
            (
                "QUEUE_JWT_KEYS_FILE".to_owned(),
                self.jwt_file().display().to_string(),
            ),
            ("QUEUE_LOG".to_owned(), "warn".to_owned()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_queue"));
            cmd.args(&args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env);
            cmd.output().unwrap()
        })
        .await
        .unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `url` (the owner's, as [`TestDb::url`] gives it) for `role`'s development
/// LOGIN role, which [`TestDb::create`] sets up: every `queue serve` a test
/// starts runs as the restricted roles, as in production (ADR 0212).
pub fn as_role(url: &str, role: Role) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_username(queue_eventstore::roles::dev_login(role))
        .unwrap();
    url.set_password(Some(queue_eventstore::roles::DEV_PASSWORD))
        .unwrap();
    url.to_string()
}

/// A running `queue serve`; killed (SIGKILL) on drop.
pub struct Instance {
    pub name: String,
    pub base: String,
    child: Child,
    log: PathBuf,
}

impl Instance {
    /// Starts `queue serve` and waits until `/healthz` answers 200.
    pub async fn start(name: &str, database_url: &str, keys: &Keys) -> Self {
        Self::start_with(name, database_url, keys, &[]).await
    }

    /// [`Instance::start`] with more (or other) environment variables;
    /// `{base}` in a value becomes the instance's base URL, `{port}` its port.
    pub async fn start_with(
        name: &str,
        database_url: &str,
        keys: &Keys,
        extra: &[(&str, &str)],
    ) -> Self {
        // A free port can be taken between probing and binding: try again.
        for _ in 0..3 {
            let port = free_port();
            let log = keys.dir.join(format!("{name}.log"));
            let base = format!("http://127.0.0.1:{port}");
            let extra: Vec<(&str, String)> = extra
                .iter()
                .map(|(k, v)| {
                    let v = v.replace("{base}", &base);
                    (*k, v.replace("{port}", &port.to_string()))
                })
                .collect();
            let child = Self::spawn(port, database_url, keys, &log, &extra);
            let mut instance = Self {
                name: name.to_owned(),
                base,
                child,
                log,
            };
            if instance.wait_healthy(Duration::from_secs(60)).await {
                return instance;
            }
            if !instance.log_text().contains("cannot listen") {
                panic!("{name} did not become healthy:\n{}", instance.log_text());
            }
        }
        panic!("{name}: no free port after 3 tries");
    }

    pub fn spawn(
        port: u16,
        database_url: &str,
        keys: &Keys,
        log: &Path,
        extra: &[(&str, String)],
    ) -> Child {
        let stderr = std::fs::File::create(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_queue"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", as_role(database_url, Role::Service))
            .env(
                "QUEUE_SEALER_DATABASE_URL",
                as_role(database_url, Role::Sealer),
            )
            .env(
                "QUEUE_PROJECTOR_DATABASE_URL",
                as_role(database_url, Role::Projector),
            )
            .env("QUEUE_LISTEN", format!("127.0.0.1:{port}"))
            .env("QUEUE_MAC_KEYS", MAC)
            .env(
                "QUEUE_BACKUP_CODE_KEYS",
                "b1=2222222222222222222222222222222222222222222222222222222222222222",
            )
            .env("QUEUE_CHECKPOINT_KEY_FILE", keys.checkpoint_file())
            .env("QUEUE_JWT_KEYS_FILE", keys.jwt_file())
            .env("QUEUE_RP_ID", "localhost")
            .env("QUEUE_RP_ORIGIN", "http://localhost:8080")
            .env("QUEUE_ISSUER", "http://localhost:8080")
            .env("QUEUE_AUDIENCE", "queue")
            .env("QUEUE_MAILER", "log")
            .env("QUEUE_MAILER_DIR", keys.dir.join("mail"))
            .env("FLAG_QUEUE_V1", "1")
            .env("QUEUE_SERVICE_TOKEN_AUDITOR", AUDITOR)
            .env("QUEUE_SERVICE_SCOPES_AUDITOR", "audit:write")
            .env("QUEUE_RATE_LIMIT_PER_SERVICE", "10000000")
            // A short open period so the cut test recovers in seconds, not 30.
            .env("QUEUE_BREAKER_OPEN_MS", "3000")
            .env("QUEUE_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// Whether `/healthz` answered 200 within `within` (false as soon as
    /// the process exits).
    async fn wait_healthy(&mut self, within: Duration) -> bool {
        let client = client();
        let healthz = format!("{}/healthz", self.base);
        let child = &mut self.child;
        queue_testkit::poll::poll_until(within, || {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            let probe = client.get(&healthz).send();
            async move {
                if exited {
                    return Some(false);
                }
                let healthy = probe.await.is_ok_and(|r| r.status().as_u16() == 200);
                healthy.then_some(true)
            }
        })
        .await
        .unwrap_or(false)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no drain, no clean point, connections dropped by the kernel.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for loopback (ignores proxy settings in the environment).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One audit write as the client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, since the start of the run.
    pub sent: Duration,
    pub latency: Duration,
    /// 0 for a transport error (reset, timeout).
    pub status: u16,
    pub code: Option<String>,
    pub retry_after: bool,
    pub event_id: Option<String>,
    pub error: Option<String>,
}

/// `POST /api/v1/audit/events` with a fresh idempotency key.
pub async fn audit_write(client: &reqwest::Client, base: &str, key: &str, t0: Instant) -> Outcome {
    let body = serde_json::json!({
        "actor": "ops", "action": "faults.write", "target": format!("item:{key}"),
        "idempotency_key": key,
    });
    let sent = t0.elapsed();
    let started = Instant::now();
    let result = client
        .post(format!("{base}/api/v1/audit/events"))
        .bearer_auth(AUDITOR)
        .json(&body)
        .send()
        .await;
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let value: serde_json::Value = response.json().await.unwrap_or_default();
            Outcome {
                sent,
                latency: started.elapsed(),
                status,
                code: value["error"]["code"]
                    .as_str()
                    .or(value["code"].as_str())
                    .map(str::to_owned),
                retry_after,
                event_id: value["event_id"].as_str().map(str::to_owned),
                error: None,
            }
        }
        Err(e) => Outcome {
            sent,
            latency: started.elapsed(),
            status: 0,
            code: None,
            retry_after: false,
            event_id: None,
            error: Some(e.to_string()),
        },
    }
}

/// Writers posting audit events to `base` until `stop`, each pausing
/// `backoff` after a non-2xx answer (a polite client, and it keeps an open
/// breaker from turning into a busy loop on a shared machine).
pub fn spawn_writers(
    base: &str,
    writers: usize,
    stop: Arc<AtomicBool>,
    t0: Instant,
    backoff: Duration,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..writers)
        .map(|w| {
            let base = base.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut outcomes = Vec::new();
                let prefix = unique(&format!("w{w}"));
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let outcome = audit_write(&client, &base, &format!("{prefix}-{n}"), t0).await;
                    let ok = (200..300).contains(&outcome.status);
                    outcomes.push(outcome);
                    if !ok {
                        tokio::time::sleep(backoff).await;
                    }
                }
                outcomes
            })
        })
        .collect()
}

pub async fn join_all(handles: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_by_key(|o| o.sent);
    all
}

/// A fresh database, shared key files and two `queue serve` instances on it,
/// `queue-a` and `queue-b` (dropped in reverse: instances, keys, database).
pub async fn two_instances(tag: &str) -> (TestDb, Keys, Instance, Instance) {
    let db = TestDb::create(tag).await;
    let keys = Keys::new(tag);
    let a = Instance::start("queue-a", &db.url("queue-a"), &keys).await;
    let b = Instance::start("queue-b", &db.url("queue-b"), &keys).await;
    (db, keys, a, b)
}

pub use queue_testkit::poll::eventually_within as poll;

pub use queue_testkit::proxy::Proxy;
