use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;

use super::*;
use crate::test_support::{h, t};
use crate::types::{CredentialId, CustomerId, LegacyId, SessionFamilyId};

type SessionTest = TestFramework<Session>;

const IDLE: i64 = DEFAULT_IDLE_TIMEOUT_SECS as i64;
const ABSOLUTE: i64 = DEFAULT_ABSOLUTE_TIMEOUT_SECS as i64;

fn customer_id() -> CustomerId {
    "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01".parse().unwrap()
}

fn family_id() -> SessionFamilyId {
    "5f1d8a4e-1111-4a4b-9d55-2f7f0a1e0c01".parse().unwrap()
}

fn method() -> AuthMethod {
    AuthMethod::Webauthn {
        credential_id: CredentialId::for_raw_id(b"key"),
    }
}

fn create_command(idle: u32, absolute: u32) -> SessionCommand {
    SessionCommand::Create {
        customer_id: customer_id(),
        method: method(),
        refresh_hash: h("r1"),
        family_id: family_id(),
        idle_timeout_secs: idle,
        absolute_timeout_secs: absolute,
        at: t(0),
        authn_instant: None,
    }
}

fn created() -> SessionEvent {
    SessionEvent::Created {
        customer_id: customer_id(),
        method: method(),
        refresh_hash: h("r1"),
        family_id: family_id(),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        absolute_timeout_secs: DEFAULT_ABSOLUTE_TIMEOUT_SECS,
        at: t(0),
        authn_instant: None,
    }
}

fn refreshed(previous: &str, new: &str, at: i64) -> SessionEvent {
    SessionEvent::Refreshed {
        previous: h(previous),
        new: h(new),
        grace_retry: false,
        at: t(at),
    }
}

fn grace_refreshed(previous: &str, new: &str, at: i64) -> SessionEvent {
    SessionEvent::Refreshed {
        previous: h(previous),
        new: h(new),
        grace_retry: true,
        at: t(at),
    }
}

fn revoked(reason: RevokeReason, at: i64) -> SessionEvent {
    SessionEvent::Revoked { reason, at: t(at) }
}

fn refresh(presented: &str, new: &str, grace_secs: u32, at: i64) -> SessionCommand {
    SessionCommand::Refresh {
        presented: h(presented),
        new: h(new),
        grace_secs,
        at: t(at),
    }
}

fn import_command() -> SessionCommand {
    SessionCommand::Import {
        legacy_id: LegacyId::try_from(99).unwrap(),
        customer_id: customer_id(),
        refresh_hash: h("legacy"),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        created_at: t(-3600),
        last_seen_at: t(-60),
        expires_at: t(600),
        at: t(0),
    }
}

fn imported() -> SessionEvent {
    SessionEvent::Imported {
        legacy_id: LegacyId::try_from(99).unwrap(),
        customer_id: customer_id(),
        refresh_hash: h("legacy"),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        created_at: t(-3600),
        last_seen_at: t(-60),
        expires_at: t(600),
        at: t(0),
    }
}

fn replay(events: Vec<SessionEvent>) -> Session {
    let mut session = Session::default();
    for event in events {
        session.apply(event);
    }
    session
}

// --- creation and import ---

#[test]
fn create_a_session() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(create_command(
            DEFAULT_IDLE_TIMEOUT_SECS,
            DEFAULT_ABSOLUTE_TIMEOUT_SECS,
        ))
        .then_expect_events(vec![created()]);

    let session = replay(vec![created()]);
    let state = session.state().unwrap();
    assert_eq!(state.method.unwrap().amr(), "webauthn");
    assert_eq!(state.idle_expires_at(), t(IDLE));
    assert_eq!(state.absolute_expires_at, t(ABSOLUTE));
    assert_eq!(state.expires_at(), t(IDLE));
    assert!(session.is_active(t(IDLE - 1)));
    assert!(!session.is_active(t(IDLE)));
    assert_eq!(state.status(t(IDLE)), SessionStatus::Expired);
}

