//! MAC key rotation across instances: `queue keys rotate --kind mac` puts a
//! new key first in the key file (old keys stay: they verify older events
//! for ever) and announces it on a Postgres channel; every instance's
//! reloader re-reads the file and swaps its keys at once. A file that cannot
//! be read or parsed leaves the last good keys in place (reported).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::keys::{write_key_file, KeyFileWrite, MacKeys};
use crate::repository::SharedMacKeys;

/// The channel that announces a MAC key rotation.
pub const MAC_ROTATION_CHANNEL: &str = "queue_mac_keys";

pub fn read_mac_key_file(path: &Path) -> Result<MacKeys, String> {
    let spec =
        std::fs::read_to_string(path).map_err(|e| format!("{}: {}", path.display(), e.kind()))?;
    MacKeys::parse(spec.trim()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Adds a new random 32-byte key as the current one; returns its id.
pub fn rotate_mac_key_file(path: &Path, new_id: &str) -> Result<String, String> {
    let current = read_mac_key_file(path)?;
    if current.get(new_id).is_some() {
        return Err(format!("MAC key id {new_id:?} already exists"));
    }
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let spec = format!("{new_id}={},{}", hex::encode(&key), current.to_spec());
    MacKeys::parse(&spec).map_err(|e| e.to_string())?;
    write_key_file(path, &spec, KeyFileWrite::Replace)?;
    Ok(new_id.to_string())
}

/// Tells every instance on this database to reload its MAC key file.
pub async fn notify_mac_rotation(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, 'rotated')")
        .bind(MAC_ROTATION_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

fn reload(keys: &SharedMacKeys, path: &Path) -> bool {
    match read_mac_key_file(path) {
        Ok(fresh) => {
            if fresh.current_id() != keys.current().current_id() {
                tracing::info!(key_id = fresh.current_id(), "MAC keys reloaded");
            }
            keys.replace(fresh);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "MAC key file unreadable: keeping the last good keys (degraded)");
            keys.mark_degraded();
            false
        }
    }
}

/// Reloads `keys` from `path` on every announcement (and after every
/// reconnect, so a missed announcement is caught up); runs until `stop`.
pub async fn run_mac_key_reloader(
    pool: PgPool,
    keys: SharedMacKeys,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "MAC key reloader cannot listen; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if let Err(e) = listener.listen(MAC_ROTATION_CHANNEL).await {
            tracing::warn!(error = %e, "MAC key reloader cannot listen; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        reload(&keys, &path);
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    Ok(_) => {
                        reload(&keys, &path);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "MAC key reloader lost its connection");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
