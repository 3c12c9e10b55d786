//! A legacy database beside the test's Queue database, legacy rows, a
//! software passkey registered the way the legacy service did, and the API
//! router for what an imported customer does next.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_backfill::{Options, Report};
use queue_eventstore::{ChainedEventRepository, SystemClock};
use queue_testkit::db::ScratchDb;
use serde_json::Value;
use sha2::Digest;
use sqlx::PgPool;
use url::Url;
use uuid::Uuid;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, RequestChallengeResponse, UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

use queue_eventstore::roles::Role;
pub use queue_testkit::app::{connect_as, Response, TestApp, ORIGIN, RP_ID};
pub use queue_testkit::keys::shared_mac_keys as mac_keys;

pub fn repo(pool: &PgPool) -> ChainedEventRepository {
    ChainedEventRepository::new(pool.clone(), mac_keys(), Arc::new(SystemClock))
}

/// A second, fresh database holding the legacy tables.
pub struct LegacyDb {
    pub pool: PgPool,
    scratch: ScratchDb,
}

impl LegacyDb {
    pub async fn create(queue: &PgPool) -> Self {
        let scratch = ScratchDb::beside(queue, "legacy", 4).await.unwrap();
        sqlx::raw_sql(queue_backfill::LEGACY_SCHEMA)
            .execute(&scratch.pool)
            .await
            .unwrap();
        Self {
            pool: scratch.pool.clone(),
            scratch,
        }
    }

    pub async fn drop(self) {
        let _ = self.scratch.drop_db().await;
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

/// Runs the backfill as `queue backfill` runs in production: appending as
/// the service role (ADR 0212), given the owner's pool.
pub async fn backfill(queue: &PgPool, legacy: &LegacyDb, options: &Options) -> Report {
    let service = connect_as(queue, Role::Service).await;
    let report = queue_backfill::backfill(
        &repo(&service),
        &legacy.pool,
        options,
        &queue_backfill::run::NoProgress,
    )
    .await
    .unwrap();
    service.close().await;
    report
}

pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Runs the projections as the projector role, given the owner's pool.
pub async fn catch_up(pool: &PgPool) {
    let projector = connect_as(pool, Role::Projector).await;
    for projection in queue_projections::catch_up(&projector).await.unwrap() {
        assert!(projection.error.is_none(), "{:?}", projection.error);
    }
    projector.close().await;
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

    /// A login at Queue by email with this authenticator.
    pub async fn login(&mut self, app: &TestApp, email: &str) -> Response {
        let begin = app.login_begin(Some(email)).await;
        let credential = self.get(&begin["options"]);
        app.login_complete(&begin["challenge_id"], credential).await
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
