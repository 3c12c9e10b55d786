//! Access tokens: JWTs with `kid`, signed with EdDSA (Ed25519, the
//! default), ES256 (P-256) or RS256 (RSA, 2048 bits or more), verified
//! offline by callers against `/.well-known/jwks.json`.
//!
//! Key specs (`QUEUE_JWT_KEYS` / the key file): `kid=<key>` entries,
//! comma-separated, the first signs. `<key>` is an Ed25519 seed (64 hex
//! digits or base64url; optionally prefixed `eddsa:`), `es256:<PKCS#8 DER>`
//! or `rs256:<PKCS#8 DER>` in base64 (standard or url-safe, padding and
//! white space ignored). ADR 0207.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Access tokens live 15 minutes (contract).
pub const ACCESS_TOKEN_TTL_SECS: i64 = 900;

/// The smallest RSA modulus accepted for RS256, in bits.
pub const RSA_MIN_BITS: usize = 2048;
/// The largest RSA modulus accepted: the `rsa` crate (jsonwebtoken's
/// RustCrypto backend) refuses to verify with larger public keys.
pub const RSA_MAX_BITS: usize = 4096;
/// The size of the RSA keys Queue generates.
pub const RSA_GENERATED_BITS: usize = 2048;

/// A signing algorithm (`QUEUE_JWT_ALG`): what new keys are generated as.
/// The key file decides what signs: its first key, whatever its type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JwtAlg {
    #[default]
    EdDSA,
    ES256,
    RS256,
}

impl JwtAlg {
    pub const ALL: [JwtAlg; 3] = [JwtAlg::EdDSA, JwtAlg::ES256, JwtAlg::RS256];

    /// The JOSE name (`alg` in headers and JWKs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    /// `EdDSA`, `ES256` or `RS256`, any case.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str().eq_ignore_ascii_case(raw.trim()))
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for JwtAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JwtAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| "expected EdDSA, ES256 or RS256".to_owned())
    }
}

/// One signing key.
#[derive(Clone)]
pub struct JwtKey {
    pub kid: String,
    alg: JwtAlg,
    /// This key's value in a key spec (the private key: never logged).
    spec_value: String,
    /// Key material for deriving other server secrets.
    seed: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty()
        || kid.len() > 64
        || !kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err("key ids must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into());
    }
    Ok(())
}

