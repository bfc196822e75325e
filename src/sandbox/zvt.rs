//! A ZVT payment terminal for tests and the demo, over TCP (APDUs) or a pseudo-terminal (serial
//! frames with link ACK/NAK), speaking through the agent's own [`Link`] as the terminal side.
//!
//! It answers registration, read card (a test card, reported with its full PAN and track 2 the
//! way real terminals do, so the agent's reduction is exercised), refund, repeat receipt, status
//! enquiry and abort, each with the messages a real terminal sends (intermediate status, status
//! information, print lines, completion) and waits for the ECR's `80 00 00` after each. It keeps
//! the refunds it made, so a test can count them. [`ZvtSimulator::drop_after_next_refund`] makes
//! it move the money for the next refund and then cut the connection before the ECR hears the
//! result: the lost outcome the agent must resolve with Repeat Receipt, never by refunding again;
//! [`ZvtSimulator::drop_before_next_refund`] cuts it before the money moves;
//! [`ZvtSimulator::stall_after_next_refund`] moves it and then falls silent until the ECR goes
//! (an agent killed mid-payout); [`ZvtSimulator::go_away_after_next_cut`] and
//! [`ZvtSimulator::come_back`] make the TCP terminal unreachable and back (connections are
//! accepted and closed at once, as a terminal rebooting behind its switch). It serves one ECR
//! connection at a time, as real terminals do; [`ZvtSimulator::cut_link`] ends the current one.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use crate::lock::lock;
use crate::terminal::codec::zvt::bmp::{self, amount_field};
use crate::terminal::codec::zvt::Apdu;
use crate::terminal::ecr::link::{Link, Mode, Wire};

/// The simulator's terminal id (BMP `29`).
pub const TERMINAL_ID: &str = "52001233";
/// The test card: a Luhn-valid test PAN, as real terminals send it in Read Card's answer.
pub const TEST_PAN_BCD: [u8; 8] = [0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11];
/// How often the serving threads look at the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How long the simulator waits for the ECR's `80 00 00` before it gives the exchange up.
const ECR_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A refund the simulated terminal carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRefund {
    pub amount_minor: u64,
    pub trace_number: u32,
    pub receipt_number: u16,
}

#[derive(Debug, Default)]
struct State {
    trace: u32,
    receipts: u16,
    refunds: Vec<SimRefund>,
    drop_next_refund: bool,
    drop_next_refund_unpaid: bool,
    /// Cut the connection at the next idle moment (a cable pulled, a terminal restarted).
    cut_now: bool,
    /// End the next Read Card without a card, as a terminal does when nobody presents one.
    no_card_next: bool,
    stall_next_refund: bool,
    away_after_cut: bool,
    away: bool,
    commands: Vec<u16>,
}

/// What to send for one command, and whether to cut the link after the first `cut_after` messages.
struct Script {
    messages: Vec<Apdu>,
    cut_after: Option<usize>,
    /// At the cut, fall silent and keep the line until the ECR closes it, instead of closing it.
    stall: bool,
}

fn ack() -> Apdu {
    Apdu::new(0x80, 0x00, Vec::new())
}

fn bcd(digits: &str, len: usize) -> Vec<u8> {
    bmp::bcd(digits, len).unwrap_or_else(|| vec![0; len])
}

/// The status information and receipt lines of one refund.
fn refund_messages(refund: &SimRefund) -> Vec<Apdu> {
    let mut status = vec![0x27, 0x00];
    status.extend(amount_field(refund.amount_minor).unwrap_or_default());
    status.push(0x0B);
    status.extend(bcd(&refund.trace_number.to_string(), 3));
    status.push(0x29);
    status.extend(bcd(TERMINAL_ID, 4));
    status.extend_from_slice(&[0x49, 0x09, 0x78, 0x87]);
    status.extend(bcd(&refund.receipt_number.to_string(), 2));
    // A real terminal sends the PAN masked in a refund's status: E nibbles, the last 4 in clear.
    status.extend_from_slice(&[0x22, 0xF0, 0xF8, 0x41, 0x11, 0x11, 0xEE, 0xEE, 0xEE, 0x11, 0x11]);
    let euros = format!("{}.{:02}", refund.amount_minor / 100, refund.amount_minor % 100);
    let lines =
        ["GUTSCHRIFT".to_owned(), format!("BETRAG EUR {euros}"), format!("TRACE {:06}", refund.trace_number)];
    let mut messages = vec![Apdu::new(0x04, 0x0F, status)];
    messages.extend(lines.iter().map(|line| {
        let mut data = vec![0x00];
        data.extend_from_slice(line.as_bytes());
        Apdu::new(0x06, 0xD1, data)
    }));
    messages
}

