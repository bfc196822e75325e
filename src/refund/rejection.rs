//! Every reason a refund can be refused, each with a stable machine code (for the kiosk UI and
//! the terminal's `nak`) and a message a cashier can read.

use std::fmt;

/// Stable codes; their strings are part of the control API and terminal protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    InvalidRequest,
    InvalidAmount,
    CurrencyMismatch,
    UnknownSale,
    OverRefund,
    OverSubtotal,
    ManagerApprovalRequired,
    CardMismatch,
    ExposureCap,
    QueueFull,
    IdempotencyKeyReused,
    NoRoute,
    InconsistentReceipt,
    NoLimitsForCurrency,
    /// An id or amount field holds a card number or track data; the message names the field,
    /// never the number.
    CardDataInField,
    /// An itemized refund's `amount` (or tax, or discount) is not what its lines refund.
    AmountMismatch,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidRequest => "invalid_request",
            RejectCode::InvalidAmount => "invalid_amount",
            RejectCode::CurrencyMismatch => "currency_mismatch",
            RejectCode::UnknownSale => "unknown_sale",
            RejectCode::OverRefund => "over_refund",
            RejectCode::OverSubtotal => "over_subtotal",
            RejectCode::ManagerApprovalRequired => "manager_approval_required",
            RejectCode::CardMismatch => "card_mismatch",
            RejectCode::ExposureCap => "exposure_cap",
            RejectCode::QueueFull => "queue_full",
            RejectCode::IdempotencyKeyReused => "idempotency_key_reused",
            RejectCode::NoRoute => "no_route",
            RejectCode::InconsistentReceipt => "inconsistent_receipt",
            RejectCode::NoLimitsForCurrency => "no_limits_for_currency",
            RejectCode::CardDataInField => "card_data_in_field",
            RejectCode::AmountMismatch => "amount_mismatch",
        }
    }
}

/// A refused refund: nothing of it was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: RejectCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: RejectCode, message: impl Into<String>) -> Rejection {
        Rejection { code, message: message.into() }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
