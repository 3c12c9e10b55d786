//! Offline verification of Queue's access tokens.
//!
//! The JWKS is fetched on first use and again only when a token names a
//! `kid` the cache does not have (a rotation), at most once per
//! `min_refresh_interval` (so tokens with made-up kids cannot make us hammer
//! Queue). When Queue cannot be reached the cache keeps its keys: tokens
//! signed by them keep verifying until they expire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::error::ClientError;

/// The claims of a Queue access token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The customer id.
    pub sub: String,
    /// The session id.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub amr: Vec<String>,
}

/// How often the verifier asked Queue for the JWKS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifierStats {
    /// Fetches attempted.
    pub fetches: u64,
    /// Of those, the ones that failed (Queue down, bad answer).
    pub failed_fetches: u64,
}

struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

struct Inner {
    http: reqwest::Client,
    jwks_url: String,
    issuer: String,
    audience: String,
    min_refresh_interval: Duration,
    /// The monotonic clock the refresh interval is measured on
    /// ([`Instant::now`] unless [`TokenVerifier::with_clock`]).
    now: Clock,
    keys: RwLock<HashMap<String, Arc<Key>>>,
    /// When the last fetch was attempted; held while fetching, so
    /// concurrent misses make one request.
    last_fetch: Mutex<Option<Instant>>,
    fetches: AtomicU64,
    failed_fetches: AtomicU64,
}

/// A monotonic clock: [`Instant::now`], or a test's.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("jwks_url", &self.inner.jwks_url)
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// `jwks_url`: Queue's `/.well-known/jwks.json`; `issuer` and `audience`:
    /// what `QUEUE_ISSUER` and `QUEUE_AUDIENCE` are set to.
    pub fn new(jwks_url: &str, issuer: &str, audience: &str) -> Result<Self, ClientError> {
        Self::with_refresh_interval(jwks_url, issuer, audience, Duration::from_secs(30))
    }

    /// [`TokenVerifier::new`] with at most one JWKS fetch per
    /// `min_refresh_interval` (default 30 s).
    pub fn with_refresh_interval(
        jwks_url: &str,
        issuer: &str,
        audience: &str,
        min_refresh_interval: Duration,
    ) -> Result<Self, ClientError> {
        Self::with_clock(
            jwks_url,
            issuer,
            audience,
            min_refresh_interval,
            Arc::new(Instant::now),
        )
    }

    /// [`TokenVerifier::with_refresh_interval`] measuring the interval on
    /// `now` (tests move time on instead of sleeping through it).
    pub fn with_clock(
        jwks_url: &str,
        issuer: &str,
        audience: &str,
        min_refresh_interval: Duration,
        now: Clock,
    ) -> Result<Self, ClientError> {
        reqwest::Url::parse(jwks_url)
            .map_err(|_| ClientError::Config("jwks_url is not a URL".into()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                jwks_url: jwks_url.to_owned(),
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                min_refresh_interval,
                now,
                keys: RwLock::new(HashMap::new()),
                last_fetch: Mutex::new(None),
                fetches: AtomicU64::new(0),
                failed_fetches: AtomicU64::new(0),
            }),
        })
    }

    pub fn stats(&self) -> VerifierStats {
        VerifierStats {
            fetches: self.inner.fetches.load(Ordering::Relaxed),
            failed_fetches: self.inner.failed_fetches.load(Ordering::Relaxed),
        }
    }

    /// Verifies signature, `exp`, `iss` and `aud`; the claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, ClientError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ClientError::InvalidToken(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| ClientError::InvalidToken("no kid".into()))?;
        let key = match self.cached(&kid).await {
            Some(key) => key,
            None => {
                self.refresh().await;
                self.cached(&kid)
                    .await
                    .ok_or(ClientError::UnknownKey { kid })?
            }
        };
        // The key's algorithm, never the token's say-so.
        let mut validation = Validation::new(key.alg);
        validation.set_audience(&[&self.inner.audience]);
        validation.set_issuer(&[&self.inner.issuer]);
        validation.leeway = 30;
        jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| ClientError::InvalidToken(e.to_string()))
    }

    async fn cached(&self, kid: &str) -> Option<Arc<Key>> {
        self.inner.keys.read().await.get(kid).cloned()
    }

    /// Fetches the JWKS unless one was fetched (or tried) within the
    /// interval. A failure keeps the keys we have.
    async fn refresh(&self) {
        let mut last = self.inner.last_fetch.lock().await;
        let now = (self.inner.now)();
        if last
            .is_some_and(|at| now.saturating_duration_since(at) < self.inner.min_refresh_interval)
        {
            return;
        }
        *last = Some(now);
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                // Keys that left the JWKS stop verifying.
                *self.inner.keys.write().await = keys;
            }
            Err(err) => {
                self.inner.failed_fetches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "JWKS fetch failed; verifying with the cached keys");
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, ClientError> {
        let response = self
            .inner
            .http
            .get(&self.inner.jwks_url)
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ClientError::Transport(format!(
                "JWKS answered {}",
                response.status()
            )));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (&jwk.common.key_id, jwk.common.key_algorithm) else {
                continue;
            };
            let alg = match alg {
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::RS256 => Algorithm::RS256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), Arc::new(Key { key, alg }));
            }
        }
        if keys.is_empty() {
            return Err(ClientError::Transport("the JWKS has no usable key".into()));
        }
        Ok(keys)
    }
}
