//! The tamper matrix: each kind of damage is detected by `verify` and located.

use chrono::{TimeZone, Utc};
use queue_eventstore::{Checkpoint, CheckpointSigner, ProblemKind, VerifyReport};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

/// Three streams of four events each, interleaved, all sealed and checkpointed.
async fn history(pool: &PgPool) {
    let repo = repo(pool);
    for seq in 1..=4 {
        for stream in ["A", "B", "C"] {
            repo.append(&[ev("T", stream, seq, json!({"stream": stream, "n": seq}))])
                .await
                .unwrap();
        }
    }
    sealer().seal_pending(pool).await.unwrap();
    let clean = verify(pool).await;
    assert!(
        clean.ok,
        "untouched store must verify: {:?}",
        clean.problems
    );
    assert_eq!(
        (clean.events, clean.ledger_size, clean.unsealed),
        (12, 12, 0)
    );
    assert!(clean.checkpoints >= 1);
}

async fn ledger_seq(pool: &PgPool, stream: &str, sequence: i64) -> i64 {
    sqlx::query_scalar("SELECT seq FROM ledger WHERE aggregate_id = $1 AND sequence = $2")
        .bind(stream)
        .bind(sequence)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn assert_first(
    report: &VerifyReport,
    kind: ProblemKind,
    stream: Option<&str>,
    sequence: Option<i64>,
) {
    assert!(!report.ok, "damage went undetected");
    let first = report.first_problem.as_ref().expect("a first problem");
    assert_eq!(
        first.kind, kind,
        "first problem: {first:?}; all: {:?}",
        report.problems
    );
    assert_eq!(first.aggregate_id.as_deref(), stream, "{first:?}");
    assert_eq!(first.sequence, sequence, "{first:?}");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn untouched_store_passes(pool: PgPool) {
    history(&pool).await;
    let report = verify(&pool).await;
    assert!(report.ok);
    assert_eq!(report.problem_count, 0);
    assert!(report.first_problem.is_none());
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn edited_payload_is_found(pool: PgPool) {
    history(&pool).await;
    tamper(&pool, "UPDATE events SET payload = '{\"stream\":\"B\",\"n\":99}' WHERE aggregate_id = 'B' AND sequence = 2").await;
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::HashMismatch, Some("B"), Some(2));
    let seq = ledger_seq(&pool, "B", 2).await;
    assert_eq!(report.first_problem.unwrap().ledger_seq, Some(seq));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn event_deleted_mid_stream_is_found(pool: PgPool) {
    history(&pool).await;
    let seq = ledger_seq(&pool, "A", 2).await;
    tamper(
        &pool,
        "DELETE FROM events WHERE aggregate_id = 'A' AND sequence = 2",
    )
    .await;
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::LedgerMissingEvent, Some("A"), Some(2));
    assert_eq!(report.first_problem.as_ref().unwrap().ledger_seq, Some(seq));
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::SequenceGap && p.sequence == Some(3)));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn last_events_of_a_stream_deleted_are_found(pool: PgPool) {
    history(&pool).await;
    tamper(
        &pool,
        "DELETE FROM events WHERE aggregate_id = 'C' AND sequence >= 3",
    )
    .await;
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::LedgerMissingEvent, Some("C"), Some(3));
    assert_eq!(report.problem_count, 2);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn reordered_events_are_found(pool: PgPool) {
    history(&pool).await;
    tamper(
        &pool,
        "UPDATE events SET sequence = 100 WHERE aggregate_id = 'B' AND sequence = 2; \
         UPDATE events SET sequence = 2 WHERE aggregate_id = 'B' AND sequence = 3; \
         UPDATE events SET sequence = 3 WHERE aggregate_id = 'B' AND sequence = 100;",
    )
    .await;
    let report = verify(&pool).await;
    assert!(!report.ok);
    let first = report.first_problem.clone().unwrap();
    assert_eq!(first.aggregate_id.as_deref(), Some("B"));
    assert_eq!(first.sequence, Some(2));
    assert_eq!(first.ledger_seq, Some(ledger_seq(&pool, "B", 2).await));
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::PrevHashMismatch));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn deleted_stream_is_found(pool: PgPool) {
    history(&pool).await;
    tamper(&pool, "DELETE FROM events WHERE aggregate_id = 'A'").await;
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::LedgerMissingEvent, Some("A"), Some(1));
    assert_eq!(report.problem_count, 4);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn truncated_ledger_is_found(pool: PgPool) {
    history(&pool).await;
    tamper(&pool, "DELETE FROM ledger WHERE seq > 9").await;
    let report = verify(&pool).await;
    assert!(!report.ok);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::CheckpointBeyondLedger && p.tree_size == Some(12)),
        "{:?}",
        report.problems
    );
    // An auditor's copy of the checkpoint catches it even if the stored ones are deleted too.
    let note: String = sqlx::query_scalar("SELECT note FROM checkpoints WHERE tree_size = 12")
        .fetch_one(&pool)
        .await
        .unwrap();
    tamper(&pool, "DELETE FROM checkpoints WHERE tree_size > 9").await;
    let report = verify_with(&pool, &[note]).await;
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::ExternalCheckpointBeyondLedger));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn forged_checkpoint_is_found(pool: PgPool) {
    history(&pool).await;
    // A checkpoint signed by a key that is not the log's.
    let forger = CheckpointSigner::from_seed("queue.test/ledger", [66u8; 32]).unwrap();
    let forged = Checkpoint {
        origin: "queue.test/ledger".into(),
        tree_size: 12,
        root_hash: [0u8; 32],
    }
    .sign(&forger);
    let sql = format!(
        "UPDATE checkpoints SET note = '{}', root_hash = '\\x{}' WHERE tree_size = 12",
        forged,
        "00".repeat(32)
    );
    tamper(&pool, &sql).await;
    let report = verify(&pool).await;
    assert!(!report.ok);
    let first = report.first_problem.unwrap();
    assert_eq!(first.kind, ProblemKind::CheckpointSignature);
    assert_eq!(first.tree_size, Some(12));

    // An external checkpoint with a different root at a real size: history rewritten.
    let signer = signer();
    let rewritten = Checkpoint {
        origin: "queue.test/ledger".into(),
        tree_size: 5,
        root_hash: [1u8; 32],
    }
    .sign(&signer);
    let report = verify_with(&pool, &[rewritten]).await;
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::ExternalCheckpointRootMismatch && p.tree_size == Some(5)));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn event_remaced_under_unknown_key_is_found(pool: PgPool) {
    history(&pool).await;
    tamper(
        &pool,
        "UPDATE events SET mac_key_id = 'evil', mac = sha256(mac) WHERE aggregate_id = 'C' AND sequence = 1",
    )
    .await;
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::UnknownMacKey, Some("C"), Some(1));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rechained_without_the_mac_key_is_found(pool: PgPool) {
    history(&pool).await;
    // The attacker edits a payload and recomputes the chain, but cannot MAC it.
    let repo_without_key = fixed_repo(&pool);
    let _ = repo_without_key;
    let row: (serde_json::Value, chrono::DateTime<Utc>, Vec<u8>) = sqlx::query_as(
        "SELECT payload, recorded_at, prev_hash FROM events WHERE aggregate_id = 'A' AND sequence = 4",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let payload = json!({"stream": "A", "n": 4, "admin": true});
    let canonical =
        queue_eventstore::chain::canonical_record(&queue_eventstore::chain::EventRecord {
            aggregate_type: "T",
            aggregate_id: "A",
            sequence: 4,
            event_type: "Happened",
            event_version: "1.0",
            recorded_at: row.1,
            payload: &payload,
        })
        .unwrap();
    let hash = queue_eventstore::chain::event_hash(&row.2.try_into().unwrap(), &canonical);
    let sql = format!(
        "UPDATE events SET payload = '{payload}', hash = '\\x{h}' WHERE aggregate_id = 'A' AND sequence = 4; \
         UPDATE ledger SET event_hash = '\\x{h}' WHERE aggregate_id = 'A' AND sequence = 4;",
        h = hex::encode(hash)
    );
    tamper(&pool, &sql).await;
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::MacInvalid, Some("A"), Some(4));
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::CheckpointRootMismatch));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn edited_recorded_at_is_found(pool: PgPool) {
    history(&pool).await;
    let earlier = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&pool)
        .await
        .ok();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET recorded_at = $1 WHERE aggregate_id = 'B' AND sequence = 4")
        .bind(earlier)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let report = verify(&pool).await;
    assert_first(&report, ProblemKind::HashMismatch, Some("B"), Some(4));
}

