//! The refund head as the owner's open transaction has it: read and verified once by the first
//! refund of a batch, advanced in memory by every refund after it, and written (sealed) once
//! before the batch's COMMIT. One HMAC verification, one seal and one row write per batch
//! instead of per refund; what reaches the disk in the COMMIT is the same head.
//!
//! Each job runs in a SAVEPOINT; the owner marks the stage before a job and puts it back when
//! the job is rolled back, so a refund that was not stored gives its number back exactly as
//! its rolled-back row write would have. A transaction that is lost (or whose COMMIT fails)
//! drops the stage; every transaction begins with none, so the head is verified from the file
//! at least once per batch.

use std::cell::RefCell;

use rusqlite::Connection;

use super::error::QueueError;
use super::seal::Sealer;
use super::sequence::{self, Head};

/// The staged head of one open transaction.
#[derive(Debug)]
pub(super) struct HeadStage {
    staged: RefCell<Option<Staged>>,
    /// Writes every change at once instead (tests and maintenance outside the owner).
    through: bool,
}

/// A staged head and whether it differs from the row in the transaction.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    head: Head,
    dirty: bool,
}

impl HeadStage {
    /// The owner's stage: changes kept until [`HeadStage::flush`].
    pub fn per_batch() -> HeadStage {
        HeadStage { staged: RefCell::new(None), through: false }
    }

    /// No stage: every change is read, verified and written at once.
    #[cfg(test)]
    pub fn write_through() -> HeadStage {
        HeadStage { staged: RefCell::new(None), through: true }
    }

    /// Forgets the stage: at the start of a transaction, and after one was lost.
    pub fn clear(&self) {
        self.staged.replace(None);
    }

    /// The stage before a job, to put back if the job is rolled back.
    pub fn mark(&self) -> Option<Staged> {
        self.staged.borrow().clone()
    }

    pub fn restore(&self, mark: Option<Staged>) {
        self.staged.replace(mark);
    }

    /// Changes the head with `f`: loaded and verified the first time in this transaction, then
    /// kept here until [`HeadStage::flush`].
    pub fn update<T>(
        &self,
        conn: &Connection,
        sealer: &Sealer,
        f: impl FnOnce(&mut Head) -> T,
    ) -> Result<T, QueueError> {
        let load = || sequence::load_for_write(conn, sealer);
        if self.through {
            let mut head = load()?;
            let out = f(&mut head);
            sequence::save(conn, sealer, &head)?;
            return Ok(out);
        }
        let mut slot = self.staged.borrow_mut();
        let staged = match slot.take() {
            Some(staged) => staged,
            None => Staged { head: load()?, dirty: false },
        };
        let staged = slot.insert(staged);
        let out = f(&mut staged.head);
        staged.dirty = true;
        Ok(out)
    }

    /// Writes a changed head, sealed, into the open transaction (before its COMMIT).
    pub fn flush(&self, conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
        let mut slot = self.staged.borrow_mut();
        if let Some(staged) = slot.as_mut().filter(|s| s.dirty) {
            sequence::save(conn, sealer, &staged.head)?;
            staged.dirty = false;
        }
        Ok(())
    }
}
