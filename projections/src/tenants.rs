//! Which tenant each customer belongs to (issue 22, ADR 0219): every read
//! row carries its customer's `tenant_id`, so row-level security can key on
//! it. A customer's tenant is named once, by the first event of its stream
//! (`CustomerRegistered` / `CustomerProvisioned` / `CustomerImported`;
//! absent means the default tenant) and never changes, so a Credential, Session or Audit row takes
//! it from there. The folds stay pure: the caller loads the tenants of the
//! customers a batch (or a whole log) names before folding, as the audit
//! fold's stream owners are loaded.

use std::collections::HashMap;

use queue_domain::types::TenantId;
use queue_eventstore::feed::Position;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::ProjectionResult;
use crate::events::Meta;
use crate::table::Fast;

/// The tenant of a Customer stream's first event, as SQL (a stored event
/// without `tenant_id` is the default tenant's, as when it is decoded).
const TENANT_OF_FIRST_EVENT: &str = "coalesce(payload->'CustomerRegistered'->>'tenant_id', \
     payload->'CustomerProvisioned'->>'tenant_id', payload->'CustomerImported'->>'tenant_id')";

/// Customer id → tenant id.
#[derive(Clone, Debug, Default)]
pub struct CustomerTenants {
    tenants: HashMap<Uuid, Uuid, Fast>,
}

impl CustomerTenants {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, customer_id: Uuid, tenant_id: Uuid) {
        self.tenants.insert(customer_id, tenant_id);
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The customer's tenant, if its stream has begun.
    pub fn get(&self, customer_id: Uuid) -> Option<Uuid> {
        self.tenants.get(&customer_id).copied()
    }

    /// The customer's tenant; an event that names a customer whose stream
    /// never began cannot be placed in a tenant, and stops its projection.
    pub fn of(&self, meta: &Meta, customer_id: Uuid) -> ProjectionResult<Uuid> {
        self.get(customer_id).ok_or_else(|| {
            meta.error(format!(
                "customer {customer_id} has no first event (its tenant is unknown)"
            ))
        })
    }

    /// The tenants of `customers`, from their streams' first events.
    pub async fn load(conn: &mut PgConnection, customers: &[Uuid]) -> ProjectionResult<Self> {
        let mut out = Self::new();
        if customers.is_empty() {
            return Ok(out);
        }
        let ids: Vec<String> = customers.iter().map(Uuid::to_string).collect();
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT aggregate_id, {TENANT_OF_FIRST_EVENT} FROM events \
             WHERE aggregate_type = 'Customer' AND aggregate_id = ANY($1) AND sequence = 1"
        ))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(rows);
        Ok(out)
    }

    /// The tenant of every customer whose stream began at or before `end`
    /// (a whole-log fold: rebuild and its validation).
    pub async fn load_until(conn: &mut PgConnection, end: Position) -> ProjectionResult<Self> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT aggregate_id, {TENANT_OF_FIRST_EVENT} FROM events \
             WHERE aggregate_type = 'Customer' AND sequence = 1 \
             AND (commit_xid, insert_id) <= ($1, $2)"
        ))
        .bind(end.commit_xid)
        .bind(end.insert_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Self::new();
        out.extend(rows);
        Ok(out)
    }

    /// Rows of (stream id, tenant or none for the default tenant); a stream
    /// id or tenant that is not a UUID is left out (its events fail to
    /// decode on their own).
    fn extend(&mut self, rows: Vec<(String, Option<String>)>) {
        for (customer, tenant) in rows {
            let Ok(customer) = Uuid::parse_str(&customer) else {
                continue;
            };
            let tenant = match tenant {
                None => *TenantId::DEFAULT.as_uuid(),
                Some(raw) => match Uuid::parse_str(&raw) {
                    Ok(tenant) => tenant,
                    Err(_) => continue,
                },
            };
            self.insert(customer, tenant);
        }
    }
}

/// The per-transaction setting row-level security reads (migration 0332).
pub const TENANTS_SETTING: &str = "queue.tenant_ids";

/// Binds the rest of the transaction on `conn` to `tenants`: the service
/// role's reads of the read tables see only their rows, whatever the query
/// says (a forgotten `WHERE` included). Must run inside a transaction: the
/// setting ends with it. An empty list binds to no tenant (the nil id),
/// never to all.
pub async fn bind_to_tenants(conn: &mut PgConnection, tenants: &[Uuid]) -> ProjectionResult<()> {
    let list = if tenants.is_empty() {
        Uuid::nil().to_string()
    } else {
        tenants
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(TENANTS_SETTING)
        .bind(list)
        .execute(conn)
        .await?;
    Ok(())
}
