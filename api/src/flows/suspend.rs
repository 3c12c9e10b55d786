//! Suspending a customer: `CustomerSuspended` and a `SessionRevoked
//! { Suspended }` for every live session of the customer in one transaction
//! (one [`Batch`]): either the customer is suspended with every session
//! ended, or nothing changed. Logins re-check under the customer's shared
//! lock (`flows::login::append_login`), so none slips in between.

use queue_domain::customer::CustomerCommand;
use queue_domain::session::{RevokeReason, SessionCommand, SessionStatus};
use queue_domain::types::{Actor, CustomerId, Reason};
use queue_domain::Customer;
use queue_eventstore::Batch;

use crate::auth::service::TenantLimit;
use crate::http::error::ApiError;
use crate::state::AppState;

/// Suspends the customer; returns how many live sessions it revoked. A
/// customer outside `tenants` is not found.
pub async fn suspend(
    state: &AppState,
    customer_id: CustomerId,
    reason: Reason,
    actor: Actor,
    tenants: &TenantLimit,
) -> Result<usize, ApiError> {
    // A session refreshed between our read and our append makes the append
    // fail on its version: read again and decide again.
    super::again_on_conflict(|| {
        suspend_once(state, customer_id, reason.clone(), actor.clone(), tenants)
    })
    .await
}

/// One suspension attempt in one transaction: the customer and its
/// sessions are read under the customer's exclusive lock, so no login can
/// add a session that this suspension does not revoke.
async fn suspend_once(
    state: &AppState,
    customer_id: CustomerId,
    reason: Reason,
    actor: Actor,
    tenants: &TenantLimit,
) -> Result<usize, ApiError> {
    let now = state.now();
    let store = state.store();
    let mut tx = state.pool.begin().await?;
    crate::db::lock(&mut tx, crate::db::Lock::Customer, &customer_id.to_string()).await?;
    let mut customer = store
        .load_many_in::<Customer>(&mut tx, &[customer_id.to_string()])
        .await?
        .pop()
        .filter(|c| {
            c.aggregate
                .state()
                .is_some_and(|state| tenants.allows(state.tenant_id))
        })
        .ok_or(ApiError::NotFound)?;
    let events = customer
        .execute(CustomerCommand::Suspend {
            reason,
            actor,
            at: now,
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    let mut revoked = 0usize;
    for mut session in store.sessions_of_in(&mut tx, customer_id).await? {
        let live = session
            .aggregate
            .state()
            .is_some_and(|s| matches!(s.status(now), SessionStatus::Active));
        if !live {
            continue;
        }
        let events = session
            .execute(SessionCommand::Revoke {
                reason: RevokeReason::Suspended,
                at: now,
            })
            .await?;
        batch.add(&mut session, &events)?;
        revoked += 1;
    }
    store.append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(revoked)
}
