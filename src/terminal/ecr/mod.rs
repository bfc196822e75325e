//! The agent as ZVT master (the ECR): one command to the payment terminal and everything the
//! terminal sends until the command is finished, as a pure state machine.
//!
//! An [`Exchange`] is fed the terminal's APDUs and the clock; it answers what the protocol
//! demands (every intermediate status, status information, print line, completion and abort is
//! acknowledged with `80 00 00`; a command the ECR does not know with `84 83 00`) and ends in an
//! [`Outcome`]. The sequence for every command the agent sends is the same:
//!
//! ```text
//! ECR → 06 xx command          PT → 80 00 00 (within ACK_TIMEOUT, or the exchange is lost)
//! PT  → 04 FF / 04 0F / 06 D1 / 06 D3 …   ECR → 80 00 00 each (each one restarts the timer)
//! PT  → 06 0F completion  or  06 1E abort  ECR → 80 00 00, done
//! ```
//!
//! A command the terminal refuses at once is answered `84 xx` instead of `80 00 00`. What the
//! outcome means for money is [`Outcome::money_moved`]: only a completion without an error result
//! code says yes, only a refusal or an abort says no, and a lost exchange says *unknown* — the
//! caller must then ask the terminal (Repeat Receipt / Status Enquiry), never send again.
//! The I/O that carries these APDUs is in [`link`]; a refund paid out by the terminal, with the
//! lookup that settles a lost outcome, is [`payout`].

pub mod link;
pub mod owner;
pub mod payout;

use std::time::{Duration, Instant};

use super::codec::zvt::bmp::{self, amount_field};
use super::codec::zvt::{decode, Apdu, Message};
use crate::sale::CardRef;

/// How long the terminal has to acknowledge a command with `80 00 00`.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the terminal may stay silent while it works on a command (the cardholder reads,
/// inserts, types a PIN); every message from the terminal starts this time again.
pub const DEFAULT_COMPLETION_TIMEOUT: Duration = Duration::from_secs(180);

/// The ECR's answer to a command it does not handle: "function not possible".
pub const NOT_POSSIBLE: [u8; 3] = [0x84, 0x83, 0x00];

/// The registration config byte the agent sends: the ECR prints payment (`02`) and administration
/// (`04`) receipts, so the terminal sends their text as print lines or text blocks, and the
/// terminal sends intermediate status information (`08`).
pub const CONFIG_BYTE: u8 = 0x0E;

/// A command the agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `06 00`: log on with the terminal's password, currency and service byte.
    Registration { password: String, currency: u16, service_byte: u8 },
    /// `06 C0`: wait up to `timeout_s` seconds for a card and report it in `04 0F`.
    ReadCard { timeout_s: u8 },
    /// `06 31`: pay `amount_minor` back to the presented card.
    Refund { password: String, amount_minor: u64, currency: u16 },
    /// `06 20`: the terminal sends the receipt (and status) of its last transaction again.
    RepeatReceipt { password: String },
    /// `05 01`: the terminal reports its state.
    StatusEnquiry { password: String },
    /// `06 B0`: ends the command the terminal is working on.
    Abort,
}

/// A request whose values do not fit their fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the terminal password must be 6 digits")]
    Password,
    #[error("the currency must be an ISO 4217 number of at most 4 digits")]
    Currency,
    #[error("the amount {0} does not fit 12 digits")]
    Amount(u64),
}

fn password(text: &str) -> Result<Vec<u8>, RequestError> {
    if text.len() != 6 {
        return Err(RequestError::Password);
    }
    bmp::bcd(text, 3).ok_or(RequestError::Password)
}

fn currency(code: u16) -> Result<Vec<u8>, RequestError> {
    bmp::bcd(&code.to_string(), 2).ok_or(RequestError::Currency)
}

