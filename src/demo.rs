//! `refund-agent demo`: the whole flow on this machine, narrated. A temporary state directory,
//! a local Final POS sandbox on a loopback port, the real daemon in-process, and the control
//! API as the kiosk UI would use it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde_json::json;

use crate::config::Config;
use crate::control::client::{Answer, ControlClient};
use crate::control::ApiError;
use crate::daemon;
use crate::queue::RefundView;
use crate::sandbox::FinalPosSandbox;

const API_KEY: &str = "demo-finalpos-key";

/// Runs the demo, printing each step.
pub async fn run() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("refund-agent-demo-").tempdir()?;
    say("refund-agent demo: a till, a refund, a network outage, and exactly-once delivery.");
    say(&format!("Working in {} (deleted at the end).\n", dir.path().display()));

    let sandbox = FinalPosSandbox::start(API_KEY).await?;
    sandbox.go_offline().await;
    step(
        1,
        &format!(
            "A local Final POS sandbox is set up at {} — and taken OFFLINE (its port refuses connections).",
            sandbox.url()
        ),
    );

    let config = write_config(dir.path(), &sandbox.url())?;
    let running = daemon::start(&config).await.context("starting the agent")?;
    let client = ControlClient::new(&running.socket);
    step(2, "The agent is running: queue opened (SQLite, WAL, synchronous=FULL), control API listening.");

    let receipt = json!({
        "receipt_id": "RCP-2025-001", "transaction_id": "txn_123", "order_id": "507f1f77bcf86cd799439013",
        "session_id": "507f1f77bcf86cd799439012", "currency": "USD", "total": "100.00", "subtotal": "90.00",
        "tax": "10.00", "discount": "0.00", "payment_method": "credit_card", "processor": "gateway",
        "processor_payment_id": "882", "masked_pan": "530957******2257", "captured_at": "2026-11-20T10:15:00Z",
        "items": [{"name": "Sweet Tea", "quantity": 1, "price": "5.00", "total": "5.00",
                   "product_id": "p1", "variant_id": "v1", "sku": "SKU-001"}]
    });
    expect(&client.request("POST", "/v1/receipts", Some(receipt.to_string().into_bytes()), &[]).await?, 201)?;
    step(3, "The terminal reports a sale: receipt RCP-2025-001, 100.00 USD (90.00 + 10.00 tax), card ending 2257.");

    step(
        4,
        "A customer returns a Sweet Tea. The cashier asks for a 5.00 USD refund while the cloud is down:",
    );
    let refund = json!({"receipt_id": "RCP-2025-001", "amount": "5.00", "reason": "Customer returned item", "operator": "emp_42"});
    let body = refund.to_string().into_bytes();
    let key = [("idempotency-key", "demo-tap-1")];
    let answer = client.request("POST", "/v1/refunds", Some(body.clone()), &key).await?;
    expect(&answer, 201)?;
    let created: RefundView = serde_json::from_slice(&answer.body)?;
    detail(&format!("acknowledged: refund {} is queued (committed to disk before this answer).", created.id));
    let again = client.request("POST", "/v1/refunds", Some(body), &key).await?;
    expect(&again, 200)?;
    let again: RefundView = serde_json::from_slice(&again.body)?;
    detail(&format!(
        "the kiosk UI taps twice (same Idempotency-Key): answer 200 with the same refund {} — no second refund.",
        again.id
    ));

    step(5, "The agent checks every refund offline against the sale before queueing it:");
    for (amount, why) in [
        ("96.00", "more than the sale's refundable balance"),
        ("1e3", "not a plain amount"),
        ("0.001", "a fraction of a cent"),
    ] {
        let bad =
            json!({"receipt_id": "RCP-2025-001", "amount": amount, "reason": "test", "operator": "emp_42"});
        let a = client.request("POST", "/v1/refunds", Some(bad.to_string().into_bytes()), &[]).await?;
        let e: ApiError =
            serde_json::from_slice(&a.body).unwrap_or(ApiError { code: "?".into(), message: String::new() });
        detail(&format!("{amount:>6} ({why}) → HTTP {} {}: {}", a.status, e.code, e.message));
    }

    let view = wait_for(&client, &created.id, Duration::from_secs(15), |r| {
        r.deliveries.iter().any(|d| d.attempts >= 2)
    })
    .await?;
    let d = &view.deliveries[0];
    step(
        6,
        &format!(
            "The agent tries to deliver and fails ({} attempts so far), backing off between tries:",
            d.attempts
        ),
    );
    detail(&format!("last error: {}", d.last_error.as_deref().unwrap_or("-")));

    sandbox.go_online().await?;
    step(7, "The network comes back: the sandbox listens again on the same port.");
    let done = wait_for(&client, &created.id, Duration::from_secs(20), |r| r.state == "delivered").await?;
    let d = &done.deliveries[0];
    detail(&format!(
        "refund {} is DELIVERED to {} after {} attempts (Final POS id {}).",
        done.id,
        d.destination,
        d.attempts,
        d.remote_id.as_deref().unwrap_or("-")
    ));

    let refunds = sandbox.refunds();
    let transactions = sandbox.transactions();
    step(8, "What Final POS received:");
    for r in &refunds {
        detail(&format!(
            "refund record {}: externalId {}, {} {}, order {}, line item {}",
            r["id"],
            r["externalId"],
            r["summary"]["total"],
            r["currency"],
            r["orderId"],
            r["lineItems"][0]["name"]
        ));
    }
    for t in &transactions {
        detail(&format!(
            "transaction record {}: type {}, amount {}, refundId {}",
            t["id"], t["type"], t["amount"], t["refundId"]
        ));
    }
    if refunds.len() != 1 || transactions.len() != 1 {
        bail!(
            "expected exactly one refund and one transaction record, found {} and {}",
            refunds.len(),
            transactions.len()
        );
    }

    running.stop().await;
    step(9, "The agent stops cleanly (SIGTERM does the same). One refund, delivered exactly once.");
    say("\nNext: `cargo test` runs the test suite; README.md explains configuration and the CLI.");
    Ok(())
}

