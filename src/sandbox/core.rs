//! The one core the sandboxes share: their switchable server, the faults a test scripts, and
//! where those faults strike a request.
//!
//! A handler draws its fault with [`Injector::next`] when the request arrives, lets
//! [`Injector::before`] apply a fault that strikes before the request is processed, and ends with
//! [`Injector::after`] for a fault that strikes once it is processed. A new kind of fault is a
//! [`Fault`] variant (and a [`FaultMix`] share) applied in one of those two functions, so every
//! sandbox gets it at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use super::server::Switchable;
use crate::lock::lock;

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
}

/// 400 MiB: a body that would hurt if a client read it whole.
pub const HUGE_BODY: u64 = 400 * 1024 * 1024;

/// Thirty days, in seconds: far beyond any clock a client should believe.
pub const FAR_DATE_SECS: i64 = 30 * 24 * 3600;

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
struct Faults(Arc<Mutex<Script>>);

impl Faults {
    fn push(&self, fault: Fault, times: usize) {
        let mut script = lock(&self.0);
        script.queued.extend(std::iter::repeat_n(fault, times));
    }

    /// From now on, strikes requests at random with `mix` (reproducibly for a `seed`); `None`
    /// stops the random faults.
    fn randomly(&self, seed: u64, mix: Option<FaultMix>) {
        let mut script = lock(&self.0);
        script.random = mix.map(|mix| (StdRng::seed_from_u64(seed), mix));
    }

    fn next(&self) -> Option<Fault> {
        let mut script = lock(&self.0);
        if let Some(fault) = script.queued.pop_front() {
            return Some(fault);
        }
        let (rng, mix) = script.random.as_mut()?;
        mix.pick(rng.random_range(0..1000))
    }
}

/// How an injected fault struck a request before it was processed, for the sandbox's own record
/// of what it saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Struck {
    /// The request hangs or its connection is dropped: it is never answered.
    Unanswered,
    /// The request is answered with this status, unprocessed.
    Status(StatusCode),
}

/// The handlers' side of the core: draws each request's fault and applies it.
#[derive(Debug, Clone, Default)]
pub struct Injector {
    faults: Faults,
    /// Released when a hung request should finally end (when the server goes offline).
    release: Arc<Notify>,
}

impl Injector {
    /// The fault for the request that just arrived, if any.
    pub fn next(&self) -> Option<Fault> {
        self.faults.next()
    }

    /// Applies a fault that strikes before the request is processed: `record` notes it in the
    /// sandbox's log, and `answer` words an injected error status in the API's error format
    /// (the core adds `Retry-After`). `None` means the handler processes the request.
    pub async fn before(
        &self,
        fault: &Option<Fault>,
        record: impl FnOnce(Struck),
        answer: impl FnOnce(StatusCode) -> Response,
    ) -> Option<Response> {
        match fault {
            Some(Fault::Hang) => {
                record(Struck::Unanswered);
                self.release.notified().await;
                Some(StatusCode::SERVICE_UNAVAILABLE.into_response())
            }
            Some(Fault::Reset) => {
                record(Struck::Unanswered);
                std::panic::resume_unwind(Box::new("sandbox: dropping the connection unprocessed"));
            }
            Some(Fault::Status(code, retry_after)) => {
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                record(Struck::Status(status));
                let mut r = answer(status);
                if let Some(secs) = retry_after {
                    r.headers_mut().insert("retry-after", (*secs).into());
                }
                Some(r)
            }
            Some(Fault::Redirect(to)) => {
                record(Struck::Status(StatusCode::TEMPORARY_REDIRECT));
                let location = format!("http://{to}/redirected");
                Some(
                    (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, location)])
                        .into_response(),
                )
            }
            Some(Fault::HugeBody(code, size)) => {
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                record(Struck::Status(status));
                Some((status, super::hostile::LazyBody::huge(*size)).into_response())
            }
            Some(Fault::FarDate(code, secs)) => {
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                record(Struck::Status(status));
                let (now, off) = (std::time::SystemTime::now(), Duration::from_secs(secs.unsigned_abs()));
                let at = if *secs >= 0 { now + off } else { now - off };
                let date = httpdate::fmt_http_date(at);
                Some(
                    (status, [(axum::http::header::DATE, date)], "Injected failure with a far-off Date")
                        .into_response(),
                )
            }
            _ => None,
        }
    }

    /// Ends a handler that already processed its request, as the scripted fault says: answer,
    /// hang until the server goes offline, drop the connection without an answer, answer a
    /// server error after all, or drip the answer's body.
    pub async fn after(&self, fault: Option<Fault>, ok: Response) -> Response {
        match fault {
            Some(Fault::CommitThenHang) => {
                self.release.notified().await;
                ok
            }
            Some(Fault::CommitThenDrop) => {
                // Ending the handler by unwinding makes hyper close the connection without an
                // answer (`resume_unwind` skips the panic hook, so nothing is printed).
                std::panic::resume_unwind(Box::new("sandbox: dropping the connection after commit"));
            }
            Some(Fault::CommitThenStatus(code)) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, "Injected failure after the refund was processed").into_response()
            }
            Some(Fault::Drip) => {
                let (parts, body) = ok.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                let dripped = super::hostile::LazyBody::drip(bytes, Duration::from_millis(100));
                Response::from_parts(parts, dripped)
            }
            _ => ok,
        }
    }
}

/// The test's side of the core, reached through each sandbox: where it listens, taking it
/// offline and back, and scripting faults.
#[derive(Debug)]
pub struct Core {
    server: Switchable,
    faults: Faults,
}

impl Core {
    /// Serves `app`, whose handlers use `injector`, on an ephemeral loopback port.
    pub async fn start(app: axum::Router, injector: &Injector) -> std::io::Result<Core> {
        let server = Switchable::start(app, injector.release.clone()).await?;
        Ok(Core { server, faults: injector.faults.clone() })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Closes the port: new connections are refused, as when the network is down.
    pub async fn go_offline(&self) {
        self.server.go_offline().await
    }

    /// Opens the same port again.
    pub async fn go_online(&self) -> std::io::Result<()> {
        self.server.go_online().await
    }

    /// Queues `fault` for the next `times` requests.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.faults.push(fault, times)
    }

    /// Strikes requests at random with `mix` from now on (reproducibly for `seed`); `None` stops.
    pub fn inject_randomly(&self, seed: u64, mix: Option<FaultMix>) {
        self.faults.randomly(seed, mix)
    }
}

/// Gives a sandbox (a struct with a `core: Core` field) the controls every sandbox shares
/// (`url`, `go_offline`, `go_online`, `inject`, …) straight from its [`Core`].
macro_rules! reach_core {
    ($sandbox:ty) => {
        impl std::ops::Deref for $sandbox {
            type Target = $crate::sandbox::core::Core;

            fn deref(&self) -> &Self::Target {
                &self.core
            }
        }
    };
}
pub(crate) use reach_core;
