//! The projections as pure folds: rows in, event in, rows out. No clock, no
//! randomness, no IO. The same code folds the whole log in memory (rebuild,
//! validation) and one batch over rows loaded from the tables (the runner);
//! the runner loads exactly the rows a batch can reach (see `store`).
//!
//! Every row depends on one stream only (a customer's rows on its Customer
//! stream, a passkey's on its Credential stream, …; an audit row on its one
//! event plus the owner named by the stream's first event), so folding the
//! log in any order that keeps each stream's order gives the same tables.

use std::collections::{HashMap, HashSet};

/// A fast, randomly seeded hasher: the folds never depend on iteration order.
type Fast = foldhash::fast::RandomState;

use chrono::{DateTime, Duration, Utc};
use queue_domain::credential::CredentialEvent;
use queue_domain::customer::CustomerEvent;
use queue_domain::session::{AuthMethod, SessionEvent};
use queue_domain::types::CustomerId;
use queue_domain::AuditEvent;
use serde_json::json;
use uuid::Uuid;

use crate::error::ProjectionResult;
use crate::events::{Body, Event, Meta};
use crate::rows::{
    db_time, AuditRow, BackupCodeRow, CredentialRow, CustomerRow, EmailVerificationRow,
    RefreshTokenRow, RoleRow, Row, SessionRow,
};

/// Namespace of the default-role row ids: UUIDv5(URL, "urn:queue:ns:default-role-row").
pub const DEFAULT_ROLE_NAMESPACE: Uuid = Uuid::from_u128(0x61967722_9519_513f_a989_19f04ee4d8a4);
/// Namespace of audit event ids of domain events: UUIDv5(URL, "urn:queue:ns:audit-row").
pub const AUDIT_ROW_NAMESPACE: Uuid = Uuid::from_u128(0xb6493213_fe98_54da_bd18_258c82399d19);

/// The default-role row id of a customer.
pub fn default_role_row_id(customer_id: Uuid) -> Uuid {
    Uuid::new_v5(&DEFAULT_ROLE_NAMESPACE, customer_id.as_bytes())
}

/// The audit event id of a domain event.
pub fn audit_event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    let name = format!("{aggregate_type}/{aggregate_id}/{sequence}");
    Uuid::new_v5(&AUDIT_ROW_NAMESPACE, name.as_bytes())
}

/// One table's rows held in memory; remembers which rows changed when
/// `track` is on (the runner writes only those back).
#[derive(Debug)]
pub struct Table<R: Row> {
    pub rows: HashMap<R::Key, R, Fast>,
    dirty: HashSet<R::Key, Fast>,
    track: bool,
}

impl<R: Row> Table<R> {
    pub fn new(track: bool) -> Self {
        Self {
            rows: HashMap::default(),
            dirty: HashSet::default(),
            track,
        }
    }

    /// Adds a row read from the database (not dirty).
    pub fn load(&mut self, row: R) {
        self.rows.insert(row.key(), row);
    }

    pub fn contains(&self, key: &R::Key) -> bool {
        self.rows.contains_key(key)
    }

    pub fn get(&self, key: &R::Key) -> Option<&R> {
        self.rows.get(key)
    }

    pub fn get_mut(&mut self, key: &R::Key) -> Option<&mut R> {
        let row = self.rows.get_mut(key)?;
        if self.track {
            self.dirty.insert(key.clone());
        }
        Some(row)
    }

    /// Inserts a new row; `false` if the key was taken (nothing changes).
    pub fn insert(&mut self, row: R) -> bool {
        let key = row.key();
        if self.rows.contains_key(&key) {
            return false;
        }
        if self.track {
            self.dirty.insert(key.clone());
        }
        self.rows.insert(key, row);
        true
    }