impl JwtKey {
    /// An EdDSA key from its 32-byte Ed25519 seed.
    pub fn from_seed(kid: &str, seed: [u8; 32]) -> Result<Self, String> {
        check_kid(kid)?;
        let signing = SigningKey::from_bytes(&seed);
        let der = signing
            .to_pkcs8_der()
            .map_err(|_| "cannot encode the key".to_owned())?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let public = signing.verifying_key();
        let decoding = DecodingKey::from_ed_der(public.as_bytes());
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(public.as_bytes()),
        });
        Ok(Self::assemble(
            kid,
            JwtAlg::EdDSA,
            // The 64-hex-digit seed: the form every earlier version reads.
            (hex::encode(seed), seed),
            encoding,
            decoding,
            jwk,
        ))
    }

    /// An ES256 key (P-256).
    pub fn from_p256(kid: &str, secret: p256::SecretKey) -> Result<Self, String> {
        check_kid(kid)?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| "cannot encode the key".to_owned())?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err("cannot encode the public key".into());
        };
        let decoding = DecodingKey::from_ec_der(point.as_bytes());
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        });
        let private = private_parts(JwtAlg::ES256, der.as_bytes());
        Ok(Self::assemble(
            kid,
            JwtAlg::ES256,
            private,
            encoding,
            decoding,
            jwk,
        ))
    }

    /// An RS256 key; the modulus must have `RSA_MIN_BITS` to `RSA_MAX_BITS` bits.
    pub fn from_rsa(kid: &str, private: rsa::RsaPrivateKey) -> Result<Self, String> {
        check_kid(kid)?;
        let bits = private.n().bits();
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(format!(
                "key {kid}: RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits"
            ));
        }
        private
            .validate()
            .map_err(|_| format!("key {kid}: not a valid RSA key"))?;
        // jsonwebtoken's RustCrypto backend signs with a PKCS#1 DER key.
        let der = private
            .to_pkcs1_der()
            .map_err(|_| "cannot encode the key".to_owned())?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let n = private.n().to_bytes_be();
        let e = private.e().to_bytes_be();
        let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
        let jwk = json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
        });
        let pkcs8 = private
            .to_pkcs8_der()
            .map_err(|_| "cannot encode the key".to_owned())?;
        let private = private_parts(JwtAlg::RS256, pkcs8.as_bytes());
        Ok(Self::assemble(
            kid,
            JwtAlg::RS256,
            private,
            encoding,
            decoding,
            jwk,
        ))
    }

    fn assemble(
        kid: &str,
        alg: JwtAlg,
        (spec_value, seed): (String, [u8; 32]),
        encoding: EncodingKey,
        decoding: DecodingKey,
        mut jwk: Value,
    ) -> Self {
        if let Some(fields) = jwk.as_object_mut() {
            fields.insert("kid".into(), json!(kid));
            fields.insert("alg".into(), json!(alg.as_str()));
            fields.insert("use".into(), json!("sig"));
        }
        Self {
            kid: kid.to_owned(),
            alg,
            spec_value,
            seed,
            encoding,
            decoding,
            jwk,
        }
    }

    /// A new random key of this algorithm (RSA: `RSA_GENERATED_BITS`).
    pub fn generate(kid: &str, alg: JwtAlg) -> Result<Self, String> {
        let mut rng = rand::rngs::OsRng;
        match alg {
            JwtAlg::EdDSA => {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rng, &mut seed);
                Self::from_seed(kid, seed)
            }
            JwtAlg::ES256 => Self::from_p256(kid, p256::SecretKey::random(&mut rng)),
            JwtAlg::RS256 => {
                let private = rsa::RsaPrivateKey::new(&mut rng, RSA_GENERATED_BITS)
                    .map_err(|_| "cannot generate an RSA key".to_owned())?;
                Self::from_rsa(kid, private)
            }
        }
    }

    /// One key-spec value: an Ed25519 seed (optionally `eddsa:`-prefixed),
    /// `es256:<PKCS#8>` or `rs256:<PKCS#8>`. Errors never echo the value.
    pub fn parse(kid: &str, value: &str) -> Result<Self, String> {
        let value: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let (kind, material) = match value.split_once(':') {
            Some((kind, material)) => (kind.to_ascii_lowercase(), material),
            None => ("eddsa".to_owned(), value.as_str()),
        };
        match kind.as_str() {
            "eddsa" => {
                let seed = decode_seed(material).ok_or_else(|| {
                    format!("key {kid}: expected 32 bytes as 64 hex digits or base64url")
                })?;
                Self::from_seed(kid, seed)
            }
            "es256" => {
                let der = decode_base64(material)
                    .ok_or_else(|| format!("key {kid}: expected es256:<base64 PKCS#8>"))?;
                let secret = p256::SecretKey::from_pkcs8_der(&der)
                    .map_err(|_| format!("key {kid}: not a PKCS#8 P-256 private key"))?;
                Self::from_p256(kid, secret)
            }
            "rs256" => {
                let der = decode_base64(material)
                    .ok_or_else(|| format!("key {kid}: expected rs256:<base64 PKCS#8>"))?;
                let private = rsa::RsaPrivateKey::from_pkcs8_der(&der)
                    .map_err(|_| format!("key {kid}: not a PKCS#8 RSA private key"))?;
                Self::from_rsa(kid, private)
            }
            _ => Err(format!(
                "key {kid}: unknown key type (expected a seed, eddsa:, es256: or rs256:)"
            )),
        }
    }

    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    /// The public JWK: `kty` with `crv`/`x`(/`y`) or `n`/`e`, and `kid`,
    /// `alg`, `use`.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// Key material for deriving other server secrets (never leaves the
    /// process): the Ed25519 seed, else SHA-256 over the PKCS#8 form.
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.seed
    }
}

