//! Who may use the server: the Host allow-list (a defense against DNS rebinding) and the
//! bearer token (`--token-file`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::errors::{error, truncated};
use super::limits::HttpLimits;

/// Who may use the server: the Host names accepted, and the bearer token.
pub(super) struct Access {
    /// Lower-case host names (IPv6 addresses in brackets); `None`: any.
    hosts: Option<HashSet<String>>,
    token: Option<Vec<u8>>,
}

impl Access {
    pub(super) fn new(limits: &HttpLimits, bound: SocketAddr) -> Result<Access, String> {
        let hosts = if limits.allow_hosts.iter().any(|h| h == "*") {
            None
        } else {
            let mut hosts: HashSet<String> = ["localhost", "127.0.0.1", "[::1]"]
                .into_iter()
                .map(str::to_owned)
                .collect();
            if !bound.ip().is_unspecified() {
                hosts.insert(host_name(bound.ip()));
            }
            for host in &limits.allow_hosts {
                let host = host.to_ascii_lowercase();
                match host.parse::<IpAddr>() {
                    Ok(ip) => hosts.insert(host_name(ip)),
                    Err(_) => hosts.insert(host.trim_end_matches('.').to_owned()),
                };
            }
            Some(hosts)
        };
        let token = match &limits.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!(
                        "--token-file {}: the file is empty",
                        path.display()
                    ));
                }
                if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "--token-file {}: the token has a space or a control character",
                        path.display()
                    ));
                }
                Some(token.as_bytes().to_vec())
            }
        };
        Ok(Access { hosts, token })
    }

    /// `None` when the request's Host and (with `needs_token`) token are accepted, else
    /// the answer.
    fn refusal(&self, headers: &HeaderMap, needs_token: bool) -> Option<Response> {
        if let Some(hosts) = &self.hosts {
            let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                return Some(error(StatusCode::BAD_REQUEST, "a Host header is required"));
            };
            let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
            if !hosts.contains(&name) {
                return Some(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Host {:?} is not allowed (a defense against DNS rebinding): the \
                         loopback names and the bound address are; add it with --allow-host",
                        truncated(&name, 100)
                    ),
                ));
            }
        }
        if needs_token && let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                });
            let refused = |message: &str| {
                let mut response = error(StatusCode::UNAUTHORIZED, message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            };
            match given {
                None => {
                    return Some(refused(
                        "this server needs a bearer token (--token-file): \
                         send Authorization: Bearer <token>",
                    ));
                }
                Some(given) if !same_token(given.as_bytes(), token) => {
                    return Some(refused("the bearer token is not the right one"));
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// An address as a Host header names it (IPv6 in brackets).
fn host_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A Host header's name without its port.
fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Compares a given token with the expected one in a time that depends only on the
/// expected token's length.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = (given.len() != expected.len()) as u8;
    for (i, &e) in expected.iter().enumerate() {
        difference |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(difference) == 0
}

/// The Host allow-list and the bearer token, for every endpoint but `/healthz`; the
/// dashboard's page (`/`, which holds no data) needs an allowed Host, not the token.
pub(super) async fn guard(
    State(access): State<Arc<Access>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if path != "/healthz"
        && let Some(refused) = access.refusal(request.headers(), path != "/")
    {
        return refused;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_tokens() {
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
        assert!(same_token(b"abc", b"abc"));
        for wrong in [&b"abd"[..], b"ab", b"abcd", b""] {
            assert!(!same_token(wrong, b"abc"));
        }
        let limits = HttpLimits {
            allow_hosts: vec!["Example.COM".into(), "::2".into()],
            ..HttpLimits::default()
        };
        let access = Access::new(&limits, "127.0.0.1:9".parse().unwrap()).unwrap();
        let hosts = access.hosts.unwrap();
        for name in ["localhost", "127.0.0.1", "[::1]", "example.com", "[::2]"] {
            assert!(hosts.contains(name), "{name}: {hosts:?}");
        }
    }
}
