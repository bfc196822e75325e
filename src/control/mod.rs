//! The control API (SPEC section 4): HTTP/1.1 + JSON on a Unix socket, for the kiosk UI, the
//! CLI and technicians. `server.rs` serves it, `client.rs` is the CLI's side. The API is
//! described in `openapi.yaml` at the repository root.

pub mod client;
pub mod metrics;
pub mod server;

use serde::{Deserialize, Serialize};

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}
