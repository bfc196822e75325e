//! The control API (SPEC section 4): HTTP/1.1 + JSON on a Unix socket, for the kiosk UI, the
//! CLI and technicians. `api.rs` holds the shapes of its answers, `server.rs` serves it,
//! `client.rs` is the CLI's side. The API is described in `openapi.yaml` at the repository root.

pub mod api;
pub mod client;
pub mod metrics;
pub mod server;

pub use api::ApiError;
