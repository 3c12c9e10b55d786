//! Mail: the outbox sender (rows the outbox runner wrote, delivered with
//! retries) and its transports (log files, SMTP).

pub mod mailer;
pub mod outbox;
