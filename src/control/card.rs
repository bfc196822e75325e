//! `read_card` on `POST /v1/refunds`: the card the customer presents at the agent's ZVT
//! terminal (Read Card `06 C0`) becomes the draft's `masked_pan`, already reduced to BIN +
//! last 4 by the codec, and the refund then goes through the same validation (the
//! card-present check) as one that named its card. Nothing is queued when no card is read.
//!
//! Codes: `invalid_request` (400) for `read_card` together with `masked_pan` (which card
//! counts would be a guess); `no_card_reader` (422) when `[terminal]` is no ZVT terminal;
//! `card_reader_unavailable` (503) when the terminal is not connected now; `card_not_read`
//! (422) when the terminal read no card (nobody presented one in time, it was cancelled, the
//! link broke during the read). A repeat of the request with the same `Idempotency-Key` reads
//! the card again; the same card then answers with the refund first made.

use axum::http::StatusCode;

use super::server::{failure, AppState, Failure};
use crate::refund::RefundDraft;
use crate::terminal::ecr::owner::ReadCardError;

/// Fills `masked_pan` from the terminal when the draft asks `read_card`.
pub(super) async fn read_card(s: &AppState, draft: &mut RefundDraft) -> Result<(), Failure> {
    if !draft.read_card {
        return Ok(());
    }
    if draft.masked_pan.as_deref().is_some_and(|p| !p.trim().is_empty()) {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "give either `masked_pan` or `read_card`, not both",
        ));
    }
    // A draft that would be refused for its shape is refused before the customer is asked
    // for the card.
    draft.clone().normalized()?;
    let Some(reader) = &s.card_reader else {
        return Err(failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_card_reader",
            "`read_card` needs a ZVT terminal as [terminal]; this agent has none",
        ));
    };
    match reader.read_card().await {
        Ok(card) => {
            draft.masked_pan = Some(card.masked());
            Ok(())
        }
        Err(error) => {
            // The code and the reason only: the error never carries card data.
            tracing::info!(code = error.code(), error = %error, "card not read at the ZVT terminal; nothing queued");
            let status = match error {
                ReadCardError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ReadCardError::NotRead(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            Err(failure(status, error.code(), error.to_string()))
        }
    }
}
