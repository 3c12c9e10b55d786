//! Order-independent content checksums of tables: the sum (mod 2^128) of
//! the first 16 bytes of SHA-256 over each row's binary COPY tuple (fields
//! in column order, JSON object keys sorted), with the row count. Equal
//! tables give equal sums whatever order rows are
//! read or written in; a changed, missing or extra row changes the sum.

use std::borrow::Cow;
use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::ProjectionResult;
use crate::projection::Projection;
use crate::row::{select_list, CopyRow, Row};
use crate::table::{qualified, Table};

/// Whether storage positions count: `Local` compares two sets of tables
/// over the same event table; `Portable` compares across databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Local,
    Portable,
}

/// Row count and checksum of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum {
    pub rows: u64,
    pub sum: u128,
}

impl Sum {
    pub fn add<R: Row>(&mut self, row: &R, mode: Mode) {
        let row: Cow<'_, R> = row.for_checksum(mode == Mode::Portable);
        // The row's binary COPY tuple: every field in column order with its
        // length (NULL distinct from empty), JSON values key-sorted, so
        // equal rows give equal bytes. Much cheaper than JSON text (no
        // number, time or UUID formatting), and independent of the write
        // path all the same: rows read back are decoded by sqlx first.
        let mut bytes = Vec::with_capacity(512);
        let mut tuple = CopyRow::new(&mut bytes, R::COLUMNS.len());
        row.copy_binary(&mut tuple);
        let digest = Sha256::digest(&bytes);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        self.rows += 1;
        self.sum = self.sum.wrapping_add(u128::from_be_bytes(first));
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// Checksums by table name.
pub type Sums = BTreeMap<&'static str, Sum>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableSum {
    pub table: String,
    pub rows: u64,
    pub checksum: String,
}

pub fn to_report(sums: &Sums) -> Vec<TableSum> {
    sums.iter()
        .map(|(table, sum)| TableSum {
            table: (*table).to_owned(),
            rows: sum.rows,
            checksum: sum.hex(),
        })
        .collect()
}

/// The checksum of a table held in memory.
pub(crate) fn table_sum<R: Row>(table: &Table<R>, mode: Mode) -> Sum {
    let mut sum = Sum::default();
    for row in table.values() {
        sum.add(row, mode);
    }
    sum
}

/// The checksum of a table as stored in `schema`.
async fn db_sum<R: Row>(
    conn: &mut PgConnection,
    schema: &str,
    mode: Mode,
) -> ProjectionResult<Sum> {
    let sql = format!(
        "SELECT {} FROM {}",
        select_list::<R>(None),
        qualified(schema, R::TABLE)
    );
    let mut sum = Sum::default();
    let mut rows = sqlx::query_as::<_, R>(&sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        sum.add(&row, mode);
    }
    Ok(sum)
}

/// Reads one table as stored in a schema and checksums it: `(table, sum)`.
/// Each projection lists one per table (`STORED_SUMS`).
pub type StoredSum = for<'c> fn(
    &'c mut PgConnection,
    &'c str,
    Mode,
) -> BoxFuture<'c, ProjectionResult<(&'static str, Sum)>>;

/// The [`StoredSum`] of `R`'s table.
pub fn stored_sum<'c, R: Row>(
    conn: &'c mut PgConnection,
    schema: &'c str,
    mode: Mode,
) -> BoxFuture<'c, ProjectionResult<(&'static str, Sum)>> {
    Box::pin(async move { Ok((R::TABLE, db_sum::<R>(conn, schema, mode).await?)) })
}

/// Reads the projection's tables in `schema` and checksums them.
pub async fn database_sums(
    conn: &mut PgConnection,
    schema: &str,
    projection: Projection,
    mode: Mode,
    out: &mut Sums,
) -> ProjectionResult<()> {
    for stored_sum in projection.stored_sums() {
        let (table, sum) = stored_sum(conn, schema, mode).await?;
        out.insert(table, sum);
    }
    Ok(())
}

/// Differences between two sets of sums, one line each (empty when equal).
pub fn differences(left_name: &str, left: &Sums, right_name: &str, right: &Sums) -> Vec<String> {
    let mut out = Vec::new();
    let tables: std::collections::BTreeSet<&&str> = left.keys().chain(right.keys()).collect();
    for table in tables {
        match (left.get(*table), right.get(*table)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => out.push(format!(
                "{table}: {left_name} has {} rows (checksum {}), {right_name} has {} rows (checksum {})",
                a.rows,
                a.hex(),
                b.rows,
                b.hex()
            )),
            (Some(_), None) => out.push(format!("{table}: missing from {right_name}")),
            (None, Some(_)) => out.push(format!("{table}: missing from {left_name}")),
            (None, None) => {}
        }
    }
    out
}
