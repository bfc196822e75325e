//! The manual decisions of the control API: retry, cancel, resolve. Each is a manager's: the
//! body carries `manager_approval`, verified like a refund's (403 / 429 on a wrong PIN or a
//! locked manager, 400 `manager_approval_required` without one), and the queue's audit row
//! names the manager and the caller it came through.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::listen::Caller;
use super::server::{failure, parse_approved, refund_id, unknown_refund, AppState, Failure};
use crate::manager::{Approval, ApprovalRequest};
use crate::queue::Resolution;
use crate::refund::RejectCode;

/// The body of the manual actions: who decides, and for cancel/resolve what.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualAction {
    operator: String,
    #[serde(default)]
    reason: Option<String>,
    /// `delivered` or `not_delivered` (resolve only).
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    destination: Option<String>,
    /// Every manual decision is a manager's (SPEC section 5b).
    #[serde(default)]
    manager_approval: Option<ApprovalRequest>,
}

impl ManualAction {
    /// The decision's verified approval: required, then checked like a refund's.
    async fn approval(&self, s: &AppState) -> Result<Approval, Failure> {
        let request = self.manager_approval.as_ref().ok_or_else(|| {
            failure(
                StatusCode::BAD_REQUEST,
                RejectCode::ManagerApprovalRequired.as_str(),
                "a manual decision needs a manager approval: {\"manager\": \"mgr_1\", \"pin\": \"…\"}",
            )
        })?;
        Ok(s.approver.approve(request).await?)
    }
}

fn manual_action(body: &Bytes) -> Result<ManualAction, Failure> {
    let action: ManualAction = parse_approved(body)?;
    if action.operator.trim().is_empty() || action.operator.chars().count() > crate::refund::draft::MAX_TEXT {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "field `operator` must name who decides",
        ));
    }
    Ok(action)
}

/// A manual decision, with the caller the operator spoke through (the audit row in the queue
/// names the operator; this line names the process and user that sent it).
fn log_decision(action: &str, id: &str, decision: &ManualAction, peer: Caller) {
    let manager = decision.manager_approval.as_ref().map(|a| a.manager.as_str());
    tracing::info!(
        action,
        refund_id = id,
        operator = decision.operator,
        manager,
        peer_uid = peer.uid(),
        peer_pid = peer.pid(),
        peer = %peer,
        "manual decision requested"
    );
}

/// What every decision does once its body is read: logs it with the caller, names the refund
/// and verifies the manager's approval (the PIN is checked last, so a request for an unknown
/// refund costs no attempt).
async fn begin(
    s: &AppState,
    what: &str,
    id: &str,
    action: &ManualAction,
    peer: Caller,
) -> Result<(crate::refund::RefundId, Approval), Failure> {
    log_decision(what, id, action, peer);
    let refund_id = refund_id(id).ok_or_else(|| unknown_refund(id))?;
    Ok((refund_id, action.approval(s).await?))
}

pub(super) async fn retry_refund(
    State(s): State<AppState>,
    Extension(peer): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let action = manual_action(&body)?;
    let (refund_id, approval) = begin(&s, "retry", &id, &action, peer).await?;
    let view = s.queue.retry(refund_id, approval, peer.audit()).await?;
    s.wake.notify_one();
    Ok(Json(view).into_response())
}

pub(super) async fn cancel_refund(
    State(s): State<AppState>,
    Extension(peer): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let action = manual_action(&body)?;
    let reason = action.reason.clone().unwrap_or_else(|| "cancelled by an operator".into());
    let (refund_id, approval) = begin(&s, "cancel", &id, &action, peer).await?;
    Ok(Json(s.queue.cancel(refund_id, approval, peer.audit(), reason).await?).into_response())
}

pub(super) async fn resolve_refund(
    State(s): State<AppState>,
    Extension(peer): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let action = manual_action(&body)?;
    let resolution = match action.outcome.as_deref() {
        Some("delivered") => Resolution::Delivered,
        Some("not_delivered") => Resolution::NotDelivered,
        _ => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "field `outcome` must be \"delivered\" or \"not_delivered\"",
            ))
        }
    };
    let (refund_id, approval) = begin(&s, "resolve", &id, &action, peer).await?;
    let view = s.queue.resolve(refund_id, action.destination, resolution, approval, peer.audit()).await?;
    s.wake.notify_one();
    Ok(Json(view).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_length_counts_characters_as_the_schema_does() {
        let body = |op: String| Bytes::from(serde_json::json!({ "operator": op }).to_string());
        assert!(manual_action(&body("é".repeat(500))).is_ok());
        assert!(manual_action(&body("é".repeat(501))).is_err());
        assert!(manual_action(&body(" ".into())).is_err());
    }
}
