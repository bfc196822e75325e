//! The cashier's refund session at the till, as a pure state machine (no I/O, no clock).
//!
//! A refund at the terminal is a short conversation: the cashier scans the printed receipt
//! (`receipt_scan`), the customer presents the card (`card`), and the cashier confirms amount,
//! reason and operator (`refund`). [`Session::handle`] takes one parsed event and the current
//! time and says what to do ([`Action`]); the async glue in `task.rs` does it and reports a
//! committed refund back through [`Session::committed`]. Keeping the rules here means every
//! ordering of events, timeout and resend is unit- and property-tested without a port or a
//! database.
//!
//! Rules:
//! * a scan opens a session for its receipt (a different receipt starts afresh; a card presented
//!   before the first scan is kept, because some terminals read the card first);
//! * a card sets the card presented for the session; only its masked form ever reaches here;
//! * a `refund` without `receipt_id` / `original_transaction_id` refunds the scanned receipt
//!   with the presented card; one that names its sale needs no session, but still carries the
//!   presented card so the card-present check applies, and may not contradict the scan;
//! * `cancel` ends the session;
//! * a session idle for longer than the timeout is abandoned, so a half-finished refund cannot be
//!   completed by the next customer's `refund`; such a refund gets `session_expired`;
//! * a committed refund ends the session. Its `request_id` is remembered, so a terminal that
//!   missed the `ack` and resends the same frame gets the same refund back even though the
//!   session is gone (the queue's idempotency key `terminal:{request_id}` does the rest).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::event::{Inbound, Reply, TerminalEvent};
use crate::refund::{RefundDraft, RejectCode};
use crate::sale::SaleInput;

/// Why the session refuses a `refund` event before it becomes a draft. The strings are part of
/// the terminal protocol (docs/terminal-protocol.md); the other `nak` codes come from
/// `EventError`, `RejectCode` and `QueueError`, each typed at its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionNak {
    /// The refund names another receipt than the one scanned.
    ReceiptMismatch,
    /// The session timed out; the receipt must be scanned again.
    SessionExpired,
    /// No receipt named and none scanned.
    NoReceiptScanned,
}

impl SessionNak {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionNak::ReceiptMismatch => "receipt_mismatch",
            SessionNak::SessionExpired => "session_expired",
            SessionNak::NoReceiptScanned => "no_receipt_scanned",
        }
    }
}

/// How long a half-finished session survives without activity when config does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest `request_id` accepted; the same limit as the control API's `Idempotency-Key`.
pub const MAX_REQUEST_ID: usize = 200;

/// How many committed refunds are remembered for resends. A terminal resends its last frame or
/// two, so a handful is plenty, and the bound keeps memory fixed however long the till runs.
const REMEMBERED: usize = 32;

/// What the glue must do with one event. The sale and the refund are boxed because they are far
/// larger than a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer the terminal; nothing else to do.
    Reply(Reply),
    /// Add the sale to the ledger, then answer `ack` (or `nak` with the rejection's code).
    AddSale { seq: Option<i64>, sale: Box<SaleInput> },
    /// Validate and queue the refund, then answer; call [`Session::committed`] after an `ack`.
    CreateRefund(Box<RefundRequest>),
}

/// A refund ready for the queue, with what the session needs to remember once it is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRequest {
    pub seq: Option<i64>,
    pub draft: RefundDraft,
    /// `terminal:{request_id}`, namespaced so a terminal can never replay a control API key.
    pub key: Option<String>,
    request_id: Option<String>,
    /// The event as received, to recognise a resend of the same frame.
    event: TerminalEvent,
    /// Rebuilt from memory for a resend: the open session (maybe the next customer's) was not
    /// used, so committing it must not end that session.
    resend: bool,
}

/// Where the conversation stands.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Idle,
    Open {
        receipt_id: Option<String>,
        masked_pan: Option<String>,
        touched: Instant,
    },
    /// The last session timed out; kept so the next refund can say so instead of "scan first".
    Expired,
}

/// One till's session. The terminal is a single device, so there is exactly one.
#[derive(Debug, Clone)]
pub struct Session {
    timeout: Duration,
    state: State,
    /// Committed refunds with a `request_id`, newest last.
    remembered: VecDeque<(String, TerminalEvent, RefundDraft)>,
}

impl Session {
    pub fn new(timeout: Duration) -> Self {
        Session { timeout, state: State::Idle, remembered: VecDeque::new() }
    }

