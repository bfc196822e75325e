//! The one shutdown signal every task listens to (the shape of mini-redis's `shutdown.rs`).
//!
//! [`Shutdown::new`] gives a [`Trigger`], held by whoever decides to stop (the daemon, a
//! sandbox server), and a [`Shutdown`], cloned into every task that must stop with it.

use tokio::sync::watch;

/// Fires the shutdown; every [`Shutdown`] made with it sees it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Signals shutdown to every listener. Sending never fails in a way that matters: with no
    /// listener left there is nobody to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

/// A task's view of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    notify: watch::Receiver<bool>,
}

impl Shutdown {
    /// A new, not yet fired, shutdown signal.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown { notify: rx })
    }

    /// Whether shutdown has been signalled.
    pub fn is_shutdown(&self) -> bool {
        *self.notify.borrow()
    }

    /// Resolves once shutdown is signalled, or once its [`Trigger`] is gone (nobody could
    /// signal it any more). The watch guard is dropped inside, because holding it across a
    /// `select!` would make the caller's future `!Send`.
    pub async fn recv(&mut self) {
        let _ = self.notify.wait_for(|stop| *stop).await;
    }

    /// [`Shutdown::recv`] as an owned future, for APIs that take one (axum's graceful shutdown).
    pub async fn wait(mut self) {
        self.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_every_clone_and_ends_when_the_trigger_is_gone() {
        let (trigger, mut shutdown) = Shutdown::new();
        let other = shutdown.clone();
        assert!(!shutdown.is_shutdown());
        trigger.fire();
        shutdown.recv().await;
        assert!(shutdown.is_shutdown() && other.is_shutdown());
        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        shutdown.wait().await;
    }
}
