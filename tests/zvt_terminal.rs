//! The ECR against the simulated ZVT terminal, over a real TCP connection and a real pty:
//! registration and a refund, and a link cut after `06 31` resolved by Repeat Receipt with one
//! refund at the terminal; the link owner keeping a serial link alive with status enquiries.
//! Host only: qemu-user cannot set a pty up as a serial port (scripts/aarch64-test).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use refund_agent::config::ZvtTerminalSettings;
use refund_agent::destinations::zvt::{ZvtEndpoint, ZvtSettings};
use refund_agent::lock::lock;
use refund_agent::shutdown::Shutdown;
use refund_agent::terminal::device::SharedStatus;
use refund_agent::terminal::ecr::owner;

use refund_agent::sandbox::zvt::{Endpoint, SimRefund, ZvtSimulator};
use refund_agent::terminal::ecr::link::{connect_tcp, open_serial, Link, LinkError, Wire};
use refund_agent::terminal::ecr::payout::{pay_out, Payout, PayoutRequest};
use refund_agent::terminal::ecr::{Lost, Outcome, Request, DEFAULT_COMPLETION_TIMEOUT};

const PASSWORD: &str = "000000";

fn registration() -> Request {
    Request::Registration { password: PASSWORD.into(), currency: 978, service_byte: 0x00 }
}

fn refund(amount_minor: u64) -> Request {
    Request::Refund { password: PASSWORD.into(), amount_minor, currency: 978 }
}

fn tcp_addr(sim: &ZvtSimulator) -> SocketAddr {
    match sim.endpoint() {
        Endpoint::Tcp(addr) => *addr,
        Endpoint::Serial(_) => panic!("not a TCP simulator"),
    }
}

fn run<W: Wire>(link: &mut Link<W>, request: &Request) -> Outcome {
    link.run(request, DEFAULT_COMPLETION_TIMEOUT).expect("valid request")
}

/// Registration, read card (the card reduced to BIN + last 4) and a refund of 12.50.
fn registration_card_and_refund<W: Wire>(link: &mut Link<W>) {
    assert!(matches!(run(link, &registration()), Outcome::Completed(_)));
    let Outcome::Completed(card) = run(link, &Request::ReadCard { timeout_s: 30 }) else {
        panic!("read card failed")
    };
    assert_eq!(card.card.as_ref().map(|c| c.masked()).as_deref(), Some("411111******1111"));
    let outcome = run(link, &refund(1250));
    assert_eq!(outcome.money_moved(), Some(true), "{outcome:?}");
    let Outcome::Completed(result) = outcome else { unreachable!() };
    assert_eq!(result.result_code, Some(0));
    assert_eq!(result.amount_minor, Some(1250));
    assert_eq!(result.trace_number.as_deref(), Some("000001"));
    assert_eq!(result.receipt_number.as_deref(), Some("0001"));
    assert_eq!(result.terminal_id.as_deref(), Some("52001233"));
    assert_eq!(result.card.as_ref().map(|c| c.last4.as_str()), Some("1111"));
    assert_eq!(result.receipt, ["GUTSCHRIFT", "BETRAG EUR 12.50", "TRACE 000001"]);
}

#[test]
fn registration_and_refund_over_tcp() {
    let sim = ZvtSimulator::start_tcp().expect("simulator");
    let mut link = connect_tcp(tcp_addr(&sim), Duration::from_secs(5)).expect("connect");
    registration_card_and_refund(&mut link);
    assert_eq!(sim.refunds(), [SimRefund { amount_minor: 1250, trace_number: 1, receipt_number: 1 }]);
    assert_eq!(sim.commands(), [0x0600, 0x06C0, 0x0631]);
}

#[test]
fn registration_and_refund_over_a_serial_pty() {
    let sim = ZvtSimulator::start_serial().expect("simulator");
    let Endpoint::Serial(path) = sim.endpoint().clone() else { panic!("not a serial simulator") };
    let mut link = open_serial(&path, 9600).expect("open the pty as a serial port");
    registration_card_and_refund(&mut link);
    assert_eq!(sim.refunds().len(), 1);
}

