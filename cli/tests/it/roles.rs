//! Least privilege that actually runs (issue 17 item 8, ADR 0212): `queue
//! serve` as the three restricted roles end to end, and its refusal to
//! serve a schema `queue migrate` has not brought up to date.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use queue_eventstore::roles::{dev_login, ensure_dev_logins, Role};
use queue_testkit::poll::poll_until;

use crate::procs::{as_role, audit_write, client, free_port, poll, Instance, Keys, TestDb};

/// Runs `queue serve` (as the restricted roles) and waits for it to exit;
/// returns its exit code and log. Panics if it is still running after 60 s.
async fn serve_exit(url: &str, keys: &Keys, tag: &str) -> (Option<i32>, String) {
    let log = keys.dir.join(format!("{tag}.log"));
    let mut child = Instance::spawn(free_port(), url, keys, &log, &[]);
    let exited = poll_until(Duration::from_secs(60), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    match exited {
        Some(status) => (status.code(), std::fs::read_to_string(&log).unwrap()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "queue serve kept running:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_schema_that_is_not_migrated() {
    let db = TestDb::create_unmigrated("roles_unmigrated").await;
    let keys = Keys::new("roles_unmigrated");
    ensure_dev_logins(&db.pool).await.unwrap();
    let owner = db.url("queue-roles");

    // Nothing migrated: a clear refusal, not a migration as a role that cannot.
    let (code, log) = serve_exit(&owner, &keys, "empty").await;
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("the database is not migrated") && log.contains("queue migrate"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // The service role cannot migrate (it cannot create tables).
    let migrate = keys
        .queue(&["migrate"], &as_role(&owner, Role::Service))
        .await;
    assert_eq!(
        migrate.status.code(),
        Some(2),
        "{}",
        crate::stderr(&migrate)
    );
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(tables, 0);

    // The owner migrates; then one migration is made to look unapplied.
    let migrate = keys.queue(&["migrate"], &owner).await;
    assert!(migrate.status.success(), "{}", crate::stderr(&migrate));
    let latest: i64 = sqlx::query_scalar(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations) \
         RETURNING version",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (code, log) = serve_exit(&owner, &keys, "behind").await;
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!("migration {latest:04}")) && log.contains("has not been applied"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_end_to_end_as_the_restricted_roles() {
    let db = TestDb::create("roles_e2e").await;
    let keys = Keys::new("roles_e2e");
    let owner = db.url("queue-roles");
    let queue = Instance::start("queue-roles", &owner, &keys).await;

    // An audit write (the API, as queue_service) ...
    // A fresh instance on a loaded machine may answer its first write 503
    // + Retry-After (its pool still connecting); a client retries, as the
    // contract says, with the same idempotency key.
    let written = poll(
        "the audit write to be accepted",
        Duration::from_secs(60),
        || async {
            let outcome = audit_write(&client(), &queue.base, "roles-e2e-1", Instant::now()).await;
            if outcome.status == 503 && outcome.retry_after {
                return None;
            }
            Some(outcome)
        },
    )
    .await;
    assert_eq!(written.status, 201, "{written:?}");
    let id = written.event_id.clone().unwrap();
    // ... sealed by the sealer (queue_sealer) ...
    poll(
        "the audit event to be sealed",
        Duration::from_secs(30),
        || async { db.sealed_audit_ids().await.contains(&id).then_some(()) },
    )
    .await;
    // ... and folded into the read tables by the runners (queue_projector).
    poll(
        "the audit projection to apply it",
        Duration::from_secs(30),
        || async {
            let applied: i64 = sqlx::query_scalar(
                "SELECT events FROM projection_checkpoints WHERE name = 'audit'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (applied >= 1).then_some(())
        },
    )
    .await;

    // Every connection of the instance is one of the three LOGIN roles.
    let users: BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'queue-roles'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let expected: BTreeSet<String> = Role::ALL.iter().map(|r| dev_login(*r).to_owned()).collect();
    assert_eq!(users, expected);
    // The sealer's lock is held by the sealer role.
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT a.usename::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(queue_eventstore::sealer::SEALER_LOCK_KEY)
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(holder.as_deref(), Some(dev_login(Role::Sealer)));
    assert!(
        !queue.log_text().contains("may rewrite the ledger"),
        "{}",
        queue.log_text()
    );
    drop(queue);
    db.assert_sealed_gap_free(&keys, &[id]).await;
}

/// Run as the owner (one URL, as before the split), serve still works and
/// warns that its role may rewrite the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_as_the_owner_warns() {
    let db = TestDb::create("roles_owner").await;
    let keys = Keys::new("roles_owner");
    let owner = db.url("queue-owner");
    let queue = Instance::start_with(
        "queue-owner",
        &owner,
        &keys,
        &[
            ("DATABASE_URL", owner.as_str()),
            ("QUEUE_SEALER_DATABASE_URL", owner.as_str()),
            ("QUEUE_PROJECTOR_DATABASE_URL", owner.as_str()),
        ],
    )
    .await;
    let log = queue.log_text();
    assert!(log.contains("may rewrite the ledger"), "{log}");
}
