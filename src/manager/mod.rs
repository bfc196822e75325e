//! Manager approval (SPEC section 5b): a manager's id and PIN, checked offline against the
//! managers file of argon2id PHC hashes, before a refund above a limit, an unlinked refund or a
//! manual decision (retry, cancel, resolve) goes ahead.
//!
//! - [`ApprovalRequest`] is what a caller sends: `{"manager": "mgr_1", "pin": "…"}`. Its
//!   [`Pin`] has a redacting `Debug`, is zeroized when dropped and is never stored or logged.
//! - [`Approval`] is what a verified request becomes: the manager and the time, sealed with the
//!   refund and named in the audit log. Only [`Approver::approve`] makes one.
//! - [`file`] parses the managers file and verifies PINs (pure apart from reading the file);
//!   [`lockout`] is the lock-out arithmetic (pure); [`approve`] is the async glue that keeps
//!   argon2 off the queue owner thread and the failure counts in the queue.

pub mod approve;
pub mod file;
pub mod lockout;

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

pub use approve::{Approver, Refusal};
pub use file::{check_new_pin, hash_pin, Managers, ManagersError};

/// The longest manager id accepted (ids are short words like `mgr_1`).
pub const MAX_MANAGER_ID: usize = 64;

/// A manager's PIN as typed. Never shown by `Debug`, never stored, wiped from memory on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pin(String);

impl Pin {
    pub fn new(pin: impl Into<String>) -> Pin {
        Pin(pin.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A manager approval as a caller sends it: which manager, and the PIN they typed. It is an
/// object on purpose: a plain string (an id alone) is never an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub manager: String,
    pub pin: Pin,
}

/// A verified approval: which manager approved and when (milliseconds since the Unix epoch).
/// Stored in the sealed refund body; never carries the PIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub manager: String,
    pub approved_at_ms: i64,
}

/// Checks the shape of `manager_approval` in a JSON body before it is parsed, so that a plain
/// string or any other shape is refused with its own message rather than serde's. `Ok` when
/// the field is absent or an object of two strings.
pub fn check_shape(body: &serde_json::Value) -> Result<(), String> {
    let Some(value) = body.get("manager_approval") else {
        return Ok(());
    };
    let good = value.as_object().is_some_and(|o| {
        o.len() == 2
            && o.get("manager").is_some_and(|m| m.is_string())
            && o.get("pin").is_some_and(|p| p.is_string())
    });
    if value.is_null() || good {
        return Ok(());
    }
    Err("field `manager_approval` must be an object {\"manager\": \"mgr_1\", \"pin\": \"…\"}; a manager id alone is not an approval".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_pin_never_shows_in_debug_output() {
        let req = ApprovalRequest { manager: "mgr_1".into(), pin: Pin::new("8642") };
        let shown = format!("{req:?}");
        assert!(!shown.contains("8642"), "{shown}");
        assert!(shown.contains("mgr_1"), "{shown}");
    }

    #[test]
    fn only_an_object_of_manager_and_pin_is_an_approval() {
        assert!(check_shape(&json!({})).is_ok());
        assert!(check_shape(&json!({"manager_approval": null})).is_ok());
        assert!(check_shape(&json!({"manager_approval": {"manager": "m", "pin": "1234"}})).is_ok());
        for bad in [
            json!("mgr_1"),
            json!({"manager": "m"}),
            json!({"manager": "m", "pin": 1234}),
            json!({"manager": "m", "pin": "1", "x": 1}),
            json!(["m", "1234"]),
        ] {
            let err = check_shape(&json!({ "manager_approval": bad })).unwrap_err();
            assert!(err.contains("not an approval"), "{err}");
        }
    }
}
