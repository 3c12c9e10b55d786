//! `queue serve`: the API, the sealer, and a graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use queue_api::AppState;
use queue_eventstore::{
    db, CheckpointSigner, Sealer, SealerConfig, SharedCheckpointSigner, SharedMacKeys,
};
use tokio::sync::watch;

use crate::config::{
    self, ConfigError, Lookup, DEV_BACKUP_CODE_FILE, DEV_CHECKPOINT_FILE, DEV_JWT_FILE,
    DEV_MAC_FILE,
};
use crate::CliError;

/// How long in-flight requests may drain after SIGTERM, and the hard limit.
const DRAIN: Duration = Duration::from_secs(15);
const FORCED_EXIT: Duration = Duration::from_secs(30);

pub struct ServeArgs {
    pub dev: bool,
    pub dev_key_dir: PathBuf,
}

pub async fn run(args: ServeArgs, env: Lookup<'_>) -> Result<(), CliError> {
    let listen: SocketAddr = env("QUEUE_LISTEN")
        .as_deref()
        .unwrap_or("127.0.0.1:8080")
        .parse()
        .map_err(|_| ConfigError::Invalid {
            var: "QUEUE_LISTEN",
            why: "expected host:port, e.g. 127.0.0.1:8080".into(),
        })?;
    let dev = args.dev || env("QUEUE_DEV").is_some_and(|v| v == "1" || v == "true");
    let key_env = dev_key_env(dev, &args.dev_key_dir, env)?;
    let jwt_env = dev_jwt_key_env(dev, &args.dev_key_dir, env)?;
    let lookup = |k: &str| {
        if k == "QUEUE_DEV" && dev {
            return Some("1".to_owned());
        }
        key_env(k).or_else(|| jwt_env(k)).or_else(|| env(k))
    };
    let signer = Arc::new(config::checkpoint_signer(&lookup)?);
    let mac_keys = config::mac_keys(&lookup)?;
    // One ConfigError for api and cli (queue_eventstore::config).
    let api_config = queue_api::Config::from_lookup(lookup)?;
    // The key file decides what signs (its first key); QUEUE_JWT_ALG only
    // what new keys are. A difference is a migration half done, or a typo.
    let signing = api_config.jwt_keys.current();
    if signing.alg() != api_config.jwt_alg {
        tracing::warn!(
            kid = %signing.kid,
            signing_alg = %signing.alg(),
            configured_alg = %api_config.jwt_alg,
            "the current JWT signing key is not of QUEUE_JWT_ALG's type; it signs anyway \
             (rotate to make a key of the configured type current)"
        );
    }

    // Three roles, three URLs (ADR 0212): the API as a member of
    // queue_service, the sealer of queue_sealer, the projection and outbox
    // runners of queue_projector. `queue serve` never migrates: the schema
    // belongs to the owner, who runs `queue migrate`.
    let database_url = config::database_url(env)?;
    let sealer_url = config::role_database_url(env, "QUEUE_SEALER_DATABASE_URL")?;
    let projector_url = config::role_database_url(env, "QUEUE_PROJECTOR_DATABASE_URL")?;
    let pool = connect_as("DATABASE_URL", &database_url, 16).await?;
    db::check_migrated(&pool).await?;
    // The runners open their own connections from these options; the small
    // pools check at start that each role can log in and read the schema.
    let sealer_pool = connect_as("QUEUE_SEALER_DATABASE_URL", &sealer_url, 1).await?;
    let projector_pool = connect_as("QUEUE_PROJECTOR_DATABASE_URL", &projector_url, 1).await?;
    for (var, role_pool) in [
        ("DATABASE_URL", &pool),
        ("QUEUE_SEALER_DATABASE_URL", &sealer_pool),
        ("QUEUE_PROJECTOR_DATABASE_URL", &projector_pool),
    ] {
        let excess = db::excess_privileges(role_pool).await?;
        if !excess.is_empty() {
            tracing::warn!(
                variable = var,
                privileges = %excess.join(", "),
                "this connection's role may rewrite the ledger (the owner or a superuser); \
                 in production connect as a member of queue_service, queue_sealer or \
                 queue_projector (README: production set-up)"
            );
        }
    }

    let (stop_sealer, sealer_stopped) = watch::channel(false);
    let reloader_stopped = sealer_stopped.clone();
    let sender_stopped = sealer_stopped.clone();
    // Read tables (queue_*): one runner per projection, leader-elected.
    let projections = tokio::spawn(queue_projections::run_all(
        projector_pool.clone(),
        queue_projections::RunnerConfig::default(),
        sealer_stopped.clone(),
    ));
    // The mail outbox: events that need a message become rows (leader-elected
    // like the projections); the sender below delivers them (ADR 0208).
    let outbox = tokio::spawn(queue_projections::outbox::run(
        (*projector_pool.connect_options()).clone(),
        queue_projections::RunnerConfig::default(),
        sealer_stopped.clone(),
    ));
    let shared_signer = SharedCheckpointSigner::new(CheckpointSigner::clone(&signer));
    // With a key file, `queue keys rotate --kind checkpoint` reaches the
    // sealer at once: the next checkpoint is signed with the new key.
    if let Some(path) =
        lookup("QUEUE_CHECKPOINT_KEY_FILE").filter(|_| lookup("QUEUE_CHECKPOINT_KEY").is_none())
    {
        tokio::spawn(queue_eventstore::rotation::run_checkpoint_key_reloader(
            pool.clone(),
            shared_signer.clone(),
            PathBuf::from(path),
            reloader_stopped.clone(),
        ));
    }

    let shared_mac_keys = SharedMacKeys::new(mac_keys);
    // With a key file, `queue keys rotate --kind mac` reaches this instance at once.
    if let Some(path) = lookup("QUEUE_MAC_KEYS_FILE").filter(|_| lookup("QUEUE_MAC_KEYS").is_none())
    {
        tokio::spawn(queue_eventstore::rotation::run_mac_key_reloader(
            pool.clone(),
            shared_mac_keys.clone(),
            std::path::PathBuf::from(path),
            reloader_stopped.clone(),
        ));
    }
    let state = AppState::new(pool.clone(), api_config, shared_mac_keys.clone())
        .map_err(|e| CliError::Io(format!("cannot start the API: {e}")))?;
    // The sealer checks every row before sealing it and reports damage
    // through the same monitor as the API's loads (`/readyz`, metrics).
    let sealer = tokio::spawn(
        Sealer::with_shared_signer(
            shared_signer.clone(),
            SealerConfig::default(),
            shared_mac_keys,
        )
        .with_integrity(state.store().integrity().clone())
        .run((*sealer_pool.connect_options()).clone(), sealer_stopped),
    );
    // Fresh state: the cell is empty, so this cannot fail.
    let _ = state.inner.checkpoint_signer.set(shared_signer);
    // The default tenant's stream (ADR 0219), once; a failure here is not a
    // reason to refuse to serve (the next start tries again).
    match queue_api::routes::tenants::ensure_default_tenant(&state).await {
        Ok(true) => tracing::info!("default tenant created"),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "could not create the default tenant's stream"),
    }
    if let Some(path) = state.config().jwt_keys_file.clone() {
        tokio::spawn(queue_api::auth::jwt::run_key_reloader(
            pool.clone(),
            state.inner.jwt_keys.clone(),
            path,
            reloader_stopped,
        ));
    }
    let sender = tokio::spawn(queue_api::mail::outbox::run_sender(
        state.clone(),
        sender_stopped,
    ));
    tokio::spawn(queue_api::run_challenge_sweeper(
        state.clone(),
        Duration::from_secs(60),
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Io(format!("cannot listen on {listen}: {e}")))?;
    tracing::info!(%listen, dev, "queue is serving");
    eprintln!("queue: serving on http://{listen}  (try: curl http://{listen}/healthz)");

    let draining = state.clone();
    let header_timeout = state.config().timeouts.header;
    // QUEUE_METRICS_LISTEN: /metrics on its own address (and not on the API's).
    let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics_server = match state.config().metrics_listen {
        Some(metrics_listen) => {
            let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .map_err(|e| CliError::Io(format!("cannot listen on {metrics_listen}: {e}")))?;
            tracing::info!(%metrics_listen, "metrics are served on their own address");
            let mut stopped = metrics_stopped;
            Some(tokio::spawn(queue_api::http::timeouts::serve(
                metrics_listener,
                queue_api::metrics_app(state.clone()),
                header_timeout,
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
            )))
        }
        None => None,
    };
    let app = queue_api::app(state);
    let server = queue_api::http::timeouts::serve(listener, app, header_timeout, async move {
        shutdown_signal().await;
        tracing::info!(
            "shutdown requested: draining for up to {}s",
            DRAIN.as_secs()
        );
        draining.begin_shutdown();
        // Past the hard limit the process exits, drained or not.
        tokio::spawn(async {
            tokio::time::sleep(FORCED_EXIT).await;
            tracing::error!("forced exit after {}s", FORCED_EXIT.as_secs());
            std::process::exit(1);
        });
    });
    server
        .await
        .map_err(|e| CliError::Io(format!("server: {e}")))?;
    let _ = metrics_stop.send(true);
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }

    let _ = stop_sealer.send(true);
    if tokio::time::timeout(DRAIN, sealer).await.is_err() {
        tracing::warn!("sealer did not reach a clean point in time");
    }
    if tokio::time::timeout(DRAIN, projections).await.is_err() {
        tracing::warn!("projection runners did not stop in time");
    }
    if tokio::time::timeout(DRAIN, outbox).await.is_err() {
        tracing::warn!("the outbox runner did not stop in time");
    }
    // A message in flight finishes (or times out) and is marked; one cut
    // short is sent again after its lease (same Message-ID).
    if tokio::time::timeout(DRAIN, sender).await.is_err() {
        tracing::warn!("the mail sender did not stop in time");
    }
    pool.close().await;
    sealer_pool.close().await;
    projector_pool.close().await;
    tracing::info!("queue stopped cleanly");
    Ok(())
}

