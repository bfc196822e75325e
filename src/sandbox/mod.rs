//! Local stand-ins for the cloud APIs, on loopback ports: the demo runs against them, and the
//! integration tests use them as the servers at the other end. They follow the vendors' seed
//! pages (required fields, auth headers, error bodies) and can be told to misbehave the way real
//! networks do. [`zvt`] plays a ZVT payment terminal (over TCP or a pseudo-terminal).

pub mod core;
pub mod finalpos;
pub mod gateway;
pub mod hostile;
pub mod olive;
pub mod server;
pub mod zvt;

pub use self::core::{Core, Fault, FaultMix};
pub use finalpos::FinalPosSandbox;
pub use gateway::GatewaySandbox;
pub use hostile::RedirectTarget;
pub use olive::OliveSandbox;
pub use zvt::ZvtSimulator;
