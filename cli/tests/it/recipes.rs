//! The token-verification recipes in docs/recipes/ (PyJWT with PyJWKClient,
//! jose with createRemoteJWKSet + jwtVerify) against a real `queue serve`,
//! for each algorithm: a token Queue minted verifies through discovery and
//! the JWKS; after `queue keys rotate --kind jwt` the old token still
//! verifies and a new one (signed by the new key) does too; a tampered token
//! does not. The recipes are run as they are documented, as processes.
//!
//! Python with PyJWT and Node with jose come from `scripts/recipes-setup`
//! (scripts/test runs it). When they are missing these tests fail, saying
//! so; they never pass without having run the recipes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_proto::{CreationChallengeResponse, RegisterPublicKeyCredential};

use crate::procs::{client, poll, Instance, Keys, TestDb};

/// The relying party `Instance` configures.
const ORIGIN: &str = "http://localhost:8080";
const AUDIENCE: &str = "queue";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The two recipe runners, or a failure naming what is missing.
struct Recipes {
    python: PathBuf,
    node: PathBuf,
    dir: PathBuf,
}

impl Recipes {
    fn find() -> Self {
        let root = repo_root();
        let python = root.join(".dev/recipes/venv/bin/python");
        let jose = root.join("docs/recipes/node/node_modules/jose/package.json");
        let mut missing = Vec::new();
        let pyjwt = Command::new(&python)
            .args(["-c", "import jwt, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !pyjwt {
            missing.push(format!("PyJWT[crypto] in {}", python.display()));
        }
        let node = PathBuf::from("node");
        let node_runs = Command::new(&node)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !node_runs {
            missing.push("node on PATH".to_owned());
        }
        if !jose.exists() {
            missing.push(format!("jose ({})", jose.display()));
        }
        assert!(
            missing.is_empty(),
            "the token-verification recipe tests need Python with PyJWT and Node with jose; \
             run scripts/recipes-setup (scripts/test does). Missing: {}",
            missing.join(", ")
        );
        Self {
            python,
            node,
            dir: root.join("docs/recipes"),
        }
    }

    /// Runs one recipe on these tokens; the process's output.
    async fn run(&self, which: Recipe, issuer: &str, tokens: &[&str]) -> Output {
        let (program, script) = match which {
            Recipe::Python => (&self.python, self.dir.join("python/verify_token.py")),
            Recipe::Node => (&self.node, self.dir.join("node/verify-token.mjs")),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .arg(issuer)
            .arg(AUDIENCE)
            .args(tokens)
            // Loopback never goes through a proxy from the environment.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs both recipes; each must verify every token. Returns, per
    /// recipe, the verified `{kid, alg, claims}` in token order.
    async fn verify_all(&self, issuer: &str, tokens: &[&str]) -> Vec<Vec<Value>> {
        let mut all = Vec::new();
        for which in [Recipe::Python, Recipe::Node] {
            let out = self.run(which, issuer, tokens).await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{which:?} recipe failed ({:?}):\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<Value> = stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), tokens.len(), "{which:?}: {stdout}");
            all.push(lines);
        }
        all
    }

    /// Both recipes refuse this token (exit 1, "rejected" on stderr).
    async fn reject(&self, issuer: &str, token: &str) {
        for which in [Recipe::Python, Recipe::Node] {
            let out = self.run(which, issuer, &[token]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{which:?}: {stderr}");
            assert!(stderr.contains("rejected"), "{which:?}: {stderr}");
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Recipe {
    Python,
    Node,
}

async fn get_json(base: &str, path: &str) -> (Value, Option<String>) {
    let response = client().get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.json().await.unwrap(), cache)
}

pub async fn post_json(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Registers a customer with a software passkey; the token response.
async fn register(base: &str) -> Value {
    register_as(base, "recipes@example.com").await
}

/// Registers `email` with a software passkey; the token response.
pub async fn register_as(base: &str, email: &str) -> Value {
    let (status, begin) = post_json(
        base,
        "/api/v1/auth/webauthn/register/begin",
        json!({"email": email, "display_name": "Recipes"}),
    )
    .await;
    assert_eq!(status, 200, "{begin}");
    let mut ccr: CreationChallengeResponse =
        serde_json::from_value(begin["options"].clone()).unwrap();
    // SoftPasskey cannot store a discoverable credential and refuses the
    // flag; the test "browser" clears it (the server cannot observe it).
    if let Some(selection) = ccr.public_key.authenticator_selection.as_mut() {
        selection.require_resident_key = false;
        selection.resident_key = None;
    }
    let mut passkey = SoftPasskey::new(true);
    let credential: RegisterPublicKeyCredential = passkey
        .do_registration(Url::parse(ORIGIN).unwrap(), ccr)
        .unwrap();
    let (status, tokens) = post_json(
        base,
        "/api/v1/auth/webauthn/register/complete",
        json!({"challenge_id": begin["challenge_id"], "credential": credential}),
    )
    .await;
    assert_eq!(status, 201, "{tokens}");
    tokens
}

/// The token with one signature character changed.
fn tampered(token: &str) -> String {
    let signature_at = token.rfind('.').unwrap() + 4;
    let mut bytes = token.as_bytes().to_vec();
    bytes[signature_at] = if bytes[signature_at] == b'A' {
        b'B'
    } else {
        b'A'
    };
    String::from_utf8(bytes).unwrap()
}

/// The `kty` (and `crv`) a JWK of this algorithm has, and the fields it needs.
fn assert_jwk_shape(jwk: &Value, alg: &str) {
    assert_eq!(jwk["alg"], alg, "{jwk}");
    assert_eq!(jwk["use"], "sig", "{jwk}");
    assert!(jwk["kid"].is_string(), "{jwk}");
    let (kty, crv, fields): (&str, Option<&str>, &[&str]) = match alg {
        "EdDSA" => ("OKP", Some("Ed25519"), &["x"]),
        "ES256" => ("EC", Some("P-256"), &["x", "y"]),
        "RS256" => ("RSA", None, &["n", "e"]),
        other => panic!("unexpected algorithm {other}"),
    };
    assert_eq!(jwk["kty"], kty, "{jwk}");
    assert_eq!(jwk["crv"].as_str(), crv, "{jwk}");
    for field in fields {
        assert!(jwk[*field].as_str().is_some_and(|v| !v.is_empty()), "{jwk}");
    }
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            jwk.get(private).is_none(),
            "private part {private} published: {jwk}"
        );
    }
}

/// A first install (no key file: `keys rotate` creates it with `first`),
/// a token verified by both recipes, a rotation to a key of `then`, and
/// both tokens verified again; a tampered token refused.
async fn recipes_verify_through_a_rotation(first: &str, then: &str) {
    let recipes = Recipes::find();
    let tag = format!("recipes_{}_{}", first, then).to_lowercase();
    let db = TestDb::create(&tag).await;
    let keys = Keys::new(&tag);
    std::fs::remove_file(keys.jwt_file()).unwrap();

    let created = keys
        .queue_with(
            &["--json", "keys", "rotate", "--kind", "jwt"],
            &db.url("queue-rotate"),
            &[("QUEUE_JWT_ALG", first)],
        )
        .await;
    assert!(created.status.success(), "{}", crate::stderr(&created));
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let first_kid = created["kid"].as_str().unwrap().to_owned();

    let instance = Instance::start_with(
        "queue-recipes",
        &db.url("queue-recipes"),
        &keys,
        &[("QUEUE_JWT_ALG", first), ("QUEUE_ISSUER", "{base}")],
    )
    .await;
    let issuer = instance.base.clone();

    // Discovery names the issuer, the JWKS and the algorithm; both cacheable.
    let (discovery, cache) = get_json(&issuer, "/.well-known/openid-configuration").await;
    assert_eq!(cache.as_deref(), Some("public, max-age=60"));
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(
        discovery["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json")
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!([first])
    );
    let (jwks, cache) = get_json(&issuer, "/.well-known/jwks.json").await;
    assert_eq!(cache.as_deref(), Some("public, max-age=60"));
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_jwk_shape(&jwks["keys"][0], first);
    assert_eq!(jwks["keys"][0]["kid"], first_kid.as_str());

    let tokens = register(&issuer).await;
    let old_token = tokens["access_token"].as_str().unwrap().to_owned();
    let customer = tokens["customer_id"].as_str().unwrap().to_owned();
    for verified in recipes.verify_all(&issuer, &[&old_token]).await {
        assert_eq!(verified[0]["kid"], first_kid.as_str());
        assert_eq!(verified[0]["alg"], first);
        assert_eq!(verified[0]["claims"]["sub"], customer.as_str());
        assert_eq!(verified[0]["claims"]["aud"], AUDIENCE);
    }
    recipes.reject(&issuer, &tampered(&old_token)).await;

    // Rotate: running instances hear of it by NOTIFY and reload the file.
    let rotated = keys
        .queue_with(
            &["--json", "keys", "rotate", "--kind", "jwt"],
            &db.url("queue-rotate"),
            &[("QUEUE_JWT_ALG", then)],
        )
        .await;
    assert!(rotated.status.success(), "{}", crate::stderr(&rotated));
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(rotated["notified"], true, "{rotated}");
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, first_kid);
    let jwks = poll(
        "the rotated key in the JWKS",
        Duration::from_secs(10),
        || {
            let issuer = issuer.clone();
            async move {
                let (jwks, _) = get_json(&issuer, "/.well-known/jwks.json").await;
                (jwks["keys"].as_array().unwrap().len() == 2).then_some(jwks)
            }
        },
    )
    .await;
    assert_eq!(jwks["keys"][0]["kid"], new_kid.as_str());
    assert_jwk_shape(&jwks["keys"][0], then);
    assert_jwk_shape(&jwks["keys"][1], first);
    let (discovery, _) = get_json(&issuer, "/.well-known/openid-configuration").await;
    let algs = if first == then {
        json!([then])
    } else {
        json!([then, first])
    };
    assert_eq!(discovery["id_token_signing_alg_values_supported"], algs);

    // A new token, from a refresh, is signed by the new key.
    let (status, refreshed) = post_json(
        &issuer,
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let new_token = refreshed["access_token"].as_str().unwrap().to_owned();
    for verified in recipes.verify_all(&issuer, &[&old_token, &new_token]).await {
        assert_eq!(verified[0]["kid"], first_kid.as_str());
        assert_eq!(verified[0]["alg"], first);
        assert_eq!(verified[1]["kid"], new_kid.as_str());
        assert_eq!(verified[1]["alg"], then);
        assert_eq!(verified[1]["claims"]["sub"], customer.as_str());
    }
    recipes.reject(&issuer, &tampered(&new_token)).await;
    drop(instance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tokens_verify_with_pyjwt_and_jose_through_a_rotation() {
    recipes_verify_through_a_rotation("EdDSA", "EdDSA").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_verify_with_pyjwt_and_jose_through_a_rotation() {
    recipes_verify_through_a_rotation("ES256", "ES256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_with_pyjwt_and_jose_through_a_rotation() {
    recipes_verify_through_a_rotation("RS256", "RS256").await;
}

/// A migration: EdDSA keys, then an RS256 key made current; both published,
/// both algorithms announced, tokens of both verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_from_eddsa_to_rs256_keeps_both_verifying() {
    recipes_verify_through_a_rotation("EdDSA", "RS256").await;
}
