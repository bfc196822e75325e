//! Terminal events: turning a decoded payload into a typed [`TerminalEvent`].
//!
//! Parsing goes through a `serde_json::Value` rather than straight into the types, for two
//! reasons. First, [`pci::sanitize`] must run on the untyped tree so that card secrets are removed
//! before any typed value (or error message quoting one) exists. Second, reading the fields by hand
//! lets every error name the offending field with a stable code, which the terminal shows to the
//! cashier and the daemon logs; serde's own messages name neither reliably.
//!
//! The types still derive `Serialize`/`Deserialize` with the wire names, so the daemon can store
//! or replay events, and tests check that both paths agree on the documented examples.
//!
//! Unknown extra fields are ignored on purpose: terminal vendors add their own fields, and
//! rejecting them would break the refund flow on a firmware update.

mod fields;
mod reply;
mod scan;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pci;
use crate::sale::SaleInput;

pub use self::reply::Reply;
pub use self::scan::{scan_event, MAX_SCAN_LEN};

/// One message from the terminal, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalEvent {
    /// A receipt the terminal printed or looked up, with its payment details.
    Receipt(SaleInput),
    /// The cashier scanned a receipt barcode.
    ReceiptScan { receipt_id: String },
    /// A card was presented; only its masked PAN ever reaches this type.
    Card {
        masked_pan: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiry: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry_mode: Option<String>,
    },
    /// The cashier asked for a refund.
    Refund {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        original_transaction_id: Option<String>,
        /// A decimal string; the domain layer parses it with a decimal type, never a float.
        /// Optional with `lines`, which then set it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<String>,
        /// What is returned, for an itemized refund (`[{"line", "quantity"}]`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lines: Vec<crate::refund::draft::LineRequest>,
        reason: String,
        operator: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        currency: Option<String>,
        /// A manager's id and PIN (`{"manager", "pin"}`), checked before the refund is queued.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manager_approval: Option<crate::manager::ApprovalRequest>,
        /// The terminal's idempotency key, so a resent refund is not executed twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// The cashier cancelled the current operation.
    Cancel,
}

/// A parsed event with the terminal's optional sequence number, echoed back in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub seq: Option<i64>,
    pub event: TerminalEvent,
}

/// Everything [`parse_event_detailed`] learned, including on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOutcome {
    /// The sequence number, when it could be read, so that even a `nak` can be correlated.
    pub seq: Option<i64>,
    /// What [`pci::sanitize`] removed or masked; non-empty means the terminal leaked card data.
    pub redactions: Vec<&'static str>,
    pub result: Result<TerminalEvent, EventError>,
}

/// Why a payload is not a valid event. Messages never contain card data: they are built after
/// sanitizing and quote at most the (sanitized, truncated) event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("missing required field `{field}`")]
    MissingField { field: String },
    #[error("invalid field `{field}`: {reason}")]
    InvalidField { field: String, reason: &'static str },
}

impl EventError {
    /// A stable identifier sent to the terminal in `nak` replies; never change an existing value.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::InvalidJson(_) => "invalid_json",
            EventError::NotAnObject => "not_an_object",
            EventError::UnknownType(_) => "unknown_type",
            EventError::MissingField { .. } => "missing_field",
            EventError::InvalidField { .. } => "invalid_field",
        }
    }

    /// The field the error is about, if any (nested fields look like `items[2].quantity`).
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::MissingField { field } | EventError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Parses one JSON payload (from `ndjson` or `stx-etx` framing) into an event.
pub fn parse_event(payload: &str) -> Result<Inbound, EventError> {
    let outcome = parse_event_detailed(payload);
    outcome.result.map(|event| Inbound { seq: outcome.seq, event })
}

/// Like [`parse_event`], but also reports the sequence number on failure (for the `nak`) and what
/// the PCI sanitizer removed (for an alert that contains no card data).
pub fn parse_event_detailed(payload: &str) -> ParseOutcome {
    let failed = |seq, redactions, error| ParseOutcome { seq, redactions, result: Err(error) };
    let mut value: Value = match serde_json::from_str(payload) {
        Ok(value) => value,
        // serde_json's syntax errors give only a position, never input text, so they are safe.
        Err(error) => return failed(None, Vec::new(), EventError::InvalidJson(error.to_string())),
    };
    // The manager's PIN is no card PIN, but the sanitizer drops every field named `pin`: it is
    // taken out first and put back after, as a string only (it is verified, never stored).
    let manager_pin = take_manager_pin(&mut value);
    let redactions = pci::sanitize(&mut value);
    if let (Some(pin), Some(Value::Object(approval))) =
        (manager_pin, value.get_mut("manager_approval").filter(|a| a.is_object()))
    {
        approval.insert("pin".into(), Value::String(pin));
    }
    let Value::Object(map) = &value else {
        return failed(None, redactions, EventError::NotAnObject);
    };
    let seq = match fields::seq(map) {
        Ok(seq) => seq,
        Err(error) => return failed(None, redactions, error),
    };
    ParseOutcome { seq, redactions, result: fields::event_from_object(map) }
}

/// Removes `manager_approval.pin` when it is a short string (a PIN, not a card's data).
fn take_manager_pin(value: &mut Value) -> Option<String> {
    let approval = value.get_mut("manager_approval")?.as_object_mut()?;
    let short = approval.get("pin")?.as_str().is_some_and(|p| p.len() <= crate::manager::file::MAX_PIN);
    if !short {
        return None;
    }
    match approval.remove("pin") {
        Some(Value::String(pin)) => Some(pin),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
