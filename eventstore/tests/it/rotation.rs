//! MAC and checkpoint key rotation reach a running instance within a
//! second; old events and checkpoints keep verifying; a broken key file
//! leaves the last good keys in place.

use std::sync::Arc;
use std::time::Duration;

use queue_eventstore::rotation::{
    notify_checkpoint_rotation, notify_mac_rotation, read_checkpoint_key_file, read_mac_key_file,
    rotate_checkpoint_key_file, rotate_mac_key_file, run_checkpoint_key_reloader,
    run_mac_key_reloader,
};
use queue_eventstore::verify::NoProgress;
use queue_eventstore::{
    verify_store, ChainedEventRepository, Checkpoint, NoteVerifier, ProblemKind, Sealer,
    SealerConfig, SharedCheckpointSigner, SharedMacKeys, SystemClock, VerifyInput,
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::helpers::*;
use queue_testkit::poll::{eventually, eventually_within};

/// Sends the rotation notice until the instance shows `reloaded`: the
/// reloader may not have subscribed yet when the first notice goes out
/// (NOTIFY reaches only listeners already listening), and a repeated notice
/// only reloads the same file again.
async fn notify_until(
    pool: &PgPool,
    what: &str,
    notify: impl AsyncFn(&PgPool) -> Result<(), sqlx::Error>,
    reloaded: impl Fn() -> bool,
) {
    eventually(what, || async {
        if reloaded() {
            return Some(());
        }
        notify(pool).await.unwrap();
        None
    })
    .await;
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

    // Rotate as `queue keys rotate --kind mac` does.
    rotate_mac_key_file(&file, "k2").unwrap();
    notify_until(
        &pool,
        "the MAC reloader to pick up k2",
        notify_mac_rotation,
        || keys.current().current_id() == "k2",
    )
    .await;
    assert!(!keys.is_degraded());
    repo.append(&[ev("T", "a", 2, json!({"n": 2}))])
        .await
        .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT mac_key_id FROM events ORDER BY sequence")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids, ["k1", "k2"]);

    // The sealer checks rows with the instance's rotating keys.
    sealer_with(keys.clone()).seal_pending(&pool).await.unwrap();
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
    notify_until(
        &pool,
        "a failed reload to be reported",
        notify_mac_rotation,
        || keys.is_degraded(),
    )
    .await;
    assert_eq!(keys.current().current_id(), "k2");
    repo.append(&[ev("T", "a", 3, json!({"n": 3}))])
        .await
        .unwrap();

    stop.send(true).unwrap();
    reloader.await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// The key id a note's signature line names.
fn signing_key_id(note: &str) -> u32 {
    use base64::Engine;
    let line = note.lines().last().unwrap();
    let blob = line.rsplit(' ').next().unwrap();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .unwrap();
    u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]])
}

/// The newest checkpoint note once the ledger has reached `tree_size`. The
/// sealer waits for the cluster-wide snapshot horizon, which other tests'
/// transactions on this shared server hold back: allow a minute.
async fn checkpoint_at(pool: &PgPool, tree_size: i64) -> String {
    eventually_within(
        &format!("a checkpoint at {tree_size}"),
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar(
                "SELECT note FROM checkpoints WHERE tree_size >= $1 \
                 ORDER BY tree_size DESC LIMIT 1",
            )
            .bind(tree_size)
            .fetch_optional(pool)
            .await
            .unwrap()
        },
    )
    .await
}