#[test]
fn create_twice_is_refused() {
    SessionTest::with(())
        .given(vec![created()])
        .when(create_command(60, 120))
        .then_expect_error(SessionError::AlreadyExists);
    SessionTest::with(())
        .given(vec![created()])
        .when(import_command())
        .then_expect_error(SessionError::AlreadyExists);
}

#[test]
fn create_with_bad_timeouts_is_refused() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(create_command(0, 120))
        .then_expect_error(SessionError::InvalidTimeouts(
            "idle timeout must be positive",
        ));
    SessionTest::with(())
        .given_no_previous_events()
        .when(create_command(121, 120))
        .then_expect_error(SessionError::InvalidTimeouts(
            "idle timeout must not exceed the absolute timeout",
        ));
}

#[test]
fn import_a_legacy_session() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(import_command())
        .then_expect_events(vec![imported()]);

    let state = replay(vec![imported()]).state().cloned().unwrap();
    assert_eq!(state.method, None);
    assert_eq!(state.legacy_id, Some(LegacyId::try_from(99).unwrap()));
    assert_eq!(state.idle_expires_at(), t(IDLE - 60));
    assert_eq!(state.expires_at(), t(600));
}

#[test]
fn import_with_a_zero_idle_timeout_is_refused() {
    let mut command = import_command();
    if let SessionCommand::Import {
        idle_timeout_secs, ..
    } = &mut command
    {
        *idle_timeout_secs = 0;
    }
    SessionTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_error(SessionError::InvalidTimeouts(
            "idle timeout must be positive",
        ));
}

#[test]
fn an_imported_session_refreshes_with_its_legacy_token() {
    SessionTest::with(())
        .given(vec![imported()])
        .when(refresh("legacy", "r2", 0, 10))
        .then_expect_events(vec![refreshed("legacy", "r2", 10)]);
    SessionTest::with(())
        .given(vec![imported()])
        .when(refresh("legacy", "r2", 0, 600))
        .then_expect_events(vec![revoked(RevokeReason::Expired, 600)]);
}

#[test]
fn every_other_command_on_an_unknown_session_is_not_found() {
    for command in [
        refresh("r1", "r2", 0, 1),
        SessionCommand::Revoke {
            reason: RevokeReason::Logout,
            at: t(1),
        },
    ] {
        SessionTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(SessionError::NotFound);
    }
}

// --- refresh ---

#[test]
fn refresh_with_the_current_token_rotates_it() {
    SessionTest::with(())
        .given(vec![created()])
        .when(refresh("r1", "r2", 0, 100))
        .then_expect_events(vec![refreshed("r1", "r2", 100)]);

    let session = replay(vec![created(), refreshed("r1", "r2", 100)]);
    let state = session.state().unwrap();
    assert_eq!(state.refresh_hash, h("r2"));
    assert_eq!(state.previous_refresh_hash, Some(h("r1")));
    assert_eq!(state.retired_refresh_hashes, vec![h("r1")]);
    assert_eq!(state.last_seen_at, t(100));
    assert_eq!(state.idle_expires_at(), t(100 + IDLE));
}

#[test]
fn refresh_keeps_a_session_alive_past_the_first_idle_deadline() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", IDLE - 1)])
        .when(refresh("r2", "r3", 0, IDLE + 100))
        .then_expect_events(vec![refreshed("r2", "r3", IDLE + 100)]);
}

#[test]
fn presenting_a_rotated_refresh_token_revokes_the_session() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 5)])
        .when(refresh("r1", "r3", 0, 9))
        .then_expect_events(vec![revoked(RevokeReason::ReuseDetected, 9)]);
}

#[test]
fn presenting_an_older_rotated_token_is_reuse_even_within_grace() {
    SessionTest::with(())
        .given(vec![
            created(),
            refreshed("r1", "r2", 5),
            refreshed("r2", "r3", 6),
        ])
        .when(refresh("r1", "r4", 60, 7))
        .then_expect_events(vec![revoked(RevokeReason::ReuseDetected, 7)]);
}

#[test]
fn refresh_with_an_unknown_token_is_refused_without_an_event() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 5)])
        .when(refresh("stranger", "r3", 60, 6))
        .then_expect_error(SessionError::InvalidRefreshToken);
}

