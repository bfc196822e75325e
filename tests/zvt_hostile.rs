//! A broken or hostile ZVT terminal as the agent's `[terminal]`: a scripted fake terminal on a
//! loopback TCP port does what the simulator never does (intermediate status forever, full card
//! numbers everywhere, unsolicited traffic, refused registrations, reads held until the agent
//! gives up), against the real binary or the link owner. Every wait is a poll with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use refund_agent::terminal::codec::zvt::{Apdu, ApduDecoder};
use serde_json::{json, Value};

/// The full card number the fake terminal sends; only `411111` and `1111` may come out.
const FULL_PAN: &str = "4111111111111111";
const PAN_BCD: [u8; 8] = [0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11];

/// How the fake terminal answers Read Card (`06 C0`) and registration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Registration and Read Card answered with the card, every field full of card data.
    Card,
    /// Read Card acknowledged, then `04 FF` forever on this connection (an abort is ignored).
    StatusForever,
    /// The first Read Card acknowledged, then nothing until the agent aborts; then the card
    /// anyway (a late answer racing the abort). Later reads are answered with the card.
    CardAfterAbort,
    /// Read Card acknowledged, then nothing until the agent aborts; then `06 1E`.
    HonourAbort,
    /// Registration refused with `84 9A` on every connection.
    RefuseRegistration,
    /// Every connection accepted and closed at once.
    CloseAtOnce,
    /// Every connection accepted, nothing ever answered.
    Silent,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    first_connection: Option<Instant>,
    /// Every command from the agent, as `class << 8 | instr`, acknowledgements included.
    commands: Vec<u16>,
}

struct FakeTerminal {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// Bytes the test sends to the agent on the current connection while it is idle.
    inject: Arc<Mutex<Option<TcpStream>>>,
}

impl FakeTerminal {
    /// `scripts[i]` is the script of connection `i`; the last one holds for the rest.
    fn start(scripts: Vec<Script>) -> FakeTerminal {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let inject = Arc::new(Mutex::new(None));
        let (s, i) = (seen.clone(), inject.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let n = {
                    let mut seen = s.lock().expect("seen");
                    seen.connections += 1;
                    seen.first_connection.get_or_insert_with(Instant::now);
                    seen.connections - 1
                };
                let script = scripts[n.min(scripts.len() - 1)];
                // A connection closed at once must not live on in a clone kept for injection.
                if script != Script::CloseAtOnce {
                    *i.lock().expect("inject") = stream.try_clone().ok();
                }
                let s = s.clone();
                thread::spawn(move || serve(stream, script, &s));
            }
        });
        FakeTerminal { addr, seen, inject }
    }

    fn table(&self) -> String {
        format!(
            "\n[terminal]\nzvt_address = \"{}\"\nzvt_password = \"000000\"\nzvt_currency = \"USD\"\n",
            self.addr
        )
    }

    fn count(&self, command: u16) -> usize {
        self.seen.lock().expect("seen").commands.iter().filter(|c| **c == command).count()
    }

    fn connections(&self) -> usize {
        self.seen.lock().expect("seen").connections
    }

    fn send(&self, bytes: &[u8]) {
        let mut guard = self.inject.lock().expect("inject");
        guard.as_mut().expect("a connection").write_all(bytes).expect("send to the agent");
    }
}

fn apdu(class: u8, instr: u8, data: Vec<u8>) -> Vec<u8> {
    Apdu::new(class, instr, data).encode().expect("encodes")
}

/// A Status-Information with the card in every field a terminal might put it: BMP `22` (PAN),
/// `23` (track 2), the TLV container with `5A` and `57`, and the free text of BMP `3C`. With
/// `tlv_len` 0x18 the container is well formed; with 0x16 its length is wrong, so the decoder
/// cannot read it nor what follows and shows them as unread bytes.
fn status_with_the_full_card(tlv_len: u8) -> Vec<u8> {
    let mut data = vec![0x27, 0x00, 0x22, 0xF0, 0xF8];
    data.extend_from_slice(&PAN_BCD);
    data.extend_from_slice(&[0x23, 0xF1, 0xF2]);
    data.extend_from_slice(&PAN_BCD);
    data.extend_from_slice(&[0xD2, 0x51, 0x22, 0x01]);
    data.extend_from_slice(&[0x06, tlv_len, 0x5A, 0x08]);
    data.extend_from_slice(&PAN_BCD);
    data.extend_from_slice(&[0x57, 0x0C]);
    data.extend_from_slice(&PAN_BCD);
    data.extend_from_slice(&[0xD2, 0x51, 0x22, 0x01]);
    let text = format!("CARD {FULL_PAN} OK");
    data.extend_from_slice(&[0x3C, 0xF0, 0xF2, 0xF1]);
    data.extend_from_slice(text.as_bytes());
    apdu(0x04, 0x0F, data)
}

