//! A card gateway sandbox (seed 002): `POST /payment/{id}/refund` with a Bearer token. It knows
//! the original payments (captured amount and order subtotal) and enforces the seed's rules:
//! no refund of an unknown payment, cumulative refunds no larger than the captured amount, and
//! without `order.tax` / `order.discounts` no refund above the order subtotal. An allowed refund
//! is `Approved` with a new transaction id; a refused one is `Declined` with a reason.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::server::{Fault, FaultMix, Faults, Switchable};

/// The first refund transaction id handed out (the seed's example refund of payment 882 is 883).
const FIRST_ID: u64 = 883;

/// One request as the sandbox saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub path: String,
    pub payment_id: String,
    pub external_id: Option<String>,
    pub status: u16,
    /// `Approved` or `Declined` for a processed refund.
    pub outcome: Option<String>,
    pub at: Instant,
    /// The fault that struck the request, if any.
    pub fault: Option<Fault>,
}

/// An original payment.
#[derive(Debug, Clone, Copy)]
struct Payment {
    captured: Decimal,
    subtotal: Decimal,
    refunded: Decimal,
}

#[derive(Debug)]
struct Store {
    payments: HashMap<String, Payment>,
    refunds: Vec<Value>,
    seen: Vec<Seen>,
    next_id: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store { payments: HashMap::new(), refunds: Vec::new(), seen: Vec::new(), next_id: FIRST_ID }
    }
}

#[derive(Debug, Clone)]
struct Shared {
    token: String,
    store: Arc<Mutex<Store>>,
    faults: Faults,
    release: Arc<tokio::sync::Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running card gateway sandbox.
#[derive(Debug)]
pub struct GatewaySandbox {
    server: Switchable,
    shared: Shared,
}

impl GatewaySandbox {
    /// Starts the sandbox on an ephemeral loopback port, accepting Bearer `token`.
    pub async fn start(token: &str) -> std::io::Result<GatewaySandbox> {
        let shared = Shared {
            token: token.to_string(),
            store: Arc::default(),
            faults: Faults::default(),
            release: Arc::default(),
        };
        let app = Router::new().route("/payment/{id}/refund", post(refund)).with_state(shared.clone());
        let server = Switchable::start(app, shared.release.clone()).await?;
        Ok(GatewaySandbox { server, shared })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn go_offline(&self) {
        self.server.go_offline().await
    }

    pub async fn go_online(&self) -> std::io::Result<()> {
        self.server.go_online().await
    }

    /// Queues `fault` for the next `times` requests.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.shared.faults.push(fault, times)
    }

    /// Strikes requests at random with `mix` from now on (reproducibly for `seed`); `None` stops.
    pub fn inject_randomly(&self, seed: u64, mix: Option<FaultMix>) {
        self.shared.faults.randomly(seed, mix)
    }

    /// Registers an original payment: what was captured and the order's subtotal.
    pub fn add_payment(&self, id: &str, captured: Decimal, subtotal: Decimal) {
        self.shared
            .lock()
            .payments
            .insert(id.to_string(), Payment { captured, subtotal, refunded: Decimal::ZERO });
    }

    /// The approved refund records, in order.
    pub fn refunds(&self) -> Vec<Value> {
        self.shared.lock().refunds.clone()
    }

    /// How much of a payment has been refunded.
    pub fn refunded(&self, payment_id: &str) -> Option<Decimal> {
        self.shared.lock().payments.get(payment_id).map(|p| p.refunded)
    }

    /// Every request that reached the handler.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "status": status.as_u16(), "message": message }))).into_response()
}

/// An amount as the seed shows it (`"1.99"`) or as a number.
fn amount_of(v: Option<&Value>) -> Option<Decimal> {
    let text = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, "0"));
    let plain = !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| Decimal::from_str(&text).ok()).flatten()
}

