//! A payment terminal at the till as a destination (`kind = "zvt"`): the terminal moves the money
//! back to the presented card with Refund (`06 31`). It speaks ZVT, not HTTP, over TCP or a serial
//! port, through the blocking link in `terminal::ecr`; one attempt runs on a blocking thread.
//!
//! One attempt: connect, register (`06 00`), ask for the terminal's last transaction (Repeat
//! Receipt `06 20`) to learn the trace number before this refund, settle with that answer an
//! earlier payout left `unknown` (`settle.rs`), store the answer as a durable note on the
//! delivery (`lookup.rs`; committed before anything more is sent, and a failed write sends
//! nothing), then `terminal::ecr::payout` sends `06 31` once. Nothing before `06 31` moves
//! money, so a failure there is safe to retry. When the refund's outcome is lost, the payout
//! reconnects and looks it up within the same attempt; whatever the lookup cannot settle is
//! `Ambiguous`, and since the terminal does not deduplicate, the worker records it `unknown`:
//! `06 31` is never sent again for it. The note on it lets a later lookup settle it
//! (`sync::lookup`, and the next attempt at the terminal).
//!
//! One conversation with the terminal at a time: attempts and lookups take [`Zvt::exclusive`],
//! so no lookup reads the terminal's last transaction while another payout is under way.
//!
//! A paid refund's terminal record (trace number, receipt number, result code, amount, card BIN
//! and last 4, terminal id, receipt text) is stored as a JSON object in the delivery's sealed
//! `remote_id`. Card data there is what the codec already reduced to BIN + last 4.

mod config;
pub mod lookup;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

use crate::config::ConfigError;
use crate::destinations::clock::ClockOffset;
use crate::destinations::{Attempt, Capability};
use crate::queue::{Claim, QueueHandle};
use crate::terminal::ecr::link::{connect_tcp, open_serial, Link, LinkError, Wire};
use crate::terminal::ecr::payout::{pay_out, Payout, PayoutRequest};
use crate::terminal::ecr::{Outcome, Request, TerminalResult, DEFAULT_COMPLETION_TIMEOUT};
pub use config::{is_password, numeric_currency, ZvtConfig, ZvtEndpoint, ZvtSettings};
use lookup::{Before, Note};
pub use settle::settle_unknown;

/// The terminal moves money and knows nothing of our refund id.
pub const CAPABILITY: Capability = Capability { dedup: false, moves_money: true };

/// How long connecting to the terminal's TCP port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a lost outcome is looked up over a fresh connection before it stays unknown.
const LOOKUP_ATTEMPTS: u32 = 3;
/// How long a later lookup waits for each answer: Repeat Receipt runs no transaction, so a
/// terminal that takes longer is busy and is asked again later.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The ZVT terminal connector.
#[derive(Debug)]
pub struct Zvt {
    settings: ZvtSettings,
    /// A terminal sends no `Date`; the offset stays unmeasured, as status reports it.
    clock: ClockOffset,
    /// Held for every conversation with the terminal (a payout, a lookup): a terminal serves one
    /// ECR at a time, and a lookup must not read while another payout runs.
    conversation: Arc<tokio::sync::Mutex<()>>,
}

/// Proof that the caller holds the one conversation with the terminal ([`Zvt::exclusive`]).
#[derive(Debug)]
pub struct Exclusive<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

/// The terminal's record of a paid refund, as stored sealed in the delivery's `remote_id`.
#[derive(Debug, Serialize)]
struct Record<'a> {
    trace: Option<&'a str>,
    receipt_number: Option<&'a str>,
    result_code: Option<u8>,
    amount_minor: Option<u64>,
    card_bin: Option<&'a str>,
    card_last4: Option<&'a str>,
    terminal_id: Option<&'a str>,
    /// True when the result came from the lookup after the refund's own answer was lost.
    looked_up: bool,
    receipt: &'a [String],
}

