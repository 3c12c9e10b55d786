//! `queue keys generate` / `queue keys rotate --kind jwt` for each JWT
//! algorithm: the key file they write, a first install, and clear errors.

use std::path::{Path, PathBuf};

use queue_api::auth::jwt::{JwtAlg, JwtKeySet};

use crate::*;

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "queue-jwt-keys-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_keys(path: &Path) -> JwtKeySet {
    JwtKeySet::parse(std::fs::read_to_string(path).unwrap().trim()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_generate_writes_a_jwt_key_file_of_the_chosen_type() {
    for (alg, via_env) in [
        (JwtAlg::EdDSA, false),
        (JwtAlg::ES256, true),
        (JwtAlg::RS256, false),
    ] {
        let scratch = Scratch::new(alg.as_str());
        let dir = scratch.0.join("keys");
        let dir_arg = dir.display().to_string();
        let out = if via_env {
            queue(
                &["--json", "keys", "generate", "--dir", &dir_arg],
                &[("QUEUE_JWT_ALG", alg.as_str())],
            )
        } else {
            queue(
                &[
                    "--json",
                    "keys",
                    "generate",
                    "--dir",
                    &dir_arg,
                    "--alg",
                    alg.as_str(),
                ],
                &[],
            )
        };
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["generated"], true);
        assert_eq!(report["jwt_alg"], alg.as_str());
        let file = dir.join("jwt_keys");
        let keys = read_keys(&file);
        assert_eq!(keys.current().alg(), alg);
        assert_eq!(keys.kids().len(), 1);
        for name in ["jwt_keys", "mac_keys", "checkpoint.key", "backup_code_keys"] {
            assert!(dir.join(name).exists(), "{name}");
            #[cfg(unix)]
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }

        // A second run leaves every file as it was.
        let before = std::fs::read_to_string(&file).unwrap();
        let out = queue(&["--json", "keys", "generate", "--dir", &dir_arg], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["generated"], false);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    }
}

#[test]
fn keys_rotate_creates_a_missing_jwt_key_file_then_adds_keys_of_any_type() {
    let scratch = Scratch::new("rotate");
    // Neither the file nor its directory exists: a first install.
    let file = scratch.0.join("etc").join("jwt_keys");
    let file_arg = file.display().to_string();
    let rotate = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "--json", "keys", "rotate", "--kind", "jwt", "--file", &file_arg,
        ];
        args.extend_from_slice(extra);
        let out = queue(&args, env);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["notified"], false, "no DATABASE_URL, no NOTIFY");
        report["kid"].as_str().unwrap().to_owned()
    };
    let first = rotate(&[], &[("QUEUE_JWT_ALG", "RS256")]);
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    let keys = read_keys(&file);
    assert_eq!(keys.kids(), vec![first.as_str()]);
    assert_eq!(keys.current().alg(), JwtAlg::RS256);

    let second = rotate(&["--alg", "es256"], &[("QUEUE_JWT_ALG", "RS256")]);
    let keys = read_keys(&file);
    assert_eq!(keys.kids(), vec![second.as_str(), first.as_str()]);
    assert_eq!(keys.algs(), vec![JwtAlg::ES256, JwtAlg::RS256]);

    // At most three previous keys stay, whatever their types.
    for _ in 0..3 {
        rotate(&[], &[]);
    }
    let keys = read_keys(&file);
    assert_eq!(keys.kids().len(), 4);
    assert_eq!(keys.current().alg(), JwtAlg::EdDSA);
    assert!(!keys.kids().contains(&first.as_str()));
    assert!(keys.kids().contains(&second.as_str()));
}

#[test]
fn a_bad_jwt_algorithm_is_one_clear_line() {
    let scratch = Scratch::new("bad");
    let file = scratch.0.join("jwt_keys").display().to_string();
    let out = queue(
        &["keys", "rotate", "--kind", "jwt", "--file", &file],
        &[("QUEUE_JWT_ALG", "HS256")],
    );
    assert_clear_error(&out, "QUEUE_JWT_ALG");
    assert!(!stderr(&out).contains("HS256"), "{}", stderr(&out));
    assert!(!Path::new(&file).exists());

    let out = queue(
        &[
            "keys", "rotate", "--kind", "mac", "--file", &file, "--alg", "ES256",
        ],
        &[],
    );
    assert_clear_error(&out, "--alg applies to --kind jwt only");
}

/// `queue keys generate` writes the backup-code pepper (ADR 0211) and
/// `rotate --kind backup-code` puts a new key first, keeping the old one.
#[test]
fn backup_code_keys_are_generated_and_rotated() {
    let scratch = Scratch::new("backup-code");
    let dir = scratch.0.join("keys");
    let dir_arg = dir.display().to_string();
    let out = queue(&["--json", "keys", "generate", "--dir", &dir_arg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = dir.join("backup_code_keys");
    let first = queue_eventstore::MacKeys::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(first.ids().count(), 1);

    let file_arg = file.display().to_string();
    let out = queue(
        &[
            "--json",
            "keys",
            "rotate",
            "--kind",
            "backup-code",
            "--file",
            &file_arg,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["notified"], false);
    let rotated =
        queue_eventstore::MacKeys::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(report["key_id"], rotated.current_id());
    let ids: Vec<&str> = rotated.ids().collect();
    assert_eq!(ids, vec![rotated.current_id(), first.current_id()]);
    assert_eq!(
        rotated.get(first.current_id()),
        first.get(first.current_id())
    );
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
}
