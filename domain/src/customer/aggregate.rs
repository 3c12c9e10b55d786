use std::collections::HashSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::command::BACKUP_CODE_COUNT;
use super::{CustomerCommand, CustomerError, CustomerEvent};
use crate::types::{
    Actor, CustomerId, DisplayName, Email, GrantId, LegacyId, Reason, Role, SecretHash, TenantId,
    TicketId,
};

/// The customer aggregate. Empty until registered or imported; read it
/// through [`Customer::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    state: Option<CustomerState>,
}

/// A registered customer, as replayed from its events (read-only for callers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    pub customer_id: CustomerId,
    /// The tenant the customer belongs to; never changes (issue 22).
    pub tenant_id: TenantId,
    /// Set for customers backfilled from the legacy database.
    pub legacy_id: Option<LegacyId>,
    pub email: Email,
    pub display_name: Option<DisplayName>,
    /// The role held without a grant.
    pub default_role: Role,
    pub registered_at: DateTime<Utc>,
    pub email_verified_at: Option<DateTime<Utc>>,
    /// The only token that can verify the email; earlier ones are superseded.
    pub pending_email_verification: Option<PendingEmailVerification>,
    /// Every grant ever made, in order, including revoked and expired ones.
    pub grants: Vec<RoleGrant>,
    /// The current backup code set; earlier generations are void.
    pub backup_codes: Option<BackupCodeSet>,
    pub status: CustomerStatus,
    /// The last suspension or reinstatement (none for an imported status).
    pub last_status_change: Option<StatusChange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerStatus {
    Active,
    Suspended,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEmailVerification {
    pub token_hash: SecretHash,
    pub expires_at: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleGrant {
    pub grant_id: GrantId,
    pub role: Role,
    pub ticket_id: Option<TicketId>,
    pub reason: Reason,
    pub actor: Actor,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revocation: Option<GrantRevocation>,
}

impl RoleGrant {
    /// Not revoked and not expired at `at` (a grant expires at its `expires_at`).
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.revocation.is_none() && self.expires_at.is_none_or(|expiry| at < expiry)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevocation {
    pub reason: Reason,
    pub actor: Actor,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCodeSet {
    pub generation: u32,
    /// The backup-code key of the hashes; `None`: unkeyed SHA-256 (legacy).
    #[serde(default)]
    pub key_id: Option<String>,
    pub generated_at: DateTime<Utc>,
    pub codes: Vec<BackupCode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCode {
    pub hash: SecretHash,
    pub redeemed_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub reason: Reason,
    pub actor: Actor,
    pub at: DateTime<Utc>,
}

impl Customer {
    /// `None` until the customer is registered or imported.
    pub fn state(&self) -> Option<&CustomerState> {
        self.state.as_ref()
    }

    pub fn is_registered(&self) -> bool {
        self.state.is_some()
    }

    /// See [`CustomerState::active_roles`]; empty for an unknown customer.
    pub fn active_roles(&self, at: DateTime<Utc>) -> Vec<Role> {
        self.state
            .as_ref()
            .map(|state| state.active_roles(at))
            .unwrap_or_default()
    }

    /// See [`CustomerState::has_unused_backup_codes`].
    pub fn has_unused_backup_codes(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(CustomerState::has_unused_backup_codes)
    }

    /// The events `command` produces on the current state, or why it is refused.
    pub(crate) fn decide(
        &self,
        command: CustomerCommand,
    ) -> Result<Vec<CustomerEvent>, CustomerError> {
        match (&self.state, command) {
            (
                None,
                CustomerCommand::Register {
                    customer_id,
                    tenant_id,
                    email,
                    display_name,
                    at,
                },
            ) => Ok(vec![CustomerEvent::Registered {
                customer_id,
                email,
                display_name,
                default_role: Role::default_role(),
                at,
                tenant_id,
            }]),
            (
                None,
                CustomerCommand::Provision {
                    customer_id,
                    tenant_id,
                    email,
                    display_name,
                    source,
                    actor,
                    at,
                },
            ) => Ok(vec![CustomerEvent::Provisioned {
                customer_id,
                email,
                display_name,
                default_role: Role::default_role(),
                source,
                actor,
                at,
                tenant_id,
            }]),
            (
                None,
                CustomerCommand::Import {
                    customer_id,
                    legacy_id,
                    email,
                    display_name,
                    email_verified_at,
                    suspended,
                    created_at,
                },
            ) => Ok(vec![CustomerEvent::Imported {
                customer_id,
                legacy_id,
                email,
                display_name,
                default_role: Role::default_role(),
                email_verified_at,
                suspended,
                created_at,
                tenant_id: TenantId::DEFAULT,
            }]),
            (None, _) => Err(CustomerError::NotFound),
            (Some(state), command) => state.decide(command).map(|event| vec![event]),
        }
    }
}

impl CustomerState {
    pub fn is_suspended(&self) -> bool {
        self.status == CustomerStatus::Suspended
    }

    pub fn email_verified(&self) -> bool {
        self.email_verified_at.is_some()
    }

    /// The roles the customer holds at `at`: the default role plus every
    /// grant that is neither revoked nor expired, sorted and without duplicates.
    pub fn active_roles(&self, at: DateTime<Utc>) -> Vec<Role> {
        let mut roles: Vec<Role> = std::iter::once(self.default_role.clone())
            .chain(
                self.active_grants(at)
                    .into_iter()
                    .map(|grant| grant.role.clone()),
            )
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// The grants in force at `at`, in the order they were made.
    pub fn active_grants(&self, at: DateTime<Utc>) -> Vec<&RoleGrant> {
        self.grants
            .iter()
            .filter(|grant| grant.is_active(at))
            .collect()
    }

    pub fn grant(&self, grant_id: GrantId) -> Option<&RoleGrant> {
        self.grants.iter().find(|grant| grant.grant_id == grant_id)
    }

    /// How many codes of the current set can still be redeemed.
    pub fn unused_backup_codes(&self) -> usize {
        self.backup_codes.as_ref().map_or(0, |set| {
            set.codes
                .iter()
                .filter(|code| code.redeemed_at.is_none())
                .count()
        })
    }

    pub fn has_unused_backup_codes(&self) -> bool {
        self.unused_backup_codes() > 0
    }

    fn refuse_if_suspended(&self) -> Result<(), CustomerError> {
        if self.is_suspended() {
            Err(CustomerError::Suspended)
        } else {
            Ok(())
        }
    }

    fn decide(&self, command: CustomerCommand) -> Result<CustomerEvent, CustomerError> {
        match command {
            CustomerCommand::Register { .. }
            | CustomerCommand::Provision { .. }
            | CustomerCommand::Import { .. } => Err(CustomerError::AlreadyRegistered),
            CustomerCommand::RequestEmailVerification {
                token_hash,
                expires_at,
                at,
            } => {
                self.refuse_if_suspended()?;
                if self.email_verified() {
                    return Err(CustomerError::AlreadyVerified);
                }
                if expires_at <= at {
                    return Err(CustomerError::ExpiryInPast);
                }
                Ok(CustomerEvent::EmailVerificationRequested {
                    token_hash,
                    expires_at,
                    at,
                })
            }
            CustomerCommand::VerifyEmail { token_hash, at } => {
                self.refuse_if_suspended()?;
                let pending = self
                    .pending_email_verification
                    .as_ref()
                    .filter(|pending| pending.token_hash == token_hash)
                    .ok_or(CustomerError::InvalidToken)?;
                if at >= pending.expires_at {
                    return Err(CustomerError::TokenExpired);
                }
                Ok(CustomerEvent::EmailVerified { at })
            }
            CustomerCommand::GrantRole {
                grant_id,
                role,
                ticket_id,
                reason,
                actor,
                expires_at,
                at,
            } => {
                if self.grant(grant_id).is_some() {
                    return Err(CustomerError::DuplicateGrant(grant_id));
                }
                if expires_at.is_some_and(|expiry| expiry <= at) {
                    return Err(CustomerError::ExpiryInPast);
                }
                Ok(CustomerEvent::RoleGranted {
                    grant_id,
                    role,
                    ticket_id,
                    reason,
                    actor,
                    expires_at,
                    at,
                })
            }
            CustomerCommand::RevokeRole {
                grant_id,
                reason,
                actor,
                at,
            } => {
                let grant = self
                    .grant(grant_id)
                    .ok_or(CustomerError::UnknownGrant(grant_id))?;
                if grant.revocation.is_some() {
                    return Err(CustomerError::GrantAlreadyRevoked(grant_id));
                }
                Ok(CustomerEvent::RoleRevoked {
                    grant_id,
                    reason,
                    actor,
                    at,
                })
            }
            CustomerCommand::GenerateBackupCodes {
                code_hashes,
                key_id,
                at,
            } => {
                self.refuse_if_suspended()?;
                if code_hashes.len() != BACKUP_CODE_COUNT {
                    return Err(CustomerError::InvalidBackupCodeSet(
                        "exactly 10 codes are required",
                    ));
                }
                if code_hashes.iter().collect::<HashSet<_>>().len() != code_hashes.len() {
                    return Err(CustomerError::InvalidBackupCodeSet(
                        "codes must be distinct",
                    ));
                }
                let generation = self
                    .backup_codes
                    .as_ref()
                    .map_or(1, |set| set.generation.saturating_add(1));
                Ok(CustomerEvent::BackupCodesGenerated {
                    generation,
                    code_hashes,
                    key_id,
                    at,
                })
            }
            CustomerCommand::RedeemBackupCode { code_hash, at } => {
                self.refuse_if_suspended()?;
                let set = self
                    .backup_codes
                    .as_ref()
                    .ok_or(CustomerError::InvalidCode)?;
                let index = set
                    .codes
                    .iter()
                    .position(|code| code.hash == code_hash && code.redeemed_at.is_none())
                    .ok_or(CustomerError::InvalidCode)?;
                let index = u32::try_from(index).map_err(|_| CustomerError::InvalidCode)?;
                Ok(CustomerEvent::BackupCodeRedeemed {
                    generation: set.generation,
                    index,
                    at,
                })
            }
            CustomerCommand::Suspend { reason, actor, at } => {
                if self.is_suspended() {
                    return Err(CustomerError::AlreadySuspended);
                }
                Ok(CustomerEvent::Suspended { reason, actor, at })
            }
            CustomerCommand::Reinstate { reason, actor, at } => {
                if !self.is_suspended() {
                    return Err(CustomerError::NotSuspended);
                }
                Ok(CustomerEvent::Reinstated { reason, actor, at })
            }
        }
    }

    fn apply(&mut self, event: CustomerEvent) {
        match event {
            // Creation events are handled by `Customer::apply`; a second one
            // cannot be decided, so there is nothing to change here.
            CustomerEvent::Registered { .. }
            | CustomerEvent::Provisioned { .. }
            | CustomerEvent::Imported { .. } => {}
            CustomerEvent::EmailVerificationRequested {
                token_hash,
                expires_at,
                at,
            } => {
                self.pending_email_verification = Some(PendingEmailVerification {
                    token_hash,
                    expires_at,
                    requested_at: at,
                });
            }
            CustomerEvent::EmailVerified { at } => {
                self.email_verified_at = Some(at);
                self.pending_email_verification = None;
            }
            CustomerEvent::RoleGranted {
                grant_id,
                role,
                ticket_id,
                reason,
                actor,
                expires_at,
                at,
            } => self.grants.push(RoleGrant {
                grant_id,
                role,
                ticket_id,
                reason,
                actor,
                granted_at: at,
                expires_at,
                revocation: None,
            }),
            CustomerEvent::RoleRevoked {
                grant_id,
                reason,
                actor,
                at,
            } => {
                if let Some(grant) = self
                    .grants
                    .iter_mut()
                    .find(|grant| grant.grant_id == grant_id)
                {
                    grant.revocation = Some(GrantRevocation { reason, actor, at });
                }
            }
            CustomerEvent::BackupCodesGenerated {
                generation,
                code_hashes,
                key_id,
                at,
            } => {
                self.backup_codes = Some(BackupCodeSet {
                    generation,
                    key_id,
                    generated_at: at,
                    codes: code_hashes
                        .into_iter()
                        .map(|hash| BackupCode {
                            hash,
                            redeemed_at: None,
                        })
                        .collect(),
                });
            }
            CustomerEvent::BackupCodeRedeemed {
                generation,
                index,
                at,
            } => {
                let code = self
                    .backup_codes
                    .as_mut()
                    .filter(|set| set.generation == generation)
                    .and_then(|set| {
                        let index = usize::try_from(index).ok()?;
                        set.codes.get_mut(index)
                    });
                if let Some(code) = code {
                    code.redeemed_at = Some(at);
                }
            }
            CustomerEvent::Suspended { reason, actor, at } => {
                self.status = CustomerStatus::Suspended;
                self.last_status_change = Some(StatusChange { reason, actor, at });
            }
            CustomerEvent::Reinstated { reason, actor, at } => {
                self.status = CustomerStatus::Active;
                self.last_status_change = Some(StatusChange { reason, actor, at });
            }
        }
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = "Customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;
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
                },
            ) => {
                let mut state = CustomerState::new(
                    customer_id,
                    None,
                    email,
                    Some(display_name),
                    default_role,
                    at,
                );
                state.tenant_id = tenant_id;
                self.state = Some(state);
            }
            (
                None,
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
                },
            ) => {
                let mut state = CustomerState::new(
                    customer_id,
                    Some(legacy_id),
                    email,
                    display_name,
                    default_role,
                    created_at,
                );
                state.tenant_id = tenant_id;
                state.email_verified_at = email_verified_at;
                if suspended {
                    state.status = CustomerStatus::Suspended;
                }
                self.state = Some(state);
            }
            // Nothing but a creation event can be decided before creation.
            (None, _) => {}
            (Some(state), event) => state.apply(event),
        }
    }
}

impl CustomerState {
    fn new(
        customer_id: CustomerId,
        legacy_id: Option<LegacyId>,
        email: Email,
        display_name: Option<DisplayName>,
        default_role: Role,
        registered_at: DateTime<Utc>,
    ) -> Self {
        Self {
            customer_id,
            tenant_id: TenantId::DEFAULT,
            legacy_id,
            email,
            display_name,
            default_role,
            registered_at,
            email_verified_at: None,
            pending_email_verification: None,
            grants: Vec::new(),
            backup_codes: None,
            status: CustomerStatus::Active,
            last_status_change: None,
        }
    }
}
