//! The API under test: an app on a given database, JSON requests through
//! the router (`oneshot`), the customer flows every test needs (register,
//! log in), and the mail the log mailer wrote.
//!
//! The app runs as `queue serve` does in production (ADR 0212): its
//! requests and the mail sender on a connection as the development LOGIN
//! role of `queue_service`, the projection and outbox runners
//! ([`TestApp::catch_up`], [`TestApp::deliver_mail`]) as `queue_projector`'s,
//! sealing ([`TestApp::sealer`]) as `queue_sealer`'s. A grant missing for a
//! new table or column fails the router tests that use it. The pool a test
//! was handed (the database's owner, a superuser) stays at hand as
//! [`TestApp::owner`] for what an attacker with owner rights, or an
//! operator, does to the database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::passkey::Passkey;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use queue_api::auth::jwt::JwtKeySet;
use queue_api::mail::mailer::LogMailer;
use queue_api::{AppState, Config, ServiceClock};
use queue_eventstore::roles::{dev_login, ensure_dev_logins, Role, DEV_PASSWORD};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tower::ServiceExt;

pub const RP_ID: &str = "queue.example";
pub const ORIGIN: &str = "https://app.queue.example";
pub const ISSUER: &str = "https://queue.example";
pub const AUDIENCE: &str = "queue-tests";

pub struct TestApp {
    /// The app; its pool is the service role's (or, from
    /// [`TestApp::from_state`], whatever pool the state was given).
    pub state: AppState,
    pub router: Router,
    pub mail_dir: PathBuf,
    /// The database's owner (the superuser pool the test was handed): for
    /// forging, editing or breaking what the service roles cannot.
    pub owner: PgPool,
    /// The projection and outbox runners' pool (`queue_projector`).
    pub projector: PgPool,
    /// The sealer's pool (`queue_sealer`).
    pub sealer: PgPool,
    /// The pools this app opened, closed when it is dropped.
    opened: Vec<PgPool>,
    _mail_tmp: TempDir,
}

/// The pools of one database the parts of `queue serve` use, each as its
/// role's development LOGIN role, and the owner's.
#[derive(Clone)]
pub struct RolePools {
    pub owner: PgPool,
    pub service: PgPool,
    pub projector: PgPool,
    pub sealer: PgPool,
}

impl RolePools {
    /// Sets up the development LOGIN roles (race-safe) and opens a pool
    /// (lazily) as each on `owner`'s database.
    pub async fn of(owner: &PgPool) -> Self {
        ensure_dev_logins(owner).await.unwrap();
        Self {
            owner: owner.clone(),
            service: role_pool(owner, Role::Service),
            projector: role_pool(owner, Role::Projector),
            sealer: role_pool(owner, Role::Sealer),
        }
    }
}

/// A pool on `owner`'s database as `role`'s development LOGIN role (which
/// [`ensure_dev_logins`] sets up), sized like `owner`. Connections open on
/// first use and close a second after they go idle, so the test's database
/// can be dropped when the test ends.
pub fn role_pool(owner: &PgPool, role: Role) -> PgPool {
    let options = (*owner.connect_options())
        .clone()
        .username(dev_login(role))
        .password(DEV_PASSWORD);
    PgPoolOptions::new()
        .max_connections(owner.options().get_max_connections())
        .acquire_timeout(owner.options().get_acquire_timeout())
        .idle_timeout(Some(std::time::Duration::from_secs(1)))
        .connect_lazy_with(options)
}

