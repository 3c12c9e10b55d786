//! API configuration from the environment, read once. Errors name the
//! variable, never its value; secrets print redacted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use queue_domain::types::Role;

use crate::auth::jwt::{JwtAlg, JwtKeySet};
use crate::auth::service::ServiceTokens;

pub use queue_eventstore::config::ConfigError;
use queue_eventstore::config::{value_or_file, Source};

fn invalid(var: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        why: why.into(),
    }
}

/// How outbox messages are delivered (ADR 0208).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailerConfig {
    /// Each message is written as a file into this directory (dev and tests).
    Log { dir: PathBuf },
    /// Over SMTP (`QUEUE_SMTP_URL`).
    Smtp(SmtpConfig),
}

/// `QUEUE_SMTP_URL` and `QUEUE_SMTP_TIMEOUT_MS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpConfig {
    /// `smtp://[user:pass@]host:port[?tls=required|opportunistic]` or
    /// `smtps://[user:pass@]host:port` (implicit TLS).
    pub url: SmtpUrl,
    /// Connect, command and TLS timeout.
    pub timeout: Duration,
}

/// An SMTP URL, which may hold a password: `Debug` shows only the scheme,
/// host, port, TLS mode and whether there are credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl(Secret);

impl SmtpUrl {
    pub fn new(url: String) -> Self {
        Self(Secret::new(url))
    }

    /// The URL, password included.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = Url::parse(self.expose())
            .map(|u| {
                let tls = u
                    .query_pairs()
                    .find(|(k, _)| k == "tls")
                    .map(|(_, v)| v.into_owned());
                format!(
                    "{}://{}:{} tls={} auth={}",
                    u.scheme(),
                    u.host_str().unwrap_or("?"),
                    u.port()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "default".into()),
                    tls.as_deref().unwrap_or(if u.scheme() == "smtps" {
                        "implicit"
                    } else {
                        "none"
                    }),
                    !u.username().is_empty()
                )
            })
            .unwrap_or_else(|_| "<invalid>".into());
        f.write_str(&shown)
    }
}

/// The outbox sender's settings (ADR 0208).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailConfig {
    /// QUEUE_MAIL_FROM: the From address (`name <addr>` or `addr`).
    pub from: String,
    /// QUEUE_MAIL_MAX_ATTEMPTS: attempts before a message is dead.
    pub max_attempts: u32,
    /// QUEUE_MAIL_RETRY_BASE_MS: the first retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// QUEUE_MAIL_RETRY_MAX_MS: the longest retry delay.
    pub retry_max: Duration,
}

/// Checks `QUEUE_SMTP_URL` without ever echoing it (it may hold a password).
fn smtp_url(get: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    const VAR: &str = "QUEUE_SMTP_URL";
    let raw = text(get, VAR).ok_or(ConfigError::Missing(VAR))?;
    let url = Url::parse(&raw).map_err(|_| {
        invalid(
            VAR,
            "expected smtp://[user:pass@]host:port[?tls=required|opportunistic] or smtps://[user:pass@]host:port",
        )
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(VAR, "no host"));
    }
    let tls: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned())
        .collect();
    if url.query_pairs().any(|(k, _)| k != "tls") {
        return Err(invalid(VAR, "the only query parameter is tls="));
    }
    match (url.scheme(), tls.as_slice()) {
        ("smtp", []) => {}
        ("smtp", [mode]) if mode == "required" || mode == "opportunistic" => {}
        ("smtp", _) => return Err(invalid(VAR, "tls= must be required or opportunistic")),
        ("smtps", []) => {}
        ("smtps", _) => return Err(invalid(VAR, "smtps:// is implicit TLS; drop tls=")),
        _ => return Err(invalid(VAR, "the scheme must be smtp or smtps")),
    }
    if url.password().is_some() && url.username().is_empty() {
        return Err(invalid(VAR, "a password needs a user name"));
    }
    Ok(raw)
}

/// `QUEUE_REDIS_URL` and friends: where rate-limit counters are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `redis+unix:///path`; may
    /// carry a password.
    pub url: Secret,
    /// QUEUE_REDIS_PREFIX: prepended to every key (several deployments, or
    /// tests, can share one Redis).
    pub prefix: String,
    /// QUEUE_REDIS_TIMEOUT_MS: past this a call uses the local limiter.
    pub timeout: std::time::Duration,
}

/// How long a client may take to send its headers and its body, and how
/// long a handler may run once the body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub handler: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            body: Duration::from_secs(10),
            handler: Duration::from_secs(30),
        }
    }
}

/// The bearer token /metrics asks for; never printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsToken(Secret);

impl MetricsToken {
    /// Constant-time comparison with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.matches(presented)
    }
}

/// A secret setting (a token, a URL holding a password): `Debug` prints
/// `<redacted>`, equality is constant-time, and the value is read only
/// through [`Secret::expose`]. A newtype rather than the `secrecy` crate:
/// the settings need `Eq` (which `secrecy` leaves out on purpose) and no new
/// dependency is needed for ten lines (ADR 0213).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret value.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(presented.as_bytes());
        a.ct_eq(&b).into()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the HTTP API needs besides the database and ledger keys.
