//! Delivery of queued refunds: retry decisions (pure, `decide.rs`) and the worker that applies
//! them (`worker.rs`), recording outcomes and claiming in one group commit (`batch.rs`).

mod batch;
pub mod connectivity;
pub mod decide;
pub mod worker;

pub use connectivity::Connectivity;
pub use worker::{DestinationHealth, Health, Worker};
