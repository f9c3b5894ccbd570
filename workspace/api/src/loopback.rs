//! Without auth (`ovc dev`, `ovc serve --auth none`) the API trusts whoever reaches it,
//! which is safe only if nobody but the local user can. A web page the user opens can
//! still reach a loopback server: a cross-site request carries the page's `Origin`, and
//! DNS rebinding (a name of the attacker's that resolves to 127.0.0.1) sends the
//! attacker's name as `Host`. So in that mode a request is refused with 403
//! PERMISSION_DENIED when its `Host` (or HTTP/2 `:authority`) is not a loopback name or
//! address (`localhost`, `127.0.0.0/8`, `[::1]`, any port), or when it has an `Origin`
//! that is not one (`null` included). A request with neither Host nor authority (no
//! browser sends one) passes. With tokens this check is off: a browser cannot attach a
//! bearer token to a cross-site request without a CORS preflight, which ovc never
//! grants, and a public server is reached by names of its own.

use crate::auth::AuthMode;
use crate::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ovc_types::error::{Code, Status};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Whether `authority` (`host[:port]`, `[v6][:port]`) names this machine's loopback.
pub fn is_loopback_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => match h.parse::<Ipv6Addr>() {
                Ok(ip) => return ip.is_loopback() && valid_port(p),
                Err(_) => return false,
            },
            None => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if port.is_some_and(|p| !p.chars().all(|c| c.is_ascii_digit())) {
        return false;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// `""` or `:<digits>`.
fn valid_port(p: &str) -> bool {
    p.is_empty()
        || p.strip_prefix(':')
            .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))
}

/// Whether an `Origin` value is a page served from loopback (`http(s)://<loopback>`).
pub fn is_loopback_origin(origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| !rest.contains('/') && is_loopback_authority(rest))
}

fn forbidden(message: String, reason: &str) -> ApiError {
    ApiError(Status::new(Code::PermissionDenied, message).with_reason(reason))
}

/// The no-auth check of a request's `Host`, authority and `Origin` (see the module).
pub fn check(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let text = |v: &axum::http::HeaderValue| v.to_str().unwrap_or("\u{fffd}").to_string();
    let hosts = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .into_iter()
        .chain(headers.get_all(axum::http::header::HOST).iter().map(text));
    for host in hosts {
        if !is_loopback_authority(&host) {
            return Err(forbidden(
                format!(
                    "this server runs without auth and answers only loopback names: Host \
                     {host:?} is not one (use 127.0.0.1 or localhost, or run with tokens)"
                ),
                "FOREIGN_HOST",
            ));
        }
    }
    for origin in headers.get_all(axum::http::header::ORIGIN).iter().map(text) {
        if !is_loopback_origin(&origin) {
            return Err(forbidden(
                format!(
                    "this server runs without auth: requests from web pages of other sites \
                     are refused (Origin {origin:?})"
                ),
                "FOREIGN_ORIGIN",
            ));
        }
    }
    Ok(())
}

/// The REST middleware: without auth, [`check`] every request (JSON error body).
pub async fn guard_rest(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth == AuthMode::None
        && let Err(e) = check(req.headers(), req.uri())
    {
        return e.into_response();
    }
    next.run(req).await
}

/// The gRPC middleware: without auth, [`check`] every call (a gRPC error).
pub async fn guard_grpc(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth == AuthMode::None
        && let Err(e) = check(req.headers(), req.uri())
    {
        return tonic::Status::from(e).into_http();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses_with_any_port() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.9.8.7:65535",
            "[::1]",
            "[::1]:9090",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "0.0.0.0:8080",
            "[::2]:80",
            "[::1]x",
            "127.0.0.1:80x",
            "::1",
            "",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://127.0.0.1"));
        for bad in [
            "null",
            "https://evil.example",
            "http://127.0.0.1.evil.example",
            "file://",
            "http://localhost/x",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }
}
