//! The projection as a pure fold: rows in, event in, rows out. No clock,
//! no randomness, no IO. The same code folds the whole log in memory
//! (rebuild, validation) and one batch over rows loaded from the tables
//! (the runner, through `apply`).

use chrono::{DateTime, Utc};
use queue_domain::credential::CredentialEvent;
use queue_domain::customer::CustomerEvent;
use queue_domain::session::{AuthMethod, SessionEvent};
use queue_domain::types::CustomerId;
use queue_domain::AuditEvent;
use serde_json::json;
use uuid::Uuid;

use super::{audit_event_id, AuditRow};
use crate::error::ProjectionResult;
use crate::events::{Body, Event, Meta};
use crate::table::{stream_uuid, t, Fast};
use crate::tenants::CustomerTenants;
use std::collections::HashMap;

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
    /// `tenants` holds the tenant of every customer the event belongs to.
    pub fn apply(
        &mut self,
        event: &Event,
        tenants: &CustomerTenants,
    ) -> ProjectionResult<Option<AuditRow>> {
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
            tenant_id: None,
        };
        let mut out = match &event.body {
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
                    CustomerEvent::Provisioned {
                        email,
                        display_name,
                        default_role,
                        source,
                        actor,
                        at,
                        ..
                    } => row(
                        id,
                        "customer.provisioned",
                        Some(actor.to_string()),
                        None,
                        json!({"email": email, "display_name": display_name,
                               "default_role": default_role, "source": source.as_str()}),
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
                            AuthMethod::BackupCode | AuthMethod::Saml => None,
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
                    SessionEvent::SamlReauthenticated { authn_instant, at } => row(
                        id,
                        "session.reauthenticated",
                        None,
                        None,
                        json!({"method": "saml", "authn_instant": authn_instant}),
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
        // A customer's rows are its tenant's. An external event may name a
        // customer id that never existed (the log records what a service
        // says): no tenant, seen only by tokens not limited to tenants. An
        // audit entry about no customer may name its tenant itself.
        out.tenant_id = match (&event.body, out.customer_id) {
            (Body::Audit(AuditEvent::Recorded { tenant_id, .. }), None) => {
                tenant_id.map(|t| *t.as_uuid())
            }
            (_, None) => None,
            (Body::Audit(_), Some(customer)) => tenants.get(customer),
            (_, Some(customer)) => Some(tenants.of(meta, customer)?),
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
