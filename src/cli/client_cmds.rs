//! Commands that talk to a running agent through the control socket.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::exit;
use super::output;
use super::{CreateArgs, ReceiptCmd, RefundsCmd};
use crate::control::client::{Answer, ClientError, ControlClient};
use crate::control::ApiError;
use crate::manager::{ApprovalRequest, Pin};
use crate::queue::RefundView;
use crate::refund::RefundDraft;
use zeroize::Zeroize;

/// Prints an error answer and picks the exit code.
fn refused(answer: &Answer) -> u8 {
    match serde_json::from_slice::<ApiError>(&answer.body) {
        Ok(e) => eprintln!("refused ({}): {}", e.code, e.message),
        Err(_) => eprintln!("refused: HTTP {}: {}", answer.status, String::from_utf8_lossy(&answer.body)),
    }
    match answer.status {
        404 => exit::NOT_FOUND,
        400..=499 => exit::REFUSED,
        _ => exit::ERROR,
    }
}

fn unreachable(e: &ClientError) -> u8 {
    eprintln!("error: {e}");
    exit::UNREACHABLE
}

fn print_json(body: &[u8]) {
    println!("{}", String::from_utf8_lossy(body));
}

/// Prints a successful answer as JSON (`--json`) or through `render`, or the refusal; returns
/// the exit code.
fn show<T: serde::de::DeserializeOwned>(answer: &Answer, json: bool, render: impl Fn(&T) -> String) -> u8 {
    if !(200..300).contains(&answer.status) {
        return refused(answer);
    }
    if json {
        print_json(&answer.body);
        return exit::OK;
    }
    match serde_json::from_slice::<T>(&answer.body) {
        Ok(v) => {
            print!("{}", render(&v));
            exit::OK
        }
        Err(e) => {
            eprintln!("error: unexpected answer: {e}");
            exit::ERROR
        }
    }
}

/// Refuses, before sending anything, a refund id that cannot be one.
fn check_id(id: &str) -> Result<(), u8> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(());
    }
    eprintln!("error: {id:?} is not a refund id");
    Err(exit::USAGE)
}

async fn get(client: &ControlClient, path: &str) -> Result<Answer, u8> {
    client.request("GET", path, None, &[]).await.map_err(|e| unreachable(&e))
}

pub async fn status(client: &ControlClient, json: bool) -> u8 {
    match get(client, "/v1/status").await {
        Ok(a) => show(&a, json, output::status),
        Err(code) => code,
    }
}

/// The least `refund create --read-card` waits for the agent's answer: the terminal's card
/// timeout with a margin for its answer.
const READ_CARD_WAIT: Duration =
    Duration::from_secs(crate::terminal::ecr::owner::READ_CARD_TIMEOUT_S as u64 + 15);

/// `refund create`: sends the refund with an idempotency key, and resends with the same key
/// when the answer is lost, so a retry can never make a second refund.
pub async fn create(client: &ControlClient, args: CreateArgs) -> u8 {
    let manager_approval = match args.manager.map(approval).transpose() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let draft = RefundDraft {
        receipt_id: args.receipt,
        original_transaction_id: args.transaction,
        amount: args.amount,
        currency: args.currency,
        reason: args.reason,
        operator: args.operator,
        tax: args.tax,
        discount: args.discount,
        manager_approval,
        masked_pan: args.card,
        lines: args.lines,
        read_card: args.read_card,
    };
    let body = match serde_json::to_vec(&draft) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ERROR;
        }
    };
    let key = args.idempotency_key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // The agent answers a card read only once the customer presented the card (or the terminal
    // gave up); a shorter wait would resend the request and ask for the card again.
    let longer;
    let client = if args.read_card && client.timeout() < READ_CARD_WAIT {
        longer = client.clone().with_timeout(READ_CARD_WAIT);
        &longer
    } else {
        client
    };
    let mut wait = Duration::from_millis(200);
    let mut tries = 0;
    let answer = loop {
        match client.request("POST", "/v1/refunds", Some(body.clone()), &[("idempotency-key", &key)]).await {
            Ok(a) if a.status == 503 && tries < args.retries => {}
            Ok(a) => break a,
            Err(e) if tries < args.retries => {
                let what = if e.not_sent() { "agent not reachable" } else { "answer lost" };
                eprintln!("{what}; retrying with the same idempotency key {key} ({e})");
            }
            Err(e) => {
                eprintln!("the refund may or may not have been queued; run again with --idempotency-key {key} to find out safely");
                return unreachable(&e);
            }
        }
        tries += 1;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    };
    if !(200..300).contains(&answer.status) {
        return refused(&answer);
    }
    if args.json {
        print_json(&answer.body);
        return exit::OK;
    }
    match serde_json::from_slice::<RefundView>(&answer.body) {
        Ok(r) => {
            let verb = if answer.status == 200 { "already existed (same idempotency key)" } else { "queued" };
            println!("Refund {} {verb}: {} {} (state {}).", r.id, r.amount, r.currency, r.state);
            let dests: Vec<String> =
                r.deliveries.iter().map(|d| format!("{} ({})", d.destination, d.state)).collect();
            println!("Deliveries: {}", dests.join(", "));
            exit::OK
        }
        Err(e) => {
            eprintln!("error: unexpected answer: {e}");
            exit::ERROR
        }
    }
}

