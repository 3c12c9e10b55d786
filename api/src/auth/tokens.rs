//! Secrets handed to clients (refresh tokens, email tokens, backup codes),
//! the token response, and session creation. Only SHA-256 hashes of the
//! secrets enter events.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use queue_domain::customer::CustomerState;
use queue_domain::session::{AuthMethod, SessionCommand, SessionEvent};
use queue_domain::types::{CredentialId, CustomerId, SecretHash, SessionFamilyId, SessionId};
use queue_domain::Session;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::jwt::{self, Claims, ACCESS_TOKEN_TTL_SECS};
use crate::http::error::ApiError;
use crate::state::AppState;
use queue_eventstore::{Batch, Loaded};

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A key for one purpose derived from a secret: SHA-256(label ‖ 0 ‖ secret).
pub fn derive_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update([0u8]);
    hasher.update(secret);
    hasher.finalize().into()
}

/// `<prefix>_<32 hex id>_<43 base64url chars: 256 random bits>`.
fn id_token(prefix: &str, id: &Uuid) -> String {
    format!(
        "{prefix}_{}_{}",
        id.simple(),
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

fn parse_id_token(prefix: &str, token: &str) -> Option<Uuid> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('_')?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() != 43 {
        return None;
    }
    Uuid::try_parse(id).ok()
}

/// A new opaque refresh token for a session (the session id is readable in
/// it so refresh needs no lookup table; the secret part is 256 bits).
pub fn new_refresh_token(session: SessionId) -> String {
    id_token("qrt", session.as_uuid())
}

pub fn refresh_token_session(token: &str) -> Option<SessionId> {
    parse_id_token("qrt", token).map(SessionId::from)
}

/// The email verification token of one request: `qev_<customer>_<43
/// base64url chars>`, the secret part HMAC-SHA256(K, customer ‖ sequence)
/// where `sequence` is the request event's place in the customer's stream
/// and K is derived from a MAC key. Not random, so that neither the event
/// log nor the mail outbox has to hold it: the outbox sender derives it
/// again from the row (customer, sequence) and checks it against the hash
/// in the event (ADR 0208). Whoever holds a MAC key can derive tokens, as
/// they could already forge the events that these tokens are checked against.
pub fn email_token(mac_key: &[u8], customer: CustomerId, sequence: u64) -> String {
    use hmac::{Hmac, Mac};
    let key = derive_key(mac_key, b"queue email verification token v1");
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of every length")]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("an HMAC key");
    mac.update(customer.as_uuid().as_bytes());
    mac.update(&sequence.to_be_bytes());
    format!(
        "qev_{}_{}",
        customer.as_uuid().simple(),
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// The token of a request whose event holds `token_hash`, derived with
/// whichever of `keys` reproduces that hash (the current key, or an older
/// one after a rotation); `None` when no key does.
pub fn email_token_matching(
    keys: &queue_eventstore::MacKeys,
    customer: CustomerId,
    sequence: u64,
    token_hash: &SecretHash,
) -> Option<String> {
    keys.ids()
        .filter_map(|id| keys.get(id))
        .map(|key| email_token(key, customer, sequence))
        .find(|token| hash(token) == *token_hash)
}

pub fn email_token_customer(token: &str) -> Option<CustomerId> {
    parse_id_token("qev", token).map(CustomerId::from)
}

pub fn hash(secret: &str) -> SecretHash {
    SecretHash::of(secret.as_bytes())
}

/// Crockford base32 without I, L, O, U: unambiguous when read aloud or typed.
pub(crate) const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The form a backup code is hashed in: upper case, no separators or spaces.
pub fn normalize_backup_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Login, registration, refresh and backup-code answers (contract "Tokens").
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds: 900.
    pub expires_in: i64,
    pub refresh_token: String,
    pub session_id: String,
    pub customer_id: String,
    /// Registration of a new customer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
}

/// Mints the access token for a session and wraps it with the refresh token.
pub fn token_response(
    state: &AppState,
    customer: &CustomerState,
    session_id: SessionId,
    method: Option<&AuthMethod>,
    auth_time: Option<DateTime<Utc>>,
    refresh_token: String,
    now: DateTime<Utc>,
) -> Result<TokenResponse, ApiError> {
    let config = state.config();
    let amr = method.map_or("webauthn", AuthMethod::amr);
    let claims = Claims {
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        sub: customer.customer_id.to_string(),
        sid: session_id.to_string(),
        iat: now.timestamp(),
        exp: now.timestamp() + ACCESS_TOKEN_TTL_SECS,
        jti: Uuid::new_v4().to_string(),
        roles: customer
            .active_roles(now)
            .into_iter()
            .map(String::from)
            .collect(),
        amr: vec![amr.to_owned()],
        tid: customer.tenant_id.to_string(),
        auth_time: auth_time.map(|t| t.timestamp()),
    };
    let access_token = jwt::mint(&state.inner.jwt_keys.get(), &claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: ACCESS_TOKEN_TTL_SECS,
        refresh_token,
        session_id: session_id.to_string(),
        customer_id: customer.customer_id.to_string(),
        credential_id: None,
    })
}

/// A new session: its stream, the events (added to `batch`) and the refresh token.
pub struct NewSession {
    pub session_id: SessionId,
    pub method: AuthMethod,
    pub refresh_token: String,
}

/// A session of a customer who proved presence now (a passkey, a backup
/// code): its `auth_time` is `now`.
pub async fn create_session(
    state: &AppState,
    batch: &mut Batch,
    customer_id: CustomerId,
    method: AuthMethod,
    now: DateTime<Utc>,
) -> Result<NewSession, ApiError> {
    create_session_authenticated_at(state, batch, customer_id, method, now, None).await
}

/// A session whose customer authenticated at `authn_instant` when that is
/// before `now` (a SAML login answered from the IdP's own session): its
/// `auth_time`, so step-up asks for a fresh authentication.
pub async fn create_session_authenticated_at(
    state: &AppState,
    batch: &mut Batch,
    customer_id: CustomerId,
    method: AuthMethod,
    now: DateTime<Utc>,
    authn_instant: Option<DateTime<Utc>>,
) -> Result<NewSession, ApiError> {
    let session_id = SessionId::from(Uuid::now_v7());
    let refresh_token = new_refresh_token(session_id);
    let mut session: Loaded<Session> = Loaded::new_stream(session_id.to_string());
    let events: Vec<SessionEvent> = session
        .execute(SessionCommand::Create {
            customer_id,
            method,
            refresh_hash: hash(&refresh_token),
            family_id: SessionFamilyId::from(Uuid::new_v4()),
            idle_timeout_secs: state.config().idle_timeout_secs,
            absolute_timeout_secs: state.config().absolute_timeout_secs,
            at: now,
            authn_instant,
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    batch.add(&mut session, &events)?;
    Ok(NewSession {
        session_id,
        method,
        refresh_token,
    })
}

/// `AuthMethod::Webauthn` for a passkey.
pub fn webauthn_method(credential_id: CredentialId) -> AuthMethod {
    AuthMethod::Webauthn { credential_id }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refresh_tokens_carry_their_session_and_256_bits() {
        let id = SessionId::from(Uuid::new_v4());
        let token = new_refresh_token(id);
        assert_eq!(refresh_token_session(&token), Some(id));
        assert_ne!(new_refresh_token(id), token);
        assert_eq!(refresh_token_session("qrt_nope"), None);
        assert_eq!(refresh_token_session(&token.replace("qrt", "qev")), None);
    }

    #[test]
    fn backup_codes_normalise() {
        assert_eq!(normalize_backup_code(" abcde-12345 "), "ABCDE12345");
    }
}
