//! A legacy database beside the test's Queue database, legacy rows, a
//! software passkey registered the way the legacy service did, and the API
//! router for what an imported customer does next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use queue_api::jwt::JwtKeySet;
use queue_api::mailer::LogMailer;
use queue_api::{AppState, Config, ServiceClock};
use queue_backfill::{Options, Report};
use queue_eventstore::{ChainedEventRepository, MacKeys, SharedMacKeys, SystemClock};
use serde_json::{json, Value};
use sha2::Digest;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tower::ServiceExt;
use url::Url;
use uuid::Uuid;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, RequestChallengeResponse, UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

pub const RP_ID: &str = "queue.example";
pub const ORIGIN: &str = "https://app.queue.example";

pub fn mac_keys() -> SharedMacKeys {
    SharedMacKeys::new(MacKeys::single("test", vec![7u8; 32]).unwrap())
}

pub fn repo(pool: &PgPool) -> ChainedEventRepository {
    ChainedEventRepository::new(pool.clone(), mac_keys(), Arc::new(SystemClock))
}

/// A second, fresh database holding the legacy tables.
pub struct LegacyDb {
    pub pool: PgPool,
    pub name: String,
    admin: PgPool,
}

impl LegacyDb {
    pub async fn create(queue: &PgPool) -> Self {
        let name = format!("legacy_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(queue)
            .await
            .unwrap();
        let options = queue.connect_options().as_ref().clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::raw_sql(queue_backfill::LEGACY_SCHEMA)
            .execute(&pool)
            .await
            .unwrap();
        Self {
            pool,
            name,
            admin: queue.clone(),
        }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&self.admin)
        .await;
    }