#[test]
fn link_cut_after_refund_is_unknown_and_resolved_by_repeat_receipt() {
    let sim = ZvtSimulator::start_tcp().expect("simulator");
    let addr = tcp_addr(&sim);
    let mut link = connect_tcp(addr, Duration::from_secs(5)).expect("connect");
    assert!(matches!(run(&mut link, &registration()), Outcome::Completed(_)));
    sim.drop_after_next_refund();
    let outcome = run(&mut link, &refund(700));
    assert!(
        matches!(outcome, Outcome::Lost { why: Lost::LinkDropped, acknowledged: true, .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.money_moved(), None);

    // After the reconnect the agent registers again and asks for the last transaction instead
    // of sending 06 31 again.
    let mut link = connect_tcp(addr, Duration::from_secs(5)).expect("reconnect");
    assert!(matches!(run(&mut link, &registration()), Outcome::Completed(_)));
    let Outcome::Completed(last) = run(&mut link, &Request::RepeatReceipt { password: PASSWORD.into() })
    else {
        panic!("repeat receipt failed")
    };
    assert_eq!(
        (last.result_code, last.amount_minor, last.trace_number.as_deref()),
        (Some(0), Some(700), Some("000001"))
    );
    assert_eq!(last.receipt.first().map(String::as_str), Some("GUTSCHRIFT"));
    assert_eq!(sim.refunds().len(), 1, "the refund ran once at the terminal");
    assert_eq!(sim.commands(), [0x0600, 0x0631, 0x0600, 0x0620]);
}

fn payout(amount_minor: u64, trace_before: Option<&str>) -> PayoutRequest {
    PayoutRequest {
        password: PASSWORD.into(),
        amount_minor,
        currency: 978,
        service_byte: 0x00,
        trace_before: trace_before.map(str::to_owned),
        completion_timeout: DEFAULT_COMPLETION_TIMEOUT,
        lookup_attempts: 3,
    }
}

#[test]
fn pay_out_settles_a_cut_link_by_lookup_and_never_refunds_twice() {
    let sim = ZvtSimulator::start_tcp().expect("simulator");
    let addr = tcp_addr(&sim);
    let reconnect = || connect_tcp(addr, Duration::from_secs(5)).map_err(LinkError::Io);
    let mut link = reconnect().expect("connect");
    assert!(matches!(run(&mut link, &registration()), Outcome::Completed(_)));

    // Paid at the terminal, the result lost on the way back: the lookup finds it.
    sim.drop_after_next_refund();
    let paid = pay_out(&mut link, &payout(700, None), reconnect).expect("valid");
    let Payout::Paid { result, looked_up: true } = paid else { panic!("not paid by lookup: {paid:?}") };
    assert_eq!((result.amount_minor, result.trace_number.as_deref()), (Some(700), Some("000001")));
    assert_eq!(sim.refunds().len(), 1);

    // Cut before the terminal moved money: its last transaction is still trace 1.
    sim.drop_before_next_refund();
    let unpaid = pay_out(&mut link, &payout(300, Some("000001")), reconnect).expect("valid");
    assert!(matches!(unpaid, Payout::NotPaid { .. }), "{unpaid:?}");
    assert_eq!(sim.refunds().len(), 1);

    // An ordinary refund on the link the lookup left behind.
    let ok = pay_out(&mut link, &payout(300, Some("000001")), reconnect).expect("valid");
    assert!(matches!(ok, Payout::Paid { looked_up: false, .. }), "{ok:?}");
    assert_eq!(sim.refunds().len(), 2);
    let refunds: Vec<u16> = sim.commands().into_iter().filter(|c| *c == 0x0631).collect();
    assert_eq!(refunds.len(), 3, "06 31 went out once per payout, never again for a lookup");
}

/// The terminal's side of a raw pty, played by hand: what the ECR writes, byte for byte.
mod raw_pty {
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use nix::fcntl::OFlag;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

    pub struct Raw {
        pub master: OwnedFd,
        _slave: OwnedFd,
        pub path: PathBuf,
    }

    pub fn open() -> Raw {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(flags).expect("posix_openpt");
        nix::pty::grantpt(&master).expect("grantpt");
        nix::pty::unlockpt(&master).expect("unlockpt");
        let path = PathBuf::from(nix::pty::ptsname_r(&master).expect("ptsname"));
        let slave = nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty()).expect("slave");
        let mut termios = tcgetattr(&slave).expect("tcgetattr");
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios).expect("tcsetattr");
        Raw { master: OwnedFd::from(master), _slave: slave, path }
    }

    impl Raw {
        pub fn write(&self, bytes: &[u8]) {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = nix::unistd::write(self.master.as_fd(), rest).expect("write master");
                rest = &rest[n..];
            }
        }

        /// Reads until `len` bytes arrived, waiting at most 10 s in all.
        pub fn read_exact(&self, len: usize) -> Vec<u8> {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut out = Vec::new();
            while out.len() < len {
                assert!(Instant::now() < deadline, "only {out:02X?} arrived");
                let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                    continue;
                }
                let mut buf = vec![0u8; len - out.len()];
                if let Ok(n) = nix::unistd::read(self.master.as_fd(), &mut buf) {
                    out.extend_from_slice(&buf[..n]);
                }
            }
            out
        }
    }
}

