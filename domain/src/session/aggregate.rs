use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::command::{MAX_REFRESH_GRACE_SECS, SAML_REAUTH_SKEW_SECS, STEP_UP_MAX_AGE_SECS};
use super::{AuthMethod, RevokeReason, SessionCommand, SessionError, SessionEvent};
use crate::types::{CustomerId, LegacyId, SecretHash, SessionFamilyId};

/// The session aggregate. Empty until created or imported; read it through
/// [`Session::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    state: Option<SessionState>,
}

/// A session, as replayed from its events (read-only for callers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub customer_id: CustomerId,
    /// `None` for imported sessions: the legacy table did not record it.
    pub method: Option<AuthMethod>,
    /// `None` for imported sessions.
    pub family_id: Option<SessionFamilyId>,
    pub legacy_id: Option<LegacyId>,
    pub created_at: DateTime<Utc>,
    /// Creation or the last refresh; the idle timeout counts from here.
    pub last_seen_at: DateTime<Utc>,
    pub idle_timeout_secs: u32,
    pub absolute_expires_at: DateTime<Utc>,
    /// The only token that refreshes normally.
    pub refresh_hash: SecretHash,
    /// The token retired by the last normal rotation: the only one a grace
    /// retry may present.
    pub previous_refresh_hash: Option<SecretHash>,
    /// Whether the grace retry for the last rotation has been used.
    pub grace_used: bool,
    /// Every token this session has rotated out; presenting one is reuse.
    pub retired_refresh_hashes: Vec<SecretHash>,
    pub revocation: Option<SessionRevocation>,
    /// The session's last authentication (OIDC `auth_time`): the passkey
    /// login or backup-code redemption that created it, or its last
    /// `SessionReauthenticated`. `None` for imported sessions until they
    /// reauthenticate. Derived from the events; never stored in them for
    /// creation, so every stored event keeps its meaning (ADR 0211).
    #[serde(default)]
    pub auth_time: Option<DateTime<Utc>>,
    /// Passkeys this session has added (`SessionPasskeyAdded`).
    #[serde(default)]
    pub passkeys_added: u32,
}

/// A change of the customer's sign-in factors, which needs step-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorChange {
    AddPasskey,
    DeletePasskey,
    RegenerateBackupCodes,
    RevokeOtherSession,
}

/// Why a session may not make a factor change now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepUpRefusal {
    /// The session's `auth_time` is older than [`STEP_UP_MAX_AGE_SECS`] (or
    /// unknown): a reauthentication with a passkey is needed.
    ReauthRequired,
    /// A backup-code session may add one passkey and revoke sessions, and
    /// nothing else, however recently it reauthenticated.
    BackupCodeSession,
}

impl std::fmt::Display for StepUpRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ReauthRequired => "a recent passkey authentication is required",
            Self::BackupCodeSession => "not allowed in a backup-code session",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevocation {
    pub reason: RevokeReason,
    pub at: DateTime<Utc>,
}

/// Where a session stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    /// Past a timeout but not yet revoked (the next refresh revokes it).
    Expired,
    Revoked {
        reason: RevokeReason,
    },
}

/// What a successful `Refresh` command did (see `SessionCommand::Refresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Rotated: hand out the new token.
    Refreshed { grace_retry: bool },
    /// Past the idle or absolute timeout; the session is now revoked.
    Expired,
    /// A rotated token was presented; the session is now revoked.
    ReuseDetected,
}

impl RefreshOutcome {
    /// Reads the outcome from the events a `Refresh` emitted.
    pub fn from_events(events: &[SessionEvent]) -> Option<Self> {
        events.iter().rev().find_map(|event| match event {
            SessionEvent::Refreshed { grace_retry, .. } => Some(Self::Refreshed {
                grace_retry: *grace_retry,
            }),
            SessionEvent::Revoked {
                reason: RevokeReason::Expired,
                ..
            } => Some(Self::Expired),
            SessionEvent::Revoked {
                reason: RevokeReason::ReuseDetected,
                ..
            } => Some(Self::ReuseDetected),
            _ => None,
        })
    }
}