pub async fn refunds(client: &ControlClient, cmd: RefundsCmd) -> u8 {
    match cmd {
        RefundsCmd::List { state, limit, json } => {
            let mut path = format!("/v1/refunds?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            match get(client, &path).await {
                Ok(a) => show(&a, json, |list: &Vec<RefundView>| output::refund_table(list)),
                Err(code) => code,
            }
        }
        RefundsCmd::Retry { id, operator, manager, json } => {
            let body = serde_json::json!({ "operator": operator });
            manual(client, &id, "retry", body, &manager, json).await
        }
        RefundsCmd::Cancel { id, operator, manager, reason, json } => {
            let body = serde_json::json!({ "operator": operator, "reason": reason });
            manual(client, &id, "cancel", body, &manager, json).await
        }
        RefundsCmd::Resolve { id, delivered, not_delivered: _, destination, operator, manager, json } => {
            let outcome = if delivered { "delivered" } else { "not_delivered" };
            let body =
                serde_json::json!({ "operator": operator, "outcome": outcome, "destination": destination });
            manual(client, &id, "resolve", body, &manager, json).await
        }
        RefundsCmd::Show { id, json } => {
            if let Err(code) = check_id(&id) {
                return code;
            }
            match get(client, &format!("/v1/refunds/{id}")).await {
                Ok(a) => show(&a, json, output::refund_detail),
                Err(code) => code,
            }
        }
    }
}

/// `refunds retry|cancel|resolve`: a manager's decision, audit-logged by the agent.
async fn manual(
    client: &ControlClient,
    id: &str,
    action: &str,
    mut body: serde_json::Value,
    manager: &str,
    json: bool,
) -> u8 {
    if let Err(code) = check_id(id) {
        return code;
    }
    let approval = match approval(manager.to_string()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match serde_json::to_value(&approval) {
        Ok(a) => body["manager_approval"] = a,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ERROR;
        }
    }
    let path = format!("/v1/refunds/{id}/{action}");
    match client.request("POST", &path, Some(body.to_string().into_bytes()), &[]).await {
        Ok(a) => show(&a, json, output::refund_detail),
        Err(e) => unreachable(&e),
    }
}

/// The manager's approval: the id given, the PIN read from stdin (one line, no echo needed:
/// it comes from a keypad program or a person typing).
fn approval(manager: String) -> Result<ApprovalRequest, u8> {
    match read_pin() {
        Ok(pin) => Ok(ApprovalRequest { manager, pin }),
        Err(message) => {
            eprintln!("error: {message}");
            Err(exit::USAGE)
        }
    }
}

/// Reads one line from stdin as a PIN, without its line ending.
pub fn read_pin() -> Result<Pin, String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the PIN from stdin: {e}"))?;
    let pin = Pin::new(line.trim_end_matches(['\n', '\r']));
    line.zeroize();
    if pin.expose().is_empty() {
        return Err("no PIN on stdin (write the manager's PIN, one line)".into());
    }
    Ok(pin)
}

/// `manager hash-pin`: the PIN from stdin, the managers-file line on stdout.
pub fn hash_pin(manager: &str) -> u8 {
    if let Err(e) = crate::manager::file::check_id(manager) {
        eprintln!("error: --manager: {e}");
        return exit::USAGE;
    }
    let pin = match read_pin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    match crate::manager::hash_pin(&pin) {
        Ok(hash) => {
            println!("{manager} {hash}");
            exit::OK
        }
        Err(e @ crate::manager::ManagersError::BadPin(_)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::ERROR
        }
    }
}

pub async fn receipt(client: &ControlClient, cmd: ReceiptCmd) -> u8 {
    let (file, json) = match cmd {
        ReceiptCmd::Add { file, json } => (file, json),
        ReceiptCmd::Show { id, json } => {
            return match get(client, &format!("/v1/receipts/{}", path_segment(&id))).await {
                Ok(a) => show(&a, json, output::receipt),
                Err(code) => code,
            };
        }
    };
    let body = match read_input(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return exit::USAGE;
        }
    };
    let answer = match client.request("POST", "/v1/receipts", Some(body), &[]).await {
        Ok(a) => a,
        Err(e) => return unreachable(&e),
    };
    if !(200..300).contains(&answer.status) {
        return refused(&answer);
    }
    if json {
        print_json(&answer.body);
    } else {
        let verb = if answer.status == 200 { "was already in the ledger" } else { "added to the ledger" };
        let id = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["receipt_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        println!("Receipt {id} {verb}.");
    }
    exit::OK
}

/// Percent-encodes `text` as one URL path segment: a receipt id is the cashier's text and may
/// hold `/`, `?`, `#` or spaces.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        return Ok(buf);
    }
    std::fs::read(path)
}
