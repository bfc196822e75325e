//! What a hostile or broken server does that the fault kinds need: bodies made as they are sent
//! (a 400 MiB error page that is never held in memory, a body dripped a byte at a time), and the
//! other host a redirect points at, which records every request that reaches it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::Router;
use hyper::body::{Frame, SizeHint};
use tokio::task::JoinHandle;

/// The piece a huge body is made of, sent again and again.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A body made while it is sent: `remaining` filler bytes, or the bytes of `drip` one per
/// `interval`.
#[derive(Debug)]
pub struct LazyBody {
    remaining: u64,
    drip: Option<(Bytes, Duration)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LazyBody {
    /// `size` bytes of filler; nothing is allocated however large it is.
    pub fn huge(size: u64) -> Body {
        Body::new(LazyBody { remaining: size, drip: None, sleep: None })
    }

    /// `bytes`, one every `interval`.
    pub fn drip(bytes: Bytes, interval: Duration) -> Body {
        Body::new(LazyBody { remaining: 0, drip: Some((bytes, interval)), sleep: None })
    }
}

impl hyper::body::Body for LazyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some((bytes, interval)) = &mut this.drip {
            if bytes.is_empty() {
                return Poll::Ready(None);
            }
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*interval)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
            return Poll::Ready(Some(Ok(Frame::data(bytes.split_to(1)))));
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(FILLER.len() as u64);
        this.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILLER[..n as usize])))))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.drip {
            Some((bytes, _)) => SizeHint::with_exact(bytes.len() as u64),
            None => SizeHint::with_exact(self.remaining),
        }
    }
}

/// One request that reached the redirect target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub method: String,
    pub path: String,
    /// The header names it carried (credentials among them, if a client followed a redirect).
    pub headers: Vec<String>,
    pub body_len: usize,
}

/// A second loopback listener, the "other host" of [`super::Fault::Redirect`]: it answers every
/// request 200 and records it.
#[derive(Debug)]
pub struct RedirectTarget {
    addr: SocketAddr,
    arrived: Arc<Mutex<Vec<Arrived>>>,
    task: JoinHandle<()>,
}

impl RedirectTarget {
    pub async fn start() -> std::io::Result<RedirectTarget> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let arrived: Arc<Mutex<Vec<Arrived>>> = Arc::default();
        let app = Router::new().fallback(record).with_state(arrived.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RedirectTarget { addr, arrived, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request that reached it.
    pub fn arrived(&self) -> Vec<Arrived> {
        self.arrived.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for RedirectTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(arrived): State<Arc<Mutex<Vec<Arrived>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let seen = Arrived {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers.keys().map(|k| k.to_string()).collect(),
        body_len: body.len(),
    };
    arrived.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
    "ok"
}
