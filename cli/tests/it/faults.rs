//! Faults with real processes (issue 10): two `queue serve` instances on one
//! database, a key rotation seen by the other instance, a kill -9 of the
//! sealer's leader, and PostgreSQL cut away under load. Every test creates
//! its own database and drops it at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_eventstore::{Checkpoint, CheckpointSigner};

use crate::procs::{
    join_all, poll, spawn_writers, two_instances, Instance, Keys, Outcome, Proxy, TestDb,
};

async fn kids(client: &reqwest::Client, base: &str) -> Vec<String> {
    let jwks: serde_json::Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect()
}

fn accepted(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| (200..300).contains(&o.status))
        .map(|o| o.event_id.clone().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jwt_rotation_reaches_the_other_instance_within_a_second() {
    let (db, keys, a, b) = two_instances("jwks").await;
    let client = crate::procs::client();
    assert_eq!(kids(&client, &b.base).await, vec!["k0".to_owned()]);

    let started = Instant::now();
    let out = keys
        .queue(
            &["--json", "keys", "rotate", "--kind", "jwt"],
            &db.url("queue-rotate"),
        )
        .await;
    // NOTIFY has been sent by the time the command exits.
    let exited = Instant::now();
    assert!(out.status.success(), "{}", crate::stderr(&out));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["notified"], true, "{rotated}");
    let kid = rotated["kid"].as_str().unwrap().to_owned();

    for instance in [&b, &a] {
        let seen = poll(
            "the new kid in the JWKS",
            Duration::from_secs(10),
            || async {
                kids(&client, &instance.base)
                    .await
                    .contains(&kid)
                    .then(Instant::now)
            },
        )
        .await;
        let after_exit = seen.saturating_duration_since(exited);
        eprintln!(
            "{}: new kid served {} ms after `queue keys rotate` exited ({} ms after it started)",
            instance.name,
            after_exit.as_millis(),
            seen.duration_since(started).as_millis()
        );
        assert!(
            after_exit < Duration::from_secs(1),
            "{} served the new kid only after {after_exit:?}\n{}",
            instance.name,
            instance.log_text()
        );
        // The previous key is still published: tokens it signed keep verifying.
        assert!(kids(&client, &instance.base)
            .await
            .contains(&"k0".to_owned()));
    }
}

