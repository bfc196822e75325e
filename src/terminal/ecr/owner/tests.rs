//! The link owner: its pure decisions with plain outcomes, and the thread against the terminal
//! simulator on a loopback port (status polled with a deadline, never a sleep as a wait).

use std::time::{Duration, Instant};

use super::*;
use crate::config::ZvtTerminalSettings;
use crate::destinations::zvt::{ZvtEndpoint, ZvtSettings};
use crate::sandbox::zvt::{Endpoint, ZvtSimulator};
use crate::shutdown::Shutdown;
use crate::terminal::ecr::{Lost, TerminalResult};

fn with_card() -> TerminalResult {
    TerminalResult {
        card: Some(CardRef { bin: Some("411111".into()), last4: "1111".into() }),
        ..TerminalResult::default()
    }
}

#[test]
fn only_a_completion_with_a_card_gives_one() {
    let card = card_of(&Outcome::Completed(with_card())).expect("a card");
    assert_eq!(card.masked(), "411111******1111");
    let failed = TerminalResult { result_code: Some(0x6C), ..with_card() };
    let not_read = [
        Outcome::Completed(failed),
        Outcome::Completed(TerminalResult::default()),
        Outcome::Aborted { code: Some(0x6C), result: with_card() },
        Outcome::Refused { code: 0x83 },
        Outcome::Lost { why: Lost::Silent, acknowledged: true, result: with_card() },
    ];
    for outcome in not_read {
        let error = card_of(&outcome).expect_err("no card");
        assert_eq!(error.code(), "card_not_read", "{outcome:?}");
    }
    assert_eq!(ReadCardError::Unavailable(JobError::NotConnected).code(), "card_reader_unavailable");
}

#[test]
fn only_a_lost_exchange_closes_the_link() {
    assert!(link_survives(&Outcome::Completed(TerminalResult::default())));
    assert!(link_survives(&Outcome::Refused { code: 0x83 }));
    assert!(link_survives(&Outcome::Aborted { code: None, result: TerminalResult::default() }));
    let lost =
        Outcome::Lost { why: Lost::LinkDropped, acknowledged: false, result: TerminalResult::default() };
    assert!(!link_survives(&lost));
}

fn settings(endpoint: ZvtEndpoint, keepalive: Duration) -> ZvtTerminalSettings {
    let link = ZvtSettings {
        endpoint,
        password: "000000".into(),
        currency: "EUR",
        currency_number: 978,
        service_byte: 0,
    };
    ZvtTerminalSettings { link, keepalive }
}

fn endpoint(sim: &ZvtSimulator) -> ZvtEndpoint {
    match sim.endpoint() {
        Endpoint::Tcp(addr) => ZvtEndpoint::Tcp(*addr),
        Endpoint::Serial(path) => ZvtEndpoint::Serial { device: path.clone(), baud: 9600 },
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn registrations(sim: &ZvtSimulator) -> usize {
    sim.commands().iter().filter(|c| **c == 0x0600).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_reads_cards_and_registers_again_after_a_cut() {
    let sim = ZvtSimulator::start_tcp().expect("simulator");
    let status = SharedStatus::default();
    let (trigger, shutdown) = Shutdown::new();
    let (owner, handle) =
        spawn(settings(endpoint(&sim), Duration::from_secs(3600)), status.clone(), shutdown).expect("spawn");
    until("registered", || lock(&status).connected).await;
    assert_eq!(registrations(&sim), 1);
    assert_eq!(lock(&status).framing, "zvt");

    let card = handle.read_card().await.expect("the simulator's card");
    assert_eq!(card.masked(), "411111******1111", "reduced to BIN + last 4 by the codec");
    sim.no_card_next_read();
    assert_eq!(handle.read_card().await.expect_err("no card").code(), "card_not_read");

    sim.cut_link();
    until("reconnected", || lock(&status).reconnects == 1 && lock(&status).connected).await;
    assert_eq!(registrations(&sim), 2, "registered again after the reconnect");
    assert!(handle.read_card().await.is_ok(), "the new link reads cards");

    trigger.fire();
    owner.stop().await;
    assert_eq!(handle.read_card().await.expect_err("stopped").code(), "card_reader_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_is_kept_alive_with_status_enquiries() {
    // Over TCP, so it also runs under qemu-user, which cannot set a pty up as a serial port;
    // the same over a pty is in tests/zvt_terminal.rs, run on the host.
    let sim = ZvtSimulator::start_tcp().expect("simulator");
    let status = SharedStatus::default();
    let (trigger, shutdown) = Shutdown::new();
    let (owner, handle) =
        spawn(settings(endpoint(&sim), Duration::from_millis(100)), status.clone(), shutdown).expect("spawn");
    until("registered", || lock(&status).connected).await;
    until("two status enquiries", || sim.commands().iter().filter(|c| **c == 0x0501).count() >= 2).await;
    assert!(handle.read_card().await.is_ok(), "jobs run between keepalives");
    trigger.fire();
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_terminal_is_answered_at_once_not_held() {
    // A port nobody listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
    let status = SharedStatus::default();
    let (trigger, shutdown) = Shutdown::new();
    let (owner, handle) =
        spawn(settings(ZvtEndpoint::Tcp(addr), Duration::from_secs(60)), status.clone(), shutdown)
            .expect("spawn");
    until("the failure recorded", || lock(&status).last_error.is_some()).await;
    assert!(!lock(&status).connected);
    let error = handle.read_card().await.expect_err("not connected");
    assert_eq!(error, ReadCardError::Unavailable(JobError::NotConnected));
    trigger.fire();
    owner.stop().await;
}
