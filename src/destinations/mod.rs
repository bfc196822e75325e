//! The destinations: the cloud APIs and a ZVT payment terminal at the till. Only this module
//! speaks HTTP to the outside. Each connector builds its
//! requests from a sealed refund, classifies the answers into an [`Attempt`] (data, not control
//! flow), and declares its [`Capability`]: whether the server deduplicates on our refund id and
//! whether it moves money.

pub mod clock;
pub mod finalpos;
pub mod gateway;
pub mod http;
pub mod olive;
pub mod zvt;

use std::time::Duration;

use crate::config::{self, ConfigError, DestinationKind};
use crate::queue::{Claim, QueueHandle};

/// What a destination guarantees, which decides what happens to a request whose outcome is
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// The server recognises a repeated refund id and does not act twice: an ambiguous request
    /// may simply be sent again.
    pub dedup: bool,
    /// The destination moves money (a processor), rather than recording it (a back office).
    pub moves_money: bool,
}

/// The result of one attempt at a delivery, as the connector classified it.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The destination has the refund.
    Delivered { remote_id: Option<String> },
    /// One request of several succeeded; the next one follows at `step`.
    Progress { step: i64, remote_id: Option<String> },
    /// The destination refused this refund (its content or business rules).
    Declined(String),
    /// A permanent failure that is not about the refund (credentials, configuration).
    Failed(String),
    /// Nothing happened at the destination, or it asked us to come back: safe to send again.
    Transient { retry_after: Option<Duration>, error: String },
    /// No connection could be made: the request never left, and the destination or the
    /// network is down. Safe to send again, and worth probing for its return.
    Unreachable(String),
    /// The request may have been processed, and nothing says whether: no answer came back, or
    /// a server error that may follow a commit (`http::retry_status`).
    Ambiguous(String),
}

/// A configured destination.
#[derive(Debug)]
pub enum Connector {
    FinalPos(finalpos::FinalPos),
    Olive(olive::Olive),
    Gateway(gateway::Gateway),
    Zvt(zvt::Zvt),
}

impl Connector {
    /// Builds the connector for a configured destination, reading its secrets.
    pub fn from_config(
        dest: &config::Destination,
        client: &reqwest::Client,
    ) -> Result<Connector, ConfigError> {
        let client = client.clone();
        Ok(match &dest.kind {
            DestinationKind::FinalPos(s) => Connector::FinalPos(finalpos::FinalPos::new(s, client)?),
            DestinationKind::Olive(s) => Connector::Olive(olive::Olive::new(s, client)?),
            DestinationKind::Gateway(s) => Connector::Gateway(gateway::Gateway::new(s, client)?),
            DestinationKind::Zvt(s) => Connector::Zvt(zvt::Zvt::new(s)?),
        })
    }

    pub fn capability(&self) -> Capability {
        match self {
            Connector::FinalPos(_) => finalpos::CAPABILITY,
            Connector::Olive(_) => olive::CAPABILITY,
            Connector::Gateway(_) => gateway::CAPABILITY,
            Connector::Zvt(_) => zvt::CAPABILITY,
        }
    }

    /// The destination's clock offset, measured from its `Date` headers.
    pub fn clock(&self) -> &clock::ClockOffset {
        match self {
            Connector::FinalPos(c) => c.clock(),
            Connector::Olive(c) => c.clock(),
            Connector::Gateway(c) => c.clock(),
            Connector::Zvt(c) => c.clock(),
        }
    }

    /// Makes the next request of a claimed delivery. `queue` is for a connector that must note
    /// something durably on the delivery before its request leaves (the ZVT terminal's trace
    /// number, for a later lookup).
    pub async fn attempt(&self, claim: &Claim, queue: &QueueHandle) -> Attempt {
        match self {
            Connector::FinalPos(c) => c.attempt(claim).await,
            Connector::Olive(c) => c.attempt(claim).await,
            Connector::Gateway(c) => c.attempt(claim).await,
            Connector::Zvt(c) => c.attempt(claim, queue).await,
        }
    }
}
