use std::sync::Arc;

use chrono::{TimeZone, Utc};
use cqrs_es::persist::SerializedEvent;
use queue_eventstore::verify::NoProgress;
use queue_eventstore::{
    verify_store, ChainedEventRepository, FixedClock, MacKeys, Sealer, SealerConfig, SharedMacKeys,
    SystemClock, VerifyInput, VerifyReport,
};
use serde_json::{json, Value};
use sqlx::PgPool;

pub const MAC_KEY: [u8; 32] = [0x11; 32];

pub fn mac_keys() -> MacKeys {
    MacKeys::single("k1", MAC_KEY.to_vec()).unwrap()
}

pub use queue_testkit::keys::checkpoint_signer as signer;

pub fn repo(pool: &PgPool) -> ChainedEventRepository {
    ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(mac_keys()),
        Arc::new(SystemClock),
    )
}

pub fn fixed_repo(pool: &PgPool) -> ChainedEventRepository {
    let at = Utc.with_ymd_and_hms(2026, 11, 25, 16, 22, 14).unwrap();
    ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(mac_keys()),
        Arc::new(FixedClock(at)),
    )
}

pub fn sealer() -> Sealer {
    sealer_with(SharedMacKeys::new(mac_keys()))
}

/// A sealer that checks rows with these (possibly rotating) MAC keys.
pub fn sealer_with(keys: SharedMacKeys) -> Sealer {
    Sealer::new(
        signer(),
        SealerConfig {
            batch_size: 7,
            checkpoint_every: 5,
            ..SealerConfig::default()
        },
        keys,
    )
}

pub fn ev(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: usize,
    payload: Value,
) -> SerializedEvent {
    SerializedEvent::new(
        aggregate_id.to_string(),
        sequence,
        aggregate_type.to_string(),
        "Happened".to_string(),
        "1.0".to_string(),
        payload,
        json!({}),
    )
}

pub async fn verify(pool: &PgPool) -> VerifyReport {
    verify_with(pool, &[]).await
}

pub async fn verify_with(pool: &PgPool, external: &[String]) -> VerifyReport {
    let keys = mac_keys();
    let verifier = signer().verifier();
    verify_store(
        pool,
        &VerifyInput {
            mac_keys: &keys,
            checkpoint_key: &verifier,
            external_checkpoints: external,
        },
        &NoProgress,
    )
    .await
    .unwrap()
}

/// Runs SQL as the superuser with the append-only triggers switched off,
/// the way an attacker with database access would.
pub async fn tamper(pool: &PgPool, sql: &str) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    sqlx::query("RESET session_replication_role")
        .execute(&mut *conn)
        .await
        .unwrap();
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}
