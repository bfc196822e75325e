//! The CLI's side of the control API: HTTP/1.1 over the Unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent is not running or the socket is not ours to use: nothing was sent.
    #[error("cannot reach the agent at {path}: {message} (is `refund-agent run` active? see `refund-agent doctor`)")]
    Connect { path: PathBuf, message: String },
    /// The request was sent but the answer was lost: it may or may not have been acted on.
    #[error("the agent did not answer: {0}")]
    Lost(String),
}

impl ClientError {
    /// Whether the request certainly did not reach the agent.
    pub fn not_sent(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
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
}

impl ControlClient {
    pub fn new(socket: &Path) -> ControlClient {
        ControlClient { socket: socket.to_path_buf() }
    }

    /// Sends one request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let mut conn = self.connect().await?;
        conn.request(method, path, body, headers).await
    }

    /// Opens a connection that can carry many requests (HTTP keep-alive), as a kiosk UI would.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let connect_error = |e: &dyn std::fmt::Display| ClientError::Connect {
            path: self.socket.clone(),
            message: e.to_string(),
        };
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| connect_error(&e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(&e))?;
        let driver = tokio::spawn(conn);
        Ok(Connection { sender, driver })
    }
}

/// One open connection to the agent.
#[derive(Debug)]
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        // A connection that is closed before the request is written has sent nothing.
        self.sender.ready().await.map_err(|e| ClientError::Connect {
            path: PathBuf::from("(open connection)"),
            message: e.to_string(),
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
    }
}
