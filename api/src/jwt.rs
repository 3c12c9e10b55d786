//! Access tokens: EdDSA (Ed25519) JWTs with `kid`, verified offline by
//! callers against `/.well-known/jwks.json`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Access tokens live 15 minutes (contract).
pub const ACCESS_TOKEN_TTL_SECS: i64 = 900;

/// One signing key.
#[derive(Clone)]
pub struct JwtKey {
    pub kid: String,
    signing: SigningKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKey {
    pub fn from_seed(kid: &str, seed: [u8; 32]) -> Result<Self, String> {
        if kid.is_empty()
            || kid.len() > 64
            || !kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err("key ids must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into());
        }
        let signing = SigningKey::from_bytes(&seed);
        let der = signing
            .to_pkcs8_der()
            .map_err(|_| "cannot encode the key".to_owned())?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let decoding = DecodingKey::from_ed_der(signing.verifying_key().as_bytes());
        Ok(Self {
            kid: kid.to_owned(),
            signing,
            encoding,
            decoding,
        })
    }

    /// The public key, base64url without padding (the JWK `x`).
    pub fn public_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes())
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_x(),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Key material for deriving other server secrets (never leaves the process).
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
}

/// The signing keys: the first signs, all verify and are published.
#[derive(Clone)]
pub struct JwtKeySet {
    keys: Vec<JwtKey>,
}

impl fmt::Debug for JwtKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeySet")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JwtKeySet {
    /// `kid1=<seed>,kid2=<seed>`: 32-byte Ed25519 seeds as 64 hex digits or
    /// base64url. The first key is current; the others are previous keys
    /// that still verify and stay in the JWKS.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys: Vec<JwtKey> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((kid, seed)) = part.split_once('=') else {
                return Err("expected kid=<key>[,kid=<key>…]".into());
            };
            let seed = decode_seed(seed.trim()).ok_or_else(|| {
                format!("key {kid}: expected 32 bytes as 64 hex digits or base64url")
            })?;
            if keys.iter().any(|k| k.kid == kid.trim()) {
                return Err(format!("key id {} appears twice", kid.trim()));
            }
            keys.push(JwtKey::from_seed(kid.trim(), seed)?);
        }
        if keys.is_empty() {
            return Err("no keys given".into());
        }
        Ok(Self { keys })
    }

    /// A new random key set with one key (dev mode, tests).
    pub fn generate(kid: &str) -> Result<Self, String> {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Ok(Self {
            keys: vec![JwtKey::from_seed(kid, seed)?],
        })
    }

    /// The spec form of this set (for writing a key file).
    pub fn to_spec(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{}={}", k.kid, hex::encode(k.seed())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A new set whose current key is `key`, keeping the others (rotation).
    pub fn rotated(&self, key: JwtKey) -> Self {
        let kid = key.kid.clone();
        let mut keys = vec![key];
        keys.extend(self.keys.iter().filter(|k| k.kid != kid).cloned());
        Self { keys }
    }

    pub fn current(&self) -> &JwtKey {
        // Never empty: `parse` and `generate` refuse an empty set.
        &self.keys[0]
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    pub fn find(&self, kid: &str) -> Option<&JwtKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": self.keys.iter().map(JwtKey::jwk).collect::<Vec<_>>() })
    }
}

fn decode_seed(raw: &str) -> Option<[u8; 32]> {
    let bytes = if raw.len() == 64 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(raw).ok()?
    } else {
        URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).ok()?
    };
    bytes.try_into().ok()
}

/// Keys shared by the whole process and swappable at run time (rotation).
/// `degraded` is set when a reload failed and the last good keys stay in use.
#[derive(Clone, Debug)]
pub struct SharedJwtKeys {
    keys: Arc<RwLock<Arc<JwtKeySet>>>,
    degraded: Arc<AtomicBool>,
}