/// `queue keys rotate --kind checkpoint` with two instances running: the
/// sealing one (whichever holds the lock) signs its next checkpoint with the
/// new key, and the ledger verifies against the rotated key file, which keeps
/// the previous public key for the older checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_key_rotation_reaches_the_sealing_instance() {
    let (db, keys, a, b) = two_instances("ckptkey").await;
    let client = crate::procs::client();
    let old = CheckpointSigner::parse(crate::CHECKPOINT_KEY).unwrap();

    let out = keys
        .queue(
            &["--json", "keys", "rotate", "--kind", "checkpoint"],
            &db.url("queue-rotate"),
        )
        .await;
    assert!(out.status.success(), "{}", crate::stderr(&out));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["notified"], true, "{rotated}");
    let rotated_spec = std::fs::read_to_string(keys.checkpoint_file()).unwrap();
    let new = CheckpointSigner::parse(&rotated_spec).unwrap();
    assert_ne!(new.key_id(), old.key_id());
    let verifier = new.verifier();
    assert!(
        verifier.key_ids().contains(&old.key_id()),
        "the old key stays"
    );

    // Events through both instances; the next checkpoint (every 10 s at the
    // latest) must carry the new key's signature.
    let t0 = Instant::now();
    for (n, instance) in [&a, &b].into_iter().enumerate() {
        let outcome =
            crate::procs::audit_write(&client, &instance.base, &format!("ckpt-{n}"), t0).await;
        assert_eq!(outcome.status, 201, "{:?}", outcome.code);
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let note = poll(
        "a checkpoint covering the new events",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT note FROM checkpoints WHERE tree_size >= $1 ORDER BY tree_size DESC LIMIT 1",
            )
            .bind(events)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(
        Checkpoint::signed_by(&note, &verifier),
        Some(new.key_id()),
        "{note}\nqueue-a:\n{}\nqueue-b:\n{}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(
        Checkpoint::signed_by(&note, &old.verifier()),
        None,
        "{note}"
    );

    // Every checkpoint, old key and new, verifies with the rotated file.
    let out = keys
        .queue(&["--json", "verify"], &db.url("queue-verify"))
        .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}\n{}", crate::stderr(&out));
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_sealer_leader_hands_sealing_to_the_other_and_the_ledger_stays_gap_free() {
    let (db, keys, mut a, mut b) = two_instances("sealer").await;
    let leader = poll("a sealer leader", Duration::from_secs(15), || {
        db.sealer_holder()
    })
    .await;
    let (victim, survivor) = if leader == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Writes through both instances, then kill -9 the leader mid-stream.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(
        &survivor.base,
        2,
        stop.clone(),
        t0,
        Duration::from_millis(20),
    );
    let victim_writers =
        spawn_writers(&victim.base, 2, stop.clone(), t0, Duration::from_millis(20));
    poll(
        "events sealed by the leader",
        Duration::from_secs(15),
        || async { (db.sealed_audit_ids().await.len() >= 10).then_some(()) },
    )
    .await;
    let killed_at = Instant::now();
    victim.kill9();
    let takeover = poll(
        "the survivor taking the sealer lock",
        Duration::from_secs(15),
        || async {
            (db.sealer_holder().await.as_deref() == Some(survivor.name.as_str())).then(Instant::now)
        },
    )
    .await;
    eprintln!(
        "{} took over sealing {} ms after kill -9 of {}",
        survivor.name,
        takeover.duration_since(killed_at).as_millis(),
        victim.name
    );

    // The survivor seals writes made after the takeover, on its own.
    let client = crate::procs::client();
    let probe = crate::procs::audit_write(&client, &survivor.base, "after-takeover", t0).await;
    assert_eq!(probe.status, 201, "{probe:?}");
    let probe_id = probe.event_id.clone().unwrap();
    poll(
        "the survivor sealing a new write",
        Duration::from_secs(15),
        || async {
            db.sealed_audit_ids()
                .await
                .contains(&probe_id)
                .then_some(())
        },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    let mut outcomes = join_all(writers).await;
    // The survivor answered every write, before and after the kill.
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !(200..300).contains(&o.status))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", survivor.log_text());
    // Writes to the killed instance either landed or failed at the transport.
    let to_victim = join_all(victim_writers).await;
    assert!(to_victim
        .iter()
        .all(|o| o.status == 0 || (200..300).contains(&o.status)));
    outcomes.extend(to_victim);
    outcomes.push(probe);
    let accepted = accepted(&outcomes);
    let size = db.assert_sealed_gap_free(&keys, &accepted).await;
    eprintln!(
        "{} accepted writes, ledger size {size}, gap-free",
        accepted.len()
    );
}

