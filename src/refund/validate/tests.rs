use super::*;
use crate::sale::tests::example_sale;
use std::str::FromStr;

/// A refund of `draft` against the example sale, validated without limits: the fixture the
/// connectors' request-building tests start from.
pub(crate) fn valid_against_example_sale(draft: RefundDraft) -> ValidRefund {
    let policy = Policy { limits: usd(None, None), max_queue_len: None, ..policy() };
    let facts = Facts { sale: Some(example_sale()), ..Facts::default() };
    validate(&draft, &facts, &policy, RefundId::new(), 0).expect("the fixture draft is valid")
}

/// A cashier's draft for the example sale's receipt.
pub(crate) fn example_draft(amount: &str) -> RefundDraft {
    RefundDraft {
        receipt_id: Some("RCP-2025-001".into()),
        amount: Some(amount.into()),
        reason: "Customer returned item".into(),
        operator: "emp_42".into(),
        ..RefundDraft::default()
    }
}

fn usd(max_refund: Option<Decimal>, max_pending_total: Option<Decimal>) -> HashMap<Currency, CurrencyLimits> {
    HashMap::from([(
        "USD".parse().unwrap(),
        CurrencyLimits { max_refund, max_pending_total, ..CurrencyLimits::default() },
    )])
}

fn policy() -> Policy {
    Policy {
        terminal_id: "till-01".into(),
        default_currency: "USD".parse().unwrap(),
        limits: usd(Some(Decimal::from(50)), Some(Decimal::from(200))),
        max_queue_len: Some(10),
        allow_unlinked: false,
    }
}

fn draft(amount: &str) -> RefundDraft {
    RefundDraft {
        receipt_id: Some("RCP-2025-001".into()),
        amount: Some(amount.into()),
        reason: "returned".into(),
        operator: "emp_42".into(),
        ..RefundDraft::default()
    }
}

fn facts() -> Facts {
    Facts { sale: Some(example_sale()), ..Facts::default() }
}

fn code(d: &RefundDraft, f: &Facts, p: &Policy) -> RejectCode {
    validate(d, f, p, RefundId::new(), 0).unwrap_err().code
}

fn request(manager: &str) -> crate::manager::ApprovalRequest {
    crate::manager::ApprovalRequest { manager: manager.into(), pin: crate::manager::Pin::new("1234") }
}

