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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::config::RedisConfig;
use crate::error::ApiError;

/// Drop full buckets once the map grows past this many keys.
const SWEEP_ABOVE: usize = 10_000;

/// How often the background task checks (or re-establishes) the connection.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One connection attempt may take this long before the next try.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// GCRA over Redis server time (one clock for every instance). KEYS[1] holds
/// the theoretical arrival time in microseconds; ARGV[1] is the emission
/// interval (µs per token), ARGV[2] the burst (bucket size). Returns 0 when
/// a token was taken, else the microseconds until one is back. `%.0f` keeps
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

#[derive(Debug)]
pub struct RateLimiter {
    /// Names this limiter's keys in Redis (the same key may be limited by
    /// several limiters with different sizes).
    name: &'static str,
    /// Bucket size and refill per minute.
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
    shared: Option<Arc<SharedCounters>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
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
        Self {
            name,
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
            shared,
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

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let capacity = f64::from(self.per_minute);
        let rate = capacity / 60.0;
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
    }

    /// The per-process bucket for `key`.
    pub fn check_local(&self, key: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let capacity = f64::from(self.per_minute);
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() > SWEEP_ABOVE {
            let mut full = Vec::new();
            for (k, b) in buckets.iter_mut() {
                self.refill(b, now);
                if b.tokens >= capacity {
                    full.push(k.clone());
                }
            }
            for k in full {
                buckets.remove(&k);
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let rate = capacity / 60.0;
            let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0);
            Err(ApiError::RateLimited {
                retry_after_secs: wait as u64,
            })
        }
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
        let client = redis::Client::open(config.url.as_str())
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
        let mut connection = self.connection().ok_or("not connected")?;
        // Hashed: account keys hold email addresses, which have no business
        // in a shared cache.
        let digest = Sha256::digest(key.as_bytes());
        let redis_key = format!("{}rl:{limiter}:{}", self.prefix, hex::encode(&digest[..16]));
        let interval_us = 60_000_000 / u64::from(per_minute.max(1));
        let mut invocation = self.script.key(redis_key);
        invocation.arg(interval_us.max(1)).arg(per_minute);
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
}