impl SharedJwtKeys {
    pub fn new(keys: JwtKeySet) -> Self {
        Self {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            degraded: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn get(&self) -> Arc<JwtKeySet> {
        match self.keys.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Swaps in freshly read keys; a good read ends a degraded spell.
    pub fn replace(&self, keys: JwtKeySet) {
        match self.keys.write() {
            Ok(mut guard) => *guard = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
        self.degraded.store(false, Ordering::SeqCst);
    }

    /// Records that a reload failed; the current keys stay in use.
    pub fn mark_degraded(&self) {
        self.degraded.store(true, Ordering::SeqCst);
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }
}

/// The access token's claims (contract "Tokens").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub roles: Vec<String>,
    pub amr: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot sign the token: {0}")]
    Sign(String),
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
}

/// Signs claims with the current key.
pub fn mint(keys: &JwtKeySet, claims: &Claims) -> Result<String, JwtError> {
    let key = keys.current();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| JwtError::Sign(e.to_string()))
}

/// Verifies signature, issuer and audience; expiry against `now` (the
/// service clock, so tests can move time).
pub fn verify(
    keys: &JwtKeySet,
    token: &str,
    issuer: &str,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<Claims, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
    if header.alg != Algorithm::EdDSA {
        return Err(JwtError::Invalid);
    }
    let kid = header.kid.ok_or(JwtError::Invalid)?;
    let key = keys.find(&kid).ok_or(JwtError::Invalid)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
        .map_err(|_| JwtError::Invalid)?;
    if data.claims.exp <= now.timestamp() {
        return Err(JwtError::Expired);
    }
    Ok(data.claims)
}

/// The Postgres channel on which `queue keys rotate --kind jwt` tells every
/// instance to reload its JWT key file.
pub const ROTATION_CHANNEL: &str = "queue_jwt_keys";

/// Reads a key file (`QUEUE_JWT_KEYS_FILE` form).
pub fn read_key_file(path: &std::path::Path) -> Result<JwtKeySet, String> {
    let spec =
        std::fs::read_to_string(path).map_err(|e| format!("{}: {}", path.display(), e.kind()))?;
    JwtKeySet::parse(spec.trim())
}

/// Adds a new key to the file and makes it current; previous keys stay
/// (they keep verifying tokens already issued and stay in the JWKS), except
/// that at most `keep` previous keys are kept. Returns the new key id.
pub fn rotate_key_file(path: &std::path::Path, keep: usize) -> Result<String, String> {
    let current = read_key_file(path)?;
    let kid = format!("k{}", Utc::now().format("%Y%m%d%H%M%S%3f"));
    let fresh = JwtKeySet::generate(&kid)?;
    let mut rotated = current.rotated(fresh.current().clone());
    rotated.keys.truncate(keep + 1);
    queue_eventstore::keys::write_key_file(
        path,
        &rotated.to_spec(),
        queue_eventstore::keys::KeyFileWrite::Replace,
    )?;
    Ok(kid)
}

/// Tells every instance listening on this database to reload its keys.
pub async fn notify_rotation(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, 'rotated')")
        .bind(ROTATION_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

/// Reloads `keys` from `path` whenever a rotation is announced; runs until
/// `stop` turns true. Connection losses are retried.
pub async fn run_key_reloader(
    pool: sqlx::PgPool,
    keys: SharedJwtKeys,
    path: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "JWT key reloader cannot listen; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if let Err(e) = listener.listen(ROTATION_CHANNEL).await {
            tracing::warn!(error = %e, "JWT key reloader cannot listen; retrying");
            continue;
        }
        // A rotation may have happened while not listening.
        reload(&keys, &path);
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    Ok(_) => {
                        reload(&keys, &path);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "JWT key reloader lost its connection");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Re-reads the key file; on failure keeps the last good keys and marks
/// them degraded (reported in `/readyz` and `queue_jwt_keys_degraded`).
pub fn reload(keys: &SharedJwtKeys, path: &std::path::Path) -> bool {
    match read_key_file(path) {
        Ok(set) => {
            if set.kids() != keys.get().kids() {
                tracing::info!(kids = ?set.kids(), "JWT signing keys reloaded");
            }
            keys.replace(set);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "JWT key file unreadable: keeping the last good keys (degraded)");
            keys.mark_degraded();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn minted_tokens_verify_and_name_their_key() {
        let keys = JwtKeySet::generate("k1").unwrap();
        let now = Utc::now();
        let claims = Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "s".into(),
            sid: "sid".into(),
            iat: now.timestamp(),
            exp: now.timestamp() + ACCESS_TOKEN_TTL_SECS,
            jti: "j".into(),
            roles: vec!["antlers-user".into()],
            amr: vec!["webauthn".into()],
        };
        let token = mint(&keys, &claims).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
            Some("k1")
        );
        assert_eq!(verify(&keys, &token, "iss", "aud", now).unwrap(), claims);
        assert!(verify(&keys, &token, "other", "aud", now).is_err());
        assert!(matches!(
            verify(
                &keys,
                &token,
                "iss",
                "aud",
                now + chrono::Duration::seconds(901)
            ),
            Err(JwtError::Expired)
        ));
        // After rotation the old token still verifies; new tokens use the new key.
        let rotated = keys.rotated(JwtKeySet::generate("k2").unwrap().current().clone());
        assert!(verify(&rotated, &token, "iss", "aud", now).is_ok());
        assert_eq!(rotated.kids(), vec!["k2", "k1"]);
        let spec = rotated.to_spec();
        assert_eq!(JwtKeySet::parse(&spec).unwrap().kids(), vec!["k2", "k1"]);
    }
}
