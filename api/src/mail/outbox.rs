//! The mail outbox sender (ADR 0208). The rows come from the `outbox`
//! runner (`queue_projections::outbox`), one per event that needs a
//! message; this claims due rows (`FOR UPDATE SKIP LOCKED` and a lease, so
//! every instance may run it), renders them from the templates in
//! `api/templates/mail/`, hands them to the configured [`Mailer`], and
//! marks each sent, due again after an exponential backoff, or dead (a
//! permanent failure, or the last of `QUEUE_MAIL_MAX_ATTEMPTS`).
//!
//! At least once: a row is marked sent only after the transport accepted
//! it, so a crash in between sends it again, with the same Message-ID
//! (`<row id@from domain>`) so the copy is recognisable.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use queue_domain::types::{CustomerId, SecretHash};
use queue_projections::outbox::{self, MailKind, OutboxRow};
use queue_projections::ProjectionResult;
use tokio::sync::watch;

use crate::auth::tokens;
use crate::mail::mailer::Message;
use crate::state::AppState;

/// Rows claimed at once: one, so each lease covers one send only.
const CLAIM: i64 = 1;
/// Sleep between polls when nothing is due.
const POLL: Duration = Duration::from_millis(200);

/// Delivers due messages until `shutdown` turns true.
pub async fn run_sender(state: AppState, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("mail outbox sender started");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = match deliver_due(&state).await {
            Ok(0) => POLL,
            Ok(_) => Duration::ZERO,
            Err(err) => {
                tracing::warn!(error = %err, "mail outbox: cannot reach the database; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
    }
}

/// One round: claims the rows due now and tries each once. Returns how many
/// were tried (tests drive the outbox with this).
pub async fn deliver_due(state: &AppState) -> ProjectionResult<usize> {
    let lease = lease_for(state);
    let rows = outbox::claim_due(&state.pool, CLAIM, lease).await?;
    let tried = rows.len();
    for row in rows {
        deliver(state, row).await?;
    }
    Ok(tried)
}

/// How long a claimed row stays with this sender: one send's worst case
/// (the SMTP timeout bounds each of connect, TLS and the commands), with
/// room to spare. A sender that dies mid-send holds the row this long; then
/// another sends it (same Message-ID). A send slower than this may be
/// duplicated, never lost.
fn lease_for(state: &AppState) -> Duration {
    let timeout = match &state.config().mailer {
        crate::config::MailerConfig::Smtp(smtp) => smtp.timeout,
        crate::config::MailerConfig::Log { .. } => Duration::from_secs(5),
    };
    timeout * 6 * CLAIM as u32 + Duration::from_secs(5)
}

async fn deliver(state: &AppState, row: OutboxRow) -> ProjectionResult<()> {
    let pool = &state.pool;
    let mail = &state.config().mail;
    let message = match render(state, &row) {
        Ok(message) => message,
        Err(reason) => {
            tracing::error!(id = %row.id, kind = %row.kind, %reason, "mail outbox: dead letter");
            return outbox::mark_dead(pool, row.id, &reason).await;
        }
    };
    match state.inner.mailer.send(&message).await {
        Ok(()) => {
            tracing::info!(id = %row.id, kind = %row.kind, attempts = row.attempts, "mail sent");
            outbox::mark_sent(pool, row.id).await
        }
        Err(err) if err.permanent || row.attempts >= mail.max_attempts as i32 => {
            tracing::error!(id = %row.id, kind = %row.kind, attempts = row.attempts,
                permanent = err.permanent, error = %err.reason, "mail outbox: dead letter");
            outbox::mark_dead(pool, row.id, &err.reason).await
        }
        Err(err) => {
            let delay = backoff(mail.retry_base, mail.retry_max, row.attempts);
            tracing::warn!(id = %row.id, kind = %row.kind, attempts = row.attempts,
                retry_in_ms = delay.as_millis() as u64, error = %err.reason, "mail not sent; will retry");
            outbox::mark_retry(pool, row.id, &err.reason, delay).await
        }
    }
}

/// `base · 2^(attempts−1)`, at most `max`.
pub fn backoff(base: Duration, max: Duration, attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
    base.saturating_mul(1u32 << exponent).min(max)
}

/// The Message-ID of a row: `<row id@domain of QUEUE_MAIL_FROM>`.
pub fn message_id(row_id: uuid::Uuid, from: &str) -> String {
    let domain = from
        .parse::<Mailbox>()
        .map(|m| m.email.domain().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("<{}@{domain}>", row_id.hyphenated())
}

fn template(kind: MailKind) -> (&'static str, &'static str) {
    match kind {
        MailKind::EmailVerification => (
            include_str!("../../templates/mail/email_verification.txt"),
            include_str!("../../templates/mail/email_verification.html"),
        ),
        MailKind::PasskeyAdded => (
            include_str!("../../templates/mail/passkey_added.txt"),
            include_str!("../../templates/mail/passkey_added.html"),
        ),
        MailKind::PasskeyRemoved => (
            include_str!("../../templates/mail/passkey_removed.txt"),
            include_str!("../../templates/mail/passkey_removed.html"),
        ),
        MailKind::BackupCodesRegenerated => (
            include_str!("../../templates/mail/backup_codes_regenerated.txt"),
            include_str!("../../templates/mail/backup_codes_regenerated.html"),
        ),
        MailKind::SessionRevoked => (
            include_str!("../../templates/mail/session_revoked.txt"),
            include_str!("../../templates/mail/session_revoked.html"),
        ),
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills `{{name}}` placeholders; `html` escapes every value.
fn fill(template: &str, values: &[(&str, String)], html: bool) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        let value = if html {
            escape_html(value)
        } else {
            value.clone()
        };
        out = out.replace(&format!("{{{{{name}}}}}"), &value);
    }
    out
}

/// The message for a row, or why it can never be sent (a dead letter).
pub fn render(state: &AppState, row: &OutboxRow) -> Result<Message, String> {
    let mut values = vec![
        ("email", row.recipient.clone()),
        ("at", format_at(row.event_at)),
    ];
    if let Some(name) = row.details.get("name").and_then(|n| n.as_str()) {
        values.push(("name", format!(" \u{201c}{name}\u{201d}")));
    } else {
        values.push(("name", String::new()));
    }
    if row.kind == MailKind::EmailVerification {
        if row.expires_at.is_some_and(|e| e <= state.now()) {
            return Err("the verification link expired before it could be delivered".to_owned());
        }
        let hash: SecretHash = row
            .token_hash
            .as_deref()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| "the row has no token hash".to_owned())?;
        let sequence = u64::try_from(row.sequence).map_err(|_| "bad sequence".to_owned())?;
        let keys = state.store().repo().keys().current();
        let token =
            tokens::email_token_matching(&keys, CustomerId::from(row.customer_id), sequence, &hash)
                .ok_or_else(|| {
                    "no MAC key reproduces the verification token (was its key removed?)".to_owned()
                })?;
        values.push((
            "link",
            format!("{}?token={token}", state.config().email_verify_url),
        ));
    }
    let (text, html) = template(row.kind);
    let (subject, body) = text
        .split_once('\n')
        .and_then(|(first, rest)| Some((first.strip_prefix("Subject: ")?, rest)))
        .ok_or_else(|| format!("template {} has no Subject line", row.kind))?;
    let body = fill(body.trim_start_matches('\n'), &values, false).replace('\n', "\r\n");
    Ok(Message {
        message_id: message_id(row.id, state.inner.mailer.from()),
        to: row.recipient.clone(),
        subject: subject.trim().to_owned(),
        body,
        html: fill(html, &values, true),
    })
}

fn format_at(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=6).map(|a| backoff(base, max, a).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff(base, max, 1000), max);
    }

    #[test]
    fn message_ids_are_stable_and_use_the_from_domain() {
        let id = uuid::Uuid::from_u128(7);
        let a = message_id(id, "Queue <no-reply@mail.example.com>");
        assert_eq!(a, message_id(id, "Queue <no-reply@mail.example.com>"));
        assert_eq!(a, format!("<{}@mail.example.com>", id.hyphenated()));
    }

    #[test]
    fn html_values_are_escaped() {
        let out = fill("<p>{{name}}</p>", &[("name", "<script>&".to_owned())], true);
        assert_eq!(out, "<p>&lt;script&gt;&amp;</p>");
        let every = [
            MailKind::EmailVerification,
            MailKind::PasskeyAdded,
            MailKind::PasskeyRemoved,
            MailKind::BackupCodesRegenerated,
            MailKind::SessionRevoked,
        ];
        for kind in every {
            let (text, html) = template(kind);
            assert!(text.starts_with("Subject: "), "{kind}");
            assert!(html.contains("{{email}}"), "{kind}");
        }
    }
}
