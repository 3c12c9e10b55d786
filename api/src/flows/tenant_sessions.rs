//! Ending a tenant's sessions at once (an incident: the tenant's IdP key
//! leaked, its connection is being replaced, everyone must sign in again):
//! `SessionRevoked { Admin }` on every live session of the tenant's
//! customers, or only those a SAML login created, and one Queue audit event
//! naming the tenant, the caller and the reason.
//!
//! The sessions projection nominates the candidates, with the Session
//! streams the log began after its checkpoint (so a stalled projector
//! misses none); each is decided on its verified Session aggregate and its
//! customer's verified tenant, never on the read row.

use chrono::{DateTime, Utc};
use queue_domain::session::{AuthMethod, RevokeReason, SessionCommand, SessionStatus};
use queue_domain::types::{Reason, ServiceName, TenantId};
use queue_domain::{Customer, Session};
use queue_eventstore::{Batch, Loaded};
use serde_json::json;
use uuid::Uuid;

use crate::flows::queue_audit::{self, QueueAudit};
use crate::http::error::ApiError;
use crate::state::AppState;

/// Sessions revoked per transaction.
const CHUNK: usize = 100;

/// Revokes the tenant's live sessions (only SAML ones with `saml_only`);
/// returns how many.
pub async fn end_sessions(
    state: &AppState,
    tenant_id: TenantId,
    saml_only: bool,
    reason: &Reason,
    caller: &ServiceName,
) -> Result<usize, ApiError> {
    let now = state.now();
    let candidates = queue_projections::read::session_candidates_of_tenant(
        &state.pool,
        *tenant_id.as_uuid(),
        saml_only,
        now,
    )
    .await?;
    let mut revoked = 0;
    for chunk in candidates.chunks(CHUNK) {
        // A session refreshed meanwhile: the chunk is read and decided again.
        revoked +=
            super::again_on_conflict(|| end_chunk(state, tenant_id, chunk, saml_only, now)).await?;
    }
    queue_audit::record(
        state,
        QueueAudit {
            key: &format!("tenant-sessions-revoked:{}", Uuid::new_v4()),
            action: "tenant.sessions_revoked",
            target: &format!("tenant:{tenant_id}"),
            customer_id: None,
            tenant_id: Some(tenant_id),
            metadata: json!({
                "reason": reason.to_string(),
                "service": caller.as_str(),
                "saml_only": saml_only,
                "revoked": revoked,
            }),
        },
        now,
    )
    .await?;
    Ok(revoked)
}

/// One transaction: the chunk's sessions that are live, of a customer of
/// the tenant (and SAML ones with `saml_only`), as their streams say.
async fn end_chunk(
    state: &AppState,
    tenant_id: TenantId,
    chunk: &[(Uuid, Uuid)],
    saml_only: bool,
    now: DateTime<Utc>,
) -> Result<usize, ApiError> {
    let store = state.store();
    let session_ids: Vec<String> = chunk.iter().map(|(s, _)| s.to_string()).collect();
    let sessions: Vec<Loaded<Session>> = store.load_many(&session_ids).await?;
    let customer_ids: Vec<String> = sessions
        .iter()
        .filter_map(|s| s.aggregate.state().map(|s| s.customer_id.to_string()))
        .collect();
    let in_tenant: std::collections::HashSet<Uuid> = store
        .load_many::<Customer>(&customer_ids)
        .await?
        .iter()
        .filter_map(|c| c.aggregate.state())
        .filter(|c| c.tenant_id == tenant_id)
        .map(|c| *c.customer_id.as_uuid())
        .collect();
    let mut batch = Batch::new();
    let mut revoked = 0;
    for mut session in sessions {
        let ends = session.aggregate.state().is_some_and(|s| {
            matches!(s.status(now), SessionStatus::Active)
                && in_tenant.contains(s.customer_id.as_uuid())
                && (!saml_only || s.method == Some(AuthMethod::Saml))
        });
        if !ends {
            continue;
        }
        let events = session
            .execute(SessionCommand::Revoke {
                reason: RevokeReason::Admin,
                at: now,
            })
            .await?;
        batch.add(&mut session, &events)?;
        revoked += 1;
    }
    if revoked > 0 {
        store.append(batch).await?;
    }
    Ok(revoked)
}