    /// The changed rows.
    pub fn dirty_rows(&self) -> Vec<&R> {
        self.dirty.iter().filter_map(|k| self.rows.get(k)).collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &R> {
        self.rows.values()
    }
}

fn stream_uuid(meta: &Meta) -> ProjectionResult<Uuid> {
    Uuid::parse_str(&meta.aggregate_id).map_err(|_| meta.error("the stream id is not a UUID"))
}

fn t(at: &DateTime<Utc>) -> DateTime<Utc> {
    db_time(*at)
}

fn after_secs(at: &DateTime<Utc>, secs: u32) -> DateTime<Utc> {
    db_time(*at + Duration::seconds(i64::from(secs)))
}

/// Projection `customers`: queue_customers, queue_customer_roles,
/// queue_backup_codes, queue_email_verifications.
#[derive(Debug)]
pub struct CustomersFold {
    pub customers: Table<CustomerRow>,
    pub roles: Table<RoleRow>,
    pub codes: Table<BackupCodeRow>,
    pub verifications: Table<EmailVerificationRow>,
}

impl CustomersFold {
    pub fn new(track: bool) -> Self {
        Self {
            customers: Table::new(track),
            roles: Table::new(track),
            codes: Table::new(track),
            verifications: Table::new(track),
        }
    }