/// The card of a Read Card, in a status information a careless terminal got wrong.
fn card_answer() -> Vec<u8> {
    let mut bytes = status_with_the_full_card(0x16);
    bytes.extend(apdu(0x06, 0x0F, vec![0x27, 0x00]));
    bytes
}

const ACK: [u8; 3] = [0x80, 0x00, 0x00];

fn serve(mut stream: TcpStream, script: Script, seen: &Mutex<Seen>) {
    if script == Script::CloseAtOnce {
        return;
    }
    let mut decoder = ApduDecoder::new();
    let mut buf = [0u8; 4096];
    let mut reading = false;
    let mut held = false;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if reading
                    && script == Script::StatusForever
                    && stream.write_all(&apdu(0x04, 0xFF, vec![0x0A])).is_err()
                {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        decoder.push(&buf[..n]);
        while let Some(Ok(a)) = decoder.next_apdu() {
            seen.lock().expect("seen").commands.push(a.command());
            let answer = match (a.class, a.instr, script) {
                (0x06, 0x00, Script::RefuseRegistration) => vec![0x84, 0x9A, 0x00],
                (_, _, Script::Silent) => Vec::new(),
                (0x06, 0x00, _) | (0x05, 0x01, _) => {
                    [ACK.to_vec(), apdu(0x06, 0x0F, vec![0x27, 0x00])].concat()
                }
                (0x06, 0xC0, Script::Card) => [ACK.to_vec(), card_answer()].concat(),
                (0x06, 0xC0, Script::CardAfterAbort) if held => [ACK.to_vec(), card_answer()].concat(),
                (0x06, 0xC0, _) => {
                    reading = true;
                    held = true;
                    ACK.to_vec()
                }
                (0x06, 0xB0, Script::CardAfterAbort) if reading => {
                    reading = false;
                    [ACK.to_vec(), card_answer()].concat()
                }
                (0x06, 0xB0, Script::HonourAbort) if reading => {
                    reading = false;
                    [ACK.to_vec(), apdu(0x06, 0x1E, vec![0x6C])].concat()
                }
                _ => Vec::new(),
            };
            if stream.write_all(&answer).is_err() {
                return;
            }
        }
    }
}

/// The example sale, paid with the fake terminal's card (ending 1111).
fn sale_with_the_card() -> String {
    RECEIPT
        .replace("RCP-2025-001", "RCP-CARD-1111")
        .replace("txn_123", "txn_card_1111")
        .replace("530957******2257", "411111******1111")
}

fn refund_body() -> Vec<u8> {
    let body = json!({
        "receipt_id": "RCP-CARD-1111",
        "amount": "5.00",
        "reason": "Customer returned item",
        "operator": "emp_42",
        "read_card": true,
    });
    serde_json::to_vec(&body).expect("body")
}

async fn status(agent: &Agent) -> Value {
    let a = agent.client().request("GET", "/v1/status", None, &[]).await.expect("status");
    serde_json::from_slice(&a.body).expect("status JSON")
}