/// The answer to a well-formed refund of a known payment: the new transaction record, with
/// `status.status` `Approved` or `Declined`.
fn decide(store: &mut Store, payment_id: &str, body: &Value) -> Result<Value, (StatusCode, String)> {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string());
    if !body.is_object() {
        return Err(bad("Body must be a JSON object"));
    }
    let terminal = body
        .pointer("/terminal/id")
        .and_then(Value::as_i64)
        .ok_or((StatusCode::UNPROCESSABLE_ENTITY, "terminal.id is required".to_string()))?;
    let amount = amount_of(body.get("amount"))
        .filter(|a| *a > Decimal::ZERO)
        .ok_or_else(|| bad("amount must be a positive decimal"))?;
    let order = body.get("order").filter(|o| !o.is_null());
    let breakdown = ["tax", "discounts"].map(|f| order.and_then(|o| o.get(f)).filter(|v| !v.is_null()));
    for value in breakdown.iter().flatten() {
        if amount_of(Some(value)).is_none() {
            return Err(bad("order.tax and order.discounts must be decimal amounts"));
        }
    }
    let payment = store
        .payments
        .get_mut(payment_id)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("Payment {payment_id} not found")))?;
    let reason = if payment.refunded + amount > payment.captured {
        Some(format!(
            "Refund amount exceeds the captured amount of the original transaction ({} captured, {} already refunded)",
            payment.captured, payment.refunded
        ))
    } else if breakdown.iter().all(Option::is_none) && amount > payment.subtotal {
        Some(format!(
            "Refund amount exceeds the order subtotal of {} and no order.tax/order.discounts were given",
            payment.subtotal
        ))
    } else {
        None
    };
    if reason.is_none() {
        payment.refunded += amount;
    }
    let id = store.next_id;
    store.next_id += 1;
    let record = json!({
        "id": id,
        "amount": amount.to_string(),
        "origin": "API",
        "type": "Return",
        "parent": { "id": payment_id.parse::<u64>().map_or(json!(payment_id), |n| json!(n)) },
        "terminal": { "id": terminal },
        "externalId": body.get("externalId").cloned().unwrap_or(Value::Null),
        "order": order.cloned().unwrap_or(Value::Null),
        "status": {
            "status": if reason.is_none() { "Approved" } else { "Declined" },
            "reason": reason,
        },
        "createdOn": crate::clock::rfc3339(crate::clock::now_ms()),
    });
    if record["status"]["status"] == "Approved" {
        store.refunds.push(record.clone());
    }
    Ok(record)
}

async fn refund(
    State(s): State<Shared>,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = s.faults.next();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let record = |status: StatusCode, outcome: Option<&str>| Seen {
        path: format!("/payment/{payment_id}/refund"),
        payment_id: payment_id.clone(),
        external_id: parsed
            .as_ref()
            .and_then(|v| v.get("externalId"))
            .and_then(Value::as_str)
            .map(str::to_string),
        status: status.as_u16(),
        outcome: outcome.map(str::to_string),
        at: Instant::now(),
        fault: fault.clone(),
    };
    if fault.as_ref().is_some_and(Fault::is_unprocessed) {
        s.lock().seen.push(record(StatusCode::SERVICE_UNAVAILABLE, None));
    }
    if let Some(r) = super::server::unprocessed(&s.release, &fault).await {
        return r;
    }
    if let Some(Fault::Status(code, retry_after)) = fault {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        s.lock().seen.push(record(status, None));
        let mut r = error(status, "Injected failure");
        if let Some(secs) = retry_after {
            r.headers_mut().insert("retry-after", secs.into());
        }
        return r;
    }
    let bearer =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(s.token.as_str()) {
        s.lock().seen.push(record(StatusCode::UNAUTHORIZED, None));
        return error(StatusCode::UNAUTHORIZED, "Invalid or missing bearer token");
    }
    let response = {
        let mut store = s.lock();
        let answer = match &parsed {
            Some(body) => decide(&mut store, &payment_id, body),
            None => Err((StatusCode::BAD_REQUEST, "Body must be valid JSON".to_string())),
        };
        match answer {
            Ok(record_json) => {
                let outcome = record_json["status"]["status"].as_str().map(str::to_string);
                store.seen.push(record(StatusCode::OK, outcome.as_deref()));
                (StatusCode::OK, Json(record_json)).into_response()
            }
            Err((status, message)) => {
                store.seen.push(record(status, None));
                return error(status, &message);
            }
        }
    };
    super::server::finish(&s.release, fault, response).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let mut s = Store::default();
        s.payments.insert(
            "882".into(),
            Payment {
                captured: Decimal::new(10000, 2),
                subtotal: Decimal::new(9000, 2),
                refunded: Decimal::ZERO,
            },
        );
        s
    }

    fn status(r: &Result<Value, (StatusCode, String)>) -> String {
        match r {
            Ok(v) => v["status"]["status"].as_str().unwrap_or("?").to_string(),
            Err((s, _)) => s.as_u16().to_string(),
        }
    }

    #[test]
    fn the_seed_rules() {
        let mut s = store();
        let body = |amount: &str, order: Value| json!({"amount": amount, "terminal": {"id": 24}, "externalId": "x", "order": order});
        assert_eq!(status(&decide(&mut s, "1", &body("5.00", Value::Null))), "404");
        assert_eq!(status(&decide(&mut s, "882", &json!({"amount": "5.00"}))), "422");
        assert_eq!(status(&decide(&mut s, "882", &body("-1", Value::Null))), "400");
        // Above the subtotal without a breakdown; allowed with one.
        assert_eq!(status(&decide(&mut s, "882", &body("95.00", Value::Null))), "Declined");
        let ok = decide(&mut s, "882", &body("95.00", json!({"tax": "9.50"})));
        assert_eq!(status(&ok), "Approved");
        assert_eq!(ok.unwrap()["id"], FIRST_ID + 1);
        // Cumulative refunds stay within the captured amount.
        assert_eq!(status(&decide(&mut s, "882", &body("5.01", Value::Null))), "Declined");
        assert_eq!(status(&decide(&mut s, "882", &body("5.00", Value::Null))), "Approved");
        assert_eq!(s.refunds.len(), 2);
        assert_eq!(s.payments["882"].refunded, Decimal::new(10000, 2));
    }
}
