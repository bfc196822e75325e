//! The one way to lock a `std::sync::Mutex` in this crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking the data even if another thread panicked while holding it.
///
/// Every mutex here guards plain figures (health, status, sandbox records, a port handle) whose
/// every update is one assignment, so a panic elsewhere cannot leave them half-written; refusing
/// them would only let one panic take down the status page or the worker with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