/// The JSON kept as `remote_id` for a refund the terminal paid.
pub(crate) fn record(result: &TerminalResult, looked_up: bool) -> String {
    let card = result.card.as_ref();
    let record = Record {
        trace: result.trace_number.as_deref(),
        receipt_number: result.receipt_number.as_deref(),
        result_code: result.result_code,
        amount_minor: result.amount_minor,
        card_bin: card.and_then(|c| c.bin.as_deref()),
        card_last4: card.map(|c| c.last4.as_str()),
        terminal_id: result.terminal_id.as_deref(),
        looked_up,
        receipt: &result.receipt,
    };
    serde_json::to_string(&record).unwrap_or_else(|_| format!("{{\"trace\":{:?}}}", result.trace_number))
}

/// What a finished payout means for the delivery. Pure.
pub fn classify(payout: Payout) -> Attempt {
    match payout {
        Payout::Paid { result, looked_up } => {
            Attempt::Delivered { remote_id: Some(record(&result, looked_up)) }
        }
        Payout::NotPaid { reason } => {
            Attempt::Declined(format!("the terminal did not pay the refund: {reason}"))
        }
        Payout::Unknown { reason } => {
            Attempt::Ambiguous(format!("the terminal's outcome is unknown: {reason}"))
        }
    }
}

impl Zvt {
    pub fn new(settings: &ZvtSettings) -> Result<Zvt, ConfigError> {
        Ok(Zvt { settings: settings.clone(), clock: ClockOffset::new(), conversation: Arc::default() })
    }

    pub fn clock(&self) -> &ClockOffset {
        &self.clock
    }

    /// Waits until no other conversation with the terminal runs.
    pub async fn exclusive(&self) -> Exclusive<'_> {
        Exclusive { _guard: self.conversation.lock().await }
    }

    /// The terminal's last transaction, read with Repeat Receipt over a fresh connection, on a
    /// blocking thread; `Err` when the terminal could not be reached or asked (nothing read).
    /// Sends nothing that moves money.
    pub async fn read_last(&self, _held: &Exclusive<'_>) -> Result<Outcome, String> {
        let settings = self.settings.clone();
        let job = tokio::task::spawn_blocking(move || match &settings.endpoint {
            ZvtEndpoint::Tcp(addr) => {
                let addr = *addr;
                read_last_on(&settings, || connect_tcp(addr, CONNECT_TIMEOUT).map_err(LinkError::Io))
            }
            ZvtEndpoint::Serial { device, baud } => {
                let (device, baud) = (device.clone(), *baud);
                read_last_on(&settings, || open_serial(&device, baud).map_err(|e| LinkError::Io(e.into())))
            }
        });
        job.await.map_err(|e| format!("the lookup crashed: {e}"))?
    }

    /// Pays the claimed refund out at the terminal, on a blocking thread. The trace number read
    /// before `06 31` is noted on the delivery through `queue` (and committed) before it leaves.
    pub async fn attempt(&self, claim: &Claim, queue: &QueueHandle) -> Attempt {
        let refund = &claim.refund;
        if refund.currency.code() != self.settings.currency {
            return Attempt::Failed(format!(
                "the terminal pays {} refunds, this one is in {}",
                self.settings.currency,
                refund.currency.code()
            ));
        }
        let Some(amount_minor) = amount_minor(refund) else {
            return Attempt::Failed(format!("the amount {} cannot be paid at a terminal", refund.amount));
        };
        let _held = self.exclusive().await;
        let settings = self.settings.clone();
        let runtime = tokio::runtime::Handle::current();
        let (queue, destination) = (queue.clone(), claim.destination.clone());
        let (id, position) = (refund.id, claim.position);
        let job = tokio::task::spawn_blocking(move || {
            // Runs on this blocking thread between the trace read and `06 31`: first an earlier
            // unknown payout is settled by the same answer (it is the terminal's last
            // transaction now, and may not be once `06 31` leaves), then the note is committed.
            let before_send = |last: &Outcome| -> Result<(), String> {
                runtime.block_on(async {
                    if let Outcome::Completed(_) = last {
                        if let Err(e) = settle_unknown(&queue, &destination, last).await {
                            tracing::warn!(destination = %destination, error = %e, "cannot settle an unknown payout by this attempt's lookup");
                        }
                    }
                    let before = match last {
                        Outcome::Completed(result) => Before::from_result(result),
                        _ => None,
                    };
                    let note = Note::new(before).to_json();
                    queue
                        .note_before_send(id, position, note, Box::new(lookup::supersede))
                        .await
                        .map_err(|e| e.to_string())
                })
            };
            match &settings.endpoint {
                ZvtEndpoint::Tcp(addr) => {
                    let addr = *addr;
                    attempt_on(&settings, amount_minor, before_send, || {
                        connect_tcp(addr, CONNECT_TIMEOUT).map_err(LinkError::Io)
                    })
                }
                ZvtEndpoint::Serial { device, baud } => {
                    let (device, baud) = (device.clone(), *baud);
                    attempt_on(&settings, amount_minor, before_send, || {
                        open_serial(&device, baud).map_err(|e| LinkError::Io(e.into()))
                    })
                }
            }
        });
        match job.await {
            Ok(attempt) => attempt,
            // The thread died somewhere inside; whether `06 31` had left cannot be known.
            Err(e) => Attempt::Ambiguous(format!("the terminal exchange crashed: {e}")),
        }
    }
}

