//! Serving the control API. Handlers only translate HTTP to queue calls and back; every decision
//! is made in `refund/` and `queue/`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use super::api::{ApiError, DestinationHealthBody, StatusBody};
use super::decisions;
use super::listen::Caller;
use crate::destinations::clock::ClockOffset;
use crate::lock::lock;
use crate::manager::{Approval, ApprovalRequest, Approver, Refusal};
use crate::queue::{QueueError, QueueHandle, ViewState};
use crate::refund::{RefundDraft, RefundId, RejectCode, Rejection};
use crate::sale::SaleInput;
use crate::sync::Health;

/// The largest request body accepted; a refund or a receipt is a few KiB.
pub const MAX_BODY: usize = 256 * 1024;
/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub queue: QueueHandle,
    pub wake: Arc<Notify>,
    pub health: Health,
    /// Each destination's measured clock offset.
    pub clocks: HashMap<String, ClockOffset>,
    pub started: Instant,
    pub terminal_id: String,
    /// Checks manager approvals (PINs, lock-outs).
    pub approver: Approver,
    /// The terminal's link status, when `[terminal]` is configured (a serial line or a ZVT
    /// terminal).
    pub terminal: Option<crate::terminal::device::SharedStatus>,
    /// The ZVT terminal that reads the card of a refund asking `read_card`.
    pub card_reader: Option<crate::terminal::ecr::owner::EcrHandle>,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/refunds", post(create_refund).get(list_refunds))
        .route("/v1/refunds/{id}", get(show_refund))
        .route("/v1/refunds/{id}/retry", post(decisions::retry_refund))
        .route("/v1/refunds/{id}/cancel", post(decisions::cancel_refund))
        .route("/v1/refunds/{id}/resolve", post(decisions::resolve_refund))
        .route("/v1/receipts", post(add_receipt))
        .route("/v1/receipts/{id}", get(show_receipt))
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Binds the control socket: removes a stale socket file (refusing if another agent answers on
/// it), then sets mode 0660 and the configured group.
pub async fn bind_socket(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent is already listening on {}", path.display()),
            ));
        }
        fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other(format!("control.socket_group: no group named {group:?}")))?
            .gid;
        std::os::unix::fs::chown(path, None, Some(gid.as_raw()))?;
    }
    Ok(listener)
}

/// An error answer.
#[derive(Debug)]
pub struct Failure(pub(super) StatusCode, pub(super) ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub(super) fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
    Failure(status, ApiError { code: code.into(), message: message.into() })
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        let status = match r.code {
            RejectCode::InvalidRequest => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        failure(status, r.code.as_str(), r.message)
    }
}

impl From<QueueError> for Failure {
    fn from(e: QueueError) -> Self {
        let status = match e {
            QueueError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            QueueError::Conflict(_) => StatusCode::CONFLICT,
            QueueError::NotFound(_) => StatusCode::NOT_FOUND,
            QueueError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::InvalidTransition(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "control API request failed");
        }
        failure(status, e.code(), e.to_string())
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        if let Refusal::Queue(e) = r {
            return Failure::from(e);
        }
        let status = match &r {
            Refusal::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        };
        failure(status, r.code(), r.to_string())
    }
}

/// Verifies the approval a body carries (`None` when it carries none).
async fn approve(s: &AppState, request: Option<&ApprovalRequest>) -> Result<Option<Approval>, Failure> {
    match request {
        Some(request) => Ok(Some(s.approver.approve(request).await?)),
        None => Ok(None),
    }
}

/// Parses a body that may carry `manager_approval`: any shape but `{"manager", "pin"}` is
/// refused with its own code before the body is read into `T`.
pub(super) fn parse_approved<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    let value: serde_json::Value = parse_json(body)?;
    crate::manager::check_shape(&value)
        .map_err(|m| failure(StatusCode::BAD_REQUEST, "malformed_manager_approval", m))?;
    parse_json(body)
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    // serde's message can quote a value of the body (`invalid type: integer 4111…`): masked,
    // so a card number sent in the wrong place is not echoed back.
    serde_json::from_slice(body).map_err(|e| {
        let message = format!("invalid JSON body: {e}");
        failure(StatusCode::BAD_REQUEST, "invalid_request", crate::pan::mask_text(&message).into_owned())
    })
}

async fn create_refund(
    State(s): State<AppState>,
    Extension(peer): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().filter(|k| {
                !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
            });
            let k = k.ok_or_else(|| {
                failure(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
                )
            })?;
            Some(format!("api:{k}"))
        }
    };
    let mut draft: RefundDraft = parse_approved(&body)?;
    // Before the approval: a PIN is not spent on a refund whose card is not read.
    super::card::read_card(&s, &mut draft).await?;
    let approval = approve(&s, draft.manager_approval.as_ref()).await?;
    let created = s.queue.create_approved(draft, key, approval, peer.audit()).await??;
    if created.replayed {
        return Ok((StatusCode::OK, Json(created.refund)).into_response());
    }
    #[cfg(feature = "fault-injection")]
    crash_after_commit_if_asked();
    s.wake.notify_one();
    tracing::info!(
        refund_id = %created.refund.id,
        amount = %created.refund.amount,
        currency = %created.refund.currency,
        peer_uid = peer.uid(),
        peer_pid = peer.pid(),
        peer = %peer,
        "refund queued"
    );
    Ok((StatusCode::CREATED, Json(created.refund)).into_response())
}