    pub fn apply(&mut self, event: &Event) -> ProjectionResult<()> {
        let Body::Customer(body) = &event.body else {
            return Ok(());
        };
        let meta = &event.meta;
        let id = stream_uuid(meta)?;
        match body {
            CustomerEvent::Registered {
                customer_id,
                email,
                display_name,
                default_role,
                at,
            } => {
                if *customer_id.as_uuid() != id {
                    return Err(meta.error("customer_id differs from the stream id"));
                }
                self.create(
                    meta,
                    CustomerRow {
                        customer_id: id,
                        email: email.to_string(),
                        display_name: Some(display_name.to_string()),
                        email_verified: false,
                        email_verified_at: None,
                        status: "active".into(),
                        status_reason: None,
                        status_changed_at: None,
                        status_changed_by: None,
                        default_role: default_role.to_string(),
                        legacy_id: None,
                        backup_codes_generation: None,
                        pending_verification_sequence: None,
                        created_at: t(at),
                        updated_at: t(at),
                        last_sequence: meta.sequence,
                    },
                )
            }
            CustomerEvent::Imported {
                customer_id,
                legacy_id,
                email,
                display_name,
                default_role,
                email_verified_at,
                suspended,
                created_at,
            } => {
                if *customer_id.as_uuid() != id {
                    return Err(meta.error("customer_id differs from the stream id"));
                }
                self.create(
                    meta,
                    CustomerRow {
                        customer_id: id,
                        email: email.to_string(),
                        display_name: display_name.as_ref().map(ToString::to_string),
                        email_verified: email_verified_at.is_some(),
                        email_verified_at: email_verified_at.as_ref().map(t),
                        status: if *suspended { "suspended" } else { "active" }.into(),
                        status_reason: None,
                        status_changed_at: None,
                        status_changed_by: None,
                        default_role: default_role.to_string(),
                        legacy_id: Some(legacy_id.get()),
                        backup_codes_generation: None,
                        pending_verification_sequence: None,
                        created_at: t(created_at),
                        updated_at: t(created_at),
                        last_sequence: meta.sequence,
                    },
                )
            }
            CustomerEvent::EmailVerificationRequested {
                token_hash,
                expires_at,
                at,
            } => {
                let pending = self.customer(meta, id, at)?.pending_verification_sequence;
                if let Some(seq) = pending {
                    let row = self
                        .verifications
                        .get_mut(&(id, seq))
                        .ok_or_else(|| meta.error("the pending verification row is missing"))?;
                    row.status = "superseded".into();
                    row.superseded_at = Some(t(at));
                }
                self.verifications.insert(EmailVerificationRow {
                    customer_id: id,
                    request_sequence: meta.sequence,
                    token_hash: token_hash.to_hex(),
                    requested_at: t(at),
                    expires_at: t(expires_at),
                    status: "pending".into(),
                    verified_at: None,
                    superseded_at: None,
                });
                self.customer(meta, id, at)?.pending_verification_sequence = Some(meta.sequence);
                Ok(())
            }
            CustomerEvent::EmailVerified { at } => {
                let customer = self.customer(meta, id, at)?;
                customer.email_verified = true;
                customer.email_verified_at = Some(t(at));
                let pending = customer.pending_verification_sequence.take();
                if let Some(seq) = pending {
                    let row = self
                        .verifications
                        .get_mut(&(id, seq))
                        .ok_or_else(|| meta.error("the pending verification row is missing"))?;
                    row.status = "verified".into();
                    row.verified_at = Some(t(at));
                }
                Ok(())
            }
            CustomerEvent::RoleGranted {
                grant_id,
                role,
                ticket_id,
                reason,
                actor,
                expires_at,
                at,
            } => {
                self.customer(meta, id, at)?;
                let inserted = self.roles.insert(RoleRow {
                    row_id: *grant_id.as_uuid(),
                    grant_id: Some(*grant_id.as_uuid()),
                    customer_id: id,
                    role: role.to_string(),
                    is_default: false,
                    ticket_id: ticket_id.as_ref().map(ToString::to_string),
                    reason: Some(reason.to_string()),
                    granted_by: Some(actor.to_string()),
                    granted_at: t(at),
                    expires_at: expires_at.as_ref().map(t),
                    revoked_at: None,
                    revoked_by: None,
                    revoke_reason: None,
                });
                if inserted {
                    Ok(())
                } else {
                    Err(meta.error(format!("grant {grant_id} already exists")))
                }
            }
            CustomerEvent::RoleRevoked {
                grant_id,
                reason,
                actor,
                at,
            } => {
                self.customer(meta, id, at)?;
                let row = self
                    .roles
                    .get_mut(grant_id.as_uuid())
                    .filter(|row| row.customer_id == id)
                    .ok_or_else(|| meta.error(format!("unknown grant {grant_id}")))?;
                row.revoked_at = Some(t(at));
                row.revoked_by = Some(actor.to_string());
                row.revoke_reason = Some(reason.to_string());
                Ok(())
            }
            CustomerEvent::BackupCodesGenerated {
                generation,
                code_hashes,
                at,
                ..
            } => {
                let generation =
                    i32::try_from(*generation).map_err(|_| meta.error("generation too large"))?;
                let previous = self.customer(meta, id, at)?.backup_codes_generation;
                if let Some(previous) = previous {
                    let mut index = 0;
                    while let Some(code) = self.codes.get_mut(&(id, previous, index)) {
                        code.voided = true;
                        code.voided_at = Some(t(at));
                        index += 1;
                    }
                }
                for (index, hash) in code_hashes.iter().enumerate() {
                    let index = i32::try_from(index).map_err(|_| meta.error("too many codes"))?;
                    let inserted = self.codes.insert(BackupCodeRow {
                        customer_id: id,
                        generation,
                        code_index: index,
                        code_hash: hash.to_hex(),
                        created_at: t(at),
                        redeemed_at: None,
                        voided: false,
                        voided_at: None,
                    });
                    if !inserted {
                        return Err(meta.error(format!("generation {generation} already exists")));
                    }
                }
                self.customer(meta, id, at)?.backup_codes_generation = Some(generation);
                Ok(())
            }
            CustomerEvent::BackupCodeRedeemed {
                generation,
                index,
                at,
            } => {
                let current = self.customer(meta, id, at)?.backup_codes_generation;
                let generation =
                    i32::try_from(*generation).map_err(|_| meta.error("generation too large"))?;
                let index = i32::try_from(*index).map_err(|_| meta.error("index too large"))?;
                if current != Some(generation) {
                    return Err(meta.error(format!(
                        "generation {generation} is not the current backup code set"
                    )));
                }
                let code = self
                    .codes
                    .get_mut(&(id, generation, index))
                    .ok_or_else(|| meta.error(format!("no backup code {generation}/{index}")))?;
                code.redeemed_at = Some(t(at));
                Ok(())
            }
            CustomerEvent::Suspended { reason, actor, at } => {
                let customer = self.customer(meta, id, at)?;
                customer.status = "suspended".into();
                customer.status_reason = Some(reason.to_string());
                customer.status_changed_at = Some(t(at));
                customer.status_changed_by = Some(actor.to_string());
                Ok(())
            }
            CustomerEvent::Reinstated { reason, actor, at } => {
                let customer = self.customer(meta, id, at)?;
                customer.status = "active".into();
                customer.status_reason = Some(reason.to_string());
                customer.status_changed_at = Some(t(at));
                customer.status_changed_by = Some(actor.to_string());
                Ok(())
            }
        }
    }

