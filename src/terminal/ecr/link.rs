//! The I/O under an [`Exchange`]: APDUs over TCP (`zvt_address`) or framed over a serial port.
//!
//! Blocking by design: a ZVT conversation is strictly one message at a time, the serial port is
//! a blocking device, and the caller runs a whole exchange on a blocking thread. Over serial,
//! every frame received is answered with ACK (or NAK when its CRC failed) before anything else,
//! and every frame sent waits for the peer's ACK, repeated on NAK or silence up to
//! [`MAX_TRANSMISSIONS`](super::super::codec::zvt::transport::MAX_TRANSMISSIONS). The same
//! [`Link`] serves both ends, so the terminal simulator in the sandbox speaks through it too.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{Exchange, Outcome, Request, RequestError};
use crate::terminal::codec::zvt::transport::{self, link_reply, LinkStep, Retransmit};
use crate::terminal::codec::zvt::{Apdu, ApduDecoder, FrameDecoder, Unit};

/// How long a serial frame waits for the peer's ACK byte before it is sent again.
pub const LINK_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one write to a TCP terminal may block before the link counts as broken.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream with a read timeout: a TCP connection, a serial port, a pty.
pub trait Wire: Send {
    /// Reads what is there within `timeout`: `Ok(None)` when nothing came, `Ok(Some(0))` when
    /// the peer closed the stream.
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()>;
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl Wire for TcpStream {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if timed_out(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }
}

impl Wire for Box<dyn serialport::SerialPort> {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        self.set_timeout(timeout.max(Duration::from_millis(1)))?;
        match self.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if timed_out(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }
}

/// How APDUs travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Back to back, as over TCP.
    Apdu,
    /// In `DLE STX … DLE ETX CRC` frames with link ACK/NAK, as over RS-232.
    Serial,
}

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("terminal link I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("the terminal closed the connection")]
    Closed,
    #[error("the terminal did not acknowledge a frame after {0} transmissions")]
    NoLinkAck(u8),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("APDU too long for a length field: {0}")]
    Apdu(#[from] crate::terminal::codec::zvt::ApduError),
}

/// One end of a ZVT connection.
pub struct Link<W> {
    wire: W,
    mode: Mode,
    frames: FrameDecoder,
    apdus: ApduDecoder,
    /// APDUs that arrived while a send waited for its link ACK.
    pending: VecDeque<Apdu>,
    /// Link bytes (ACK/NAK) that arrived while no send was waiting.
    link_bytes: VecDeque<Unit>,
}

impl<W> std::fmt::Debug for Link<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("mode", &self.mode)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<W: Wire> Link<W> {
    pub fn new(wire: W, mode: Mode) -> Self {
        Link {
            wire,
            mode,
            frames: FrameDecoder::new(),
            apdus: ApduDecoder::new(),
            pending: VecDeque::new(),
            link_bytes: VecDeque::new(),
        }
    }

    /// Gives the wire back, e.g. to close it.
    pub fn into_wire(self) -> W {
        self.wire
    }

