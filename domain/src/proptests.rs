//! Property tests: random command sequences are folded through `decide` and
//! `apply` (what `handle` does), and invariants are checked after each step.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use proptest::prelude::*;

use crate::customer::{Customer, CustomerCommand, CustomerError, CustomerEvent};
use crate::session::{
    RevokeReason, Session, SessionCommand, SessionError, SessionEvent,
    DEFAULT_ABSOLUTE_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS,
};
use crate::test_support::{actor, h, reason, t};
use crate::types::{CustomerId, DisplayName, Email, GrantId, Role, SecretHash, SessionFamilyId};

fn customer_id() -> CustomerId {
    CustomerId::from_uuid(uuid::Uuid::from_u128(1))
}

fn registered_customer() -> Customer {
    let mut customer = Customer::default();
    customer.apply(CustomerEvent::Registered {
        tenant_id: crate::types::TenantId::DEFAULT,
        customer_id: customer_id(),
        email: Email::parse("p@example.com").unwrap(),
        display_name: DisplayName::parse("P").unwrap(),
        default_role: Role::default_role(),
        at: t(0),
    });
    customer
}

// --- sessions: a revoked session never refreshes ---

#[derive(Clone, Debug)]
enum SessionOp {
    RefreshCurrent,
    RefreshPrevious,
    /// Any token rotated out so far (index wraps around).
    RefreshRetired(usize),
    RefreshUnknown,
    Revoke(RevokeReason),
}

fn session_op() -> impl Strategy<Value = (SessionOp, i64, u32)> {
    let op = prop_oneof![
        4 => Just(SessionOp::RefreshCurrent),
        2 => Just(SessionOp::RefreshPrevious),
        1 => any::<usize>().prop_map(SessionOp::RefreshRetired),
        1 => Just(SessionOp::RefreshUnknown),
        1 => prop_oneof![
            Just(RevokeReason::Logout),
            Just(RevokeReason::Admin),
            Just(RevokeReason::Suspended),
        ]
        .prop_map(SessionOp::Revoke),
    ];
    // Steps of up to ~40 minutes reach the idle timeout now and then; many
    // short steps reach the absolute one.
    let advance = prop_oneof![4 => 0i64..120, 1 => 0i64..2400];
    (op, advance, 0u32..=60)
}

proptest! {
    #[test]
    fn a_revoked_session_never_refreshes(ops in prop::collection::vec(session_op(), 1..60)) {
        let mut session = Session::default();
        let mut now = 0i64;
        let mut fresh = 0u32;
        let mut next_hash = || {
            fresh += 1;
            h(&format!("token-{fresh}"))
        };
        let first = next_hash();
        session.apply(SessionEvent::Created {
            customer_id: customer_id(),
            method: crate::session::AuthMethod::BackupCode,
            refresh_hash: first,
            family_id: SessionFamilyId::from_uuid(uuid::Uuid::from_u128(2)),
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            absolute_timeout_secs: DEFAULT_ABSOLUTE_TIMEOUT_SECS,
            at: t(0),
            authn_instant: None,
        });
        let mut grace_retries_since_rotation = 0;

        for (op, advance, grace_secs) in ops {
            now += advance;
            let at = t(now);
            let state = session.state().cloned().unwrap();
            let was_revoked = state.is_revoked();
            let presented: SecretHash = match &op {
                SessionOp::RefreshCurrent => state.refresh_hash,
                SessionOp::RefreshPrevious => state.previous_refresh_hash.unwrap_or(state.refresh_hash),
                SessionOp::RefreshRetired(i) => {
                    let retired = &state.retired_refresh_hashes;
                    if retired.is_empty() { state.refresh_hash } else { retired[i % retired.len()] }
                }
                SessionOp::RefreshUnknown => h("never issued"),
                SessionOp::Revoke(_) => state.refresh_hash,
            };
            let command = match op {
                SessionOp::Revoke(reason) => SessionCommand::Revoke { reason, at },
                _ => SessionCommand::Refresh { presented, new: next_hash(), grace_secs, at },
            };
            let is_refresh = matches!(command, SessionCommand::Refresh { .. });
            let result = session.decide(command);

            if was_revoked {
                // Nothing happens to a revoked session.
                let refused = matches!(
                    result,
                    Err(SessionError::Revoked { .. } | SessionError::AlreadyRevoked { .. })
                );
                prop_assert!(refused, "{result:?}");
                prop_assert!(!session.is_active(at));
                continue;
            }
            if is_refresh && !state.knows(&presented) {
                prop_assert_eq!(&result, &Err(SessionError::InvalidRefreshToken));
            }
            let Ok(events) = result else { continue };
            prop_assert_eq!(events.len(), 1);
            match &events[0] {
                SessionEvent::Refreshed { previous, grace_retry, .. } => {
                    prop_assert!(state.is_active(at), "refreshed an expired session");
                    if *grace_retry {
                        prop_assert_eq!(Some(*previous), state.previous_refresh_hash);
                        grace_retries_since_rotation += 1;
                        prop_assert!(grace_retries_since_rotation <= 1, "second grace retry");
                        prop_assert!(grace_secs > 0);
                    } else {
                        prop_assert_eq!(*previous, state.refresh_hash);
                        grace_retries_since_rotation = 0;
                    }
                }
                SessionEvent::Revoked { reason: RevokeReason::Expired, .. } => {
                    prop_assert!(state.is_expired(at));
                }
                SessionEvent::Revoked { reason: RevokeReason::ReuseDetected, .. } => {
                    prop_assert!(presented != state.refresh_hash);
                    prop_assert!(state.retired_refresh_hashes.contains(&presented));
                }
                SessionEvent::Revoked { .. } => prop_assert!(!is_refresh),
                other => prop_assert!(false, "unexpected {other:?}"),
            }
            for event in events {
                session.apply(event);
            }
        }
    }
}

