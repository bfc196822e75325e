//! The note a ZVT payout leaves before `06 31` and how a later lookup reads against it. Pure.
//!
//! Before `06 31` leaves, the attempt stores a [`Note`] in the delivery's sealed `remote_id`
//! (committed first): the terminal's last transaction as Repeat Receipt reported it then. When
//! the payout's outcome is lost and the lookup within the attempt cannot settle it (or the agent
//! stopped after `06 31` left), the delivery is `unknown` with the note on it, and a later
//! Repeat Receipt is read against the note by [`verdict`]:
//!
//! * the terminal's last transaction is still exactly the one noted (trace, receipt number,
//!   amount, result code and terminal id all equal): **not paid**. Comparing the whole record,
//!   not only the trace number, keeps a terminal whose trace counter was reset and came round
//!   to the same number from reading as "not paid";
//! * the last transaction has the trace number right after the noted one, result code 0, this
//!   refund's amount and the same terminal id: **paid**. Only the next trace number proves that
//!   no other transaction (a sale at the terminal) ran since; with a gap, a counter that wrapped
//!   or was reset, or no trace number noted, it stays unknown;
//! * anything else: still **unknown**, for a person.
//!
//! Only the terminal's last transaction can be read, so only one payout per terminal can ever be
//! looked up: every note is written with the others at the same terminal marked superseded
//! ([`supersede`]) in the same transaction, since this payout's `06 31` may become the
//! terminal's last transaction. A superseded note is never looked up again.

use serde::{Deserialize, Serialize};

use crate::terminal::ecr::payout::{resolve, Resolution};
use crate::terminal::ecr::{Outcome, TerminalResult};

/// The terminal's last transaction as the agent read it before `06 31`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Before {
    pub trace: String,
    pub receipt_number: Option<String>,
    pub amount_minor: Option<u64>,
    pub result_code: Option<u8>,
    pub terminal_id: Option<String>,
}

impl Before {
    /// What a Repeat Receipt answer noted; `None` without a trace number (a terminal with no
    /// transaction yet), which no lookup can later read against.
    pub fn from_result(last: &TerminalResult) -> Option<Before> {
        Some(Before {
            trace: last.trace_number.clone()?,
            receipt_number: last.receipt_number.clone(),
            amount_minor: last.amount_minor,
            result_code: last.result_code,
            terminal_id: last.terminal_id.clone(),
        })
    }

    fn same_as(&self, last: &TerminalResult) -> bool {
        Some(&self.trace) == last.trace_number.as_ref()
            && self.receipt_number == last.receipt_number
            && self.amount_minor == last.amount_minor
            && self.result_code == last.result_code
            && self.terminal_id == last.terminal_id
    }
}

/// The note kept in an `in_flight` or `unknown` zvt delivery's `remote_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Note {
    /// The terminal's last transaction before `06 31` left, or `None` when it had none.
    pub zvt_before: Option<Before>,
    /// Set once the note can no longer be read against the terminal's last transaction: a
    /// later payout at the terminal was about to send `06 31`, or a lookup already read it.
    pub superseded: bool,
}

impl Note {
    pub fn new(before: Option<Before>) -> Note {
        Note { zvt_before: before, superseded: false }
    }

    /// A note from a stored `remote_id`; `None` for anything else (a paid refund's record).
    pub fn parse(remote_id: &str) -> Option<Note> {
        serde_json::from_str(remote_id).ok()
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and options always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| "{\"zvt_before\":null,\"superseded\":true}".into())
    }

    /// Whether a lookup may still read against this note.
    pub fn lookupable(&self) -> bool {
        !self.superseded && self.zvt_before.is_some()
    }
}

/// A stored `remote_id` as it must read once a newer payout at the same terminal noted its own
/// trace, or once a lookup read it: the same note marked superseded. `None` for a `remote_id`
/// that is no live note (nothing to change).
pub fn supersede(remote_id: &str) -> Option<String> {
    let mut note = Note::parse(remote_id).filter(|n| !n.superseded)?;
    note.superseded = true;
    Some(note.to_json())
}