    /// Reads once (up to `timeout`) and decodes; answers serial frames at the link level.
    fn pump(&mut self, timeout: Duration) -> Result<(), LinkError> {
        let mut buf = [0u8; 1024];
        let n = match self.wire.read_within(&mut buf, timeout)? {
            None => return Ok(()),
            Some(0) => return Err(LinkError::Closed),
            Some(n) => n,
        };
        match self.mode {
            Mode::Apdu => {
                self.apdus.push(&buf[..n]);
                while let Some(apdu) = self.apdus.next_apdu() {
                    // An APDU too long to keep is dropped; the peer repeats or times out.
                    if let Ok(apdu) = apdu {
                        self.pending.push_back(apdu);
                    }
                }
            }
            Mode::Serial => {
                self.frames.push(&buf[..n]);
                while let Some(unit) = self.frames.next_unit() {
                    if let Some(reply) = link_reply(&unit) {
                        self.wire.write_bytes(&[reply])?;
                    }
                    match unit {
                        Unit::Frame(bytes) => {
                            if let Ok(apdu) = Apdu::parse(&bytes) {
                                self.pending.push_back(apdu);
                            }
                        }
                        Unit::Ack | Unit::Nak => self.link_bytes.push_back(unit),
                        Unit::Dropped(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends one APDU; over serial, returns once the peer's ACK byte arrived.
    pub fn send(&mut self, apdu: &Apdu) -> Result<(), LinkError> {
        let bytes = apdu.encode()?;
        if self.mode == Mode::Apdu {
            self.wire.write_bytes(&bytes)?;
            return Ok(());
        }
        self.link_bytes.clear();
        let (mut tracker, frame) = Retransmit::start(&bytes);
        self.wire.write_bytes(&frame)?;
        let mut deadline = Instant::now() + LINK_ACK_TIMEOUT;
        loop {
            let step = match self.link_bytes.pop_front() {
                Some(Unit::Ack) => tracker.on_ack(),
                Some(_) => tracker.on_nak_or_timeout(),
                None if Instant::now() >= deadline => tracker.on_nak_or_timeout(),
                None => {
                    self.pump(deadline.saturating_duration_since(Instant::now()))?;
                    continue;
                }
            };
            match step {
                LinkStep::Delivered => return Ok(()),
                LinkStep::Resend(frame) => {
                    self.wire.write_bytes(&frame)?;
                    deadline = Instant::now() + LINK_ACK_TIMEOUT;
                }
                LinkStep::GiveUp => return Err(LinkError::NoLinkAck(transport::MAX_TRANSMISSIONS)),
            }
        }
    }

    /// The next APDU from the peer, or `None` once `deadline` passed.
    pub fn recv(&mut self, deadline: Instant) -> Result<Option<Apdu>, LinkError> {
        loop {
            if let Some(apdu) = self.pending.pop_front() {
                return Ok(Some(apdu));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.pump(deadline - now)?;
        }
    }

    /// Runs one command to its end. A broken link or a silent terminal is an outcome
    /// ([`Outcome::Lost`]), not an error: the caller must learn that the result is unknown.
    pub fn run(&mut self, request: &Request, completion_timeout: Duration) -> Result<Outcome, RequestError> {
        self.run_abortable(request, completion_timeout, || false)
    }

    /// Runs one command like [`Self::run`], asking `give_up` at least every [`GIVE_UP_POLL`].
    /// Once it says yes, the command is aborted on the terminal (`06 B0`) and the terminal has
    /// [`ACK_TIMEOUT`](super::ACK_TIMEOUT) to end it (`06 1E`, or its completion if it was
    /// faster); a terminal that goes on talking instead is abandoned ([`super::Lost::Abandoned`]),
    /// and the caller closes the link. Only commands that move no money are ever given up on.
    pub fn run_abortable(
        &mut self,
        request: &Request,
        completion_timeout: Duration,
        mut give_up: impl FnMut() -> bool,
    ) -> Result<Outcome, RequestError> {
        let (mut exchange, command) = Exchange::start(request, Instant::now(), completion_timeout)?;
        if self.send(&command).is_err() {
            return Ok(exchange.on_link_lost().unwrap_or_else(unreachable_outcome));
        }
        let mut abandon_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if abandon_at.is_none() && give_up() {
                abandon_at = Some(now + super::ACK_TIMEOUT);
                if self.send(&Request::Abort.apdu()?).is_err() {
                    return Ok(exchange.on_link_lost().unwrap_or_else(unreachable_outcome));
                }
            }
            if abandon_at.is_some_and(|at| now >= at) {
                return Ok(exchange.abandon().unwrap_or_else(unreachable_outcome));
            }
            let slice = abandon_at.unwrap_or(now + GIVE_UP_POLL).min(now + GIVE_UP_POLL);
            let outcome = match self.recv(exchange.deadline().min(slice)) {
                Ok(Some(apdu)) => {
                    let (reply, outcome) = exchange.on_apdu(&apdu, Instant::now());
                    if let Some(reply) = reply {
                        // The answer to a completion may be lost without changing the outcome;
                        // any other lost answer breaks the exchange.
                        if self.send(&reply).is_err() && outcome.is_none() {
                            return Ok(exchange.on_link_lost().unwrap_or_else(unreachable_outcome));
                        }
                    }
                    outcome
                }
                Ok(None) => exchange.on_deadline(Instant::now()),
                Err(_) => exchange.on_link_lost(),
            };
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
        }
    }

    /// Answers one APDU the terminal sent while no command runs, as the protocol asks of the
    /// ECR: what a terminal may send on its own (status, print lines, a late completion or
    /// abort) is acknowledged and dropped, an acknowledgement needs no answer, and anything
    /// else is "function not possible". Nothing of its content is kept or logged.
    pub fn answer_unsolicited(&mut self, apdu: &Apdu) -> Result<(), LinkError> {
        let reply = match (apdu.class, apdu.instr) {
            (0x80, 0x00) | (0x84, _) => return Ok(()),
            (0x04, 0xFF | 0x0F) | (0x06, 0xD1 | 0xD3 | 0x0F | 0x1E) => Apdu::new(0x80, 0x00, Vec::new()),
            _ => Apdu::new(super::NOT_POSSIBLE[0], super::NOT_POSSIBLE[1], Vec::new()),
        };
        self.send(&reply)
    }
}

/// How often a running command asks whether to give up (its asker left, the agent stops).
pub const GIVE_UP_POLL: Duration = Duration::from_millis(50);

/// An exchange that is still running always yields an outcome when its link is lost; this is the
/// value for the branch the type system cannot rule out.
fn unreachable_outcome() -> Outcome {
    Outcome::Lost {
        why: super::Lost::LinkDropped,
        acknowledged: false,
        result: super::TerminalResult::default(),
    }
}

/// Connects to a terminal's ZVT TCP port (`zvt_address`, usually port 20007).
pub fn connect_tcp(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<Link<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    // Each APDU is one small write that the terminal waits for; batching would only delay it.
    stream.set_nodelay(true)?;
    // A terminal that stops reading (or floods the agent without reading its answers) must not
    // block the link's owner in a write forever.
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(Link::new(stream, Mode::Apdu))
}

/// Opens a terminal's serial port: 8 data bits, no parity, 2 stop bits, the RS-232 settings ZVT
/// terminals use, at the given baud rate (9600 unless the terminal was set up otherwise).
pub fn open_serial(
    path: &std::path::Path,
    baud: u32,
) -> Result<Link<Box<dyn serialport::SerialPort>>, serialport::Error> {
    let port = serialport::new(path.to_string_lossy(), baud)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::Two)
        .flow_control(serialport::FlowControl::None)
        .open()?;
    Ok(Link::new(port, Mode::Serial))
}
