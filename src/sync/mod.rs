//! Delivery of queued refunds: retry decisions (pure, `decide.rs`), the worker that applies
//! them (`worker.rs`) and logs each outcome (`log.rs`), and the resolver that looks unknown
//! terminal payouts up (`lookup.rs`).

pub mod connectivity;
pub mod decide;
mod log;
pub mod lookup;
pub mod worker;

pub use connectivity::Connectivity;
pub use lookup::Lookups;
pub use worker::{DestinationHealth, Health, Worker};
