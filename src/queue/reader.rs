//! Queue status read off the owner thread. Status and metrics are polled by monitoring while
//! the till works, and their counts read every refund and delivery row: run as a job, each
//! poll held up the batch it shared and every refund behind it. They are read instead on a
//! read-only connection opened for the call, in one read transaction (one committed moment),
//! on a blocking thread, while the owner goes on committing. The connection is closed after
//! the call, so an idle agent keeps no second page cache.

use std::path::PathBuf;
use std::time::Duration;

use super::error::QueueError;
use super::inspect::open_readonly;
use super::reads;
use super::seal::Sealer;
use super::view::QueueStatus;

/// How long a status read waits for a lock a checkpoint holds.
const READ_BUSY: Duration = Duration::from_secs(5);

/// Where the queue file is and the key its audit chain is sealed with.
#[derive(Debug, Clone)]
pub(super) struct Reader {
    pub path: PathBuf,
    pub sealer: Sealer,
}

impl Reader {
    /// The queue's counts as of the last COMMIT.
    pub fn status(&self, now: i64) -> Result<QueueStatus, QueueError> {
        let conn = open_readonly(&self.path, READ_BUSY)?;
        conn.execute_batch("BEGIN")?;
        let status = reads::status_on(&conn, &self.sealer, now);
        let _ = conn.execute_batch("COMMIT");
        status
    }
}
