//! Shared state of one API instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Set on SIGTERM/SIGINT: health answers 503 while in-flight work drains.
    pub shutting_down: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}
