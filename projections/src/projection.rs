//! The projections by name, their tables, and the one place that
//! dispatches to each projection's module (`crate::customers`, …): applying
//! a batch and checksumming. Adding a projection is a module like those plus
//! a variant here.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ProjectionError, ProjectionResult};
use crate::events::Event;

/// One projection: a set of read tables kept by one runner with one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    Customers,
    Credentials,
    Sessions,
    Audit,
}

impl Projection {
    pub const ALL: [Projection; 4] = [
        Projection::Audit,
        Projection::Credentials,
        Projection::Customers,
        Projection::Sessions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Credentials => "credentials",
            Self::Sessions => "sessions",
            Self::Audit => "audit",
        }
    }

    /// The tables this projection owns.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Self::Customers => crate::customers::TABLES,
            Self::Credentials => crate::credentials::TABLES,
            Self::Sessions => crate::sessions::TABLES,
            Self::Audit => crate::audit::TABLES,
        }
    }

    /// How to checksum each of its tables as stored.
    pub(crate) fn stored_sums(self) -> &'static [crate::checksum::StoredSum] {
        match self {
            Self::Customers => crate::customers::STORED_SUMS,
            Self::Credentials => crate::credentials::STORED_SUMS,
            Self::Sessions => crate::sessions::STORED_SUMS,
            Self::Audit => crate::audit::STORED_SUMS,
        }
    }

    /// Whether events of this aggregate type matter to the projection.
    pub fn reads(self, aggregate_type: &str) -> bool {
        match self {
            Self::Customers => aggregate_type == "Customer",
            Self::Credentials => aggregate_type == "Credential",
            Self::Sessions => aggregate_type == "Session",
            Self::Audit => crate::events::KNOWN_TYPES.contains(&aggregate_type),
        }
    }

    /// The session advisory lock held by this projection's one active runner
    /// ("queuepr" + index; the sealer's is "queuseal").
    pub fn lock_key(self) -> i64 {
        let index = match self {
            Self::Customers => 1,
            Self::Credentials => 2,
            Self::Sessions => 3,
            Self::Audit => 4,
        };
        0x7175_6575_7072_0000 + index
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Projection {
    type Err = ProjectionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }
}

/// Why a batch could not be applied.
#[derive(Debug)]
pub enum BatchError {
    /// Event `index` of the batch cannot be applied (deterministic).
    Event {
        index: usize,
        error: ProjectionError,
    },
    /// Loading or writing failed.
    Database(ProjectionError),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

impl From<ProjectionError> for BatchError {
    fn from(e: ProjectionError) -> Self {
        Self::Database(e)
    }
}

/// Applies `events` (already decoded) to the projection's tables in `schema`.
pub async fn apply_batch(
    conn: &mut PgConnection,
    schema: &str,
    projection: Projection,
    events: &[Event],
) -> Result<(), BatchError> {
    match projection {
        Projection::Customers => crate::customers::apply::apply(conn, schema, events).await,
        Projection::Credentials => crate::credentials::apply::apply(conn, schema, events).await,
        Projection::Sessions => crate::sessions::apply::apply(conn, schema, events).await,
        Projection::Audit => crate::audit::apply::apply(conn, schema, events).await,
    }
}

/// Folds every event of a batch, naming the first that fails.
pub(crate) fn fold_all<F>(events: &[Event], mut apply: F) -> Result<(), BatchError>
where
    F: FnMut(&Event) -> ProjectionResult<()>,
{
    for (index, event) in events.iter().enumerate() {
        apply(event).map_err(|error| BatchError::Event { index, error })?;
    }
    Ok(())
}

/// The distinct stream ids (UUIDs) of `aggregate_type` in a batch.
pub(crate) fn stream_ids(events: &[Event], aggregate_type: &str) -> Vec<Uuid> {
    let ids: BTreeSet<Uuid> = events
        .iter()
        .filter(|e| e.meta.aggregate_type == aggregate_type)
        .filter_map(|e| Uuid::parse_str(&e.meta.aggregate_id).ok())
        .collect();
    ids.into_iter().collect()
}

/// The customers a batch names: every Customer stream it continues and the
/// owner named in the first event of a Credential or Session stream or in
/// an external audit event; the batch's rows need their tenants.
pub(crate) fn named_customers(events: &[Event]) -> BTreeSet<Uuid> {
    use crate::events::Body;
    use queue_domain::credential::CredentialEvent;
    use queue_domain::session::SessionEvent;
    use queue_domain::AuditEvent;
    let mut out = BTreeSet::new();
    for event in events {
        let named = match &event.body {
            Body::Customer(_) => Uuid::parse_str(&event.meta.aggregate_id).ok(),
            Body::Credential(
                CredentialEvent::Registered { customer_id, .. }
                | CredentialEvent::Imported { customer_id, .. },
            )
            | Body::Session(
                SessionEvent::Created { customer_id, .. }
                | SessionEvent::Imported { customer_id, .. },
            ) => Some(*customer_id.as_uuid()),
            Body::Audit(AuditEvent::Recorded { customer_id, .. }) => {
                customer_id.map(|c| *c.as_uuid())
            }
            _ => None,
        };
        out.extend(named);
    }
    out
}
