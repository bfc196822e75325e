//! A Final POS sandbox (seeds 000, 001, 003): `POST/GET /v1/api/refunds`,
//! `POST /v1/api/transactions`, `x-api-key` auth, `{statusCode, message, error}` errors,
//! required `lineItems[].productId`/`variantId`, and `409 Conflict` on a known `externalId`.
//! Like a back office that keeps its books straight, it refuses (400) a refund whose line
//! totals do not add up to its `summary.total`, and a `refundedBy` (or a transaction's
//! `employee`) that is not the id of one of its users ([`FinalPosSandbox::add_user`]).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::lock::lock;

use super::core::{Core, Fault, Injector, Struck};

/// One request as the sandbox saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub path: String,
    pub external_id: Option<String>,
    pub status: u16,
    /// The fault that struck the request, if any (`status` is 0 when it was never answered).
    pub fault: Option<Fault>,
}

#[derive(Debug, Default)]
struct Store {
    /// The Final POS user ids `refundedBy` and `employee` may hold.
    users: Vec<String>,
    refunds: Vec<Value>,
    transactions: Vec<Value>,
    seen: Vec<Seen>,
}

#[derive(Debug, Clone)]
struct Shared {
    api_key: String,
    store: Arc<Mutex<Store>>,
    faults: Injector,
}

/// A running Final POS sandbox.
#[derive(Debug)]
pub struct FinalPosSandbox {
    core: Core,
    shared: Shared,
}

impl FinalPosSandbox {
    /// Starts the sandbox on an ephemeral loopback port, accepting `api_key`.
    pub async fn start(api_key: &str) -> std::io::Result<FinalPosSandbox> {
        let shared =
            Shared { api_key: api_key.to_string(), store: Arc::default(), faults: Injector::default() };
        let app = Router::new()
            .route("/v1/api/refunds", post(create_refund))
            .route("/v1/api/refunds/{id}", get(get_refund))
            .route("/v1/api/transactions", post(create_transaction))
            .with_state(shared.clone());
        let core = Core::start(app, &shared.faults).await?;
        Ok(FinalPosSandbox { core, shared })
    }

    /// Makes `id` a Final POS user, so records may name it in `refundedBy` / `employee`.
    pub fn add_user(&self, id: &str) {
        lock(&self.shared.store).users.push(id.to_string());
    }

    /// The refund records created, in order.
    pub fn refunds(&self) -> Vec<Value> {
        lock(&self.shared.store).refunds.clone()
    }

    /// The transaction records created, in order.
    pub fn transactions(&self) -> Vec<Value> {
        lock(&self.shared.store).transactions.clone()
    }

    /// Every request that reached a handler.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.store).seen.clone()
    }
}

super::core::reach_core!(FinalPosSandbox);

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    (status, Json(body)).into_response()
}

/// The status an injected fault is recorded with: 0 when the request was never answered.
fn seen_status(struck: Struck) -> u16 {
    match struck {
        Struck::Unanswered => 0,
        Struck::Status(status) => status.as_u16(),
    }
}

/// Checks auth and parses the body, or gives the error answer.
fn admit(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Value, Box<Response>> {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(shared.api_key.as_str()) {
        return Err(Box::new(error(StatusCode::UNAUTHORIZED, "Invalid or missing API key")));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &format!("Invalid JSON: {e}"))))
}

fn is_amount(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let (i, f) = s.split_once('.').unwrap_or((s, "0"));
        !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && f.bytes().all(|b| b.is_ascii_digit())
    })
}

fn decimal(v: &Value) -> Option<rust_decimal::Decimal> {
    v.as_str().filter(|_| is_amount(v)).and_then(|s| s.parse().ok())
}

/// A field that holds a Final POS user id must hold one of the users' ids.
fn check_user(store: &Store, body: &Value, field: &str) -> Result<(), String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_str().is_some_and(|id| store.users.iter().any(|u| u == id)) => Ok(()),
        Some(v) => {
            Err(format!("Validation failed: Field `{field}` must be the id of a user; {v} is not one."))
        }
    }
}

/// The line totals add up to `summary.total` (a refund without lines records an amount only).
fn check_lines_add_up(items: &[Value], body: &Value) -> Result<(), String> {
    if items.is_empty() {
        return Ok(());
    }
    let mut sum = rust_decimal::Decimal::ZERO;
    for item in items {
        for field in ["total", "subTotal", "price"] {
            if item.get(field).and_then(decimal).is_none() {
                return Err(format!(
                    "Validation failed: Field `lineItems.{field}` must be a decimal string."
                ));
            }
        }
        sum += item.get("total").and_then(decimal).unwrap_or_default();
    }
    let total = body.get("summary").and_then(|s| s.get("total")).and_then(decimal);
    if total != Some(sum) {
        return Err(format!(
            "Validation failed: the line items total {sum}, not the summary total {}.",
            total.map_or("(none)".into(), |t| t.to_string())
        ));
    }
    Ok(())
}