impl Request {
    /// The command as an APDU.
    pub fn apdu(&self) -> Result<Apdu, RequestError> {
        let apdu = match self {
            Request::Registration { password: pw, currency: cc, service_byte } => {
                let mut data = password(pw)?;
                data.push(CONFIG_BYTE);
                data.extend(currency(*cc)?);
                data.extend_from_slice(&[0x03, *service_byte]);
                Apdu::new(0x06, 0x00, data)
            }
            Request::ReadCard { timeout_s } => Apdu::new(0x06, 0xC0, vec![*timeout_s]),
            Request::Refund { password: pw, amount_minor, currency: cc } => {
                let mut data = password(pw)?;
                data.extend(amount_field(*amount_minor).ok_or(RequestError::Amount(*amount_minor))?);
                data.push(0x49);
                data.extend(currency(*cc)?);
                Apdu::new(0x06, 0x31, data)
            }
            Request::RepeatReceipt { password: pw } => Apdu::new(0x06, 0x20, password(pw)?),
            Request::StatusEnquiry { password: pw } => Apdu::new(0x05, 0x01, password(pw)?),
            Request::Abort => Apdu::new(0x06, 0xB0, Vec::new()),
        };
        Ok(apdu)
    }
}

/// What the terminal reported about the transaction, collected from every message of the
/// exchange (status information, print lines, the completion). Card data is BIN + last 4 only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalResult {
    /// BMP `27` of the last status information (0 = success).
    pub result_code: Option<u8>,
    /// BMP `0B`.
    pub trace_number: Option<String>,
    /// BMP `87`.
    pub receipt_number: Option<String>,
    /// BMP `04`, in minor units.
    pub amount_minor: Option<u64>,
    /// BMP `29`.
    pub terminal_id: Option<String>,
    pub card: Option<CardRef>,
    /// The receipt text, one entry per printed line.
    pub receipt: Vec<String>,
    /// The last intermediate status code (`04 FF`), for the display.
    pub last_intermediate: Option<u8>,
}

impl TerminalResult {
    fn absorb(&mut self, msg: &Message) {
        self.result_code = msg.byte(0x27).or(self.result_code);
        self.trace_number = msg.digits(0x0B).map(str::to_owned).or(self.trace_number.take());
        self.receipt_number = msg.digits(0x87).map(str::to_owned).or(self.receipt_number.take());
        self.amount_minor = msg.amount().or(self.amount_minor);
        self.terminal_id = msg.digits(0x29).map(str::to_owned).or(self.terminal_id.take());
        self.card = msg.card().cloned().or(self.card.take());
    }
}

/// Why an exchange ended without a completion or an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The terminal did not acknowledge the command in time.
    NoAck,
    /// The terminal went silent for longer than the completion timeout.
    Silent,
    /// The connection or the serial link broke.
    LinkDropped,
    /// The agent gave up on a command that moves no money (it ran past its total bound, its
    /// asker left, the agent stops) and the terminal did not end it when asked to abort.
    Abandoned,
}

/// How an exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `06 0F`: the command ran; `result.result_code` says how.
    Completed(TerminalResult),
    /// `06 1E`: the command was ended without effect, with the terminal's result code.
    Aborted { code: Option<u8>, result: TerminalResult },
    /// `84 xx` instead of `80 00 00`: the terminal refused the command before doing anything.
    Refused { code: u8 },
    /// The exchange broke off; what the terminal did is unknown.
    Lost { why: Lost, acknowledged: bool, result: TerminalResult },
}

