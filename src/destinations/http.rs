//! The HTTP client shared by the connectors: rustls (ring, no OpenSSL), timeouts on connect
//! and on the whole request, and the sorting of transport errors into "never sent" and "may
//! have been processed". [`exchange`] is the one way a connector sends a request: send, read
//! the server's `Date` into the destination's clock offset, classify. [`reach`] is the one way
//! `doctor` asks whether a destination answers at all.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, DATE, LOCATION, RETRY_AFTER};

use crate::config::SyncSettings;
use crate::destinations::clock::{ClockOffset, Observed};
use crate::destinations::{Attempt, Capability};

/// The longest `Retry-After` honoured; a broken header must not park a refund for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The most of a response body read. The connectors' answers are a few hundred bytes; a broken
/// or hostile server's 400 MiB error page must not grow the agent's memory.
pub const MAX_BODY: usize = 64 * 1024;

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
        // A redirect would send the request, its credentials and the refund to another URL
        // than the configured one; a 3xx is an answer that fails the delivery instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("refund-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A response, its body read up to [`MAX_BODY`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The server's `Date` header: its clock, from which the clock offset is measured.
    pub date: Option<SystemTime>,
    /// The `Location` of a redirect (cut to 200 characters), to name it in the error.
    pub location: Option<String>,
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

/// Sends a request and reads the response, its body up to [`MAX_BODY`]: a longer body is cut
/// there and its connection dropped, unread.
pub async fn send(request: reqwest::RequestBuilder) -> Result<Response, SendError> {
    let mut response = request.send().await.map_err(classify_error)?;
    let status = response.status().as_u16();
    let headers = response.headers();
    let retry_after = retry_after(headers, SystemTime::now());
    let date = date(headers);
    let location =
        headers.get(LOCATION).map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(200).collect());
    let mut bytes = Vec::new();
    let mut unreadable = None;
    while bytes.len() < MAX_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - bytes.len())]),
            Ok(None) => break,
            Err(e) => {
                unreadable = Some(error_chain(&e));
                break;
            }
        }
    }
    // Dropping `response` with its body unread closes the connection: nothing more is read.
    drop(response);
    let body = match unreadable {
        // The status line arrived, so the server decided; only its details were lost.
        Some(e) => format!("(body unreadable: {e})"),
        None => String::from_utf8_lossy(&bytes).into_owned(),
    };
    Ok(Response { status, retry_after, date, location, body })
}

/// Sends a connector's request and classifies the answer: the tail every connector shares.
/// A redirect is refused here, before any connector reads it. The answer's `Date` goes into the
/// destination's clock offset only when `authenticates` says the answer vouches for it; what
/// became of it is handed to `classify`. A request that never left is `Unreachable`, one whose
/// answer was lost is `Ambiguous`.
pub async fn exchange(
    request: reqwest::RequestBuilder,
    clock: &ClockOffset,
    authenticates: impl FnOnce(&Response) -> bool,
    classify: impl FnOnce(&Response, Observed) -> Attempt,
) -> Attempt {
    let r = match send(request).await {
        Ok(r) => r,
        Err(SendError::NotSent(e)) => return Attempt::Unreachable(e),
        Err(SendError::Unknown(e)) => return Attempt::Ambiguous(e),
    };
    if (300..=399).contains(&r.status) {
        return redirect_refused(r.status, r.location.as_deref());
    }
    let observed = match r.date {
        None => Observed::NoDate,
        Some(date) if authenticates(&r) => clock.observe(date, crate::clock::now_ms()),
        Some(_) => Observed::Untrusted,
    };
    classify(&r, observed)
}

/// Whether an answer is a success, the answer that vouches for its `Date` at every destination.
pub fn is_success(r: &Response) -> bool {
    (200..=299).contains(&r.status)
}

/// A 3xx: the server we sent the request to answered it, and the agent never follows it
/// elsewhere. A person looks; nothing is sent again. Pure.
pub fn redirect_refused(status: u16, location: Option<&str>) -> Attempt {
    let to = location.map(|l| format!(" to {l}")).unwrap_or_default();
    Attempt::Failed(format!(
        "HTTP {status}: the destination answered with a redirect{to}, and redirects are refused (check base_url)"
    ))
}

/// What a status says about whether the server processed the request, the same at every
/// destination; `None` leaves the status to the connector. Pure.
///
/// 408, 429 and 503 say the request was not processed: sent again after `retry_after` or
/// backoff. Any other 5xx (500, 502, 504, …) may come after the server committed (a load
/// balancer timing out, an error after the write): sent again only where the destination
/// deduplicates on our id, otherwise `Ambiguous` exactly like a lost answer.
pub fn retry_status(
    status: u16,
    capability: Capability,
    retry_after: Option<Duration>,
    describe: impl FnOnce() -> String,
) -> Option<Attempt> {
    match status {
        408 | 429 | 503 => Some(Attempt::Transient { retry_after, error: describe() }),
        500..=599 if capability.dedup => Some(Attempt::Transient { retry_after, error: describe() }),
        500..=599 => Some(Attempt::Ambiguous(format!(
            "{}, which may come after the destination processed the request",
            describe()
        ))),
        _ => None,
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

    const DEDUP: Capability = Capability { dedup: true, moves_money: false };
    const NO_DEDUP: Capability = Capability { dedup: false, moves_money: true };

    #[test]
    fn only_answers_that_say_unprocessed_are_retried_without_dedup() {
        let wait = Some(Duration::from_secs(4));
        for s in [408, 429, 503] {
            for cap in [DEDUP, NO_DEDUP] {
                let a = retry_status(s, cap, wait, || format!("HTTP {s}"));
                assert_eq!(a, Some(Attempt::Transient { retry_after: wait, error: format!("HTTP {s}") }));
            }
        }
        for s in [500, 501, 502, 504, 507, 599] {
            let a = retry_status(s, NO_DEDUP, wait, || format!("HTTP {s}"));
            assert!(
                matches!(&a, Some(Attempt::Ambiguous(m)) if m.starts_with(&format!("HTTP {s}"))),
                "{s}: {a:?}"
            );
            let a = retry_status(s, DEDUP, wait, || format!("HTTP {s}"));
            assert!(matches!(a, Some(Attempt::Transient { retry_after, .. }) if retry_after == wait), "{s}");
        }
        for s in [200, 201, 301, 400, 401, 404, 409, 422] {
            assert_eq!(retry_status(s, NO_DEDUP, None, String::new), None, "{s}");
        }
    }

    #[test]
    fn a_redirect_fails_and_names_its_target() {
        let a = redirect_refused(307, Some("http://127.0.0.1:9/elsewhere"));
        let Attempt::Failed(m) = a else { panic!("failed expected") };
        assert!(m.starts_with("HTTP 307"), "{m}");
        assert!(m.contains("redirects are refused") && m.contains("127.0.0.1:9/elsewhere"), "{m}");
        assert!(matches!(redirect_refused(301, None), Attempt::Failed(m) if !m.contains(" to ")));
    }
}
