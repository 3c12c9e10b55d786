//! Outgoing email transports. Messages come from the outbox
//! (`crate::mail::outbox`, ADR 0208); a transport only delivers one.
//! `LogMailer` writes each message as a file into a directory (dev and
//! tests read it from there); `SmtpMailer` delivers over SMTP with `lettre`
//! (rustls with ring: implicit TLS, STARTTLS, AUTH, timeouts).

use std::path::PathBuf;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::SmtpConfig;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `<id@domain>`, stable across retries of the same outbox row.
    pub message_id: String,
    pub to: String,
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    pub html: String,
}

/// Why a message was not delivered. `permanent`: retrying cannot help (a
/// 5xx reply, an invalid address); the outbox dead-letters it at once.
#[derive(Debug, thiserror::Error)]
#[error("cannot send mail: {reason}")]
pub struct MailError {
    pub permanent: bool,
    pub reason: String,
}

impl MailError {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            permanent: false,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            permanent: true,
            reason: reason.into(),
        }
    }
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// The From address.
    fn from(&self) -> &str;
    async fn send(&self, message: &Message) -> Result<(), MailError>;
}

/// Writes `<dir>/<time>-<uuid>.eml`, one file per delivery, mode 0600.
#[derive(Clone, Debug)]
pub struct LogMailer {
    dir: PathBuf,
    from: String,
}

impl LogMailer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_from(dir, "Queue <queue@localhost>")
    }

    pub fn with_from(dir: impl Into<PathBuf>, from: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            from: from.into(),
        }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

#[async_trait]
impl Mailer for LogMailer {
    fn from(&self) -> &str {
        &self.from
    }

    async fn send(&self, message: &Message) -> Result<(), MailError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| MailError::transient(format!("{}: {}", self.dir.display(), e.kind())))?;
        let name = format!(
            "{}-{}.eml",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
            uuid::Uuid::new_v4().simple()
        );
        let path = self.dir.join(name);
        let boundary = "queue-alternative";
        let text = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nMessage-ID: {}\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\
             --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}\r\n--{boundary}--\r\n",
            self.from, message.to, message.subject, message.message_id, message.body, message.html
        );
        // Messages hold secret links: readable by the service's user only.
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(&path)
            .await
            .map_err(|e| MailError::transient(format!("{}: {}", path.display(), e.kind())))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes())
            .await
            .map_err(|e| MailError::transient(format!("{}: {}", path.display(), e.kind())))?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| MailError::transient(format!("{}: {}", path.display(), e.kind())))?;
        // The path only: the body may hold a secret link.
        tracing::info!(path = %path.display(), message_id = %message.message_id, "mail written by the log mailer");
        Ok(())
    }
}

/// SMTP through `lettre`. One connection per message (no pool): the outbox
/// sends a trickle, and a fresh connection never reuses a broken one.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    from_text: String,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from_text)
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// Errors never include the URL (it may hold a password).
    pub fn new(config: &SmtpConfig, from: &str) -> Result<Self, String> {
        let from_box: Mailbox = from
            .parse()
            .map_err(|_| "QUEUE_MAIL_FROM: not an address".to_owned())?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(config.url.expose())
            .map_err(|_| "QUEUE_SMTP_URL: not usable by the SMTP client".to_owned())?
            .timeout(Some(config.timeout))
            .build();
        Ok(Self {
            transport,
            from: from_box,
            from_text: from.to_owned(),
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    fn from(&self) -> &str {
        &self.from_text
    }

    async fn send(&self, message: &Message) -> Result<(), MailError> {
        let to: Mailbox = message
            .to
            .parse()
            .map_err(|_| MailError::permanent("the recipient is not a valid address"))?;
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&message.subject)
            .message_id(Some(message.message_id.clone()))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(message.body.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(message.html.clone()),
                    ),
            )
            .map_err(|e| MailError::permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            // lettre's error text names the reply code and the server's
            // words, never the credentials.
            Err(e) if e.is_permanent() => Err(MailError::permanent(e.to_string())),
            Err(e) => Err(MailError::transient(e.to_string())),
        }
    }
}
