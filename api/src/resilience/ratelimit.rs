//! Rate limits: token buckets, one per key (client address, account or
//! calling service).
//!
//! Without `QUEUE_REDIS_URL` each instance limits on its own (with N
//! instances the effective limit is at most N times the configured one).
//! With it, the buckets live in Redis and every instance shares them (GCRA in
//! one Lua script, so a check is one atomic round trip). Redis is never
//! allowed to fail a request: when it is down, slow or not yet connected, the
//! call falls back to this process's buckets, the mode reads `degraded`, and
//! a background task reconnects.
//!
//! The per-process buckets are `governor`'s keyed GCRA limiter (the same
//! algorithm as the Redis script): a check is O(1) whatever the number of
//! keys (a sharded hash map, no scan). Keys whose state is as good as fresh
//! are evicted at most every second (`retain_recent`), from the check path,
//! so memory follows the keys seen in the last few emission intervals; and a
//! limiter never holds more than `QUEUE_RATE_LIMIT_MAX_KEYS` keys: past that
//! (a flood of distinct keys faster than eviction drops them) every check of
//! that limiter shares one overflow bucket until eviction makes room.
//! Bounded memory wins over per-key fairness during such a flood.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::Quota;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::config::RedisConfig;
use crate::http::error::ApiError;

/// Evict stale keys at most this often (from the check path).
const EVICT_EVERY: Duration = Duration::from_secs(1);

/// While a limiter is full, evict at most this often.
const EVICT_WHEN_FULL_EVERY: Duration = Duration::from_millis(100);

/// The one key every check uses while a limiter is full.
const OVERFLOW_KEY: &str = "\u{0}overflow";

/// Default for `QUEUE_RATE_LIMIT_MAX_KEYS`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

type KeyedLimiter = governor::RateLimiter<String, DashMapStateStore<String>, DefaultClock>;

/// How often the background task checks (or re-establishes) the connection.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One connection attempt may take this long before the next try.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// GCRA over Redis server time (one clock for every instance). KEYS[1] holds
/// the theoretical arrival time in microseconds; ARGV[1] is the emission
/// interval (µs per token), ARGV[2] the burst (bucket size). Returns 0 when
/// a token was taken, else the microseconds until one is back; with ARGV[3]
/// = 1 it only looks (a peek takes nothing). `%.0f` keeps
/// the 16-digit integers exact (Lua's tostring would round them).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return allow_at - now
end
if ARGV[3] == '1' then
  return 0
end
local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return 0
";

/// Where this instance's rate-limit counters live right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitMode {
    /// No Redis configured: per-process limits by design.
    Local,
    /// Redis configured and answering: limits shared by every instance.
    Shared,
    /// Redis configured but unreachable or slow: per-process limits for now.
    Degraded,
}

impl RateLimitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Shared => "shared",
            Self::Degraded => "degraded",
        }
    }
}

pub struct RateLimiter {
    /// Names this limiter's keys in Redis (the same key may be limited by
    /// several limiters with different sizes).
    name: &'static str,
    /// Bucket size and refill per minute.
    per_minute: u32,
    local: KeyedLimiter,
    clock: DefaultClock,
    /// Keys whose local bucket refused a token, and until when: what
    /// [`RateLimiter::peek`] reads (governor has no look-without-taking).
    refused_until: DashMap<String, Instant>,
    max_keys: usize,
    /// Microseconds after `epoch` of the last eviction.
    last_evicted: AtomicU64,
    epoch: Instant,
    shared: Option<Arc<SharedCounters>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("per_minute", &self.per_minute)
            .field("keys", &self.local.len())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A per-process limiter.
    pub fn new(per_minute: u32) -> Self {
        Self::with_shared("local", per_minute, None)
    }

    /// A limiter whose buckets live in `shared` when it answers.
    pub fn with_shared(
        name: &'static str,
        per_minute: u32,
        shared: Option<Arc<SharedCounters>>,
    ) -> Self {
        Self::bounded(name, per_minute, DEFAULT_MAX_KEYS, shared)
    }

