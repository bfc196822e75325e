//! Who may call the control API (SPEC section 4, "Who may call it"): the checks every request
//! passes before any handler runs. Pure: it looks at the request head only, so it is
//! unit-tested with plain header maps.
//!
//! The Unix socket is the trusted path (its file mode and group decide who connects), so there
//! only the body rule applies. The loopback TCP listener is reachable by every local program and
//! by every web page in the kiosk's browser, so there, in this order: the `Host` must name the
//! listener itself (a DNS-rebinding page sends its own name), an `Origin` must be listed in
//! `control.allowed_origins` (a foreign page's script), the bearer token must match, and a body
//! must be JSON (an HTML form or a `text/plain` fetch needs no CORS preflight, a JSON one does).

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use super::api::ApiError;

/// Why a request was refused before reaching a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the Host header must name this listener's own loopback address or localhost")]
    ForbiddenHost,
    #[error("this Origin is not listed in control.allowed_origins")]
    ForbiddenOrigin,
    #[error("missing or wrong bearer token (Authorization: Bearer <token from control.tcp_token_file>)")]
    Unauthorized,
    #[error("a request body must be Content-Type: application/json")]
    UnsupportedMediaType,
}

impl Refusal {
    /// The stable `code` of the error body.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::ForbiddenHost => "forbidden_host",
            Refusal::ForbiddenOrigin => "forbidden_origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::ForbiddenHost | Refusal::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ApiError { code: self.code().into(), message: self.to_string() };
        let mut response = (self.status(), Json(body)).into_response();
        if self == Refusal::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The rules of the TCP listener.
pub struct TcpRules {
    /// The `Host` values that name this listener (`127.0.0.1:7878`, `localhost:7878`), lower case.
    hosts: Vec<String>,
    /// `control.allowed_origins`, compared without a trailing slash.
    origins: Vec<String>,
    /// The SHA-256 of the token: comparing digests takes the same time whatever the guess and
    /// does not reveal the token's length.
    token_digest: [u8; 32],
}

impl std::fmt::Debug for TcpRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRules").field("hosts", &self.hosts).field("origins", &self.origins).finish()
    }
}

impl TcpRules {
    /// The rules for a listener bound to `local` (its real address, port 0 resolved).
    pub fn new(local: SocketAddr, token: &str, allowed_origins: &[String]) -> TcpRules {
        let port = local.port();
        // `SocketAddr`'s Display writes an IPv6 address in brackets, as a Host header does.
        let hosts = vec![local.to_string().to_ascii_lowercase(), format!("localhost:{port}")];
        let origins = allowed_origins.iter().map(|o| o.trim_end_matches('/').to_string()).collect();
        TcpRules { hosts, origins, token_digest: Sha256::digest(token.as_bytes()).into() }
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let host = host.trim().to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        origins.all(|o| {
            o.to_str().is_ok_and(|o| self.origins.iter().any(|allowed| allowed == o.trim_end_matches('/')))
        })
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        constant_time_eq(&digest, &self.token_digest)
    }
}

