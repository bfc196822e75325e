//! The HTTP client shared by the connectors: rustls (ring, no OpenSSL), timeouts on connect
//! and on the whole request, and the sorting of transport errors into "never sent" and "may
//! have been processed". [`exchange`] is the one way a connector sends a request: send, read
//! the server's `Date` into the destination's clock offset, classify. [`reach`] is the one way
//! `doctor` asks whether a destination answers at all.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, DATE, RETRY_AFTER};

use crate::config::SyncSettings;
use crate::destinations::clock::ClockOffset;
use crate::destinations::Attempt;

/// The longest `Retry-After` honoured; a broken header must not park a refund for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

static CRYPTO: Once = Once::new();

/// Builds the client every connector uses.
pub fn client(settings: &SyncSettings) -> Result<reqwest::Client, reqwest::Error> {
    CRYPTO.call_once(|| {
        // Another component may have installed a provider first; either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("refund-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The server's `Date` header: its clock, from which the clock offset is measured.
    pub date: Option<SystemTime>,
    pub body: String,
}

/// Why no response was read.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// The connection was never made: the server cannot have seen the request.
    NotSent(String),
    /// The request may have reached the server (timeout, reset while waiting for the answer).
    Unknown(String),
}

/// Sends a request and reads the whole response.
pub async fn send(request: reqwest::RequestBuilder) -> Result<Response, SendError> {
    let response = request.send().await.map_err(classify_error)?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let date = date(response.headers());
    match response.text().await {
        Ok(body) => Ok(Response { status, retry_after, date, body }),
        // The status line arrived, so the server decided; only its details were lost.
        Err(e) => Ok(Response { status, retry_after, date, body: format!("(body unreadable: {e})") }),
    }
}

/// Sends a connector's request and classifies the answer: the tail every connector shares.
/// An answer's `Date` updates the destination's clock offset before `classify` reads it; a
/// request that never left is `Unreachable`, one whose answer was lost is `Ambiguous`.
pub async fn exchange(
    request: reqwest::RequestBuilder,
    clock: &ClockOffset,
    classify: impl FnOnce(&Response) -> Attempt,
) -> Attempt {
    match send(request).await {
        Ok(r) => {
            if let Some(date) = r.date {
                clock.observe(date, crate::clock::now_ms());
            }
            classify(&r)
        }
        Err(SendError::NotSent(e)) => Attempt::Unreachable(e),
        Err(SendError::Unknown(e)) => Attempt::Ambiguous(e),
    }
}

/// What a destination answered to a reachability check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    pub status: u16,
    /// The server's `Date` header, for a clock check.
    pub date: Option<SystemTime>,
}

/// One `HEAD` to `url`: DNS, TCP and TLS in one go. Any HTTP answer, even 404 or 405, proves
/// the path works; the error (with its causes) says why no answer came.
pub async fn reach(client: &reqwest::Client, url: &reqwest::Url) -> Result<Reached, String> {
    let answer = client.head(url.clone()).send().await.map_err(|e| error_chain(&e))?;
    Ok(Reached { status: answer.status().as_u16(), date: date(answer.headers()) })
}

fn classify_error(e: reqwest::Error) -> SendError {
    let text = error_chain(&e);
    if e.is_connect() {
        SendError::NotSent(text)
    } else {
        SendError::Unknown(text)
    }
}

/// The error with its causes, which carry the useful part ("connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The server's `Date` header as a time, when it is a valid HTTP date.
pub fn date(headers: &HeaderMap) -> Option<SystemTime> {
    headers.get(DATE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok())
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999999"));
        assert_eq!(retry_after(&h, now), Some(MAX_RETRY_AFTER));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
