//! The shapes of the control API's answers, as `openapi.yaml` describes them: what the server
//! writes, and what the CLI and the metrics renderer read back.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::queue::QueueStatus;
use crate::sync::{Connectivity, DestinationHealth};

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusBody {
    pub version: String,
    pub terminal_id: String,
    pub uptime_s: u64,
    /// When the agent started (seconds since the epoch, by the till's clock then).
    #[serde(default)]
    pub started_at_s: i64,
    pub queue: QueueStatus,
    pub destinations: HashMap<String, DestinationHealthBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<crate::terminal::device::TerminalStatus>,
}

/// A destination's health as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DestinationHealthBody {
    pub connectivity: Connectivity,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    /// The destination's clock minus ours, from its `Date` headers.
    pub clock_offset_ms: Option<i64>,
}

impl From<DestinationHealth> for DestinationHealthBody {
    fn from(h: DestinationHealth) -> Self {
        DestinationHealthBody {
            connectivity: h.connectivity,
            last_success_at: h.last_success_at,
            last_error: h.last_error,
            consecutive_failures: h.consecutive_failures,
            clock_offset_ms: None,
        }
    }
}
