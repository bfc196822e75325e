//! `refund-agent demo`: the whole flow on this machine, narrated. A temporary state directory,
//! local sandboxes of the three cloud APIs on loopback ports, a simulated ZVT payment terminal at
//! the till, the real daemon in-process, and the control API as the kiosk UI would use it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde_json::{json, Value};

use crate::config::Config;
use crate::control::client::{Answer, ControlClient};
use crate::control::ApiError;
use crate::daemon;
use crate::queue::RefundView;
use crate::sandbox::zvt::{Endpoint, ZvtSimulator};
use crate::sandbox::{Fault, FinalPosSandbox, GatewaySandbox, OliveSandbox};

const FINALPOS_KEY: &str = "demo-finalpos-key";
/// The Final POS user the demo's cashier `emp_42` is.
const DEMO_FP_USER: &str = "507f1f77bcf86cd799439042";
const GATEWAY_TOKEN: &str = "demo-gateway-token";
const OLIVE_KEY_ID: &str = "pos_key_demo";
const OLIVE_SECRET: &str = "demo-olive-hmac-secret";

struct Clouds {
    finalpos: FinalPosSandbox,
    gateway: GatewaySandbox,
    olive: OliveSandbox,
    /// The payment terminal at the till: on the shop's network, so it stays up in the outage.
    terminal: ZvtSimulator,
}

impl Clouds {
    async fn start() -> Result<Clouds> {
        let clouds = Clouds {
            finalpos: {
                let finalpos = FinalPosSandbox::start(FINALPOS_KEY).await?;
                finalpos.add_user(DEMO_FP_USER);
                finalpos
            },
            gateway: GatewaySandbox::start(GATEWAY_TOKEN).await?,
            olive: OliveSandbox::start(OLIVE_KEY_ID, OLIVE_SECRET.as_bytes()).await?,
            terminal: ZvtSimulator::start_tcp()?,
        };
        clouds.gateway.add_payment("882", "100.00".parse()?, "90.00".parse()?);
        clouds.olive.add_transaction("txn_olive_9", "40.00".parse()?);
        // The till's clock is an hour behind Olive's: Olive will refuse its first signature.
        clouds.olive.set_clock_offset(3600);
        Ok(clouds)
    }

    async fn offline(&self) {
        self.finalpos.go_offline().await;
        self.gateway.go_offline().await;
        self.olive.go_offline().await;
    }

    async fn online(&self) -> Result<()> {
        self.finalpos.go_online().await?;
        self.gateway.go_online().await?;
        self.olive.go_online().await?;
        Ok(())
    }
}