/// [`role_pool`] after setting up the development LOGIN roles: for a test
/// that runs one part of `queue serve` (or a `queue` command) by itself.
/// Close it when done (the test's database is dropped next).
pub async fn connect_as(owner: &PgPool, role: Role) -> PgPool {
    ensure_dev_logins(owner).await.unwrap();
    role_pool(owner, role)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Close this app's own pools now (a server task may still hold a
        // clone of the state): the test's database is dropped next.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for pool in std::mem::take(&mut self.opened) {
                runtime.spawn(async move { pool.close().await });
            }
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TempDir {
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("queue-api-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The backup-code pepper of the tests (`QUEUE_BACKUP_CODE_KEYS`).
pub const BACKUP_CODE_KEYS: &str =
    "b1=2222222222222222222222222222222222222222222222222222222222222222";

pub fn config(mail_dir: &std::path::Path, overrides: &[(&str, &str)]) -> Config {
    let keys = JwtKeySet::generate("test-1").unwrap().to_spec();
    let mut map: HashMap<String, String> = [
        ("QUEUE_RP_ID", RP_ID),
        ("QUEUE_RP_ORIGIN", ORIGIN),
        ("QUEUE_ISSUER", ISSUER),
        ("QUEUE_AUDIENCE", AUDIENCE),
        ("QUEUE_JWT_KEYS", keys.as_str()),
        ("QUEUE_BACKUP_CODE_KEYS", BACKUP_CODE_KEYS),
        ("QUEUE_MAILER", "log"),
        ("QUEUE_MAILER_DIR", mail_dir.to_str().unwrap()),
        ("FLAG_QUEUE_V1", "1"),
        ("QUEUE_RATE_LIMIT_PER_ADDRESS", "1000"),
        ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "1000"),
        ("QUEUE_RATE_LIMIT_REGISTER_PER_ADDRESS", "1000"),
        ("QUEUE_RATE_LIMIT_REGISTER_PER_EMAIL", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in overrides {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    let names: Vec<String> = map.keys().cloned().collect();
    Config::from_lookup_with_names(
        move |k| map.get(k).cloned(),
        names.iter().map(String::as_str),
    )
    .unwrap()
}

pub use crate::keys::shared_mac_keys as mac_keys;

impl TestApp {
    pub async fn new(pool: PgPool) -> Self {
        Self::with(pool, &[]).await
    }

    /// The app on `pool`'s database as the service role; `pool` (the
    /// owner's) is kept as [`TestApp::owner`].
    pub async fn with(pool: PgPool, overrides: &[(&str, &str)]) -> Self {
        let tmp = TempDir::new();
        let config = config(&tmp.0, overrides);
        let pools = RolePools::of(&pool).await;
        let state = AppState::with_parts(
            pools.service.clone(),
            config,
            mac_keys(),
            ServiceClock::new(),
            Arc::new(LogMailer::new(tmp.0.clone())),
        )
        .unwrap();
        Self::from_state_with(state, tmp, pools)
    }

    /// An app on a state the test built itself, every part on the state's
    /// pool (a single-URL deployment). Prefer [`TestApp::from_state_with`]
    /// and a state on [`RolePools::service`].
    pub fn from_state(state: AppState, tmp: TempDir) -> Self {
        let pool = state.pool.clone();
        Self::assemble(state, tmp, pool.clone(), pool.clone(), pool, Vec::new())
    }

    /// An app on a state the test built itself (on `pools.service`, or a
    /// pool that reaches the same database as the service role), with the
    /// runners on `pools.projector` and sealing on `pools.sealer`.
    pub fn from_state_with(state: AppState, tmp: TempDir, pools: RolePools) -> Self {
        let opened = vec![
            pools.service.clone(),
            pools.projector.clone(),
            pools.sealer.clone(),
        ];
        Self::assemble(
            state,
            tmp,
            pools.owner,
            pools.projector,
            pools.sealer,
            opened,
        )
    }

    fn assemble(
        state: AppState,
        tmp: TempDir,
        owner: PgPool,
        projector: PgPool,
        sealer: PgPool,
        opened: Vec<PgPool>,
    ) -> Self {
        let router = queue_api::app(state.clone()).layer(MockConnectInfo(
            std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        ));
        Self {
            mail_dir: tmp.0.clone(),
            state,
            router,
            owner,
            projector,
            sealer,
            opened,
            _mail_tmp: tmp,
        }
    }

    pub fn clock(&self) -> &ServiceClock {
        self.state.clock()
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> Response {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.request(Method::POST, path, Some(body), None).await
    }

    pub async fn post_auth(&self, path: &str, body: Value, token: &str) -> Response {
        self.request(Method::POST, path, Some(body), Some(token))
            .await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, None, Some(token)).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, None, None).await
    }

    /// Brings the read tables up to every committed event (the list
    /// endpoints read them).
    pub async fn catch_up(&self) {
        for projection in queue_projections::catch_up(&self.projector).await.unwrap() {
            assert!(projection.error.is_none(), "{:?}", projection.error);
        }
    }

    pub async fn event_count(&self) -> i64 {
        self.state.store().event_count().await.unwrap()
    }

    /// Starts a registration (display name "Ada"); returns
    /// `{challenge_id, options}`.
    pub async fn register_begin(&self, email: &str) -> Value {
        let begin = self
            .post(
                "/api/v1/auth/webauthn/register/begin",
                json!({"email": email, "display_name": "Ada"}),
            )
            .await;
        assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
        begin.json
    }

    /// Registers a new customer with a new passkey; returns the tokens.
    pub async fn register(&self, passkey: &mut Passkey, email: &str) -> Value {
        let begin = self.register_begin(email).await;
        let credential = passkey.create(&begin["options"]);
        let done = self
            .post(
                "/api/v1/auth/webauthn/register/complete",
                json!({"challenge_id": begin["challenge_id"], "credential": credential, "name": "laptop"}),
            )
            .await;
        assert_eq!(done.status, StatusCode::CREATED, "{}", done.text);
        done.json
    }

    /// Starts a login (by email, or discoverable when `None`).
    pub async fn login_begin(&self, email: Option<&str>) -> Value {
        let body = match email {
            Some(email) => json!({"email": email}),
            None => json!({}),
        };
        let begin = self.post("/api/v1/auth/webauthn/login/begin", body).await;
        assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
        begin.json
    }

    pub async fn login_complete(&self, challenge_id: &Value, credential: Value) -> Response {
        self.post(
            "/api/v1/auth/webauthn/login/complete",
            json!({"challenge_id": challenge_id, "credential": credential}),
        )
        .await
    }

    /// A full login by email; returns the tokens.
    pub async fn login(&self, passkey: &mut Passkey, email: &str) -> Value {
        let begin = self.login_begin(Some(email)).await;
        let credential = passkey.get(&begin["options"]);
        let done = self
            .login_complete(&begin["challenge_id"], credential)
            .await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text);
        done.json
    }

    /// A login (by email, or discoverable when `None`) with a soft
    /// authenticator of any algorithm, its assertion tampered as asked.
    pub async fn login_soft(
        &self,
        soft: &mut crate::soft::SoftAuthenticator,
        email: Option<&str>,
        tamper: &crate::soft::Tamper,
    ) -> Response {
        let begin = self.login_begin(email).await;
        let assertion = soft.get_with(&begin["options"], tamper);
        self.login_complete(&begin["challenge_id"], assertion).await
    }

    /// Runs the mail outbox (events to rows, then one delivery round) and
    /// returns the newest message the log mailer wrote.
    pub async fn last_mail(&self) -> String {
        self.deliver_mail().await;
        let mut files: Vec<_> = std::fs::read_dir(&self.mail_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::read_to_string(files.last().expect("no mail was written")).unwrap()
    }
}

impl TestApp {
    /// Drives the mail outbox as `queue serve` does: the outbox runner
    /// turns committed events into rows, the sender delivers what is due.
    pub async fn deliver_mail(&self) -> usize {
        queue_projections::outbox::catch_up(&self.projector)
            .await
            .unwrap();
        queue_api::mail::outbox::deliver_due(&self.state)
            .await
            .unwrap()
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Response {
    /// Asserts the contract's error envelope with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.json["error"]["code"], code, "{}", self.text);
        assert!(self.json["error"]["message"].is_string(), "{}", self.text);
        assert!(
            self.json["error"]["request_id"]
                .as_str()
                .is_some_and(|id| id.len() > 8),
            "{}",
            self.text
        );
    }
}
