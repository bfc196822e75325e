//! Human-readable printing of API answers.

use crate::control::api::StatusBody;
use crate::queue::RefundView;

/// One line per refund.
pub fn refund_table(refunds: &[RefundView]) -> String {
    let mut out = format!(
        "{:<36}  {:<11}  {:>12}  {:<16}  {:<20}  DELIVERIES\n",
        "ID", "STATE", "AMOUNT", "RECEIPT", "CREATED"
    );
    for r in refunds {
        let deliveries: Vec<String> =
            r.deliveries.iter().map(|d| format!("{}:{}", d.destination, d.state)).collect();
        out.push_str(&format!(
            "{:<36}  {:<11}  {:>12}  {:<16}  {:<20}  {}\n",
            r.id,
            r.state,
            format!("{} {}", r.amount, r.currency),
            r.receipt_id.as_deref().unwrap_or("-"),
            r.created_at.get(..19).unwrap_or(&r.created_at),
            deliveries.join(" ")
        ));
    }
    if refunds.is_empty() {
        out.push_str("(no refunds)\n");
    }
    out
}

/// A refund in full.
pub fn refund_detail(r: &RefundView) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<17} {v}\n"));
    line(&mut out, "Refund", &r.id);
    line(&mut out, "State", r.state.as_str());
    if let Some(q) = &r.quarantine_reason {
        line(&mut out, "Quarantined", q);
    }
    line(&mut out, "Amount", &format!("{} {}", r.amount, r.currency));
    line(&mut out, "Receipt", r.receipt_id.as_deref().unwrap_or("-"));
    line(&mut out, "Transaction", r.transaction_id.as_deref().unwrap_or("-"));
    line(&mut out, "Reason", &r.reason);
    line(&mut out, "Operator", &r.operator);
    if let Some(m) = &r.manager_approval {
        line(&mut out, "Manager approval", &format!("{} at {}", m.manager, m.approved_at));
    }
    if r.unlinked {
        line(&mut out, "Unlinked", "yes (original sale not in the ledger)");
    }
    if let Some(b) = &r.balance_after {
        line(&mut out, "Balance after", &format!("{b} {}", r.currency));
    }
    line(&mut out, "Created", &r.created_at);
    out.push_str("Deliveries:\n");
    for d in &r.deliveries {
        out.push_str(&format!("  {:<12} {:<10} attempts={}", d.destination, d.state, d.attempts));
        if let Some(id) = &d.remote_id {
            out.push_str(&format!(" remote_id={id}"));
        }
        if let Some(at) = &d.next_attempt_at {
            out.push_str(&format!(" next_attempt={at}"));
        }
        out.push('\n');
        if let Some(e) = &d.last_error {
            out.push_str(&format!("               last error: {e}\n"));
        }
    }
    if let Some(audit) = r.audit.as_ref().filter(|a| !a.is_empty()) {
        out.push_str("Audit:\n");
        for a in audit {
            out.push_str(&format!(
                "  #{:<6} {} {:<8} by {} via {}: {}\n",
                a.seq,
                a.at,
                a.action,
                a.actor,
                a.caller.as_deref().unwrap_or("(not recorded)"),
                a.detail
            ));
        }
    }
    out
}

