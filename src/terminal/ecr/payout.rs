//! A refund paid out by the terminal, with the lookup that settles a lost outcome.
//!
//! `06 31` moves money, so it is sent once. When its exchange is lost (the link broke or the
//! terminal fell silent after the command left), the agent reconnects, registers and asks the
//! terminal for its last transaction with Repeat Receipt (`06 20`). [`resolve`] reads that answer
//! against what the agent knew before sending: the trace number of the terminal's last
//! transaction then. A new trace number with this refund's amount means the refund ran; the old
//! trace number means it did not; anything else stays unknown for a person to settle.

use std::time::Duration;

use super::link::{Link, LinkError, Wire};
use super::{Outcome, Request, RequestError, TerminalResult};

/// What became of a refund sent to the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payout {
    /// The terminal paid the refund; its result (trace, receipt number, card, receipt text).
    Paid { result: TerminalResult, looked_up: bool },
    /// The terminal did not pay it (refused, aborted, an error result, or the lookup shows the
    /// terminal's last transaction is still the one from before).
    NotPaid { reason: String },
    /// Nobody can tell: a person must check the terminal's journal.
    Unknown { reason: String },
}

/// How a lookup answer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Refunded(TerminalResult),
    NotRefunded,
    Unclear(String),
}

/// Reads a Repeat Receipt outcome for a refund of `amount_minor` sent when the terminal's last
/// trace number was `trace_before` (`None` when the agent never saw one).
pub fn resolve(amount_minor: u64, trace_before: Option<&str>, lookup: &Outcome) -> Resolution {
    let Outcome::Completed(last) = lookup else {
        return Resolution::Unclear(format!("the terminal did not report its last transaction: {lookup:?}"));
    };
    let trace = last.trace_number.as_deref();
    match (trace, trace_before) {
        (Some(now), Some(before)) if now == before => Resolution::NotRefunded,
        (Some(_), _) if last.result_code.unwrap_or(0) == 0 && last.amount_minor == Some(amount_minor) => {
            Resolution::Refunded(last.clone())
        }
        (Some(_), _) => Resolution::Unclear(format!(
            "the terminal's last transaction (trace {}, amount {:?}, result {:?}) is not this refund of {amount_minor}",
            trace.unwrap_or("?"),
            last.amount_minor,
            last.result_code
        )),
        (None, _) => Resolution::Unclear("the terminal's last transaction has no trace number".into()),
    }
}

/// The settings one payout needs.
#[derive(Debug, Clone)]
pub struct PayoutRequest {
    pub password: String,
    pub amount_minor: u64,
    pub currency: u16,
    pub service_byte: u8,
    /// The terminal's last trace number known before this refund, for [`resolve`].
    pub trace_before: Option<String>,
    pub completion_timeout: Duration,
    /// How many times to reconnect for the lookup before the refund is left unknown.
    pub lookup_attempts: u32,
}

fn from_outcome(outcome: &Outcome) -> Option<Payout> {
    match (outcome, outcome.money_moved()) {
        (Outcome::Completed(result), Some(true)) => {
            Some(Payout::Paid { result: result.clone(), looked_up: false })
        }
        (_, Some(false)) => Some(Payout::NotPaid { reason: format!("{outcome:?}") }),
        (_, _) => None,
    }
}

/// Sends the refund once on `link`; on a lost outcome, looks it up over fresh links from
/// `reconnect`. Never sends `06 31` a second time.
pub fn pay_out<W: Wire>(
    link: &mut Link<W>,
    request: &PayoutRequest,
    mut reconnect: impl FnMut() -> Result<Link<W>, LinkError>,
) -> Result<Payout, RequestError> {
    let refund = Request::Refund {
        password: request.password.clone(),
        amount_minor: request.amount_minor,
        currency: request.currency,
    };
    let outcome = link.run(&refund, request.completion_timeout)?;
    if let Some(payout) = from_outcome(&outcome) {
        return Ok(payout);
    }
    let registration = Request::Registration {
        password: request.password.clone(),
        currency: request.currency,
        service_byte: request.service_byte,
    };
    let repeat = Request::RepeatReceipt { password: request.password.clone() };
    let mut last_reason = format!("the refund's outcome was lost: {outcome:?}");
    for _ in 0..request.lookup_attempts {
        let Ok(mut fresh) = reconnect() else {
            last_reason = "the terminal could not be reached for the lookup".into();
            continue;
        };
        // From here on `06 31` has left: no error may end the payout as anything but unknown
        // (an error would read as a failure, which a person may send again).
        match fresh.run(&registration, request.completion_timeout) {
            Ok(Outcome::Completed(_)) => {}
            Ok(_) => {
                last_reason = "the terminal refused the registration before the lookup".into();
                continue;
            }
            Err(e) => return Ok(Payout::Unknown { reason: format!("the lookup could not be asked: {e}") }),
        }
        let lookup = match fresh.run(&repeat, request.completion_timeout) {
            Ok(lookup) => lookup,
            Err(e) => return Ok(Payout::Unknown { reason: format!("the lookup could not be asked: {e}") }),
        };
        if matches!(lookup, Outcome::Lost { .. }) {
            last_reason = "the lookup itself was lost".into();
            continue;
        }
        *link = fresh;
        return Ok(match resolve(request.amount_minor, request.trace_before.as_deref(), &lookup) {
            Resolution::Refunded(result) => Payout::Paid { result, looked_up: true },
            Resolution::NotRefunded => Payout::NotPaid {
                reason: "the terminal's last transaction is still the one before this refund".into(),
            },
            Resolution::Unclear(reason) => Payout::Unknown { reason },
        });
    }
    Ok(Payout::Unknown { reason: last_reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(trace: &str, amount: u64, code: u8) -> Outcome {
        Outcome::Completed(TerminalResult {
            result_code: Some(code),
            trace_number: Some(trace.into()),
            amount_minor: Some(amount),
            ..TerminalResult::default()
        })
    }

    #[test]
    fn lookup_answers() {
        assert!(matches!(resolve(700, Some("000004"), &last("000005", 700, 0)), Resolution::Refunded(_)));
        assert!(matches!(resolve(700, None, &last("000001", 700, 0)), Resolution::Refunded(_)));
        assert_eq!(resolve(700, Some("000005"), &last("000005", 700, 0)), Resolution::NotRefunded);
        assert!(matches!(resolve(700, Some("000004"), &last("000005", 900, 0)), Resolution::Unclear(_)));
        assert!(matches!(resolve(700, Some("000004"), &last("000005", 700, 0x6C)), Resolution::Unclear(_)));
        let aborted = Outcome::Aborted { code: Some(0x6C), result: TerminalResult::default() };
        assert!(matches!(resolve(700, Some("000004"), &aborted), Resolution::Unclear(_)));
    }
}