/// A superuser moves the sealer's position forward: the events it jumps
/// over would never be sealed or covered by a checkpoint.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn sealer_position_moved_past_unsealed_events_is_found(pool: PgPool) {
    history(&pool).await;
    let repo = repo(&pool);
    repo.append(&[ev("T", "A", 5, json!({"stream": "A", "n": 5}))])
        .await
        .unwrap();
    repo.append(&[ev("T", "D", 1, json!({"stream": "D", "n": 1}))])
        .await
        .unwrap();
    // Honest: two unsealed events after the sealer's position.
    let report = verify(&pool).await;
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.unsealed, 2);
    sqlx::query(
        "UPDATE sealer_state SET (last_xid, last_insert_id) = \
         (SELECT commit_xid, insert_id FROM events ORDER BY commit_xid DESC, insert_id DESC LIMIT 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = verify(&pool).await;
    assert!(!report.ok);
    let skipped: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::SkippedBySealer)
        .map(|p| (p.aggregate_id.clone().unwrap(), p.sequence.unwrap()))
        .collect();
    assert_eq!(skipped, [("A".to_owned(), 5), ("D".to_owned(), 1)]);
}

/// A row pre-inserted at the tree size the sealer is about to reach (anyone
/// with INSERT on `checkpoints` can) does not make the sealer drop its own
/// signed checkpoint at that size; exports take the note that verifies and
/// `queue verify` names the foreign row.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_pre_inserted_checkpoint_row_does_not_displace_the_real_one(pool: PgPool) {
    history(&pool).await;
    let repo = repo(&pool);
    for seq in 5..=7 {
        repo.append(&[ev("T", "A", seq, json!({"stream": "A", "n": seq}))])
            .await
            .unwrap();
    }
    // The next checkpoint will be at tree size 15.
    let forger = CheckpointSigner::from_seed("queue.test/ledger", [66u8; 32]).unwrap();
    let forged = Checkpoint {
        origin: "queue.test/ledger".into(),
        tree_size: 15,
        root_hash: [0u8; 32],
    }
    .sign(&forger);
    sqlx::query("INSERT INTO checkpoints (tree_size, root_hash, note) VALUES (15, $1, $2)")
        .bind(vec![0u8; 32])
        .bind(&forged)
        .execute(&pool)
        .await
        .unwrap();
    sealer().seal_pending(&pool).await.unwrap();

    let notes: Vec<String> =
        sqlx::query_scalar("SELECT note FROM checkpoints WHERE tree_size = 15")
            .fetch_all(&pool)
            .await
            .unwrap();
    let verifier = signer().verifier();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().any(|n| Checkpoint::open(n, &verifier).is_ok()));
    let (latest, _) = queue_eventstore::export::latest_checkpoint(&pool, &verifier)
        .await
        .unwrap();
    assert_eq!(latest.tree_size, 15);
    let report = verify(&pool).await;
    assert!(!report.ok);
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::CheckpointSignature && p.tree_size == Some(15)));
}