fn approval(manager: &str) -> Approval {
    Approval { manager: manager.into(), approved_at_ms: 42 }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

#[test]
fn a_good_refund_carries_the_sale_and_balance() {
    let r = validate(&draft("5"), &facts(), &policy(), RefundId::new(), 7).unwrap();
    assert_eq!(r.currency.format(r.amount), "5.00");
    assert_eq!(r.balance_after, Some(dec("95.00")));
    assert_eq!(r.transaction_id.as_deref(), Some("txn_123"));
    assert!(!r.unlinked);
}

#[test]
fn bad_amounts_are_invalid_amount() {
    for bad in ["1e3", "-5", "0.001", "abc", "0"] {
        assert_eq!(code(&draft(bad), &facts(), &policy()), RejectCode::InvalidAmount, "{bad}");
    }
}

#[test]
fn cumulative_refunds_stay_within_the_captured_total() {
    let f = Facts { refunded_before: dec("97.00"), ..facts() };
    let err = validate(&draft("5.00"), &f, &policy(), RefundId::new(), 0).unwrap_err();
    assert_eq!(err.code, RejectCode::OverRefund);
    assert_eq!(err.message, "refundable balance is 3.00 USD");
    assert!(validate(&draft("3.00"), &f, &policy(), RefundId::new(), 0).is_ok());
}

#[test]
fn without_breakdown_the_subtotal_caps_the_amount() {
    let p = Policy { limits: usd(None, Some(Decimal::from(200))), ..policy() };
    assert_eq!(code(&draft("95.00"), &facts(), &p), RejectCode::OverSubtotal);
    let with_tax = RefundDraft { tax: Some("5.00".into()), ..draft("95.00") };
    assert!(validate(&with_tax, &facts(), &p, RefundId::new(), 0).is_ok());
}

#[test]
fn large_refunds_need_a_manager() {
    assert_eq!(code(&draft("60.00"), &facts(), &policy()), RejectCode::ManagerApprovalRequired);
    // An approval request alone (not verified) does not count.
    let asked = RefundDraft { manager_approval: Some(request("mgr_1")), ..draft("60.00") };
    assert_eq!(code(&asked, &facts(), &policy()), RejectCode::ManagerApprovalRequired);
    let f = Facts { approval: Some(approval("mgr_1")), ..facts() };
    let r = validate(&asked, &f, &policy(), RefundId::new(), 0).unwrap();
    assert_eq!(r.approval, Some(approval("mgr_1")));
}

#[test]
fn exposure_cap_and_queue_length() {
    let f = Facts { pending_in_currency: dec("199.00"), ..facts() };
    assert_eq!(code(&draft("5.00"), &f, &policy()), RejectCode::ExposureCap);
    let f = Facts { queue_len: 10, ..facts() };
    assert_eq!(code(&draft("5.00"), &f, &policy()), RejectCode::QueueFull);
}

#[test]
fn unknown_sales_need_config_and_a_manager() {
    let none = Facts::default();
    assert_eq!(code(&draft("5.00"), &none, &policy()), RejectCode::UnknownSale);
    let p = Policy { allow_unlinked: true, ..policy() };
    assert_eq!(code(&draft("5.00"), &none, &p), RejectCode::ManagerApprovalRequired);
    let asked = RefundDraft { manager_approval: Some(request("mgr")), ..draft("5.00") };
    assert_eq!(code(&asked, &none, &p), RejectCode::ManagerApprovalRequired);
    let approved = Facts { approval: Some(approval("mgr")), ..Facts::default() };
    let r = validate(&asked, &approved, &p, RefundId::new(), 0).unwrap();
    assert!(r.unlinked);
    assert_eq!(r.currency.code(), "USD");
}

#[test]
fn card_and_currency_must_match_the_sale() {
    let wrong_card = RefundDraft { masked_pan: Some("411111******1111".into()), ..draft("5") };
    assert_eq!(code(&wrong_card, &facts(), &policy()), RejectCode::CardMismatch);
    let right_card = RefundDraft { masked_pan: Some("************2257".into()), ..draft("5") };
    assert!(validate(&right_card, &facts(), &policy(), RefundId::new(), 0).is_ok());
    let eur = RefundDraft { currency: Some("EUR".into()), ..draft("5") };
    assert_eq!(code(&eur, &facts(), &policy()), RejectCode::CurrencyMismatch);
}

#[test]
fn tax_and_discount_are_bounded_by_the_refund_and_the_sale() {
    let p = Policy { limits: usd(None, None), ..policy() };
    let with = |amount: &str, tax: Option<&str>, discount: Option<&str>| RefundDraft {
        tax: tax.map(Into::into),
        discount: discount.map(Into::into),
        ..draft(amount)
    };
    // More tax than the refund itself: the 1.00 refund with 9.00 tax.
    let err = validate(&with("1.00", Some("9.00"), None), &facts(), &p, RefundId::new(), 0).unwrap_err();
    assert_eq!(err.code, RejectCode::InvalidAmount);
    assert!(err.message.contains("more than the refund amount"), "{}", err.message);
    // The sale's tax is 10.00 and its discount 0.00.
    assert_eq!(code(&with("20.00", Some("10.01"), None), &facts(), &p), RejectCode::InvalidAmount);
    assert!(validate(&with("20.00", Some("10.00"), None), &facts(), &p, RefundId::new(), 0).is_ok());
    assert_eq!(code(&with("20.00", None, Some("0.01")), &facts(), &p), RejectCode::InvalidAmount);
    assert!(validate(&with("20.00", Some("0"), Some("0")), &facts(), &p, RefundId::new(), 0).is_ok());
    // What earlier refunds took of the tax is no longer there.
    let f = Facts { tax_refunded_before: dec("8.00"), refunded_before: dec("40.00"), ..facts() };
    let err = validate(&with("20.00", Some("2.01"), None), &f, &p, RefundId::new(), 0).unwrap_err();
    assert_eq!(
        err.message,
        "field `tax`: 2.01 USD is more than the 2.00 USD of the sale's tax not yet refunded"
    );
    assert!(validate(&with("20.00", Some("2.00"), None), &f, &p, RefundId::new(), 0).is_ok());
}

#[test]
fn limits_are_per_currency() {
    // A KWD refund must not pass a limit written for USD (499.999 < 500.00).
    let mut kwd_sale = example_sale();
    kwd_sale.currency = "KWD".parse().unwrap();
    let f = Facts { sale: Some(kwd_sale), ..facts() };
    let p = Policy { limits: usd(Some(dec("500.00")), None), ..policy() };
    let err = validate(&draft("4.999"), &f, &p, RefundId::new(), 0).unwrap_err();
    assert_eq!(err.code, RejectCode::NoLimitsForCurrency);
    assert!(err.message.contains("[limits.KWD]"), "{}", err.message);
    let mut limits = usd(Some(dec("500.00")), None);
    limits.insert(
        "KWD".parse().unwrap(),
        CurrencyLimits { max_refund: Some(dec("2.000")), ..CurrencyLimits::default() },
    );
    let p = Policy { limits, ..policy() };
    assert_eq!(code(&draft("4.999"), &f, &p), RejectCode::ManagerApprovalRequired);
    assert!(validate(&draft("1.999"), &f, &p, RefundId::new(), 0).is_ok());
}
