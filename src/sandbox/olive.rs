//! An Olive POS sandbox (seed 004): `POST /api/v1/pos/refund` with HMAC authentication. It
//! recomputes the signature over the exact path and body it received, refuses a timestamp more
//! than five minutes from its own clock (which a test may set wrong, to play a server whose
//! clock differs from the till's), stamps every answer with a `Date` header from that clock,
//! and applies the refund rules a real POS would: unknown transactions (`404 TXN_NOT_FOUND`),
//! bad or excessive amounts (`400 INVALID_AMOUNT`) and fully refunded transactions
//! (`400 ALREADY_REFUNDED`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::lock::lock;

use super::core::{Core, Fault, Injector, Struck};

/// How far a signed timestamp may be from the server's clock.
pub const SIGNATURE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// One request as the sandbox saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub path: String,
    pub original_transaction_id: Option<String>,
    /// The `X-Timestamp` the request was signed with.
    pub timestamp: Option<String>,
    pub status: u16,
    /// Olive's error code, for an error answer.
    pub code: Option<String>,
    pub at: Instant,
    /// The fault that struck the request, if any.
    pub fault: Option<Fault>,
}

/// What Olive knows of an original transaction.
#[derive(Debug, Clone, Copy)]
struct Txn {
    captured: Decimal,
    refunded: Decimal,
}

#[derive(Debug, Default)]
struct Store {
    transactions: HashMap<String, Txn>,
    refunds: Vec<Value>,
    seen: Vec<Seen>,
}

#[derive(Debug, Clone)]
struct Shared {
    api_key_id: String,
    secret: Arc<Vec<u8>>,
    store: Arc<Mutex<Store>>,
    faults: Injector,
    /// The server's clock minus the real time, in seconds.
    clock_offset_secs: Arc<AtomicI64>,
    /// When set, the key may authenticate but not refund (403).
    forbidden: Arc<AtomicBool>,
}

impl Shared {
    fn now(&self) -> SystemTime {
        let offset = self.clock_offset_secs.load(Ordering::Relaxed);
        let magnitude = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + magnitude
        } else {
            SystemTime::now() - magnitude
        }
    }
}

/// A running Olive sandbox.
#[derive(Debug)]
pub struct OliveSandbox {
    core: Core,
    shared: Shared,
}

impl OliveSandbox {
    /// Starts the sandbox on an ephemeral loopback port, accepting `api_key_id` signed with
    /// `secret`.
    pub async fn start(api_key_id: &str, secret: &[u8]) -> std::io::Result<OliveSandbox> {
        let shared = Shared {
            api_key_id: api_key_id.to_string(),
            secret: Arc::new(secret.to_vec()),
            store: Arc::default(),
            faults: Injector::default(),
            clock_offset_secs: Arc::default(),
            forbidden: Arc::default(),
        };
        let app = Router::new()
            .route("/api/v1/pos/refund", post(refund))
            .layer(axum::middleware::map_response_with_state(shared.clone(), stamp_date))
            .with_state(shared.clone());
        let core = Core::start(app, &shared.faults).await?;
        Ok(OliveSandbox { core, shared })
    }

    /// Registers an original transaction that may be refunded up to `captured`.
    pub fn add_transaction(&self, id: &str, captured: Decimal) {
        lock(&self.shared.store)
            .transactions
            .insert(id.to_string(), Txn { captured, refunded: Decimal::ZERO });
    }

    /// Sets the server's clock `secs` ahead of the real time (negative: behind), as when the
    /// till's clock is that far behind the server's.
    pub fn set_clock_offset(&self, secs: i64) {
        self.shared.clock_offset_secs.store(secs, Ordering::Relaxed);
    }

    /// Makes the API key lose (or regain) its permission to refund: `403`.
    pub fn forbid_refunds(&self, forbidden: bool) {
        self.shared.forbidden.store(forbidden, Ordering::Relaxed);
    }

    /// The refunds made, in order.
    pub fn refunds(&self) -> Vec<Value> {
        lock(&self.shared.store).refunds.clone()
    }

