use crate::*;

#[test]
fn malformed_database_url() {
    let out = queue(&["migrate"], &[("DATABASE_URL", "not a url")]);
    assert_clear_error(&out, "DATABASE_URL");
    let out = queue(&["migrate"], &[]);
    assert_clear_error(&out, "DATABASE_URL is not set");
}

#[test]
fn unreachable_database() {
    let out = queue(
        &["migrate"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/queue")],
    );
    assert_clear_error(&out, "cannot reach the database");
}

#[test]
fn missing_or_short_mac_key() {
    let db = ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/queue");
    let cp = ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY);
    let out = queue(&["verify"], &[db, cp]);
    assert_clear_error(&out, "QUEUE_MAC_KEYS is not set");
    let short = "k1=00112233445566778899aabbccddeeff";
    let out = queue(&["verify"], &[db, cp, ("QUEUE_MAC_KEYS", short)]);
    assert_clear_error(&out, "at least 32");
    assert!(
        !stderr(&out).contains("00112233"),
        "a key must never be echoed"
    );
    let out = queue(&["verify"], &[db, cp, ("QUEUE_MAC_KEYS", "k1=zz")]);
    assert_clear_error(&out, "not valid hex");
}

#[test]
fn bad_checkpoint_key() {
    let out = queue(
        &["keys", "public", "checkpoint"],
        &[("QUEUE_CHECKPOINT_KEY", "PRIVATE+KEY+x+00000000+AAAA")],
    );
    assert_clear_error(&out, "QUEUE_CHECKPOINT_KEY");
    let out = queue(
        &["keys", "public", "checkpoint"],
        &[("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY)],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().last(),
        Some("queue.example.com/ledger+1625f8dd+ASmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X")
    );
}

/// Output into a pipe nobody reads (`queue … | head -1` after head exits)
/// ends the process quietly with 141, as SIGPIPE would, never a panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_queue"))
        .args(["keys", "public", "checkpoint"])
        .env_clear()
        .env("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "stderr: {err}");
    assert!(err.is_empty(), "nothing to say on stderr: {err}");
}

/// `--tenant` takes a slug; anything else is a usage error (exit 2) that
/// says what is wrong with it, before any database or key is needed.
#[test]
fn a_bad_tenant_slug() {
    for (slug, why) in [
        ("Acme Corp", "may only contain a-z, 0-9 and -"),
        ("a", "at least 2 characters"),
        ("9lives", "must start with a letter"),
    ] {
        let out = queue(&["export", "--out", "/dev/null", "--tenant", slug], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(&format!("invalid value '{slug}' for '--tenant <SLUG>'"))
                && err.contains(why),
            "{err}"
        );
    }
}
