//! Fuzzes the control API's bodies as the server reads them: `POST /v1/receipts` JSON →
//! `SaleInput` → `Sale::from_input`, and `POST /v1/refunds` JSON → `RefundDraft` →
//! `normalized` → `validate` against that sale (or none), under fuzzer-chosen limits and facts.
//!
//! Input: two flags bytes (limits, then facts, see `policy_and_facts`), then the receipt JSON, a
//! `0x00` byte and the refund JSON. Without a `0x00` the rest is the refund JSON and there is no
//! sale.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use refund_agent::manager::Approval;
use refund_agent::money::Currency;
use refund_agent::refund::{
    validate, CurrencyLimits, DayTotal, Facts, Policy, RefundDraft, RefundId, RefundLine, ValidRefund,
};
use refund_agent::sale::{CardRef, Sale, SaleInput};
use refund_agent::terminal::pci;
use rust_decimal::Decimal;

fuzz_target!(|data: &[u8]| {
    let [limit_flags, fact_flags, rest @ ..] = data else {
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
    let (policy, facts) = policy_and_facts(*limit_flags, *fact_flags, &draft, sale);
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

/// The limits byte: bits 0..=2 set `max_refund`, `max_pending_total` and `max_queue_len`, bit 3
/// `allow_unlinked`, bits 4..=6 the three velocity limits, and bit 7 keeps every currency but
/// the default one without limits (so such refunds are refused). The facts byte: bits 0..=2
/// pick the sale's earlier refunds, bits 3..=5 the undelivered total, bit 6 fills the queue and
/// bit 7 gives the day's earlier refunds (and a part of the sale's tax and discount refunded).
fn policy_and_facts(
    limit_flags: u8,
    fact_flags: u8,
    draft: &RefundDraft,
    sale: Option<Sale>,
) -> (Policy, Facts) {
    let bit = |flags: u8, n: u8| flags & (1 << n) != 0;
    let dec = |s: &str| s.parse::<Decimal>().expect("a constant amount");
    let usd: Currency = "USD".parse().expect("USD is known");
    let amounts = CurrencyLimits {
        max_refund: bit(limit_flags, 0).then(|| dec("50.00")),
        max_pending_total: bit(limit_flags, 1).then(|| dec("200.00")),
        max_refunds_per_operator_per_day: bit(limit_flags, 4).then_some(3),
        max_amount_per_operator_per_day: bit(limit_flags, 5).then(|| dec("100.00")),
        max_amount_per_till_per_day: bit(limit_flags, 6).then(|| dec("300.00")),
    };
    // Limits are per currency: the same numbers are configured for every currency the input
    // names (the sale's and the draft's), unless bit 7 leaves all but the default without any.
    let mut limits = HashMap::from([(usd, amounts.clone())]);
    if !bit(limit_flags, 7) {
        let named = draft.currency.as_deref().and_then(|c| c.parse::<Currency>().ok());
        for cur in sale.as_ref().map(|s| s.currency).into_iter().chain(named) {
            limits.insert(cur, amounts.clone());
        }
    }
    let policy = Policy {
        terminal_id: "till-fuzz".into(),
        default_currency: usd,
        limits,
        max_queue_len: bit(limit_flags, 2).then_some(10),
        allow_unlinked: bit(limit_flags, 3),
    };
    let earlier = bit(fact_flags, 7);
    let day =
        |amount: &str| if earlier { DayTotal { count: 3, amount: dec(amount) } } else { DayTotal::default() };
    let facts = Facts {
        sale,
        refunded_before: dec(AMOUNTS[usize::from(fact_flags & 7)]),
        tax_refunded_before: if earlier { dec("1.00") } else { Decimal::ZERO },
        discount_refunded_before: if earlier { dec("0.01") } else { Decimal::ZERO },
        // What earlier refunds took of each line stays empty: the fuzzer's sale has no earlier
        // itemized refunds to take from, and `refunded_before` still bounds every amount.
        lines_before: Default::default(),
        pending_in_currency: dec(AMOUNTS[usize::from((fact_flags >> 3) & 7)]),
        queue_len: if bit(fact_flags, 6) { 10 } else { 3 },
        // The server verifies a draft's approval request before the transaction; the fuzzer
        // cannot know a PIN, so it models that check as passed for every request presented.
        approval: draft
            .manager_approval
            .as_ref()
            .map(|a| Approval { manager: a.manager.clone(), approved_at_ms: 1_700_000_000_000 }),
        operator_day: day("99.99"),
        till_day: day("250.00"),
    };
    (policy, facts)
}

/// A refund's amount in minor units (5.00 USD → 500), as the queue stores it for SQL sums, or
/// `None` if it is not a whole number of minor units or does not fit.
fn minor_units(refund: &ValidRefund) -> Option<i64> {
    let scaled = refund.amount * Decimal::from(10i64.checked_pow(refund.currency.minor_units())?);
    if !scaled.fract().is_zero() {
        return None;
    }
    i64::try_from(scaled.trunc()).ok()
}

/// Every rule of SPEC section 5 holds for an accepted refund.
fn check_valid(draft: &RefundDraft, facts: &Facts, policy: &Policy, refund: &ValidRefund) {
    let cur = refund.currency;
    check_amount(cur, refund.amount, false);
    for part in [refund.tax, refund.discount].into_iter().flatten() {
        check_amount(cur, part, true);
    }
    assert!(minor_units(refund).is_some(), "an accepted amount has no minor-unit form");
    for part in [refund.tax, refund.discount].into_iter().flatten() {
        assert!(part <= refund.amount, "a tax or discount above the refund accepted");
    }
    // Only the approval verified before the transaction counts, never the draft's request.
    assert_eq!(refund.approval, facts.approval, "the refund's approval is not the verified one");
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
            let left = |of_sale: Option<Decimal>, before: Decimal| {
                (of_sale.unwrap_or_default() - before).max(Decimal::ZERO)
            };
            if let Some(tax) = refund.tax {
                assert!(tax <= left(sale.tax, facts.tax_refunded_before), "more tax than the sale has left");
            }
            if let Some(discount) = refund.discount {
                let rest = left(sale.discount, facts.discount_refunded_before);
                assert!(discount <= rest, "more discount than the sale has left");
            }
            // An itemized refund's figures are its lines' sums, each line one of the sale's.
            if !refund.lines.is_empty() {
                let sum = |f: fn(&RefundLine) -> Decimal| refund.lines.iter().map(f).sum::<Decimal>();
                assert_eq!(sum(|l| l.priced.amount), refund.amount, "lines do not add up to the amount");
                assert_eq!(Some(sum(|l| l.priced.tax)), refund.tax, "lines do not add up to the tax");
                assert_eq!(
                    Some(sum(|l| l.priced.discount)),
                    refund.discount,
                    "lines do not add up to the discount"
                );
                for l in &refund.lines {
                    let sold = (l.priced.line as usize).checked_sub(1).and_then(|i| sale.items.get(i));
                    assert!(sold.is_some_and(|i| l.priced.quantity >= 1 && l.priced.quantity <= i.quantity));
                }
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
    // Limits are per currency: a refund in a currency without any is refused.
    let limits = policy.limits.get(&cur).expect("a refund in a currency without limits was accepted");
    if let Some(max) = limits.max_refund {
        assert!(refund.amount <= max || refund.approval.is_some(), "above max_refund unapproved");
    }
    if let Some(cap) = limits.max_pending_total {
        assert!(facts.pending_in_currency + refund.amount <= cap, "exposure cap passed");
    }
    if refund.approval.is_none() {
        if let Some(max) = limits.max_refunds_per_operator_per_day {
            assert!(facts.operator_day.count < max, "operator's daily count passed unapproved");
        }
        let day_caps = [
            (limits.max_amount_per_operator_per_day, facts.operator_day),
            (limits.max_amount_per_till_per_day, facts.till_day),
        ];
        for (max, used) in day_caps {
            if let Some(max) = max {
                assert!(used.amount + refund.amount <= max, "a daily amount limit passed unapproved");
            }
        }
    }
    if let Some(max) = policy.max_queue_len {
        assert!(facts.queue_len < max, "full queue accepted a refund");
    }
    assert!(!refund.reason.trim().is_empty() && !refund.operator.trim().is_empty());
    // The refund is sealed and stored as JSON: reading it back must give the same refund.
    let stored = serde_json::to_string(refund).expect("a refund serializes");
    assert_eq!(&serde_json::from_str::<ValidRefund>(&stored).expect("a stored refund reads back"), refund);
}
