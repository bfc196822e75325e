//! A loopback HTTP server that can go offline (its port then refuses connections) and come
//! back on the same port. The faults a sandbox scripts live in [`super::core`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::lock::lock;
use crate::shutdown::{Shutdown, Trigger};

/// Serves an axum router on a fixed loopback address that can be taken down and brought back.
#[derive(Debug)]
pub struct Switchable {
    addr: SocketAddr,
    app: axum::Router,
    running: Mutex<Option<(Trigger, JoinHandle<()>)>>,
    /// Released when a hung request should finally end (used at shutdown).
    pub release: Arc<Notify>,
}

impl Switchable {
    /// Binds an ephemeral loopback port and starts serving. `release` ends requests hung by
    /// [`super::Fault::CommitThenHang`] when the server goes offline.
    pub async fn start(app: axum::Router, release: Arc<Notify>) -> std::io::Result<Switchable> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let s = Switchable { addr, app, running: Mutex::new(None), release };
        s.serve(listener);
        Ok(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let (tx, stop) = Shutdown::new();
        let app = self.app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.wait()).await;
        });
        *lock(&self.running) = Some((tx, task));
    }

    /// Closes the port: new connections are refused, as when the network is down.
    pub async fn go_offline(&self) {
        let running = lock(&self.running).take();
        if let Some((tx, task)) = running {
            tx.fire();
            self.release.notify_waiters();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Opens the same port again.
    pub async fn go_online(&self) -> std::io::Result<()> {
        if lock(&self.running).is_some() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        self.serve(listener);
        Ok(())
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}
