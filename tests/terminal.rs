//! The serial terminal end to end: the real binary reading a real pseudo-terminal.
//!
//! `[terminal] device` points at a symlink in the test's temp dir, so "unplugging" is closing the
//! pty master (the agent sees a hang-up) and "replugging" is a new pty behind the same symlink.
//! The test plays the terminal on the master side; a reader thread collects everything the agent
//! writes back, and every wait is a condition with a deadline.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::pty::Pty;
use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use serde_json::{json, Value};

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const ACK: u8 = 0x06;
const NAK: u8 = 0x15;

/// What the agent wrote back: link bytes and JSON replies, in order.
#[derive(Debug, Clone, PartialEq)]
enum Back {
    Link(u8),
    Json(Value),
}

fn decode(framing: &str, bytes: &[u8]) -> Vec<Back> {
    let mut out = Vec::new();
    if framing != "stx-etx" {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(Back::Json(serde_json::from_slice(line).expect("each reply line is JSON")));
        }
        return out;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            STX => {
                let Some(end) = bytes[i..].iter().position(|&b| b == ETX).map(|p| p + i) else { break };
                let Some(&lrc) = bytes.get(end + 1) else { break };
                let payload = &bytes[i + 1..end];
                assert_eq!(lrc, payload.iter().fold(ETX, |a, b| a ^ b), "reply LRC");
                out.push(Back::Json(serde_json::from_slice(payload).expect("framed reply is JSON")));
                i = end + 2;
            }
            byte => {
                out.push(Back::Link(byte));
                i += 1;
            }
        }
    }
    out
}

/// Frames a payload the way a terminal with this framing sends it.
fn frame(framing: &str, payload: &str) -> Vec<u8> {
    match framing {
        "stx-etx" => {
            let lrc = payload.bytes().fold(ETX, |a, b| a ^ b);
            [&[STX][..], payload.as_bytes(), &[ETX, lrc]].concat()
        }
        "lines" => format!("{payload}\r\n").into_bytes(),
        _ => format!("{payload}\n").into_bytes(),
    }
}

/// An agent with a terminal on a pty, connected.
struct Till {
    agent: Agent,
    _fp: FinalPosSandbox,
    link: PathBuf,
    pty: Option<Pty>,
    framing: &'static str,
}

impl Till {
    async fn start(framing: &'static str, extra: &str) -> Till {
        let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
        let mut agent = Agent::new(&fp.url(), "");
        let link = agent.dir.path().join("terminal");
        let config = std::fs::read_to_string(&agent.config).expect("config");
        let terminal = format!(
            "\n[terminal]\ndevice = \"{}\"\nbaud = 9600\nframing = \"{framing}\"\n{extra}\n",
            link.display()
        );
        std::fs::write(&agent.config, config + &terminal).expect("config");
        let pty = Pty::plug(&link);
        agent.start().await;
        let till = Till { agent, _fp: fp, link, pty: Some(pty), framing };
        till.wait_status("the terminal to be connected", |t| t["connected"] == true).await;
        till
    }

    fn pty(&self) -> &Pty {
        self.pty.as_ref().expect("a terminal is plugged in")
    }

    fn send(&self, payload: &str) {
        self.pty().write(&frame(self.framing, payload));
    }

    fn back(&self) -> Vec<Back> {
        decode(self.framing, &self.pty().received())
    }

    /// Waits for the JSON reply carrying `seq`.
    async fn reply(&self, seq: i64) -> Value {
        eventually(&format!("the reply to seq {seq}"), DEADLINE, || async move {
            self.back().into_iter().find_map(|b| match b {
                Back::Json(v) if v["seq"] == seq => Some(v),
                _ => None,
            })
        })
        .await
    }

    /// Sends `event` with `seq` and returns its reply.
    async fn ask(&self, seq: i64, mut event: Value) -> Value {
        event["seq"] = seq.into();
        self.send(&event.to_string());
        self.reply(seq).await
    }

    async fn status(&self) -> Value {
        let answer = self.agent.client().request("GET", "/v1/status", None, &[]).await.expect("status");
        let body: Value = serde_json::from_slice(&answer.body).expect("status JSON");
        body["terminal"].clone()
    }

    async fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(what, DEADLINE, || async {
            let status = self.status().await;
            check(&status).then_some(status)
        })
        .await
    }
}

