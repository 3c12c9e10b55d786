//! Compliance export and its offline check, including tampering of the file.

use std::io::BufReader;

use queue_eventstore::export::{self, ExportFilter};
use queue_eventstore::verify::NoProgress;
use queue_eventstore::{Checkpoint, CheckpointSigner};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::*;

/// Customer c1 and c2 with credential/session streams naming them, plus noise.
async fn history(pool: &PgPool) {
    let repo = repo(pool);
    for c in ["c1", "c2"] {
        repo.append(&[ev(
            "Customer",
            c,
            1,
            json!({"CustomerRegistered": {"email": format!("{c}@x.io")}}),
        )])
        .await
        .unwrap();
        repo.append(&[ev(
            "Credential",
            &format!("{c}-k"),
            1,
            json!({"CredentialRegistered": {"customer_id": c}}),
        )])
        .await
        .unwrap();
        repo.append(&[ev(
            "Session",
            &format!("{c}-s"),
            1,
            json!({"SessionCreated": {"customer_id": c}}),
        )])
        .await
        .unwrap();
        repo.append(&[ev(
            "Session",
            &format!("{c}-s"),
            2,
            json!({"SessionRefreshed": {"n": 1}}),
        )])
        .await
        .unwrap();
        repo.append(&[ev("Customer", c, 2, json!({"EmailVerified": {}}))])
            .await
            .unwrap();
    }
    repo.append(&[ev(
        "Audit",
        "a1",
        1,
        json!({"AuditRecorded": {"customer_id": "c1", "action": "x"}}),
    )])
    .await
    .unwrap();
    sealer().seal_pending(pool).await.unwrap();
}

async fn export_text(
    pool: &PgPool,
    filter: &ExportFilter,
    consistency_from: Option<u64>,
) -> String {
    let mut out = Vec::new();
    export::export(
        pool,
        &signer().verifier(),
        filter,
        consistency_from,
        &mut out,
        &NoProgress,
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

fn check(text: &str, older: Option<&str>) -> export::ExportCheck {
    export::verify_export(
        &mut BufReader::new(text.as_bytes()),
        &signer().verifier(),
        older,
    )
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn assert_bad(text: &str, line: u64, why: &str) {
    let report = check(text, None);
    assert!(!report.ok, "tampering went undetected");
    assert_eq!(report.first_bad_line, Some(line), "{:?}", report.problem);
    assert!(
        report.problem.as_deref().unwrap_or("").contains(why),
        "{:?}",
        report.problem
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_whole_export_verifies_offline(pool: PgPool) {
    history(&pool).await;
    let text = export_text(&pool, &ExportFilter::default(), None).await;
    let report = check(&text, None);
    assert!(report.ok, "{:?}", report.problem);
    assert_eq!(report.events, 11);
    assert_eq!(report.tree_size, 11);
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["format"], "queue-export/1");
    assert_eq!(header["tree_size"], 11);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn customer_and_range_filters(pool: PgPool) {
    history(&pool).await;
    let text = export_text(
        &pool,
        &ExportFilter {
            customer_id: Some("c1".into()),
            ..Default::default()
        },
        None,
    )
    .await;
    let report = check(&text, None);
    assert!(report.ok, "{:?}", report.problem);
    assert_eq!(
        report.events, 6,
        "c1's customer, credential, session streams and its audit event"
    );
    assert!(text.lines().all(|l| !l.contains("\"aggregate_id\":\"c2")));

    let text = export_text(
        &pool,
        &ExportFilter {
            from_seq: Some(3),
            to_seq: Some(7),
            ..Default::default()
        },
        None,
    )
    .await;
    let report = check(&text, None);
    assert!(report.ok, "{:?}", report.problem);
    assert_eq!(report.events, 5);
    // Dropping a line from a range export is caught, and so is its summary.
    let mut l = lines(&text);
    l.remove(3);
    assert_bad(&join(&l), 4, "ledger_seq 5 is missing from a range export");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_kind_of_file_tampering_names_the_line(pool: PgPool) {
    history(&pool).await;
    let text = export_text(&pool, &ExportFilter::default(), None).await;
    let original = lines(&text);

    // An edited field.
    let mut l = original.clone();
    l[4] = l[4].replace("\"n\":1", "\"n\":2");
    assert_bad(&join(&l), 5, "hash does not match");

    // A removed line: the summary no longer adds up.
    let mut l = original.clone();
    l.remove(6);
    assert_bad(&join(&l), 12, "summary counts 11");

    // Reordered lines.
    let mut l = original.clone();
    l.swap(2, 3);
    assert_bad(&join(&l), 4, "does not increase");

    // A proof swapped between two lines.
    let mut l = original.clone();
    let mut a: Value = serde_json::from_str(&l[2]).unwrap();
    let b: Value = serde_json::from_str(&l[3]).unwrap();
    a["inclusion_proof"] = b["inclusion_proof"].clone();
    l[2] = a.to_string();
    assert_bad(&join(&l), 3, "inclusion proof");

    // A duplicated key.
    let mut l = original.clone();
    l[2] = l[2].replacen('{', "{\"ledger_seq\":1,", 1);
    assert_bad(&join(&l), 3, "duplicate key");

    // A truncated file.
    assert_bad(
        &join(&original[..original.len() - 1]),
        original.len() as u64,
        "summary line is missing",
    );

    // A forged checkpoint: another key signs a different root under the log's name.
    let forger = CheckpointSigner::from_seed("queue.test/ledger", [99u8; 32]).unwrap();
    let forged = Checkpoint {
        origin: "queue.test/ledger".into(),
        tree_size: 11,
        root_hash: [0u8; 32],
    }
    .sign(&forger);
    let mut header: Value = serde_json::from_str(&original[0]).unwrap();
    header["checkpoint"] = json!(forged);
    let mut l = original.clone();
    l[0] = header.to_string();
    assert_bad(&join(&l), 1, "checkpoint");

    // The right file checked with a key from another log.
    let other = CheckpointSigner::from_seed("other.example/ledger", [7u8; 32]).unwrap();
    let report = export::verify_export(
        &mut BufReader::new(text.as_bytes()),
        &other.verifier(),
        None,
    );
    assert_eq!(report.first_bad_line, Some(1));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn consistency_between_checkpoints(pool: PgPool) {
    history(&pool).await;
    // seal_pending always ends with a checkpoint over everything: size 11.
    let older_size = 11i64;
    let older: String = sqlx::query_scalar("SELECT note FROM checkpoints WHERE tree_size = 11")
        .fetch_one(&pool)
        .await
        .unwrap();
    let repo = repo(&pool);
    for seq in 1..=5 {
        repo.append(&[ev("Customer", "c3", seq, json!({}))])
            .await
            .unwrap();
    }
    sealer().seal_pending(&pool).await.unwrap();

    let text = export_text(
        &pool,
        &ExportFilter {
            from_seq: Some(12),
            to_seq: Some(16),
            ..Default::default()
        },
        Some(older_size as u64),
    )
    .await;
    let report = check(&text, Some(&older));
    assert!(report.ok, "{:?}", report.problem);
    assert!(report.consistency_checked);

    // An older checkpoint of a different history at the same size fails.
    let rewritten = Checkpoint {
        origin: "queue.test/ledger".into(),
        tree_size: older_size as u64,
        root_hash: [5u8; 32],
    }
    .sign(&signer());
    let report = check(&text, Some(&rewritten));
    assert!(!report.ok);
    assert_eq!(report.first_bad_line, Some(1));
    assert!(report.problem.unwrap().contains("history rewritten"));
}
