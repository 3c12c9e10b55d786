//! The founders gate (FLAG_FOUNDERS_GATE, FOUNDERS_COHORT_THRESHOLD): a new
//! customer's registration is admitted only while fewer than the threshold
//! exist, exactly under concurrency. The check is a conditional increment of
//! one counter row (`founders_gate`, migration 0204) in the same transaction
//! as the CustomerRegistered append, so a rolled-back registration gives its
//! place back and two registrations can never take the last place. Only
//! gated registrations wait on that row lock; no other write does.
//!
//! With FOUNDERS_COUNT_VERIFIED_ONLY (the default, issue 17) the gate
//! counts customers whose email is verified instead (row 2, migration 0304):
//! a registration is admitted while fewer than the threshold are verified
//! and takes no place itself; the count goes up in the same transaction as
//! each EmailVerified append ([`append_verification`]), so it is exact under
//! concurrency, and scripted sign-ups that never verify cannot fill the
//! cohort. Customers who registered while it was open and verify after it
//! filled are not turned away, so the cohort may end a little above the
//! threshold (by the registrations pending verification at that moment).
//!
//! Refused: 403 founders_cohort_full and an audit event
//! `founders.gate.rejected`. If the counter cannot be read or written (a
//! statement error, not an outage) the registration fails open as ADR-0094
//! decided, with an audit event `founders.gate.check_failed` in the same
//! transaction.

use chrono::{DateTime, Utc};
use queue_domain::types::CustomerId;
use sqlx::Acquire;

use crate::db;
use crate::flows::queue_audit::{self, QueueAudit};
use crate::http::error::ApiError;
use crate::state::AppState;
use queue_eventstore::Batch;

/// Whether the error is the statement's (fail open) rather than the
/// store's (unavailable: the caller retries).
fn is_statement_error(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(_))
}

/// Appends an email verification `batch`, counting the customer into the
/// verified-founders counter in the same transaction. A statement error
/// (not an outage) appends without counting, logged (fail open, as the gate).
pub async fn append_verification(state: &AppState, batch: Batch) -> Result<(), ApiError> {
    let mut tx = state.pool.begin().await?;
    {
        let mut savepoint = tx.begin().await?;
        let result: Result<(), sqlx::Error> = async {
            db::seed_counter(&mut savepoint, db::Counter::Verified).await?;
            db::count_verified(&mut savepoint).await
        }
        .await;
        match result {
            Ok(()) => savepoint.commit().await?,
            Err(e) if is_statement_error(&e) => {
                savepoint.rollback().await?;
                tracing::warn!(error = %e, "founders gate: verified count not updated");
            }
            Err(e) => return Err(e.into()),
        }
    }
    state.store().append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(())
}

/// Appends a new customer's registration `batch` through the founders gate.
/// `attempt` identifies the attempt (the challenge id) for the audit keys.
pub async fn append_registration(
    state: &AppState,
    mut batch: Batch,
    customer_id: CustomerId,
    attempt: &str,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let threshold = i64::from(state.config().founders_cohort_threshold);
    let mut tx = state.pool.begin().await?;
    let admitted = {
        let mut savepoint = tx.begin().await?;
        let verified_only = state.config().founders_count_verified_only;
        let result: Result<bool, sqlx::Error> = async {
            if verified_only {
                db::seed_counter(&mut savepoint, db::Counter::Verified).await?;
                let open = db::verified_below(&mut savepoint, threshold).await?;
                return Ok(open.unwrap_or(true));
            }
            // The count of customers seeds the counter once (only while
            // there is no counter row; see `db::seed_counter`).
            db::seed_counter(&mut savepoint, db::Counter::Customers).await?;
            let used = db::take_founders_seat(&mut savepoint, threshold).await?;
            Ok(used.is_some())
        }
        .await;
        match result {
            Ok(admitted) => {
                savepoint.commit().await?;
                Some(admitted)
            }
            Err(e) if is_statement_error(&e) => {
                savepoint.rollback().await?;
                tracing::warn!(error = %e, "founders gate check failed; registration admitted (fail open)");
                None
            }
            Err(e) => return Err(e.into()),
        }
    };
    match admitted {
        Some(true) => {}
        Some(false) => {
            tx.rollback().await?;
            queue_audit::record(
                state,
                QueueAudit {
                    key: &format!("founders-gate-rejected:{attempt}"),
                    action: "founders.gate.rejected",
                    target: "registration",
                    customer_id: None,
                    // The public registration is the default tenant's.
                    tenant_id: Some(queue_domain::types::TenantId::DEFAULT),
                    metadata: serde_json::json!({
                        "threshold": threshold,
                        "customer_id": customer_id.to_string(),
                    }),
                },
                now,
            )
            .await?;
            return Err(ApiError::FoundersCohortFull);
        }
        None => {
            let (mut audit, events) = queue_audit::event(
                state,
                QueueAudit {
                    key: &format!("founders-gate-check-failed:{attempt}"),
                    action: "founders.gate.check_failed",
                    target: &format!("customer:{customer_id}"),
                    customer_id: Some(customer_id),
                    tenant_id: None,
                    metadata: serde_json::json!({ "threshold": threshold }),
                },
                now,
            )
            .await?;
            batch.add(&mut audit, &events)?;
        }
    }
    state.store().append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(())
}