/// Runs the demo, printing each step.
pub async fn run() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("refund-agent-demo-").tempdir()?;
    say("refund-agent demo: a till, refunds, a network outage, a wrong clock, a lost answer.");
    say(&format!("Working in {} (deleted at the end).", dir.path().display()));

    let clouds = Clouds::start().await?;
    clouds.offline().await;
    step(1, "Local sandboxes of the three cloud APIs are set up on loopback ports — and taken OFFLINE:");
    detail(&format!("card gateway {}   (moves money; refunds card sales)", clouds.gateway.url()));
    detail(&format!(
        "Olive POS    {}   (moves money; HMAC-signed; its clock is 1 h ahead of the till)",
        clouds.olive.url()
    ));
    detail(&format!("Final POS    {}   (back office; records every refund)", clouds.finalpos.url()));

    let config = write_config(dir.path(), &clouds)?;
    let running = daemon::start(&config).await.context("starting the agent")?;
    let client = ControlClient::new(&running.socket);
    step(2, "The agent is running: queue opened (SQLite, WAL, synchronous=FULL), control API listening.");

    post(
        &client,
        "/v1/receipts",
        sale(
            ("RCP-2025-001", "txn_123"),
            ("100.00", "90.00", "10.00"),
            ("gateway", "882"),
            json!([
                item("Sweet Tea", 2, "5.00", "10.00", "p1"),
                item("Coffee Grinder", 1, "90.00", "90.00", "p2")
            ]),
        ),
        &[],
        201,
    )
    .await?;
    post(
        &client,
        "/v1/receipts",
        sale(
            ("RCP-2025-002", "txn_olive_9"),
            ("40.00", "40.00", "0.00"),
            ("olive", "o-1"),
            json!([item("Picnic Basket", 1, "40.00", "40.00", "p3")]),
        ),
        &[],
        201,
    )
    .await?;
    step(3, "Two sales are in the ledger:");
    detail("RCP-2025-001: 100.00 USD by card through the gateway  → refunds go to gateway, then Final POS");
    detail("RCP-2025-002:  40.00 USD through Olive                 → refunds go to Olive, then Final POS");

    step(4, "While the network is down, the cashier refunds one of the two Sweet Teas and a 12.50 item:");
    // An itemized refund: line 1 of the receipt, one unit; the agent prices it (5.00, of which
    // 0.50 tax) from the sale.
    let tea = json!({"receipt_id": "RCP-2025-001", "lines": [{"line": 1, "quantity": 1}],
                     "reason": "One of the two Sweet Teas was spilt", "operator": "emp_42"});
    let first = post(&client, "/v1/refunds", tea.clone(), &[("idempotency-key", "kiosk-tap-1")], 201).await?;
    let first: RefundView = serde_json::from_slice(&first.body)?;
    detail(&format!(
        "refund {} of {} USD queued — acknowledged only after it was committed to disk",
        first.id, first.amount
    ));
    let again = post(&client, "/v1/refunds", tea, &[("idempotency-key", "kiosk-tap-1")], 200).await?;
    let again: RefundView = serde_json::from_slice(&again.body)?;
    detail(&format!(
        "a double tap (same Idempotency-Key) answers 200 with the same refund {} — no second refund",
        again.id
    ));
    let olive = post(&client, "/v1/refunds", refund("RCP-2025-002", "12.50"), &[], 201).await?;
    let olive: RefundView = serde_json::from_slice(&olive.body)?;
    detail(&format!("refund {} queued for Olive", olive.id));

    step(5, "Every refund is checked offline against its sale before it is queued:");
    for (amount, why) in [
        ("96.00", "above the refundable balance"),
        ("1e3", "not a plain amount"),
        ("0.001", "a fraction of a cent"),
    ] {
        let a = client
            .request(
                "POST",
                "/v1/refunds",
                Some(refund("RCP-2025-001", amount).to_string().into_bytes()),
                &[],
            )
            .await?;
        let e: ApiError =
            serde_json::from_slice(&a.body).unwrap_or(ApiError { code: "?".into(), message: String::new() });
        detail(&format!("{amount:>6} ({why}) → HTTP {} {}: {}", a.status, e.code, e.message));
    }

    let waiting = wait_for(&client, &first.id, |r| {
        r.deliveries[0].attempts >= 1 && r.deliveries[0].last_error.is_some()
    })
    .await?;
    step(6, "The agent tries, fails, and puts the unreachable clouds on hold (it probes them every 1-3 s):");
    detail(&format!("gateway: {}", waiting.deliveries[0].last_error.as_deref().unwrap_or("-")));

    clouds.online().await?;
    step(7, "The network comes back. Within seconds the probes notice and the queue drains:");
    let first = wait_for(&client, &first.id, |r| r.state == "delivered").await?;
    for d in &first.deliveries {
        detail(&format!(
            "{}: {} after {} attempt(s), remote id {}",
            d.destination,
            d.state,
            d.attempts,
            d.remote_id.as_deref().unwrap_or("-")
        ));
    }
    let olive = wait_for(&client, &olive.id, |r| r.state == "delivered").await?;
    let status: Value = serde_json::from_slice(&client.request("GET", "/v1/status", None, &[]).await?.body)?;
    let offset = status["destinations"]["olive"]["clock_offset_ms"].as_i64().unwrap_or(0);
    detail(&format!(
        "olive: first answers 401 (our timestamp looked an hour old); once two of Olive's Date headers \
         agreed, the agent took its clock as {:+} s ahead, signed again and was paid: {} after {} attempts",
        offset / 1000,
        olive.deliveries[0].state,
        olive.deliveries[0].attempts
    ));

    step(8, "A lost answer: the gateway refunds 3.00 but the connection drops before it answers.");
    clouds.gateway.inject(Fault::CommitThenDrop, 1);
    let lost = post(&client, "/v1/refunds", refund("RCP-2025-001", "3.00"), &[], 201).await?;
    let lost: RefundView = serde_json::from_slice(&lost.body)?;
    let unknown = wait_for(&client, &lost.id, |r| r.state == "unknown").await?;
    detail(&format!(
        "refund {} is UNKNOWN: {}",
        unknown.id,
        unknown.deliveries[0].last_error.as_deref().unwrap_or("-")
    ));
    detail(&format!(
        "the gateway does not deduplicate, so the agent did NOT send it again (gateway saw {} request for it)",
        clouds.gateway.seen().iter().filter(|s| s.external_id.as_deref() == Some(lost.id.as_str())).count()
    ));
    let approval = json!({"manager": DEMO_MANAGER, "pin": DEMO_PIN});
    let manual = json!({"operator": "emp_42", "outcome": "delivered", "manager_approval": approval});
    post(&client, &format!("/v1/refunds/{}/resolve", lost.id), manual, &[], 200).await?;
    let resolved = wait_for(&client, &lost.id, |r| r.state == "delivered").await?;
    detail(&format!(
        "a manager checks the gateway's dashboard, finds it, and runs `refunds resolve {} --delivered --operator emp_42 --manager mgr_1` (PIN on stdin):",
        lost.id
    ));
    detail(&format!("the decision is audit-logged and Final POS gets its record → {}", resolved.state));

    step(
        9,
        "Card present: the ZVT terminal at the till pays 4.00 back to the card; the link drops after 06 31.",
    );
    let lamp = json!([item("Lamp", 1, "20.00", "20.00", "p4")]);
    let card_sale =
        sale(("RCP-2025-003", "txn_zvt_1"), ("20.00", "20.00", "0.00"), ("card-present", "zvt-1"), lamp);
    post(&client, "/v1/receipts", card_sale, &[], 201).await?;
    clouds.terminal.drop_after_next_refund();
    let card = post(&client, "/v1/refunds", refund("RCP-2025-003", "4.00"), &[], 201).await?;
    let card: RefundView = serde_json::from_slice(&card.body)?;
    let card = wait_for(&client, &card.id, |r| r.state == "delivered").await?;
    let record: Value = serde_json::from_str(card.deliveries[0].remote_id.as_deref().unwrap_or("{}"))?;
    let field = |key: &str| record[key].as_str().unwrap_or("?").to_owned();
    let (trace, bin, last4) = (field("trace"), field("card_bin"), field("card_last4"));
    detail(&format!(
        "the agent asked for the last transaction (Repeat Receipt): paid, trace {trace}, card {bin}…{last4}"
    ));
    let sent = clouds.terminal.commands().iter().filter(|c| **c == 0x0631).count();
    detail(&format!(
        "06 31 went out {sent} time(s); the terminal paid {} refund(s); Final POS recorded it after",
        clouds.terminal.refunds().len()
    ));

    step(10, "What the clouds and the terminal received — each refund exactly once:");
    detail(&format!(
        "card gateway: {} refunds {:?}",
        clouds.gateway.refunds().len(),
        amounts(&clouds.gateway.refunds())
    ));
    detail(&format!(
        "Olive POS:    {} refund  {:?}",
        clouds.olive.refunds().len(),
        amounts(&clouds.olive.refunds())
    ));
    let fp = clouds.finalpos.refunds();
    detail(&format!(
        "Final POS:    {} refund records, {} transaction records",
        fp.len(),
        clouds.finalpos.transactions().len()
    ));
    detail(&format!("ZVT terminal: {} refund  (06 31 sent {sent} time(s))", clouds.terminal.refunds().len()));
    if clouds.gateway.refunds().len() != 2
        || clouds.olive.refunds().len() != 1
        || clouds.terminal.refunds().len() != 1
        || sent != 1
        || fp.len() != 4
    {
        bail!("unexpected deliveries: something was lost or sent twice");
    }
    let Some(tea) = fp.iter().find(|r| r["externalId"] == first.id.as_str()) else {
        bail!("Final POS has no record of the Sweet Tea refund {}", first.id);
    };
    detail("the Sweet Tea's record at Final POS — exactly the refunded line, adding up to its total:");
    for line in tea["lineItems"].as_array().map(Vec::as_slice).unwrap_or_default() {
        detail(&format!("  lineItems: {line}"));
    }
    detail(&format!("  summary:   {}", tea["summary"]));
    detail(&format!(
        "  refundedBy {} (a Final POS user, from destinations.finalpos.users), refundedByExternalId {}",
        tea["refundedBy"], tea["refundedByExternalId"]
    ));

    running.stop().await;
    step(11, "The agent stops cleanly (SIGTERM does the same).");
    say("\nNext: `cargo test --all-features` runs the tests; README.md explains configuration and the CLI.");
    Ok(())
}