/// Secrets are wrapped ([`Secret`], `JwtKeySet`, `ServiceTokens`), so
/// `Debug` never prints them.
#[derive(Clone, Debug)]
pub struct Config {
    pub dev: bool,
    pub rp_id: String,
    pub rp_name: String,
    pub rp_origins: Vec<Url>,
    pub issuer: String,
    pub audience: String,
    pub jwt_keys: JwtKeySet,
    /// QUEUE_JWT_ALG: the type of the keys generated for this deployment
    /// (dev mode, `queue keys generate` / `rotate`). What signs is the key
    /// file's first key, whatever its type (ADR 0207).
    pub jwt_alg: JwtAlg,
    /// Where the keys came from when given as a file: `queue keys rotate`
    /// rewrites it and running instances reload it.
    pub jwt_keys_file: Option<PathBuf>,
    /// QUEUE_BACKUP_CODE_KEYS: the backup-code pepper keys, first current
    /// (ADR 0211; `crate::auth::backup_code_keys`).
    pub backup_code_keys: queue_eventstore::MacKeys,
    /// QUEUE_REFRESH_REUSE_GRACE: 0 to 60 seconds.
    pub refresh_grace_secs: u32,
    pub idle_timeout_secs: u32,
    pub absolute_timeout_secs: u32,
    /// WebAuthn challenges live this long (contract: 5 minutes).
    pub challenge_ttl_secs: u32,
    /// FLAG_QUEUE_V1: off → every /api/v1 route answers 404.
    pub flag_queue_v1: bool,
    /// Requests per minute per client address on login, redeem and verify.
    pub rate_limit_per_address: u32,
    /// Requests per minute per account (email or customer) on the same routes.
    pub rate_limit_per_account: u32,
    /// Requests per minute per calling service on the audit writer.
    pub rate_limit_per_service: u32,
    /// Concurrent /api requests before load shedding: LOW routes are shed
    /// past 1/4 of it, NORMAL past 1/2, HIGH past 3/4, CRITICAL past it
    /// (`shedding.rs`; LOW and NORMAL also yield to in-flight urgent work).
    pub max_in_flight: usize,
    /// CRITICAL/HIGH requests in flight past which LOW and NORMAL requests
    /// are shed whatever the total, and for how long after
    /// (QUEUE_SHED_LOW_PAST_URGENT, QUEUE_SHED_NORMAL_PAST_URGENT,
    /// QUEUE_SHED_HOLD_MS).
    pub shed_past_urgent: crate::resilience::shedding::UrgentLevels,
    /// The store circuit breaker's thresholds (QUEUE_BREAKER_*).
    pub breaker: crate::resilience::breaker::BreakerConfig,
    /// Rate limits shared through Redis; `None`: per-process limits.
    pub redis: Option<RedisConfig>,
    /// QUEUE_TRUSTED_PROXIES: proxies whose X-Forwarded-For entries are
    /// believed (walked from the right; see `client_address`).
    pub trusted_proxies: crate::http::client_address::TrustedProxies,
    /// QUEUE_READ_WAIT_MS: how long a projection read waits for its
    /// projection to pass what was committed before it (read-your-writes,
    /// ADR 0210); 0: no wait.
    pub read_wait: Duration,
    /// Failed verifications per minute per account across all addresses
    /// (QUEUE_RATE_LIMIT_PER_ACCOUNT_CEILING); the per-account limit itself
    /// is per (account, client address).
    pub rate_limit_per_account_ceiling: u32,
    /// Registration begin/complete per minute per client address
    /// (QUEUE_RATE_LIMIT_REGISTER_PER_ADDRESS).
    pub rate_limit_register_per_address: u32,
    /// Registration begin/complete per minute per email
    /// (QUEUE_RATE_LIMIT_REGISTER_PER_EMAIL).
    pub rate_limit_register_per_email: u32,
    /// Keys one per-process limiter holds at most (QUEUE_RATE_LIMIT_MAX_KEYS).
    pub rate_limit_max_keys: usize,
    /// Header, body and handler deadlines (QUEUE_HEADER_TIMEOUT_MS,
    /// QUEUE_BODY_TIMEOUT_MS, QUEUE_HANDLER_TIMEOUT_MS).
    pub timeouts: Timeouts,
    /// FOUNDERS_COUNT_VERIFIED_ONLY: the gate counts customers once their
    /// email is verified (default), not at registration.
    pub founders_count_verified_only: bool,
    /// QUEUE_METRICS_LISTEN: serve /metrics on this address only.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// QUEUE_METRICS_TOKEN: /metrics needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<MetricsToken>,
    pub mailer: MailerConfig,
    /// The outbox sender (From, attempts, backoff).
    pub mail: MailConfig,
    /// Base of the link in verification emails; `?token=…` is appended.
    pub email_verify_url: String,
    /// FLAG_FOUNDERS_GATE: refuse registrations past the cohort threshold.
    pub flag_founders_gate: bool,
    /// FOUNDERS_COHORT_THRESHOLD: how many customers the cohort admits.
    pub founders_cohort_threshold: u32,
    /// QUEUE_ROLE_CATALOGUE: the roles RBAC grants may name.
    pub role_catalogue: Vec<Role>,
    /// QUEUE_SERVICE_TOKEN_<NAME> / QUEUE_SERVICE_SCOPES_<NAME>.
    pub service_tokens: ServiceTokens,
}

/// A boolean setting: `1/true/on/yes` or `0/false/off/no`.
fn flag(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<bool>, ConfigError> {
    match get(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => match v.as_str() {
            "1" | "true" | "on" | "yes" => Ok(Some(true)),
            "0" | "false" | "off" | "no" => Ok(Some(false)),
            _ => Err(invalid(var, "expected 1/true/on or 0/false/off")),
        },
    }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let Some(raw) = get(var).filter(|v| !v.trim().is_empty()) else {
        return Ok(default);
    };
    let value: u32 = raw
        .trim()
        .parse()
        .map_err(|_| invalid(var, "expected a whole number"))?;
    if value < min || value > max {
        return Err(invalid(var, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

fn text(get: &impl Fn(&str) -> Option<String>, var: &'static str) -> Option<String> {
    get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl RedisConfig {
    /// `QUEUE_REDIS_URL` (optional), `QUEUE_REDIS_PREFIX`, `QUEUE_REDIS_TIMEOUT_MS`.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(url) = text(get, "QUEUE_REDIS_URL") else {
            return Ok(None);
        };
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("redis" | "redis+unix" | "unix") => {}
            Some("rediss") => {
                return Err(invalid(
                    "QUEUE_REDIS_URL",
                    "TLS (rediss://) is not available in this build; use redis:// on a private network or a local TLS proxy",
                ))
            }
            _ => {
                return Err(invalid(
                    "QUEUE_REDIS_URL",
                    "expected redis://host:port[/db] or redis+unix:///path",
                ))
            }
        }
        // Parsed here so a typo stops the start, not every request.
        redis::Client::open(url.as_str()).map_err(|_| {
            invalid(
                "QUEUE_REDIS_URL",
                "expected redis://host:port[/db] or redis+unix:///path",
            )
        })?;
        let prefix = text(get, "QUEUE_REDIS_PREFIX").unwrap_or_else(|| "queue:".to_owned());
        if prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "QUEUE_REDIS_PREFIX",
                "at most 64 characters, without white space",
            ));
        }
        let timeout_ms = number(get, "QUEUE_REDIS_TIMEOUT_MS", 50, 1, 10_000)?;
        Ok(Some(RedisConfig {
            url: Secret::new(url),
            prefix,
            timeout: std::time::Duration::from_millis(u64::from(timeout_ms)),
        }))
    }
}