/// The spec value (`es256:`/`rs256:` + url-safe base64 of the PKCS#8 DER)
/// and the derived seed of a P-256 or RSA key.
fn private_parts(alg: JwtAlg, pkcs8: &[u8]) -> (String, [u8; 32]) {
    let prefix = match alg {
        JwtAlg::EdDSA => "eddsa",
        JwtAlg::ES256 => "es256",
        JwtAlg::RS256 => "rs256",
    };
    let mut hasher = Sha256::new();
    hasher.update(b"queue jwt key seed\0");
    hasher.update(alg.as_str());
    hasher.update(pkcs8);
    (
        format!("{prefix}:{}", URL_SAFE_NO_PAD.encode(pkcs8)),
        hasher.finalize().into(),
    )
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
                &self
                    .keys
                    .iter()
                    .map(|k| format!("{} ({})", k.kid, k.alg))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JwtKeySet {
    /// `kid1=<key>,kid2=<key>` (see the module doc for `<key>`). The first
    /// key is current; the others are previous keys that still verify and
    /// stay in the JWKS. Keys may be of different types (a migration from
    /// one algorithm to another).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys: Vec<JwtKey> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((kid, value)) = part.split_once('=') else {
                return Err("expected kid=<key>[,kid=<key>…]".into());
            };
            let kid = kid.trim();
            // Errors below name the kid: make sure it is one, and not key
            // material that lost its `kid=` (a padded base64 key alone).
            check_kid(kid)?;
            if value.trim().trim_end_matches('=').is_empty() {
                return Err(format!("entry {}: no key after kid=", keys.len() + 1));
            }
            if keys.iter().any(|k| k.kid == kid) {
                return Err(format!("key id {kid} appears twice"));
            }
            keys.push(JwtKey::parse(kid, value)?);
        }
        if keys.is_empty() {
            return Err("no keys given".into());
        }
        Ok(Self { keys })
    }

    /// A new random EdDSA key set with one key (dev mode, tests).
    pub fn generate(kid: &str) -> Result<Self, String> {
        Self::generate_with(kid, JwtAlg::EdDSA)
    }

    /// A new random key set with one key of `alg`.
    pub fn generate_with(kid: &str, alg: JwtAlg) -> Result<Self, String> {
        Ok(Self {
            keys: vec![JwtKey::generate(kid, alg)?],
        })
    }

    /// The spec form of this set (for writing a key file): one key a line,
    /// comma-terminated, so RSA keys stay readable.
    pub fn to_spec(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{}={}", k.kid, k.spec_value))
            .collect::<Vec<_>>()
            .join(",\n")
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

    /// The algorithms of the published keys, the signing key's first, each once.
    pub fn algs(&self) -> Vec<JwtAlg> {
        let mut algs = Vec::new();
        for key in &self.keys {
            if !algs.contains(&key.alg) {
                algs.push(key.alg);
            }
        }
        algs
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

/// Base64 in either alphabet, padding optional.
fn decode_base64(raw: &str) -> Option<Vec<u8>> {
    let normal: String = raw
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD
        .decode(normal)
        .ok()
        .filter(|b| !b.is_empty())
}

/// Keys shared by the whole process and swappable at run time (rotation):
/// the one reloadable shape (`queue_eventstore::Reloadable`, lock-free
/// reads). `degraded` is set when a reload failed and the last good keys
/// stay in use.
pub type SharedJwtKeys = queue_eventstore::Reloadable<JwtKeySet>;

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
    /// The customer's tenant (issue 22). Tokens minted before tenants
    /// existed carry none and are the default tenant's.
    #[serde(default = "default_tid")]
    pub tid: String,
    /// OIDC `auth_time`: the session's last authentication (login, backup
    /// code, or reauth), seconds since the epoch. Informational for
    /// callers: Queue itself checks step-up against the session's events
    /// (ADR 0211). Absent for imported sessions until they reauthenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

fn default_tid() -> String {
    queue_domain::types::TenantId::DEFAULT.to_string()
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
    let mut header = Header::new(key.alg.algorithm());
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
    let kid = header.kid.ok_or(JwtError::Invalid)?;
    let key = keys.find(&kid).ok_or(JwtError::Invalid)?;
    // The key decides the algorithm, never the token (no algorithm confusion).
    if header.alg != key.alg.algorithm() {
        return Err(JwtError::Invalid);
    }
    let mut validation = Validation::new(key.alg.algorithm());
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

/// Adds a new key of `alg` to the file and makes it current; previous keys
/// stay (they keep verifying tokens already issued and stay in the JWKS),
/// except that at most `keep` previous keys are kept. A missing file is
/// created with the new key alone (a first install). Returns the new key id.
pub fn rotate_key_file(path: &std::path::Path, keep: usize, alg: JwtAlg) -> Result<String, String> {
    let kid = queue_eventstore::keys::new_key_id("k");
    let fresh = JwtKey::generate(&kid, alg)?;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A first install: the directory may be new too (owner-only).
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)
                    .map_err(|e| format!("{}: cannot create: {}", dir.display(), e.kind()))?;
            }
            let set = JwtKeySet { keys: vec![fresh] };
            queue_eventstore::keys::write_key_file(
                path,
                &set.to_spec(),
                queue_eventstore::keys::KeyFileWrite::CreateNew,
            )?;
            return Ok(kid);
        }
        Err(e) => return Err(format!("{}: {}", path.display(), e.kind())),
        Ok(_) => {}
    }
    let current = read_key_file(path)?;
    let mut rotated = current.rotated(fresh);
    rotated.keys.truncate(keep + 1);
    queue_eventstore::keys::write_key_file(
        path,
        &rotated.to_spec(),
        queue_eventstore::keys::KeyFileWrite::Replace,
    )?;
    Ok(kid)
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Tells every instance listening on this database to reload its keys.
pub async fn notify_rotation(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    queue_eventstore::rotation::notify(pool, ROTATION_CHANNEL).await
}