/// A receipt that adds up: `(total, subtotal, tax)` with items whose totals sum to the total.
fn sale(ids: (&str, &str), amounts: (&str, &str, &str), payment: (&str, &str), items: Value) -> Value {
    let ((receipt, txn), (total, subtotal, tax), (processor, payment_id)) = (ids, amounts, payment);
    json!({
        "receipt_id": receipt, "transaction_id": txn, "order_id": "507f1f77bcf86cd799439013",
        "session_id": "507f1f77bcf86cd799439012", "currency": "USD", "total": total, "subtotal": subtotal,
        "tax": tax, "payment_method": "credit_card", "processor": processor, "processor_payment_id": payment_id,
        "masked_pan": "530957******2257", "captured_at": "2026-11-20T10:15:00Z", "items": items
    })
}

fn item(name: &str, quantity: u32, price: &str, total: &str, product: &str) -> Value {
    json!({"name": name, "quantity": quantity, "price": price, "total": total,
           "product_id": product, "variant_id": format!("{product}-v"), "sku": format!("SKU-{product}")})
}

fn refund(receipt: &str, amount: &str) -> Value {
    json!({"receipt_id": receipt, "amount": amount, "reason": "Customer returned item", "operator": "emp_42"})
}

fn amounts(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["amount"].as_str().unwrap_or("?").to_string()).collect()
}