/// A refund's amount in the currency's minor units, as the terminal takes it; `None` for an
/// amount it cannot pay (zero, negative, too large).
pub fn amount_minor(refund: &crate::refund::ValidRefund) -> Option<u64> {
    let scale = rust_decimal::Decimal::from(10u64.pow(refund.currency.minor_units()));
    (refund.amount * scale).to_u64().filter(|m| *m > 0)
}

/// The registration every conversation starts with.
fn registration(settings: &ZvtSettings) -> Request {
    Request::Registration {
        password: settings.password.clone(),
        currency: settings.currency_number,
        service_byte: settings.service_byte,
    }
}

/// Connects, registers and reads the terminal's last transaction.
fn read_last_on<W: Wire>(
    settings: &ZvtSettings,
    connect: impl FnOnce() -> Result<Link<W>, LinkError>,
) -> Result<Outcome, String> {
    let timeout = LOOKUP_TIMEOUT;
    let mut link = connect().map_err(|e| format!("cannot reach the terminal: {e}"))?;
    match link.run(&registration(settings), timeout) {
        Ok(Outcome::Completed(_)) => {}
        Ok(other) => return Err(format!("the terminal refused registration: {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    match link.run(&Request::RepeatReceipt { password: settings.password.clone() }, timeout) {
        Ok(Outcome::Lost { .. }) => Err("the lookup's answer was lost".into()),
        Ok(outcome) => Ok(outcome),
        Err(e) => Err(e.to_string()),
    }
}

/// One attempt over links from `connect`. Every return before `pay_out` is a point where no
/// refund command has left, so it is safe to try again; `before_send` must commit the note
/// before `06 31` may leave.
fn attempt_on<W: Wire>(
    settings: &ZvtSettings,
    amount_minor: u64,
    before_send: impl FnOnce(&Outcome) -> Result<(), String>,
    mut connect: impl FnMut() -> Result<Link<W>, LinkError>,
) -> Attempt {
    let timeout = DEFAULT_COMPLETION_TIMEOUT;
    let mut link = match connect() {
        Ok(link) => link,
        Err(e) => return Attempt::Unreachable(format!("cannot reach the terminal: {e}")),
    };
    match link.run(&registration(settings), timeout) {
        Ok(Outcome::Completed(_)) => {}
        Ok(other) => {
            return Attempt::Transient {
                retry_after: None,
                error: format!("the terminal refused registration: {other:?}"),
            }
        }
        Err(e) => return Attempt::Failed(e.to_string()),
    }
    let last = match link.run(&Request::RepeatReceipt { password: settings.password.clone() }, timeout) {
        Ok(lost @ Outcome::Lost { .. }) => {
            return Attempt::Transient {
                retry_after: None,
                error: format!("the terminal's last transaction was not read: {lost:?}"),
            }
        }
        Ok(last) => last,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    // A terminal with no transaction yet aborts the repeat: there is no trace number before.
    let trace_before = match &last {
        Outcome::Completed(result) => result.trace_number.clone(),
        _ => None,
    };
    if let Err(e) = before_send(&last) {
        return Attempt::Transient {
            retry_after: None,
            error: format!("the trace number before the refund could not be stored, nothing was sent: {e}"),
        };
    }
    let request = PayoutRequest {
        password: settings.password.clone(),
        amount_minor,
        currency: settings.currency_number,
        service_byte: settings.service_byte,
        trace_before,
        completion_timeout: timeout,
        lookup_attempts: LOOKUP_ATTEMPTS,
    };
    match pay_out(&mut link, &request, connect) {
        Ok(payout) => classify(payout),
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sale::CardRef;

    fn settings(addr: std::net::SocketAddr) -> ZvtSettings {
        ZvtSettings {
            endpoint: ZvtEndpoint::Tcp(addr),
            password: "000000".into(),
            currency: "EUR",
            currency_number: 978,
            service_byte: 0,
        }
    }

    /// Runs one attempt of 5.00 at a fresh simulator, with `before_send` as the note's write.
    fn attempt_at(
        sim: &crate::sandbox::ZvtSimulator,
        before_send: impl FnOnce(&Outcome) -> Result<(), String>,
    ) -> Attempt {
        let crate::sandbox::zvt::Endpoint::Tcp(addr) = sim.endpoint().clone() else {
            panic!("a TCP simulator has a TCP endpoint");
        };
        attempt_on(&settings(addr), 500, before_send, || {
            connect_tcp(addr, CONNECT_TIMEOUT).map_err(LinkError::Io)
        })
    }

    #[test]
    fn the_note_is_written_after_the_trace_read_and_before_06_31() {
        let sim = crate::sandbox::ZvtSimulator::start_tcp().expect("simulator");
        assert!(matches!(attempt_at(&sim, |_| Ok(())), Attempt::Delivered { .. }));
        let mut seen = None;
        let attempt = attempt_at(&sim, |last| {
            seen = Some((last.clone(), sim.commands()));
            Ok(())
        });
        assert!(matches!(attempt, Attempt::Delivered { .. }), "{attempt:?}");
        let (last, before) = seen.expect("the note was written");
        let Outcome::Completed(last) = last else { panic!("the last transaction was read: {last:?}") };
        assert_eq!(last.trace_number.as_deref(), Some("000001"));
        assert_eq!(
            before.iter().filter(|c| **c == 0x0631).count(),
            1,
            "only the first refund's 06 31 had left"
        );
        assert_eq!(before.last(), Some(&0x0620), "the trace read came just before");
    }

    #[test]
    fn a_note_that_cannot_be_stored_sends_no_06_31() {
        let sim = crate::sandbox::ZvtSimulator::start_tcp().expect("simulator");
        let attempt = attempt_at(&sim, |_| Err("disk full".into()));
        assert!(
            matches!(&attempt, Attempt::Transient { error, .. } if error.contains("nothing was sent")),
            "{attempt:?}"
        );
        assert!(!sim.commands().contains(&0x0631), "{:?}", sim.commands());
        assert!(sim.refunds().is_empty());
    }

    #[test]
    fn capability_never_resends_money() {
        assert_eq!(CAPABILITY, Capability { dedup: false, moves_money: true });
    }

    #[test]
    fn payouts_classify_and_a_paid_one_keeps_the_terminal_record() {
        let result = TerminalResult {
            result_code: Some(0),
            trace_number: Some("000007".into()),
            receipt_number: Some("0003".into()),
            amount_minor: Some(700),
            card: Some(CardRef { bin: Some("411111".into()), last4: "1111".into() }),
            receipt: vec!["GUTSCHRIFT".into()],
            ..TerminalResult::default()
        };
        let Attempt::Delivered { remote_id: Some(id) } = classify(Payout::Paid { result, looked_up: true })
        else {
            panic!("a paid refund is delivered");
        };
        let json: serde_json::Value = serde_json::from_str(&id).expect("json");
        assert_eq!(json["trace"], "000007");
        assert_eq!(json["card_bin"], "411111");
        assert_eq!(json["card_last4"], "1111");
        assert_eq!(json["looked_up"], true);
        assert_eq!(json["receipt"][0], "GUTSCHRIFT");
        assert!(matches!(classify(Payout::NotPaid { reason: "aborted".into() }), Attempt::Declined(_)));
        assert!(matches!(classify(Payout::Unknown { reason: "lost".into() }), Attempt::Ambiguous(_)));
    }
}
