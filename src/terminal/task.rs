//! The link task: the async glue between the device threads and the queue.
//!
//! bytes → [`Decoder`] → (for `stx-etx`) the link ACK/NAK byte → event ([`parse_event_detailed`],
//! or [`scan_event`] for a barcode scanner) → [`Session`] → queue call → [`Reply`] →
//! [`encode_reply`] → device.
//!
//! Events are handled one at a time, in the order they arrived, because they are a conversation
//! (a scan must be seen before the refund that uses it) and because the terminal matches replies
//! to requests in order. A refund is answered `ack` only after the queue call returned, which is
//! after its COMMIT.
//!
//! Logging rule: nothing the terminal sent is ever logged as text, because any free-text field
//! might carry card data the sanitizer did not recognise. Log lines carry codes, lengths, `seq`
//! and ids the agent made itself.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use super::codec::{encode_reply, link_reply, Decoder, DropReason, Framing, Item};
use super::device::{DeviceEvent, SharedStatus};
use super::event::{parse_event_detailed, scan_event, EventError, Inbound, Reply, TerminalEvent};
use super::session::{Action, RefundRequest, Session};
use crate::lock::lock;
use crate::manager::{Approver, Refusal};
use crate::queue::{AuditCaller, QueueHandle};
use crate::shutdown::Shutdown;

/// Everything the link task owns.
#[derive(Debug)]
pub struct Link {
    pub framing: Framing,
    pub decoder: Decoder,
    pub session: Session,
    pub queue: QueueHandle,
    /// Checks the manager approval a refund carries, before the queue sees the refund.
    pub approver: Approver,
    /// Woken after a refund is queued, so the sync worker delivers it without waiting.
    pub wake: Arc<Notify>,
    pub status: SharedStatus,
    /// Encoded replies for the writer thread.
    pub replies: mpsc::Sender<Vec<u8>>,
}

/// Serves the terminal until shutdown; an event being handled is finished (and answered) first.
pub async fn run(mut link: Link, mut events: mpsc::Receiver<DeviceEvent>, mut shutdown: Shutdown) {
    loop {
        let deadline = link.session.deadline();
        let expiry = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.recv() => break,
            event = events.recv() => match event {
                Some(event) => link.on_device(event).await,
                None => break,
            },
            () = expiry => {
                if link.session.expire(Instant::now()) {
                    tracing::info!("terminal refund session abandoned after its timeout");
                }
            }
        }
    }
}

impl Link {
    async fn on_device(&mut self, event: DeviceEvent) {
        match event {
            // Bytes from before a reconnect must never be glued to bytes from after it.
            DeviceEvent::Connected | DeviceEvent::Disconnected => self.decoder.reset(),
            DeviceEvent::Bytes(bytes) => {
                self.decoder.push(&bytes);
                while let Some(item) = self.decoder.next_item() {
                    self.on_item(item).await;
                }
            }
        }
    }

    async fn on_item(&mut self, item: Item) {
        if let Some(byte) = link_reply(self.framing, &item) {
            self.send(vec![byte]).await;
        }
        match item {
            Item::Frame(payload) => self.on_frame(&payload).await,
            Item::Dropped(reason) => {
                self.dropped(reason.code());
                tracing::warn!(code = reason.code(), framing = %self.framing, "terminal frame dropped");
                // An NDJSON terminal has no link-level NAK, so it hears about the drop this way;
                // `stx-etx` already got its NAK byte, and a scanner cannot read.
                if self.framing == Framing::Ndjson && answerable(reason) {
                    self.reply(Reply::nak(None, reason.code(), &reason.to_string())).await;
                }
            }
        }
    }

    async fn on_frame(&mut self, payload: &str) {
        let parsed = match self.framing {
            Framing::Lines => scan_event(payload).map_err(|error| (None, error)),
            Framing::Ndjson | Framing::StxEtx => {
                let outcome = parse_event_detailed(payload);
                if !outcome.redactions.is_empty() {
                    // Only the labels of what was removed: the data itself is already gone.
                    tracing::warn!(
                        redactions = ?outcome.redactions,
                        seq = outcome.seq,
                        "terminal sent card data; it was masked or dropped before use"
                    );
                }
                let seq = outcome.seq;
                outcome.result.map(|event| Inbound { seq, event }).map_err(|error| (seq, error))
            }
        };
        match parsed {
            Ok(inbound) => self.on_event(inbound).await,
            Err((seq, error)) => self.rejected(seq, payload.len(), &error).await,
        }
    }