    /// How much of a transaction has been refunded.
    pub fn refunded(&self, transaction_id: &str) -> Option<Decimal> {
        lock(&self.shared.store).transactions.get(transaction_id).map(|t| t.refunded)
    }

    /// Every request that reached the handler.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.store).seen.clone()
    }
}

super::core::reach_core!(OliveSandbox);

/// Every answer carries the server's (possibly wrong) clock, as real servers do.
async fn stamp_date(State(s): State<Shared>, mut response: Response) -> Response {
    // A fault may have set a `Date` of its own (one far off); it stays.
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(s.now())) {
        response.headers_mut().entry(axum::http::header::DATE).or_insert(v);
    }
    response
}

/// Olive's error body: `{"success": false, "error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "success": false,
        "error": { "code": code, "message": message },
    });
    (status, Json(body)).into_response()
}

/// A refused request: status, Olive's code, message.
type Refusal = (StatusCode, &'static str, String);

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the key id, the timestamp window and the signature over the path and raw body.
fn authenticate(s: &Shared, path: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    let unauthorized = |code, message: String| (StatusCode::UNAUTHORIZED, code, message);
    if header(headers, "x-api-key-id") != Some(s.api_key_id.as_str()) {
        return Err(unauthorized("INVALID_API_KEY", "Missing or unknown X-API-Key-ID".into()));
    }
    let timestamp = header(headers, "x-timestamp").unwrap_or_default();
    let signed_at = OffsetDateTime::parse(timestamp, &Rfc3339).map_err(|_| {
        unauthorized("INVALID_TIMESTAMP", format!("X-Timestamp {timestamp:?} is not an RFC 3339 time"))
    })?;
    let now = OffsetDateTime::from(s.now());
    if (now - signed_at).unsigned_abs() > SIGNATURE_WINDOW {
        return Err(unauthorized(
            "INVALID_TIMESTAMP",
            format!(
                "X-Timestamp {timestamp} is more than 5 minutes from the server time {}",
                now.format(&Rfc3339).unwrap_or_default()
            ),
        ));
    }
    let given = header(headers, "x-signature").and_then(|h| hex::decode(h).ok()).unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&s.secret)
        .map_err(|e| unauthorized("INVALID_SIGNATURE", e.to_string()))?;
    mac.update(format!("POST\n{path}\n{timestamp}\n").as_bytes());
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| unauthorized("INVALID_SIGNATURE", "X-Signature does not match the request".into()))
}

fn positive_amount(text: &str) -> Option<Decimal> {
    let (int, frac) = text.split_once('.').unwrap_or((text, "0"));
    let plain = !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| Decimal::from_str(text).ok()).flatten().filter(|a| *a > Decimal::ZERO)
}

/// Applies the refund to the store, or says why not.
fn process(store: &mut Store, body: Option<&Value>) -> Result<Value, Refusal> {
    let bad = |code, message: String| (StatusCode::BAD_REQUEST, code, message);
    let body = body
        .filter(|b| b.is_object())
        .ok_or_else(|| bad("VALIDATION_ERROR", "Body must be a JSON object".into()))?;
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| bad("VALIDATION_ERROR", format!("Field `{name}` is required")))
    };
    let txn_id = field("original_transaction_id")?;
    let amount_text = field("amount")?;
    let reason = field("reason")?;
    let initiated_by = field("initiated_by")?;
    let amount = positive_amount(amount_text).ok_or_else(|| {
        bad("INVALID_AMOUNT", format!("Amount {amount_text:?} must be a positive decimal like \"150.00\""))
    })?;
    let txn = store
        .transactions
        .get_mut(txn_id)
        .ok_or_else(|| (StatusCode::NOT_FOUND, "TXN_NOT_FOUND", format!("Transaction {txn_id} not found")))?;
    if txn.refunded >= txn.captured {
        return Err(bad("ALREADY_REFUNDED", format!("Transaction {txn_id} has already been fully refunded")));
    }
    let refundable = txn.captured - txn.refunded;
    if amount > refundable {
        return Err(bad(
            "INVALID_AMOUNT",
            format!("Amount {amount_text} exceeds the refundable balance of {refundable}"),
        ));
    }
    txn.refunded += amount;
    let id = format!("rfnd_{}", store.refunds.len() + 1);
    store.refunds.push(json!({
        "refund_transaction_id": id,
        "original_transaction_id": txn_id,
        "amount": amount_text,
        "reason": reason,
        "initiated_by": initiated_by,
    }));
    Ok(json!({
        "success": true,
        "message": "Refund processed successfully",
        "refund_transaction_id": id,
        "amount": amount_text,
    }))
}

