//! The projection as a pure fold: rows in, event in, rows out. No clock,
//! no randomness, no IO. The same code folds the whole log in memory
//! (rebuild, validation) and one batch over rows loaded from the tables
//! (the runner, through `apply`).

use chrono::{DateTime, Utc};
use queue_domain::customer::CustomerEvent;
use uuid::Uuid;

use super::{default_role_row_id, BackupCodeRow, CustomerRow, EmailVerificationRow, RoleRow};
use crate::error::ProjectionResult;
use crate::events::{Body, Event, Meta};
use crate::table::{stream_uuid, t, Table};

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
                tenant_id,
            }
            | CustomerEvent::Provisioned {
                customer_id,
                email,
                display_name,
                default_role,
                at,
                tenant_id,
                ..
            } => {
                if *customer_id.as_uuid() != id {
                    return Err(meta.error("customer_id differs from the stream id"));
                }
                self.create(
                    meta,
                    CustomerRow {
                        customer_id: id,
                        tenant_id: *tenant_id.as_uuid(),
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
                tenant_id,
            } => {
                if *customer_id.as_uuid() != id {
                    return Err(meta.error("customer_id differs from the stream id"));
                }
                self.create(
                    meta,
                    CustomerRow {
                        customer_id: id,
                        tenant_id: *tenant_id.as_uuid(),
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
                let customer = self.customer(meta, id, at)?;
                let (pending, tenant_id) =
                    (customer.pending_verification_sequence, customer.tenant_id);
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
                    tenant_id,
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
                let tenant_id = self.customer(meta, id, at)?.tenant_id;
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
                    tenant_id,
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
                let customer = self.customer(meta, id, at)?;
                let (previous, tenant_id) = (customer.backup_codes_generation, customer.tenant_id);
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
                        tenant_id,
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
            tenant_id: row.tenant_id,
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