/// How long the cut test keeps the database away, at least.
const MIN_OUTAGE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_under_load_gives_prompt_503s_and_no_accepted_write_is_lost() {
    let db = TestDb::create("cut").await;
    let keys = Keys::new("cut");
    let proxy = Proxy::to_database().await;
    let c = Instance::start("queue-c", &db.url_via(proxy.port, "queue-c"), &keys).await;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&c.base, 8, stop.clone(), t0, Duration::from_millis(50));
    // Healthy for a moment…
    poll("writes before the cut", Duration::from_secs(15), || async {
        (db.sealed_audit_ids().await.len() >= 20).then_some(())
    })
    .await;
    let cut_at = t0.elapsed();
    proxy.cut();
    let client = crate::procs::client();
    // …then down long enough for the breaker to open.
    poll(
        "/readyz reporting the outage",
        Duration::from_secs(15),
        || async {
            let r = client.get(format!("{}/readyz", c.base)).send().await.ok()?;
            (r.status().as_u16() == 503).then_some(())
        },
    )
    .await;
    poll(
        "/readyz reporting the breaker open",
        Duration::from_secs(15),
        || async {
            let r = client.get(format!("{}/readyz", c.base)).send().await.ok()?;
            let body: serde_json::Value = r.json().await.ok()?;
            (body["breaker"] == "open").then_some(())
        },
    )
    .await;
    // An outage of at least a second, so the writers meet it with requests
    // of their own, not only the probes above (the breaker can open within
    // milliseconds of the cut).
    let held = t0.elapsed() - cut_at;
    if held < MIN_OUTAGE {
        tokio::time::sleep(MIN_OUTAGE - held).await;
    }
    let restored_at = t0.elapsed();
    proxy.restore();
    // Recovery: the breaker's half-open probe (after its open period) closes it.
    let probe_key = "after-restore";
    let recovered = poll(
        "a 2xx after the restore",
        Duration::from_secs(45),
        || async {
            let o = crate::procs::audit_write(&client, &c.base, probe_key, t0).await;
            if (200..300).contains(&o.status) {
                return Some(o);
            }
            // Paces the probe's own writes (not a wait for an effect).
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        },
    )
    .await;
    let recovered_at = t0.elapsed();
    // The writers' load goes on after recovery until more of it is sealed.
    let sealed = db.sealed_audit_ids().await.len();
    poll(
        "writes after the recovery",
        Duration::from_secs(15),
        || async { (db.sealed_audit_ids().await.len() >= sealed + 10).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = join_all(writers).await;
    outcomes.push(recovered);

    // The outage as callers see it lasts until the breaker closes again.
    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent >= cut_at && o.sent < recovered_at)
        .collect();
    let unavailable: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503).collect();
    let max_latency = outcomes.iter().map(|o| o.latency).max().unwrap_or_default();
    let mut latencies_503: Vec<Duration> = unavailable.iter().map(|o| o.latency).collect();
    latencies_503.sort();
    let p50_503 = latencies_503
        .get(latencies_503.len() / 2)
        .copied()
        .unwrap_or_default();
    let after = outcomes
        .iter()
        .filter(|o| o.sent >= recovered_at && (200..300).contains(&o.status))
        .count();
    eprintln!(
        "{} requests: {} ok, {} x 503 (p50 {} ms), max latency {} ms; cut {:?}..{:?}, recovered at {:?}, {} ok after recovery",
        outcomes.len(),
        accepted(&outcomes).len(),
        unavailable.len(),
        p50_503.as_millis(),
        max_latency.as_millis(),
        cut_at,
        restored_at,
        recovered_at,
        after
    );

    // Nothing but success or 503 unavailable with Retry-After: no 500, no reset, no hang.
    let bad: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| {
            !((200..300).contains(&o.status)
                || (o.status == 503 && o.code.as_deref() == Some("unavailable") && o.retry_after))
        })
        .collect();
    let transport: Vec<&str> = bad.iter().filter_map(|o| o.error.as_deref()).collect();
    assert!(
        bad.is_empty(),
        "unexpected answers: {bad:?}\ntransport errors: {transport:?}\n{}",
        c.log_text()
    );
    assert!(!during.is_empty() && during.iter().any(|o| o.status == 503));
    // Bounded: a request that meets the outage waits at most for a pool
    // connection (5 s) before its 503; once the breaker is open it is refused
    // at once.
    assert!(
        max_latency < Duration::from_secs(8),
        "a request took {max_latency:?}"
    );
    assert!(
        p50_503 < Duration::from_millis(500),
        "503s are not prompt: p50 {p50_503:?}"
    );
    // No accepted write lost.
    db.assert_sealed_gap_free(&keys, &accepted(&outcomes)).await;
}