    async fn rejected(&mut self, seq: Option<i64>, len: usize, error: &EventError) {
        self.dropped(error.code());
        tracing::warn!(code = error.code(), field = error.field(), seq, len, "terminal event rejected");
        self.reply(Reply::from_error(seq, error)).await;
    }

    async fn on_event(&mut self, inbound: Inbound) {
        let kind = kind(&inbound.event);
        let seq = inbound.seq;
        tracing::debug!(kind, seq, "terminal event");
        lock(&self.status).frames_ok += 1;
        let now = Instant::now();
        // Usually the timer in `run` notices first; this catches an event arriving at the deadline.
        if self.session.expire(now) {
            tracing::info!("terminal refund session abandoned after its timeout");
        }
        let action = self.session.handle(inbound, now);
        if kind == "receipt_scan" {
            lock(&self.status).last_scan = self.session.scanned().map(str::to_owned);
        }
        match action {
            Action::Reply(reply) => self.reply(reply).await,
            Action::AddSale { seq, sale } => {
                let reply = match self.queue.add_sale(*sale).await {
                    Ok(Ok(added)) => {
                        tracing::debug!(
                            seq,
                            replayed = added.replayed,
                            "sale from the terminal in the ledger"
                        );
                        Reply::ack(seq)
                    }
                    Ok(Err(rejection)) => {
                        tracing::info!(code = %rejection.code, seq, "terminal receipt refused");
                        Reply::nak(seq, rejection.code.as_str(), &rejection.message)
                    }
                    Err(error) => storage_failed(seq, &error),
                };
                self.reply(reply).await;
            }
            Action::CreateRefund(request) => {
                let reply = self.create_refund(*request).await;
                self.reply(reply).await;
            }
        }
    }

    async fn create_refund(&mut self, request: RefundRequest) -> Reply {
        let seq = request.seq;
        // The same checks as the control API: a wrong PIN is refused with nothing stored.
        let approval = match &request.draft.manager_approval {
            None => None,
            Some(asked) => match self.approver.approve(asked).await {
                Ok(approval) => Some(approval),
                Err(Refusal::Queue(error)) => return storage_failed(seq, &error),
                Err(refusal) => {
                    tracing::info!(code = refusal.code(), seq, "terminal manager approval refused");
                    return Reply::nak(seq, refusal.code(), &refusal.to_string());
                }
            },
        };
        match self
            .queue
            .create_approved(request.draft.clone(), request.key.clone(), approval, AuditCaller::terminal())
            .await
        {
            Ok(Ok(created)) => {
                self.session.committed(&request);
                let refund = created.refund;
                if created.replayed {
                    tracing::info!(refund_id = %refund.id, seq, "terminal resent a refund; answered with the original");
                } else {
                    self.wake.notify_one();
                    tracing::info!(refund_id = %refund.id, amount = %refund.amount, currency = %refund.currency, seq, "refund queued from the terminal");
                }
                Reply::ack_refund(seq, refund.id, refund.state.as_str())
            }
            Ok(Err(rejection)) => {
                tracing::info!(code = %rejection.code, seq, "terminal refund refused");
                Reply::nak(seq, rejection.code.as_str(), &rejection.message)
            }
            Err(error) => storage_failed(seq, &error),
        }
    }

    fn dropped(&self, code: &str) {
        let mut status = lock(&self.status);
        status.frames_dropped += 1;
        status.last_drop = Some(code.to_owned());
    }

    async fn reply(&mut self, reply: Reply) {
        let bytes = encode_reply(self.framing, &reply.to_json());
        if !bytes.is_empty() {
            self.send(bytes).await;
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        // The writer only goes away at shutdown; a reply that cannot be sent then is moot.
        let _ = self.replies.send(bytes).await;
    }
}

/// Drops an NDJSON terminal can be told about (everything an NDJSON decoder reports).
fn answerable(reason: DropReason) -> bool {
    matches!(reason, DropReason::FrameTooLong | DropReason::InvalidUtf8)
}

/// A queue failure: nothing was stored, so the terminal may retry; the code is the control API's.
fn storage_failed(seq: Option<i64>, error: &crate::queue::QueueError) -> Reply {
    tracing::error!(error = %error, seq, "queue call for a terminal event failed");
    Reply::nak(seq, error.code(), "the refund agent could not store this; retry shortly")
}

fn kind(event: &TerminalEvent) -> &'static str {
    match event {
        TerminalEvent::Receipt(_) => "receipt",
        TerminalEvent::ReceiptScan { .. } => "receipt_scan",
        TerminalEvent::Card { .. } => "card",
        TerminalEvent::Refund { .. } => "refund",
        TerminalEvent::Cancel => "cancel",
    }
}
