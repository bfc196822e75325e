//! Delivery of queued refunds: retry decisions (pure, `decide.rs`) and the worker that applies
//! them (`worker.rs`).

pub mod decide;
pub mod worker;

pub use worker::{DestinationHealth, Health, Worker};