#[test]
fn refresh_after_idle_expiry_revokes_as_expired() {
    SessionTest::with(())
        .given(vec![created()])
        .when(refresh("r1", "r2", 0, IDLE))
        .then_expect_events(vec![revoked(RevokeReason::Expired, IDLE)]);
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 100)])
        .when(refresh("r2", "r3", 0, 100 + IDLE))
        .then_expect_events(vec![revoked(RevokeReason::Expired, 100 + IDLE)]);
}

#[test]
fn refresh_after_absolute_expiry_revokes_as_expired() {
    // Refreshed every 20 minutes: never idle, but the 12 hours run out.
    let mut history = vec![created()];
    let mut at = 0;
    let mut token = 1;
    while at + 1200 < ABSOLUTE {
        at += 1200;
        history.push(refreshed(
            &format!("r{token}"),
            &format!("r{}", token + 1),
            at,
        ));
        token += 1;
    }
    let current = format!("r{token}");
    SessionTest::with(())
        .given(history.clone())
        .when(refresh(&current, "next", 0, ABSOLUTE - 1))
        .then_expect_events(vec![refreshed(&current, "next", ABSOLUTE - 1)]);
    SessionTest::with(())
        .given(history)
        .when(refresh(&current, "next", 0, ABSOLUTE))
        .then_expect_events(vec![revoked(RevokeReason::Expired, ABSOLUTE)]);
}

#[test]
fn expiry_is_checked_before_reuse() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 5)])
        .when(refresh("r1", "r3", 0, 5 + IDLE))
        .then_expect_events(vec![revoked(RevokeReason::Expired, 5 + IDLE)]);
}

#[test]
fn grace_retry_with_the_previous_token_works_once() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 5)])
        .when(refresh("r1", "r3", 10, 14))
        .then_expect_events(vec![grace_refreshed("r1", "r3", 14)]);
    SessionTest::with(())
        .given(vec![
            created(),
            refreshed("r1", "r2", 5),
            grace_refreshed("r1", "r3", 14),
        ])
        .when(refresh("r1", "r4", 10, 14))
        .then_expect_events(vec![revoked(RevokeReason::ReuseDetected, 14)]);
}

#[test]
fn after_a_grace_retry_the_new_token_works_and_the_lost_one_is_reuse() {
    let history = vec![
        created(),
        refreshed("r1", "r2", 5),
        grace_refreshed("r1", "r3", 6),
    ];
    SessionTest::with(())
        .given(history.clone())
        .when(refresh("r3", "r4", 10, 7))
        .then_expect_events(vec![refreshed("r3", "r4", 7)]);
    SessionTest::with(())
        .given(history.clone())
        .when(refresh("r2", "r4", 10, 7))
        .then_expect_events(vec![revoked(RevokeReason::ReuseDetected, 7)]);

    let state = replay(history).state().cloned().unwrap();
    assert_eq!(state.refresh_hash, h("r3"));
    assert_eq!(state.previous_refresh_hash, Some(h("r1")));
    assert!(state.grace_used);
    assert_eq!(state.retired_refresh_hashes, vec![h("r1"), h("r2")]);
}

#[test]
fn grace_retry_outside_the_window_is_reuse() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 5)])
        .when(refresh("r1", "r3", 10, 15))
        .then_expect_events(vec![revoked(RevokeReason::ReuseDetected, 15)]);
}

#[test]
fn a_new_rotation_restores_the_grace_retry() {
    SessionTest::with(())
        .given(vec![
            created(),
            refreshed("r1", "r2", 5),
            grace_refreshed("r1", "r3", 6),
            refreshed("r3", "r4", 100),
        ])
        .when(refresh("r3", "r5", 10, 101))
        .then_expect_events(vec![grace_refreshed("r3", "r5", 101)]);
}

#[test]
fn refresh_with_a_grace_period_over_sixty_seconds_is_refused() {
    SessionTest::with(())
        .given(vec![created()])
        .when(refresh("r1", "r2", 61, 1))
        .then_expect_error(SessionError::InvalidGracePeriod { grace_secs: 61 });
}

