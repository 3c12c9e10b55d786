use chrono::{DateTime, Utc};

use super::{AuthMethod, RevokeReason};
use crate::types::{CredentialId, CustomerId, LegacyId, SecretHash, SessionFamilyId};

/// A session ends this long after the last refresh (30 minutes).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u32 = 30 * 60;
/// A session ends this long after creation, however active (12 hours).
pub const DEFAULT_ABSOLUTE_TIMEOUT_SECS: u32 = 12 * 60 * 60;
/// How old a session's `auth_time` may be for a factor change (5 minutes).
pub const STEP_UP_MAX_AGE_SECS: u32 = 5 * 60;
/// How far an IdP's `AuthnInstant` may lie before the reauthentication
/// request it answers (clock skew, as the SAML checks allow), or after now.
pub const SAML_REAUTH_SKEW_SECS: i64 = 60;
/// The longest window in which the previous refresh token may be retried once.
pub const MAX_REFRESH_GRACE_SECS: u32 = 60;

/// Everything that can be asked of a session. `at` is the caller's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCommand {
    Create {
        customer_id: CustomerId,
        method: AuthMethod,
        refresh_hash: SecretHash,
        family_id: SessionFamilyId,
        /// Usually [`DEFAULT_IDLE_TIMEOUT_SECS`]; at least 1 and at most the absolute timeout.
        idle_timeout_secs: u32,
        /// Usually [`DEFAULT_ABSOLUTE_TIMEOUT_SECS`].
        absolute_timeout_secs: u32,
        at: DateTime<Utc>,
        /// When the customer authenticated, as the IdP of a SAML login
        /// says (`AuthnInstant`); `None` when it is `at` (a passkey or a
        /// backup code proves presence now). Later than `at` counts as `at`.
        authn_instant: Option<DateTime<Utc>>,
    },
    /// A live legacy session (`revoked_at IS NULL`) backfilled with its refresh
    /// token hash, so the client's token keeps working.
    Import {
        legacy_id: LegacyId,
        customer_id: CustomerId,
        refresh_hash: SecretHash,
        /// Recorded so replay does not depend on today's default.
        idle_timeout_secs: u32,
        created_at: DateTime<Utc>,
        last_seen_at: DateTime<Utc>,
        /// The legacy absolute expiry.
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Rotates the refresh token: `presented` is the hash of the token the
    /// client sent, `new` the hash of the token about to be handed out.
    ///
    /// On success exactly one event is emitted, and the result tells the
    /// caller what happened (see [`super::RefreshOutcome::from_events`], or
    /// [`super::Session::refresh_outcome`] after reloading):
    /// - `SessionRefreshed`: rotated; hand out `new`.
    /// - `SessionRevoked { reason: Expired }`: past the idle or absolute
    ///   timeout (`session_expired`). Checked before the token is matched.
    /// - `SessionRevoked { reason: ReuseDetected }`: `presented` was already
    ///   rotated out (`refresh_reuse_detected`). The exception is the
    ///   immediately previous token, presented less than `grace_secs` after
    ///   the rotation that retired it, once: that is a retry by a client that
    ///   lost the response and it is refreshed instead.
    ///
    /// Revocations are events, not errors, because they must be committed.
    /// Errors (no event): `Revoked` if already revoked, `InvalidRefreshToken`
    /// if `presented` was never a token of this session, `NotFound`,
    /// `InvalidGracePeriod`, `RefreshHashNotFresh`.
    Refresh {
        presented: SecretHash,
        new: SecretHash,
        /// 0 (no retry, the default) to [`MAX_REFRESH_GRACE_SECS`].
        grace_secs: u32,
        at: DateTime<Utc>,
    },
    Revoke {
        reason: RevokeReason,
        at: DateTime<Utc>,
    },
    /// A user-verified assertion of one of the customer's passkeys, checked
    /// by the caller: the session's `auth_time` becomes `at`. Refused
    /// (`NotActive`) for a revoked or expired session.
    Reauthenticate {
        credential_id: CredentialId,
        at: DateTime<Utc>,
    },
    /// A SAML assertion of the session's customer answering a ForceAuthn
    /// request this session made at `requested_at`, checked by the caller
    /// (signature, audience, subject): the session's `auth_time` becomes
    /// the IdP's `authn_instant` (at most `at`). Refused (`NotActive`) for a
    /// revoked or expired session, and (`StaleAuthentication`) when the IdP
    /// did not authenticate anew: `authn_instant` more than
    /// [`SAML_REAUTH_SKEW_SECS`] before `requested_at` or after `at`.
    ReauthenticateWithSaml {
        authn_instant: DateTime<Utc>,
        requested_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// This session added a passkey. Refused (`StepUp`) unless
    /// [`super::SessionState::step_up`] allows [`super::FactorChange::AddPasskey`] at `at`.
    RecordPasskeyAdded {
        credential_id: CredentialId,
        at: DateTime<Utc>,
    },
}
