//! The accept loops of the control API's listeners, with the limits that keep a flood of
//! half-open connections from exhausting file descriptors (and with them the watchdog's
//! notify socket) or the API: at most [`MAX_CONNECTIONS`] served at once, a deadline for every
//! request head, and an age after which a connection is wound down.
//!
//! `axum::serve` exposes none of these, so each connection is served here with hyper's HTTP/1
//! connection directly; the [`Guard`] runs on every request before the router sees it.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::serve::Listener;
use axum::Router;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::guard::Guard;
use crate::queue::AuditCaller;
use crate::shutdown::Shutdown;

/// Connections served at once per listener; one more is closed at once, unread, so it holds
/// no descriptor. A kiosk UI and a technician need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head. hyper starts this clock whenever the
/// connection waits for a head, so it also closes a keep-alive connection idle this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After this a connection finishes the request in flight and closes (a stalled body cannot
/// hold a slot for ever); a client simply opens a new one.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30);
/// How long a connection being wound down at shutdown may still take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a request in flight when its connection reaches [`MAX_CONNECTION_AGE`] may still
/// take. The longest handler is a refund with `read_card`: the terminal's 30 s read, 5 s for its
/// answer and 5 s for an abort, then validation and the commit. A shorter grace would cut the
/// answer of a refund already queued, and the kiosk would not know it was made.
const AGE_GRACE: Duration = Duration::from_secs(50);

/// Who is on the other end of a connection, as handlers see it (an axum `Extension`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A Unix socket peer, from `SO_PEERCRED`.
    Unix { uid: u32, pid: Option<i32> },
    /// A loopback TCP peer (already authenticated by its token).
    Tcp { addr: SocketAddr },
}

impl Caller {
    pub fn uid(&self) -> Option<u32> {
        match self {
            Caller::Unix { uid, .. } => Some(*uid),
            Caller::Tcp { .. } => None,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            Caller::Unix { pid, .. } => *pid,
            Caller::Tcp { .. } => None,
        }
    }

    /// How the audit log records this caller.
    pub fn audit(&self) -> AuditCaller {
        match self {
            Caller::Unix { uid, pid } => AuditCaller::unix(*uid, *pid),
            Caller::Tcp { addr } => AuditCaller::tcp(*addr),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unix { uid, pid: Some(pid) } => write!(f, "unix uid {uid} pid {pid}"),
            Caller::Unix { uid, pid: None } => write!(f, "unix uid {uid}"),
            Caller::Tcp { addr } => write!(f, "tcp {addr}"),
        }
    }
}

/// What a listener knows of the peer of an accepted connection.
pub trait Peer: Listener {
    fn caller(io: &Self::Io, addr: &Self::Addr) -> Caller;
}

impl Peer for tokio::net::UnixListener {
    fn caller(io: &Self::Io, _: &Self::Addr) -> Caller {
        match io.peer_cred() {
            Ok(cred) => Caller::Unix { uid: cred.uid(), pid: cred.pid() },
            // Linux always has the credentials of a connected socket; a uid that matches
            // nobody is recorded rather than refusing the trusted path.
            Err(_) => Caller::Unix { uid: u32::MAX, pid: None },
        }
    }
}

impl Peer for tokio::net::TcpListener {
    fn caller(_: &Self::Io, addr: &Self::Addr) -> Caller {
        Caller::Tcp { addr: *addr }
    }
}

/// Serves `app` on `listener` behind `guard` until `shutdown`, then lets the connections
/// finish (each within [`CLOSE_GRACE`]).
pub async fn serve<L: Peer>(mut listener: L, app: Router, guard: Guard, mut shutdown: Shutdown) {
    let guard = Arc::new(guard);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // axum's `accept` retries by itself on errors such as EMFILE, after a pause.
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.recv() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed unread: the client sees the connection close before any answer, and
            // nothing was acted on. Answering would mean reading the request first.
            drop(io);
            tracing::warn!(limit = MAX_CONNECTIONS, "control API connection refused: too many connections");
            continue;
        };
        let caller = L::caller(&io, &addr);
        let service = service(app.clone(), guard.clone(), caller);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(TokioIo::new(io), service, shutdown).await;
            drop(slot);
        });
    }
    // Every connection holds a slot until it ends, so holding them all means all have ended.
    let all = u32::try_from(MAX_CONNECTIONS).expect("the connection limit fits in u32");
    let drained = tokio::time::timeout(CLOSE_GRACE * 2, slots.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("control API connections still open at shutdown; dropping them");
    }
}

/// The per-request service: the guard, then the router, with the caller as an extension.
fn service(
    app: Router,
    guard: Arc<Guard>,
    caller: Caller,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let checked = guard.check(req.headers(), !req.body().is_end_stream());
        req.extensions_mut().insert(caller);
        let app = app.clone();
        async move {
            match checked {
                Ok(()) => app.oneshot(req.map(axum::body::Body::new)).await,
                Err(refusal) => {
                    tracing::info!(code = refusal.code(), peer = %caller, method = %req.method(), path = %req.uri().path(), "control API request refused");
                    Ok(refusal.into_response())
                }
            }
        }
    })
}

async fn serve_connection<S, B>(io: TokioIo<S>, service: B, mut shutdown: Shutdown)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::service::Service<
            Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    B::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(MAX_CONNECTION_AGE);
    tokio::pin!(deadline);
    let mut closing = false;
    let mut grace = AGE_GRACE;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "control API connection ended with an error");
                }
                return;
            }
            _ = shutdown.recv(), if !closing => {
                grace = CLOSE_GRACE;
            }
            _ = &mut deadline => {
                if closing {
                    tracing::debug!("control API connection did not close in time; dropped");
                    return;
                }
            }
        }
        // Either shutdown or the connection's age: finish what is in flight, then close.
        conn.as_mut().graceful_shutdown();
        closing = true;
        deadline.as_mut().reset(tokio::time::Instant::now() + grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_recorded_as_the_audit_log_spells_them() {
        let unix = Caller::Unix { uid: 1000, pid: Some(4242) };
        assert_eq!(unix.audit().as_str(), "unix uid=1000 pid=4242");
        assert_eq!(Caller::Unix { uid: 0, pid: None }.audit().as_str(), "unix uid=0");
        let tcp = Caller::Tcp { addr: "127.0.0.1:7878".parse().expect("an address") };
        assert_eq!(tcp.audit().as_str(), "tcp 127.0.0.1:7878");
        assert_eq!(AuditCaller::terminal().as_str(), "terminal");
        assert_eq!(AuditCaller::agent().as_str(), "agent");
    }
}