#[test]
fn refresh_of_a_revoked_session_is_refused_with_the_reason() {
    for reason in [
        RevokeReason::Logout,
        RevokeReason::Admin,
        RevokeReason::ReuseDetected,
        RevokeReason::Suspended,
        RevokeReason::Expired,
    ] {
        SessionTest::with(())
            .given(vec![created(), revoked(reason, 3)])
            .when(refresh("r1", "r2", 0, 4))
            .then_expect_error(SessionError::Revoked { reason });
    }
}

#[test]
fn refresh_with_a_new_hash_already_seen_is_refused() {
    SessionTest::with(())
        .given(vec![created(), refreshed("r1", "r2", 5)])
        .when(refresh("r2", "r1", 0, 6))
        .then_expect_error(SessionError::RefreshHashNotFresh);
    SessionTest::with(())
        .given(vec![created()])
        .when(refresh("r1", "r1", 0, 6))
        .then_expect_error(SessionError::RefreshHashNotFresh);
}

// --- revoke ---

#[test]
fn revoke_a_session() {
    SessionTest::with(())
        .given(vec![created()])
        .when(SessionCommand::Revoke {
            reason: RevokeReason::Logout,
            at: t(30),
        })
        .then_expect_events(vec![revoked(RevokeReason::Logout, 30)]);
    let session = replay(vec![created(), revoked(RevokeReason::Admin, 30)]);
    assert!(!session.is_active(t(31)));
    assert_eq!(
        session.state().unwrap().status(t(31)),
        SessionStatus::Revoked {
            reason: RevokeReason::Admin
        }
    );
}

#[test]
fn revoke_twice_is_refused() {
    SessionTest::with(())
        .given(vec![created(), revoked(RevokeReason::Suspended, 30)])
        .when(SessionCommand::Revoke {
            reason: RevokeReason::Logout,
            at: t(31),
        })
        .then_expect_error(SessionError::AlreadyRevoked {
            reason: RevokeReason::Suspended,
        });
}

// --- telling the caller what a refresh did ---

#[test]
fn refresh_outcome_from_events_and_from_state() {
    let cases = [
        (
            vec![refreshed("r1", "r2", 5)],
            RefreshOutcome::Refreshed { grace_retry: false },
        ),
        (
            vec![refreshed("r1", "r2", 5), grace_refreshed("r1", "r3", 6)],
            RefreshOutcome::Refreshed { grace_retry: true },
        ),
        (
            vec![revoked(RevokeReason::Expired, 5)],
            RefreshOutcome::Expired,
        ),
        (
            vec![revoked(RevokeReason::ReuseDetected, 5)],
            RefreshOutcome::ReuseDetected,
        ),
    ];
    for (events, expected) in cases {
        let last = events.last().cloned().unwrap();
        assert_eq!(
            RefreshOutcome::from_events(std::slice::from_ref(&last)),
            Some(expected)
        );
        let new = match last {
            SessionEvent::Refreshed { new, .. } => new,
            _ => h("unused"),
        };
        let mut history = vec![created()];
        history.extend(events);
        assert_eq!(replay(history).refresh_outcome(&new), Some(expected));
    }
    assert_eq!(
        RefreshOutcome::from_events(&[revoked(RevokeReason::Logout, 1)]),
        None
    );
    assert_eq!(
        replay(vec![created(), revoked(RevokeReason::Admin, 1)]).refresh_outcome(&h("r2")),
        None
    );
    assert_eq!(replay(vec![created()]).refresh_outcome(&h("r2")), None);
}

#[test]
fn events_serialise_with_snake_case_reasons_and_methods() {
    let json = serde_json::to_value(revoked(RevokeReason::ReuseDetected, 1)).unwrap();
    assert_eq!(json["SessionRevoked"]["reason"], "reuse_detected");
    let json = serde_json::to_value(created()).unwrap();
    assert_eq!(json["SessionCreated"]["method"]["kind"], "webauthn");
    assert_eq!(
        serde_json::to_value(AuthMethod::BackupCode).unwrap(),
        serde_json::json!({"kind": "backup_code"})
    );
    assert_eq!(AuthMethod::BackupCode.amr(), "backup_code");
    assert_eq!(
        serde_json::to_value(AuthMethod::Saml).unwrap(),
        serde_json::json!({"kind": "saml"})
    );
    assert_eq!(AuthMethod::Saml.amr(), "saml");
}

