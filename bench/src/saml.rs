//! SAML sign-in over HTTP: `POST /saml/{slug}/acs` (HTTP-POST binding, an
//! RSA-SHA256-signed assertion from pysaml2's IdP), first logins (JIT:
//! `CustomerProvisioned`, `RoleGranted`, `SessionCreated`) and returning
//! ones (`SessionCreated`), next to the baseline measured in the same run:
//! passkey `login/complete` of as many customers through the same server.
//!
//! The responses are issued before timing (IdP-initiated, one customer
//! each, pysaml2 from `.dev/saml/venv`, as `scripts/saml-setup` installs);
//! they must be posted within their 5-minute lifetime, so keep `--logins`
//! in the hundreds.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::stream::{self, StreamExt};
use queue_saml::SpConfig;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::http::{passkey_logins, queue_state, serve, Stats, ORIGIN};
use crate::support::{BenchResult, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// SAML customers (each signs in twice) and passkey customers.
    #[arg(long, default_value_t = 300)]
    logins: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Database connections of the service.
    #[arg(long, default_value_t = 16)]
    connections: u32,
}

const IDP: &str = "https://idp.example.test/idp";
const ADMIN: &str = "bench-admin-token-000001";

pub async fn run(args: Args) -> BenchResult<()> {
    let db = ScratchDb::create("queue_bench_saml", args.connections).await?;
    let result = run_in(&args, &db.pool).await;
    db.drop_db().await?;
    result
}

/// pysaml2's answer to `request` (see saml/tests/idp/idp.py), keys in `dir`.
fn idp(dir: &Path, request: &Value) -> BenchResult<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(root.join(".dev/saml/venv/bin/python"))
        .arg(root.join("saml/tests/idp/idp.py"))
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("pysaml2 ({e}): run scripts/saml-setup"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(request.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err("the IdP failed".into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Posts each response to the ACS as a browser's form, `concurrency` at a
/// time; every one must answer 303.
async fn drive_acs(
    client: &reqwest::Client,
    url: &str,
    responses: Vec<String>,
    concurrency: usize,
) -> BenchResult<Stats> {
    let started = Instant::now();
    let results: Vec<BenchResult<Duration>> = stream::iter(responses)
        .map(|xml| {
            let client = client.clone();
            let url = url.to_owned();
            async move {
                let form = [
                    ("SAMLResponse", STANDARD.encode(xml)),
                    ("RelayState", String::new()),
                ];
                let t = Instant::now();
                let response = client.post(&url).form(&form).send().await?;
                let status = response.status().as_u16();
                let elapsed = t.elapsed();
                if status != 303 {
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!("{url}: {status} {body}").into());
                }
                Ok(elapsed)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let latencies = results.into_iter().collect::<BenchResult<Vec<_>>>()?;
    Ok(Stats::from(latencies, secs))
}

async fn run_in(args: &Args, pool: &PgPool) -> BenchResult<()> {
    let (state, _) = queue_state(
        pool,
        &[
            ("QUEUE_SERVICE_TOKEN_BENCH", ADMIN.to_owned()),
            ("QUEUE_SERVICE_SCOPES_BENCH", "admin".to_owned()),
        ],
    )
    .await?;
    let (base, server) = serve(queue_api::app(state)).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // Tenant acme trusting the IdP: JIT, IdP-initiated, group eng → a role.
    let sp = SpConfig::for_tenant(ORIGIN, "acme")?;
    let keys = std::env::temp_dir().join(format!("queue-bench-idp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&keys)?;
    let request = |responses: Vec<Value>| {
        json!({"idp_entity_id": IDP, "sso_url": format!("{IDP}/sso"),
               "sp_metadata": [sp.metadata_xml()], "responses": responses})
    };
    let metadata = idp(&keys, &request(Vec::new()))?["metadata"].clone();
    let created: Value = client
        .post(format!("{base}/api/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": "acme", "name": "Acme Inc."}))
        .send()
        .await?
        .json()
        .await?;
    let configured = client
        .put(format!(
            "{base}/api/v1/tenants/{}/saml",
            created["tenant_id"].as_str().unwrap_or("")
        ))
        .bearer_auth(ADMIN)
        .json(&json!({"idp_metadata": metadata, "email_attribute": "mail",
                      "groups_attribute": "groups", "group_roles": {"eng": ["support-agent"]},
                      "jit_provisioning": true, "allow_idp_initiated": true}))
        .send()
        .await?;
    if !configured.status().is_success() {
        return Err(format!("SAML connection: {}", configured.text().await?).into());
    }

    eprintln!("issuing {} signed responses…", 2 * args.logins);
    let asks: Vec<Value> = (0..2 * args.logins)
        .map(|i| {
            let email = format!("saml{}@example.com", i % args.logins);
            json!({"key": "idp", "sp_entity_id": sp.entity_id, "destination": sp.acs_url,
                   "in_response_to": null, "name_id": email,
                   "attributes": {"mail": [email], "groups": ["eng"]},
                   "sign_response": false, "sign_assertion": true})
        })
        .collect();
    let answer = idp(&keys, &request(asks))?;
    let _ = std::fs::remove_dir_all(&keys);
    let mut responses: Vec<String> = answer["responses"]
        .as_array()
        .ok_or("no responses")?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let returning = responses.split_off(args.logins);
    let acs = format!("{base}/saml/acme/acs");
    let first = drive_acs(&client, &acs, responses, args.concurrency).await?;
    let again = drive_acs(&client, &acs, returning, args.concurrency).await?;

    let (passkey, _) = passkey_logins(&client, &base, args.logins, args.concurrency).await?;
    server.abort();

    println!(
        "SAML ACS over TCP on 127.0.0.1, {} in flight, {} service connections",
        args.concurrency, args.connections
    );
    println!("saml first (JIT)   {}", first.line());
    println!("saml returning     {}", again.line());
    println!(
        "passkey login      {}   (baseline, same server)",
        passkey.line()
    );
    println!(
        "ratio: returning SAML sign-in {:.2}x the passkey login's throughput, JIT {:.2}x",
        again.rps() / passkey.rps(),
        first.rps() / passkey.rps()
    );
    Ok(())
}
