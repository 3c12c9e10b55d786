//! A small command executor over the chained event store: load a stream and
//! fold it (with the domain's upcasters), run a command, and append the
//! events of one or more streams in one transaction. Authentication
//! decisions always come from here (the event streams), never from read
//! tables, which lag.

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use queue_domain::types::{CredentialId, CustomerId, Email, SessionId};
use queue_domain::{Credential, Customer, Session};
use queue_eventstore::{ChainedEventRepository, StoreError};
use sqlx::{PgConnection, PgPool, Row};

/// One loaded stream: the folded aggregate and how many events it has.
#[derive(Debug)]
pub struct Loaded<A: Aggregate> {
    pub id: String,
    pub aggregate: A,
    pub version: usize,
}

impl<A: Aggregate<Services = ()>> Loaded<A> {
    pub fn is_new(&self) -> bool {
        self.version == 0
    }

    /// Runs a command on the aggregate; on success the events are applied
    /// (not yet stored: add them to a [`Batch`]).
    pub async fn execute(&mut self, command: A::Command) -> Result<Vec<A::Event>, A::Error> {
        let sink = EventSink::default();
        self.aggregate.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    }
}

/// Events of one or more streams that commit together.
#[derive(Default)]
pub struct Batch {
    events: Vec<SerializedEvent>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add<A: Aggregate>(
        &mut self,
        loaded: &mut Loaded<A>,
        events: &[A::Event],
    ) -> Result<(), StoreError> {
        for event in events {
            let payload = serde_json::to_value(event)
                .map_err(|e| StoreError::InvalidEvent(format!("cannot serialise event: {e}")))?;
            loaded.version += 1;
            self.events.push(SerializedEvent {
                aggregate_id: loaded.id.clone(),
                sequence: loaded.version,
                aggregate_type: A::TYPE.to_owned(),
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload,
                metadata: serde_json::json!({}),
            });
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[derive(Clone)]
pub struct Store {
    repo: ChainedEventRepository,
    upcasters: Arc<Vec<Box<dyn EventUpcaster>>>,
}

const SELECT_STREAMS: &str = "SELECT aggregate_id, sequence, event_type, event_version, payload \
     FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2) \
     ORDER BY aggregate_id, sequence";

impl Store {
    pub fn new(repo: ChainedEventRepository) -> Self {
        Self {
            repo,
            upcasters: Arc::new(queue_domain::upcasters()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.repo.pool()
    }

    pub fn repo(&self) -> &ChainedEventRepository {
        &self.repo
    }

    /// Loads one stream (empty aggregate if it has no events).
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let mut all = self.load_many_in::<A>(&mut conn, &[id.to_owned()]).await?;
        Ok(all.pop().unwrap_or_else(|| Loaded {
            id: id.to_owned(),
            aggregate: A::default(),
            version: 0,
        }))
    }

    /// Loads several streams of one type in one query, in the order of `ids`.
    pub async fn load_many<A: Aggregate>(
        &self,
        ids: &[String],
    ) -> Result<Vec<Loaded<A>>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        self.load_many_in(&mut conn, ids).await
    }

    pub async fn load_many_in<A: Aggregate>(
        &self,
        conn: &mut PgConnection,
        ids: &[String],
    ) -> Result<Vec<Loaded<A>>, StoreError> {
        let rows = sqlx::query(SELECT_STREAMS)
            .bind(A::TYPE)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        let mut folded: HashMap<String, Loaded<A>> = ids
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    Loaded {
                        id: id.clone(),
                        aggregate: A::default(),
                        version: 0,
                    },
                )
            })
            .collect();
        for row in rows {
            let id: String = row.try_get("aggregate_id")?;
            let sequence: i64 = row.try_get("sequence")?;
            let mut event = SerializedEvent {
                aggregate_id: id.clone(),
                sequence: usize::try_from(sequence)
                    .map_err(|_| StoreError::Ledger("negative sequence".into()))?,
                aggregate_type: A::TYPE.to_owned(),
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                payload: row.try_get("payload")?,
                metadata: serde_json::json!({}),
            };
            for upcaster in self.upcasters.iter() {
                if upcaster.can_upcast(&event.event_type, &event.event_version) {
                    event = upcaster.upcast(event);
                }
            }
            let domain_event: A::Event = serde_json::from_value(event.payload).map_err(|e| {
                StoreError::Ledger(format!(
                    "{} {id} event {sequence} ({}) does not deserialise: {e}",
                    A::TYPE,
                    event.event_type
                ))
            })?;
            if let Some(loaded) = folded.get_mut(&id) {
                loaded.aggregate.apply(domain_event);
                loaded.version = event.sequence;
            }
        }
        Ok(ids.iter().filter_map(|id| folded.remove(id)).collect())
    }