/// The whole path an API handler takes: execute through the framework, then
/// reload to learn what the refresh did.
#[tokio::test]
async fn refresh_outcome_through_the_framework() {
    use cqrs_es::mem_store::MemStore;
    use cqrs_es::{AggregateContext, AggregateError, CqrsFramework, EventStore};

    let store = MemStore::<Session>::default();
    let cqrs = CqrsFramework::new(store.clone(), vec![], ());
    let id = crate::types::SessionId::for_legacy_id(LegacyId::try_from(1).unwrap()).to_string();
    cqrs.execute(&id, create_command(60, 600)).await.unwrap();

    cqrs.execute(&id, refresh("r1", "r2", 0, 10)).await.unwrap();
    let mut context = store.load_aggregate(&id).await.unwrap();
    assert_eq!(
        context.aggregate().refresh_outcome(&h("r2")),
        Some(RefreshOutcome::Refreshed { grace_retry: false })
    );

    cqrs.execute(&id, refresh("r1", "r3", 0, 11)).await.unwrap();
    let mut context = store.load_aggregate(&id).await.unwrap();
    assert_eq!(
        context.aggregate().refresh_outcome(&h("r3")),
        Some(RefreshOutcome::ReuseDetected)
    );

    let refused = cqrs.execute(&id, refresh("r2", "r4", 0, 12)).await;
    assert!(matches!(
        refused,
        Err(AggregateError::UserError(SessionError::Revoked {
            reason: RevokeReason::ReuseDetected
        }))
    ));
}

// ---- step-up (ADR 0211) ---------------------------------------------------

fn backup_created() -> SessionEvent {
    SessionEvent::Created {
        customer_id: customer_id(),
        method: AuthMethod::BackupCode,
        refresh_hash: h("r1"),
        family_id: family_id(),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        absolute_timeout_secs: DEFAULT_ABSOLUTE_TIMEOUT_SECS,
        at: t(0),
        authn_instant: None,
    }
}

fn state_of(events: Vec<SessionEvent>) -> SessionState {
    replay(events).state().cloned().unwrap()
}

const WINDOW: i64 = STEP_UP_MAX_AGE_SECS as i64;

#[test]
fn a_login_is_fresh_for_five_minutes_then_needs_a_reauth() {
    let every = [
        FactorChange::AddPasskey,
        FactorChange::DeletePasskey,
        FactorChange::RegenerateBackupCodes,
        FactorChange::RevokeOtherSession,
    ];
    let session = state_of(vec![created()]);
    assert_eq!(session.auth_time, Some(t(0)));
    for change in every {
        assert_eq!(session.step_up(change, t(WINDOW)), Ok(()));
        assert_eq!(
            session.step_up(change, t(WINDOW + 1)),
            Err(StepUpRefusal::ReauthRequired)
        );
    }
    let reauthenticated = state_of(vec![
        created(),
        SessionEvent::Reauthenticated {
            credential_id: CredentialId::for_raw_id(b"key"),
            at: t(1000),
        },
    ]);
    assert_eq!(reauthenticated.auth_time, Some(t(1000)));
    for change in every {
        assert_eq!(reauthenticated.step_up(change, t(1000 + WINDOW)), Ok(()));
    }
}

#[test]
fn an_imported_session_has_no_auth_time_until_it_reauthenticates() {
    let session = state_of(vec![imported()]);
    assert_eq!(session.auth_time, None);
    assert_eq!(
        session.step_up(FactorChange::AddPasskey, t(0)),
        Err(StepUpRefusal::ReauthRequired)
    );
}

