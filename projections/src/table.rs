//! One table's rows in memory (what the folds work on) and in the database
//! (loading the rows a batch can reach, writing back the changed ones),
//! for any [`Row`] type. Plus the small helpers every fold uses.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ProjectionError, ProjectionResult};
use crate::events::Meta;
use crate::row::{db_time, select_list, Row};

/// A fast, randomly seeded hasher: the folds never depend on iteration order.
pub(crate) type Fast = foldhash::fast::RandomState;

/// One table's rows held in memory; remembers which rows changed when
/// `track` is on (the runner writes only those back).
#[derive(Debug)]
pub struct Table<R: Row> {
    pub rows: HashMap<R::Key, R, Fast>,
    dirty: HashSet<R::Key, Fast>,
    track: bool,
}

impl<R: Row> Table<R> {
    pub fn new(track: bool) -> Self {
        Self {
            rows: HashMap::default(),
            dirty: HashSet::default(),
            track,
        }
    }

    /// Adds a row read from the database (not dirty).
    pub fn load(&mut self, row: R) {
        self.rows.insert(row.key(), row);
    }

    pub fn contains(&self, key: &R::Key) -> bool {
        self.rows.contains_key(key)
    }

    pub fn get(&self, key: &R::Key) -> Option<&R> {
        self.rows.get(key)
    }

    pub fn get_mut(&mut self, key: &R::Key) -> Option<&mut R> {
        let row = self.rows.get_mut(key)?;
        if self.track {
            self.dirty.insert(key.clone());
        }
        Some(row)
    }

    /// Inserts a new row; `false` if the key was taken (nothing changes).
    pub fn insert(&mut self, row: R) -> bool {
        let key = row.key();
        if self.rows.contains_key(&key) {
            return false;
        }
        if self.track {
            self.dirty.insert(key.clone());
        }
        self.rows.insert(key, row);
        true
    }

    /// The changed rows.
    pub fn dirty_rows(&self) -> Vec<&R> {
        self.dirty.iter().filter_map(|k| self.rows.get(k)).collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &R> {
        self.rows.values()
    }
}

pub(crate) fn stream_uuid(meta: &Meta) -> ProjectionResult<Uuid> {
    Uuid::parse_str(&meta.aggregate_id).map_err(|_| meta.error("the stream id is not a UUID"))
}

pub(crate) fn t(at: &DateTime<Utc>) -> DateTime<Utc> {
    db_time(*at)
}

pub(crate) fn after_secs(at: &DateTime<Utc>, secs: u32) -> DateTime<Utc> {
    db_time(*at + Duration::seconds(i64::from(secs)))
}

/// `schema.table`, both internal identifiers (never user input).
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{schema}.{table}")
}

/// Loads the rows of `R`'s table in `schema` that match `condition` (`$1`
/// bound to `bind`).
pub(crate) async fn load<R: Row>(
    conn: &mut PgConnection,
    table: &mut Table<R>,
    schema: &str,
    condition: &str,
    bind: impl for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
) -> ProjectionResult<()> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {condition}",
        select_list::<R>(None),
        qualified(schema, R::TABLE)
    );
    let rows: Vec<R> = sqlx::query_as(&sql)
        .bind(bind)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        table.load(row);
    }
    Ok(())
}

/// Writes the changed rows back (insert or update by primary key).
pub async fn upsert<R: Row>(
    conn: &mut PgConnection,
    schema: &str,
    rows: &[&R],
) -> ProjectionResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let table = qualified(schema, R::TABLE);
    let columns = R::COLUMNS.join(", ");
    let updates: Vec<String> = R::COLUMNS
        .iter()
        .filter(|c| !R::KEY.contains(c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    // `json`, not `jsonb`: a `json` column then receives the very text
    // serde_json wrote (compact, keys sorted), the same bytes the rebuild's
    // COPY writes, so live and rebuilt tables are identical byte for byte
    // (jsonb's text form would add spaces: `{"a": 1}`).
    let sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} \
         FROM json_populate_recordset(NULL::{table}, $1::text::json) \
         ON CONFLICT ({}) {conflict}",
        R::KEY.join(", ")
    );
    let text = serde_json::to_string(rows)
        .map_err(|e| ProjectionError::Database(sqlx::Error::Encode(Box::new(e))))?;
    sqlx::query(&sql).bind(text).execute(&mut *conn).await?;
    Ok(())
}

pub(crate) async fn write<R: Row>(
    conn: &mut PgConnection,
    schema: &str,
    table: &Table<R>,
) -> ProjectionResult<()> {
    upsert(conn, schema, &table.dirty_rows()).await
}
