//! The control API (SPEC section 4): HTTP/1.1 + JSON on a Unix socket, for the kiosk UI, the
//! CLI and technicians. `api.rs` holds the shapes of its answers, `server.rs` routes and
//! handles requests (`decisions.rs` the manual ones: retry, cancel, resolve; `card.rs` a refund's card read at the ZVT terminal), `guard.rs` decides who may call (token, Host, Origin, JSON bodies),
//! `listen.rs` accepts connections within their limits, `client.rs` is the CLI's side. The API is described in `openapi.yaml` at the repository root.

pub mod api;
mod card;
pub mod client;
mod decisions;
pub mod guard;
pub mod listen;
pub mod metrics;
pub mod server;

pub use api::ApiError;
