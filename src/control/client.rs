//! The CLI's side of the control API: HTTP/1.1 over the Unix socket, every exchange bounded
//! by a timeout, so an agent that accepts a connection and never answers (stuck, or its
//! socket's backlog full) cannot hang a command for ever.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

/// How long one request may take, connecting included, unless the caller says otherwise
/// (`--timeout`). The agent answers in milliseconds; this only ends a wait that would not.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent is not running or the socket is not ours to use: nothing was sent.
    #[error("cannot reach the agent at {path}: {message} (is `refund-agent run` active? see `refund-agent doctor`)")]
    Connect { path: PathBuf, message: String },
    /// The request was sent but the answer was lost: it may or may not have been acted on.
    #[error("the agent did not answer: {0}")]
    Lost(String),
    /// No answer within the timeout. `sent` says whether the request had been handed over
    /// (then it may or may not have been acted on).
    #[error(
        "the agent did not answer within {}: {} (is it overloaded or stuck? see its logs and `refund-agent doctor`; `--timeout` waits longer)",
        humantime::format_duration(*after),
        if *sent { "the request was sent and may or may not have been acted on" } else { "nothing was sent" }
    )]
    TimedOut { after: Duration, sent: bool },
}

impl ClientError {
    /// Whether the request certainly did not reach the agent.
    pub fn not_sent(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::TimedOut { sent: false, .. })
    }
}

/// An answer: status and raw JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A client for one control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket: PathBuf,
    /// The most one request may take, connecting included.
    timeout: Duration,
}

impl ControlClient {
    /// A client with the [`DEFAULT_TIMEOUT`].
    pub fn new(socket: &Path) -> ControlClient {
        ControlClient { socket: socket.to_path_buf(), timeout: DEFAULT_TIMEOUT }
    }

    /// The most one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same client, with `timeout` for each request (and for connecting).
    pub fn with_timeout(self, timeout: Duration) -> ControlClient {
        ControlClient { timeout, ..self }
    }

    /// Sends one request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        // One deadline for connecting and the exchange together.
        let deadline = Instant::now() + self.timeout;
        let mut conn = self.connect_until(deadline).await?;
        conn.request_until(deadline, method, path, body, headers).await
    }

    /// Opens a connection that can carry many requests (HTTP keep-alive), as a kiosk UI would.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        self.connect_until(Instant::now() + self.timeout).await
    }

    async fn connect_until(&self, deadline: Instant) -> Result<Connection, ClientError> {
        let connect_error = |e: &dyn std::fmt::Display| ClientError::Connect {
            path: self.socket.clone(),
            message: e.to_string(),
        };
        let timed_out = ClientError::TimedOut { after: self.timeout, sent: false };
        let stream = timeout_at(deadline, UnixStream::connect(&self.socket))
            .await
            .map_err(|_| timed_out)?
            .map_err(|e| connect_error(&e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(&e))?;
        let driver = tokio::spawn(conn);
        Ok(Connection { sender, driver, timeout: self.timeout })
    }
}

/// One open connection to the agent.
#[derive(Debug)]
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<hyper::Result<()>>,
    /// The most one request on it may take.
    timeout: Duration,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// Sends one request and reads the whole answer, within the client's timeout.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        self.request_until(Instant::now() + self.timeout, method, path, body, headers).await
    }

    async fn request_until(
        &mut self,
        deadline: Instant,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let timed_out = |sent| ClientError::TimedOut { after: self.timeout, sent };
        // A connection that is closed (or still busy) before the request is written has sent
        // nothing.
        timeout_at(deadline, self.sender.ready()).await.map_err(|_| timed_out(false))?.map_err(|e| {
            ClientError::Connect { path: PathBuf::from("(open connection)"), message: e.to_string() }
        })?;
        let mut builder = Request::builder().method(method).uri(path).header("host", "refund-agent");
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Lost(format!("bad request: {e}")))?;
        let exchange = async {
            let response =
                self.sender.send_request(request).await.map_err(|e| ClientError::Lost(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Lost(e.to_string()))?
                .to_bytes()
                .to_vec();
            Ok(Answer { status, body })
        };
        timeout_at(deadline, exchange).await.map_err(|_| timed_out(true))?
    }
}
