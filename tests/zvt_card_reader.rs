//! A ZVT payment terminal as the agent's `[terminal]`, end to end: the real binary registers at
//! the terminal simulator (over a loopback TCP port and over a pty), reads the presented card
//! with Read Card for a refund that asks `read_card`, validates it against the sale's card
//! (card-present check) and queues it or refuses it; after the link is cut it reconnects and
//! registers again. Every wait is a poll with a deadline.

mod common;

use common::*;
use refund_agent::sandbox::zvt::{Endpoint, ZvtSimulator};
use serde_json::{json, Value};

/// The example sale, paid with the simulator's test card (ending 1111).
fn sale_with_the_test_card() -> String {
    RECEIPT
        .replace("RCP-2025-001", "RCP-CARD-1111")
        .replace("txn_123", "txn_card_1111")
        .replace("530957******2257", "411111******1111")
}

fn terminal_table(sim: &ZvtSimulator) -> String {
    match sim.endpoint() {
        Endpoint::Tcp(addr) => format!(
            "\n[terminal]\nzvt_address = \"{addr}\"\nzvt_password = \"000000\"\nzvt_currency = \"USD\"\n"
        ),
        Endpoint::Serial(path) => format!(
            "\n[terminal]\nframing = \"zvt\"\ndevice = \"{}\"\nzvt_password = \"000000\"\nzvt_currency = \"USD\"\n",
            path.display()
        ),
    }
}

async fn status(agent: &Agent) -> Value {
    let a = agent.client().request("GET", "/v1/status", None, &[]).await.expect("status");
    serde_json::from_slice(&a.body).expect("status JSON")
}

fn registrations(sim: &ZvtSimulator) -> usize {
    sim.commands().iter().filter(|c| **c == 0x0600).count()
}

fn read_cards(sim: &ZvtSimulator) -> usize {
    sim.commands().iter().filter(|c| **c == 0x06C0).count()
}

/// Waits until status shows the terminal connected with `reconnects` reconnects.
async fn wait_connected(agent: &Agent, reconnects: u64) -> Value {
    eventually("the ZVT terminal registered", DEADLINE, || async {
        let s = status(agent).await;
        let t = &s["terminal"];
        (t["connected"] == true && t["reconnects"] == reconnects).then(|| t.clone())
    })
    .await
}

fn refund_body(receipt: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "receipt_id": receipt,
        "amount": "5.00",
        "reason": "Customer returned item",
        "operator": "emp_42",
        "read_card": true,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    serde_json::to_vec(&body).expect("body")
}

async fn started(sim: &ZvtSimulator) -> Agent {
    let mut agent = Agent::new("http://127.0.0.1:9", &terminal_table(sim));
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    agent.add_receipt(&sale_with_the_test_card()).await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_the_card_is_read_checked_and_the_link_comes_back_registered() {
    let sim = ZvtSimulator::start_tcp().expect("start the terminal simulator");
    let Endpoint::Tcp(addr) = sim.endpoint().clone() else { panic!("a TCP endpoint") };
    let agent = started(&sim).await;
    let terminal = wait_connected(&agent, 0).await;
    assert_eq!(
        (terminal["framing"].as_str(), terminal["device"].as_str()),
        (Some("zvt"), Some(&*addr.to_string()))
    );
    assert_eq!(registrations(&sim), 1, "registered at start");

    // The sale's card is presented: read, checked, queued.
    let key = [("idempotency-key", "kiosk-tap-1")];
    let (code, refund) = agent.post_json("/v1/refunds", &refund_body("RCP-CARD-1111", json!({})), &key).await;
    assert_eq!(code, 201, "{refund}");
    assert_eq!(read_cards(&sim), 1);
    assert!(agent.refund(refund["id"].as_str().expect("an id")).await.is_some(), "it is in the queue");
    // The kiosk repeats the request with its key: the card is read again, the same card finds
    // the refund first made, and nothing new is queued.
    let (code, again) = agent.post_json("/v1/refunds", &refund_body("RCP-CARD-1111", json!({})), &key).await;
    assert_eq!((code, &again["id"]), (200, &refund["id"]), "{again}");
    assert_eq!(read_cards(&sim), 2);

    // Another card than the sale's: refused by the card-present check, nothing queued.
    let out = cli_refund(&agent, "5.00", &["--read-card"]).await;
    assert_eq!(out.status.code(), Some(3), "refused: {}", stderr(&out));
    assert!(stderr(&out).contains("refused (card_mismatch)"), "{}", stderr(&out));
    assert_eq!(read_cards(&sim), 3, "the CLI asked the terminal once");

    // No card presented: its own code, nothing queued.
    sim.no_card_next_read();
    let (code, answer) = agent.post_json("/v1/refunds", &refund_body("RCP-CARD-1111", json!({})), &[]).await;
    assert_eq!((code, answer["code"].as_str()), (422, Some("card_not_read")), "{answer}");

    // A card named and read_card both: which one counts would be a guess.
    let both = refund_body("RCP-CARD-1111", json!({"masked_pan": "************1111"}));
    let (code, answer) = agent.post_json("/v1/refunds", &both, &[]).await;
    assert_eq!((code, answer["code"].as_str()), (400, Some("invalid_request")), "{answer}");
    assert_eq!(read_cards(&sim), 4, "the ambiguous request never reached the terminal");
    assert_eq!(agent.list().await.len(), 1, "only the first refund was queued");

    // The link drops; the agent reconnects and registers again, and reads cards on the new link.
    sim.cut_link();
    wait_connected(&agent, 1).await;
    assert_eq!(registrations(&sim), 2, "registered again after the reconnect");
    let (code, refund) = agent.post_json("/v1/refunds", &refund_body("RCP-CARD-1111", json!({})), &[]).await;
    assert_eq!(code, 201, "{refund}");

    let metrics = agent.client().request("GET", "/metrics", None, &[]).await.expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics.contains(&format!("refund_agent_terminal_connected{{device=\"{addr}\"}} 1")),
        "{metrics}"
    );
    // The terminal sends the full card number and track 2; none of it reaches the logs.
    assert!(!agent.logs().contains("4111111111111111"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_pty_the_card_is_read_for_a_refund() {
    let sim = ZvtSimulator::start_serial().expect("start the terminal simulator on a pty");
    let agent = started(&sim).await;
    wait_connected(&agent, 0).await;
    assert_eq!(registrations(&sim), 1);
    let (code, refund) = agent.post_json("/v1/refunds", &refund_body("RCP-CARD-1111", json!({})), &[]).await;
    assert_eq!(code, 201, "{refund}");
    let (code, answer) = agent.post_json("/v1/refunds", &refund_body("RCP-2025-001", json!({})), &[]).await;
    assert_eq!((code, answer["code"].as_str()), (422, Some("card_mismatch")), "{answer}");
    assert_eq!(read_cards(&sim), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_card_without_a_zvt_terminal_is_refused() {
    let mut agent = Agent::new("http://127.0.0.1:9", "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let (code, answer) = agent.post_json("/v1/refunds", &refund_body("RCP-2025-001", json!({})), &[]).await;
    assert_eq!((code, answer["code"].as_str()), (422, Some("no_card_reader")), "{answer}");
    assert!(agent.list().await.is_empty());
}