fn completion() -> Apdu {
    let mut data = vec![0x19, 0x00, 0x29];
    data.extend(bcd(TERMINAL_ID, 4));
    Apdu::new(0x06, 0x0F, data)
}

impl State {
    fn handle(&mut self, apdu: &Apdu) -> Script {
        self.commands.push(apdu.command());
        let done = |mut messages: Vec<Apdu>| {
            messages.insert(0, ack());
            messages.push(completion());
            Script { messages, cut_after: None, stall: false }
        };
        match (apdu.class, apdu.instr) {
            (0x06, 0x00) | (0x05, 0x01) => done(Vec::new()),
            (0x06, 0xC0) if std::mem::take(&mut self.no_card_next) => Script {
                messages: vec![ack(), Apdu::new(0x06, 0x1E, vec![0x6C])],
                cut_after: None,
                stall: false,
            },
            (0x06, 0xC0) => {
                let mut status = vec![0x27, 0x00, 0x22, 0xF0, 0xF8];
                status.extend_from_slice(&TEST_PAN_BCD);
                status.extend_from_slice(&[0x23, 0xF1, 0xF2]);
                status.extend_from_slice(&TEST_PAN_BCD);
                status.extend_from_slice(&[0xD2, 0x51, 0x22, 0x01]);
                status.extend_from_slice(&[0x0E, 0x25, 0x12]);
                done(vec![Apdu::new(0x04, 0xFF, vec![0x0A]), Apdu::new(0x04, 0x0F, status)])
            }
            (0x06, 0x31) if std::mem::take(&mut self.drop_next_refund_unpaid) => {
                // Acknowledged, then the line dies before the terminal moved any money.
                self.away |= std::mem::take(&mut self.away_after_cut);
                Script { messages: vec![ack()], cut_after: Some(1), stall: false }
            }
            (0x06, 0x31) => {
                let msg = crate::terminal::codec::zvt::decode(apdu);
                let Some(amount_minor) = msg.amount() else {
                    return Script {
                        messages: vec![Apdu::new(0x84, 0x83, Vec::new())],
                        cut_after: None,
                        stall: false,
                    };
                };
                self.trace += 1;
                self.receipts += 1;
                let refund =
                    SimRefund { amount_minor, trace_number: self.trace, receipt_number: self.receipts };
                // The money moves here, before the ECR hears anything about it.
                self.refunds.push(refund.clone());
                let mut messages = vec![Apdu::new(0x04, 0xFF, vec![0x0A])];
                messages.extend(refund_messages(&refund));
                let cut = std::mem::take(&mut self.drop_next_refund);
                let stall = std::mem::take(&mut self.stall_next_refund);
                let mut script = done(messages);
                if cut || stall {
                    // The acknowledgement and the "insert card" status go out, then the line dies.
                    script.cut_after = Some(2);
                    script.stall = stall;
                    self.away |= cut && std::mem::take(&mut self.away_after_cut);
                }
                script
            }
            (0x06, 0x20) => match self.refunds.last() {
                Some(last) => done(refund_messages(last)),
                None => Script {
                    messages: vec![ack(), Apdu::new(0x06, 0x1E, vec![0x6C])],
                    cut_after: None,
                    stall: false,
                },
            },
            (0x06, 0xB0) => Script { messages: vec![ack()], cut_after: None, stall: false },
            _ => Script { messages: vec![Apdu::new(0x84, 0x83, Vec::new())], cut_after: None, stall: false },
        }
    }
}

/// Serves one connection until the peer goes, a script cuts it, or `stop` is set.
fn serve<W: Wire>(link: &mut Link<W>, state: &Mutex<State>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if std::mem::take(&mut lock(state).cut_now) {
            return;
        }
        let apdu = match link.recv(Instant::now() + IDLE_POLL) {
            Ok(Some(apdu)) => apdu,
            Ok(None) => continue,
            Err(_) => return,
        };
        let script = lock(state).handle(&apdu);
        for (sent, message) in script.messages.iter().enumerate() {
            if script.cut_after == Some(sent) {
                while script.stall
                    && !stop.load(Ordering::Relaxed)
                    && link.recv(Instant::now() + IDLE_POLL).is_ok()
                {}
                return;
            }
            if link.send(message).is_err() {
                return;
            }
            // The acknowledgement and a refusal need no answer; every other message does.
            if sent > 0
                && message.class != 0x84
                && !matches!(link.recv(Instant::now() + ECR_ANSWER_TIMEOUT), Ok(Some(_)))
            {
                return;
            }
        }
        // A cut after the last message (as after a bare acknowledgement) ends the connection too.
        if script.cut_after == Some(script.messages.len()) {
            return;
        }
    }
}

/// A running simulated terminal.
#[derive(Debug)]
pub struct ZvtSimulator {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    endpoint: Endpoint,
}