    fn create(&mut self, meta: &Meta, row: CustomerRow) -> ProjectionResult<()> {
        let id = row.customer_id;
        let role = RoleRow {
            row_id: default_role_row_id(id),
            grant_id: None,
            customer_id: id,
            role: row.default_role.clone(),
            is_default: true,
            ticket_id: None,
            reason: None,
            granted_by: None,
            granted_at: row.created_at,
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        };
        if !self.customers.insert(row) || !self.roles.insert(role) {
            return Err(meta.error("the customer already exists"));
        }
        Ok(())
    }

    /// The customer row, marked changed: `updated_at` and `last_sequence` move.
    fn customer(
        &mut self,
        meta: &Meta,
        id: Uuid,
        at: &DateTime<Utc>,
    ) -> ProjectionResult<&mut CustomerRow> {
        let row = self
            .customers
            .get_mut(&id)
            .ok_or_else(|| meta.error("event for a customer that does not exist"))?;
        row.updated_at = t(at);
        row.last_sequence = meta.sequence;
        Ok(row)
    }
}

/// Projection `credentials`: queue_webauthn_credentials.
#[derive(Debug)]
pub struct CredentialsFold {
    pub credentials: Table<CredentialRow>,
}

impl CredentialsFold {
    pub fn new(track: bool) -> Self {
        Self {
            credentials: Table::new(track),
        }
    }

    pub fn apply(&mut self, event: &Event) -> ProjectionResult<()> {
        let Body::Credential(body) = &event.body else {
            return Ok(());
        };
        let meta = &event.meta;
        let id = stream_uuid(meta)?;
        let new_row = match body {
            CredentialEvent::Registered {
                customer_id,
                raw_credential_id,
                passkey,
                name,
                aaguid,
                backup_eligible,
                backup_state,
                sign_count,
                transports,
                at,
            } => Some(CredentialRow {
                credential_id: id,
                raw_credential_id: raw_credential_id.to_string(),
                customer_id: *customer_id.as_uuid(),
                name: name.as_ref().map(ToString::to_string),
                aaguid: *aaguid,
                backup_eligible: *backup_eligible,
                backup_state: *backup_state,
                sign_count: i64::from(*sign_count),
                transports: transports.clone(),
                passkey: passkey.clone(),
                legacy_id: None,
                created_at: t(at),
                last_used_at: None,
                revoked_at: None,
                revoke_reason: None,
                updated_at: t(at),
                last_sequence: meta.sequence,
            }),
            CredentialEvent::Imported {
                legacy_id,
                customer_id,
                raw_credential_id,
                passkey,
                name,
                aaguid,
                backup_eligible,
                backup_state,
                sign_count,
                transports,
                created_at,
                last_used_at,
            } => Some(CredentialRow {
                credential_id: id,
                raw_credential_id: raw_credential_id.to_string(),
                customer_id: *customer_id.as_uuid(),
                name: name.as_ref().map(ToString::to_string),
                aaguid: *aaguid,
                backup_eligible: *backup_eligible,
                backup_state: *backup_state,
                sign_count: i64::from(*sign_count),
                transports: transports.clone(),
                passkey: passkey.clone(),
                legacy_id: Some(legacy_id.get()),
                created_at: t(created_at),
                last_used_at: last_used_at.as_ref().map(t),
                revoked_at: None,
                revoke_reason: None,
                updated_at: t(created_at),
                last_sequence: meta.sequence,
            }),
            _ => None,
        };
        if let Some(row) = new_row {
            return if self.credentials.insert(row) {
                Ok(())
            } else {
                Err(meta.error("the credential already exists"))
            };
        }
        let row = self
            .credentials
            .get_mut(&id)
            .ok_or_else(|| meta.error("event for a credential that does not exist"))?;
        row.last_sequence = meta.sequence;
        match body {
            CredentialEvent::Used {
                sign_count,
                backup_state,
                at,
            } => {
                row.sign_count = i64::from(*sign_count);
                row.backup_state = *backup_state;
                row.last_used_at = Some(t(at));
                row.updated_at = t(at);
            }
            CredentialEvent::Renamed { name, at } => {
                row.name = Some(name.to_string());
                row.updated_at = t(at);
            }
            CredentialEvent::Revoked { reason, at } => {
                row.revoked_at = Some(t(at));
                row.revoke_reason = Some(reason.to_string());
                row.updated_at = t(at);
            }
            CredentialEvent::Registered { .. } | CredentialEvent::Imported { .. } => {}
        }
        Ok(())
    }
}

/// Projection `sessions`: queue_sessions, queue_session_refresh_tokens.
#[derive(Debug)]
pub struct SessionsFold {
    pub sessions: Table<SessionRow>,
    pub tokens: Table<RefreshTokenRow>,
}

impl SessionsFold {
    pub fn new(track: bool) -> Self {
        Self {
            sessions: Table::new(track),
            tokens: Table::new(track),
        }
    }

