//! The database roles of migration 0315 (ADR 0212), tried over real LOGIN
//! connections: what each role may write, and that the rest is refused by
//! PostgreSQL's privileges (not only by the append-only triggers, which the
//! owner can disable).

use queue_eventstore::roles::{dev_login, ensure_dev_logins, Role, DEV_PASSWORD};
use queue_eventstore::{Checkpoint, CheckpointSigner, ProblemKind};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::helpers::*;

/// A connection to this test's database as `role`'s development LOGIN role.
async fn login(pool: &PgPool, role: Role) -> PgPool {
    ensure_dev_logins(pool).await.unwrap();
    let options = (*pool.connect_options())
        .clone()
        .username(dev_login(role))
        .password(DEV_PASSWORD);
    let as_role = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&as_role)
        .await
        .unwrap();
    assert_eq!(user, dev_login(role));
    as_role
}

/// `sql` run as the role fails with "permission denied" (SQLSTATE 42501
/// from the privilege check: the append-only triggers raise the same code,
/// but say "append-only").
async fn assert_refused(pool: &PgPool, sql: &str) {
    let err = sqlx::query(sql).execute(pool).await.unwrap_err();
    let db = err
        .as_database_error()
        .unwrap_or_else(|| panic!("{sql}: {err}"));
    assert_eq!(db.code().as_deref(), Some("42501"), "{sql}: {err}");
    assert!(db.message().contains("permission denied"), "{sql}: {err}");
}

const LEDGER_TABLES: [&str; 4] = ["events", "ledger", "checkpoints", "sealer_state"];

fn rewrites(table: &str) -> [String; 3] {
    let column = match table {
        "events" => "event_type = 'X'",
        "ledger" => "seq = seq + 1000",
        "checkpoints" => "note = ''",
        _ => "last_xid = last_xid + 1000",
    };
    [
        format!("UPDATE {table} SET {column}"),
        format!("DELETE FROM {table}"),
        format!("TRUNCATE {table}"),
    ]
}