fn after(at: DateTime<Utc>, secs: u32) -> DateTime<Utc> {
    at + Duration::seconds(i64::from(secs))
}

impl SessionState {
    pub fn is_revoked(&self) -> bool {
        self.revocation.is_some()
    }

    /// When the session ends if it is not refreshed before.
    pub fn idle_expires_at(&self) -> DateTime<Utc> {
        after(self.last_seen_at, self.idle_timeout_secs)
    }

    /// The earlier of the idle and the absolute expiry.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.idle_expires_at().min(self.absolute_expires_at)
    }

    /// Past the idle or absolute timeout at `at` (whether revoked or not).
    pub fn is_expired(&self, at: DateTime<Utc>) -> bool {
        at >= self.expires_at()
    }

    /// Neither revoked nor expired at `at`: its tokens may be honoured.
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        !self.is_revoked() && !self.is_expired(at)
    }

    pub fn status(&self, at: DateTime<Utc>) -> SessionStatus {
        match self.revocation {
            Some(SessionRevocation { reason, .. }) => SessionStatus::Revoked { reason },
            None if self.is_expired(at) => SessionStatus::Expired,
            None => SessionStatus::Active,
        }
    }

    /// Whether this session may make `change` at `at` (ADR 0211): its
    /// `auth_time` is at most [`STEP_UP_MAX_AGE_SECS`] old, and a
    /// backup-code session adds at most one passkey and never deletes a
    /// passkey or regenerates the codes.
    pub fn step_up(&self, change: FactorChange, at: DateTime<Utc>) -> Result<(), StepUpRefusal> {
        if self.method == Some(AuthMethod::BackupCode) {
            let refused = match change {
                FactorChange::DeletePasskey | FactorChange::RegenerateBackupCodes => true,
                FactorChange::AddPasskey => self.passkeys_added >= 1,
                FactorChange::RevokeOtherSession => false,
            };
            if refused {
                return Err(StepUpRefusal::BackupCodeSession);
            }
        }
        match self.auth_time {
            Some(auth_time)
                if at - auth_time <= Duration::seconds(i64::from(STEP_UP_MAX_AGE_SECS)) =>
            {
                Ok(())
            }
            _ => Err(StepUpRefusal::ReauthRequired),
        }
    }

    /// Whether `hash` is or was a refresh token of this session.
    pub fn knows(&self, hash: &SecretHash) -> bool {
        self.refresh_hash == *hash || self.retired_refresh_hashes.contains(hash)
    }

    fn refresh(
        &self,
        presented: SecretHash,
        new: SecretHash,
        grace_secs: u32,
        at: DateTime<Utc>,
    ) -> Result<SessionEvent, SessionError> {
        if grace_secs > MAX_REFRESH_GRACE_SECS {
            return Err(SessionError::InvalidGracePeriod { grace_secs });
        }
        if let Some(SessionRevocation { reason, .. }) = self.revocation {
            return Err(SessionError::Revoked { reason });
        }
        // An unknown token must not be able to change anything.
        if !self.knows(&presented) {
            return Err(SessionError::InvalidRefreshToken);
        }
        if new == presented || self.knows(&new) {
            return Err(SessionError::RefreshHashNotFresh);
        }
        if self.is_expired(at) {
            return Ok(SessionEvent::Revoked {
                reason: RevokeReason::Expired,
                at,
            });
        }
        if presented == self.refresh_hash {
            return Ok(SessionEvent::Refreshed {
                previous: presented,
                new,
                grace_retry: false,
                at,
            });
        }
        let grace_retry = self.previous_refresh_hash == Some(presented)
            && !self.grace_used
            && at < after(self.last_seen_at, grace_secs);
        if grace_retry {
            return Ok(SessionEvent::Refreshed {
                previous: presented,
                new,
                grace_retry: true,
                at,
            });
        }
        Ok(SessionEvent::Revoked {
            reason: RevokeReason::ReuseDetected,
            at,
        })
    }
}

