//! MAC key rotation reaches a running instance within a second; old events
//! keep verifying; a broken key file leaves the last good keys in place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_eventstore::rotation::{
    notify_mac_rotation, read_mac_key_file, rotate_mac_key_file, run_mac_key_reloader,
};
use queue_eventstore::verify::NoProgress;
use queue_eventstore::{
    verify_store, ChainedEventRepository, ProblemKind, SharedMacKeys, SystemClock, VerifyInput,
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::helpers::*;

async fn current_id_becomes(keys: &SharedMacKeys, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while keys.current().current_id() != id {
        assert!(
            Instant::now() < deadline,
            "the reloader did not pick up {id} within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rotation_is_picked_up_and_old_events_still_verify(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!(
        "queue-mac-{}",
        pool.connect_options().get_database().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mac_keys");
    std::fs::write(&file, format!("{}\n", mac_keys().to_spec())).unwrap();

    let keys = SharedMacKeys::new(read_mac_key_file(&file).unwrap());
    let repo = ChainedEventRepository::new(pool.clone(), keys.clone(), Arc::new(SystemClock));
    let (stop, stopped) = watch::channel(false);
    let reloader = tokio::spawn(run_mac_key_reloader(
        pool.clone(),
        keys.clone(),
        file.clone(),
        stopped,
    ));
    repo.append(&[ev("T", "a", 1, json!({"n": 1}))])
        .await
        .unwrap();

    // Give the listener a moment to subscribe, then rotate as `queue keys rotate --kind mac` does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    rotate_mac_key_file(&file, "k2").unwrap();
    notify_mac_rotation(&pool).await.unwrap();
    current_id_becomes(&keys, "k2").await;
    assert!(!keys.is_degraded());
    repo.append(&[ev("T", "a", 2, json!({"n": 2}))])
        .await
        .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT mac_key_id FROM events ORDER BY sequence")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids, ["k1", "k2"]);

    sealer().seal_pending(&pool).await.unwrap();
    let verifier = signer().verifier();
    let all = read_mac_key_file(&file).unwrap();
    let report = verify_store(
        &pool,
        &VerifyInput {
            mac_keys: &all,
            checkpoint_key: &verifier,
            external_checkpoints: &[],
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(report.ok, "{:?}", report.problems);
    let only_old = mac_keys();
    let report = verify_store(
        &pool,
        &VerifyInput {
            mac_keys: &only_old,
            checkpoint_key: &verifier,
            external_checkpoints: &[],
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(
        report.first_problem.unwrap().kind,
        ProblemKind::UnknownMacKey
    );

    // A broken file: the instance keeps the last good keys.
    std::fs::write(&file, "garbage").unwrap();
    notify_mac_rotation(&pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(keys.current().current_id(), "k2");
    assert!(keys.is_degraded(), "a failed reload is reported");
    repo.append(&[ev("T", "a", 3, json!({"n": 3}))])
        .await
        .unwrap();

    stop.send(true).unwrap();
    reloader.await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