fn write_config(dir: &Path, url: &str) -> Result<Config> {
    let secret = |name: &str, value: &[u8]| -> Result<()> {
        let path = dir.join(name);
        fs::write(&path, value)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(())
    };
    let key: [u8; 32] = rand::rng().random();
    secret("seal.key", hex::encode(key).as_bytes())?;
    secret("finalpos.key", API_KEY.as_bytes())?;
    let text = format!(
        r#"
[agent]
terminal_id = "demo-till"
state_dir = "{state}"
seal_key_file = "seal.key"

[control]
socket = "{socket}"

[limits]
max_refund = "500.00"
max_pending_total = "5000.00"

[sync]
request_timeout = "3s"
connect_timeout = "1s"
backoff_initial = "300ms"
backoff_max = "1s"

[destinations.finalpos]
kind = "finalpos"
base_url = "{url}"
api_key_file = "finalpos.key"
"#,
        state = dir.join("state").display(),
        socket = dir.join("control.sock").display(),
    );
    let path = dir.join("config.toml");
    fs::write(&path, text)?;
    Ok(Config::from_toml(&fs::read_to_string(&path)?, &path, std::iter::empty())?)
}

async fn wait_for(
    client: &ControlClient,
    id: &str,
    limit: Duration,
    done: impl Fn(&RefundView) -> bool,
) -> Result<RefundView> {
    let start = Instant::now();
    loop {
        let a = client.request("GET", &format!("/v1/refunds/{id}"), None, &[]).await?;
        let view: RefundView = serde_json::from_slice(&a.body)?;
        if done(&view) {
            return Ok(view);
        }
        if start.elapsed() > limit {
            bail!("refund {id} did not reach the expected state in {limit:?}: {view:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expect(answer: &Answer, status: u16) -> Result<()> {
    if answer.status != status {
        bail!("expected HTTP {status}, got {}: {}", answer.status, String::from_utf8_lossy(&answer.body));
    }
    Ok(())
}

fn say(text: &str) {
    println!("{text}");
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

fn detail(text: &str) {
    println!("    {text}");
}
