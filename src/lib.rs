//! refund-agent: takes refunds at a point-of-sale till, validates them offline, keeps them in a
//! sealed SQLite queue and delivers them to the cloud refund APIs exactly once.
//!
//! Modules in the order data flows through them:
//!
//! - [`terminal`] — bytes from the serial terminal → frames → events (PCI-sanitized).
//! - [`money`], [`text`], [`pan`], [`sale`] — amounts, free text, the one card-number detector,
//!   and the original sales (the ledger's records).
//! - [`manager`] — manager approvals: PINs checked offline against the managers file, with
//!   lock-outs kept in the queue.
//! - [`refund`] — a draft from a cashier becomes a validated refund.
//! - [`routing`] — which destinations a refund goes to.
//! - [`queue`] — the durable, sealed SQLite queue and its single owner thread.
//! - [`sync`] — the worker that claims due deliveries and decides retries.
//! - [`destinations`] — one connector per cloud API (HTTP to the outside lives only here).
//! - [`control`] — the control API on a Unix socket, and its client for the CLI.
//! - [`config`] — the TOML configuration and secret files.
//! - [`daemon`] — wires it together and handles shutdown; [`shutdown`] — the one stop signal
//!   every task listens to; [`watchdog`] — systemd readiness and watchdog; [`doctor`] — field
//!   diagnostics.
//! - [`sandbox`], [`demo`] — local stand-ins for the cloud APIs and the guided demo.
//! - [`cli`] — the command line; [`clock`] — time helpers; [`lock`] — the one way to lock a
//!   mutex.

pub mod terminal;
pub mod money;
pub mod text;
pub mod pan;
pub mod sale;
pub mod manager;
pub mod refund;
pub mod routing;
pub mod queue;
pub mod sync;
pub mod destinations;
pub mod control;
pub mod config;
pub mod daemon;
pub mod shutdown;
pub mod doctor;
pub mod watchdog;
pub mod sandbox;
pub mod demo;
pub mod cli;
pub mod clock;
pub mod lock;