async fn refund(State(s): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let fault = s.faults.next();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let record = |status: StatusCode, code: Option<&str>| Seen {
        path: uri.path().to_string(),
        original_transaction_id: parsed
            .as_ref()
            .and_then(|v| v.get("original_transaction_id"))
            .and_then(Value::as_str)
            .map(str::to_string),
        timestamp: header(&headers, "x-timestamp").map(str::to_string),
        status: status.as_u16(),
        code: code.map(str::to_string),
        at: Instant::now(),
        fault: fault.clone(),
    };
    let struck = |struck| {
        let (status, code) = match struck {
            Struck::Unanswered => (StatusCode::SERVICE_UNAVAILABLE, "UNANSWERED"),
            Struck::Status(status) => (status, "INJECTED"),
        };
        lock(&s.store).seen.push(record(status, Some(code)));
    };
    let injected = |status| error(status, "INJECTED", "Injected failure");
    if let Some(r) = s.faults.before(&fault, struck, injected).await {
        return r;
    }
    let checked = authenticate(&s, uri.path(), &headers, &body).and_then(|()| {
        if s.forbidden.load(Ordering::Relaxed) {
            return Err((
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "This API key is not permitted to issue refunds".into(),
            ));
        }
        Ok(())
    });
    let response = {
        let mut store = lock(&s.store);
        match checked.and_then(|()| process(&mut store, parsed.as_ref())) {
            Ok(answer) => {
                store.seen.push(record(StatusCode::OK, None));
                (StatusCode::OK, Json(answer)).into_response()
            }
            Err((status, code, message)) => {
                store.seen.push(record(status, Some(code)));
                return error(status, code, &message);
            }
        }
    };
    s.faults.after(fault, response).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_must_be_plain_positive_decimals() {
        assert_eq!(positive_amount("5.00"), Some(Decimal::new(500, 2)));
        assert_eq!(positive_amount("150"), Some(Decimal::new(150, 0)));
        for bad in ["", "0", "0.00", "-5", "1e3", ".5", "5.", "abc", "5,00"] {
            assert_eq!(positive_amount(bad), None, "{bad}");
        }
    }

    #[test]
    fn refund_rules() {
        let mut store = Store::default();
        store
            .transactions
            .insert("t1".into(), Txn { captured: Decimal::new(1000, 2), refunded: Decimal::ZERO });
        let body = |txn: &str, amount: &str| json!({"original_transaction_id": txn, "amount": amount, "reason": "r", "initiated_by": "o"});
        let code = |r: Result<Value, Refusal>| r.err().map(|(s, c, _)| (s.as_u16(), c));
        assert_eq!(code(process(&mut store, Some(&body("nope", "1.00")))), Some((404, "TXN_NOT_FOUND")));
        assert_eq!(code(process(&mut store, Some(&body("t1", "x")))), Some((400, "INVALID_AMOUNT")));
        assert_eq!(code(process(&mut store, Some(&body("t1", "10.01")))), Some((400, "INVALID_AMOUNT")));
        let ok = process(&mut store, Some(&body("t1", "10.00"))).unwrap();
        assert_eq!(ok["refund_transaction_id"], "rfnd_1");
        assert_eq!(code(process(&mut store, Some(&body("t1", "1.00")))), Some((400, "ALREADY_REFUNDED")));
        assert_eq!(code(process(&mut store, None)), Some((400, "VALIDATION_ERROR")));
    }
}