/// `QUEUE_JWT_ALG`: `EdDSA` (default), `ES256` or `RS256`, any case.
pub fn jwt_alg(get: &impl Fn(&str) -> Option<String>) -> Result<JwtAlg, ConfigError> {
    match text(get, "QUEUE_JWT_ALG") {
        None => Ok(JwtAlg::default()),
        Some(raw) => JwtAlg::parse(&raw)
            .ok_or_else(|| invalid("QUEUE_JWT_ALG", "expected EdDSA, ES256 or RS256")),
    }
}

/// A number of milliseconds as a `Duration` (see [`number`]).
fn millis(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<Duration, ConfigError> {
    number(get, var, default, min, max).map(|ms| Duration::from_millis(u64::from(ms)))
}

/// A setting production must give and dev mode defaults.
fn required(
    get: &impl Fn(&str) -> Option<String>,
    dev: bool,
    var: &'static str,
    dev_default: &str,
) -> Result<String, ConfigError> {
    match text(get, var) {
        Some(v) => Ok(v),
        None if dev => Ok(dev_default.to_owned()),
        None => Err(ConfigError::Missing(var)),
    }
}

/// The WebAuthn relying party and the tokens' issuer and audience
/// (QUEUE_RP_ID, QUEUE_RP_NAME, QUEUE_RP_ORIGIN, QUEUE_ISSUER,
/// QUEUE_AUDIENCE).
struct RelyingParty {
    rp_id: String,
    rp_name: String,
    rp_origins: Vec<Url>,
    issuer: String,
    audience: String,
}

impl RelyingParty {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>, dev: bool) -> Result<Self, ConfigError> {
        let rp_id = required(get, dev, "QUEUE_RP_ID", "localhost")?;
        if rp_id.contains(['/', ':', ' ']) || rp_id.starts_with('.') || rp_id.ends_with('.') {
            return Err(invalid(
                "QUEUE_RP_ID",
                "expected a bare domain, e.g. example.com",
            ));
        }
        let rp_name = text(get, "QUEUE_RP_NAME").unwrap_or_else(|| "Queue".to_owned());
        let origins_raw = required(get, dev, "QUEUE_RP_ORIGIN", "http://localhost:8080")?;
        let mut rp_origins = Vec::new();
        for part in origins_raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let url = Url::parse(part).map_err(|_| {
                invalid(
                    "QUEUE_RP_ORIGIN",
                    "expected origins like https://example.com, comma-separated",
                )
            })?;
            if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                return Err(invalid(
                    "QUEUE_RP_ORIGIN",
                    "origins must be http(s) URLs with a host",
                ));
            }
            rp_origins.push(url);
        }
        if rp_origins.is_empty() {
            return Err(ConfigError::Missing("QUEUE_RP_ORIGIN"));
        }
        Ok(Self {
            rp_id,
            rp_name,
            rp_origins,
            issuer: required(get, dev, "QUEUE_ISSUER", "http://localhost:8080")?,
            audience: required(get, dev, "QUEUE_AUDIENCE", "queue")?,
        })
    }
}

/// The signing keys (QUEUE_JWT_KEYS or QUEUE_JWT_KEYS_FILE, QUEUE_JWT_ALG).
struct JwtSettings {
    keys: JwtKeySet,
    alg: JwtAlg,
    keys_file: Option<PathBuf>,
}

impl JwtSettings {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let (spec, source) = value_or_file(get, "QUEUE_JWT_KEYS", "QUEUE_JWT_KEYS_FILE")?;
        let keys_file = match source {
            Source::File(path) => Some(path),
            Source::Value => None,
        };
        let keys = JwtKeySet::parse(&spec).map_err(|why| invalid("QUEUE_JWT_KEYS", why))?;
        Ok(Self {
            keys,
            alg: jwt_alg(get)?,
            keys_file,
        })
    }
}

/// Session and challenge lifetimes (QUEUE_REFRESH_REUSE_GRACE,
/// QUEUE_SESSION_IDLE_TIMEOUT, QUEUE_SESSION_ABSOLUTE_TIMEOUT,
/// QUEUE_CHALLENGE_TTL), in seconds.
struct Lifetimes {
    refresh_grace_secs: u32,
    idle_timeout_secs: u32,
    absolute_timeout_secs: u32,
    challenge_ttl_secs: u32,
}

impl Lifetimes {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let refresh_grace_secs = number(get, "QUEUE_REFRESH_REUSE_GRACE", 0, 0, 60)?;
        let idle_timeout_secs = number(
            get,
            "QUEUE_SESSION_IDLE_TIMEOUT",
            30 * 60,
            1,
            30 * 24 * 3600,
        )?;
        let absolute_timeout_secs = number(
            get,
            "QUEUE_SESSION_ABSOLUTE_TIMEOUT",
            12 * 3600,
            1,
            365 * 24 * 3600,
        )?;
        if idle_timeout_secs > absolute_timeout_secs {
            return Err(invalid(
                "QUEUE_SESSION_IDLE_TIMEOUT",
                "must not exceed QUEUE_SESSION_ABSOLUTE_TIMEOUT",
            ));
        }
        Ok(Self {
            refresh_grace_secs,
            idle_timeout_secs,
            absolute_timeout_secs,
            challenge_ttl_secs: number(get, "QUEUE_CHALLENGE_TTL", 300, 10, 3600)?,
        })
    }
}