    /// When the open session will be abandoned, so the glue can wake up and say so.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Open { touched, .. } => Some(*touched + self.timeout),
            State::Idle | State::Expired => None,
        }
    }

    /// Abandons the session if it has been idle too long; true when that happened just now.
    pub fn expire(&mut self, now: Instant) -> bool {
        let stale = self.deadline().is_some_and(|deadline| now > deadline);
        if stale {
            self.state = State::Expired;
        }
        stale
    }

    /// The receipt scanned in the open session, if any.
    pub fn scanned(&self) -> Option<&str> {
        match &self.state {
            State::Open { receipt_id, .. } => receipt_id.as_deref(),
            State::Idle | State::Expired => None,
        }
    }

    /// Decides what to do with one event received at `now`.
    pub fn handle(&mut self, inbound: Inbound, now: Instant) -> Action {
        self.expire(now);
        let seq = inbound.seq;
        match inbound.event {
            TerminalEvent::Receipt(receipt) => Action::AddSale { seq, sale: Box::new(receipt) },
            TerminalEvent::ReceiptScan { receipt_id } => {
                let masked_pan = match &mut self.state {
                    State::Open { receipt_id: Some(open), masked_pan, .. } if *open == receipt_id => {
                        masked_pan.take()
                    }
                    // A card read before the first scan belongs to the receipt scanned next.
                    State::Open { receipt_id: None, masked_pan, .. } => masked_pan.take(),
                    _ => None,
                };
                self.state = State::Open { receipt_id: Some(receipt_id), masked_pan, touched: now };
                Action::Reply(Reply::ack(seq))
            }
            TerminalEvent::Card { masked_pan, .. } => {
                let receipt_id = match &mut self.state {
                    State::Open { receipt_id, .. } => receipt_id.take(),
                    State::Idle | State::Expired => None,
                };
                self.state = State::Open { receipt_id, masked_pan: Some(masked_pan), touched: now };
                Action::Reply(Reply::ack(seq))
            }
            TerminalEvent::Cancel => {
                self.state = State::Idle;
                Action::Reply(Reply::ack(seq))
            }
            refund @ TerminalEvent::Refund { .. } => self.refund(seq, refund, now),
        }
    }

    fn refund(&mut self, seq: Option<i64>, event: TerminalEvent, now: Instant) -> Action {
        let TerminalEvent::Refund {
            receipt_id,
            original_transaction_id,
            amount,
            lines,
            reason,
            operator,
            currency,
            manager_approval,
            request_id,
        } = event.clone()
        else {
            return Action::Reply(Reply::nak(seq, RejectCode::InvalidRequest.as_str(), "not a refund"));
        };
        if let Some(id) = &request_id {
            if id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
                let message = format!("request_id must be 1 to {MAX_REQUEST_ID} printable ASCII characters");
                return Action::Reply(Reply::nak(seq, RejectCode::InvalidRequest.as_str(), &message));
            }
            if crate::pan::holds_card_data(id) {
                let refused = crate::refund::draft::card_data_in("request_id");
                return Action::Reply(Reply::nak(seq, refused.code.as_str(), &refused.message));
            }
            // A resend of a committed refund is answered from memory: its session is over.
            if let Some((_, _, draft)) = self.remembered.iter().find(|(r, e, _)| r == id && *e == event) {
                let draft = draft.clone();
                return request(seq, draft, request_id, event, true);
            }
        }
        let (scanned, card) = match &mut self.state {
            State::Open { receipt_id, masked_pan, touched } => {
                *touched = now;
                (receipt_id.clone(), masked_pan.clone())
            }
            State::Idle | State::Expired => (None, None),
        };
        let receipt_id = match (receipt_id, &original_transaction_id, scanned) {
            (Some(named), _, Some(scanned)) if named != scanned => {
                let message = "the refund names another receipt than the one scanned; scan again or cancel";
                return Action::Reply(Reply::nak(seq, SessionNak::ReceiptMismatch.as_str(), message));
            }
            (named @ Some(_), _, _) => named,
            (None, Some(_), _) => None,
            (None, None, Some(scanned)) => Some(scanned),
            (None, None, None) if self.state == State::Expired => {
                let message = "the refund session timed out; scan the receipt again";
                return Action::Reply(Reply::nak(seq, SessionNak::SessionExpired.as_str(), message));
            }
            (None, None, None) => {
                let message = "scan the receipt first, or name it in the refund";
                return Action::Reply(Reply::nak(seq, SessionNak::NoReceiptScanned.as_str(), message));
            }
        };
        let draft = RefundDraft {
            receipt_id,
            original_transaction_id,
            amount,
            currency,
            reason,
            operator,
            manager_approval,
            masked_pan: card,
            lines,
            ..RefundDraft::default()
        };
        request(seq, draft, request_id, event, false)
    }

    /// Records that `request` was committed (the terminal is being sent its `ack`): the session
    /// is over, and a resend of the same frame will get the same refund.
    pub fn committed(&mut self, request: &RefundRequest) {
        if request.resend {
            return;
        }
        self.state = State::Idle;
        if let Some(id) = &request.request_id {
            if !self.remembered.iter().any(|(r, _, _)| r == id) {
                if self.remembered.len() == REMEMBERED {
                    self.remembered.pop_front();
                }
                self.remembered.push_back((id.clone(), request.event.clone(), request.draft.clone()));
            }
        }
    }
}

fn request(
    seq: Option<i64>,
    draft: RefundDraft,
    request_id: Option<String>,
    event: TerminalEvent,
    resend: bool,
) -> Action {
    let key = request_id.as_ref().map(|id| format!("terminal:{id}"));
    Action::CreateRefund(Box::new(RefundRequest { seq, draft, key, request_id, event, resend }))
}

#[cfg(test)]
mod tests;
