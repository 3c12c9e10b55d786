#![forbid(unsafe_code)]
//! Generated histories for the replay tests, written through the real
//! command path: the event store's unit of work (checked loads, commands,
//! batched appends; the API's very path), one command at a time and
//! multi-stream batches where the API makes them (a suspension and its
//! session revokes commit together), from several concurrent writers (so
//! commits interleave across streams as they do in production).
//!
//! Deterministic for a seed, except for commit order across writers and the
//! store's `recorded_at`.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::Aggregate;
use queue_domain::session::{AuthMethod, RevokeReason};
use queue_domain::types::{
    Actor, AuditAction, AuditEventId, AuditTarget, CredentialId, CredentialName, CustomerId,
    DisplayName, Email, GrantId, IdempotencyKey, LegacyId, RawCredentialId, Reason, Role,
    SecretHash, ServiceName, SessionFamilyId, SessionId, TicketId,
};
use queue_domain::{
    Audit, AuditCommand, Credential, CredentialCommand, Customer, CustomerCommand, Session,
    SessionCommand,
};
use queue_eventstore::{
    Batch, ChainedEventRepository, EventStore, MacKeys, SharedMacKeys, StoreError, SystemClock,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// The MAC key the generated histories are written with.
pub const MAC_KEY: [u8; 32] = [0x42; 32];

pub fn mac_keys() -> Result<MacKeys> {
    Ok(MacKeys::single("k1", MAC_KEY.to_vec())?)
}

pub fn repository(pool: &PgPool) -> Result<ChainedEventRepository> {
    Ok(ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(mac_keys()?),
        Arc::new(SystemClock),
    ))
}

/// A command's outcome: refused by the domain (expected now and then), or
/// a store error (a failure of the run).
#[derive(Debug)]
pub enum CommandError<E> {
    Domain(E),
    Store(StoreError),
}

/// The command path over the unit of work: load and check the stream, run
/// the command, append what it decided.
pub struct Frameworks {
    pub store: EventStore,
}

impl Frameworks {
    pub fn new(repo: &ChainedEventRepository) -> Self {
        Self {
            store: EventStore::new(repo.clone()),
        }
    }

    /// One command on one stream, in its own batch.
    pub async fn execute<A: Aggregate<Services = ()> + Clone + 'static>(
        &self,
        id: &str,
        command: A::Command,
    ) -> std::result::Result<(), CommandError<A::Error>> {
        let mut loaded = self
            .store
            .load::<A>(id)
            .await
            .map_err(CommandError::Store)?;
        let events = loaded
            .execute(command)
            .await
            .map_err(CommandError::Domain)?;
        let mut batch = Batch::new();
        batch
            .add(&mut loaded, &events)
            .map_err(CommandError::Store)?;
        self.store.append(batch).await.map_err(CommandError::Store)
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub customers: usize,
    /// Concurrent writers (each takes a share of the customers).
    pub writers: usize,
    pub seed: u64,
}

/// What was generated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generated {
    pub customers: u64,
    /// Commands accepted.
    pub accepted: u64,
    /// Commands the domain refused (expected now and then: a refresh of a
    /// revoked session, …); they write nothing.
    pub refused: u64,
    /// Batches that committed events of several streams at once (a
    /// suspension with the revokes of two or more sessions).
    pub multi_stream_batches: u64,
}

impl Generated {
    fn add(&mut self, other: &Generated) {
        self.customers += other.customers;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.multi_stream_batches += other.multi_stream_batches;
    }
}

/// Writes a history of `spec.customers` customers with their passkeys,
/// sessions, grants, backup codes, verifications and external audit events.
pub async fn generate(pool: &PgPool, spec: &Spec) -> Result<Generated> {
    let repo = repository(pool)?;
    let frameworks = Arc::new(Frameworks::new(&repo));
    let writers = spec.writers.max(1);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let frameworks = Arc::clone(&frameworks);
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut total = Generated::default();
            let mut index = writer;
            while index < spec.customers {
                let done = customer_history(&frameworks, spec.seed, index).await?;
                total.add(&done);
                index += writers;
            }
            Ok::<_, Error>(total)
        }));
    }
    let mut total = Generated::default();
    for task in tasks {
        total.add(&task.await??);
    }
    Ok(total)
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn hash(parts: &str) -> SecretHash {
    SecretHash::of(parts.as_bytes())
}

/// Counts outcomes: domain refusals are fine, anything else is an error.
struct Tally(Generated);