impl Session {
    /// `None` until the session is created or imported.
    pub fn state(&self) -> Option<&SessionState> {
        self.state.as_ref()
    }

    /// See [`SessionState::is_active`]; false for an unknown session.
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.state.as_ref().is_some_and(|state| state.is_active(at))
    }

    /// After a `Refresh` that returned `Ok`, reloaded: what it did, judged
    /// from the state. `None` if a later command has changed the session
    /// since (e.g. an admin revoked it); prefer [`RefreshOutcome::from_events`]
    /// when the emitted events are at hand.
    pub fn refresh_outcome(&self, new: &SecretHash) -> Option<RefreshOutcome> {
        let state = self.state.as_ref()?;
        match state.revocation {
            Some(SessionRevocation {
                reason: RevokeReason::Expired,
                ..
            }) => Some(RefreshOutcome::Expired),
            Some(SessionRevocation {
                reason: RevokeReason::ReuseDetected,
                ..
            }) => Some(RefreshOutcome::ReuseDetected),
            Some(_) => None,
            // A normal rotation clears `grace_used`, so it is only set when
            // the rotation to `new` was the grace retry.
            None if state.refresh_hash == *new => Some(RefreshOutcome::Refreshed {
                grace_retry: state.grace_used,
            }),
            None => None,
        }
    }

    pub(crate) fn decide(
        &self,
        command: SessionCommand,
    ) -> Result<Vec<SessionEvent>, SessionError> {
        let event = match (&self.state, command) {
            (Some(_), SessionCommand::Create { .. } | SessionCommand::Import { .. }) => {
                return Err(SessionError::AlreadyExists)
            }
            (
                None,
                SessionCommand::Create {
                    customer_id,
                    method,
                    refresh_hash,
                    family_id,
                    idle_timeout_secs,
                    absolute_timeout_secs,
                    at,
                    authn_instant,
                },
            ) => {
                if idle_timeout_secs == 0 {
                    return Err(SessionError::InvalidTimeouts(
                        "idle timeout must be positive",
                    ));
                }
                if idle_timeout_secs > absolute_timeout_secs {
                    return Err(SessionError::InvalidTimeouts(
                        "idle timeout must not exceed the absolute timeout",
                    ));
                }
                SessionEvent::Created {
                    customer_id,
                    method,
                    refresh_hash,
                    family_id,
                    idle_timeout_secs,
                    absolute_timeout_secs,
                    at,
                    authn_instant: authn_instant.filter(|instant| *instant < at),
                }
            }
            (
                None,
                SessionCommand::Import {
                    legacy_id,
                    customer_id,
                    refresh_hash,
                    idle_timeout_secs,
                    created_at,
                    last_seen_at,
                    expires_at,
                    at,
                },
            ) => {
                // Legacy timestamps are taken as they are: a session that is
                // already past its expiry is imported inactive.
                if idle_timeout_secs == 0 {
                    return Err(SessionError::InvalidTimeouts(
                        "idle timeout must be positive",
                    ));
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
                }
            }
            (None, _) => return Err(SessionError::NotFound),
            (
                Some(state),
                SessionCommand::Refresh {
                    presented,
                    new,
                    grace_secs,
                    at,
                },
            ) => state.refresh(presented, new, grace_secs, at)?,
            (Some(state), SessionCommand::Reauthenticate { credential_id, at }) => {
                if !state.is_active(at) {
                    return Err(SessionError::NotActive);
                }
                SessionEvent::Reauthenticated { credential_id, at }
            }
            (
                Some(state),
                SessionCommand::ReauthenticateWithSaml {
                    authn_instant,
                    requested_at,
                    at,
                },
            ) => {
                if !state.is_active(at) {
                    return Err(SessionError::NotActive);
                }
                let skew = Duration::seconds(SAML_REAUTH_SKEW_SECS);
                if authn_instant < requested_at - skew || authn_instant > at + skew {
                    return Err(SessionError::StaleAuthentication);
                }
                SessionEvent::SamlReauthenticated {
                    authn_instant: authn_instant.min(at),
                    at,
                }
            }
            (Some(state), SessionCommand::RecordPasskeyAdded { credential_id, at }) => {
                if !state.is_active(at) {
                    return Err(SessionError::NotActive);
                }
                state
                    .step_up(FactorChange::AddPasskey, at)
                    .map_err(SessionError::StepUp)?;
                SessionEvent::PasskeyAdded { credential_id, at }
            }
            (Some(state), SessionCommand::Revoke { reason, at }) => {
                if let Some(revocation) = state.revocation {
                    return Err(SessionError::AlreadyRevoked {
                        reason: revocation.reason,
                    });
                }
                SessionEvent::Revoked { reason, at }
            }
        };
        Ok(vec![event])
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "Session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
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
                SessionEvent::Created {
                    customer_id,
                    method,
                    refresh_hash,
                    family_id,
                    idle_timeout_secs,
                    absolute_timeout_secs,
                    at,
                    authn_instant,
                },
            ) => {
                self.state = Some(SessionState {
                    customer_id,
                    method: Some(method),
                    family_id: Some(family_id),
                    legacy_id: None,
                    created_at: at,
                    last_seen_at: at,
                    idle_timeout_secs,
                    absolute_expires_at: after(at, absolute_timeout_secs),
                    refresh_hash,
                    previous_refresh_hash: None,
                    grace_used: false,
                    retired_refresh_hashes: Vec::new(),
                    revocation: None,
                    auth_time: Some(authn_instant.unwrap_or(at)),
                    passkeys_added: 0,
                });
            }
            (
                None,
                SessionEvent::Imported {
                    legacy_id,
                    customer_id,
                    refresh_hash,
                    idle_timeout_secs,
                    created_at,
                    last_seen_at,
                    expires_at,
                    at: _,
                },
            ) => {
                self.state = Some(SessionState {
                    customer_id,
                    method: None,
                    family_id: None,
                    legacy_id: Some(legacy_id),
                    created_at,
                    last_seen_at,
                    idle_timeout_secs,
                    absolute_expires_at: expires_at,
                    refresh_hash,
                    previous_refresh_hash: None,
                    grace_used: false,
                    retired_refresh_hashes: Vec::new(),
                    revocation: None,
                    auth_time: None,
                    passkeys_added: 0,
                });
            }
            // Only a creation event can be decided on an empty session, and only once.
            (None, _) | (Some(_), SessionEvent::Created { .. } | SessionEvent::Imported { .. }) => {
            }
            (
                Some(state),
                SessionEvent::Refreshed {
                    new,
                    grace_retry,
                    at,
                    ..
                },
            ) => {
                let retired = std::mem::replace(&mut state.refresh_hash, new);
                state.retired_refresh_hashes.push(retired);
                if grace_retry {
                    // The grace target stays the same; it cannot be used again.
                    state.grace_used = true;
                } else {
                    state.previous_refresh_hash = Some(retired);
                    state.grace_used = false;
                }
                state.last_seen_at = at;
            }
            (Some(state), SessionEvent::Revoked { reason, at }) => {
                state.revocation = Some(SessionRevocation { reason, at });
            }
            (Some(state), SessionEvent::Reauthenticated { at, .. }) => {
                state.auth_time = Some(at);
            }
            (Some(state), SessionEvent::SamlReauthenticated { authn_instant, .. }) => {
                state.auth_time = Some(authn_instant);
            }
            (Some(state), SessionEvent::PasskeyAdded { .. }) => {
                state.passkeys_added = state.passkeys_added.saturating_add(1);
            }
        }
    }
}