/// Rate limits (QUEUE_RATE_LIMIT_*), per minute.
struct RateLimits {
    per_address: u32,
    per_account: u32,
    per_service: u32,
    per_account_ceiling: u32,
    register_per_address: u32,
    register_per_email: u32,
    max_keys: usize,
}

impl RateLimits {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let per_account = number(get, "QUEUE_RATE_LIMIT_PER_ACCOUNT", 10, 1, 1_000_000)?;
        Ok(Self {
            per_address: number(get, "QUEUE_RATE_LIMIT_PER_ADDRESS", 60, 1, 1_000_000)?,
            per_account,
            per_service: number(get, "QUEUE_RATE_LIMIT_PER_SERVICE", 6000, 1, 10_000_000)?,
            per_account_ceiling: number(
                get,
                "QUEUE_RATE_LIMIT_PER_ACCOUNT_CEILING",
                per_account.saturating_mul(10),
                1,
                10_000_000,
            )?,
            register_per_address: number(
                get,
                "QUEUE_RATE_LIMIT_REGISTER_PER_ADDRESS",
                20,
                1,
                1_000_000,
            )?,
            register_per_email: number(
                get,
                "QUEUE_RATE_LIMIT_REGISTER_PER_EMAIL",
                5,
                1,
                1_000_000,
            )?,
            max_keys: number(get, "QUEUE_RATE_LIMIT_MAX_KEYS", 100_000, 100, 10_000_000)? as usize,
        })
    }
}

/// QUEUE_TRUSTED_PROXIES (and the refusal of the variable it replaced).
fn trusted_proxies(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<crate::http::client_address::TrustedProxies, ConfigError> {
    if get("QUEUE_TRUST_FORWARDED_FOR").is_some() {
        return Err(invalid(
            "QUEUE_TRUST_FORWARDED_FOR",
            "replaced by QUEUE_TRUSTED_PROXIES (a CIDR list of the proxies in front of Queue)",
        ));
    }
    Ok(match text(get, "QUEUE_TRUSTED_PROXIES") {
        Some(list) => {
            crate::http::client_address::TrustedProxies::parse(&list).ok_or_else(|| {
                invalid(
                    "QUEUE_TRUSTED_PROXIES",
                    "expected comma-separated CIDR blocks (10.0.0.0/8, 2001:db8::/32)",
                )
            })?
        }
        None => crate::http::client_address::TrustedProxies::default(),
    })
}

impl Timeouts {
    /// QUEUE_HEADER_TIMEOUT_MS, QUEUE_BODY_TIMEOUT_MS, QUEUE_HANDLER_TIMEOUT_MS.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            header: millis(get, "QUEUE_HEADER_TIMEOUT_MS", 10_000, 100, 600_000)?,
            body: millis(get, "QUEUE_BODY_TIMEOUT_MS", 10_000, 100, 600_000)?,
            handler: millis(get, "QUEUE_HANDLER_TIMEOUT_MS", 30_000, 100, 600_000)?,
        })
    }
}

/// QUEUE_METRICS_LISTEN and QUEUE_METRICS_TOKEN.
fn metrics_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Option<std::net::SocketAddr>, Option<MetricsToken>), ConfigError> {
    let listen = text(get, "QUEUE_METRICS_LISTEN")
        .map(|v| {
            v.parse()
                .map_err(|_| invalid("QUEUE_METRICS_LISTEN", "expected host:port"))
        })
        .transpose()?;
    let token = match text(get, "QUEUE_METRICS_TOKEN") {
        Some(token) if token.len() < 16 => {
            return Err(invalid(
                "QUEUE_METRICS_TOKEN",
                "must be at least 16 characters",
            ))
        }
        Some(token) => Some(MetricsToken(Secret::new(token))),
        None => None,
    };
    Ok((listen, token))
}

impl crate::resilience::shedding::UrgentLevels {
    /// QUEUE_SHED_LOW_PAST_URGENT, QUEUE_SHED_NORMAL_PAST_URGENT,
    /// QUEUE_SHED_HOLD_MS, QUEUE_SHED_LOW_LATENCY_PCT.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            low: number(
                get,
                "QUEUE_SHED_LOW_PAST_URGENT",
                defaults.low as u32,
                0,
                1_000_000,
            )? as usize,
            normal: number(
                get,
                "QUEUE_SHED_NORMAL_PAST_URGENT",
                defaults.normal as u32,
                0,
                1_000_000,
            )? as usize,
            hold: millis(
                get,
                "QUEUE_SHED_HOLD_MS",
                defaults.hold.as_millis() as u32,
                0,
                60_000,
            )?,
            low_latency_pct: match number(
                get,
                "QUEUE_SHED_LOW_LATENCY_PCT",
                defaults.low_latency_pct,
                0,
                100_000,
            )? {
                // At or below 100 % every window would count as slow.
                1..=100 => {
                    return Err(invalid(
                        "QUEUE_SHED_LOW_LATENCY_PCT",
                        "must be 0 (off) or above 100",
                    ))
                }
                pct => pct,
            },
        })
    }
}

impl crate::resilience::breaker::BreakerConfig {
    /// QUEUE_BREAKER_FAILURES, QUEUE_BREAKER_LATENCY_WINDOW,
    /// QUEUE_BREAKER_MAX_MEAN_LATENCY_MS, QUEUE_BREAKER_OPEN_MS,
    /// QUEUE_BREAKER_PROBE_TIMEOUT_MS.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            failure_threshold: number(get, "QUEUE_BREAKER_FAILURES", 5, 1, 1000)?,
            latency_window: number(get, "QUEUE_BREAKER_LATENCY_WINDOW", 20, 1, 10_000)? as usize,
            max_mean_latency: millis(get, "QUEUE_BREAKER_MAX_MEAN_LATENCY_MS", 3000, 1, 600_000)?,
            open_for: millis(get, "QUEUE_BREAKER_OPEN_MS", 30_000, 10, 3_600_000)?,
            probe_timeout: millis(get, "QUEUE_BREAKER_PROBE_TIMEOUT_MS", 5_000, 10, 600_000)?,
        })
    }
}