fn receipt(id: &str, masked_pan: &str) -> Value {
    let mut receipt: Value = serde_json::from_str(RECEIPT).expect("receipt JSON");
    receipt["type"] = "receipt".into();
    receipt["receipt_id"] = id.into();
    receipt["transaction_id"] = format!("txn-{id}").into();
    receipt["masked_pan"] = masked_pan.into();
    receipt
}

fn refund(amount: &str) -> Value {
    json!({"type": "refund", "amount": amount, "reason": "Customer returned item", "operator": "emp_42"})
}

fn code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "nak", "expected a nak: {reply}");
    reply["code"].as_str().expect("nak code")
}

/// The whole cashier flow, plus the two refusals a cashier must understand.
async fn cashier_flow(framing: &'static str) -> Till {
    let till = Till::start(framing, "").await;
    assert_eq!(till.ask(1, receipt("RCP-2025-001", "530957******2257")).await["type"], "ack");
    assert_eq!(
        till.ask(2, json!({"type": "receipt_scan", "receipt_id": "RCP-2025-001"})).await["type"],
        "ack"
    );
    assert_eq!(till.ask(3, json!({"type": "card", "masked_pan": "530957******2257"})).await["type"], "ack");
    let ack = till.ask(4, refund("5.00")).await;
    assert_eq!((ack["type"].as_str(), ack["state"].as_str()), (Some("ack"), Some("queued")), "{ack}");
    let id = ack["refund_id"].as_str().expect("refund id");
    let queued = till.agent.refund(id).await.expect("the acknowledged refund is in the queue");
    assert_eq!((queued.amount.as_str(), queued.receipt_id.as_deref()), ("5.00", Some("RCP-2025-001")));
    let audit = queued.audit.expect("a refund shown alone has its audit rows");
    assert_eq!((audit[0].action.as_str(), audit[0].caller.as_deref()), ("created", Some("terminal")));

    till.ask(5, json!({"type": "receipt_scan", "receipt_id": "RCP-2025-001"})).await;
    let over = till.ask(6, refund("150.00")).await;
    assert_eq!(code(&over), "over_refund");
    assert!(over["message"].as_str().is_some_and(|m| m.contains("95.00")), "{over}");
    till.ask(7, json!({"type": "card", "masked_pan": "411111******1111"})).await;
    let mismatch = till.ask(8, refund("1.00")).await;
    assert_eq!(code(&mismatch), "card_mismatch");
    assert_eq!(till.agent.list().await.len(), 1, "refusals store nothing");
    till
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cashier_flow_over_ndjson() {
    let till = cashier_flow("ndjson").await;
    assert!(till.back().iter().all(|b| matches!(b, Back::Json(_))), "no link bytes in ndjson");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cashier_flow_over_stx_etx_with_link_acks() {
    let till = cashier_flow("stx-etx").await;
    // Every good frame is answered with the link ACK first, then its framed JSON reply.
    let back = till.back();
    assert_eq!(back.len(), 16, "{back:?}");
    for pair in back.chunks(2) {
        assert_eq!(pair[0], Back::Link(ACK), "{back:?}");
        assert!(matches!(&pair[1], Back::Json(_)), "{back:?}");
    }
    // A bad checksum gets a NAK byte and nothing else; the resent frame goes through.
    let cancel = r#"{"type":"cancel","seq":9}"#;
    let mut bad = frame("stx-etx", cancel);
    *bad.last_mut().expect("lrc") ^= 0xff;
    till.pty().write(&bad);
    till.send(cancel);
    assert_eq!(till.reply(9).await["type"], "ack");
    assert_eq!(&till.back()[16..18], &[Back::Link(NAK), Back::Link(ACK)]);
}

/// A `lines` device is a barcode scanner: it can only scan and cannot read a reply. The scan opens
/// the till's session and shows in `/v1/status` (`last_scan`) for the kiosk UI, which completes
/// the refund through the control API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lines_scanner_scans_and_the_kiosk_refunds() {
    let till = Till::start("lines", "").await;
    till.agent.add_receipt(RECEIPT).await;
    till.send("4111111111111111");
    till.send("  RCP-2025-001 ");
    let status = till.wait_status("the scan to show", |t| t["last_scan"] == "RCP-2025-001").await;
    assert_eq!((status["frames_ok"].as_u64(), status["frames_dropped"].as_u64()), (Some(1), Some(1)));
    assert_eq!(status["last_drop"], "invalid_field", "a card scanned by mistake is refused");
    let out = cli_refund(&till.agent, "5.00", &[]).await;
    created_id(&out);
    assert!(till.pty().received().is_empty(), "nothing is ever written to a scanner");
}

/// Noise of every kind between valid frames never stops the link.
async fn garbage_burst(framing: &'static str) {
    use rand::{Rng, SeedableRng};
    let till = Till::start(framing, "").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut noise: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    noise.extend(frame(framing, &"x".repeat(9 * 1024)));
    noise.extend(frame(framing, "{\"type\":\"cancel\",\"note\":\"\u{e9}\"}").iter().map(|&b| {
        if b >= 0x80 {
            0xff
        } else {
            b
        }
    }));
    if framing == "ndjson" {
        // Without a terminator the next frame would be glued to the noise; stx-etx resyncs on STX.
        noise.push(b'\n');
    }
    till.pty().write_all(noise).await;
    assert_eq!(till.ask(99, json!({"type": "cancel"})).await["type"], "ack");
    let status = till.status().await;
    assert!(status["frames_dropped"].as_u64().is_some_and(|n| n >= 2), "{status}");
    assert_eq!(till.ask(100, json!({"type": "cancel"})).await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_ndjson_frames() {
    garbage_burst("ndjson").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_stx_etx_frames() {
    garbage_burst("stx-etx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_replug_without_restart() {
    let mut till = Till::start("ndjson", "").await;
    assert_eq!(till.ask(1, receipt("RCP-2025-001", "530957******2257")).await["type"], "ack");
    till.pty.take().expect("plugged").unplug();
    let status = till.wait_status("the loss to show", |t| t["connected"] == false).await;
    assert!(status["last_error"].is_string(), "{status}");
    // The API keeps serving while the device is gone.
    let out = cli_refund(&till.agent, "1.00", &[]).await;
    created_id(&out);

    till.pty = Some(Pty::plug(&till.link));
    let status = till.wait_status("the reconnect", |t| t["connected"] == true).await;
    assert_eq!(status["reconnects"], 1, "{status}");
    let mut again = refund("2.00");
    again["receipt_id"] = "RCP-2025-001".into();
    assert_eq!(till.ask(2, again).await["type"], "ack");
    let logs = till.agent.logs();
    let connected = logs.matches("terminal device connected").count();
    assert!(logs.contains("terminal device lost") && connected == 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_events_is_all_answered() {
    let till = Till::start("ndjson", "").await;
    let burst: Vec<u8> = (1..=1000)
        .flat_map(|seq| {
            let mut event = receipt(&format!("RCP-B{seq}"), "530957******2257");
            event["seq"] = seq.into();
            frame("ndjson", &event.to_string())
        })
        .collect();
    let started = Instant::now();
    till.pty().write_all(burst).await;
    let replies = eventually("1000 replies", DEADLINE * 4, || async {
        let back = till.back();
        (back.len() >= 1000).then_some(back)
    })
    .await;
    let elapsed = started.elapsed();
    let seqs: Vec<i64> = replies
        .iter()
        .map(|b| match b {
            Back::Json(v) if v["type"] == "ack" => v["seq"].as_i64().expect("seq"),
            other => panic!("not an ack: {other:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>(), "answered in order");
    eprintln!("1000 receipt events answered in {elapsed:?} ({:.0}/s)", 1000.0 / elapsed.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_session_is_refused() {
    let till = Till::start("ndjson", "session_timeout = \"300ms\"").await;
    till.ask(1, receipt("RCP-2025-001", "530957******2257")).await;
    till.ask(2, json!({"type": "receipt_scan", "receipt_id": "RCP-2025-001"})).await;
    eventually("the session to be abandoned", DEADLINE, || async {
        till.agent.logs().contains("session abandoned").then_some(())
    })
    .await;
    assert_eq!(code(&till.ask(3, refund("5.00")).await), "session_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_refund_gets_the_original_ack() {
    let mut till = Till::start("ndjson", "").await;
    till.ask(1, receipt("RCP-2025-001", "530957******2257")).await;
    till.ask(2, json!({"type": "receipt_scan", "receipt_id": "RCP-2025-001"})).await;
    let mut frame = refund("5.00");
    frame["request_id"] = "req-42".into();
    let first = till.ask(3, frame.clone()).await;
    // The ack was "lost": the terminal resends the same frame, its session long over.
    let again = till.ask(4, frame.clone()).await;
    assert_eq!((again["type"].as_str(), &again["refund_id"]), (Some("ack"), &first["refund_id"]));
    // After a restart the queue's key `terminal:req-42` still answers a frame naming its receipt.
    till.agent.terminate().await;
    till.pty.take().expect("plugged").unplug();
    till.pty = Some(Pty::plug(&till.link));
    till.agent.start().await;
    till.wait_status("the terminal to be connected", |t| t["connected"] == true).await;
    frame["receipt_id"] = "RCP-2025-001".into();
    let after_restart = till.ask(5, frame.clone()).await;
    assert_eq!(after_restart["refund_id"], first["refund_id"], "{after_restart}");
    frame["amount"] = "6.00".into();
    assert_eq!(code(&till.ask(6, frame).await), "idempotency_key_reused", "another body under the same id");
    assert_eq!(till.agent.list().await.len(), 1, "exactly one refund");
}

/// Every file in the state dir (database, WAL, shared memory), by name.
fn state_files(agent: &Agent) -> Vec<(String, Vec<u8>)> {
    let dir = agent.db_path().parent().expect("state dir").to_path_buf();
    let entries = std::fs::read_dir(dir).expect("state dir");
    entries
        .map(|entry| {
            let path = entry.expect("entry").path();
            (path.display().to_string(), std::fs::read(&path).expect("state file"))
        })
        .collect()
}

const PANS: [&str; 4] =
    ["4111111111111111", "5309570000052257", "4111 1111 1111 1111", "5309 5700 0005 2257"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pans_never_reach_disk_or_logs() {
    let mut till = Till::start("ndjson", "").await;
    let mut sale = receipt("RCP-PAN", "5309570000052257");
    sale["pan"] = "4111111111111111".into();
    sale["track2"] = ";5309570000052257=30122011234?".into();
    sale["cvv"] = "123".into();
    sale["items"][0]["name"] = "Gift card 4111 1111 1111 1111".into();
    assert_eq!(till.ask(1, sale).await["type"], "ack");
    till.ask(2, json!({"type": "receipt_scan", "receipt_id": "RCP-PAN"})).await;
    let card = json!({"type": "card", "pan": "5309570000052257", "cvv": "999", "track1": "%B5309570000052257^DOE/J^3012?"});
    assert_eq!(till.ask(3, card).await["type"], "ack");
    let mut rf = refund("5.00");
    rf["reason"] = "card 4111111111111111 was charged twice".into();
    rf["note"] = "5309 5700 0005 2257".into();
    rf["masked_pan"] = "5309570000052257".into();
    let ack = till.ask(4, rf).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // Broken frames carrying PANs are refused without echoing them.
    till.send(r#"{"type":"card","pan":"4111111111111111""#);
    till.send(&format!(r#"{{"type":"card","pan":"4111111111111111","pad":"{}"}}"#, "x".repeat(9000)));
    till.send(r#"{"type":"4111111111111111","seq":5}"#);
    assert_eq!(code(&till.reply(5).await), "unknown_type");

    let refund = till.agent.refund(ack["refund_id"].as_str().expect("id")).await.expect("refund");
    assert!(refund.reason.contains("411111******1111"), "{}", refund.reason);
    // The state dir is read while running (the WAL holds the new rows) and after a clean stop.
    let mut places = vec![("replies".to_owned(), till.pty().received())];
    places.extend(state_files(&till.agent));
    till.agent.terminate().await;
    places.extend(state_files(&till.agent));
    places.push(("log".into(), std::fs::read(till.agent.log_path()).expect("log")));
    let names: Vec<&str> = places.iter().map(|p| p.0.as_str()).collect();
    assert!(names.iter().any(|n| n.ends_with("queue.db-wal")), "the WAL was searched: {names:?}");
    for (place, bytes) in &places {
        for pan in PANS {
            assert!(!bytes.windows(pan.len()).any(|w| w == pan.as_bytes()), "{pan} found in {place}");
        }
    }
    let logs = till.agent.logs();
    assert!(logs.contains("terminal sent card data"), "the redactions were noticed: {logs}");
    till.pty.take();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_typed_at_the_terminal_are_masked_or_refused() {
    const PAN: &str = "4111111111111111";
    let mut till = Till::start("ndjson", "").await;
    let mut bad = receipt("RCP-2025-001", "530957******2257");
    bad["order_id"] = "４１１１ １１１１ １１１１ １１１１".into();
    assert_eq!(code(&till.ask(1, bad).await), "card_data_in_field");
    assert_eq!(till.ask(2, receipt("RCP-2025-001", "530957******2257")).await["type"], "ack");

    let mut typed = refund("5.00");
    typed["receipt_id"] = "RCP-2025-001".into();
    typed["reason"] = "card 4111/1111/1111/1111 charged twice".into();
    let ack = till.ask(3, typed.clone()).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["refund_id"].as_str().expect("refund id");
    let queued = till.agent.refund(id).await.expect("queued");
    assert_eq!(queued.reason, "card 411111******1111 charged twice");

    typed["operator"] = "41111111111111112512".into();
    let refused = till.ask(4, typed).await;
    assert_eq!(code(&refused), "card_data_in_field");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("`operator`")), "{refused}");
    assert_eq!(till.agent.list().await.len(), 1, "refusals store nothing");

    assert_eq!(till.agent.terminate().await.code(), Some(0));
    let logs = till.agent.logs();
    assert!(!refund_agent::pan::digits(&logs).contains(PAN), "the log file holds the PAN: {logs}");
    let replies = String::from_utf8_lossy(&till.pty().received()).to_string();
    assert!(!refund_agent::pan::digits(&replies).contains(PAN), "{replies}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_event_carries_a_verified_manager_approval() {
    let till = Till::start("ndjson", "[limits]\nmax_refund = \"50.00\"").await;
    till.agent.add_receipt(RECEIPT).await;
    let mut large = refund("60.00");
    large["receipt_id"] = "RCP-2025-001".into();
    assert_eq!(code(&till.ask(1, large.clone()).await), "manager_approval_required");
    large["manager_approval"] = json!(MANAGER);
    assert_eq!(code(&till.ask(2, large.clone()).await), "invalid_field", "an id alone is no approval");
    large["manager_approval"] = json!({"manager": MANAGER, "pin": "wrong-Zq9x"});
    assert_eq!(code(&till.ask(3, large.clone()).await), "manager_approval_invalid");
    assert!(till.agent.list().await.is_empty(), "nothing stored");
    large["manager_approval"] = approval();
    let ack = till.ask(4, large).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["refund_id"].as_str().expect("refund id");
    let shown = till.agent.refund(id).await.expect("stored");
    assert_eq!(shown.manager_approval.expect("approved").manager, MANAGER);
    assert!(!till.agent.logs().contains("wrong-Zq9x"), "no PIN in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_event_returns_items_by_their_line() {
    let till = Till::start("ndjson", "").await;
    assert_eq!(till.ask(1, receipt("RCP-2025-001", "530957******2257")).await["type"], "ack");
    let tea = |extra: Value| {
        let mut event = json!({"type": "refund", "receipt_id": "RCP-2025-001", "lines": [{"line": 1, "quantity": 1}],
                               "reason": "One of the two Sweet Teas was spilt", "operator": "emp_42"});
        if let (Some(e), Value::Object(more)) = (event.as_object_mut(), extra) {
            e.extend(more);
        }
        event
    };
    let ack = till.ask(2, tea(json!({}))).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["refund_id"].as_str().expect("refund id");
    assert_eq!(till.agent.refund(id).await.expect("stored").amount, "5.00");
    assert_eq!(code(&till.ask(3, tea(json!({"amount": "4.00"}))).await), "amount_mismatch");
    let two = tea(json!({"lines": [{"line": 1, "quantity": 2}]}));
    let over = till.ask(4, two).await;
    assert_eq!(code(&over), "over_refund");
    assert!(over["message"].as_str().is_some_and(|m| m.contains("line 1")), "{over}");
    assert_eq!(till.agent.list().await.len(), 1, "refusals store nothing");
}