/// Whether a stored `remote_id` is a note a lookup may read against.
pub fn lookupable(remote_id: &str) -> bool {
    Note::parse(remote_id).is_some_and(|n| n.lookupable())
}

/// What a later lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The refund is the terminal's last transaction, the only one since the note.
    Paid(TerminalResult),
    /// The terminal's last transaction is still the one noted before `06 31`.
    NotPaid,
    /// Nothing proves either.
    Unknown(String),
}

/// The trace number after `trace`, in the same width; `None` where the counter would wrap.
fn next_trace(trace: &str) -> Option<String> {
    let n: u64 = trace.parse().ok()?;
    let next = (n + 1).to_string();
    (next.len() <= trace.len()).then(|| format!("{next:0>width$}", width = trace.len()))
}

/// Reads a Repeat Receipt answer for a refund of `amount_minor` against its note. Where in
/// doubt the answer is [`Verdict::Unknown`]: a wrong "not paid" pays a refund twice once a
/// person sends it again, and a wrong "paid" leaves a customer without the money.
/// `sale_card_last4` is the last 4 of the card the refunded sale was paid with, when known: a
/// last transaction made with another card is not this refund (a sale of the same amount by
/// the next customer looks the same otherwise).
pub fn verdict(note: &Note, amount_minor: u64, sale_card_last4: Option<&str>, lookup: &Outcome) -> Verdict {
    let Some(before) = note.zvt_before.as_ref().filter(|_| !note.superseded) else {
        return Verdict::Unknown(
            "no trace number of the terminal's last transaction was noted before".into(),
        );
    };
    let Outcome::Completed(last) = lookup else {
        return Verdict::Unknown(format!("the terminal did not report its last transaction: {lookup:?}"));
    };
    if before.same_as(last) {
        return Verdict::NotPaid;
    }
    match resolve(amount_minor, Some(&before.trace), lookup) {
        Resolution::Refunded(result) => {
            let next = next_trace(&before.trace);
            if result.trace_number != next {
                return Verdict::Unknown(format!(
                    "the terminal's last transaction (trace {}) is not the one right after trace {}: other transactions may have run since",
                    result.trace_number.as_deref().unwrap_or("?"),
                    before.trace
                ));
            }
            if before.terminal_id.is_some() && result.terminal_id != before.terminal_id {
                return Verdict::Unknown("the terminal reports another terminal id than before".into());
            }
            let card = result.card.as_ref().map(|c| c.last4.as_str());
            if let (Some(want), Some(card)) = (sale_card_last4, card) {
                if want != card {
                    return Verdict::Unknown(format!(
                        "the terminal's last transaction was made with a card ending in {card}, the sale was paid with one ending in {want}"
                    ));
                }
            }
            Verdict::Paid(result)
        }
        // The same trace number with another record: the counter was reset, or the journal
        // changed; nothing is proven.
        Resolution::NotRefunded => Verdict::Unknown(format!(
            "the terminal's last transaction has trace {} as before but another record",
            before.trace
        )),
        Resolution::Unclear(reason) => Verdict::Unknown(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(trace: &str, receipt: &str, amount: u64, code: u8) -> TerminalResult {
        TerminalResult {
            result_code: Some(code),
            trace_number: Some(trace.into()),
            receipt_number: Some(receipt.into()),
            amount_minor: Some(amount),
            terminal_id: Some("52001233".into()),
            ..TerminalResult::default()
        }
    }

    fn note(trace: &str, receipt: &str, amount: u64) -> Note {
        Note::new(Before::from_result(&result(trace, receipt, amount, 0)))
    }

    fn done(r: TerminalResult) -> Outcome {
        Outcome::Completed(r)
    }

    #[test]
    fn the_next_trace_with_this_amount_is_paid() {
        let n = note("000004", "0004", 500);
        assert!(matches!(verdict(&n, 700, None, &done(result("000005", "0005", 700, 0))), Verdict::Paid(_)));
    }

    #[test]
    fn the_next_trace_made_with_another_card_than_the_sale_s_stays_unknown() {
        use crate::sale::CardRef;
        let n = note("000004", "0004", 500);
        let mut next = result("000005", "0005", 700, 0);
        next.card = Some(CardRef { bin: Some("411111".into()), last4: "1111".into() });
        assert!(matches!(verdict(&n, 700, Some("1111"), &done(next.clone())), Verdict::Paid(_)));
        // The next customer's sale of the same amount, after a refund that never ran.
        let v = verdict(&n, 700, Some("2257"), &done(next.clone()));
        assert!(matches!(&v, Verdict::Unknown(why) if why.contains("ending in 1111")), "{v:?}");
        next.card = None;
        assert!(matches!(verdict(&n, 700, Some("2257"), &done(next)), Verdict::Paid(_)));
    }

    #[test]
    fn the_noted_transaction_still_last_is_not_paid() {
        let n = note("000004", "0004", 500);
        assert_eq!(verdict(&n, 700, None, &done(result("000004", "0004", 500, 0))), Verdict::NotPaid);
    }

    #[test]
    fn a_reset_counter_on_the_same_trace_is_not_a_proof_of_not_paid() {
        let n = note("000004", "0004", 500);
        let v = verdict(&n, 700, None, &done(result("000004", "0001", 700, 0)));
        assert!(matches!(v, Verdict::Unknown(_)), "{v:?}");
    }

    #[test]
    fn a_gap_in_the_traces_stays_unknown() {
        // A sale of the same amount may have run between; only the very next trace proves it.
        let n = note("000004", "0004", 500);
        for (trace, amount, code) in
            [("000006", 700, 0), ("000001", 700, 0), ("000005", 900, 0), ("000005", 700, 0x6C)]
        {
            let v = verdict(&n, 700, None, &done(result(trace, "0005", amount, code)));
            assert!(matches!(v, Verdict::Unknown(_)), "{trace} {amount} {code}: {v:?}");
        }
    }

    #[test]
    fn a_wrapping_counter_another_terminal_or_no_answer_stay_unknown() {
        let n = note("999999", "0004", 500);
        assert!(matches!(
            verdict(&n, 700, None, &done(result("000000", "0005", 700, 0))),
            Verdict::Unknown(_)
        ));
        let n = note("000004", "0004", 500);
        let mut other = result("000005", "0005", 700, 0);
        other.terminal_id = Some("99999999".into());
        assert!(matches!(verdict(&n, 700, None, &done(other)), Verdict::Unknown(_)));
        let aborted = Outcome::Aborted { code: Some(0x6C), result: TerminalResult::default() };
        assert!(matches!(verdict(&n, 700, None, &aborted), Verdict::Unknown(_)));
    }

    #[test]
    fn a_note_without_a_trace_or_superseded_is_never_read() {
        let paid = done(result("000001", "0001", 700, 0));
        assert!(matches!(verdict(&Note::new(None), 700, None, &paid), Verdict::Unknown(_)));
        let mut n = note("000000", "0000", 500);
        n.superseded = true;
        assert!(matches!(verdict(&n, 700, None, &paid), Verdict::Unknown(_)));
    }

    #[test]
    fn notes_round_trip_and_supersede_once() {
        let json = note("000004", "0004", 500).to_json();
        assert!(lookupable(&json));
        let gone = supersede(&json).expect("a live note is superseded");
        assert!(!lookupable(&gone));
        assert_eq!(supersede(&gone), None, "already superseded");
        assert_eq!(supersede("{\"trace\":\"000005\",\"looked_up\":false}"), None, "a paid record is no note");
        assert!(!lookupable(&Note::new(None).to_json()));
    }

    #[test]
    fn next_trace_keeps_the_width() {
        assert_eq!(next_trace("000009").as_deref(), Some("000010"));
        assert_eq!(next_trace("999999"), None);
        assert_eq!(next_trace("12a"), None);
    }
}