impl MailerConfig {
    /// QUEUE_MAILER (`log`, the default, or `smtp`), QUEUE_MAILER_DIR,
    /// QUEUE_SMTP_URL, QUEUE_SMTP_TIMEOUT_MS.
    pub fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        match text(get, "QUEUE_MAILER").as_deref() {
            Some("log") | None => {
                let dir = match text(get, "QUEUE_MAILER_DIR") {
                    Some(dir) => PathBuf::from(dir),
                    None if dev => PathBuf::from(".dev/mail"),
                    None => return Err(ConfigError::Missing("QUEUE_MAILER_DIR")),
                };
                Ok(MailerConfig::Log { dir })
            }
            Some("smtp") => Ok(MailerConfig::Smtp(SmtpConfig {
                url: SmtpUrl::new(smtp_url(get)?),
                timeout: millis(get, "QUEUE_SMTP_TIMEOUT_MS", 10_000, 100, 300_000)?,
            })),
            Some(_) => Err(invalid("QUEUE_MAILER", "expected log or smtp")),
        }
    }
}

impl MailConfig {
    /// QUEUE_MAIL_FROM (required with SMTP), QUEUE_MAIL_MAX_ATTEMPTS,
    /// QUEUE_MAIL_RETRY_BASE_MS, QUEUE_MAIL_RETRY_MAX_MS.
    pub fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        mailer: &MailerConfig,
    ) -> Result<Self, ConfigError> {
        let from = match (text(get, "QUEUE_MAIL_FROM"), mailer) {
            (Some(from), _) => from,
            (None, MailerConfig::Log { .. }) => "Queue <queue@localhost>".to_owned(),
            (None, MailerConfig::Smtp(_)) => return Err(ConfigError::Missing("QUEUE_MAIL_FROM")),
        };
        if from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(
                "QUEUE_MAIL_FROM",
                "expected an address, e.g. Queue <no-reply@example.com>",
            ));
        }
        let retry_base = number(get, "QUEUE_MAIL_RETRY_BASE_MS", 5_000, 10, 3_600_000)?;
        let retry_max = number(get, "QUEUE_MAIL_RETRY_MAX_MS", 3_600_000, 10, 86_400_000)?;
        if retry_max < retry_base {
            return Err(invalid(
                "QUEUE_MAIL_RETRY_MAX_MS",
                "must not be below QUEUE_MAIL_RETRY_BASE_MS",
            ));
        }
        Ok(Self {
            from,
            max_attempts: number(get, "QUEUE_MAIL_MAX_ATTEMPTS", 12, 1, 100)?,
            retry_base: Duration::from_millis(u64::from(retry_base)),
            retry_max: Duration::from_millis(u64::from(retry_max)),
        })
    }
}

/// QUEUE_EMAIL_VERIFY_URL; by default `/verify-email` on the first origin.
fn email_verify_url(
    get: &impl Fn(&str) -> Option<String>,
    first_origin: &Url,
) -> Result<String, ConfigError> {
    match text(get, "QUEUE_EMAIL_VERIFY_URL") {
        Some(url) => {
            Url::parse(&url).map_err(|_| invalid("QUEUE_EMAIL_VERIFY_URL", "expected a URL"))?;
            Ok(url)
        }
        None => {
            let mut base = first_origin.clone();
            base.set_path("/verify-email");
            Ok(base.to_string())
        }
    }
}

/// The founders gate (FLAG_FOUNDERS_GATE, FOUNDERS_COHORT_THRESHOLD,
/// FOUNDERS_COUNT_VERIFIED_ONLY).
struct Founders {
    gate: bool,
    count_verified_only: bool,
    cohort_threshold: u32,
}

impl Founders {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let gate = flag(get, "FLAG_FOUNDERS_GATE")?.unwrap_or(false);
        let count_verified_only = flag(get, "FOUNDERS_COUNT_VERIFIED_ONLY")?.unwrap_or(true);
        if gate && text(get, "FOUNDERS_COHORT_THRESHOLD").is_none() {
            return Err(ConfigError::Missing("FOUNDERS_COHORT_THRESHOLD"));
        }
        Ok(Self {
            gate,
            count_verified_only,
            cohort_threshold: number(get, "FOUNDERS_COHORT_THRESHOLD", 0, 0, u32::MAX)?,
        })
    }
}

/// QUEUE_ROLE_CATALOGUE: the roles RBAC grants may name.
fn role_catalogue(get: &impl Fn(&str) -> Option<String>) -> Result<Vec<Role>, ConfigError> {
    match text(get, "QUEUE_ROLE_CATALOGUE") {
        Some(raw) => {
            let mut roles = Vec::new();
            for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                roles.push(Role::parse(part).map_err(|_| {
                    invalid(
                        "QUEUE_ROLE_CATALOGUE",
                        "expected comma-separated role names of [a-z0-9._:-]",
                    )
                })?);
            }
            if roles.is_empty() {
                return Err(ConfigError::Missing("QUEUE_ROLE_CATALOGUE"));
            }
            Ok(roles)
        }
        None => crate::routes::rbac::DEFAULT_ROLE_CATALOGUE
            .iter()
            .map(|r| Role::parse(r).map_err(|_| invalid("QUEUE_ROLE_CATALOGUE", "default")))
            .collect(),
    }
}

