//! Email through the outbox, delivered by `queue serve` to a real SMTP
//! server on loopback (aiosmtpd, `cli/tests/smtp_sink.py`; installed by
//! scripts/smtp-setup): a verification email arrives with a working link;
//! SMTP down for a while, then the message arrives exactly once; a 550
//! lands in the dead-letter state; a restart between enqueue and delivery
//! loses nothing (ADR 0208).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::procs::{client, free_port, poll, Instance, Keys, TestDb};
use crate::recipes::register_as;

const FROM: &str = "Queue <no-reply@queue.test>";
const VERIFY_URL: &str = "http://localhost:8080/verify-email";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The venv's Python with aiosmtpd, or a failure that says how to get it.
fn python() -> PathBuf {
    let python = repo_root().join(".dev/smtp/venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the SMTP delivery tests need aiosmtpd in {}; run scripts/smtp-setup (scripts/test does)",
        python.display()
    );
    python
}

/// A loopback SMTP server writing each accepted message to `dir`.
struct Smtp {
    child: Child,
}

impl Smtp {
    async fn start(port: u16, dir: &Path, reject: Option<&str>) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("cli/tests/smtp_sink.py"))
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(address) = reject {
            cmd.args(["--reject", address]);
        }
        let child = cmd.spawn().unwrap();
        let smtp = Self { child };
        poll(
            "the SMTP server to listen",
            Duration::from_secs(20),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        smtp
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn received(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect()
}

fn smtp_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("QUEUE_MAILER", "smtp".to_owned()),
        ("QUEUE_SMTP_URL", format!("smtp://127.0.0.1:{port}")),
        ("QUEUE_MAIL_FROM", FROM.to_owned()),
        ("QUEUE_EMAIL_VERIFY_URL", VERIFY_URL.to_owned()),
        ("QUEUE_SMTP_TIMEOUT_MS", "3000".to_owned()),
        ("QUEUE_MAIL_RETRY_BASE_MS", "100".to_owned()),
        ("QUEUE_MAIL_RETRY_MAX_MS", "400".to_owned()),
        ("QUEUE_MAIL_MAX_ATTEMPTS", "100".to_owned()),
    ]
}

async fn start(name: &str, db: &TestDb, keys: &Keys, port: u16) -> Instance {
    start_with(name, db, keys, port, &[]).await
}