async fn post(
    client: &ControlClient,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
    status: u16,
) -> Result<Answer> {
    let answer = client.request("POST", path, Some(body.to_string().into_bytes()), headers).await?;
    if answer.status != status {
        bail!(
            "{path}: expected HTTP {status}, got {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(answer)
}

/// The demo's one manager and PIN (the managers file is written with its hash).
const DEMO_MANAGER: &str = "mgr_1";
const DEMO_PIN: &str = "2468";

fn write_config(dir: &Path, clouds: &Clouds) -> Result<Config> {
    let secret = |name: &str, value: &[u8]| -> Result<()> {
        let path = dir.join(name);
        fs::write(&path, value)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(())
    };
    let key: [u8; 32] = rand::rng().random();
    secret("seal.key", hex::encode(key).as_bytes())?;
    secret("finalpos.key", FINALPOS_KEY.as_bytes())?;
    secret("gateway.token", GATEWAY_TOKEN.as_bytes())?;
    secret("olive.secret", OLIVE_SECRET.as_bytes())?;
    let Endpoint::Tcp(terminal) = clouds.terminal.endpoint().clone() else {
        bail!("the demo's terminal simulator listens on TCP");
    };
    let pin_hash = crate::manager::hash_pin(&crate::manager::Pin::new(DEMO_PIN))?;
    secret("managers", format!("{DEMO_MANAGER} {pin_hash}\n").as_bytes())?;
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
managers_file = "managers"

[sync]
request_timeout = "3s"
connect_timeout = "1s"
backoff_initial = "300ms"
backoff_max = "1s"

[destinations.finalpos]
kind = "finalpos"
base_url = "{finalpos}"
api_key_file = "finalpos.key"
users = {{ emp_42 = "{DEMO_FP_USER}" }}

[destinations.gateway]
kind = "gateway"
base_url = "{gateway}"
token_file = "gateway.token"
terminal_id = 24

[destinations.olive]
kind = "olive"
base_url = "{olive}"
api_key_id = "{OLIVE_KEY_ID}"
hmac_secret_file = "olive.secret"

[destinations.terminal]
kind = "zvt"
zvt_address = "{terminal}"
password = "000000"
currency = "USD"

[[routes]]
processor = "card-present"
destinations = ["terminal", "finalpos"]

[[routes]]
processor = "olive"
destinations = ["olive", "finalpos"]

[[routes]]
processor = "*"
destinations = ["gateway", "finalpos"]
"#,
        state = dir.join("state").display(),
        socket = dir.join("control.sock").display(),
        finalpos = clouds.finalpos.url(),
        gateway = clouds.gateway.url(),
        olive = clouds.olive.url(),
    );
    let path = dir.join("config.toml");
    fs::write(&path, text)?;
    Ok(Config::from_toml(&fs::read_to_string(&path)?, &path, std::iter::empty())?)
}

async fn wait_for(
    client: &ControlClient,
    id: &str,
    done: impl Fn(&RefundView) -> bool,
) -> Result<RefundView> {
    let limit = Duration::from_secs(20);
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

fn say(text: &str) {
    println!("{text}");
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

fn detail(text: &str) {
    println!("    {text}");
}