    pub async fn customer(&self, email: &str, display_name: Option<&str>, status: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO customers (email, display_name, email_verified_at, status, created_at) \
             VALUES ($1, $2, now() - interval '300 days', $3, now() - interval '400 days') RETURNING id",
        )
        .bind(email)
        .bind(display_name)
        .bind(status)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn credential(
        &self,
        customer_id: i64,
        key: &LegacyKey,
        sign_count: i64,
        name: Option<&str>,
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO webauthn_credentials (customer_id, credential_id, public_key, sign_count, \
             transports, aaguid, backup_eligible, backup_state, name, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, '{internal,Hybrid}', $5, $6, $7, $8, now() - interval '200 days', now() - interval '2 days') RETURNING id",
        )
        .bind(customer_id)
        .bind(&key.raw_id)
        .bind(&key.cose)
        .bind(sign_count)
        .bind(key.aaguid)
        .bind(key.backup_eligible)
        .bind(key.backup_state)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// A live session whose refresh token is `token`; returns its id.
    pub async fn session(
        &self,
        customer_id: i64,
        token: &str,
        expires_in: chrono::Duration,
        revoked: bool,
    ) -> i64 {
        let expires_at = Utc::now() + expires_in;
        let revoked_at: Option<DateTime<Utc>> = revoked.then(Utc::now);
        sqlx::query_scalar(
            "INSERT INTO customer_sessions (customer_id, token_hash, created_at, last_seen_at, expires_at, revoked_at, user_agent, ip) \
             VALUES ($1, $2, now() - interval '3 days', now() - interval '5 hours', $3, $4, 'Mozilla/5.0', '203.0.113.7') RETURNING id",
        )
        .bind(customer_id)
        .bind(token_hash(token))
        .bind(expires_at)
        .bind(revoked_at)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn grant(
        &self,
        customer_id: i64,
        role: &str,
        expires_in: Option<chrono::Duration>,
        revoked: bool,
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO rbac_grants (customer_id, role, ticket_id, granted_by, reason, granted_at, expires_at, revoked_at) \
             VALUES ($1, $2, 'TICKET-42', 'ops@raxx.example', 'support escalation', now() - interval '10 days', $3, $4) RETURNING id",
        )
        .bind(customer_id)
        .bind(role)
        .bind(expires_in.map(|d| Utc::now() + d))
        .bind(revoked.then(Utc::now))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn migrated(&self, table: &str) -> Vec<i64> {
        sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE migrated_to_queue ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// hex SHA-256, as the legacy service stored refresh tokens.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub fn options() -> Options {
    Options {
        batch_size: 3,
        dry_run: false,
        now: Utc::now(),
    }
}

pub async fn backfill(queue: &PgPool, legacy: &LegacyDb, options: &Options) -> Report {
    queue_backfill::backfill(
        &repo(queue),
        &legacy.pool,
        options,
        &queue_backfill::run::NoProgress,
    )
    .await
    .unwrap()
}

pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn catch_up(pool: &PgPool) {
    for projection in queue_projections::catch_up(pool).await.unwrap() {
        assert!(projection.error.is_none(), "{:?}", projection.error);
    }
}

/// The legacy relying party: a webauthn-rs ceremony standing in for
/// py-webauthn, for the same RP id and origin as Queue.
pub fn legacy_rp() -> WebauthnCore {
    WebauthnCore::new_unsafe_experts_only(
        "Raxx",
        RP_ID,
        vec![Url::parse(ORIGIN).unwrap()],
        Duration::from_secs(300),
        Some(false),
        Some(false),
    )
}

/// What the legacy table holds for one passkey.
pub struct LegacyKey {
    pub raw_id: Vec<u8>,
    pub cose: Vec<u8>,
    pub aaguid: Option<Uuid>,
    pub backup_eligible: bool,
    pub backup_state: bool,
}

/// A software authenticator holding passkeys registered with the legacy RP.
pub struct Authenticator {
    pub soft: SoftPasskey,
    origin: Url,
}

impl Authenticator {
    pub fn new() -> Self {
        Self {
            soft: SoftPasskey::new(true),
            origin: Url::parse(ORIGIN).unwrap(),
        }
    }

    /// Registers a passkey at the legacy RP; returns the row py-webauthn
    /// would have stored (credential_public_key = the COSE_Key bytes).
    pub fn register_legacy(&mut self, user: &str) -> LegacyKey {
        let rp = legacy_rp();
        let user_id = Uuid::new_v4();
        let builder = rp
            .new_challenge_register_builder(user_id.as_bytes(), user, user)
            .unwrap()
            .attestation(AttestationConveyancePreference::None)
            .user_verification_policy(UserVerificationPolicy::Required);
        let (ccr, state) = rp.generate_challenge_register(builder).unwrap();
        let response = self.soft.do_registration(self.origin.clone(), ccr).unwrap();
        let credential = rp.register_credential(&response, &state, None).unwrap();
        let cose =
            queue_backfill::cose::credential_public_key(&response.response.attestation_object)
                .unwrap();
        LegacyKey {
            raw_id: credential.cred_id.to_vec(),
            cose,
            aaguid: Some(Uuid::nil()),
            backup_eligible: credential.backup_eligible,
            backup_state: credential.backup_state,
        }
    }

    /// A login at the legacy RP (moves the authenticator's counter on, as
    /// use before the cutover did).
    pub fn use_at_legacy(&mut self, key: &LegacyKey) {
        let rp = legacy_rp();
        let credential = queue_backfill::cose::legacy_credential(
            &key.raw_id,
            &key.cose,
            0,
            key.backup_eligible,
            key.backup_state,
        )
        .unwrap();
        let builder = rp
            .new_challenge_authenticate_builder(
                vec![credential],
                Some(UserVerificationPolicy::Required),
            )
            .unwrap();
        let (rcr, _state) = rp.generate_challenge_authenticate(builder).unwrap();
        self.soft
            .do_authentication(self.origin.clone(), rcr)
            .unwrap();
    }

    /// `navigator.credentials.get()` for Queue's login options.
    pub fn get(&mut self, options: &Value) -> Value {
        let rcr: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
        serde_json::to_value(
            self.soft
                .do_authentication(self.origin.clone(), rcr)
                .unwrap(),
        )
        .unwrap()
    }
}

/// The API on the test's Queue database.
pub struct TestApp {
    pub router: Router,
    _mail: TempDir,
}

pub struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Response {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

impl TestApp {
    pub fn new(pool: PgPool) -> Self {
        let dir =
            std::env::temp_dir().join(format!("queue-backfill-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = JwtKeySet::generate("test-1").unwrap().to_spec();
        let map: HashMap<String, String> = [
            ("QUEUE_RP_ID", RP_ID),
            ("QUEUE_RP_ORIGIN", ORIGIN),
            ("QUEUE_ISSUER", "https://queue.example"),
            ("QUEUE_AUDIENCE", "queue-tests"),
            ("QUEUE_JWT_KEYS", keys.as_str()),
            (
                "QUEUE_BACKUP_CODE_KEYS",
                "b1=2222222222222222222222222222222222222222222222222222222222222222",
            ),
            ("QUEUE_MAILER", "log"),
            ("QUEUE_MAILER_DIR", dir.to_str().unwrap()),
            ("FLAG_QUEUE_V1", "1"),
            ("QUEUE_RATE_LIMIT_PER_ADDRESS", "1000"),
            ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "1000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let names: Vec<String> = map.keys().cloned().collect();
        let config = Config::from_lookup_with_names(
            move |k| map.get(k).cloned(),
            names.iter().map(String::as_str),
        )
        .unwrap();
        let state = AppState::with_parts(
            pool,
            config,
            mac_keys(),
            ServiceClock::new(),
            Arc::new(LogMailer::new(dir.clone())),
        )
        .unwrap();
        let router = queue_api::app(state).layer(MockConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
        Self {
            router,
            _mail: TempDir(dir),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    async fn send(&self, request: Request<Body>) -> Response {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Response {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A login (by email, or discoverable) with a soft authenticator of any
    /// algorithm.
    pub async fn login_soft(
        &self,
        soft: &mut crate::soft::SoftAuthenticator,
        email: Option<&str>,
        tamper: &crate::soft::Tamper,
    ) -> Response {
        let body = match email {
            Some(email) => json!({"email": email}),
            None => json!({}),
        };
        let begin = self.post("/api/v1/auth/webauthn/login/begin", body).await;
        assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
        let credential = soft.get_with(&begin.json["options"], tamper);
        self.post(
            "/api/v1/auth/webauthn/login/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
        )
        .await
    }

    /// A login by email with this authenticator.
    pub async fn login(&self, authenticator: &mut Authenticator, email: &str) -> Response {
        let begin = self
            .post("/api/v1/auth/webauthn/login/begin", json!({"email": email}))
            .await;
        assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
        let credential = authenticator.get(&begin.json["options"]);
        self.post(
            "/api/v1/auth/webauthn/login/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
        )
        .await
    }
}