// --- customers: active roles == default + grants - revokes - expired ---

#[derive(Clone, Debug)]
enum RoleOp {
    /// Role from a small pool, optional expiry relative to now (may be in the past).
    Grant {
        role: usize,
        expires_in: Option<i64>,
    },
    /// A grant made so far (index wraps), or an unknown one when none exist.
    Revoke(usize),
    Advance(i64),
}

const ROLES: [&str; 4] = ["admin", "support", "auditor", "antlers-user"];

fn role_op() -> impl Strategy<Value = RoleOp> {
    prop_oneof![
        3 => (0..ROLES.len(), prop::option::of(-50i64..500))
            .prop_map(|(role, expires_in)| RoleOp::Grant { role, expires_in }),
        2 => any::<usize>().prop_map(RoleOp::Revoke),
        2 => (0i64..300).prop_map(RoleOp::Advance),
    ]
}

struct ModelGrant {
    id: GrantId,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
}

fn model_roles(grants: &[ModelGrant], at: DateTime<Utc>) -> Vec<Role> {
    let mut roles = vec![Role::default_role()];
    roles.extend(
        grants
            .iter()
            .filter(|g| !g.revoked && g.expires_at.is_none_or(|e| at < e))
            .map(|g| g.role.clone()),
    );
    roles.sort();
    roles.dedup();
    roles
}

proptest! {
    #[test]
    fn active_roles_are_grants_minus_revokes_minus_expired(
        ops in prop::collection::vec(role_op(), 1..50)
    ) {
        let mut customer = registered_customer();
        let mut model: Vec<ModelGrant> = Vec::new();
        let mut now = 0i64;
        let mut next_grant = 0u128;

        for op in ops {
            let at = t(now);
            match op {
                RoleOp::Advance(secs) => now += secs,
                RoleOp::Grant { role, expires_in } => {
                    next_grant += 1;
                    let id = GrantId::from_uuid(uuid::Uuid::from_u128(next_grant));
                    let role = Role::parse(ROLES[role]).unwrap();
                    let expires_at = expires_in.map(|secs| t(now + secs));
                    let result = customer.decide(CustomerCommand::GrantRole {
                        grant_id: id,
                        role: role.clone(),
                        ticket_id: None,
                        reason: reason("prop"),
                        actor: actor("prop"),
                        expires_at,
                        at,
                    });
                    if expires_at.is_some_and(|e| e <= at) {
                        prop_assert_eq!(result, Err(CustomerError::ExpiryInPast));
                    } else {
                        for event in result.unwrap() {
                            customer.apply(event);
                        }
                        model.push(ModelGrant { id, role, expires_at, revoked: false });
                    }
                }
                RoleOp::Revoke(pick) => {
                    let target = if model.is_empty() {
                        None
                    } else {
                        Some(pick % model.len())
                    };
                    let id = target.map_or(GrantId::from_uuid(uuid::Uuid::from_u128(0)), |i| model[i].id);
                    let result = customer.decide(CustomerCommand::RevokeRole {
                        grant_id: id,
                        reason: reason("prop"),
                        actor: actor("prop"),
                        at,
                    });
                    match target {
                        None => prop_assert_eq!(result, Err(CustomerError::UnknownGrant(id))),
                        Some(i) if model[i].revoked => {
                            prop_assert_eq!(result, Err(CustomerError::GrantAlreadyRevoked(id)));
                        }
                        Some(i) => {
                            for event in result.unwrap() {
                                customer.apply(event);
                            }
                            model[i].revoked = true;
                        }
                    }
                }
            }
            for probe in [now, now + 1, now + 100, now + 1000] {
                prop_assert_eq!(customer.active_roles(t(probe)), model_roles(&model, t(probe)));
            }
        }
    }
}

