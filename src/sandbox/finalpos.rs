//! A Final POS sandbox (seeds 000, 001, 003): `POST/GET /v1/api/refunds`,
//! `POST /v1/api/transactions`, `x-api-key` auth, `{statusCode, message, error}` errors,
//! required `lineItems[].productId`/`variantId`, and `409 Conflict` on a known `externalId`.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::server::{Fault, FaultMix, Faults, Switchable};

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
    refunds: Vec<Value>,
    transactions: Vec<Value>,
    seen: Vec<Seen>,
}

#[derive(Debug, Clone)]
struct Shared {
    api_key: String,
    store: Arc<Mutex<Store>>,
    faults: Faults,
    release: Arc<tokio::sync::Notify>,
}

/// A running Final POS sandbox.
#[derive(Debug)]
pub struct FinalPosSandbox {
    server: Switchable,
    shared: Shared,
}

impl FinalPosSandbox {
    /// Starts the sandbox on an ephemeral loopback port, accepting `api_key`.
    pub async fn start(api_key: &str) -> std::io::Result<FinalPosSandbox> {
        let shared = Shared {
            api_key: api_key.to_string(),
            store: Arc::default(),
            faults: Faults::default(),
            release: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/api/refunds", post(create_refund))
            .route("/v1/api/refunds/{id}", get(get_refund))
            .route("/v1/api/transactions", post(create_transaction))
            .with_state(shared.clone());
        let server = Switchable::start(app, shared.release.clone()).await?;
        Ok(FinalPosSandbox { server, shared })
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

    /// The refund records created, in order.
    pub fn refunds(&self) -> Vec<Value> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).refunds.clone()
    }

    /// The transaction records created, in order.
    pub fn transactions(&self) -> Vec<Value> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).transactions.clone()
    }

    /// Every request that reached a handler.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).seen.clone()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    (status, Json(body)).into_response()
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
    Ok(())
}

async fn create_refund(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = s.faults.next();
    let body = match admit(&s, &headers, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let external_id = body.get("externalId").and_then(Value::as_str).map(str::to_string);
    let record = |status: u16| Seen {
        path: "/v1/api/refunds".into(),
        external_id: external_id.clone(),
        status,
        fault: fault.clone(),
    };
    if fault.as_ref().is_some_and(Fault::is_unprocessed) {
        s.store.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record(0));
    }
    if let Some(r) = super::server::unprocessed(&s.release, &fault).await {
        return r;
    }
    if let Some(Fault::Status(code, retry_after)) = fault {
        s.store.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record(code));
        let mut r =
            error(StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "Injected failure");
        if let Some(secs) = retry_after {
            r.headers_mut().insert("retry-after", secs.into());
        }
        return r;
    }
    let response = {
        let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(m) = validate_refund(&body) {
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
    super::server::finish(&s.release, fault, response).await
}

async fn get_refund(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(s.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Invalid or missing API key");
    }
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.refunds.iter().find(|r| r["id"] == id.as_str()) {
        Some(r) => Json(r.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "The resource was not found."),
    }
}

async fn create_transaction(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = s.faults.next();
    let body = match admit(&s, &headers, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let external_id = body.get("externalId").and_then(Value::as_str).map(str::to_string);
    let record = |status: u16| Seen {
        path: "/v1/api/transactions".into(),
        external_id: external_id.clone(),
        status,
        fault: fault.clone(),
    };
    if fault.as_ref().is_some_and(Fault::is_unprocessed) {
        s.store.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record(0));
    }
    if let Some(r) = super::server::unprocessed(&s.release, &fault).await {
        return r;
    }
    if let Some(Fault::Status(code, retry_after)) = fault {
        s.store.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record(code));
        let mut r =
            error(StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "Injected failure");
        if let Some(secs) = retry_after {
            r.headers_mut().insert("retry-after", secs.into());
        }
        return r;
    }
    let response = {
        let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
        if body.get("type").and_then(Value::as_str) != Some("refund")
            && body.get("type").is_some_and(|t| t != "sale")
        {
            store.seen.push(record(400));
            return error(StatusCode::BAD_REQUEST, "Validation failed: Field `type` is invalid.");
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
    super::server::finish(&s.release, fault, response).await
}
