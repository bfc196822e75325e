//! A loopback HTTP server that can go offline (its port then refuses connections) and come
//! back on the same port, with scripted faults.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// A scripted misbehaviour, used once by the next request that reaches a handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds) without processing the request.
    Status(u16, Option<u64>),
    /// Process the request, then never answer (the client's timeout fires, or it is killed).
    CommitThenHang,
    /// Process the request, then close the connection without an answer.
    CommitThenDrop,
}

/// Scripted faults shared by a sandbox's handlers.
#[derive(Debug, Default, Clone)]
pub struct Faults(Arc<Mutex<VecDeque<Fault>>>);

impl Faults {
    pub fn push(&self, fault: Fault, times: usize) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.extend(std::iter::repeat_n(fault, times));
    }
    pub fn next(&self) -> Option<Fault> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// Serves an axum router on a fixed loopback address that can be taken down and brought back.
#[derive(Debug)]
pub struct Switchable {
    addr: SocketAddr,
    app: axum::Router,
    running: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
    /// Released when a hung request should finally end (used at shutdown).
    pub release: Arc<Notify>,
}

impl Switchable {
    /// Binds an ephemeral loopback port and starts serving. `release` ends requests hung by
    /// [`Fault::CommitThenHang`] when the server goes offline.
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
        let (tx, mut rx) = watch::channel(false);
        let app = self.app.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop).await;
        });
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((tx, task));
    }

    /// Closes the port: new connections are refused, as when the network is down.
    pub async fn go_offline(&self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, task)) = running {
            let _ = tx.send(true);
            self.release.notify_waiters();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Opens the same port again.
    pub async fn go_online(&self) -> std::io::Result<()> {
        if self.running.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
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

/// Ends a handler that already processed its request, as the scripted fault says: answer, hang
/// until `release`, or drop the connection without an answer.
pub async fn finish(
    release: &Notify,
    fault: Option<Fault>,
    ok: axum::response::Response,
) -> axum::response::Response {
    match fault {
        Some(Fault::CommitThenHang) => {
            release.notified().await;
            ok
        }
        Some(Fault::CommitThenDrop) => {
            // Ending the handler by unwinding makes hyper close the connection without an answer
            // (`resume_unwind` skips the panic hook, so nothing is printed).
            std::panic::resume_unwind(Box::new("sandbox: dropping the connection after commit"));
        }
        _ => ok,
    }
}