/// The status summary.
pub fn status(s: &StatusBody) -> String {
    let mut out = format!("refund-agent {} on {} (up {}s)\n", s.version, s.terminal_id, s.uptime_s);
    let counts: Vec<String> =
        s.queue.refunds.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
    out.push_str(&format!(
        "Refunds:      {}\n",
        if counts.is_empty() { "none".into() } else { counts.join(" ") }
    ));
    if s.queue.quarantined > 0 {
        out.push_str(&format!(
            "QUARANTINED:  {} (seal did not verify; see `refunds list --state quarantined`)\n",
            s.queue.quarantined
        ));
    }
    if s.queue.audit.broken {
        out.push_str(&format!(
            "AUDIT LOG:    ALTERED outside the agent ({}); refunds are still sent, see `doctor`\n",
            s.queue.audit.problem.as_deref().unwrap_or("no detail")
        ));
    }
    if s.queue.file.damaged {
        out.push_str(&format!(
            "QUEUE FILE:   DAMAGED, nothing is sent until it is restored from a backup ({})\n",
            s.queue.file.problem.as_deref().unwrap_or("no detail")
        ));
    }
    if s.queue.storage.failing {
        out.push_str(&format!(
            "STORAGE:      FAILING, new refunds are refused ({})\n",
            s.queue.storage.last_error.as_deref().unwrap_or("no detail")
        ));
    }
    if let Some(age) = s.queue.oldest_pending_age_s {
        out.push_str(&format!("Oldest open:  {age}s\n"));
    }
    for (c, a) in &s.queue.pending_amount {
        out.push_str(&format!("Pending:      {a} {c}\n"));
    }
    out.push_str(&format!("Last sync:    {}\n", s.queue.last_delivered_at.as_deref().unwrap_or("never")));
    if let Some(t) = &s.terminal {
        let link = if t.connected { "connected" } else { "DISCONNECTED (reopening with backoff)" };
        out.push_str(&format!(
            "Terminal:     {} ({}) {link}, {} reconnects, {} events, {} dropped\n",
            t.device, t.framing, t.reconnects, t.frames_ok, t.frames_dropped
        ));
        if let Some(e) = t.last_error.as_deref().filter(|_| !t.connected) {
            out.push_str(&format!("              last error: {e}\n"));
        }
    }
    let mut names: Vec<&String> = s.destinations.keys().collect();
    names.sort();
    for name in names {
        let h = &s.destinations[name];
        out.push_str(&format!("Destination {name}: {}", h.connectivity));
        if let Some(ms) = h.clock_offset_ms.filter(|ms| ms.abs() >= 2000) {
            out.push_str(&format!(", its clock is {:+}s from ours", ms / 1000));
        }
        if h.consecutive_failures > 0 {
            out.push_str(&format!(", {} failures in a row", h.consecutive_failures));
        }
        if let Some(e) = &h.last_error {
            out.push_str(&format!(", last error: {e}"));
        }
        out.push('\n');
    }
    out
}

/// A receipt from the ledger (`GET /v1/receipts/{id}`): its totals, then one row per line.
pub fn receipt(r: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let currency = text(&r["currency"]);
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<19} {v}\n"));
    field(&mut out, "Receipt", text(&r["receipt_id"]));
    field(&mut out, "Transaction", text(&r["transaction_id"]));
    field(&mut out, "Total", format!("{} {currency}", text(&r["total"])));
    field(&mut out, "Refunded", format!("{} {currency}", text(&r["refunded_amount"])));
    field(&mut out, "  still waiting", format!("{} {currency}", text(&r["waiting_amount"])));
    field(&mut out, "Refundable balance", format!("{} {currency}", text(&r["refundable_balance"])));
    out.push_str(&format!(
        "\n{:>4}  {:<24}  {:>4}  {:>8}  {:>7}  {:>10}  {:>12}\n",
        "LINE", "ITEM", "SOLD", "REFUNDED", "WAITING", "REFUNDABLE", "AMOUNT LEFT"
    ));
    let items = r["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    for item in items {
        let n = |k: &str| item[k].as_u64().map_or("-".to_string(), |n| n.to_string());
        let name: String = text(&item["name"]).chars().take(24).collect();
        out.push_str(&format!(
            "{:>4}  {:<24}  {:>4}  {:>8}  {:>7}  {:>10}  {:>12}\n",
            n("line"),
            name,
            n("quantity"),
            n("refunded_quantity"),
            n("waiting_quantity"),
            n("refundable_quantity"),
            text(&item["refundable_amount"])
        ));
    }
    if items.is_empty() {
        out.push_str("(the receipt lists no items: refunds are by amount)\n");
    }
    out
}
