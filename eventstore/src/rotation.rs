//! Key rotation across instances: `queue keys rotate --kind mac|checkpoint`
//! puts a new key first in the key file (old keys stay: MAC keys verify older
//! events for ever, old checkpoint public keys verify older checkpoints) and
//! announces it on a Postgres channel; every instance's reloader re-reads the
//! file and swaps its keys at once. A file that cannot be read or parsed
//! leaves the last good keys in place (reported as degraded).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::keys::{
    write_key_file, CheckpointSigner, KeyFileWrite, MacKeys, SharedCheckpointSigner,
};
use crate::repository::SharedMacKeys;

/// The channel that announces a MAC key rotation.
pub const MAC_ROTATION_CHANNEL: &str = "queue_mac_keys";

/// The channel that announces a checkpoint key rotation.
pub const CHECKPOINT_ROTATION_CHANNEL: &str = "queue_checkpoint_keys";

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
    notify(pool, MAC_ROTATION_CHANNEL).await
}

/// Announces a rotation on `channel` (MAC, checkpoint and JWT keys alike).
pub async fn notify(pool: &PgPool, channel: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, 'rotated')")
        .bind(channel)
        .execute(pool)
        .await?;
    Ok(())
}

/// One reload of a key set, the same for every kind: `read` re-reads the
/// file and swaps the keys in, returning the new current key id when it
/// changed (logged); on failure the last good keys stay in use, marked
/// degraded (`/readyz`, the `*_degraded` gauges).
pub fn reload_keys(
    what: &str,
    read: impl FnOnce() -> Result<Option<String>, String>,
    mark_degraded: impl FnOnce(),
) -> bool {
    match read() {
        Ok(changed) => {
            if let Some(current) = changed {
                tracing::info!(keys = what, current = %current, "keys reloaded");
            }
            true
        }
        Err(e) => {
            tracing::error!(keys = what, error = %e, "key file unusable: keeping the last good keys (degraded)");
            mark_degraded();
            false
        }
    }
}

fn reload(keys: &SharedMacKeys, path: &Path) -> bool {
    reload_keys(
        "MAC",
        || {
            let fresh = read_mac_key_file(path)?;
            let changed = (fresh.current_id() != keys.current().current_id())
                .then(|| fresh.current_id().to_owned());
            keys.replace(fresh);
            Ok(changed)
        },
        || keys.mark_degraded(),
    )
}

/// Reloads `keys` from `path` on every announcement (and after every
/// reconnect, so a missed announcement is caught up); runs until `stop`.
pub async fn run_mac_key_reloader(
    pool: PgPool,
    keys: SharedMacKeys,
    path: PathBuf,
    stop: watch::Receiver<bool>,
) {
    run_reloader(pool, MAC_ROTATION_CHANNEL, "MAC", stop, move || {
        reload(&keys, &path)
    })
    .await
}

/// The checkpoint key file: the private key, then previous public keys.
pub fn read_checkpoint_key_file(path: &Path) -> Result<CheckpointSigner, String> {
    let spec =
        std::fs::read_to_string(path).map_err(|e| format!("{}: {}", path.display(), e.kind()))?;
    CheckpointSigner::parse(spec.trim()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes a new random checkpoint key current; the replaced key's public half
/// stays in the file (checkpoints it signed keep verifying; its private half
/// is dropped: it never signs again). Returns the new key id (8 hex digits).
pub fn rotate_checkpoint_key_file(path: &Path) -> Result<String, String> {
    let current = read_checkpoint_key_file(path)?;
    let fresh = current.rotated().map_err(|e| e.to_string())?;
    write_key_file(path, &fresh.to_file_spec(), KeyFileWrite::Replace)?;
    Ok(format!("{:08x}", fresh.key_id()))
}

/// Tells every instance on this database to reload its checkpoint key file.
pub async fn notify_checkpoint_rotation(pool: &PgPool) -> Result<(), sqlx::Error> {
    notify(pool, CHECKPOINT_ROTATION_CHANNEL).await
}

/// Re-reads the checkpoint key file; on failure (unreadable, unparsable, or
/// a key for another log) keeps the last good key and marks it degraded.
pub fn reload_checkpoint_signer(signer: &SharedCheckpointSigner, path: &Path) -> bool {
    reload_keys(
        "checkpoint",
        || {
            let fresh = read_checkpoint_key_file(path)?;
            let (old, new) = (signer.current().key_id(), fresh.key_id());
            signer.replace(fresh)?;
            Ok((old != new).then(|| format!("{new:08x}")))
        },
        || signer.mark_degraded(),
    )
}

/// Reloads the checkpoint signer from `path` on every announcement and after
/// every reconnect; runs until `stop`.
pub async fn run_checkpoint_key_reloader(
    pool: PgPool,
    signer: SharedCheckpointSigner,
    path: PathBuf,
    stop: watch::Receiver<bool>,
) {
    run_reloader(
        pool,
        CHECKPOINT_ROTATION_CHANNEL,
        "checkpoint",
        stop,
        move || reload_checkpoint_signer(&signer, &path),
    )
    .await
}

/// The one reloader loop of every key set (MAC, checkpoint, JWT): LISTENs
/// on `channel` and calls `reload` once listening (a rotation may have
/// happened while not listening) and on every notification. A failure to
/// connect or listen is retried with exponential backoff (250 ms doubling to
/// 30 s, reset once listening), never in a tight loop.
pub async fn run_reloader(
    pool: PgPool,
    channel: &'static str,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    reload: impl Fn() -> bool,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(250);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    let mut backoff = FIRST_BACKOFF;
    while !*stop.borrow() {
        let listening = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => Ok(listener),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let mut listener = match listening {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, keys = what, retry_in_ms = backoff.as_millis() as u64,
                    "key reloader cannot listen; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        reload();
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    Ok(_) => {
                        reload();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, keys = what, "key reloader lost its connection");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
