//! pysaml2's identity provider as a real HTTP server on loopback
//! (`saml/tests/idp/idp_server.py`, its own keys), for the end-to-end SAML
//! tests of the API (a test as the browser) and of the hosted pages (a real
//! browser). The venv is the one `scripts/saml-setup` installs
//! (`scripts/test` runs it first).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

/// The IdP server process; killed, and its directory removed, when dropped.
pub struct IdpServer {
    child: Child,
    /// `http://127.0.0.1:PORT`: `/sso/redirect`, `/idp-initiated`, and the
    /// administrator's `PUT /user/groups` and `PUT /sso`.
    pub base: String,
    /// The IdP's metadata XML, for the tenant's SAML connection.
    pub metadata: String,
    dir: PathBuf,
}

impl Drop for IdpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The workspace root (where `.dev/` and `saml/` are).
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
}

impl IdpServer {
    /// Starts the IdP `entity_id`, knowing the SPs of `sp_metadata`, with
    /// one user: `user` is `{"name_id", "attributes": {name: [values]}}`.
    pub fn start(entity_id: &str, sp_metadata: &[String], user: Value) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "queue-saml-idp-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let python = repo_root().join(".dev/saml/venv/bin/python");
        let script = repo_root().join("saml/tests/idp/idp_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/saml-setup", python.display()));
        let config = json!({
            "idp_entity_id": entity_id,
            "sp_metadata": sp_metadata,
            "user": user,
        });
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(config.to_string().as_bytes()).unwrap();
        drop(stdin);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the IdP did not start ({e}): {line:?}"));
        Self {
            base: format!("http://127.0.0.1:{}", ready["port"]),
            metadata: ready["metadata"].as_str().unwrap().to_owned(),
            child,
            dir,
        }
    }

    /// The IdP administrator's controls: `PUT /user/groups` (a JSON list),
    /// `PUT /sso` (`{"started_at"?, "honor_force_authn"?}`).
    pub async fn put(&self, path: &str, body: Value) {
        let answer = reqwest::Client::new()
            .put(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 204, "{path}");
    }
}