    pub fn apply(&mut self, event: &Event) -> ProjectionResult<()> {
        let Body::Session(body) = &event.body else {
            return Ok(());
        };
        let meta = &event.meta;
        let id = stream_uuid(meta)?;
        match body {
            SessionEvent::Created {
                customer_id,
                method,
                refresh_hash,
                family_id,
                idle_timeout_secs,
                absolute_timeout_secs,
                at,
            } => {
                let credential_id = match method {
                    AuthMethod::Webauthn { credential_id } => Some(*credential_id.as_uuid()),
                    AuthMethod::BackupCode => None,
                };
                self.create(
                    meta,
                    SessionRow {
                        session_id: id,
                        customer_id: *customer_id.as_uuid(),
                        amr: Some(method.amr().to_owned()),
                        credential_id,
                        family_id: Some(*family_id.as_uuid()),
                        legacy_id: None,
                        created_at: t(at),
                        last_seen_at: t(at),
                        idle_timeout_secs: i64::from(*idle_timeout_secs),
                        idle_expires_at: after_secs(at, *idle_timeout_secs),
                        expires_at: after_secs(at, *absolute_timeout_secs),
                        refresh_count: 0,
                        refresh_hash: refresh_hash.to_hex(),
                        revoked_at: None,
                        revoke_reason: None,
                        updated_at: t(at),
                        last_sequence: meta.sequence,
                    },
                    t(at),
                )
            }
            SessionEvent::Imported {
                legacy_id,
                customer_id,
                refresh_hash,
                idle_timeout_secs,
                created_at,
                last_seen_at,
                expires_at,
                at,
            } => self.create(
                meta,
                SessionRow {
                    session_id: id,
                    customer_id: *customer_id.as_uuid(),
                    amr: None,
                    credential_id: None,
                    family_id: None,
                    legacy_id: Some(legacy_id.get()),
                    created_at: t(created_at),
                    last_seen_at: t(last_seen_at),
                    idle_timeout_secs: i64::from(*idle_timeout_secs),
                    idle_expires_at: after_secs(last_seen_at, *idle_timeout_secs),
                    expires_at: t(expires_at),
                    refresh_count: 0,
                    refresh_hash: refresh_hash.to_hex(),
                    revoked_at: None,
                    revoke_reason: None,
                    updated_at: t(at),
                    last_sequence: meta.sequence,
                },
                t(at),
            ),
            SessionEvent::Refreshed { new, at, .. } => {
                let row = self
                    .sessions
                    .get_mut(&id)
                    .ok_or_else(|| meta.error("event for a session that does not exist"))?;
                let idle = u32::try_from(row.idle_timeout_secs).unwrap_or(u32::MAX);
                // The current token is retired: on a normal rotation it is the
                // one presented; on a grace retry it is the one handed out in
                // the lost response.
                let retired = std::mem::replace(&mut row.refresh_hash, new.to_hex());
                row.last_seen_at = t(at);
                row.idle_expires_at = after_secs(at, idle);
                row.refresh_count += 1;
                row.updated_at = t(at);
                row.last_sequence = meta.sequence;
                let customer_id = row.customer_id;
                let old = self
                    .tokens
                    .get_mut(&retired)
                    .ok_or_else(|| meta.error("the current refresh token row is missing"))?;
                old.retired_at = Some(t(at));
                let inserted = self.tokens.insert(RefreshTokenRow {
                    refresh_hash: new.to_hex(),
                    session_id: id,
                    customer_id,
                    issued_at: t(at),
                    retired_at: None,
                });
                if inserted {
                    Ok(())
                } else {
                    Err(meta.error("the new refresh token hash is already known"))
                }
            }
            SessionEvent::Revoked { reason, at } => {
                let row = self
                    .sessions
                    .get_mut(&id)
                    .ok_or_else(|| meta.error("event for a session that does not exist"))?;
                row.revoked_at = Some(t(at));
                row.revoke_reason = Some(reason.to_string());
                row.updated_at = t(at);
                row.last_sequence = meta.sequence;
                Ok(())
            }
            // Step-up facts (ADR 0211): nothing the sessions table shows,
            // but the row has seen the event.
            SessionEvent::Reauthenticated { at, .. } | SessionEvent::PasskeyAdded { at, .. } => {
                let row = self
                    .sessions
                    .get_mut(&id)
                    .ok_or_else(|| meta.error("event for a session that does not exist"))?;
                row.updated_at = t(at);
                row.last_sequence = meta.sequence;
                Ok(())
            }
        }
    }