async fn start_with(
    name: &str,
    db: &TestDb,
    keys: &Keys,
    port: u16,
    more: &[(&'static str, &str)],
) -> Instance {
    let mut env = smtp_env(port);
    env.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Instance::start_with(name, &db.url(name), keys, &env).await
}

async fn request_verification(base: &str, tokens: &Value) -> u16 {
    client()
        .post(format!("{base}/api/v1/auth/email/verification"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// (id, state, attempts, last_error) of the outbox rows.
async fn rows(db: &TestDb) -> Vec<(uuid::Uuid, String, i32, Option<String>)> {
    sqlx::query_as("SELECT id, state, attempts, last_error FROM mail_outbox ORDER BY created_at")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn wait_for_mail(dir: &Path, count: usize) -> Vec<Value> {
    poll(
        "the message at the SMTP server",
        Duration::from_secs(30),
        || async {
            let got = received(dir);
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

fn message_id_of(row: uuid::Uuid) -> String {
    format!("<{row}@queue.test>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_email_arrives_over_smtp_with_a_working_link() {
    let db = TestDb::create("mail_link").await;
    let keys = Keys::new("mail_link");
    let port = free_port();
    let inbox = keys.dir.join("inbox");
    let _smtp = Smtp::start(port, &inbox, None).await;
    let queue = start("queue-mail", &db, &keys, port).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;

    let asked = std::time::Instant::now();
    assert_eq!(request_verification(&queue.base, &tokens).await, 202);
    let mail = wait_for_mail(&inbox, 1).await;
    eprintln!(
        "verification request → message at the SMTP server: {:?}",
        asked.elapsed()
    );
    let row = rows(&db).await[0].0;
    assert_eq!(mail[0]["message_id"], message_id_of(row), "{mail:?}");
    assert_eq!(mail[0]["to"], json!(["ada@example.com"]));
    assert_eq!(mail[0]["subject"], "Confirm your email address");
    assert!(mail[0]["from"]
        .as_str()
        .unwrap()
        .contains("no-reply@queue.test"));
    let text = mail[0]["text"].as_str().unwrap();
    let html = mail[0]["html"].as_str().unwrap();
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with(VERIFY_URL))
        .unwrap_or_else(|| panic!("no link in {text}"));
    assert!(
        html.contains(link),
        "the HTML part has the same link: {html}"
    );
    let token = link.split("?token=").nth(1).unwrap();

    // Follow the link through the API: the customer becomes verified.
    let verified = client()
        .post(format!("{}/api/v1/auth/email/verify", queue.base))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status().as_u16(), 200);
    let me: Value = client()
        .get(format!("{}/api/v1/auth/me", queue.base))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], true, "{me}");
    // The sender marks the row sent after the server accepted the message
    // (at least once), so the mark can trail its arrival by a moment.
    poll(
        "the outbox row to be marked sent",
        Duration::from_secs(30),
        || async { (rows(&db).await[0].1 == "sent").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_for_a_while_then_the_message_arrives_exactly_once() {
    let db = TestDb::create("mail_outage").await;
    let keys = Keys::new("mail_outage");
    // Nothing listens on the SMTP port yet.
    let port = free_port();
    let inbox = keys.dir.join("inbox");
    let queue = start("queue-mail", &db, &keys, port).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;

    assert_eq!(
        request_verification(&queue.base, &tokens).await,
        202,
        "an SMTP outage never fails the request"
    );
    // Several failed attempts, backing off.
    let (id, _, attempts, error) =
        poll("three failed attempts", Duration::from_secs(30), || async {
            rows(&db)
                .await
                .into_iter()
                .next()
                .filter(|r| r.1 == "pending" && r.2 >= 3)
        })
        .await;
    assert!(attempts >= 3);
    assert!(error.is_some_and(|e| !e.is_empty()));
    assert!(received(&inbox).is_empty());

    let _smtp = Smtp::start(port, &inbox, None).await;
    let mail = wait_for_mail(&inbox, 1).await;
    assert_eq!(mail[0]["message_id"], message_id_of(id));
    poll(
        "the row to be marked sent",
        Duration::from_secs(10),
        || async { (rows(&db).await[0].1 == "sent").then_some(()) },
    )
    .await;
    // Longer than the longest backoff: no second copy follows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mail = received(&inbox);
    let copies = mail
        .iter()
        .filter(|m| m["message_id"] == message_id_of(id))
        .count();
    assert_eq!(copies, 1, "{mail:?}");
    assert_eq!(mail.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_lands_in_the_dead_letter_state() {
    let db = TestDb::create("mail_dead").await;
    let keys = Keys::new("mail_dead");
    let port = free_port();
    let inbox = keys.dir.join("inbox");
    let _smtp = Smtp::start(port, &inbox, Some("gone@example.com")).await;
    let queue = start("queue-mail", &db, &keys, port).await;
    let tokens = register_as(&queue.base, "gone@example.com").await;

    assert_eq!(request_verification(&queue.base, &tokens).await, 202);
    let (_, _, attempts, error) =
        poll("the dead-letter state", Duration::from_secs(30), || async {
            rows(&db).await.into_iter().next().filter(|r| r.1 == "dead")
        })
        .await;
    assert_eq!(attempts, 1, "a 550 is not retried");
    let error = error.unwrap();
    assert!(error.contains("550"), "{error}");
    assert!(received(&inbox).is_empty());

    // Visible in `queue projections status` …
    let out = keys
        .queue(&["--json", "projections", "status"], &db.url("status"))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["mail_outbox"]["dead"], 1, "{status}");
    assert_eq!(status["mail_outbox"]["pending"], 0, "{status}");
    assert!(status["mail_outbox"]["dead_letters"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("550"));
    let out = keys
        .queue(&["projections", "status"], &db.url("status"))
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 pending") && text.contains("1 dead"),
        "{text}"
    );
    // … and in the metrics.
    poll("the dead-letter gauge", Duration::from_secs(10), || async {
        let metrics = client()
            .get(format!("{}/metrics", queue.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .lines()
            .any(|l| l.starts_with("queue_mail_outbox_messages{state=\"dead\"} 1"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_enqueue_and_delivery_loses_nothing() {
    let db = TestDb::create("mail_restart").await;
    let keys = Keys::new("mail_restart");
    let port = free_port();
    let inbox = keys.dir.join("inbox");
    // A 1 s SMTP timeout: a row claimed by the killed instance is leased for
    // 6 × 1 s + 5 s, then the second instance sends it.
    let short = [("QUEUE_SMTP_TIMEOUT_MS", "1000")];
    let mut first = start_with("queue-mail-1", &db, &keys, port, &short).await;
    let tokens = register_as(&first.base, "ada@example.com").await;
    assert_eq!(request_verification(&first.base, &tokens).await, 202);
    let (id, ..) = poll(
        "the row, not yet delivered",
        Duration::from_secs(30),
        || async {
            rows(&db)
                .await
                .into_iter()
                .next()
                .filter(|r| r.1 == "pending" && r.2 >= 1)
        },
    )
    .await;
    first.kill9();

    let _smtp = Smtp::start(port, &inbox, None).await;
    let second = start_with("queue-mail-2", &db, &keys, port, &short).await;
    let mail = wait_for_mail(&inbox, 1).await;
    assert_eq!(mail[0]["message_id"], message_id_of(id));
    poll(
        "the row to be marked sent",
        Duration::from_secs(10),
        || async { (rows(&db).await[0].1 == "sent").then_some(()) },
    )
    .await;
    // An absence window (nothing to poll for): no second instance sends it
    // again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(received(&inbox).len(), 1);
    drop(second);
}

/// `smtps://` speaks TLS first (rustls with ring, no OpenSSL): against this
/// plain-text server the handshake fails, which is a transient failure
/// (retried, nothing sent in clear), and the instance keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_never_falls_back_to_clear_text() {
    let db = TestDb::create("mail_tls").await;
    let keys = Keys::new("mail_tls");
    let port = free_port();
    let inbox = keys.dir.join("inbox");
    let _smtp = Smtp::start(port, &inbox, None).await;
    let url = format!("smtps://user:S3CRETPASS@127.0.0.1:{port}");
    let queue = start_with(
        "queue-mail",
        &db,
        &keys,
        port,
        &[("QUEUE_SMTP_URL", url.as_str())],
    )
    .await;
    let tokens = register_as(&queue.base, "ada@example.com").await;
    assert_eq!(request_verification(&queue.base, &tokens).await, 202);
    let (_, state, _, error) = poll(
        "two failed TLS attempts",
        Duration::from_secs(30),
        || async { rows(&db).await.into_iter().next().filter(|r| r.2 >= 2) },
    )
    .await;
    assert_eq!(state, "pending");
    assert!(error.is_some_and(|e| !e.is_empty()));
    assert!(received(&inbox).is_empty());
    let health = client()
        .get(format!("{}/healthz", queue.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        !queue.log_text().contains("S3CRETPASS"),
        "the password is never logged"
    );
}