impl Tally {
    fn outcome<E>(&mut self, result: std::result::Result<(), CommandError<E>>) -> Result<bool> {
        match result {
            Ok(()) => {
                self.0.accepted += 1;
                Ok(true)
            }
            Err(CommandError::Domain(_)) => {
                self.0.refused += 1;
                Ok(false)
            }
            Err(CommandError::Store(err)) => Err(Box::new(err)),
        }
    }
}

/// One customer's life. Times advance a few seconds per command from a
/// per-customer start, so expiries and grace windows are exercised.
async fn customer_history(fw: &Frameworks, seed: u64, index: usize) -> Result<Generated> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let mut tally = Tally(Generated {
        customers: 1,
        ..Generated::default()
    });
    let mut clock = Clock(base_time() + Duration::minutes(index as i64));
    let customer_id = CustomerId::from_uuid(Uuid::from_u128(rng.gen()));
    let cid = customer_id.to_string();
    let email = Email::parse(&format!("user{index}.s{seed}@example.com"))?;
    let actor = Actor::parse("ops@queue")?;
    let reason = |text: &str| Reason::parse(text);

    // Registration or import from legacy.
    let imported = rng.gen_bool(0.1);
    let command = if imported {
        CustomerCommand::Import {
            customer_id,
            legacy_id: LegacyId::try_from(index as i64 + 1)?,
            email,
            display_name: if rng.gen_bool(0.8) {
                Some(DisplayName::parse(&format!("Legacy {index}"))?)
            } else {
                None
            },
            email_verified_at: if rng.gen_bool(0.5) {
                Some(clock.tick(&mut rng))
            } else {
                None
            },
            suspended: rng.gen_bool(0.1),
            created_at: clock.tick(&mut rng),
        }
    } else {
        CustomerCommand::Register {
            tenant_id: queue_domain::types::TenantId::DEFAULT,
            customer_id,
            email,
            display_name: DisplayName::parse(&format!("User {index}"))?,
            at: clock.tick(&mut rng),
        }
    };
    tally.outcome(fw.execute::<Customer>(&cid, command).await)?;

    // Passkeys.
    let mut credentials = Vec::new();
    for n in 0..rng.gen_range(1..=3) {
        let raw: Vec<u8> = (0..16).map(|_| rng.gen()).collect();
        let raw = RawCredentialId::from_bytes(raw)?;
        let credential_id = raw.credential_id();
        let backup_eligible = rng.gen_bool(0.5);
        let command = CredentialCommand::Register {
            customer_id,
            raw_credential_id: raw.clone(),
            passkey: json!({"cred": {"cred_id": raw.to_string(), "counter": 0,
                "user_verified": true, "backup_eligible": backup_eligible,
                "transports": ["Internal", "Hybrid"]}}),
            name: if rng.gen_bool(0.7) {
                Some(CredentialName::parse(&format!("Key {n}"))?)
            } else {
                None
            },
            aaguid: if rng.gen_bool(0.8) {
                Some(Uuid::from_u128(rng.gen()))
            } else {
                None
            },
            backup_eligible,
            backup_state: backup_eligible && rng.gen_bool(0.5),
            sign_count: 0,
            transports: vec!["internal".into(), "hybrid".into()],
            at: clock.tick(&mut rng),
        };
        let cred = credential_id.to_string();
        if !tally.outcome(fw.execute::<Credential>(&cred, command).await)? {
            continue;
        }
        let mut counter = 0u32;
        for _ in 0..rng.gen_range(0..4) {
            counter += rng.gen_range(1..5);
            let command = CredentialCommand::RecordUse {
                sign_count: counter,
                backup_state: rng.gen_bool(0.5),
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Credential>(&cred, command).await)?;
        }
        if rng.gen_bool(0.1) {
            // A cloned authenticator: the counter goes backwards; refused.
            let command = CredentialCommand::RecordUse {
                sign_count: counter,
                backup_state: false,
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Credential>(&cred, command).await)?;
        }
        if rng.gen_bool(0.3) {
            let command = CredentialCommand::Rename {
                name: CredentialName::parse(&format!("Renamed {n}"))?,
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Credential>(&cred, command).await)?;
        }
        if n > 0 && rng.gen_bool(0.25) {
            let command = CredentialCommand::Revoke {
                reason: reason("lost device")?,
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Credential>(&cred, command).await)?;
        }
        credentials.push(credential_id);
    }

    // Email verification (imported customers may already be verified: refused then).
    if rng.gen_bool(0.6) {
        let mut token = hash(&format!("{seed}/{index}/email/0"));
        let requested = clock.tick(&mut rng);
        let command = CustomerCommand::RequestEmailVerification {
            token_hash: token,
            expires_at: requested + Duration::hours(24),
            at: requested,
        };
        tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        if rng.gen_bool(0.3) {
            token = hash(&format!("{seed}/{index}/email/1"));
            let requested = clock.tick(&mut rng);
            let command = CustomerCommand::RequestEmailVerification {
                token_hash: token,
                expires_at: requested + Duration::hours(24),
                at: requested,
            };
            tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        }
        if rng.gen_bool(0.7) {
            let command = CustomerCommand::VerifyEmail {
                token_hash: token,
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        }
    }

    // RBAC grants, some ticket-scoped, some expiring, some revoked.
    for g in 0..rng.gen_range(0..3) {
        let grant_id = GrantId::from_uuid(Uuid::from_u128(rng.gen()));
        let role = ["support-agent", "auditor", "admin", "billing:read"][rng.gen_range(0..4)];
        let granted = clock.tick(&mut rng);
        let command = CustomerCommand::GrantRole {
            grant_id,
            role: Role::parse(role)?,
            ticket_id: if rng.gen_bool(0.5) {
                Some(TicketId::parse(&format!("TICKET-{index}-{g}"))?)
            } else {
                None
            },
            reason: reason("on-call rotation")?,
            actor: actor.clone(),
            expires_at: if rng.gen_bool(0.4) {
                Some(granted + Duration::hours(rng.gen_range(1..48)))
            } else {
                None
            },
            at: granted,
        };
        tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        if rng.gen_bool(0.35) {
            let command = CustomerCommand::RevokeRole {
                grant_id,
                reason: reason("rotation ended")?,
                actor: actor.clone(),
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        }
    }

    // Backup codes: generate, redeem a few, sometimes regenerate.
    let mut codes: Vec<SecretHash> = Vec::new();
    for generation in 0..rng.gen_range(0..3) {
        codes = (0..10)
            .map(|c| hash(&format!("{seed}/{index}/code/{generation}/{c}")))
            .collect();
        let command = CustomerCommand::GenerateBackupCodes {
            code_hashes: codes.clone(),
            key_id: None,
            at: clock.tick(&mut rng),
        };
        tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        for _ in 0..rng.gen_range(0..3) {
            let command = CustomerCommand::RedeemBackupCode {
                code_hash: codes[rng.gen_range(0..codes.len())],
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        }
    }

    // Sessions: refreshes, a grace retry, reuse detection, logout, expiry.
    let mut live_sessions = Vec::new();
    for s in 0..rng.gen_range(0..4) {
        let session_id = SessionId::from_uuid(Uuid::from_u128(rng.gen()));
        let sid = session_id.to_string();
        let method = match credentials.first() {
            Some(credential) if !codes.is_empty() && rng.gen_bool(0.2) => {
                let _ = credential;
                AuthMethod::BackupCode
            }
            Some(credential) => AuthMethod::Webauthn {
                credential_id: pick(&mut rng, &credentials).unwrap_or(*credential),
            },
            None => AuthMethod::BackupCode,
        };
        let token = |k: u32| hash(&format!("{seed}/{index}/session/{s}/{k}"));
        let created = clock.tick(&mut rng);
        let command = SessionCommand::Create {
            customer_id,
            method,
            refresh_hash: token(0),
            family_id: SessionFamilyId::from_uuid(Uuid::from_u128(rng.gen())),
            idle_timeout_secs: 1800,
            absolute_timeout_secs: 43_200,
            at: created,
            authn_instant: None,
        };
        if !tally.outcome(fw.execute::<Session>(&sid, command).await)? {
            continue;
        }
        let mut current = 0;
        for _ in 0..rng.gen_range(0..4) {
            let command = SessionCommand::Refresh {
                presented: token(current),
                new: token(current + 1),
                grace_secs: 30,
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Session>(&sid, command).await)?;
            current += 1;
        }
        let ending = rng.gen_range(0..10);
        let command = match ending {
            // A client that lost the response retries the previous token.
            0 if current > 0 => Some(SessionCommand::Refresh {
                presented: token(current - 1),
                new: token(current + 1),
                grace_secs: 60,
                at: clock.0 + Duration::seconds(1),
            }),
            // A stolen, rotated token: the session is revoked.
            1 if current > 0 => Some(SessionCommand::Refresh {
                presented: token(0),
                new: token(current + 1),
                grace_secs: 0,
                at: clock.tick(&mut rng),
            }),
            // Past the idle timeout.
            2 => Some(SessionCommand::Refresh {
                presented: token(current),
                new: token(current + 1),
                grace_secs: 0,
                at: clock.0 + Duration::hours(2),
            }),
            3 | 4 => Some(SessionCommand::Revoke {
                reason: if ending == 3 {
                    RevokeReason::Logout
                } else {
                    RevokeReason::Admin
                },
                at: clock.tick(&mut rng),
            }),
            _ => None,
        };
        if let Some(command) = command {
            tally.outcome(fw.execute::<Session>(&sid, command).await)?;
        }
        live_sessions.push(sid);
    }

    // External audit events about this customer (and some about nobody).
    for a in 0..rng.gen_range(0..3) {
        let service = ServiceName::parse("billing")?;
        let key = format!("{seed}-{index}-{a}");
        let event_id = AuditEventId::for_idempotency_key(service.as_str(), &key);
        let occurred = clock.tick(&mut rng);
        let command = AuditCommand::Record {
            service,
            actor: Actor::parse(&format!("svc-{}", rng.gen_range(0..5)))?,
            action: AuditAction::parse(
                [
                    "founders.gate.rejected",
                    "founders.gate.check_failed",
                    "invoice.paid",
                ][rng.gen_range(0..3)],
            )?,
            target: AuditTarget::parse(&format!("invoice/{index}/{a}"))?,
            customer_id: if rng.gen_bool(0.8) {
                Some(customer_id)
            } else {
                None
            },
            ticket_id: None,
            occurred_at: occurred,
            metadata: json!({"amount_cents": rng.gen_range(0..100_000), "note": "a\tb\\c\n\"d\"", "tags": ["x", "y"]}),
            idempotency_key: IdempotencyKey::parse(&key)?,
            at: occurred,
            tenant_id: None,
        };
        tally.outcome(fw.execute::<Audit>(&event_id.to_string(), command).await)?;
    }

    // Suspension revokes the sessions in the same batch, as the API does;
    // some are reinstated.
    if rng.gen_bool(0.08) {
        let at = clock.tick(&mut rng);
        let command = CustomerCommand::Suspend {
            reason: reason("chargeback")?,
            actor: actor.clone(),
            at,
        };
        if suspend(fw, &mut tally, &cid, &live_sessions, command, at).await? && rng.gen_bool(0.5) {
            let command = CustomerCommand::Reinstate {
                reason: reason("resolved")?,
                actor,
                at: clock.tick(&mut rng),
            };
            tally.outcome(fw.execute::<Customer>(&cid, command).await)?;
        }
    }
    Ok(tally.0)
}

/// Suspends the customer and revokes its live sessions in one batch (one
/// transaction over several streams). Returns whether it was accepted.
async fn suspend(
    fw: &Frameworks,
    tally: &mut Tally,
    cid: &str,
    sessions: &[String],
    command: CustomerCommand,
    at: DateTime<Utc>,
) -> Result<bool> {
    let mut customer = fw.store.load::<Customer>(cid).await?;
    let Ok(events) = customer.execute(command).await else {
        tally.0.refused += 1;
        return Ok(false);
    };
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    let mut streams = 1;
    for session in &mut fw.store.load_many::<Session>(sessions).await? {
        let revoke = SessionCommand::Revoke {
            reason: RevokeReason::Suspended,
            at,
        };
        match session.execute(revoke).await {
            Ok(events) if !events.is_empty() => {
                batch.add(session, &events)?;
                streams += 1;
            }
            Ok(_) => {}
            Err(_) => tally.0.refused += 1,
        }
    }
    fw.store.append(batch).await?;
    tally.0.accepted += 1;
    if streams > 2 {
        tally.0.multi_stream_batches += 1;
    }
    Ok(true)
}

/// The generator's notion of now: a few seconds more per command.
struct Clock(DateTime<Utc>);

impl Clock {
    fn tick(&mut self, rng: &mut StdRng) -> DateTime<Utc> {
        self.0 += Duration::seconds(rng.gen_range(1..90));
        self.0
    }
}

fn pick(rng: &mut StdRng, items: &[CredentialId]) -> Option<CredentialId> {
    if items.is_empty() {
        None
    } else {
        Some(items[rng.gen_range(0..items.len())])
    }
}

/// A scratch database on the same server (shared with every crate's tests).
pub use queue_testkit::db::ScratchDb;
