//! Outgoing email. `LogMailer` writes each message as a file into a
//! directory (dev and tests read it from there); an SMTP mailer is not part
//! of this build (docs/decisions/0201-api-mailer.md).

use std::path::PathBuf;

use async_trait::async_trait;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot send mail: {0}")]
pub struct MailError(pub String);

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, message: &Message) -> Result<(), MailError>;
}

/// Writes `<dir>/<time>-<uuid>.eml`, one file per message, mode 0600.
#[derive(Clone, Debug)]
pub struct LogMailer {
    dir: PathBuf,
}

impl LogMailer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, message: &Message) -> Result<(), MailError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| MailError(format!("{}: {}", self.dir.display(), e.kind())))?;
        let name = format!(
            "{}-{}.eml",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
            uuid::Uuid::new_v4().simple()
        );
        let path = self.dir.join(name);
        let text = format!(
            "To: {}\r\nSubject: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            message.to, message.subject, message.body
        );
        // Messages hold secret links: readable by the service's user only.
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(&path)
            .await
            .map_err(|e| MailError(format!("{}: {}", path.display(), e.kind())))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes())
            .await
            .map_err(|e| MailError(format!("{}: {}", path.display(), e.kind())))?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| MailError(format!("{}: {}", path.display(), e.kind())))?;
        // The path only: the body holds a secret link.
        tracing::info!(path = %path.display(), "mail written by the log mailer");
        Ok(())
    }
}