    /// Appends a batch atomically (one transaction).
    pub async fn append(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.repo.append(&batch.events).await?;
        Ok(())
    }

    /// Appends a batch inside the caller's transaction.
    pub async fn append_in(&self, conn: &mut PgConnection, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.repo.append_in(conn, &batch.events).await?;
        Ok(())
    }

    pub async fn customer(&self, id: CustomerId) -> Result<Loaded<Customer>, StoreError> {
        self.load(&id.to_string()).await
    }

    pub async fn credential(&self, id: CredentialId) -> Result<Loaded<Credential>, StoreError> {
        self.load(&id.to_string()).await
    }

    pub async fn session(&self, id: SessionId) -> Result<Loaded<Session>, StoreError> {
        self.load(&id.to_string()).await
    }

    /// The customer registered (or imported) with this email, read from the
    /// events themselves (the unique email index makes this consistent).
    pub async fn customer_by_email(&self, email: &Email) -> Result<Option<CustomerId>, StoreError> {
        let row: Option<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = 'Customer' \
             AND event_type IN ('CustomerRegistered', 'CustomerImported') \
             AND lower(coalesce(payload->'CustomerRegistered'->>'email', \
                                payload->'CustomerImported'->>'email')) = $1",
        )
        .bind(email.as_str())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|id| id.parse().ok()))
    }

    /// Every passkey stream ever registered to the customer (including revoked).
    pub async fn credential_ids_of(
        &self,
        conn: &mut PgConnection,
        customer: CustomerId,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = 'Credential' \
             AND event_type IN ('CredentialRegistered', 'CredentialImported') \
             AND coalesce(payload->'CredentialRegistered'->>'customer_id', \
                          payload->'CredentialImported'->>'customer_id') = $1 \
             ORDER BY recorded_at, aggregate_id",
        )
        .bind(customer.to_string())
        .fetch_all(&mut *conn)
        .await?;
        Ok(ids)
    }

    /// The customer's passkeys that are registered and not revoked.
    pub async fn usable_credentials_of(
        &self,
        conn: &mut PgConnection,
        customer: CustomerId,
    ) -> Result<Vec<Loaded<Credential>>, StoreError> {
        let ids = self.credential_ids_of(conn, customer).await?;
        let all = self.load_many_in::<Credential>(conn, &ids).await?;
        Ok(all
            .into_iter()
            .filter(|c| c.aggregate.is_usable())
            .collect())
    }

    /// Every session stream of the customer (including ended ones), from the
    /// event log: for decisions that must see every session, e.g. revoking
    /// them all on suspension (issue 7).
    pub async fn sessions_of(
        &self,
        customer: CustomerId,
    ) -> Result<Vec<Loaded<Session>>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        self.sessions_of_in(&mut conn, customer).await
    }

    /// [`Store::sessions_of`] on the caller's connection (or transaction).
    pub async fn sessions_of_in(
        &self,
        conn: &mut PgConnection,
        customer: CustomerId,
    ) -> Result<Vec<Loaded<Session>>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = 'Session' \
             AND event_type IN ('SessionCreated', 'SessionImported') \
             AND coalesce(payload->'SessionCreated'->>'customer_id', \
                          payload->'SessionImported'->>'customer_id') = $1 \
             ORDER BY recorded_at, aggregate_id",
        )
        .bind(customer.to_string())
        .fetch_all(&mut *conn)
        .await?;
        self.load_many_in::<Session>(conn, &ids).await
    }

    /// How many events the store holds (tests check failed requests left it unchanged).
    pub async fn event_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(self.pool())
            .await?)
    }
}