/// Where the ECR reaches the simulator.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    /// The pty slave to open as the serial port.
    Serial(PathBuf),
}

/// The simulator's end of a pty: the master, read with poll.
struct PtyMaster {
    master: OwnedFd,
    /// Held so the master never sees a hang-up while the ECR reopens the slave.
    _slave: OwnedFd,
}

impl Wire for PtyMaster {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<Option<usize>> {
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX).max(1);
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(millis)).map_err(std::io::Error::from)? == 0 {
            return Ok(None);
        }
        match nix::unistd::read(self.master.as_fd(), buf) {
            Ok(0) | Err(nix::errno::Errno::EIO | nix::errno::Errno::EAGAIN) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(e.into()),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = nix::unistd::write(self.master.as_fd(), bytes).map_err(std::io::Error::from)?;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl ZvtSimulator {
    /// A terminal listening on a loopback port (ZVT over TCP, as with `zvt_address`).
    pub fn start_tcp() -> std::io::Result<ZvtSimulator> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (state, stop) = (Arc::<Mutex<State>>::default(), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new().name("zvt-sim-tcp".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        // Away: the connection is closed before a word is said.
                        Ok((stream, _)) if lock(&state).away => drop(stream),
                        Ok((stream, _)) => serve_stream(stream, &state, &stop),
                        // Accepting without blocking lets the thread see the stop flag.
                        Err(_) => std::thread::park_timeout(IDLE_POLL),
                    }
                }
            })?
        };
        Ok(ZvtSimulator { state, stop, thread: Some(thread), endpoint: Endpoint::Tcp(addr) })
    }

    /// A terminal on a pseudo-terminal (ZVT over RS-232): open [`Endpoint::Serial`]'s path.
    pub fn start_serial() -> std::io::Result<ZvtSimulator> {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(flags)?;
        nix::pty::grantpt(&master)?;
        nix::pty::unlockpt(&master)?;
        let path = PathBuf::from(nix::pty::ptsname_r(&master)?);
        let slave = nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty())?;
        // Raw from the start, so nothing either side writes is echoed or translated.
        let mut termios = tcgetattr(&slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        let wire = PtyMaster { master: OwnedFd::from(master), _slave: slave };
        let (state, stop) = (Arc::<Mutex<State>>::default(), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new().name("zvt-sim-pty".into()).spawn(move || {
                let mut link = Link::new(wire, Mode::Serial);
                while !stop.load(Ordering::Relaxed) {
                    serve(&mut link, &state, &stop);
                }
            })?
        };
        Ok(ZvtSimulator { state, stop, thread: Some(thread), endpoint: Endpoint::Serial(path) })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The next refund moves the money, then the connection is cut before its result is sent.
    pub fn drop_after_next_refund(&self) {
        lock(&self.state).drop_next_refund = true;
    }

    /// The next refund is acknowledged, then the connection is cut before any money moves.
    pub fn drop_before_next_refund(&self) {
        lock(&self.state).drop_next_refund_unpaid = true;
    }

    /// Cuts the connection the ECR holds now, between commands (over TCP the ECR sees it
    /// closed; a pty has no connection to cut, so there it only restarts the serving loop).
    pub fn cut_link(&self) {
        lock(&self.state).cut_now = true;
    }

    /// The next Read Card ends with an abort (`06 1E`, result code `6C`) and no card.
    pub fn no_card_next_read(&self) {
        lock(&self.state).no_card_next = true;
    }

    /// The next refund moves the money, then the terminal falls silent (it never sends the
    /// result) and keeps the line until the ECR closes it.
    pub fn stall_after_next_refund(&self) {
        lock(&self.state).stall_next_refund = true;
    }

    /// When the next refund's line is cut (`drop_after_next_refund`, `drop_before_next_refund`),
    /// the TCP terminal goes away with it: every connection is closed at once until
    /// [`ZvtSimulator::come_back`].
    pub fn go_away_after_next_cut(&self) {
        lock(&self.state).away_after_cut = true;
    }

    /// The terminal answers connections again.
    pub fn come_back(&self) {
        lock(&self.state).away = false;
    }

    /// Every refund the terminal carried out.
    pub fn refunds(&self) -> Vec<SimRefund> {
        lock(&self.state).refunds.clone()
    }

    /// The control fields of every command received, in order (`0x0600` for a registration).
    pub fn commands(&self) -> Vec<u16> {
        lock(&self.state).commands.clone()
    }
}

fn serve_stream(stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let mut link = Link::new(stream, Mode::Apdu);
    serve(&mut link, state, stop);
    // Dropping the stream closes the connection, which is how a cut link looks to the ECR.
    let _ = link.into_wire().shutdown(std::net::Shutdown::Both);
}

impl Drop for ZvtSimulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
