//! Shared state of one API instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queue_eventstore::{ChainedEventRepository, SharedCheckpointSigner, SharedMacKeys};
use sqlx::PgPool;
use webauthn_rs_core::fake::{FakePasskeyDistribution, WebauthnFakeCredentialGenerator};
use webauthn_rs_core::WebauthnCore;

use crate::auth::jwt::SharedJwtKeys;
use crate::clock::ServiceClock;
use crate::config::{Config, MailerConfig};
use crate::http::metrics::Metrics;
use crate::mail::mailer::{LogMailer, Mailer, SmtpMailer};
use crate::resilience::ratelimit::{AccountLimits, RateLimitMode, RateLimiter, SharedCounters};
use queue_eventstore::EventStore;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Set on SIGTERM/SIGINT: health answers 503 while in-flight work drains.
    pub shutting_down: Arc<AtomicBool>,
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub config: Config,
    pub store: EventStore,
    pub jwt_keys: SharedJwtKeys,
    pub webauthn: WebauthnCore,
    pub clock: ServiceClock,
    pub address_limiter: RateLimiter,
    /// Failed verifications per (account, address), with a per-account
    /// ceiling: charged only when a verification fails.
    pub account_limits: AccountLimits,
    /// Registration begin/complete per client address and per email.
    pub register_address_limiter: RateLimiter,
    pub register_email_limiter: RateLimiter,
    /// Per calling service (audit writer).
    pub service_limiter: RateLimiter,
    /// The Redis counters the limiters share (`QUEUE_REDIS_URL`), if any.
    pub shared_limits: Option<Arc<SharedCounters>>,
    /// The checkpoint signer of this process's sealer (set by `queue
    /// serve`), for key health in `/readyz` and `/metrics`.
    pub checkpoint_signer: std::sync::OnceLock<SharedCheckpointSigner>,
    pub mailer: Arc<dyn Mailer>,
    pub metrics: Metrics,
    pub breaker: crate::resilience::breaker::Breaker,
    pub in_flight: crate::resilience::shedding::InFlight,
    /// Keyed from the JWT signing key at start: believable credential ids for
    /// unknown emails at login/begin.
    pub fake_credentials: WebauthnFakeCredentialGenerator<FakePasskeyDistribution>,
    /// The generator's key, for the one-id fallback when it yields none.
    pub fake_key: [u8; 32],
}

impl AppState {
    /// Builds the state with the system clock and the configured mailer.
    pub fn new(pool: PgPool, config: Config, mac_keys: SharedMacKeys) -> Result<Self, String> {
        let mailer: Arc<dyn Mailer> = match &config.mailer {
            MailerConfig::Log { dir } => {
                Arc::new(LogMailer::with_from(dir.clone(), config.mail.from.clone()))
            }
            MailerConfig::Smtp(smtp) => Arc::new(SmtpMailer::new(smtp, &config.mail.from)?),
        };
        Self::with_parts(pool, config, mac_keys, ServiceClock::new(), mailer)
    }

    /// Builds the state with a given clock and mailer (tests move the clock).
    pub fn with_parts(
        pool: PgPool,
        config: Config,
        mac_keys: SharedMacKeys,
        clock: ServiceClock,
        mailer: Arc<dyn Mailer>,
    ) -> Result<Self, String> {
        let repo = ChainedEventRepository::new(pool.clone(), mac_keys, Arc::new(clock.clone()));
        let webauthn = WebauthnCore::new_unsafe_experts_only(
            &config.rp_name,
            &config.rp_id,
            config.rp_origins.clone(),
            Duration::from_secs(u64::from(config.challenge_ttl_secs)),
            Some(false),
            Some(false),
        );
        let fake_key = crate::auth::tokens::derive_key(
            &config.jwt_keys.current().seed(),
            b"queue fake credential ids",
        );
        let fake_credentials = WebauthnFakeCredentialGenerator::new(&fake_key)
            .map_err(|e| format!("fake credential generator: {e}"))?;
        let jwt_keys = SharedJwtKeys::new(config.jwt_keys.clone());
        let shared_limits = config.redis.as_ref().map(SharedCounters::new).transpose()?;
        // Connect now when a runtime is at hand, so the first request finds
        // the limits already shared.
        if let Some(shared) = &shared_limits {
            shared.supervise();
        }
        let max_keys = config.rate_limit_max_keys;
        let limiter = |name: &'static str, per_minute: u32| {
            RateLimiter::bounded(name, per_minute, max_keys, shared_limits.clone())
        };
        Ok(Self {
            pool,
            shutting_down: Arc::new(AtomicBool::new(false)),
            inner: Arc::new(Inner {
                address_limiter: limiter("address", config.rate_limit_per_address),
                account_limits: AccountLimits {
                    pair: limiter("account", config.rate_limit_per_account),
                    ceiling: limiter("account_ceiling", config.rate_limit_per_account_ceiling),
                },
                register_address_limiter: limiter(
                    "register_address",
                    config.rate_limit_register_per_address,
                ),
                register_email_limiter: limiter(
                    "register_email",
                    config.rate_limit_register_per_email,
                ),
                service_limiter: limiter("service", config.rate_limit_per_service),
                shared_limits,
                checkpoint_signer: std::sync::OnceLock::new(),
                store: EventStore::new(repo),
                jwt_keys,
                webauthn,
                clock,
                mailer,
                metrics: Metrics::global(),
                breaker: crate::resilience::breaker::Breaker::new(config.breaker),
                in_flight: crate::resilience::shedding::InFlight::default(),
                fake_credentials,
                fake_key,
                config,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn clock(&self) -> &ServiceClock {
        &self.inner.clock
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }

    /// Where rate-limit counters live right now.
    pub fn rate_limit_mode(&self) -> RateLimitMode {
        match &self.inner.shared_limits {
            None => RateLimitMode::Local,
            Some(shared) => {
                shared.supervise();
                shared.mode()
            }
        }
    }

    /// Health of each key set: `true` when its last reload failed and the
    /// last good keys are still in use. (MAC, JWT, checkpoint.)
    pub fn keys_degraded(&self) -> KeysDegraded {
        KeysDegraded {
            mac: self.store().repo().keys().is_degraded(),
            jwt: self.inner.jwt_keys.is_degraded(),
            checkpoint: self
                .inner
                .checkpoint_signer
                .get()
                .is_some_and(SharedCheckpointSigner::is_degraded),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// Which key sets are running on their last good keys after a failed reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeysDegraded {
    pub mac: bool,
    pub jwt: bool,
    pub checkpoint: bool,
}

impl KeysDegraded {
    pub fn any(self) -> bool {
        self.mac || self.jwt || self.checkpoint
    }
}
