//! Delivery of queued refunds: retry decisions (pure, `decide.rs`) and the worker that applies
//! them (`worker.rs`).

pub mod connectivity;
pub mod decide;
pub mod worker;

pub use connectivity::Connectivity;
pub use worker::{DestinationHealth, Health, Worker};
