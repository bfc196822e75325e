//! A loopback HTTP server that can go offline (its port then refuses connections) and come
//! back on the same port, with scripted faults.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::lock::lock;
use crate::shutdown::{Shutdown, Trigger};

/// A scripted misbehaviour, used once by the next request that reaches a handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds) without processing the request.
    Status(u16, Option<u64>),
    /// Process the request, then never answer (the client's timeout fires, or it is killed).
    CommitThenHang,
    /// Process the request, then close the connection without an answer.
    CommitThenDrop,
    /// Never answer and never process the request (the client's timeout fires).
    Hang,
    /// Close the connection without processing the request or answering.
    Reset,
}

impl Fault {
    /// Whether the client cannot tell if the request was processed: no answer came.
    pub fn is_ambiguous(&self) -> bool {
        !matches!(self, Fault::Status(..))
    }
}

/// How often each fault strikes a request when faults are random, in requests per thousand.
/// What is left of the thousand is answered normally.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultMix {
    pub error_500: u32,
    pub error_503: u32,
    /// `429 Too Many Requests` with `Retry-After: 1`.
    pub too_many_requests: u32,
    pub hang: u32,
    pub reset: u32,
    pub commit_then_drop: u32,
    pub commit_then_hang: u32,
}

impl FaultMix {
    /// The fault for a draw in `0..1000`, if any.
    fn pick(&self, draw: u32) -> Option<Fault> {
        let table = [
            (self.error_500, Fault::Status(500, None)),
            (self.error_503, Fault::Status(503, None)),
            (self.too_many_requests, Fault::Status(429, Some(1))),
            (self.hang, Fault::Hang),
            (self.reset, Fault::Reset),
            (self.commit_then_drop, Fault::CommitThenDrop),
            (self.commit_then_hang, Fault::CommitThenHang),
        ];
        let mut below = 0;
        for (share, fault) in table {
            below += share;
            if draw < below {
                return Some(fault);
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct Script {
    queued: VecDeque<Fault>,
    random: Option<(StdRng, FaultMix)>,
}

/// Faults shared by a sandbox's handlers: scripted ones first, then random ones if a mix is set.
#[derive(Debug, Default, Clone)]
pub struct Faults(Arc<Mutex<Script>>);

impl Faults {
    pub fn push(&self, fault: Fault, times: usize) {
        let mut script = lock(&self.0);
        script.queued.extend(std::iter::repeat_n(fault, times));
    }

    /// From now on, strikes requests at random with `mix` (reproducibly for a `seed`); `None`
    /// stops the random faults.
    pub fn randomly(&self, seed: u64, mix: Option<FaultMix>) {
        let mut script = lock(&self.0);
        script.random = mix.map(|mix| (StdRng::seed_from_u64(seed), mix));
    }

    pub fn next(&self) -> Option<Fault> {
        let mut script = lock(&self.0);
        if let Some(fault) = script.queued.pop_front() {
            return Some(fault);
        }
        let (rng, mix) = script.random.as_mut()?;
        mix.pick(rng.random_range(0..1000))
    }
}

/// Ends a request that the fault says is never processed: hangs until `release` (the client's
/// timeout fires first), or drops the connection. `None` for any other fault.
pub async fn unprocessed(release: &Notify, fault: &Option<Fault>) -> Option<axum::response::Response> {
    match fault {
        Some(Fault::Hang) => {
            release.notified().await;
            Some(StatusCode::SERVICE_UNAVAILABLE.into_response())
        }
        Some(Fault::Reset) => {
            std::panic::resume_unwind(Box::new("sandbox: dropping the connection unprocessed"));
        }
        _ => None,
    }
}

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