    fn create(
        &mut self,
        meta: &Meta,
        row: SessionRow,
        issued_at: DateTime<Utc>,
    ) -> ProjectionResult<()> {
        let token = RefreshTokenRow {
            refresh_hash: row.refresh_hash.clone(),
            session_id: row.session_id,
            customer_id: row.customer_id,
            issued_at,
            retired_at: None,
        };
        if !self.sessions.insert(row) {
            return Err(meta.error("the session already exists"));
        }
        if !self.tokens.insert(token) {
            return Err(meta.error("the refresh token hash is already known"));
        }
        Ok(())
    }
}

/// Projection `audit`: customer_audit_events. Rows are append-only; the
/// fold only remembers which customer owns each Credential and Session
/// stream (named by the stream's first event).
#[derive(Debug, Default)]
pub struct AuditFold {
    /// Aggregate type → stream id → owner. Nested so a lookup borrows the
    /// event's strings instead of allocating a key for every event.
    owners: HashMap<String, HashMap<String, Uuid, Fast>, Fast>,
}

impl AuditFold {
    pub fn new() -> Self {
        Self::default()
    }

    /// The audit row of one event (`None` for aggregate types not audited).
    pub fn apply(&mut self, event: &Event) -> ProjectionResult<Option<AuditRow>> {
        let meta = &event.meta;
        let stream_target = || {
            format!(
                "{}:{}",
                meta.aggregate_type.to_lowercase(),
                meta.aggregate_id
            )
        };
        let row = |customer_id: Option<Uuid>,
                   action: &str,
                   actor: Option<String>,
                   ticket_id: Option<String>,
                   metadata: serde_json::Value,
                   occurred_at: &DateTime<Utc>| AuditRow {
            aggregate_type: meta.aggregate_type.clone(),
            aggregate_id: meta.aggregate_id.clone(),
            sequence: meta.sequence,
            commit_xid: meta.position.commit_xid,
            insert_id: meta.position.insert_id,
            event_id: audit_event_id(&meta.aggregate_type, &meta.aggregate_id, meta.sequence),
            customer_id,
            service: None,
            actor,
            action: action.to_owned(),
            target: stream_target(),
            ticket_id,
            metadata,
            occurred_at: t(occurred_at),
        };
        let out = match &event.body {
            Body::Other => return Ok(None),
            Body::Customer(body) => {
                let id = Some(stream_uuid(meta)?);
                match body {
                    CustomerEvent::Registered {
                        email,
                        display_name,
                        default_role,
                        at,
                        ..
                    } => row(
                        id,
                        "customer.registered",
                        None,
                        None,
                        json!({"email": email, "display_name": display_name, "default_role": default_role}),
                        at,
                    ),
                    CustomerEvent::Imported {
                        legacy_id,
                        email,
                        email_verified_at,
                        suspended,
                        created_at,
                        ..
                    } => row(
                        id,
                        "customer.imported",
                        None,
                        None,
                        json!({"legacy_id": legacy_id, "email": email,
                               "email_verified": email_verified_at.is_some(), "suspended": suspended}),
                        created_at,
                    ),
                    CustomerEvent::EmailVerificationRequested { expires_at, at, .. } => row(
                        id,
                        "customer.email_verification_requested",
                        None,
                        None,
                        json!({"expires_at": t(expires_at)}),
                        at,
                    ),
                    CustomerEvent::EmailVerified { at } => {
                        row(id, "customer.email_verified", None, None, json!({}), at)
                    }
                    CustomerEvent::RoleGranted {
                        grant_id,
                        role,
                        ticket_id,
                        reason,
                        actor,
                        expires_at,
                        at,
                    } => row(
                        id,
                        "customer.role_granted",
                        Some(actor.to_string()),
                        ticket_id.as_ref().map(ToString::to_string),
                        json!({"grant_id": grant_id, "role": role, "reason": reason,
                               "expires_at": expires_at.as_ref().map(t)}),
                        at,
                    ),
                    CustomerEvent::RoleRevoked {
                        grant_id,
                        reason,
                        actor,
                        at,
                    } => row(
                        id,
                        "customer.role_revoked",
                        Some(actor.to_string()),
                        None,
                        json!({"grant_id": grant_id, "reason": reason}),
                        at,
                    ),
                    CustomerEvent::BackupCodesGenerated {
                        generation,
                        code_hashes,
                        at,
                        ..
                    } => row(
                        id,
                        "customer.backup_codes_generated",
                        None,
                        None,
                        json!({"generation": generation, "count": code_hashes.len()}),
                        at,
                    ),
                    CustomerEvent::BackupCodeRedeemed {
                        generation,
                        index,
                        at,
                    } => row(
                        id,
                        "customer.backup_code_redeemed",
                        None,
                        None,
                        json!({"generation": generation, "index": index}),
                        at,
                    ),
                    CustomerEvent::Suspended { reason, actor, at } => row(
                        id,
                        "customer.suspended",
                        Some(actor.to_string()),
                        None,
                        json!({"reason": reason}),
                        at,
                    ),
                    CustomerEvent::Reinstated { reason, actor, at } => row(
                        id,
                        "customer.reinstated",
                        Some(actor.to_string()),
                        None,
                        json!({"reason": reason}),
                        at,
                    ),
                }
            }
            Body::Credential(body) => {
                let owner = self.owner_of(
                    meta,
                    match body {
                        CredentialEvent::Registered { customer_id, .. }
                        | CredentialEvent::Imported { customer_id, .. } => Some(customer_id),
                        _ => None,
                    },
                )?;
                let id = Some(owner);
                match body {
                    CredentialEvent::Registered {
                        raw_credential_id,
                        name,
                        aaguid,
                        backup_eligible,
                        backup_state,
                        at,
                        ..
                    } => row(
                        id,
                        "credential.registered",
                        None,
                        None,
                        json!({"raw_credential_id": raw_credential_id, "name": name, "aaguid": aaguid,
                               "backup_eligible": backup_eligible, "backup_state": backup_state}),
                        at,
                    ),
                    CredentialEvent::Imported {
                        legacy_id,
                        raw_credential_id,
                        name,
                        created_at,
                        ..
                    } => row(
                        id,
                        "credential.imported",
                        None,
                        None,
                        json!({"legacy_id": legacy_id, "raw_credential_id": raw_credential_id, "name": name}),
                        created_at,
                    ),
                    CredentialEvent::Used {
                        sign_count,
                        backup_state,
                        at,
                    } => row(
                        id,
                        "credential.used",
                        None,
                        None,
                        json!({"sign_count": sign_count, "backup_state": backup_state}),
                        at,
                    ),
                    CredentialEvent::Renamed { name, at } => row(
                        id,
                        "credential.renamed",
                        None,
                        None,
                        json!({"name": name}),
                        at,
                    ),
                    CredentialEvent::Revoked { reason, at } => row(
                        id,
                        "credential.revoked",
                        None,
                        None,
                        json!({"reason": reason}),
                        at,
                    ),
                }
            }
            Body::Session(body) => {
                let owner = self.owner_of(
                    meta,
                    match body {
                        SessionEvent::Created { customer_id, .. }
                        | SessionEvent::Imported { customer_id, .. } => Some(customer_id),
                        _ => None,
                    },
                )?;
                let id = Some(owner);
                match body {
                    SessionEvent::Created {
                        method,
                        family_id,
                        at,
                        ..
                    } => {
                        let credential_id = match method {
                            AuthMethod::Webauthn { credential_id } => Some(*credential_id),
                            AuthMethod::BackupCode => None,
                        };
                        row(
                            id,
                            "session.created",
                            None,
                            None,
                            json!({"amr": method.amr(), "credential_id": credential_id, "family_id": family_id}),
                            at,
                        )
                    }
                    SessionEvent::Imported { legacy_id, at, .. } => row(
                        id,
                        "session.imported",
                        None,
                        None,
                        json!({"legacy_id": legacy_id}),
                        at,
                    ),
                    SessionEvent::Refreshed {
                        grace_retry, at, ..
                    } => row(
                        id,
                        "session.refreshed",
                        None,
                        None,
                        json!({"grace_retry": grace_retry}),
                        at,
                    ),
                    SessionEvent::Revoked { reason, at } => row(
                        id,
                        "session.revoked",
                        None,
                        None,
                        json!({"reason": reason}),
                        at,
                    ),
                    SessionEvent::Reauthenticated { credential_id, at } => row(
                        id,
                        "session.reauthenticated",
                        None,
                        None,
                        json!({"credential_id": credential_id}),
                        at,
                    ),
                    SessionEvent::PasskeyAdded { credential_id, at } => row(
                        id,
                        "session.passkey_added",
                        None,
                        None,
                        json!({"credential_id": credential_id}),
                        at,
                    ),
                }
            }
            Body::Audit(AuditEvent::Recorded {
                service,
                actor,
                action,
                target,
                customer_id,
                ticket_id,
                occurred_at,
                metadata,
                ..
            }) => {
                let mut audit = row(
                    customer_id.map(|c| *c.as_uuid()),
                    action.as_str(),
                    Some(actor.to_string()),
                    ticket_id.as_ref().map(ToString::to_string),
                    metadata.clone(),
                    occurred_at,
                );
                audit.event_id = stream_uuid(meta)?;
                audit.service = Some(service.to_string());
                audit.target = target.to_string();
                audit
            }
        };
        Ok(Some(out))
    }

    /// The customer a stream belongs to: named by its first event (and
    /// remembered), looked up for the later ones.
    fn owner_of(&mut self, meta: &Meta, named: Option<&CustomerId>) -> ProjectionResult<Uuid> {
        match named {
            Some(customer_id) => {
                let owner = *customer_id.as_uuid();
                self.remember_owner(&meta.aggregate_type, &meta.aggregate_id, owner);
                Ok(owner)
            }
            None => self.owner(meta),
        }
    }

    /// Records the customer that owns a Credential or Session stream.
    pub fn remember_owner(&mut self, aggregate_type: &str, aggregate_id: &str, owner: Uuid) {
        let streams = match self.owners.get_mut(aggregate_type) {
            Some(streams) => streams,
            None => self.owners.entry(aggregate_type.to_owned()).or_default(),
        };
        streams.insert(aggregate_id.to_owned(), owner);
    }

    fn owner(&self, meta: &Meta) -> ProjectionResult<Uuid> {
        self.owners
            .get(meta.aggregate_type.as_str())
            .and_then(|streams| streams.get(meta.aggregate_id.as_str()))
            .copied()
            .ok_or_else(|| meta.error("the stream's first event (its owner) is unknown"))
    }
}
