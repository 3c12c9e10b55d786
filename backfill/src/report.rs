//! What a backfill run did, per legacy table.

use serde::Serialize;

/// One legacy row that was not imported, and why. `reason` is a stable code
/// (see docs/decisions/0800-backfill.md); `detail` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub legacy_id: i64,
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableReport {
    pub table: &'static str,
    /// Rows read from the legacy table.
    pub read: u64,
    /// Rows whose events this run appended (or would append, in a dry run).
    pub imported: u64,
    /// Rows an earlier run already imported (their streams exist).
    pub skipped: u64,
    pub rejected: Vec<Rejection>,
}

impl TableReport {
    pub fn new(table: &'static str) -> Self {
        Self {
            table,
            ..Self::default()
        }
    }

    pub(crate) fn reject(&mut self, legacy_id: i64, reason: &'static str, detail: String) {
        self.rejected.push(Rejection {
            legacy_id,
            reason,
            detail,
        });
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// customers, webauthn_credentials, customer_sessions, rbac_grants, in that order.
    pub tables: Vec<TableReport>,
    /// Events appended by this run (0 in a dry run, and on a re-run).
    pub events_appended: u64,
    pub elapsed_ms: u64,
    /// Legacy rows read per second over the whole run.
    pub rows_per_second: u64,
}

impl Report {
    pub fn table(&self, name: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == name)
    }

    pub fn rejected_count(&self) -> usize {
        self.tables.iter().map(|t| t.rejected.len()).sum()
    }

    pub fn rows_read(&self) -> u64 {
        self.tables.iter().map(|t| t.read).sum()
    }
}