/// Connects with the URL in `var`; errors name the variable, never the URL.
async fn connect_as(
    var: &'static str,
    url: &str,
    max_connections: u32,
) -> Result<sqlx::PgPool, CliError> {
    db::connect_options(url).map_err(|_| ConfigError::Invalid {
        var,
        why: "not a valid postgres URL".into(),
    })?;
    db::connect(url, max_connections)
        .await
        .map_err(|e| CliError::Io(format!("{var}: {e}")))
}

/// In dev mode, keys come from (and are generated into) a local directory.
fn dev_key_env(
    dev: bool,
    dir: &std::path::Path,
    env: Lookup<'_>,
) -> Result<impl Fn(&str) -> Option<String>, CliError> {
    let mut files: Vec<(&'static str, PathBuf)> = Vec::new();
    if dev && (env("QUEUE_MAC_KEYS").is_none() || env("QUEUE_CHECKPOINT_KEY").is_none()) {
        if crate::keys::generate(dir, "queue.localhost/ledger")? {
            eprintln!(
                "!!! DEV MODE: generated NEW keys in {} — never use these in production !!!",
                dir.display()
            );
        } else {
            eprintln!(
                "!!! DEV MODE: using dev keys from {} — never use these in production !!!",
                dir.display()
            );
        }
        files.push(("QUEUE_MAC_KEYS_FILE", dir.join(DEV_MAC_FILE)));
        files.push(("QUEUE_CHECKPOINT_KEY_FILE", dir.join(DEV_CHECKPOINT_FILE)));
    }
    if dev
        && env("QUEUE_BACKUP_CODE_KEYS").is_none()
        && env("QUEUE_BACKUP_CODE_KEYS_FILE").is_none()
    {
        let path = dir.join(DEV_BACKUP_CODE_FILE);
        if crate::keys::generate_backup_code_keys(&path)? {
            eprintln!(
                "!!! DEV MODE: generated a NEW backup-code key in {} — never use it in production !!!",
                path.display()
            );
        }
        files.push(("QUEUE_BACKUP_CODE_KEYS_FILE", path));
    }
    Ok(move |k: &str| {
        files
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, p)| p.display().to_string())
    })
}

/// In dev mode without configured JWT keys, use (and create on first start)
/// `<dir>/jwt_keys`.
fn dev_jwt_key_env(
    dev: bool,
    dir: &std::path::Path,
    env: Lookup<'_>,
) -> Result<impl Fn(&str) -> Option<String>, CliError> {
    let mut file = None;
    if dev && env("QUEUE_JWT_KEYS").is_none() && env("QUEUE_JWT_KEYS_FILE").is_none() {
        let path = dir.join(DEV_JWT_FILE);
        let alg = crate::config::jwt_alg(env, None)?;
        if crate::keys::generate_jwt(&path, alg, "dev-")? {
            eprintln!(
                "!!! DEV MODE: generated a NEW {alg} JWT signing key in {} — never use it in production !!!",
                path.display()
            );
        }
        file = Some(path.display().to_string());
    }
    Ok(move |k: &str| {
        if k == "QUEUE_JWT_KEYS_FILE" {
            file.clone()
        } else {
            None
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
