//! Replies sent back to the terminal, one JSON object per event.

use serde::{Deserialize, Serialize};

use super::super::pci;
use super::EventError;

/// The application-level answer to an event, echoing its `seq` so the terminal can match it.
///
/// Serialised as `{"type":"ack","seq":7,"refund_id":"…","state":"queued"}` or
/// `{"type":"nak","seq":7,"code":"over_refund","message":"…"}`; absent options are omitted
/// rather than sent as `null`, because some terminal firmwares choke on nulls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    Nak {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        code: String,
        message: String,
    },
}

impl Reply {
    /// A plain acknowledgement.
    pub fn ack(seq: Option<i64>) -> Self {
        Reply::Ack { seq, refund_id: None, state: None }
    }

    /// An acknowledgement of a refund request, telling the terminal its id and state.
    pub fn ack_refund(seq: Option<i64>, refund_id: impl Into<String>, state: impl Into<String>) -> Self {
        Reply::Ack { seq, refund_id: Some(refund_id.into()), state: Some(state.into()) }
    }

    /// A rejection. Any PAN in `message` is masked, because messages are shown on the terminal
    /// and logged, and may be built from text that the terminal itself sent.
    pub fn nak(seq: Option<i64>, code: impl Into<String>, message: &str) -> Self {
        Reply::Nak { seq, code: code.into(), message: pci::mask_text(message).into_owned() }
    }

    /// The rejection of a payload that did not parse, using the error's stable code.
    pub fn from_error(seq: Option<i64>, error: &EventError) -> Self {
        Reply::nak(seq, error.code(), &error.to_string())
    }

    /// The reply as single-line JSON, ready for [`crate::terminal::codec::encode_reply`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("a Reply holds only strings and integers under string keys, which always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_serialises_exactly() {
        let reply = Reply::ack_refund(Some(7), "rf_01", "queued");
        assert_eq!(reply.to_json(), r#"{"type":"ack","seq":7,"refund_id":"rf_01","state":"queued"}"#);
        assert_eq!(Reply::ack(Some(7)).to_json(), r#"{"type":"ack","seq":7}"#);
        assert_eq!(Reply::ack(None).to_json(), r#"{"type":"ack"}"#);
    }

    #[test]
    fn nak_serialises_exactly() {
        let reply = Reply::nak(Some(7), "over_refund", "refund exceeds the amount paid");
        assert_eq!(
            reply.to_json(),
            r#"{"type":"nak","seq":7,"code":"over_refund","message":"refund exceeds the amount paid"}"#
        );
        let reply = Reply::nak(None, "x", "y");
        assert_eq!(reply.to_json(), r#"{"type":"nak","code":"x","message":"y"}"#);
    }

    #[test]
    fn nak_masks_card_numbers_in_messages() {
        let reply = Reply::nak(Some(1), "declined", "card 4111111111111111 declined");
        assert!(!reply.to_json().contains("4111111111111111"));
    }

    #[test]
    fn from_error_uses_stable_code() {
        let error = EventError::MissingField { field: "amount".into() };
        assert_eq!(
            Reply::from_error(Some(3), &error).to_json(),
            r#"{"type":"nak","seq":3,"code":"missing_field","message":"missing required field `amount`"}"#
        );
    }

    #[test]
    fn replies_round_trip() {
        for reply in
            [Reply::ack(Some(1)), Reply::ack_refund(None, "rf", "done"), Reply::nak(Some(-1), "c", "m")]
        {
            let back: Reply = serde_json::from_str(&reply.to_json()).expect("own JSON parses");
            assert_eq!(back, reply);
        }
    }
}
