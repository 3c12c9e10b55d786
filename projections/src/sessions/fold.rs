//! The projection as a pure fold: rows in, event in, rows out. No clock,
//! no randomness, no IO. The same code folds the whole log in memory
//! (rebuild, validation) and one batch over rows loaded from the tables
//! (the runner, through `apply`).

use chrono::{DateTime, Utc};
use queue_domain::session::{AuthMethod, SessionEvent};

use super::{RefreshTokenRow, SessionRow};
use crate::error::ProjectionResult;
use crate::events::{Body, Event, Meta};
use crate::table::{after_secs, stream_uuid, t, Table};
use crate::tenants::CustomerTenants;

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

    /// Folds one event; `tenants` holds the tenant of every customer whose
    /// session the event creates or imports.
    pub fn apply(&mut self, event: &Event, tenants: &CustomerTenants) -> ProjectionResult<()> {
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
                ..
            } => {
                let credential_id = match method {
                    AuthMethod::Webauthn { credential_id } => Some(*credential_id.as_uuid()),
                    AuthMethod::BackupCode | AuthMethod::Saml => None,
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
                        tenant_id: tenants.of(meta, *customer_id.as_uuid())?,
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
                    tenant_id: tenants.of(meta, *customer_id.as_uuid())?,
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
                let (customer_id, tenant_id) = (row.customer_id, row.tenant_id);
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
                    tenant_id,
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
            SessionEvent::Reauthenticated { at, .. }
            | SessionEvent::SamlReauthenticated { at, .. }
            | SessionEvent::PasskeyAdded { at, .. } => {
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
            tenant_id: row.tenant_id,
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