async fn wait_connected(agent: &Agent, reconnects: u64) {
    eventually("the ZVT terminal registered", DEADLINE, || async {
        let t = status(agent).await["terminal"].clone();
        (t["connected"] == true && t["reconnects"] == reconnects).then_some(())
    })
    .await;
}

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    eventually(what, DEADLINE, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

async fn started(fake: &FakeTerminal) -> Agent {
    let mut agent = Agent::new("http://127.0.0.1:9", &fake.table());
    agent.start().await;
    agent.add_receipt(&sale_with_the_card()).await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_traffic_is_answered_and_the_full_card_number_goes_nowhere() {
    let fake = FakeTerminal::start(vec![Script::Card]);
    let agent = started(&fake).await;
    wait_connected(&agent, 0).await;

    // While idle: print lines (one with a card number in it), a status information with the
    // full card, a giant APDU with extended length 65535, a flood, and an unknown command.
    let acks_before = fake.count(0x8000);
    fake.send(&apdu(0x06, 0xD1, [vec![0x00], format!("PAN {FULL_PAN}").into_bytes()].concat()));
    fake.send(&status_with_the_full_card(0x18));
    let mut giant = vec![0x06, 0xD1, 0xFF, 0xFF, 0xFF];
    giant.extend(std::iter::repeat_n(b'7', 65_535));
    fake.send(&giant);
    let flood: Vec<u8> = (0..500).flat_map(|_| apdu(0x04, 0xFF, vec![0x0A])).collect();
    fake.send(&flood);
    fake.send(&apdu(0xFE, 0xFE, vec![0xDE, 0xAD]));
    // Every print line, status and intermediate status is acknowledged; the unknown command is
    // "function not possible"; the giant one was skipped without being kept.
    wait_for("every unsolicited message answered", || fake.count(0x8483) == 1).await;
    assert_eq!(fake.count(0x8000) - acks_before, 502, "each message acknowledged once");
    let t = status(&agent).await["terminal"].clone();
    assert_eq!((t["connected"].as_bool(), t["reconnects"].as_u64()), (Some(true), Some(0)), "{t}");

    // Read Card answered with the card in every field: only BIN + last 4 come out anywhere.
    let (code, refund) = agent.post_json("/v1/refunds", &refund_body(), &[]).await;
    // Created: the card-present check matched the card's BIN + last 4 to the sale's card.
    assert_eq!(code, 201, "{refund}");
    let stored = agent.refund(refund["id"].as_str().expect("an id")).await.expect("queued");
    let stored = serde_json::to_string(&stored).expect("JSON");
    let metrics = agent.client().request("GET", "/metrics", None, &[]).await.expect("metrics");
    let everything = [
        refund.to_string(),
        stored,
        status(&agent).await.to_string(),
        String::from_utf8_lossy(&metrics.body).to_string(),
        agent.logs(),
    ];
    for (what, text) in ["answer", "stored refund", "status", "metrics", "debug logs"].iter().zip(everything)
    {
        assert!(!text.contains(FULL_PAN), "the full card number in the {what}");
        assert!(!text.contains("41111111"), "more than BIN + last 4 in the {what}");
    }
    assert!(agent.logs().contains("answered and dropped"), "the debug log is on");

    // `terminal decode` on the same bytes.
    let capture = agent.dir.path().join("capture.bin");
    std::fs::write(&capture, [status_with_the_full_card(0x18), card_answer()].concat()).expect("capture");
    let out = agent.cli(&["terminal", "decode", "--framing", "zvt-apdu", path_str(&capture)]).await;
    let decoded = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && decoded.contains("1111"), "{decoded} {}", stderr(&out));
    assert_eq!(decoded.lines().count(), 3, "{decoded}");
    assert!(!decoded.contains(FULL_PAN) && !decoded.contains("41111111"), "{decoded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_that_never_registers_is_retried_with_backoff_and_shown() {
    // What each does, how many connections to watch, and the reason status must give.
    let cases = [
        (Script::RefuseRegistration, 4, "refused with code 0x9a"),
        (Script::CloseAtOnce, 4, "lost (LinkDropped)"),
        (Script::Silent, 2, "lost (NoAck)"),
    ];
    for (script, connections, reason) in cases {
        let fake = FakeTerminal::start(vec![script]);
        let agent = started(&fake).await;
        wait_for("the connections", || fake.connections() >= connections).await;
        let t = eventually(&format!("the reason {reason:?} in status"), DEADLINE, || async {
            let t = status(&agent).await["terminal"].clone();
            t["last_error"].as_str().is_some_and(|e| e.contains(reason)).then_some(t)
        })
        .await;
        assert_eq!(t["connected"], false, "{t}");
        assert!(t["last_error"].as_str().unwrap_or_default().contains("registration not completed"), "{t}");
        if connections == 4 {
            // The backoff doubles from its first delay: four connections span at least three
            // delays. A lower bound the agent's own waits guarantee, not a race.
            let first = fake.seen.lock().expect("seen").first_connection.expect("a connection");
            assert!(first.elapsed() >= Duration::from_millis(100 + 200 + 400), "a tight reconnect loop");
        }
        let (code, answer) = agent.post_json("/v1/refunds", &refund_body(), &[]).await;
        assert_eq!((code, answer["code"].as_str()), (503, Some("card_reader_unavailable")), "{answer}");
        assert_eq!(fake.count(0x06C0), 0);
        let doctor = agent.cli(&["doctor"]).await;
        let said = String::from_utf8_lossy(&doctor.stdout);
        assert!(
            said.contains("the agent is not registered at ZVT terminal") && said.contains(reason),
            "{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_client_left_is_aborted_and_its_late_card_queues_nothing() {
    let fake = FakeTerminal::start(vec![Script::CardAfterAbort]);
    let agent = started(&fake).await;
    wait_connected(&agent, 0).await;

    // The kiosk sends the request and goes away while the terminal waits for the card.
    let body = refund_body();
    let request = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut client = tokio::net::UnixStream::connect(&agent.socket).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut client, &[request.into_bytes(), body].concat())
        .await
        .expect("send");
    wait_for("the read started", || fake.count(0x06C0) == 1).await;
    drop(client);
    // The agent aborts the read; the terminal answers with the card anyway.
    wait_for("the read aborted", || fake.count(0x06B0) == 1).await;
    wait_for("the late card acknowledged", || fake.count(0x8000) >= 3).await;

    // The next request runs after that job ended: the link still works, and only its own
    // refund is queued, never the draft whose client left.
    let (code, refund) = agent.post_json("/v1/refunds", &refund_body(), &[]).await;
    assert_eq!(code, 201, "{refund}");
    let queued = agent.list().await;
    assert_eq!(queued.len(), 1, "nothing queued that nobody confirmed");
    assert_eq!(status(&agent).await["terminal"]["reconnects"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reads_at_once_take_turns_and_a_stop_answers_both() {
    let fake = FakeTerminal::start(vec![Script::HonourAbort]);
    let mut agent = started(&fake).await;
    wait_connected(&agent, 0).await;
    let post = |agent: &Agent| {
        let client = agent.client();
        tokio::spawn(async move {
            let a = client.request("POST", "/v1/refunds", Some(refund_body()), &[]).await.expect("an answer");
            let body: Value = serde_json::from_slice(&a.body).expect("JSON");
            (a.status, body["code"].as_str().unwrap_or_default().to_owned())
        })
    };
    let first = post(&agent);
    wait_for("the first read started", || fake.count(0x06C0) == 1).await;
    let second = post(&agent);
    // The second waits for its turn: the terminal reads one card at a time. It is in the
    // agent's hands once status is answered after it (one connection at a time per client).
    status(&agent).await;
    assert_eq!(fake.count(0x06C0), 1, "one read at a time");

    // SIGTERM while the first reads and the second waits: the read is aborted on the terminal,
    // both clients are answered, and the agent ends.
    let exit = agent.terminate().await;
    assert!(exit.success(), "{exit}");
    let answers = [first.await.expect("first"), second.await.expect("second")];
    for (status, code) in &answers {
        assert_eq!((*status, code.as_str()), (503, "card_reader_unavailable"), "{answers:?}");
    }
    assert_eq!((fake.count(0x06B0), fake.count(0x06C0)), (1, 1), "aborted once, never read again");
    assert!(agent.logs().contains("the agent is stopping"), "{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_never_ends_is_bounded_and_the_link_comes_back() {
    use refund_agent::config::ZvtTerminalSettings;
    use refund_agent::destinations::zvt::{ZvtEndpoint, ZvtSettings};
    use refund_agent::terminal::ecr::owner;

    // The first connection sends intermediate status every 100 ms forever and ignores the
    // abort; the next one answers like a good terminal.
    let fake = FakeTerminal::start(vec![Script::StatusForever, Script::Card]);
    let link = ZvtSettings {
        endpoint: ZvtEndpoint::Tcp(fake.addr),
        password: "000000".into(),
        currency: "EUR",
        currency_number: 978,
        service_byte: 0,
    };
    let settings = ZvtTerminalSettings { link, keepalive: Duration::from_secs(600) };
    let status = Arc::new(Mutex::new(Default::default()));
    let (trigger, shutdown) = refund_agent::shutdown::Shutdown::new();
    let (running, handle) = owner::spawn(settings, status.clone(), shutdown).expect("spawn");
    let connected = |s: &Arc<Mutex<refund_agent::terminal::device::TerminalStatus>>, n: u64| {
        let s = s.lock().expect("status");
        s.connected && s.reconnects == n
    };
    wait_for("registered", || connected(&status, 0)).await;

    // A read with a 1 s terminal timeout: bounded at 1 s plus the margin, then aborted, then
    // abandoned when the terminal does not end it, however often it speaks.
    let error = handle.read_card_within(1).await.expect_err("no card");
    assert_eq!(error.code(), "card_not_read", "{error}");
    assert!(error.to_string().contains("in time"), "{error}");
    assert_eq!(fake.count(0x06B0), 1, "the read was aborted on the terminal");
    assert!(fake.count(0x8000) > 10, "every intermediate status was acknowledged meanwhile");

    // The link was dropped and registered anew; the next read works.
    wait_for("registered again", || connected(&status, 1)).await;
    let card = handle.read_card_within(1).await.expect("a card");
    assert_eq!(card.masked(), "411111******1111");
    trigger.fire();
    running.stop().await;
}
