//! Fuzzes the control API's bodies as the server reads them: `POST /v1/receipts` JSON →
//! `SaleInput` → `Sale::from_input`, and `POST /v1/refunds` JSON → `RefundDraft` →
//! `normalized` → `validate` against that sale (or none), under fuzzer-chosen limits and facts.
//!
//! Input: one flags byte (limits and facts, see `policy_and_facts`), then the receipt JSON, a
//! `0x00` byte and the refund JSON. Without a `0x00` the rest is the refund JSON and there is no
//! sale.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refund_agent::money::Currency;
use refund_agent::queue::rows;
use refund_agent::refund::{validate, Facts, Policy, RefundDraft, RefundId, ValidRefund};
use refund_agent::sale::{CardRef, Sale, SaleInput};
use refund_agent::terminal::pci;
use rust_decimal::Decimal;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (receipt, refund) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let sale = receipt.and_then(check_receipt);
    let Ok(draft) = serde_json::from_slice::<RefundDraft>(refund) else {
        return;
    };
    let Ok(draft) = draft.normalized() else {
        return;
    };
    check_normalized(&draft);
    let (policy, facts) = policy_and_facts(flags, sale);
    match validate(&draft, &facts, &policy, RefundId::new(), 1_700_000_000_000) {
        Ok(refund) => check_valid(&draft, &facts, &policy, &refund),
        Err(rejection) => assert!(!rejection.message.is_empty() && !rejection.code.as_str().is_empty()),
    }
});

/// Parses and validates a receipt body; returns the sale when it is accepted.
fn check_receipt(bytes: &[u8]) -> Option<Sale> {
    let input: SaleInput = serde_json::from_slice(bytes).ok()?;
    let sale = Sale::from_input(input.clone()).ok()?;
    let cur = sale.currency;
    for amount in [Some(sale.total), Some(sale.subtotal), sale.tax, sale.discount]
        .into_iter()
        .flatten()
        .chain(sale.items.iter().flat_map(|i| [i.price, i.total]))
    {
        check_amount(cur, amount, true);
    }
    assert!(sale.subtotal <= sale.total || input.discount.is_some(), "subtotal above total accepted");
    assert!(!sale.receipt_id.trim().is_empty() && !sale.transaction_id.trim().is_empty());
    if let Some(card) = &sale.card {
        check_card(card);
    }
    // The sale is stored as JSON inside a sealed row: reading it back must give the same sale.
    let stored = serde_json::to_string(&sale).expect("a sale serializes");
    assert_eq!(serde_json::from_str::<Sale>(&stored).expect("a stored sale reads back"), sale);
    Some(sale)
}

fn check_card(card: &CardRef) {
    assert!(card.last4.len() == 4 && card.last4.bytes().all(|b| b.is_ascii_digit()));
    if let Some(bin) = &card.bin {
        assert!(bin.len() == 6 && bin.bytes().all(|b| b.is_ascii_digit()));
    }
    assert!(!pci::contains_pan(&card.masked()), "a masked card still holds a PAN");
}

/// An accepted amount: at the currency's scale, in range, and the text sent for it parses back
/// to the same value.
fn check_amount(cur: Currency, amount: Decimal, zero_allowed: bool) {
    assert!(amount > Decimal::ZERO || (zero_allowed && amount.is_zero()), "amount {amount} out of range");
    assert_eq!(amount.scale(), cur.minor_units(), "amount {amount} not at {cur}'s scale");
    let text = cur.format(amount);
    let back = if zero_allowed {
        refund_agent::money::parse_non_negative(&text, cur)
    } else {
        cur.parse_amount(&text)
    };
    assert_eq!(back, Ok(amount), "amount {amount} does not round-trip through {text:?}");
}

fn check_normalized(draft: &RefundDraft) {
    if let Some(pan) = &draft.masked_pan {
        assert!(!pci::contains_pan(pan), "a full PAN survived normalization");
    }
    // Normalizing twice changes nothing, so the idempotency fingerprint is stable.
    let again = draft.clone().normalized().expect("a normalized draft stays valid");
    assert_eq!(&again, draft);
    assert_eq!(again.fingerprint(), draft.fingerprint());
}

const AMOUNTS: [&str; 8] = ["0", "0.01", "50", "99.99", "100", "150", "1", "999999999999999"];

/// Bits 0..=3 pick the limits, bits 4..=7 the facts.
fn policy_and_facts(flags: u8, sale: Option<Sale>) -> (Policy, Facts) {
    let bit = |n: u8| flags & (1 << n) != 0;
    let dec = |s: &str| s.parse::<Decimal>().expect("a constant amount");
    let policy = Policy {
        terminal_id: "till-fuzz".into(),
        default_currency: "USD".parse().expect("USD is known"),
        max_refund: bit(0).then(|| dec("50.00")),
        max_pending_total: bit(1).then(|| dec("200.00")),
        max_queue_len: bit(2).then_some(10),
        allow_unlinked: bit(3),
    };
    let facts = Facts {
        sale,
        refunded_before: dec(AMOUNTS[usize::from((flags >> 4) & 7)]),
        pending_in_currency: dec(AMOUNTS[usize::from((flags >> 5) & 7)]),
        queue_len: if bit(7) { 10 } else { 3 },
    };
    (policy, facts)
}

/// Every rule of SPEC section 5 holds for an accepted refund.
fn check_valid(draft: &RefundDraft, facts: &Facts, policy: &Policy, refund: &ValidRefund) {
    let cur = refund.currency;
    check_amount(cur, refund.amount, false);
    for part in [refund.tax, refund.discount].into_iter().flatten() {
        check_amount(cur, part, true);
    }
    assert!(rows::minor_units(refund).is_some(), "an accepted amount has no minor-unit form");
    if let Some(asked) = &draft.currency {
        assert_eq!(asked.parse::<Currency>().ok(), Some(cur), "the refund changed currency");
    }
    match &facts.sale {
        Some(sale) => {
            assert_eq!(cur, sale.currency);
            assert!(!refund.unlinked);
            let refundable = sale.total - facts.refunded_before;
            assert!(refund.amount <= refundable, "over-refund accepted");
            assert_eq!(refund.balance_after, Some(refundable - refund.amount));
            // Lines (or a whole-balance refund) give the refund a breakdown the draft did not.
            if refund.tax.is_none() && refund.discount.is_none() {
                assert!(refund.amount <= sale.subtotal, "over-subtotal accepted");
            }
            if let (Some(card), Some(presented)) =
                (&sale.card, draft.masked_pan.as_deref().and_then(CardRef::from_pan_text))
            {
                assert_eq!(card.last4, presented.last4, "card mismatch accepted");
            }
        }
        None => {
            assert!(policy.allow_unlinked && refund.unlinked && refund.approval.is_some());
            assert_eq!(refund.balance_after, None);
        }
    }
    if let Some(max) = policy.max_refund {
        assert!(refund.amount <= max || refund.approval.is_some(), "above max_refund unapproved");
    }
    if let Some(cap) = policy.max_pending_total {
        assert!(facts.pending_in_currency + refund.amount <= cap, "exposure cap passed");
    }
    if let Some(max) = policy.max_queue_len {
        assert!(facts.queue_len < max, "full queue accepted a refund");
    }
    assert!(!refund.reason.trim().is_empty() && !refund.operator.trim().is_empty());
    // The refund is sealed and stored as JSON: reading it back must give the same refund.
    let stored = serde_json::to_string(refund).expect("a refund serializes");
    assert_eq!(&serde_json::from_str::<ValidRefund>(&stored).expect("a stored refund reads back"), refund);
}