/// The refund id named by a path. Only the form the agent writes names a refund (as when the
/// path was looked up as text), so anything else is answered as an unknown id.
pub(super) fn refund_id(id: &str) -> Option<RefundId> {
    id.parse::<RefundId>().ok().filter(|parsed| parsed.to_string() == id)
}

/// A path that names no refund, answered as the queue answers an unknown id.
pub(super) fn unknown_refund(id: &str) -> Failure {
    Failure::from(QueueError::NotFound(format!("refund {id}")))
}

async fn show_refund(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Response, Failure> {
    let found = match refund_id(&id) {
        Some(refund_id) => s.queue.refund(refund_id).await?,
        None => None,
    };
    match found {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(failure(StatusCode::NOT_FOUND, "not_found", format!("no refund with id {id}"))),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
}

/// A query string that does not parse is answered like every other refusal: 400 with the JSON
/// error body, not axum's plain-text rejection.
fn list_query(query: Result<Query<ListQuery>, QueryRejection>) -> Result<ListQuery, Failure> {
    query.map(|Query(q)| q).map_err(|e| failure(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))
}

async fn list_refunds(
    State(s): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let q = list_query(query)?;
    let state = q
        .state
        .as_deref()
        .map(str::parse::<ViewState>)
        .transpose()
        .map_err(|e| failure(StatusCode::BAD_REQUEST, "invalid_request", e))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(s.queue.list(state, limit).await?).into_response())
}

async fn add_receipt(State(s): State<AppState>, body: Bytes) -> Result<Response, Failure> {
    let input: SaleInput = parse_json(&body)?;
    let added = s.queue.add_sale(input).await??;
    let status = if added.replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(added.sale)).into_response())
}

async fn show_receipt(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Response, Failure> {
    match s.queue.receipt(id.clone()).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => {
            Err(failure(StatusCode::NOT_FOUND, "not_found", format!("no receipt {id} in the sales ledger")))
        }
    }
}

async fn status(State(s): State<AppState>) -> Result<Response, Failure> {
    Ok(Json(status_body(&s).await?).into_response())
}

/// What `GET /v1/status` shows; `GET /metrics` renders the same figures.
async fn status_body(s: &AppState) -> Result<StatusBody, QueueError> {
    let queue = s.queue.status().await?;
    let destinations = lock(&s.health)
        .iter()
        .map(|(k, v)| {
            let mut body: DestinationHealthBody = v.clone().into();
            body.clock_offset_ms = s.clocks.get(k).and_then(ClockOffset::offset_ms);
            (k.clone(), body)
        })
        .collect();
    Ok(StatusBody {
        version: env!("CARGO_PKG_VERSION").into(),
        terminal_id: s.terminal_id.clone(),
        uptime_s: s.started.elapsed().as_secs(),
        started_at_s: crate::clock::started_at_ms() / 1000,
        queue,
        destinations,
        terminal: s.terminal.as_ref().map(crate::terminal::snapshot),
    })
}

/// `GET /metrics`: the status figures in the Prometheus text format (see `metrics.rs`).
async fn metrics(State(s): State<AppState>) -> Result<Response, Failure> {
    let body = status_body(&s).await?;
    let retries = Some(body.queue.delivery_retries);
    let headers = [(axum::http::header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)];
    Ok((headers, super::metrics::render(&body, retries)).into_response())
}

/// Liveness: the queue owner answers. Still 200 while writes fail (a full disk): the agent
/// runs, serves reads and stores again by itself when space returns, so restarting it would
/// not help; the body says `degraded` and why.
async fn healthz(State(s): State<AppState>) -> Result<Response, Failure> {
    s.queue.ping().await?;
    let storage = s.queue.storage();
    if storage.failing {
        let body = serde_json::json!({"status": "degraded", "storage_error": storage.last_error});
        return Ok(Json(body).into_response());
    }
    Ok(Json(serde_json::json!({"status": "ok"})).into_response())
}

/// Test hook: dies like `kill -9` right after a refund was committed and before its answer is
/// written, the window in which a naive client retry would make a second refund.
#[cfg(feature = "fault-injection")]
fn crash_after_commit_if_asked() {
    if std::env::var_os("REFUND_AGENT_FAULT_KILL_AFTER_COMMIT").is_some() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(uri: &str) -> Result<ListQuery, Failure> {
        list_query(Query::try_from_uri(&uri.parse().expect("a valid URI")))
    }

    #[test]
    fn a_bad_query_string_is_a_json_400() {
        for uri in ["/v1/refunds?state=queued&state=failed", "/v1/refunds?limit=ten"] {
            let Err(Failure(status, error)) = list(uri) else {
                panic!("{uri} must be refused");
            };
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(error.code, "invalid_request", "{uri}");
            let response = Failure(status, error).into_response();
            assert_eq!(response.headers()["content-type"], "application/json", "{uri}");
        }
        let q = list("/v1/refunds?state=queued&limit=5").unwrap_or_else(|_| panic!("a good query parses"));
        assert_eq!((q.state.as_deref(), q.limit), (Some("queued"), Some(5)));
    }
}
