//! Barcode scans (`lines` framing), which are plain receipt ids rather than JSON.

use super::{EventError, Inbound, TerminalEvent};

/// The longest receipt id a barcode scan may carry; real receipt codes are far shorter, so
/// anything longer is a misread or a scanner in the wrong mode.
pub const MAX_SCAN_LEN: usize = 128;

/// Turns one barcode line (from `lines` framing) into a [`TerminalEvent::ReceiptScan`].
///
/// A scan is rejected when it is empty, longer than [`MAX_SCAN_LEN`] characters, contains control
/// characters (a scanner in the wrong keyboard mode) or looks like card data (a card scanned by
/// mistake), so that only plausible receipt ids reach the refund lookup.
pub fn scan_event(line: &str) -> Result<Inbound, EventError> {
    let invalid = |reason| EventError::InvalidField { field: "receipt_id".to_owned(), reason };
    let receipt_id = line.trim();
    if receipt_id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if receipt_id.chars().count() > MAX_SCAN_LEN {
        return Err(invalid("longer than 128 characters"));
    }
    if receipt_id.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    if crate::pan::holds_card_data(receipt_id) {
        return Err(invalid("looks like card data"));
    }
    Ok(Inbound { seq: None, event: TerminalEvent::ReceiptScan { receipt_id: receipt_id.to_owned() } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans() {
        let inbound = scan_event("  RCP-2025-001 ").expect("valid scan");
        let expected = TerminalEvent::ReceiptScan { receipt_id: "RCP-2025-001".into() };
        assert_eq!(inbound, Inbound { seq: None, event: expected });
        assert!(scan_event(&"R".repeat(MAX_SCAN_LEN)).is_ok());
        let too_long = "R".repeat(MAX_SCAN_LEN + 1);
        for bad in ["", "   ", "RCP\u{7}1", too_long.as_str(), "4111111111111111", ";4111111111111111=2512?"]
        {
            let err = scan_event(bad).expect_err("scan must be rejected");
            assert_eq!((err.code(), err.field()), ("invalid_field", Some("receipt_id")), "{bad:?}");
        }
    }
}