async fn verify_checkpoints(
    pool: &PgPool,
    verifier: &NoteVerifier,
) -> queue_eventstore::VerifyReport {
    let keys = mac_keys();
    verify_store(
        pool,
        &VerifyInput {
            mac_keys: &keys,
            checkpoint_key: verifier,
            external_checkpoints: &[],
        },
        &NoProgress,
    )
    .await
    .unwrap()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn checkpoint_rotation_reaches_a_running_sealer_and_the_whole_ledger_verifies(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!(
        "queue-checkpoint-{}",
        pool.connect_options().get_database().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("checkpoint.key");
    std::fs::write(&file, format!("{}\n", signer().to_private_spec())).unwrap();

    let shared = SharedCheckpointSigner::new(read_checkpoint_key_file(&file).unwrap());
    let old_id = shared.current().key_id();
    let (stop, stopped) = watch::channel(false);
    let reloader = tokio::spawn(run_checkpoint_key_reloader(
        pool.clone(),
        shared.clone(),
        file.clone(),
        stopped.clone(),
    ));
    let sealer = Sealer::with_shared_signer(
        shared.clone(),
        SealerConfig {
            batch_size: 100,
            checkpoint_every: 5,
            checkpoint_interval: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(20),
            standby_interval: Duration::from_millis(100),
        },
        SharedMacKeys::new(mac_keys()),
    );
    let running = tokio::spawn(sealer.run((*pool.connect_options()).clone(), stopped));

    let repo = repo(&pool);
    for n in 1..=5 {
        repo.append(&[ev("T", "a", n, json!({"n": n}))])
            .await
            .unwrap();
    }
    let first = checkpoint_at(&pool, 5).await;
    assert_eq!(signing_key_id(&first), old_id);

    // Rotate as `queue keys rotate --kind checkpoint` does.
    let new_id = rotate_checkpoint_key_file(&file).unwrap();
    notify_until(
        &pool,
        "the checkpoint reloader to pick up the new key",
        notify_checkpoint_rotation,
        || format!("{:08x}", shared.current().key_id()) == new_id,
    )
    .await;
    assert!(!shared.is_degraded());
    // The file keeps the old public key (and only the new private key).
    let contents = std::fs::read_to_string(&file).unwrap();
    assert_eq!(contents.matches("PRIVATE+KEY+").count(), 1);
    assert!(contents.contains(&signer().verifier().to_string()));

    for n in 6..=10 {
        repo.append(&[ev("T", "a", n, json!({"n": n}))])
            .await
            .unwrap();
    }
    let second = checkpoint_at(&pool, 10).await;
    let new_key = read_checkpoint_key_file(&file).unwrap();
    assert_eq!(signing_key_id(&second), new_key.key_id());
    assert_eq!(format!("{:08x}", new_key.key_id()), new_id);

    // One verifier with both keys opens both notes; either key alone only its own.
    let both = new_key.verifier();
    assert_eq!(both.key_ids(), vec![new_key.key_id(), old_id]);
    assert!(Checkpoint::open(&first, &both).is_ok());
    assert!(Checkpoint::open(&second, &both).is_ok());
    assert!(Checkpoint::open(&second, &signer().verifier()).is_err());
    let only_new = NoteVerifier::parse(&both.key_specs()[0]).unwrap();
    assert!(Checkpoint::open(&first, &only_new).is_err());
    // An export names the key that signed its checkpoint, not the newest one.
    assert_eq!(Checkpoint::signed_by(&first, &both), Some(old_id));
    assert_eq!(
        Checkpoint::signed_by(&second, &both),
        Some(new_key.key_id())
    );
    assert_eq!(Checkpoint::signed_by(&first, &only_new), None);

    // The whole ledger verifies across the rotation, from the printed key list too.
    let report = verify_checkpoints(&pool, &both).await;
    assert!(report.ok, "{:?}", report.problems);
    let printed = NoteVerifier::parse(&both.to_string()).unwrap();
    assert!(verify_checkpoints(&pool, &printed).await.ok);
    assert!(!verify_checkpoints(&pool, &signer().verifier()).await.ok);

    // A broken file: the sealer keeps signing with the last good key.
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, "garbage").unwrap();
    notify_until(
        &pool,
        "a failed reload to be reported",
        notify_checkpoint_rotation,
        || shared.is_degraded(),
    )
    .await;
    assert_eq!(shared.current().key_id(), new_key.key_id());
    for n in 11..=15 {
        repo.append(&[ev("T", "a", n, json!({"n": n}))])
            .await
            .unwrap();
    }
    let third = checkpoint_at(&pool, 15).await;
    assert_eq!(signing_key_id(&third), new_key.key_id());

    // A key for another log is refused the same way.
    let other = queue_eventstore::CheckpointSigner::from_seed("other/log", [9u8; 32]).unwrap();
    // (The good file back first, so that the refusal below is this
    // reload's and not the garbage file's flag still standing.)
    std::fs::write(&file, &good).unwrap();
    notify_until(
        &pool,
        "the good key file to reload",
        notify_checkpoint_rotation,
        || !shared.is_degraded(),
    )
    .await;
    std::fs::write(&file, other.to_private_spec()).unwrap();
    notify_until(
        &pool,
        "the other log's key to be refused",
        notify_checkpoint_rotation,
        || shared.is_degraded(),
    )
    .await;
    assert_eq!(shared.current().key_id(), new_key.key_id());

    stop.send(true).unwrap();
    running.await.unwrap();
    reloader.await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
