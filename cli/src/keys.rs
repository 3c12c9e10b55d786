//! `queue keys`: generate and rotate key files, print the checkpoint verifier keys.

use crate::stdout::out;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use queue_eventstore::keys::{write_key_file, KeyFileWrite};
use queue_eventstore::{CheckpointSigner, MacKeys};
use rand::RngCore;

use crate::config::{
    self, Lookup, DEV_BACKUP_CODE_FILE, DEV_CHECKPOINT_FILE, DEV_JWT_FILE, DEV_MAC_FILE,
};
use crate::CliError;
use queue_api::auth::jwt::JwtAlg;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Write a new MAC key, checkpoint key, JWT signing key and backup-code
    /// key into DIR (`mac_keys`, `checkpoint.key`, `jwt_keys`,
    /// `backup_code_keys`); files already there are left unchanged.
    Generate {
        #[arg(long, default_value = ".dev/keys")]
        dir: PathBuf,
        /// Log origin, the checkpoint key's name.
        #[arg(long, default_value = "queue.localhost/ledger")]
        origin: String,
        /// The JWT key's algorithm: EdDSA, ES256 or RS256 (default:
        /// QUEUE_JWT_ALG, else EdDSA).
        #[arg(long)]
        alg: Option<JwtAlg>,
    },
    /// Add a new signing key and make it current; what the previous keys
    /// signed keeps verifying. Running instances reload at once
    /// (Postgres NOTIFY, when DATABASE_URL is set).
    Rotate {
        #[arg(long, value_enum)]
        kind: RotateKind,
        /// The key file (default: QUEUE_JWT_KEYS_FILE, QUEUE_MAC_KEYS_FILE or
        /// QUEUE_CHECKPOINT_KEY_FILE, else jwt_keys, mac_keys or
        /// checkpoint.key in QUEUE_DEV_KEY_DIR or .dev/keys). A missing
        /// JWT key file is created.
        #[arg(long)]
        file: Option<PathBuf>,
        /// `--kind jwt`: the new key's algorithm, EdDSA, ES256 or RS256
        /// (default: QUEUE_JWT_ALG, else EdDSA). The older keys keep theirs.
        #[arg(long)]
        alg: Option<JwtAlg>,
    },
    /// Print a public key; its last line is the key itself.
    Public {
        #[command(subcommand)]
        kind: PublicKind,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RotateKind {
    /// The JWT signing keys (QUEUE_JWT_KEYS_FILE).
    Jwt,
    /// The event MAC keys (QUEUE_MAC_KEYS_FILE); old keys stay to verify older events.
    Mac,
    /// The checkpoint signing key (QUEUE_CHECKPOINT_KEY_FILE); the replaced
    /// key's public half stays in the file to verify older checkpoints.
    Checkpoint,
    /// The backup-code pepper keys (QUEUE_BACKUP_CODE_KEYS_FILE); old keys
    /// stay so code sets keyed with them keep verifying. Instances pick the
    /// new key up at restart.
    BackupCode,
}

#[derive(Subcommand)]
pub enum PublicKind {
    /// The checkpoint verifier keys (`<origin>+<8 hex id>+<base64 key>`),
    /// current first, then those replaced by rotations, comma-separated.
    Checkpoint,
}

pub fn run(command: KeysCommand, json: bool, env: Lookup) -> Result<ExitCode, CliError> {
    match command {
        KeysCommand::Generate { dir, origin, alg } => {
            let alg = config::jwt_alg(env, alg)?;
            let mut created = Vec::new();
            if generate(&dir, &origin)? {
                created.extend([DEV_MAC_FILE, DEV_CHECKPOINT_FILE]);
            }
            if generate_jwt(&dir.join(DEV_JWT_FILE), alg, "k")? {
                created.push(DEV_JWT_FILE);
            }
            if generate_backup_code_keys(&dir.join(DEV_BACKUP_CODE_FILE))? {
                created.push(DEV_BACKUP_CODE_FILE);
            }
            let text = if created.is_empty() {
                format!("keys already present in {}; left unchanged", dir.display())
            } else {
                format!(
                    "generated new keys in {}: {} (JWT: {alg})",
                    dir.display(),
                    created.join(", ")
                )
            };
            crate::output(
                json,
                &serde_json::json!({
                    "dir": dir.display().to_string(),
                    "generated": !created.is_empty(),
                    "files": created,
                    "jwt_alg": alg.as_str(),
                }),
                &text,
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { kind, file, alg } => rotate(kind, file, alg, json, env),
        KeysCommand::Public {
            kind: PublicKind::Checkpoint,
        } => {
            let verifier = config::checkpoint_signer(env)?.verifier();
            if json {
                crate::print_json(&serde_json::json!({
                    "checkpoint_verifier_key": verifier.to_string(),
                    "checkpoint_verifier_keys": verifier.key_specs(),
                }));
            } else {
                out!("# checkpoint verifier key for log {}", verifier.name());
                for (index, id) in verifier.key_ids().iter().enumerate() {
                    let role = if index == 0 { "current" } else { "previous" };
                    out!("# {id:08x} ({role})");
                }
                // One line, so scripts that take the last line get every key.
                out!("{verifier}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The file to rotate: `--file`, else the `*_FILE` variable, else the dev
/// key directory. Keys given inline are refused: rotating a file nobody
/// reads would look like success and change nothing.
/// Rotates one kind of key in its file, then tells running instances
/// (NOTIFY) when a database is configured.
fn rotate(
    kind: RotateKind,
    file: Option<PathBuf>,
    alg: Option<JwtAlg>,
    json: bool,
    env: Lookup,
) -> Result<ExitCode, CliError> {
    if alg.is_some() && !matches!(kind, RotateKind::Jwt) {
        return Err(CliError::Io("--alg applies to --kind jwt only".into()));
    }
    let (inline_var, file_var, dev_name, notice) = match kind {
        RotateKind::Jwt => (
            "QUEUE_JWT_KEYS",
            "QUEUE_JWT_KEYS_FILE",
            DEV_JWT_FILE,
            Notice::Jwt,
        ),
        RotateKind::Mac => (
            "QUEUE_MAC_KEYS",
            "QUEUE_MAC_KEYS_FILE",
            DEV_MAC_FILE,
            Notice::Mac,
        ),
        RotateKind::Checkpoint => (
            "QUEUE_CHECKPOINT_KEY",
            "QUEUE_CHECKPOINT_KEY_FILE",
            DEV_CHECKPOINT_FILE,
            Notice::Checkpoint,
        ),
        RotateKind::BackupCode => (
            "QUEUE_BACKUP_CODE_KEYS",
            "QUEUE_BACKUP_CODE_KEYS_FILE",
            DEV_BACKUP_CODE_FILE,
            Notice::None,
        ),
    };
    let path = key_file(file, env, inline_var, file_var, dev_name)?;
    let (id_field, key_id, what, keeps) = match kind {
        RotateKind::Jwt => {
            let alg = config::jwt_alg(env, alg)?;
            (
                "kid",
                queue_api::auth::jwt::rotate_key_file(&path, 3, alg).map_err(CliError::Io)?,
                match alg {
                    JwtAlg::EdDSA => "JWT signing key (EdDSA)",
                    JwtAlg::ES256 => "JWT signing key (ES256)",
                    JwtAlg::RS256 => "JWT signing key (RS256)",
                },
                "",
            )
        }
        RotateKind::Mac => {
            let new_id = queue_eventstore::keys::new_key_id("k");
            (
                "key_id",
                queue_eventstore::rotation::rotate_mac_key_file(&path, &new_id)
                    .map_err(CliError::Io)?,
                "MAC key",
                "older keys stay for verification; ",
            )
        }
        RotateKind::BackupCode => {
            let new_id = queue_eventstore::keys::new_key_id("b");
            (
                "key_id",
                queue_eventstore::rotation::rotate_mac_key_file(&path, &new_id)
                    .map_err(|e| CliError::Io(e.replace("MAC key", "backup-code key")))?,
                "backup-code key",
                "older keys stay so their codes keep verifying; ",
            )
        }
        RotateKind::Checkpoint => (
            "key_id",
            queue_eventstore::rotation::rotate_checkpoint_key_file(&path).map_err(CliError::Io)?,
            "checkpoint key",
            "older public keys stay for verification (publish them: queue keys public checkpoint); ",
        ),
    };
    let notified = match (config::database_url(env), notice) {
        (_, Notice::None) => false,
        (Ok(url), notice) => notify(url, notice)?,
        (Err(_), _) => false,
    };
    crate::output(
        json,
        &serde_json::json!({"file": path.display().to_string(), id_field: key_id, "notified": notified}),
        &format!(
            "new {what} {key_id} is current in {}; {keeps}{}",
            path.display(),
            if notified {
                "running instances were told to reload"
            } else if matches!(kind, RotateKind::BackupCode) {
                "restart instances to pick it up"
            } else {
                "DATABASE_URL not set: restart instances to pick it up"
            }
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn key_file(
    file: Option<PathBuf>,
    env: Lookup,
    inline_var: &'static str,
    file_var: &'static str,
    dev_name: &str,
) -> Result<PathBuf, CliError> {
    if let Some(path) = file.or_else(|| env(file_var).map(PathBuf::from)) {
        return Ok(path);
    }
    if env(inline_var).is_some_and(|v| !v.trim().is_empty()) {
        return Err(CliError::Io(format!(
            "{inline_var} is set inline: change its value and restart, or keep the keys in a file \
             ({file_var} or --file) to rotate them here"
        )));
    }
    Ok(
        PathBuf::from(env("QUEUE_DEV_KEY_DIR").unwrap_or_else(|| ".dev/keys".into()))
            .join(dev_name),
    )
}

/// Creates the key files if absent; returns whether it created them.
pub fn generate(dir: &Path, origin: &str) -> Result<bool, CliError> {
    let mac_path = dir.join(DEV_MAC_FILE);
    let checkpoint_path = dir.join(DEV_CHECKPOINT_FILE);
    if mac_path.exists() && checkpoint_path.exists() {
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    let mut mac = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut mac);
    let key_id = queue_eventstore::keys::new_key_id("k");
    let mac_keys = MacKeys::single(&key_id, mac)?;
    let signer = CheckpointSigner::generate(origin)?;
    write_secret(&mac_path, &mac_keys.to_spec())?;
    write_secret(&checkpoint_path, &signer.to_private_spec())?;
    Ok(true)
}

/// Creates a backup-code key file (`b<time>-<random>=<64 hex>`, ADR 0211) if
/// absent; returns whether it created it.
pub fn generate_backup_code_keys(path: &Path) -> Result<bool, CliError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    }
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let key_id = queue_eventstore::keys::new_key_id("b");
    write_secret(path, &MacKeys::single(&key_id, key)?.to_spec())?;
    Ok(true)
}

/// Creates a JWT key file with one new key of `alg` (key id `<prefix><time>-<random>`)
/// if absent; returns whether it created it.
pub fn generate_jwt(path: &Path, alg: JwtAlg, prefix: &str) -> Result<bool, CliError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    }
    let kid = queue_eventstore::keys::new_key_id(prefix);
    let keys = queue_api::auth::jwt::JwtKeySet::generate_with(&kid, alg).map_err(CliError::Io)?;
    write_secret(path, &keys.to_spec())?;
    Ok(true)
}

/// Writes a new secret file readable by the owner only; never overwrites.
pub(crate) fn write_secret(path: &Path, contents: &str) -> Result<(), CliError> {
    write_key_file(path, contents, KeyFileWrite::CreateNew).map_err(CliError::Io)
}

/// Which running-instance reloader to wake (`None`: read at start only).
enum Notice {
    Jwt,
    Mac,
    Checkpoint,
    None,
}

/// NOTIFY on its own thread and runtime (this command runs inside the CLI's runtime).
fn notify(database_url: String, notice: Notice) -> Result<bool, CliError> {
    let worker = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let pool = queue_eventstore::db::connect(&database_url, 1)
                .await
                .map_err(|e| e.to_string())?;
            match notice {
                Notice::Jwt => queue_api::auth::jwt::notify_rotation(&pool).await,
                Notice::Mac => queue_eventstore::rotation::notify_mac_rotation(&pool).await,
                Notice::Checkpoint => {
                    queue_eventstore::rotation::notify_checkpoint_rotation(&pool).await
                }
                Notice::None => Ok(()),
            }
            .map_err(|e| e.to_string())
        })
    });
    match worker.join() {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(CliError::Io(format!("key rotated, but NOTIFY failed: {e}"))),
        Err(_) => Err(CliError::Io("key rotated, but NOTIFY failed".into())),
    }
}
