use sqlx::PgPool;

use crate::*;

fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let db = pool.connect_options().get_database().unwrap().to_string();
    format!("{server}/{db}")
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn verify_exits_zero_when_intact_and_one_naming_the_damage(pool: PgPool) {
    let url = url_of(&pool);
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, recorded_at, prev_hash, hash, mac, mac_key_id) \
         VALUES ('T', 'a', 1, 'E', '1.0', '{}', now(), decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'), 'k1')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        let seal = queue(&["seal"], &env);
        assert!(seal.status.success(), "{}", stderr(&seal));
        queue(&["--json", "verify"], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_problem"]["kind"], "hash_mismatch");
    assert_eq!(report["first_problem"]["aggregate_id"], "a");
    assert_eq!(report["first_problem"]["ledger_seq"], 1);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn verify_passes_on_an_empty_and_an_honest_store(pool: PgPool) {
    let url = url_of(&pool);
    let out = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        queue(&["verify"], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: the ledger is intact"));
}
