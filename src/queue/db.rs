//! The context every queue operation runs in. Its own module, so that the operations, the
//! manual decisions and the owner thread all depend on it and not on one another.

use rusqlite::Connection;

use super::counts::Counted;
use super::seal::Sealer;
use super::staged::HeadStage;
use crate::refund::Policy;
use crate::routing::Router;

/// What the queue's operations need besides the connection.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub policy: Policy,
    pub router: Router,
    pub max_pending_age_ms: Option<i64>,
    pub retention_ms: Option<i64>,
}

/// The connection inside an open transaction, with the sealer and the settings.
#[derive(Debug)]
pub(super) struct Db<'a> {
    pub conn: &'a Connection,
    pub sealer: &'a Sealer,
    pub settings: &'a QueueSettings,
    /// The refund head staged for the open transaction, written once per batch (`staged.rs`).
    pub head: &'a HeadStage,
    /// The row counts this connection saw agree with their rows (`counts.rs`).
    pub counted: &'a Counted,
}