/// Reloads `keys` from `path` whenever a rotation is announced; runs until
/// `stop` turns true. Connection losses are retried.
pub async fn run_key_reloader(
    pool: sqlx::PgPool,
    keys: SharedJwtKeys,
    path: std::path::PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    // The one reloader loop of every key set (listen, reload on each
    // notification, reconnect with backoff).
    queue_eventstore::rotation::run_reloader(pool, ROTATION_CHANNEL, "jwt", stop, move || {
        reload(&keys, &path)
    })
    .await;
}

/// Re-reads the key file; on failure keeps the last good keys and marks
/// them degraded (reported in `/readyz` and `queue_jwt_keys_degraded`).
pub fn reload(keys: &SharedJwtKeys, path: &std::path::Path) -> bool {
    queue_eventstore::rotation::reload_keys(
        "jwt",
        || {
            let set = read_key_file(path)?;
            let changed = (set.kids() != keys.get().kids()).then(|| set.current().kid.clone());
            keys.replace(set);
            Ok(changed)
        },
        || keys.mark_degraded(),
    )
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
            tid: default_tid(),
            auth_time: None,
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

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "s".into(),
            sid: "sid".into(),
            iat: now.timestamp(),
            exp: now.timestamp() + ACCESS_TOKEN_TTL_SECS,
            jti: "j".into(),
            roles: vec![],
            amr: vec!["webauthn".into()],
            tid: default_tid(),
            auth_time: None,
        }
    }

    #[test]
    fn every_algorithm_signs_verifies_and_survives_the_key_file() {
        let now = Utc::now();
        for alg in JwtAlg::ALL {
            let keys = JwtKeySet::generate_with("k1", alg).unwrap();
            let token = mint(&keys, &claims(now)).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg.algorithm(), "{alg}");
            assert_eq!(header.kid.as_deref(), Some("k1"));
            assert!(verify(&keys, &token, "iss", "aud", now).is_ok(), "{alg}");

            // The spec round-trips to the same public key and the same seed.
            let spec = keys.to_spec();
            let again = JwtKeySet::parse(&spec).unwrap();
            assert_eq!(again.jwks(), keys.jwks(), "{alg}");
            assert_eq!(again.current().seed(), keys.current().seed(), "{alg}");
            assert!(verify(&again, &token, "iss", "aud", now).is_ok(), "{alg}");
            match alg {
                JwtAlg::EdDSA => assert!(!spec.contains(':'), "legacy form: {spec}"),
                JwtAlg::ES256 => assert!(spec.starts_with("k1=es256:")),
                JwtAlg::RS256 => assert!(spec.starts_with("k1=rs256:")),
            }

            // A JWK a standard library reads, naming its algorithm.
            let jwk = keys.current().jwk();
            assert_eq!(jwk["alg"], alg.as_str());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], "k1");
            let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
            let decoding = DecodingKey::from_jwk(&parsed).unwrap();
            let mut validation = Validation::new(alg.algorithm());
            validation.set_audience(&["aud"]);
            jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).unwrap();
            match alg {
                JwtAlg::EdDSA => {
                    assert_eq!(
                        (jwk["kty"].as_str(), jwk["crv"].as_str()),
                        (Some("OKP"), Some("Ed25519"))
                    );
                    assert_eq!(
                        URL_SAFE_NO_PAD
                            .decode(jwk["x"].as_str().unwrap())
                            .unwrap()
                            .len(),
                        32
                    );
                }
                JwtAlg::ES256 => {
                    assert_eq!(
                        (jwk["kty"].as_str(), jwk["crv"].as_str()),
                        (Some("EC"), Some("P-256"))
                    );
                    for c in ["x", "y"] {
                        assert_eq!(
                            URL_SAFE_NO_PAD
                                .decode(jwk[c].as_str().unwrap())
                                .unwrap()
                                .len(),
                            32
                        );
                    }
                }
                JwtAlg::RS256 => {
                    assert_eq!(jwk["kty"], "RSA");
                    assert!(jwk.get("crv").is_none());
                    assert_eq!(
                        URL_SAFE_NO_PAD
                            .decode(jwk["n"].as_str().unwrap())
                            .unwrap()
                            .len(),
                        256
                    );
                    assert_eq!(jwk["e"], "AQAB");
                }
            }
        }
    }

    #[test]
    fn a_mixed_key_file_publishes_every_algorithm_and_the_first_signs() {
        let now = Utc::now();
        let old = JwtKeySet::generate_with("old", JwtAlg::EdDSA).unwrap();
        let old_token = mint(&old, &claims(now)).unwrap();
        let mixed = old
            .rotated(JwtKey::generate("mid", JwtAlg::ES256).unwrap())
            .rotated(JwtKey::generate("new", JwtAlg::RS256).unwrap());
        assert_eq!(mixed.kids(), vec!["new", "mid", "old"]);
        assert_eq!(
            mixed.algs(),
            vec![JwtAlg::RS256, JwtAlg::ES256, JwtAlg::EdDSA]
        );
        let mixed = JwtKeySet::parse(&mixed.to_spec()).unwrap();
        let new_token = mint(&mixed, &claims(now)).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&new_token).unwrap().alg,
            Algorithm::RS256
        );
        assert!(verify(&mixed, &old_token, "iss", "aud", now).is_ok());
        assert!(verify(&mixed, &new_token, "iss", "aud", now).is_ok());
        let kty: Vec<_> = mixed.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kty"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kty, vec!["RSA", "EC", "OKP"]);
    }

    #[test]
    fn a_key_without_its_kid_is_not_echoed_as_one() {
        let seed = URL_SAFE_NO_PAD.encode([7u8; 32]);
        for spec in [format!("{seed}="), format!("{seed}=="), "k1=".to_owned()] {
            let err = JwtKeySet::parse(&spec).err().unwrap();
            assert!(!err.contains(&seed), "{err}");
        }
    }

    #[test]
    fn a_token_cannot_choose_another_algorithm_for_a_key() {
        let now = Utc::now();
        let ed = JwtKeySet::generate_with("same", JwtAlg::EdDSA).unwrap();
        let es = JwtKeySet::generate_with("same", JwtAlg::ES256).unwrap();
        // Signed by an ES256 key that claims the EdDSA key's kid.
        let forged = mint(&es, &claims(now)).unwrap();
        assert!(matches!(
            verify(&ed, &forged, "iss", "aud", now),
            Err(JwtError::Invalid)
        ));
    }

    #[test]
    fn keys_in_openssl_form_are_accepted_and_short_rsa_keys_refused() {
        // `openssl genpkey … -outform DER | base64`: standard alphabet, padded, wrapped.
        let mut rng = rand::rngs::OsRng;
        let der = p256::SecretKey::random(&mut rng).to_pkcs8_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let wrapped = format!("{}\n  {}", &b64[..40], &b64[40..]);
        let set = JwtKeySet::parse(&format!("a=ES256:{wrapped}")).unwrap();
        assert_eq!(set.current().alg(), JwtAlg::ES256);

        let short = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let der = short.to_pkcs8_der().unwrap();
        let err = JwtKeySet::parse(&format!(
            "a=rs256:{}",
            URL_SAFE_NO_PAD.encode(der.as_bytes())
        ))
        .err()
        .unwrap();
        assert!(err.contains("2048"), "{err}");

        // An explicit eddsa: prefix reads the same seed as the bare form.
        let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
        let bare = JwtKeySet::parse(&format!("a={seed}")).unwrap();
        let prefixed = JwtKeySet::parse(&format!("a=eddsa:{seed}")).unwrap();
        assert_eq!(bare.jwks(), prefixed.jwks());
        assert!(JwtKeySet::parse("a=hs256:AAAA").is_err());
        assert!(JwtKeySet::parse("a=es256:not base64!").is_err());
    }

    #[test]
    fn rotating_a_missing_key_file_creates_it_with_the_chosen_type() {
        let dir = std::env::temp_dir().join(format!("queue-jwt-{}", uuid::Uuid::new_v4().simple()));
        // Neither the file nor its directory exists yet.
        let path = dir.join("keys").join("jwt_keys");
        let first = rotate_key_file(&path, 3, JwtAlg::ES256).unwrap();
        let set = read_key_file(&path).unwrap();
        assert_eq!(set.kids(), vec![first.as_str()]);
        assert_eq!(set.current().alg(), JwtAlg::ES256);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = rotate_key_file(&path, 3, JwtAlg::RS256).unwrap();
        let set = read_key_file(&path).unwrap();
        assert_eq!(set.kids(), vec![second.as_str(), first.as_str()]);
        assert_eq!(set.algs(), vec![JwtAlg::RS256, JwtAlg::ES256]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
