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
    /// Never answer and never process the request (the client's timeout fires).
    Hang,
    /// Close the connection without processing the request or answering.
    Reset,
    /// Process the request, then answer this server error (500, 502, 504): an error after the
    /// write, as from a load balancer that timed out.
    CommitThenStatus(u16),
    /// Answer `307` to this address (another host) without processing.
    Redirect(SocketAddr),
    /// Answer this status without processing, with a body of this many bytes, made as it is sent.
    HugeBody(u16, u64),
    /// Process the request, then send the answer's body one byte every 100 ms.
    Drip,
    /// Answer this status without processing, with a `Date` this many seconds off the real time.
    FarDate(u16, i64),
}

impl Fault {
    /// Whether the client cannot tell if the request was processed: no answer came, or an
    /// answer that may follow the commit.
    pub fn is_ambiguous(&self) -> bool {
        !matches!(self, Fault::Status(..) | Fault::Redirect(_) | Fault::HugeBody(..) | Fault::FarDate(..))
    }

    /// Whether the request ends in [`unprocessed`], never reaching the handler's own work.
    pub fn is_unprocessed(&self) -> bool {
        matches!(
            self,
            Fault::Hang | Fault::Reset | Fault::Redirect(_) | Fault::HugeBody(..) | Fault::FarDate(..)
        )
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
    /// Processed, then 500, 502 or 504.
    pub commit_then_5xx: u32,
    /// `307` to `redirect_to` (never struck while that is `None`).
    pub redirect: u32,
    pub redirect_to: Option<SocketAddr>,
    /// `500` with a 400 MiB body.
    pub huge_body: u32,
    /// Processed, then the body dripped.
    pub drip: u32,
    /// `503` with a `Date` 30 days ahead.
    pub far_date: u32,
}

/// 400 MiB: a body that would hurt if a client read it whole.
pub const HUGE_BODY: u64 = 400 * 1024 * 1024;

/// Thirty days, in seconds: far beyond any clock a client should believe.
pub const FAR_DATE_SECS: i64 = 30 * 24 * 3600;

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
            (self.commit_then_5xx, Fault::CommitThenStatus([500, 502, 504][draw as usize % 3])),
            (self.huge_body, Fault::HugeBody(500, HUGE_BODY)),
            (self.drip, Fault::Drip),
            (self.far_date, Fault::FarDate(503, FAR_DATE_SECS)),
        ];
        let redirect = self.redirect_to.map(|to| (self.redirect, Fault::Redirect(to)));
        let mut below = 0;
        for (share, fault) in table.into_iter().chain(redirect) {
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
        let mut script = self.0.lock().unwrap_or_else(|p| p.into_inner());
        script.queued.extend(std::iter::repeat_n(fault, times));
    }

    /// From now on, strikes requests at random with `mix` (reproducibly for a `seed`); `None`
    /// stops the random faults.
    pub fn randomly(&self, seed: u64, mix: Option<FaultMix>) {
        let mut script = self.0.lock().unwrap_or_else(|p| p.into_inner());
        script.random = mix.map(|mix| (StdRng::seed_from_u64(seed), mix));
    }

    pub fn next(&self) -> Option<Fault> {
        let mut script = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fault) = script.queued.pop_front() {
            return Some(fault);
        }
        let (rng, mix) = script.random.as_mut()?;
        mix.pick(rng.random_range(0..1000))
    }
}

/// Ends a request that the fault says is never processed: hangs until `release` (the client's
/// timeout fires first), drops the connection, redirects, or answers with a huge body or a
/// far-off `Date`. `None` for any other fault.
pub async fn unprocessed(release: &Notify, fault: &Option<Fault>) -> Option<axum::response::Response> {
    match fault {
        Some(Fault::Redirect(to)) => {
            let location = format!("http://{to}/redirected");
            Some((StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, location)]).into_response())
        }
        Some(Fault::HugeBody(status, size)) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some((status, super::hostile::LazyBody::huge(*size)).into_response())
        }
        Some(Fault::FarDate(status, secs)) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let (now, off) = (std::time::SystemTime::now(), Duration::from_secs(secs.unsigned_abs()));
            let at = if *secs >= 0 { now + off } else { now - off };
            let date = httpdate::fmt_http_date(at);
            Some(
                (status, [(axum::http::header::DATE, date)], "Injected failure with a far-off Date")
                    .into_response(),
            )
        }
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
        Some(Fault::CommitThenStatus(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, "Injected failure after the refund was processed").into_response()
        }
        Some(Fault::Drip) => {
            let (parts, body) = ok.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let dripped = super::hostile::LazyBody::drip(bytes, Duration::from_millis(100));
            axum::response::Response::from_parts(parts, dripped)
        }
        Some(Fault::CommitThenDrop) => {
            // Ending the handler by unwinding makes hyper close the connection without an answer
            // (`resume_unwind` skips the panic hook, so nothing is printed).
            std::panic::resume_unwind(Box::new("sandbox: dropping the connection after commit"));
        }
        _ => ok,
    }
}