impl Config {
    /// Reads the API settings. `QUEUE_DEV=1` (or `queue serve --dev`) supplies
    /// local defaults for the relying party, issuer and audience; production
    /// requires them. JWT keys come from `QUEUE_JWT_KEYS` or the file named by
    /// `QUEUE_JWT_KEYS_FILE` (`queue serve --dev` generates one).
    ///
    /// Service tokens are found by the names of the process environment's
    /// variables (their values still come from `get`); use
    /// [`Config::from_lookup_with_names`] to give the names explicitly.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        Self::from_lookup_with_names(get, names.iter().map(String::as_str))
    }

    /// [`Config::from_lookup`] with the variable names to scan for
    /// `QUEUE_SERVICE_TOKEN_*` / `QUEUE_SERVICE_SCOPES_*` given explicitly.
    /// Each concern reads its own variables (`RelyingParty`,
    /// `BreakerConfig::from_lookup`, …); this only puts them together.
    pub fn from_lookup_with_names<'a>(
        get: impl Fn(&str) -> Option<String>,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ConfigError> {
        let get = &get;
        let dev = flag(get, "QUEUE_DEV")?.unwrap_or(false);
        let rp = RelyingParty::from_lookup(get, dev)?;
        let jwt = JwtSettings::from_lookup(get)?;
        let lifetimes = Lifetimes::from_lookup(get)?;
        let flag_queue_v1 = flag(get, "FLAG_QUEUE_V1")?.unwrap_or(dev);
        let limits = RateLimits::from_lookup(get)?;
        let trusted_proxies = trusted_proxies(get)?;
        let timeouts = Timeouts::from_lookup(get)?;
        let (metrics_listen, metrics_token) = metrics_settings(get)?;
        let max_in_flight = number(get, "QUEUE_MAX_IN_FLIGHT", 256, 1, 1_000_000)? as usize;
        let shed_past_urgent = crate::resilience::shedding::UrgentLevels::from_lookup(get)?;
        let breaker = crate::resilience::breaker::BreakerConfig::from_lookup(get)?;
        let redis = RedisConfig::from_lookup(get)?;
        let mailer = MailerConfig::from_lookup(get, dev)?;
        let mail = MailConfig::from_lookup(get, &mailer)?;
        let email_verify_url = email_verify_url(get, &rp.rp_origins[0])?;
        let service_tokens = ServiceTokens::from_lookup(get, names)?;
        let founders = Founders::from_lookup(get)?;
        let role_catalogue = role_catalogue(get)?;
        let read_wait = millis(get, "QUEUE_READ_WAIT_MS", 1_000, 0, 60_000)?;

        let backup_code_keys = crate::auth::backup_code_keys::from_lookup(&get, dev)?;

        Ok(Self {
            backup_code_keys,
            dev,
            rp_id: rp.rp_id,
            rp_name: rp.rp_name,
            rp_origins: rp.rp_origins,
            issuer: rp.issuer,
            audience: rp.audience,
            jwt_keys: jwt.keys,
            jwt_alg: jwt.alg,
            jwt_keys_file: jwt.keys_file,
            refresh_grace_secs: lifetimes.refresh_grace_secs,
            idle_timeout_secs: lifetimes.idle_timeout_secs,
            absolute_timeout_secs: lifetimes.absolute_timeout_secs,
            challenge_ttl_secs: lifetimes.challenge_ttl_secs,
            flag_queue_v1,
            rate_limit_per_address: limits.per_address,
            rate_limit_per_account: limits.per_account,
            rate_limit_per_service: limits.per_service,
            trusted_proxies,
            read_wait,
            rate_limit_per_account_ceiling: limits.per_account_ceiling,
            rate_limit_register_per_address: limits.register_per_address,
            rate_limit_register_per_email: limits.register_per_email,
            rate_limit_max_keys: limits.max_keys,
            timeouts,
            founders_count_verified_only: founders.count_verified_only,
            metrics_listen,
            metrics_token,
            max_in_flight,
            shed_past_urgent,
            breaker,
            redis,
            mailer,
            mail,
            email_verify_url,
            flag_founders_gate: founders.gate,
            founders_cohort_threshold: founders.cohort_threshold,
            role_catalogue,
            service_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;

    use super::*;

    const KEY: &str = "k1=9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn dev_mode_has_defaults_and_the_flag_on() {
        let config =
            Config::from_lookup(lookup(&[("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)])).unwrap();
        assert_eq!(config.rp_id, "localhost");
        assert!(config.flag_queue_v1);
        assert_eq!(config.refresh_grace_secs, 0);
        assert_eq!(config.idle_timeout_secs, 1800);
        assert_eq!(config.absolute_timeout_secs, 43200);
    }

    #[test]
    fn redis_is_optional_validated_and_never_printed() {
        let base = [("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)];
        assert_eq!(Config::from_lookup(lookup(&base)).unwrap().redis, None);

        let mut with = base.to_vec();
        with.push(("QUEUE_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/2"));
        let config = Config::from_lookup(lookup(&with)).unwrap();
        let redis = config.redis.clone().unwrap();
        assert_eq!(redis.prefix, "queue:");
        assert_eq!(redis.timeout, std::time::Duration::from_millis(50));
        assert!(!format!("{config:?}").contains("hunter2"));

        for (var, value) in [
            ("QUEUE_REDIS_URL", "http://127.0.0.1:6379"),
            ("QUEUE_REDIS_URL", "rediss://:hunter2@127.0.0.1:6379"),
            ("QUEUE_REDIS_TIMEOUT_MS", "0"),
            ("QUEUE_REDIS_PREFIX", "has space"),
        ] {
            let mut bad = with.clone();
            bad.push((var, value));
            let err = Config::from_lookup(lookup(&bad)).unwrap_err().to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn breaker_thresholds_are_configurable_and_checked() {
        let base = [("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)];
        let defaults = Config::from_lookup(lookup(&base)).unwrap().breaker;
        assert_eq!(
            defaults,
            crate::resilience::breaker::BreakerConfig::default()
        );

        let mut with = base.to_vec();
        with.extend([
            ("QUEUE_BREAKER_FAILURES", "3"),
            ("QUEUE_BREAKER_LATENCY_WINDOW", "10"),
            ("QUEUE_BREAKER_MAX_MEAN_LATENCY_MS", "750"),
            ("QUEUE_BREAKER_OPEN_MS", "2000"),
        ]);
        let breaker = Config::from_lookup(lookup(&with)).unwrap().breaker;
        assert_eq!(breaker.failure_threshold, 3);
        assert_eq!(breaker.latency_window, 10);
        assert_eq!(breaker.max_mean_latency, Duration::from_millis(750));
        assert_eq!(breaker.open_for, Duration::from_secs(2));

        let mut zero = base.to_vec();
        zero.push(("QUEUE_BREAKER_FAILURES", "0"));
        assert!(matches!(
            Config::from_lookup(lookup(&zero)),
            Err(ConfigError::Invalid {
                var: "QUEUE_BREAKER_FAILURES",
                ..
            })
        ));
    }

    #[test]
    fn shedding_levels_for_urgent_work_are_configurable_and_checked() {
        let base = [("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)];
        let defaults = Config::from_lookup(lookup(&base)).unwrap().shed_past_urgent;
        assert_eq!(
            defaults,
            crate::resilience::shedding::UrgentLevels::default()
        );

        let mut with = base.to_vec();
        with.extend([
            ("QUEUE_SHED_LOW_PAST_URGENT", "0"),
            ("QUEUE_SHED_NORMAL_PAST_URGENT", "12"),
            ("QUEUE_SHED_HOLD_MS", "250"),
            ("QUEUE_SHED_LOW_LATENCY_PCT", "0"),
        ]);
        let levels = Config::from_lookup(lookup(&with)).unwrap().shed_past_urgent;
        assert_eq!(
            levels,
            crate::resilience::shedding::UrgentLevels {
                low: 0,
                normal: 12,
                hold: Duration::from_millis(250),
                low_latency_pct: 0,
            }
        );

        for var in [
            "QUEUE_SHED_LOW_PAST_URGENT",
            "QUEUE_SHED_NORMAL_PAST_URGENT",
            "QUEUE_SHED_HOLD_MS",
            "QUEUE_SHED_LOW_LATENCY_PCT",
        ] {
            for value in ["-1", "many", "1000001"] {
                let mut bad = base.to_vec();
                bad.push((var, value));
                assert!(
                    matches!(
                        Config::from_lookup(lookup(&bad)),
                        Err(ConfigError::Invalid { var: v, .. }) if v == var
                    ),
                    "{var}={value}"
                );
            }
        }
        for value in ["1", "100"] {
            let mut bad = base.to_vec();
            bad.push(("QUEUE_SHED_LOW_LATENCY_PCT", value));
            assert!(Config::from_lookup(lookup(&bad)).is_err(), "{value}");
        }
    }

    #[test]
    fn production_requires_the_relying_party() {
        let err = Config::from_lookup(lookup(&[("QUEUE_JWT_KEYS", KEY)])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("QUEUE_RP_ID"));
    }

    #[test]
    fn errors_name_the_variable_never_the_value() {
        let secret_looking = "k1=not-a-key-SECRETVALUE";
        let err = Config::from_lookup(lookup(&[
            ("QUEUE_DEV", "1"),
            ("QUEUE_JWT_KEYS", secret_looking),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("QUEUE_JWT_KEYS"), "{err}");
        assert!(!err.contains("SECRETVALUE"), "{err}");

        let err = Config::from_lookup(lookup(&[
            ("QUEUE_DEV", "1"),
            ("QUEUE_JWT_KEYS", KEY),
            ("QUEUE_REFRESH_REUSE_GRACE", "61"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("QUEUE_REFRESH_REUSE_GRACE"), "{err}");
        assert!(!err.contains("61"), "{err}");
    }

    #[test]
    fn debug_output_redacts_the_keys() {
        let config =
            Config::from_lookup(lookup(&[("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)])).unwrap();
        let debug = format!("{config:?}");
        assert!(debug.contains("k1"), "{debug}");
        assert!(!debug.contains("9d61b19d"), "{debug}");
    }

    #[test]
    fn the_founders_gate_needs_its_threshold() {
        let err = Config::from_lookup_with_names(
            lookup(&[
                ("QUEUE_DEV", "1"),
                ("QUEUE_JWT_KEYS", KEY),
                ("FLAG_FOUNDERS_GATE", "1"),
            ]),
            [],
        )
        .unwrap_err();
        assert_eq!(err, ConfigError::Missing("FOUNDERS_COHORT_THRESHOLD"));
        let config = Config::from_lookup_with_names(
            lookup(&[
                ("QUEUE_DEV", "1"),
                ("QUEUE_JWT_KEYS", KEY),
                ("FLAG_FOUNDERS_GATE", "on"),
                ("FOUNDERS_COHORT_THRESHOLD", "1000"),
            ]),
            [],
        )
        .unwrap();
        assert!(config.flag_founders_gate);
        assert_eq!(config.founders_cohort_threshold, 1000);
    }

    #[test]
    fn unknown_role_names_in_the_catalogue_name_the_variable() {
        let err = Config::from_lookup_with_names(
            lookup(&[
                ("QUEUE_DEV", "1"),
                ("QUEUE_JWT_KEYS", KEY),
                ("QUEUE_ROLE_CATALOGUE", "ok-role,Bad Role"),
            ]),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("QUEUE_ROLE_CATALOGUE"), "{err}");
    }

    #[test]
    fn unknown_service_scopes_are_a_startup_error_naming_the_variable() {
        let err = Config::from_lookup_with_names(
            lookup(&[
                ("QUEUE_DEV", "1"),
                ("QUEUE_JWT_KEYS", KEY),
                ("QUEUE_SERVICE_TOKEN_OPS", "0123456789abcdef0123"),
                ("QUEUE_SERVICE_SCOPES_OPS", "admin,superuser"),
            ]),
            ["QUEUE_SERVICE_TOKEN_OPS", "QUEUE_SERVICE_SCOPES_OPS"],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("QUEUE_SERVICE_SCOPES_OPS"), "{err}");
    }

    #[test]
    fn the_jwt_algorithm_defaults_to_eddsa_and_names_its_variable() {
        let base = [("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)];
        assert_eq!(
            Config::from_lookup(lookup(&base)).unwrap().jwt_alg,
            JwtAlg::EdDSA
        );
        for (raw, alg) in [
            ("EdDSA", JwtAlg::EdDSA),
            ("es256", JwtAlg::ES256),
            (" RS256 ", JwtAlg::RS256),
        ] {
            let mut with = base.to_vec();
            with.push(("QUEUE_JWT_ALG", raw));
            assert_eq!(Config::from_lookup(lookup(&with)).unwrap().jwt_alg, alg);
        }
        for raw in ["HS256", "PS256", "none", "ES384"] {
            let mut bad = base.to_vec();
            bad.push(("QUEUE_JWT_ALG", raw));
            let err = Config::from_lookup(lookup(&bad)).unwrap_err().to_string();
            assert!(err.starts_with("QUEUE_JWT_ALG"), "{err}");
            assert!(!err.contains(raw), "{err}");
        }
    }

    #[test]
    fn key_parse_errors_never_echo_the_key() {
        for spec in [
            "k1=es256:SECRETVALUEAAAA",
            "k1=rs256:SECRETVALUEAAAA",
            "k1=ps256:SECRETVALUEAAAA",
        ] {
            let err = Config::from_lookup(lookup(&[("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", spec)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("QUEUE_JWT_KEYS"), "{err}");
            assert!(!err.contains("SECRETVALUE"), "{err}");
        }
    }

    #[test]
    fn hostile_client_settings_have_defaults_and_are_checked() {
        let base = [("QUEUE_DEV", "1"), ("QUEUE_JWT_KEYS", KEY)];
        let config = Config::from_lookup(lookup(&base)).unwrap();
        assert_eq!(config.timeouts, Timeouts::default());
        assert_eq!(config.timeouts.body, Duration::from_secs(10));
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(config.rate_limit_per_account_ceiling, 100);
        assert_eq!(
            (
                config.rate_limit_register_per_address,
                config.rate_limit_register_per_email
            ),
            (20, 5)
        );
        assert!(config.founders_count_verified_only);
        assert_eq!(config.breaker.probe_timeout, Duration::from_secs(5));
        assert_eq!(config.metrics_listen, None);

        let mut with = base.to_vec();
        with.extend([
            ("QUEUE_TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32"),
            ("QUEUE_BODY_TIMEOUT_MS", "2500"),
            ("QUEUE_METRICS_LISTEN", "127.0.0.1:9100"),
            ("QUEUE_METRICS_TOKEN", "scrape-SECRETVALUE-0123"),
        ]);
        let config = Config::from_lookup(lookup(&with)).unwrap();
        assert!(!config.trusted_proxies.is_empty());
        assert_eq!(config.timeouts.body, Duration::from_millis(2500));
        assert!(config
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.matches("scrape-SECRETVALUE-0123") && !t.matches("nope")));
        assert!(!format!("{config:?}").contains("SECRETVALUE"));

        for (var, value) in [
            ("QUEUE_TRUSTED_PROXIES", "10.0.0.0/8,not-a-cidr"),
            ("QUEUE_TRUST_FORWARDED_FOR", "1"),
            ("QUEUE_HEADER_TIMEOUT_MS", "0"),
            ("QUEUE_BODY_TIMEOUT_MS", "many"),
            ("QUEUE_HANDLER_TIMEOUT_MS", "600001"),
            ("QUEUE_BREAKER_PROBE_TIMEOUT_MS", "0"),
            ("QUEUE_METRICS_LISTEN", "nowhere"),
            ("QUEUE_METRICS_TOKEN", "short"),
            ("QUEUE_RATE_LIMIT_MAX_KEYS", "10"),
            ("FOUNDERS_COUNT_VERIFIED_ONLY", "maybe"),
        ] {
            let mut bad = base.to_vec();
            bad.push((var, value));
            assert!(
                matches!(
                    Config::from_lookup(lookup(&bad)),
                    Err(ConfigError::Invalid { var: v, .. }) if v == var
                ),
                "{var}={value}"
            );
        }
    }

    #[test]
    fn smtp_needs_a_url_and_a_from_address() {
        let base = [
            ("QUEUE_DEV", "1"),
            ("QUEUE_JWT_KEYS", KEY),
            ("QUEUE_MAILER", "smtp"),
        ];
        let err = Config::from_lookup(lookup(&base)).unwrap_err().to_string();
        assert!(err.starts_with("QUEUE_SMTP_URL"), "{err}");
        let mut with_url = base.to_vec();
        with_url.push(("QUEUE_SMTP_URL", "smtp://127.0.0.1:2525"));
        let err = Config::from_lookup(lookup(&with_url))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("QUEUE_MAIL_FROM"), "{err}");
        with_url.push(("QUEUE_MAIL_FROM", "Queue <no-reply@example.com>"));
        let config = Config::from_lookup(lookup(&with_url)).unwrap();
        assert!(matches!(config.mailer, MailerConfig::Smtp(_)));
        assert_eq!(config.mail.from, "Queue <no-reply@example.com>");
        assert_eq!(config.mail.max_attempts, 12);
    }

    #[test]
    fn smtp_urls_are_checked_and_never_shown_with_their_password() {
        let with = |url: &'static str| {
            let pairs = [
                ("QUEUE_DEV", "1"),
                ("QUEUE_JWT_KEYS", KEY),
                ("QUEUE_MAILER", "smtp"),
                ("QUEUE_MAIL_FROM", "no-reply@example.com"),
                ("QUEUE_SMTP_URL", url),
            ];
            Config::from_lookup(lookup(&pairs))
        };
        for good in [
            "smtp://relay.example.com:25",
            "smtp://user:S3CRETPASS@relay.example.com:587?tls=required",
            "smtp://user:S3CRETPASS@relay.example.com:587?tls=opportunistic",
            "smtps://user:S3CRETPASS@relay.example.com:465",
        ] {
            let config = with(good).unwrap();
            let shown = format!("{config:?}");
            assert!(!shown.contains("S3CRETPASS"), "{shown}");
            assert!(shown.contains("relay.example.com"), "{shown}");
        }
        for bad in [
            "http://user:S3CRETPASS@relay.example.com",
            "smtp://user:S3CRETPASS@relay.example.com:587?tls=maybe",
            "smtps://user:S3CRETPASS@relay.example.com:465?tls=required",
            "smtp://user:S3CRETPASS@relay.example.com:587?foo=bar",
            "not a url S3CRETPASS",
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.starts_with("QUEUE_SMTP_URL"), "{bad}: {err}");
            assert!(!err.contains("S3CRETPASS"), "{err}");
        }
    }
}