#[test]
fn reauth_needs_an_active_session() {
    SessionTest::with(())
        .given(vec![created(), revoked(RevokeReason::Logout, 5)])
        .when(SessionCommand::Reauthenticate {
            credential_id: CredentialId::for_raw_id(b"key"),
            at: t(10),
        })
        .then_expect_error(SessionError::NotActive);
    SessionTest::with(())
        .given(vec![created()])
        .when(SessionCommand::Reauthenticate {
            credential_id: CredentialId::for_raw_id(b"key"),
            at: t(10),
        })
        .then_expect_events(vec![SessionEvent::Reauthenticated {
            credential_id: CredentialId::for_raw_id(b"key"),
            at: t(10),
        }]);
}

fn saml_created() -> SessionEvent {
    SessionEvent::Created {
        customer_id: customer_id(),
        method: AuthMethod::Saml,
        refresh_hash: h("r1"),
        family_id: family_id(),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        absolute_timeout_secs: DEFAULT_ABSOLUTE_TIMEOUT_SECS,
        at: t(0),
        authn_instant: None,
    }
}

fn saml_reauth(authn_instant: i64, requested_at: i64, at: i64) -> SessionCommand {
    SessionCommand::ReauthenticateWithSaml {
        authn_instant: t(authn_instant),
        requested_at: t(requested_at),
        at: t(at),
    }
}

#[test]
fn a_saml_reauthentication_moves_auth_time_to_the_idps_authn_instant() {
    // The IdP authenticated at 1003, after the request of 1000: fresh.
    SessionTest::with(())
        .given(vec![saml_created()])
        .when(saml_reauth(1003, 1000, 1010))
        .then_expect_events(vec![SessionEvent::SamlReauthenticated {
            authn_instant: t(1003),
            at: t(1010),
        }]);
    let session = state_of(vec![
        saml_created(),
        SessionEvent::SamlReauthenticated {
            authn_instant: t(1003),
            at: t(1010),
        },
    ]);
    assert_eq!(session.auth_time, Some(t(1003)));
    assert_eq!(
        session.step_up(FactorChange::DeletePasskey, t(1003 + WINDOW)),
        Ok(())
    );
    assert_eq!(
        session.step_up(FactorChange::DeletePasskey, t(1004 + WINDOW)),
        Err(StepUpRefusal::ReauthRequired)
    );
    // An IdP clock a little ahead: auth_time is never later than Queue's now.
    SessionTest::with(())
        .given(vec![saml_created()])
        .when(saml_reauth(1030, 1000, 1010))
        .then_expect_events(vec![SessionEvent::SamlReauthenticated {
            authn_instant: t(1010),
            at: t(1010),
        }]);
}

#[test]
fn a_saml_login_from_the_idps_older_session_is_not_a_fresh_authentication() {
    let create = |authn_instant: i64| SessionCommand::Create {
        customer_id: customer_id(),
        method: AuthMethod::Saml,
        refresh_hash: h("r1"),
        family_id: family_id(),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        absolute_timeout_secs: DEFAULT_ABSOLUTE_TIMEOUT_SECS,
        at: t(1000),
        authn_instant: Some(t(authn_instant)),
    };
    let created = |authn_instant: Option<i64>| SessionEvent::Created {
        customer_id: customer_id(),
        method: AuthMethod::Saml,
        refresh_hash: h("r1"),
        family_id: family_id(),
        idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        absolute_timeout_secs: DEFAULT_ABSOLUTE_TIMEOUT_SECS,
        at: t(1000),
        authn_instant: authn_instant.map(t),
    };
    // The IdP authenticated her an hour before the login: that is her
    // auth_time, and a factor change needs a step-up at once.
    SessionTest::with(())
        .given_no_previous_events()
        .when(create(1000 - 3600))
        .then_expect_events(vec![created(Some(1000 - 3600))]);
    let session = state_of(vec![created(Some(1000 - 3600))]);
    assert_eq!(session.auth_time, Some(t(1000 - 3600)));
    assert_eq!(
        session.step_up(FactorChange::AddPasskey, t(1000)),
        Err(StepUpRefusal::ReauthRequired)
    );
    // An instant at or after the login (an IdP clock ahead) is the login's.
    for later in [1000, 1030] {
        SessionTest::with(())
            .given_no_previous_events()
            .when(create(later))
            .then_expect_events(vec![created(None)]);
    }
    assert_eq!(state_of(vec![created(None)]).auth_time, Some(t(1000)));
}