impl Outcome {
    /// Whether money moved: `Some(true)` for a completion with result code 0 (or none), `Some(false)`
    /// for an abort, a refusal or an error result code, `None` when the exchange was lost.
    pub fn money_moved(&self) -> Option<bool> {
        match self {
            Outcome::Completed(result) => Some(result.result_code.unwrap_or(0) == 0),
            Outcome::Aborted { .. } | Outcome::Refused { .. } => Some(false),
            Outcome::Lost { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitAck,
    Working,
    Finished,
}

/// One command's conversation with the terminal.
#[derive(Debug)]
pub struct Exchange {
    phase: Phase,
    deadline: Instant,
    completion_timeout: Duration,
    result: TerminalResult,
}

fn ack() -> Apdu {
    Apdu::new(0x80, 0x00, Vec::new())
}

impl Exchange {
    /// Starts an exchange: returns it and the command to send now.
    pub fn start(
        request: &Request,
        now: Instant,
        completion_timeout: Duration,
    ) -> Result<(Exchange, Apdu), RequestError> {
        let apdu = request.apdu()?;
        let exchange = Exchange {
            phase: Phase::AwaitAck,
            deadline: now + ACK_TIMEOUT,
            completion_timeout,
            result: TerminalResult::default(),
        };
        Ok((exchange, apdu))
    }

    /// When [`Self::on_deadline`] must be called if nothing arrives before.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the terminal acknowledged the command (the command certainly arrived).
    pub fn acknowledged(&self) -> bool {
        self.phase != Phase::AwaitAck
    }

    fn lost(&mut self, why: Lost) -> Option<Outcome> {
        let outcome = Outcome::Lost { why, acknowledged: self.acknowledged(), result: self.result.clone() };
        self.phase = Phase::Finished;
        Some(outcome)
    }

    /// One APDU from the terminal. Returns the answer to send (if any) and, once the exchange is
    /// over, its outcome; after the outcome, further input is ignored.
    pub fn on_apdu(&mut self, apdu: &Apdu, now: Instant) -> (Option<Apdu>, Option<Outcome>) {
        match self.phase {
            Phase::Finished => (None, None),
            Phase::AwaitAck => match (apdu.class, apdu.instr) {
                (0x80, 0x00) => {
                    self.phase = Phase::Working;
                    self.deadline = now + self.completion_timeout;
                    (None, None)
                }
                (0x84, code) => {
                    self.phase = Phase::Finished;
                    (None, Some(Outcome::Refused { code }))
                }
                // Some terminals skip the acknowledgement and answer at once; the answer proves
                // the command arrived, so it counts as one.
                _ => {
                    self.phase = Phase::Working;
                    self.on_apdu(apdu, now)
                }
            },
            Phase::Working => {
                self.deadline = now + self.completion_timeout;
                let msg = decode(apdu);
                match (apdu.class, apdu.instr) {
                    (0x04, 0xFF) => {
                        self.result.last_intermediate = msg.prefix_byte("status");
                        (Some(ack()), None)
                    }
                    (0x04, 0x0F) => {
                        self.result.absorb(&msg);
                        (Some(ack()), None)
                    }
                    (0x06, 0xD1 | 0xD3) => {
                        self.result.receipt.extend(msg.print_lines());
                        (Some(ack()), None)
                    }
                    (0x06, 0x0F) => {
                        self.result.absorb(&msg);
                        self.phase = Phase::Finished;
                        (Some(ack()), Some(Outcome::Completed(self.result.clone())))
                    }
                    (0x06, 0x1E) => {
                        let code = msg.prefix_byte("result_code");
                        self.phase = Phase::Finished;
                        (Some(ack()), Some(Outcome::Aborted { code, result: self.result.clone() }))
                    }
                    // A late or repeated acknowledgement needs no answer.
                    (0x80, 0x00) => (None, None),
                    _ => (Some(Apdu::new(NOT_POSSIBLE[0], NOT_POSSIBLE[1], Vec::new())), None),
                }
            }
        }
    }

    /// The clock moved without input: the outcome once the deadline has passed.
    pub fn on_deadline(&mut self, now: Instant) -> Option<Outcome> {
        match self.phase {
            Phase::Finished => None,
            _ if now < self.deadline => None,
            Phase::AwaitAck => self.lost(Lost::NoAck),
            Phase::Working => self.lost(Lost::Silent),
        }
    }

    /// The agent gives up on the exchange: it is lost.
    pub fn abandon(&mut self) -> Option<Outcome> {
        match self.phase {
            Phase::Finished => None,
            _ => self.lost(Lost::Abandoned),
        }
    }

    /// The link broke.
    pub fn on_link_lost(&mut self) -> Option<Outcome> {
        match self.phase {
            Phase::Finished => None,
            _ => self.lost(Lost::LinkDropped),
        }
    }
}

#[cfg(test)]
mod tests;
