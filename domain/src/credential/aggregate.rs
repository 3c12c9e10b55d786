use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CredentialCommand, CredentialError, CredentialEvent};
use crate::types::{
    check_ledger_json, CredentialId, CredentialName, CustomerId, LegacyId, RawCredentialId, Reason,
};

/// The passkey aggregate. Empty until registered or imported; read it
/// through [`Credential::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    state: Option<CredentialState>,
}

/// A registered passkey, as replayed from its events (read-only for callers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialState {
    pub customer_id: CustomerId,
    pub raw_credential_id: RawCredentialId,
    /// The webauthn-rs `Passkey` as registered. Its embedded counter and
    /// backup state are not updated by uses: `sign_count` and `backup_state`
    /// below are the current values.
    pub passkey: serde_json::Value,
    pub name: Option<CredentialName>,
    pub aaguid: Option<Uuid>,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub sign_count: u32,
    pub transports: Vec<String>,
    /// Set for passkeys backfilled from the legacy database.
    pub legacy_id: Option<LegacyId>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revocation: Option<CredentialRevocation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRevocation {
    pub reason: Reason,
    pub at: DateTime<Utc>,
}

impl CredentialState {
    pub fn is_revoked(&self) -> bool {
        self.revocation.is_some()
    }

    /// The stream id of this passkey.
    pub fn credential_id(&self) -> CredentialId {
        self.raw_credential_id.credential_id()
    }
}

const TRANSPORT_MAX_LEN: usize = 32;

/// The passkey is stored in events as is, so it must be ledger-safe JSON.
fn check_passkey(passkey: &serde_json::Value) -> Result<(), CredentialError> {
    if !passkey.is_object() {
        return Err(CredentialError::InvalidPasskey("must be a JSON object"));
    }
    check_ledger_json(passkey).map_err(CredentialError::InvalidPasskey)
}

/// Transport hints are short lowercase words (`usb`, `smart-card`, ...).
fn check_transports(transports: &[String]) -> Result<(), CredentialError> {
    for transport in transports {
        let well_formed = !transport.is_empty()
            && transport.len() <= TRANSPORT_MAX_LEN
            && transport
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !well_formed {
            return Err(CredentialError::InvalidTransport(
                transport.chars().take(TRANSPORT_MAX_LEN).collect(),
            ));
        }
    }
    Ok(())
}

impl Credential {
    /// `None` until the passkey is registered or imported.
    pub fn state(&self) -> Option<&CredentialState> {
        self.state.as_ref()
    }

    pub fn is_registered(&self) -> bool {
        self.state.is_some()
    }

    /// Registered and not revoked.
    pub fn is_usable(&self) -> bool {
        self.state.as_ref().is_some_and(|state| !state.is_revoked())
    }

    pub(crate) fn decide(
        &self,
        command: CredentialCommand,
    ) -> Result<Vec<CredentialEvent>, CredentialError> {
        let event = match (&self.state, command) {
            (Some(_), CredentialCommand::Register { .. } | CredentialCommand::Import { .. }) => {
                return Err(CredentialError::AlreadyRegistered)
            }
            (
                None,
                CredentialCommand::Register {
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
                },
            ) => {
                check_passkey(&passkey)?;
                check_transports(&transports)?;
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
                }
            }
            (
                None,
                CredentialCommand::Import {
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
                },
            ) => {
                check_passkey(&passkey)?;
                check_transports(&transports)?;
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
                }
            }
            (None, _) => return Err(CredentialError::NotFound),
            (Some(state), _) if state.is_revoked() => return Err(CredentialError::Revoked),
            (
                Some(state),
                CredentialCommand::RecordUse {
                    sign_count,
                    backup_state,
                    at,
                },
            ) => {
                let stored = state.sign_count;
                // Both zero: an authenticator without counters, always fine.
                let counters_in_use = stored != 0 || sign_count != 0;
                if counters_in_use && sign_count <= stored {
                    return Err(CredentialError::CounterRegression {
                        stored,
                        presented: sign_count,
                    });
                }
                CredentialEvent::Used {
                    sign_count,
                    backup_state,
                    at,
                }
            }
            (Some(_), CredentialCommand::Rename { name, at }) => {
                CredentialEvent::Renamed { name, at }
            }
            (Some(_), CredentialCommand::Revoke { reason, at }) => {
                CredentialEvent::Revoked { reason, at }
            }
        };
        Ok(vec![event])
    }
}

impl Aggregate for Credential {
    const TYPE: &'static str = "Credential";
    type Command = CredentialCommand;
    type Event = CredentialEvent;
    type Error = CredentialError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match (&mut self.state, event) {
            (
                None,
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
                },
            ) => {
                self.state = Some(CredentialState {
                    customer_id,
                    raw_credential_id,
                    passkey,
                    name,
                    aaguid,
                    backup_eligible,
                    backup_state,
                    sign_count,
                    transports,
                    legacy_id: None,
                    created_at: at,
                    last_used_at: None,
                    revocation: None,
                });
            }
            (
                None,
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
                },
            ) => {
                self.state = Some(CredentialState {
                    customer_id,
                    raw_credential_id,
                    passkey,
                    name,
                    aaguid,
                    backup_eligible,
                    backup_state,
                    sign_count,
                    transports,
                    legacy_id: Some(legacy_id),
                    created_at,
                    last_used_at,
                    revocation: None,
                });
            }
            // Only a creation event can be decided on an empty aggregate, and
            // only once.
            (None, _)
            | (Some(_), CredentialEvent::Registered { .. } | CredentialEvent::Imported { .. }) => {}
            (
                Some(state),
                CredentialEvent::Used {
                    sign_count,
                    backup_state,
                    at,
                },
            ) => {
                state.sign_count = sign_count;
                state.backup_state = backup_state;
                state.last_used_at = Some(at);
            }
            (Some(state), CredentialEvent::Renamed { name, .. }) => state.name = Some(name),
            (Some(state), CredentialEvent::Revoked { reason, at }) => {
                state.revocation = Some(CredentialRevocation { reason, at });
            }
        }
    }
}