    /// A limiter holding at most `max_keys` per-process keys.
    pub fn bounded(
        name: &'static str,
        per_minute: u32,
        max_keys: usize,
        shared: Option<Arc<SharedCounters>>,
    ) -> Self {
        let per_minute = per_minute.max(1);
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        let clock = DefaultClock::default();
        Self {
            name,
            per_minute,
            local: governor::RateLimiter::new(quota, DashMapStateStore::default(), clock.clone()),
            clock,
            refused_until: DashMap::new(),
            max_keys: max_keys.max(1),
            last_evicted: AtomicU64::new(0),
            epoch: Instant::now(),
            shared,
        }
    }

    /// Per-process keys held now (after the last eviction).
    pub fn key_count(&self) -> usize {
        self.local.len()
    }

    /// Drops every key whose bucket is as good as fresh, now.
    pub fn evict(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
        let now = Instant::now();
        self.refused_until.retain(|_, until| *until > now);
        self.refused_until.shrink_to_fit();
        self.last_evicted
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Evicts when the last eviction is older than `every` (one caller does
    /// it; the others go on).
    fn housekeeping(&self, every: Duration) {
        let now = self.epoch.elapsed().as_micros() as u64;
        let last = self.last_evicted.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every.as_micros() as u64
            && self
                .last_evicted
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.evict();
        }
    }

    /// Answers 429 when `key`'s bucket is known to be empty, without taking
    /// a token (per process: known once a check was refused).
    pub async fn peek(&self, key: &str) -> Result<(), ApiError> {
        if let Some(shared) = &self.shared {
            shared.supervise();
            if shared.is_up() {
                match shared.peek(self.name, key, self.per_minute).await {
                    Ok(0) => return Ok(()),
                    Ok(wait_us) => {
                        return Err(ApiError::RateLimited {
                            retry_after_secs: wait_us.div_ceil(1_000_000).max(1),
                        })
                    }
                    Err(why) => shared.mark_down(&why),
                }
            }
        }
        let now = Instant::now();
        match self.refused_until.get(key).map(|until| *until) {
            Some(until) if until > now => Err(ApiError::RateLimited {
                retry_after_secs: until.duration_since(now).as_secs().max(1),
            }),
            _ => Ok(()),
        }
    }

    /// Takes one token for `key`, or answers 429 with the seconds until one
    /// is back. Shared when Redis answers in time, else per process.
    pub async fn check(&self, key: &str) -> Result<(), ApiError> {
        if let Some(shared) = &self.shared {
            shared.supervise();
            if shared.is_up() {
                match shared.take(self.name, key, self.per_minute).await {
                    Ok(0) => return Ok(()),
                    Ok(wait_us) => {
                        return Err(ApiError::RateLimited {
                            retry_after_secs: wait_us.div_ceil(1_000_000).max(1),
                        })
                    }
                    Err(why) => shared.mark_down(&why),
                }
            }
            metrics::counter!("queue_rate_limit_fallbacks_total").increment(1);
        }
        self.check_local(key)
    }

    /// The per-process bucket for `key`.
    pub fn check_local(&self, key: &str) -> Result<(), ApiError> {
        self.housekeeping(EVICT_EVERY);
        let mut bucket = key;
        if self.local.len() >= self.max_keys {
            // Full: evict sooner, but never on every check (that would be
            // the O(keys) scan per request this limiter exists to avoid).
            self.housekeeping(EVICT_WHEN_FULL_EVERY);
            if self.local.len() >= self.max_keys {
                metrics::counter!("queue_rate_limit_overflow_total", "limiter" => self.name)
                    .increment(1);
                bucket = OVERFLOW_KEY;
            }
        }
        match self.local.check_key(&bucket.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                if self.refused_until.len() < self.max_keys {
                    self.refused_until
                        .insert(key.to_owned(), Instant::now() + wait);
                }
                Err(ApiError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
    }
}

/// Per-account limits that only failed verifications charge (issue 17,
/// item 3): a bucket per (account, client address), so an attacker's
/// failures cannot empty the victim's bucket, and a much higher ceiling per
/// account across all addresses. A success is never charged; a caller
/// decides whether the ceiling may refuse before the check (see
/// [`AccountLimits::refuse_if_exhausted`]).
#[derive(Debug)]
pub struct AccountLimits {
    pub pair: RateLimiter,
    pub ceiling: RateLimiter,
}

impl AccountLimits {
    fn pair_key(scope: &str, account: &str, address: &str) -> String {
        format!("{scope}:{account}@{address}")
    }

    fn ceiling_key(scope: &str, account: &str) -> String {
        format!("{scope}:{account}")
    }

    /// 429 when this address already used up its failures on this account
    /// (and, with `ceiling`, when the account's ceiling is used up). Takes
    /// nothing.
    pub async fn refuse_if_exhausted(
        &self,
        scope: &str,
        account: &str,
        address: &str,
        ceiling: bool,
    ) -> Result<(), ApiError> {
        self.pair
            .peek(&Self::pair_key(scope, account, address))
            .await?;
        if ceiling {
            self.ceiling
                .peek(&Self::ceiling_key(scope, account))
                .await?;
        }
        Ok(())
    }

    /// Charges one failed verification; `Err(RateLimited)` when a bucket
    /// was already empty (the caller answers 429 instead of its failure).
    pub async fn record_failure(
        &self,
        scope: &str,
        account: &str,
        address: &str,
    ) -> Result<(), ApiError> {
        let pair = self
            .pair
            .check(&Self::pair_key(scope, account, address))
            .await;
        let ceiling = self.ceiling.check(&Self::ceiling_key(scope, account)).await;
        pair.and(ceiling)
    }
}

/// The Redis side, shared by all limiters of one instance: one multiplexed
/// connection, its health, and the task that keeps it alive.
pub struct SharedCounters {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    script: redis::Script,
    connection: RwLock<Option<ConnectionManager>>,
    up: AtomicBool,
    supervised: AtomicBool,
}

impl std::fmt::Debug for SharedCounters {
    // The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounters")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedCounters {
    /// Parses the URL (no I/O); the connection is made in the background.
    pub fn new(config: &RedisConfig) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(config.url.expose())
            .map_err(|e| format!("QUEUE_REDIS_URL: {}", e.category()))?;
        Ok(Arc::new(Self {
            client,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            script: redis::Script::new(GCRA),
            connection: RwLock::new(None),
            up: AtomicBool::new(false),
            supervised: AtomicBool::new(false),
        }))
    }

    pub fn mode(&self) -> RateLimitMode {
        if self.is_up() {
            RateLimitMode::Shared
        } else {
            RateLimitMode::Degraded
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn connection(&self) -> Option<ConnectionManager> {
        match self.connection.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_connection(&self, connection: ConnectionManager) {
        match self.connection.write() {
            Ok(mut guard) => *guard = Some(connection),
            Err(poisoned) => *poisoned.into_inner() = Some(connection),
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("shared rate limits: Redis answers; limits are shared");
        }
    }

    /// Until the background probe succeeds, calls skip Redis altogether, so
    /// an outage costs one timeout, not one per request.
    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                error = why,
                "shared rate limits: Redis unavailable; falling back to per-process limits"
            );
        }
    }

    /// Starts the connection task once, from the first caller inside a
    /// Tokio runtime. It holds only a weak reference, so it ends with the
    /// state that owns these counters.
    pub fn supervise(self: &Arc<Self>) {
        if self.supervised.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.supervised.swap(true, Ordering::SeqCst) {
            return;
        }
        runtime.spawn(keep_connected(Arc::downgrade(self)));
    }

    /// One GCRA step in Redis: `Ok(0)` when a token was taken, `Ok(µs)` to
    /// wait, `Err` when Redis did not answer in time.
    async fn take(&self, limiter: &str, key: &str, per_minute: u32) -> Result<u64, String> {
        self.gcra(limiter, key, per_minute, false).await
    }

    /// As `take`, without taking: `Ok(0)` when a token is there.
    async fn peek(&self, limiter: &str, key: &str, per_minute: u32) -> Result<u64, String> {
        self.gcra(limiter, key, per_minute, true).await
    }

    async fn gcra(
        &self,
        limiter: &str,
        key: &str,
        per_minute: u32,
        peek: bool,
    ) -> Result<u64, String> {
        let mut connection = self.connection().ok_or("not connected")?;
        // Hashed: account keys hold email addresses, which have no business
        // in a shared cache.
        let digest = Sha256::digest(key.as_bytes());
        let redis_key = format!("{}rl:{limiter}:{}", self.prefix, hex::encode(&digest[..16]));
        let interval_us = 60_000_000 / u64::from(per_minute.max(1));
        let mut invocation = self.script.key(redis_key);
        invocation
            .arg(interval_us.max(1))
            .arg(per_minute)
            .arg(if peek { 1 } else { 0 });
        match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await
        {
            Ok(Ok(wait)) => Ok(u64::try_from(wait).unwrap_or(0)),
            Ok(Err(e)) => Err(e.category().to_owned()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    /// Connects, then pings every second; the mode follows the answers.
    async fn probe(&self) {
        let connection = match self.connection() {
            Some(connection) => connection,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(self.timeout.max(Duration::from_millis(200)))
                    .set_number_of_retries(1);
                match tokio::time::timeout(
                    CONNECT_TIMEOUT * 2,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                {
                    Ok(Ok(connection)) => {
                        self.set_connection(connection.clone());
                        connection
                    }
                    Ok(Err(e)) => return self.mark_down(e.category()),
                    Err(_) => return self.mark_down("connect timed out"),
                }
            }
        };
        let mut connection = connection;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(CONNECT_TIMEOUT, ping.query_async::<String>(&mut connection))
            .await
        {
            Ok(Ok(_)) => self.mark_up(),
            Ok(Err(e)) => self.mark_down(e.category()),
            Err(_) => self.mark_down("ping timed out"),
        }
    }
}

async fn keep_connected(counters: Weak<SharedCounters>) {
    loop {
        let Some(counters) = counters.upgrade() else {
            return;
        };
        counters.probe().await;
        drop(counters);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_and_says_when_to_retry() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check_local("a").is_ok());
        }
        match limiter.check_local("a") {
            Err(ApiError::RateLimited { retry_after_secs }) => {
                assert!((1..=20).contains(&retry_after_secs))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limiter.check_local("b").is_ok());
    }

    #[tokio::test]
    async fn only_failures_charge_and_a_peek_takes_nothing() {
        let limits = AccountLimits {
            pair: RateLimiter::new(2),
            ceiling: RateLimiter::new(3),
        };
        let limited = |r: Result<(), ApiError>| matches!(r, Err(ApiError::RateLimited { .. }));
        for _ in 0..10 {
            assert!(limits
                .refuse_if_exhausted("s", "acct", "192.0.2.1", true)
                .await
                .is_ok());
        }
        assert!(limits
            .record_failure("s", "acct", "192.0.2.1")
            .await
            .is_ok());
        assert!(limits
            .record_failure("s", "acct", "192.0.2.1")
            .await
            .is_ok());
        // The pair is empty (the ceiling took its third).
        assert!(limited(
            limits.record_failure("s", "acct", "192.0.2.1").await
        ));
        assert!(limited(
            limits
                .refuse_if_exhausted("s", "acct", "192.0.2.1", false)
                .await
        ));
        // Another address has its own pair, but the ceiling is now used up.
        assert!(limits
            .refuse_if_exhausted("s", "acct", "192.0.2.2", false)
            .await
            .is_ok());
        assert!(limited(
            limits.record_failure("s", "acct", "192.0.2.2").await
        ));
        assert!(limited(
            limits
                .refuse_if_exhausted("s", "acct", "192.0.2.3", true)
                .await
        ));
        assert!(limits
            .refuse_if_exhausted("s", "acct", "192.0.2.3", false)
            .await
            .is_ok());
        // Another account is untouched.
        assert!(limits
            .refuse_if_exhausted("s", "other", "192.0.2.1", true)
            .await
            .is_ok());
    }

    #[test]
    fn a_full_limiter_shares_one_overflow_bucket_and_stays_bounded() {
        let limiter = RateLimiter::bounded("t", 60, 100, None);
        for i in 0..10_000 {
            let _ = limiter.check_local(&format!("k{i}"));
            assert!(limiter.key_count() <= 101);
        }
    }
}
