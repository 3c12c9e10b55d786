//! The projection as a pure fold: rows in, event in, rows out. No clock,
//! no randomness, no IO. The same code folds the whole log in memory
//! (rebuild, validation) and one batch over rows loaded from the tables
//! (the runner, through `apply`).

use queue_domain::credential::CredentialEvent;

use super::CredentialRow;
use crate::error::ProjectionResult;
use crate::events::{Body, Event};
use crate::table::{stream_uuid, t, Table};
use crate::tenants::CustomerTenants;

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

    /// Folds one event; `tenants` holds the tenant of every customer whose
    /// credential the event registers or imports.
    pub fn apply(&mut self, event: &Event, tenants: &CustomerTenants) -> ProjectionResult<()> {
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
                tenant_id: tenants.of(meta, *customer_id.as_uuid())?,
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
                tenant_id: tenants.of(meta, *customer_id.as_uuid())?,
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