#[test]
fn a_saml_reauthentication_must_be_anew_and_in_an_active_session() {
    let skew = SAML_REAUTH_SKEW_SECS;
    // The IdP answered from its own older session (ForceAuthn ignored).
    SessionTest::with(())
        .given(vec![saml_created()])
        .when(saml_reauth(1000 - skew - 1, 1000, 1010))
        .then_expect_error(SessionError::StaleAuthentication);
    // Within the skew before the request: accepted.
    SessionTest::with(())
        .given(vec![saml_created()])
        .when(saml_reauth(1000 - skew, 1000, 1010))
        .then_expect_events(vec![SessionEvent::SamlReauthenticated {
            authn_instant: t(1000 - skew),
            at: t(1010),
        }]);
    // An AuthnInstant from the future beyond the skew.
    SessionTest::with(())
        .given(vec![saml_created()])
        .when(saml_reauth(1010 + skew + 1, 1000, 1010))
        .then_expect_error(SessionError::StaleAuthentication);
    SessionTest::with(())
        .given(vec![saml_created(), revoked(RevokeReason::Logout, 5)])
        .when(saml_reauth(1003, 1000, 1010))
        .then_expect_error(SessionError::NotActive);
}

#[test]
fn a_backup_code_session_adds_one_passkey_and_never_deletes() {
    let added = SessionEvent::PasskeyAdded {
        credential_id: CredentialId::for_raw_id(b"new"),
        at: t(10),
    };
    SessionTest::with(())
        .given(vec![backup_created()])
        .when(SessionCommand::RecordPasskeyAdded {
            credential_id: CredentialId::for_raw_id(b"new"),
            at: t(10),
        })
        .then_expect_events(vec![added.clone()]);
    SessionTest::with(())
        .given(vec![backup_created(), added.clone()])
        .when(SessionCommand::RecordPasskeyAdded {
            credential_id: CredentialId::for_raw_id(b"other"),
            at: t(20),
        })
        .then_expect_error(SessionError::StepUp(StepUpRefusal::BackupCodeSession));
    let session = state_of(vec![
        backup_created(),
        added,
        SessionEvent::Reauthenticated {
            credential_id: CredentialId::for_raw_id(b"new"),
            at: t(30),
        },
    ]);
    for change in [
        FactorChange::AddPasskey,
        FactorChange::DeletePasskey,
        FactorChange::RegenerateBackupCodes,
    ] {
        assert_eq!(
            session.step_up(change, t(31)),
            Err(StepUpRefusal::BackupCodeSession)
        );
    }
    assert_eq!(
        session.step_up(FactorChange::RevokeOtherSession, t(31)),
        Ok(())
    );
    // A passkey session adds as many as it likes (each within the window).
    SessionTest::with(())
        .given(vec![
            created(),
            SessionEvent::PasskeyAdded {
                credential_id: CredentialId::for_raw_id(b"a"),
                at: t(5),
            },
        ])
        .when(SessionCommand::RecordPasskeyAdded {
            credential_id: CredentialId::for_raw_id(b"b"),
            at: t(6),
        })
        .then_expect_events(vec![SessionEvent::PasskeyAdded {
            credential_id: CredentialId::for_raw_id(b"b"),
            at: t(6),
        }]);
}

#[test]
fn stored_session_events_decode_as_before() {
    // A SessionCreated written before ADR 0211: no field was added.
    let old = serde_json::json!({"SessionCreated": {
        "customer_id": customer_id(), "method": {"kind": "backup_code"},
        "refresh_hash": h("r1"), "family_id": family_id(),
        "idle_timeout_secs": 1800, "absolute_timeout_secs": 43200, "at": t(0)}});
    let event: SessionEvent = serde_json::from_value(old).unwrap();
    assert_eq!(event, backup_created());
}
