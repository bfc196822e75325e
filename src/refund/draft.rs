//! What a cashier asks for: the fields of a terminal `refund` event or `POST /v1/refunds`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rejection::{RejectCode, Rejection};
use crate::manager::{ApprovalRequest, Pin};
use crate::pan;
use crate::sale::CardRef;

/// The longest free text accepted in `reason`, `operator` and ids; longer input is refused
/// rather than cut, so nobody is surprised by what was recorded.
pub const MAX_TEXT: usize = 500;

/// A refund request before validation. Amounts are strings, parsed by validation.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefundDraft {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_transaction_id: Option<String>,
    /// The amount; with `lines` it may be left out, and when given it must equal what the lines
    /// refund (`amount_mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub reason: String,
    pub operator: String,
    /// A tax / discount breakdown; without one, the subtotal rule applies (seed 002).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<String>,
    /// A manager's id and PIN, for a refund above the per-refund limit or unlinked. It counts
    /// only once verified (`manager::Approver`); validation sees the verified [`Approval`] in
    /// its facts, never this request.
    ///
    /// [`Approval`]: crate::manager::Approval
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_approval: Option<ApprovalRequest>,
    /// The card presented for a card-present refund; reduced to BIN + last 4 on the way in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_pan: Option<String>,
    /// What is returned, for an itemized refund (SPEC section 5a). Left out of the serialized
    /// draft when empty, so the fingerprints of keys stored before lines existed still match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineRequest>,
    /// Through the control API: the agent reads the presented card at its ZVT terminal (Read
    /// Card) and takes it as `masked_pan`, so the cashier types no card digits. Left out of the
    /// serialized draft when false, so the fingerprints of keys stored before it still match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_card: bool,
}

/// One returned line of an itemized refund: the 1-based line of the receipt and how many units.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub line: u32,
    pub quantity: u32,
}

/// How a draft names its original sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaleRef {
    Receipt(String),
    Transaction(String),
}

impl RefundDraft {
    /// Checks the shape of the draft (required text present, not too long) and reduces any card
    /// number to its masked form, so that nothing downstream — not even the idempotency
    /// fingerprint — ever sees a full PAN: a PAN in `reason` is masked to BIN + last 4, a PAN
    /// (or track data) in an id or amount is refused as `card_data_in_field`.
    pub fn normalized(mut self) -> Result<RefundDraft, Rejection> {
        let invalid = |m: String| Rejection::new(RejectCode::InvalidRequest, m);
        for (name, value) in [("reason", &self.reason), ("operator", &self.operator)] {
            if value.trim().is_empty() {
                return Err(invalid(format!("field `{name}` must not be empty")));
            }
        }
        let texts = [
            ("receipt_id", self.receipt_id.as_deref()),
            ("original_transaction_id", self.original_transaction_id.as_deref()),
            ("reason", Some(self.reason.as_str())),
            ("operator", Some(self.operator.as_str())),
            ("manager_approval.manager", self.manager_approval.as_ref().map(|a| a.manager.as_str())),
        ];
        for (name, value) in texts.into_iter().chain([("currency", self.currency.as_deref())]) {
            let Some(value) = value else { continue };
            if value.chars().count() > MAX_TEXT {
                return Err(invalid(format!("field `{name}` is longer than {MAX_TEXT} characters")));
            }
            crate::text::check(name, value).map_err(|e| invalid(e.to_string()))?;
            if name != "reason" && pan::holds_card_data(value) {
                return Err(card_data_in(name));
            }
        }
        if self.amount.is_none() && self.lines.is_empty() {
            return Err(invalid("give `amount`, or `lines` for an itemized refund".into()));
        }
        for (name, value) in [
            ("amount", self.amount.as_ref()),
            ("tax", self.tax.as_ref()),
            ("discount", self.discount.as_ref()),
        ] {
            if value.is_some_and(|v| pan::holds_card_data(v)) {
                return Err(card_data_in(name));
            }
        }
        if let Cow::Owned(masked) = pan::mask_text(&self.reason) {
            self.reason = masked;
        }
        if let Some(pan) = self.masked_pan.take().filter(|p| !p.trim().is_empty()) {
            let card = CardRef::from_pan_text(&pan)
                .ok_or_else(|| invalid("field `masked_pan` must end with the card's last 4 digits".into()))?;
            self.masked_pan = Some(card.masked());
        }
        self.sale_ref()?;
        Ok(self)
    }

