//! A broken ZVT terminal on the serial line: a scripted fake terminal on a pty sends garbage,
//! frames with a wrong CRC, a frame far over the APDU limit and unsolicited print lines while
//! the link is idle; the real binary answers what the protocol asks, keeps its registered link,
//! and reads the next card. Every wait is a poll with a deadline.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pty::Pty;
use common::*;
use refund_agent::terminal::codec::zvt::transport::ACK;
use refund_agent::terminal::codec::zvt::{encode_frame, Apdu, FrameDecoder, Unit};
use serde_json::{json, Value};

const PAN_BCD: [u8; 8] = [0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11];

fn framed(class: u8, instr: u8, data: Vec<u8>) -> Vec<u8> {
    encode_frame(&Apdu::new(class, instr, data).encode().expect("encodes"))
}

/// Plays the terminal on the pty master: acknowledges every frame at the link level, answers
/// registration and Read Card, and counts the `80 00 00` answers it gets.
struct FakeSerial {
    pty: Arc<Pty>,
    acks: Arc<AtomicUsize>,
    refusals: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeSerial {
    fn start(link: &std::path::Path) -> FakeSerial {
        let pty = Arc::new(Pty::plug(link));
        let (acks, refusals, stop) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, a, r, s) = (pty.clone(), acks.clone(), refusals.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut decoder = FrameDecoder::new();
            let mut read = 0;
            while !s.load(Ordering::Relaxed) {
                let bytes = p.received();
                decoder.push(&bytes[read..]);
                read = bytes.len();
                while let Some(unit) = decoder.next_unit() {
                    let Unit::Frame(frame) = unit else { continue };
                    p.write(&[ACK]);
                    let Ok(apdu) = Apdu::parse(&frame) else { continue };
                    match (apdu.class, apdu.instr) {
                        (0x80, 0x00) => {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                        (0x84, _) => {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                        (0x06, 0x00) | (0x05, 0x01) => {
                            p.write(&framed(0x80, 0x00, Vec::new()));
                            p.write(&framed(0x06, 0x0F, vec![0x27, 0x00]));
                        }
                        (0x06, 0xC0) => {
                            let mut status = vec![0x27, 0x00, 0x22, 0xF0, 0xF8];
                            status.extend_from_slice(&PAN_BCD);
                            p.write(&framed(0x80, 0x00, Vec::new()));
                            p.write(&framed(0x04, 0x0F, status));
                            p.write(&framed(0x06, 0x0F, vec![0x27, 0x00]));
                        }
                        _ => {}
                    }
                }
                // The fake terminal's own polling pace, not a wait in the test.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FakeSerial { pty, acks, refusals, stop }
    }
}

impl Drop for FakeSerial {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn status(agent: &Agent) -> Value {
    let a = agent.client().request("GET", "/v1/status", None, &[]).await.expect("status");
    serde_json::from_slice(&a.body).expect("status JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_serial_line_leaves_the_link_registered_and_usable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("ttyZVT");
    let fake = FakeSerial::start(&link);
    let table = format!(
        "\n[terminal]\nframing = \"zvt\"\ndevice = \"{}\"\nzvt_password = \"000000\"\nzvt_currency = \"USD\"\n",
        link.display()
    );
    let mut agent = Agent::new("http://127.0.0.1:9", &table);
    agent.start().await;
    let sale = RECEIPT
        .replace("RCP-2025-001", "RCP-CARD-1111")
        .replace("txn_123", "txn_card_1111")
        .replace("530957******2257", "411111******1111");
    agent.add_receipt(&sale).await;
    let connected = || async {
        let t = status(&agent).await["terminal"].clone();
        (t["connected"] == true && t["reconnects"] == 0).then_some(())
    };
    eventually("registered over the serial line", DEADLINE, connected).await;

    // Garbage, a frame with a wrong CRC, a frame of 20 000 bytes (over the 16 KiB limit), then
    // a print line and an unknown command in good frames.
    let acks = fake.acks.load(Ordering::Relaxed);
    let mut noise = vec![0x00, 0xFF, 0x10, 0x10, 0x42, 0x10, 0x03];
    let mut bad_crc = framed(0x06, 0xD1, vec![0x00, b'x']);
    let len = bad_crc.len();
    bad_crc[len - 1] ^= 0xFF;
    noise.extend(bad_crc);
    noise.extend(encode_frame(&[0x20; 20_000]));
    noise.extend(framed(0x06, 0xD1, [vec![0x00], b"THANK YOU".to_vec()].concat()));
    noise.extend(framed(0xFE, 0xFE, vec![0xDE, 0xAD]));
    fake.pty.write_all(noise).await;
    eventually("the good frames answered", DEADLINE, || async {
        (fake.refusals.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert_eq!(fake.acks.load(Ordering::Relaxed) - acks, 1, "the print line acknowledged, nothing else");
    eventually("still registered, no reconnect", DEADLINE, connected).await;

    let body = json!({
        "receipt_id": "RCP-CARD-1111", "amount": "5.00", "reason": "Customer returned item",
        "operator": "emp_42", "read_card": true,
    });
    let (code, refund) = agent.post_json("/v1/refunds", &serde_json::to_vec(&body).expect("body"), &[]).await;
    assert_eq!(code, 201, "{refund}");
    assert!(!agent.logs().contains("4111111111111111"));
}
