#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The `queue` binary, run as a process: bad input gives one clear line and a
//! non-zero exit, never a panic; verify's exit codes and JSON; the token
//! verification recipes (docs/recipes/) against a running `queue serve`.

mod bad_input;
mod client;
mod faults;
mod jwt_keys;
mod mail;
mod pages;
mod procs;
mod recipes;
mod replay;
mod roles;
mod verify;
mod webdriver;

use std::process::{Command, Output};

pub const MAC: &str = "k1=1111111111111111111111111111111111111111111111111111111111111111";
pub const CHECKPOINT_KEY: &str =
    "PRIVATE+KEY+queue.example.com/ledger+1625f8dd+ASAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4/";

pub fn queue(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_queue"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The URL of a `#[sqlx::test]` database, for a `queue` process.
pub fn url_of(pool: &sqlx::PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let db = pool.connect_options().get_database().unwrap().to_string();
    format!("{server}/{db}")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One line, starting "queue: error:", exit code 2, no panic.
pub fn assert_clear_error(out: &Output, mentions: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("queue: error:"), "{err}");
    assert!(
        lines[0].contains(mentions),
        "expected {mentions:?} in: {err}"
    );
}