// --- customers: a backup code redeems at most once ---

#[derive(Clone, Debug)]
enum CodeOp {
    Generate,
    /// A code of the current generation or `back` generations ago.
    Redeem {
        back: u32,
        index: usize,
    },
    Suspend,
    Reinstate,
}

fn code_op() -> impl Strategy<Value = CodeOp> {
    prop_oneof![
        1 => Just(CodeOp::Generate),
        6 => (0u32..3, 0usize..12).prop_map(|(back, index)| CodeOp::Redeem { back, index }),
        1 => Just(CodeOp::Suspend),
        1 => Just(CodeOp::Reinstate),
    ]
}

fn code(generation: u32, index: usize) -> SecretHash {
    h(&format!("gen{generation}-code{index}"))
}

proptest! {
    #[test]
    fn a_backup_code_redeems_at_most_once(ops in prop::collection::vec(code_op(), 1..80)) {
        let mut customer = registered_customer();
        let mut generation = 0u32;
        let mut redeemed: HashSet<(u32, u32)> = HashSet::new();
        let mut suspended = false;

        for (step, op) in ops.into_iter().enumerate() {
            let at = t(i64::try_from(step).unwrap());
            let command = match op {
                CodeOp::Generate => CustomerCommand::GenerateBackupCodes {
                    code_hashes: (0..10).map(|i| code(generation + 1, i)).collect(),
                    key_id: None,
                    at,
                },
                CodeOp::Redeem { back, index } => CustomerCommand::RedeemBackupCode {
                    code_hash: code(generation.saturating_sub(back), index),
                    at,
                },
                CodeOp::Suspend => CustomerCommand::Suspend { reason: reason("p"), actor: actor("p"), at },
                CodeOp::Reinstate => CustomerCommand::Reinstate { reason: reason("p"), actor: actor("p"), at },
            };
            let expected_redeem = match &command {
                CustomerCommand::RedeemBackupCode { code_hash, .. } => (0..10)
                    .find(|&i| code(generation, i) == *code_hash && generation > 0)
                    .map(|i| (generation, u32::try_from(i).unwrap()))
                    .filter(|key| !redeemed.contains(key) && !suspended),
                _ => None,
            };
            let is_redeem = matches!(command, CustomerCommand::RedeemBackupCode { .. });
            let result = customer.decide(command);
            if is_redeem && suspended {
                prop_assert_eq!(&result, &Err(CustomerError::Suspended));
            }
            if is_redeem && !suspended && expected_redeem.is_none() {
                prop_assert_eq!(&result, &Err(CustomerError::InvalidCode));
            }
            let Ok(events) = result else { continue };
            for event in &events {
                match event {
                    CustomerEvent::BackupCodeRedeemed { generation: g, index, .. } => {
                        prop_assert_eq!(*g, generation, "redeemed a voided code");
                        prop_assert!(redeemed.insert((*g, *index)), "code redeemed twice");
                        prop_assert_eq!(Some((*g, *index)), expected_redeem);
                    }
                    CustomerEvent::BackupCodesGenerated { generation: g, .. } => {
                        prop_assert_eq!(*g, generation + 1);
                        generation = *g;
                    }
                    CustomerEvent::Suspended { .. } => suspended = true,
                    CustomerEvent::Reinstated { .. } => suspended = false,
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            for event in events {
                customer.apply(event);
            }
            let unused = 10 - redeemed.iter().filter(|(g, _)| *g == generation).count();
            let expected_unused = if generation == 0 { 0 } else { unused };
            prop_assert_eq!(customer.state().unwrap().unused_backup_codes(), expected_unused);
        }
    }
}