async fn sealed_history(pool: &PgPool) {
    let repo = repo(pool);
    for seq in 1..=3 {
        repo.append(&[ev("T", "a", seq, json!({"n": seq}))])
            .await
            .unwrap();
    }
    sealer().seal_pending(pool).await.unwrap();
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_service_role_appends_and_reads_but_cannot_rewrite_or_seal(pool: PgPool) {
    sealed_history(&pool).await;
    let service = login(&pool, Role::Service).await;
    // It appends (through the chained repository) and reads every table.
    repo(&service)
        .append(&[ev("T", "a", 4, json!({"n": 4}))])
        .await
        .unwrap();
    for table in LEDGER_TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&service)
            .await
            .unwrap();
        assert!(n >= 1, "{table}");
    }
    // UPDATE, DELETE and TRUNCATE on every ledger table, refused.
    for table in LEDGER_TABLES {
        for sql in rewrites(table) {
            assert_refused(&service, &sql).await;
        }
    }
    // Nor can it seal, checkpoint or move the sealer: the sealer's tables
    // are written by queue_sealer alone.
    assert_refused(
        &service,
        "INSERT INTO ledger (seq, aggregate_type, aggregate_id, sequence, event_hash) \
         SELECT 4, 'T', 'a', 4, hash FROM events WHERE sequence = 4",
    )
    .await;
    assert_refused(
        &service,
        "INSERT INTO checkpoints (tree_size, root_hash, note) \
         VALUES (99, decode(repeat('00', 32), 'hex'), 'forged')",
    )
    .await;
    assert_refused(
        &service,
        "INSERT INTO sealer_state VALUES (2, 0, 0, 0, ''::bytea, -1, now())",
    )
    .await;
    // The mail sender's columns only: never a message's recipient or token.
    sqlx::query("UPDATE mail_outbox SET state = state, attempts = attempts")
        .execute(&service)
        .await
        .unwrap();
    assert_refused(
        &service,
        "UPDATE mail_outbox SET recipient = 'eve@example.com'",
    )
    .await;
    assert_refused(&service, "UPDATE mail_outbox SET token_hash = 'x'").await;
    // Read tables are the projector's: the service only reads them.
    assert_refused(&service, "UPDATE customer_audit_events SET action = 'x'").await;
    assert_refused(
        &service,
        "UPDATE queue_sessions SET customer_id = customer_id",
    )
    .await;
    // Nor switch the append-only triggers off (only the owner can).
    let err = sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&service)
        .await
        .unwrap_err();
    let db = err.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("42501"), "{err}");
    assert!(db.message().contains("must be owner"), "{err}");
    // The honest store still verifies, with the appended event unsealed.
    let report = verify(&pool).await;
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!((report.events, report.unsealed), (4, 1));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_sealer_role_seals_and_cannot_write_events(pool: PgPool) {
    sealed_history(&pool).await;
    repo(&pool)
        .append(&[ev("T", "b", 1, json!({"n": 1}))])
        .await
        .unwrap();
    // A row pre-inserted (by the owner: no restricted role may) at the tree
    // size the sealer is about to reach does not displace its real one.
    let forger = CheckpointSigner::from_seed("queue.test/ledger", [66u8; 32]).unwrap();
    let forged = Checkpoint {
        origin: "queue.test/ledger".into(),
        tree_size: 4,
        root_hash: [0u8; 32],
    }
    .sign(&forger);
    sqlx::query("INSERT INTO checkpoints (tree_size, root_hash, note) VALUES (4, $1, $2)")
        .bind(vec![0u8; 32])
        .bind(&forged)
        .execute(&pool)
        .await
        .unwrap();
    let sealer_role = login(&pool, Role::Sealer).await;
    let outcome = sealer().seal_pending(&sealer_role).await.unwrap();
    assert_eq!(outcome.sealed, 1, "{outcome:?}");
    assert_eq!(outcome.checkpoint, Some(4), "{outcome:?}");
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM checkpoints WHERE tree_size = 4")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(notes.len(), 2, "{notes:?}");
    let (latest, _) = queue_eventstore::export::latest_checkpoint(&pool, &signer().verifier())
        .await
        .unwrap();
    assert_eq!(latest.tree_size, 4);
    // The forged row is reported; the store is otherwise intact.
    let report = verify(&pool).await;
    assert!(!report.ok);
    assert!(report
        .problems
        .iter()
        .all(|p| p.kind == ProblemKind::CheckpointSignature && p.tree_size == Some(4)));
    assert_eq!((report.events, report.ledger_size), (4, 4));
    assert_refused(
        &sealer_role,
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, recorded_at, prev_hash, hash, mac, mac_key_id) VALUES ('T', 'z', 1, 'E', '1', \
         '{}', now(), decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'), \
         decode(repeat('00', 32), 'hex'), 'k1')",
    )
    .await;
    for table in LEDGER_TABLES {
        for sql in rewrites(table) {
            // The sealer updates its own position; everything else is refused.
            if table == "sealer_state" && sql.starts_with("UPDATE") {
                continue;
            }
            assert_refused(&sealer_role, &sql).await;
        }
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_projector_role_cannot_write_the_ledger_tables(pool: PgPool) {
    sealed_history(&pool).await;
    let projector = login(&pool, Role::Projector).await;
    for table in LEDGER_TABLES {
        for sql in rewrites(table) {
            assert_refused(&projector, &sql).await;
        }
    }
    assert_refused(
        &projector,
        "INSERT INTO checkpoints (tree_size, root_hash, note) \
         VALUES (99, decode(repeat('00', 32), 'hex'), 'forged')",
    )
    .await;
    // Its own tables: projection positions (and the read tables).
    sqlx::query("UPDATE projection_checkpoints SET events = events WHERE name = 'customers'")
        .execute(&projector)
        .await
        .unwrap();
}

/// Role set-up runs from many test processes and databases at once (roles
/// are cluster-wide): concurrent calls all succeed.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn login_role_set_up_is_idempotent_and_race_safe(pool: PgPool) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { ensure_dev_logins(&pool).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for role in Role::ALL {
        let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, $2, 'MEMBER')")
            .bind(dev_login(role))
            .bind(role.group())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(member, "{role:?}");
    }
}