#[test]
fn serial_link_repeats_a_naked_frame_and_naks_a_damaged_one() {
    use refund_agent::terminal::codec::zvt::{encode_frame, Apdu};

    let raw = raw_pty::open();
    let mut link = open_serial(&raw.path, 9600).expect("open the pty as a serial port");
    let apdu = Apdu::new(0x06, 0x1E, vec![0x10]);
    let frame = encode_frame(&apdu.encode().expect("short"));
    let sender = std::thread::spawn(move || {
        link.send(&apdu).expect("delivered after one repetition");
        let got = link.recv(std::time::Instant::now() + Duration::from_secs(10)).expect("link");
        (link, got)
    });
    // The DLE in the data is doubled on the wire; a NAK brings the same frame again.
    assert_eq!(raw.read_exact(frame.len()), frame);
    raw.write(&[0x15]);
    assert_eq!(raw.read_exact(frame.len()), frame);
    raw.write(&[0x06]);
    // A frame with a bad CRC gets a NAK and is not passed on; the intact repetition gets an ACK.
    let mut damaged = encode_frame(&[0x80, 0x00, 0x00]);
    let last = damaged.len() - 1;
    damaged[last] ^= 0xFF;
    raw.write(&damaged);
    assert_eq!(raw.read_exact(1), [0x15]);
    raw.write(&encode_frame(&[0x80, 0x00, 0x00]));
    assert_eq!(raw.read_exact(1), [0x06]);
    let (_link, got) = sender.join().expect("sender thread");
    assert_eq!(got, Some(Apdu::new(0x80, 0x00, Vec::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_keeps_an_idle_serial_link_alive_with_status_enquiries() {
    let sim = ZvtSimulator::start_serial().expect("simulator on a pty");
    let Endpoint::Serial(device) = sim.endpoint().clone() else { panic!("not a serial simulator") };
    let link = ZvtSettings {
        endpoint: ZvtEndpoint::Serial { device, baud: 9600 },
        password: PASSWORD.into(),
        currency: "EUR",
        currency_number: 978,
        service_byte: 0,
    };
    let settings = ZvtTerminalSettings { link, keepalive: Duration::from_millis(100) };
    let status = SharedStatus::default();
    let (trigger, shutdown) = Shutdown::new();
    let (owner, handle) = owner::spawn(settings, status.clone(), shutdown).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let enquiries = || sim.commands().iter().filter(|c| **c == 0x0501).count();
    while !(lock(&status).connected && enquiries() >= 2) {
        assert!(Instant::now() < deadline, "no registration and two status enquiries: {:?}", sim.commands());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.commands()[0], 0x0600, "registered first");
    let card = handle.read_card().await.expect("a card between keepalives");
    assert_eq!(card.masked(), "411111******1111");
    trigger.fire();
    owner.stop().await;
}