/// Equal slices of equal length, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A body must be JSON, named by exactly one `Content-Type` (two could be read differently by
/// different parsers); parameters (`; charset=utf-8`) are allowed.
fn json_body_ok(headers: &HeaderMap, has_body: bool) -> bool {
    if !has_body {
        return true;
    }
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The checks of one listener.
#[derive(Debug)]
pub struct Guard {
    /// `None` on the Unix socket.
    tcp: Option<TcpRules>,
}

impl Guard {
    /// The Unix socket's guard: JSON bodies only.
    pub fn unix() -> Guard {
        Guard { tcp: None }
    }

    /// The TCP listener's guard.
    pub fn tcp(rules: TcpRules) -> Guard {
        Guard { tcp: Some(rules) }
    }

    /// Checks one request head: Host, Origin, token, content type, in that order.
    pub fn check(&self, headers: &HeaderMap, has_body: bool) -> Result<(), Refusal> {
        if let Some(rules) = &self.tcp {
            if !rules.host_ok(headers) {
                return Err(Refusal::ForbiddenHost);
            }
            if !rules.origin_ok(headers) {
                return Err(Refusal::ForbiddenOrigin);
            }
            if !rules.token_ok(headers) {
                return Err(Refusal::Unauthorized);
            }
        }
        if !json_body_ok(headers, has_body) {
            return Err(Refusal::UnsupportedMediaType);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        let local: SocketAddr = "127.0.0.1:7878".parse().expect("an address");
        Guard::tcp(TcpRules::new(local, "s3cret", &["http://kiosk.local/".into()]))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("a header value"));
        }
        h
    }

    const GOOD: [(&str, &str); 3] = [
        ("host", "127.0.0.1:7878"),
        ("authorization", "Bearer s3cret"),
        ("content-type", "application/json"),
    ];

    #[test]
    fn a_good_request_passes_and_each_rule_has_its_code() {
        let g = guard();
        assert_eq!(g.check(&headers(&GOOD), true), Ok(()));
        let with = |k: &'static str, v: &str| {
            let mut h = headers(&GOOD);
            h.insert(k, v.parse().expect("a header value"));
            g.check(&h, true)
        };
        assert_eq!(with("host", "LOCALHOST:7878"), Ok(()));
        assert_eq!(with("host", "evil.example:7878"), Err(Refusal::ForbiddenHost));
        assert_eq!(with("host", "127.0.0.1:7879"), Err(Refusal::ForbiddenHost));
        assert_eq!(with("origin", "http://kiosk.local"), Ok(()));
        assert_eq!(with("origin", "http://127.0.0.1:9999"), Err(Refusal::ForbiddenOrigin));
        assert_eq!(with("origin", "null"), Err(Refusal::ForbiddenOrigin));
        assert_eq!(with("authorization", "Bearer wrong"), Err(Refusal::Unauthorized));
        assert_eq!(with("authorization", "Basic s3cret"), Err(Refusal::Unauthorized));
        assert_eq!(with("content-type", "application/json; charset=utf-8"), Ok(()));
        assert_eq!(with("content-type", "text/plain"), Err(Refusal::UnsupportedMediaType));
        assert_eq!(
            with("content-type", "application/x-www-form-urlencoded"),
            Err(Refusal::UnsupportedMediaType)
        );
    }

    #[test]
    fn host_is_checked_first_then_origin_then_token() {
        let g = guard();
        let h = headers(&[("host", "evil.example"), ("origin", "http://evil.example")]);
        assert_eq!(g.check(&h, true), Err(Refusal::ForbiddenHost));
        let h = headers(&[("host", "localhost:7878"), ("origin", "http://evil.example")]);
        assert_eq!(g.check(&h, true), Err(Refusal::ForbiddenOrigin));
        let h = headers(&[("host", "localhost:7878"), ("content-type", "text/plain")]);
        assert_eq!(g.check(&h, true), Err(Refusal::Unauthorized));
        assert_eq!(g.check(&headers(&[]), false), Err(Refusal::ForbiddenHost));
    }

    #[test]
    fn the_unix_socket_needs_only_json_bodies() {
        let g = Guard::unix();
        assert_eq!(g.check(&headers(&[]), false), Ok(()));
        assert_eq!(g.check(&headers(&[]), true), Err(Refusal::UnsupportedMediaType));
        assert_eq!(g.check(&headers(&[("content-type", "application/json")]), true), Ok(()));
        let two = headers(&[("content-type", "application/json"), ("content-type", "text/plain")]);
        assert_eq!(g.check(&two, true), Err(Refusal::UnsupportedMediaType));
    }

    #[test]
    fn rules_never_show_the_token() {
        let local: SocketAddr = "[::1]:80".parse().expect("an address");
        let rules = TcpRules::new(local, "s3cret", &[]);
        assert_eq!(rules.hosts, ["[::1]:80", "localhost:80"]);
        assert!(!format!("{rules:?}").contains("s3cret"));
    }
}