fn validate_refund(body: &Value) -> Result<(), String> {
    let items = body
        .get("lineItems")
        .and_then(Value::as_array)
        .ok_or("Validation failed: Field `lineItems` is required.")?;
    for item in items {
        for field in ["productId", "variantId"] {
            if item.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(format!("Validation failed: Field `lineItems.{field}` is required."));
            }
        }
    }
    for field in ["currency", "externalId"] {
        if body.get(field).and_then(Value::as_str).is_none() {
            return Err(format!("Validation failed: Field `{field}` is required."));
        }
    }
    for field in ["total", "subTotal", "totalTaxes"] {
        if let Some(v) = body.get("summary").and_then(|s| s.get(field)) {
            if !is_amount(v) {
                return Err(format!("Validation failed: Field `summary.{field}` must be a decimal string."));
            }
        }
    }
    check_lines_add_up(items, body)
}

/// A request both `POST` handlers admitted and no fault ended early.
struct Arrived {
    body: Value,
    external_id: Option<String>,
    fault: Option<Fault>,
}

/// What both `POST` handlers do first: draw the fault, check auth and parse the body, then let a
/// fault that strikes before processing do so. `Err` is the answer already given.
async fn arrive(s: &Shared, path: &str, headers: &HeaderMap, body: &Bytes) -> Result<Arrived, Response> {
    let fault = s.faults.next();
    let body = admit(s, headers, body).map_err(|r| *r)?;
    let external_id = body.get("externalId").and_then(Value::as_str).map(str::to_string);
    let record = |struck| Seen {
        path: path.into(),
        external_id: external_id.clone(),
        status: seen_status(struck),
        fault: fault.clone(),
    };
    let injected = |status| error(status, "Injected failure");
    if let Some(r) =
        s.faults.before(&fault, |struck| lock(&s.store).seen.push(record(struck)), injected).await
    {
        return Err(r);
    }
    Ok(Arrived { body, external_id, fault })
}

async fn create_refund(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Arrived { body, external_id, fault } = match arrive(&s, "/v1/api/refunds", &headers, &body).await {
        Ok(arrived) => arrived,
        Err(r) => return r,
    };
    let record = |status: u16| Seen {
        path: "/v1/api/refunds".into(),
        external_id: external_id.clone(),
        status,
        fault: fault.clone(),
    };
    let response = {
        let mut store = lock(&s.store);
        if let Err(m) = validate_refund(&body).and_then(|()| check_user(&store, &body, "refundedBy")) {
            store.seen.push(record(400));
            return error(StatusCode::BAD_REQUEST, &m);
        }
        if store.refunds.iter().any(|r| r["externalId"].as_str() == external_id.as_deref()) {
            store.seen.push(record(409));
            return error(StatusCode::CONFLICT, "A refund with this externalId already exists");
        }
        let mut created = body.clone();
        created["id"] = json!(format!("fp_rfd_{}", store.refunds.len() + 1));
        created["createdAt"] = json!(crate::clock::rfc3339(crate::clock::now_ms()));
        store.refunds.push(created.clone());
        store.seen.push(record(201));
        (StatusCode::CREATED, Json(created)).into_response()
    };
    s.faults.after(fault, response).await
}

async fn get_refund(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(s.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Invalid or missing API key");
    }
    let store = lock(&s.store);
    match store.refunds.iter().find(|r| r["id"] == id.as_str()) {
        Some(r) => Json(r.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "The resource was not found."),
    }
}

async fn create_transaction(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Arrived { body, external_id, fault } = match arrive(&s, "/v1/api/transactions", &headers, &body).await
    {
        Ok(arrived) => arrived,
        Err(r) => return r,
    };
    let record = |status: u16| Seen {
        path: "/v1/api/transactions".into(),
        external_id: external_id.clone(),
        status,
        fault: fault.clone(),
    };
    let response = {
        let mut store = lock(&s.store);
        if body.get("type").and_then(Value::as_str) != Some("refund")
            && body.get("type").is_some_and(|t| t != "sale")
        {
            store.seen.push(record(400));
            return error(StatusCode::BAD_REQUEST, "Validation failed: Field `type` is invalid.");
        }
        if let Err(m) = check_user(&store, &body, "employee") {
            store.seen.push(record(400));
            return error(StatusCode::BAD_REQUEST, &m);
        }
        if !body.get("amount").is_some_and(is_amount) {
            store.seen.push(record(400));
            return error(
                StatusCode::BAD_REQUEST,
                "Validation failed: Field `amount` must be a decimal string.",
            );
        }
        if external_id.is_some()
            && store.transactions.iter().any(|t| t["externalId"].as_str() == external_id.as_deref())
        {
            store.seen.push(record(409));
            return error(StatusCode::CONFLICT, "A transaction with this externalId already exists");
        }
        let mut created = body.clone();
        created["id"] = json!(format!("fp_txn_{}", store.transactions.len() + 1));
        store.transactions.push(created.clone());
        store.seen.push(record(201));
        (StatusCode::CREATED, Json(created)).into_response()
    };
    s.faults.after(fault, response).await
}