    /// The original sale the draft names: exactly one of `receipt_id` and
    /// `original_transaction_id`.
    pub fn sale_ref(&self) -> Result<SaleRef, Rejection> {
        let receipt = self.receipt_id.as_deref().filter(|s| !s.trim().is_empty());
        let txn = self.original_transaction_id.as_deref().filter(|s| !s.trim().is_empty());
        match (receipt, txn) {
            (Some(r), None) => Ok(SaleRef::Receipt(r.to_string())),
            (None, Some(t)) => Ok(SaleRef::Transaction(t.to_string())),
            (None, None) => Err(Rejection::new(
                RejectCode::InvalidRequest,
                "name the original sale with `receipt_id` or `original_transaction_id`",
            )),
            (Some(_), Some(_)) => Err(Rejection::new(
                RejectCode::InvalidRequest,
                "give either `receipt_id` or `original_transaction_id`, not both",
            )),
        }
    }

    /// A digest of the normalized draft, stored with an idempotency key to tell a true retry
    /// (same body) from a reused key (different body). Field order is the struct's, so the
    /// digest is stable. The PIN is left out: the digest is stored, and a digest of a short PIN
    /// is as good as the PIN to anyone who reads it.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut without_pin = self.clone();
        if let Some(approval) = &mut without_pin.manager_approval {
            approval.pin = Pin::new("");
        }
        let canonical = serde_json::to_vec(&without_pin).unwrap_or_default();
        Sha256::digest(&canonical).into()
    }
}

/// The refusal of an id that holds card data. It names the field and never echoes the value,
/// so that the number reaches neither the caller's logs nor the agent's.
pub fn card_data_in(field: &str) -> Rejection {
    Rejection::new(
        RejectCode::CardDataInField,
        format!("field `{field}` holds a card number or track data; ids may not carry card data, so nothing was stored"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> RefundDraft {
        RefundDraft {
            receipt_id: Some("RCP-1".into()),
            amount: Some("5.00".into()),
            reason: "returned".into(),
            operator: "emp_42".into(),
            ..RefundDraft::default()
        }
    }

    #[test]
    fn an_amount_or_lines_are_needed() {
        let d: RefundDraft =
            serde_json::from_str(r#"{"receipt_id":"R","reason":"x","operator":"o"}"#).expect("parses");
        let err = d.clone().normalized().unwrap_err();
        assert_eq!(err.code, RejectCode::InvalidRequest);
        assert!(err.message.contains("`amount`"), "{}", err.message);
        let itemized = RefundDraft { lines: vec![LineRequest { line: 1, quantity: 1 }], ..d };
        assert!(itemized.normalized().is_ok());
    }

    #[test]
    fn a_draft_without_lines_keeps_its_old_fingerprint() {
        // The canonical form of a draft made before lines existed, as its key's digest was taken.
        let old = r#"{"receipt_id":"RCP-1","amount":"5.00","reason":"returned","operator":"emp_42"}"#;
        assert_eq!(serde_json::to_string(&draft()).expect("json"), old);
    }

    #[test]
    fn a_sale_must_be_named_once() {
        let mut d = draft();
        d.receipt_id = None;
        assert_eq!(d.clone().normalized().unwrap_err().code, RejectCode::InvalidRequest);
        d.receipt_id = Some("R".into());
        d.original_transaction_id = Some("T".into());
        assert_eq!(d.normalized().unwrap_err().code, RejectCode::InvalidRequest);
    }

    #[test]
    fn a_full_pan_never_reaches_the_fingerprint() {
        let mut d = draft();
        d.masked_pan = Some("4111111111111111".into());
        let n = d.normalized().unwrap();
        assert_eq!(n.masked_pan.as_deref(), Some("411111******1111"));
        let masked = RefundDraft { masked_pan: Some("411111******1111".into()), ..draft() };
        assert_eq!(n.fingerprint(), masked.fingerprint());
    }

    #[test]
    fn fingerprint_tells_bodies_apart() {
        let a = draft();
        let b = RefundDraft { amount: Some("6.00".into()), ..draft() };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), draft().fingerprint());
    }

    #[test]
    fn the_pin_is_not_part_of_the_fingerprint() {
        let with = |pin: &str| RefundDraft {
            manager_approval: Some(ApprovalRequest { manager: "mgr_1".into(), pin: Pin::new(pin) }),
            ..draft()
        };
        assert_eq!(with("1234").fingerprint(), with("9876").fingerprint());
        assert_ne!(with("1234").fingerprint(), draft().fingerprint());
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        let set: [fn(&mut RefundDraft); 4] = [
            |d| d.reason = "ok\nINFO approved by mgr_1".into(),
            |d| d.operator = "emp\u{202e}24".into(),
            |d| d.receipt_id = Some("RCP\u{1b}[2J".into()),
            |d| {
                d.manager_approval =
                    Some(ApprovalRequest { manager: "mgr\u{7f}".into(), pin: Pin::new("1234") })
            },
        ];
        for f in set {
            let mut d = draft();
            f(&mut d);
            let err = d.normalized().unwrap_err();
            assert_eq!(err.code, RejectCode::InvalidRequest);
            assert!(err.message.contains("control"), "{}", err.message);
        }
    }
}