/// What each restricted role may do on every relation of the schema:
/// `(relation, queue_service, queue_sealer, queue_projector)`. Table rights
/// are spelled `SELECT INSERT UPDATE DELETE TRUNCATE REFERENCES TRIGGER`
/// (in that order, those held), column-only rights `UPDATE(column)`, and
/// sequence rights `USAGE SELECT UPDATE`. A new table, view or sequence
/// goes here with the grants its migration gives (ADR 0212): the test
/// below fails naming any relation that is missing or differs.
const READ_TABLE: (&str, &str, &str) = ("SELECT", "", "SELECT INSERT UPDATE");
const EXPECTED_PRIVILEGES: &[(&str, &str, &str, &str)] = &[
    // The ledger: the service appends events, the sealer alone extends
    // the ledger and moves its position, nobody rewrites.
    ("events", "SELECT INSERT", "SELECT", "SELECT"),
    ("events_insert_id_seq", "USAGE", "", ""),
    ("ledger", "SELECT", "SELECT INSERT", "SELECT"),
    ("checkpoints", "SELECT", "SELECT INSERT", "SELECT"),
    ("sealer_state", "SELECT", "SELECT UPDATE", ""),
    // `queue serve` checks the schema under every role.
    ("_sqlx_migrations", "SELECT", "SELECT", "SELECT"),
    // Read tables: the projector's; the service reads them.
    ("queue_customers", READ_TABLE.0, READ_TABLE.1, READ_TABLE.2),
    (
        "queue_customer_roles",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    (
        "queue_backup_codes",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    (
        "queue_email_verifications",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    (
        "queue_webauthn_credentials",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    ("queue_sessions", READ_TABLE.0, READ_TABLE.1, READ_TABLE.2),
    (
        "queue_session_refresh_tokens",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    (
        "customer_audit_events",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    (
        "projection_checkpoints",
        READ_TABLE.0,
        READ_TABLE.1,
        READ_TABLE.2,
    ),
    // The API's own working tables: single-use challenges (never updated),
    // the founders gate's counters.
    ("webauthn_challenges", "SELECT INSERT DELETE", "", ""),
    // SAML (ADR 0218): outstanding AuthnRequests (single use) and the
    // assertion-id replay cache, swept when expired; never updated.
    ("saml_requests", "SELECT INSERT DELETE", "", ""),
    ("saml_assertions", "SELECT INSERT DELETE", "", ""),
    ("founders_gate", "SELECT INSERT UPDATE", "", ""),
    // Mail: rows from the outbox runner (projector); the sender marks
    // delivery only, never a recipient, token or details.
    (
        "mail_outbox",
        "SELECT UPDATE(state) UPDATE(attempts) UPDATE(next_attempt_at) UPDATE(leased_until) \
         UPDATE(last_error) UPDATE(last_error_at) UPDATE(sent_at) UPDATE(dead_at)",
        "",
        "SELECT INSERT",
    ),
];

/// Every relation of the schema (tables, views, sequences), and for each
/// restricted role what it may do there, in the spelling of
/// [`EXPECTED_PRIVILEGES`].
async fn privileges_in_schema(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT c.relname::text, r.rolname::text, concat_ws(' ', \
           (SELECT string_agg(p, ' ' ORDER BY o) \
              FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER']) \
                   WITH ORDINALITY AS t(p, o) \
             WHERE c.relkind <> 'S' AND has_table_privilege(r.oid, c.oid, p)), \
           (SELECT string_agg(p || '(' || a.attname || ')', ' ' ORDER BY o, a.attnum) \
              FROM pg_attribute a, \
                   unnest(ARRAY['SELECT','INSERT','UPDATE','REFERENCES']) WITH ORDINALITY AS t(p, o) \
             WHERE c.relkind <> 'S' AND a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               AND has_column_privilege(r.oid, c.oid, a.attnum, p) \
               AND NOT has_table_privilege(r.oid, c.oid, p)), \
           (SELECT string_agg(p, ' ' ORDER BY o) \
              FROM unnest(ARRAY['USAGE','SELECT','UPDATE']) WITH ORDINALITY AS t(p, o) \
             WHERE c.relkind = 'S' AND has_sequence_privilege(r.oid, c.oid, p))) \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN pg_roles r \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
           AND r.rolname IN ('queue_service', 'queue_sealer', 'queue_projector') \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A new table (or column, or sequence) without its grants, or a grant
/// wider than ADR 0212's, fails here by name: every relation the
/// migrations create is declared with each restricted role's rights.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_relation_grants_each_role_exactly_its_declared_rights(pool: PgPool) {
    use std::collections::BTreeMap;
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (relation, role, rights) in privileges_in_schema(&pool).await {
        found.entry(relation).or_default().insert(role, rights);
    }
    let mut problems = Vec::new();
    for (relation, service, sealer, projector) in EXPECTED_PRIVILEGES {
        let Some(actual) = found.remove(*relation) else {
            problems.push(format!("{relation}: declared but not in the schema"));
            continue;
        };
        for (role, expected) in [
            (Role::Service, service),
            (Role::Sealer, sealer),
            (Role::Projector, projector),
        ] {
            let expected = expected.split_whitespace().collect::<Vec<_>>().join(" ");
            let got = actual.get(role.group()).cloned().unwrap_or_default();
            if got != expected {
                problems.push(format!(
                    "{relation}: {} has [{got}], declared [{expected}]",
                    role.group()
                ));
            }
        }
    }
    for (relation, actual) in found {
        problems.push(format!(
            "{relation}: not declared (add it to EXPECTED_PRIVILEGES with the grants its \
             migration gives each role; ADR 0212); the roles have {actual:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Nor may a restricted role add objects of its own beside them (a
    // function or operator an owner's query could resolve to). PostgreSQL
    // 15 no longer lets PUBLIC create in `public`; an older server needs
    // `REVOKE CREATE ON SCHEMA public FROM PUBLIC` (README, production
    // set-up).
    let creators: Vec<String> = sqlx::query_scalar(
        "SELECT r FROM unnest(ARRAY['queue_service', 'queue_sealer', 'queue_projector']) r \
         WHERE has_schema_privilege(r, current_schema(), 'CREATE') \
            OR has_database_privilege(r, current_database(), 'CREATE')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        creators.is_empty(),
        "{creators:?} may create objects in the schema or database"
    );
}
