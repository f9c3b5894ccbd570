//! HTTP/1.1 to one server, plain or TLS (rustls, ring), with a small pool of keep-alive
//! connections: the transport under [`crate::Client`].
//!
//! It knows nothing of the API beyond its error body: an answer is its status and bytes,
//! and [`Http::error`] turns a non-2xx answer into [`Error::Api`] with the API's status.

use crate::error::Error;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use ovc_types::error::{Code, Status};
use rustls::pki_types::ServerName;
use std::sync::{Arc, Mutex};

/// At most this many idle connections are kept.
const MAX_IDLE: usize = 64;

/// One HTTP answer.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// The connection settings of one server.
pub(crate) struct Http {
    /// `http(s)://host[:port]`, for messages.
    pub base: String,
    /// `host:port` to connect to.
    authority: String,
    /// The `Host` header (the port left out when it is the scheme's default).
    host_header: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    token: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Http {
    /// The transport to `server` (`http://` or `https://`, no path). `tls` is used for
    /// `https://` (the public web roots when absent).
    pub fn new(
        server: &str,
        token: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Http, Error> {
        let base = server.trim_end_matches('/').to_string();
        let (https, rest) = if let Some(rest) = base.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(Error::Config(format!(
                "{base}: the server must be an http:// or https:// URL"
            )));
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.is_empty() {
            return Err(Error::Config(format!("{base}: no host in the server URL")));
        }
        // The host without the port; IPv6 literals are bracketed.
        let (host, has_port) = match authority.strip_prefix('[') {
            Some(v6) => (v6.split(']').next().unwrap_or(v6), v6.contains("]:")),
            None => (
                authority.rsplit_once(':').map_or(authority, |(h, _)| h),
                authority.contains(':'),
            ),
        };
        let host_header = authority.to_string();
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let tls = if https {
            let config = match tls {
                Some(c) => c,
                None => Arc::new(crate::tls::client_config(None)?),
            };
            let name = ServerName::try_from(host.to_string()).map_err(|e| {
                Error::Config(format!("{base}: {host:?} is not a host name for TLS: {e}"))
            })?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Http {
            base,
            authority,
            host_header,
            tls,
            token,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn unreachable_error(&self, message: impl ToString) -> Error {
        Error::Unreachable {
            server: self.base.clone(),
            message: message.to_string(),
        }
    }

    /// A new connection, driven by its own task.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unreachable_error(e))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.handshake(stream).await,
            Some((connector, name)) => {
                let tls =
                    connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|e| Error::Tls {
                            server: self.base.clone(),
                            message: e.to_string(),
                        })?;
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<IO>(&self, io: IO) -> Result<SendRequest<Full<Bytes>>, Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable_error(e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Request<Full<Bytes>>, Error> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", &self.host_header);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let payload = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::copy_from_slice(b)
            }
            None => Bytes::new(),
        };
        req.body(Full::new(payload))
            .map_err(|e| Error::Config(format!("{path}: not a valid request: {e}")))
    }

    /// Sends one request on a pooled connection (a new one if none is idle) and reads the
    /// whole answer. A pooled connection the server closed meanwhile is replaced once.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Answer, Error> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut sender, reused) = match pooled {
            Some(s) if !s.is_closed() => (s, true),
            _ => (self.connect().await?, false),
        };
        let res = match sender.ready().await {
            Ok(()) => sender
                .send_request(self.request(&method, path, headers, body)?)
                .await
                .map_err(|e| {
                    (
                        e.is_canceled() || e.is_closed() || e.is_incomplete_message(),
                        e,
                    )
                }),
            Err(e) => Err((true, e)),
        };
        let res = match res {
            Ok(r) => r,
            // The server closed an idle connection as we used it: nothing was processed.
            Err((true, _)) if reused => {
                sender = self.connect().await?;
                sender
                    .send_request(self.request(&method, path, headers, body)?)
                    .await
                    .map_err(|e| self.unreachable_error(e))?
            }
            Err((_, e)) => return Err(self.unreachable_error(e)),
        };
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable_error(e))?
            .to_bytes();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
        Ok(Answer { status, body })
    }

    /// Opens a streaming GET on a connection of its own (a live feed holds it): the
    /// response whose body the caller reads as it arrives. A non-2xx answer is an error.
    pub async fn open_stream(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Incoming, Error> {
        let mut sender = self.connect().await?;
        let res: Response<Incoming> = sender
            .send_request(self.request(&Method::GET, path, headers, None)?)
            .await
            .map_err(|e| self.unreachable_error(e))?;
        let status = res.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(res.into_body());
        }
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable_error(e))?
            .to_bytes();
        Err(self.error(&Answer { status, body }))
    }

    /// The error of a non-2xx answer: the API's status from its error body
    /// (`{"error": {"code", "status", "message", "details"}}`), or one made from the HTTP
    /// status and the text when the body is not that (a proxy's page, say).
    pub fn error(&self, answer: &Answer) -> Error {
        #[derive(serde::Deserialize)]
        struct Body {
            error: WireStatus,
        }
        #[derive(serde::Deserialize)]
        struct WireStatus {
            status: Code,
            message: String,
            #[serde(default)]
            details: Vec<ovc_types::error::ErrorDetail>,
        }
        let status = match serde_json::from_slice::<Body>(&answer.body) {
            Ok(b) => Status {
                code: b.error.status,
                message: b.error.message,
                details: b.error.details,
            },
            Err(_) => Status::new(
                code_of_http(answer.status),
                format!(
                    "HTTP {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body).trim()
                ),
            ),
        };
        Error::Api {
            http_status: answer.status,
            status,
        }
    }

    /// The JSON of a 2xx answer as `T`; another status is [`Http::error`].
    pub fn decode<T: serde::de::DeserializeOwned>(&self, answer: &Answer) -> Result<T, Error> {
        if !(200..300).contains(&answer.status) {
            return Err(self.error(answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| Error::Protocol {
            server: self.base.clone(),
            http_status: answer.status,
            message: format!(
                "{e}: {}",
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
            ),
        })
    }
}

/// The canonical code of an HTTP status without an API error body.
fn code_of_http(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        502..=504 => Code::Unavailable,
        s if s >= 500 => Code::Internal,
        _ => Code::FailedPrecondition,
    }
}

/// `s` made safe as one path segment or query value (RFC 3986 unreserved characters
/// kept, everything else percent-encoded).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` of the pairs whose value is present (values encoded), or nothing.
pub(crate) fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_values_are_percent_encoded() {
        assert_eq!(encode("team-a"), "team-a");
        assert_eq!(encode("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(encode("env=dev"), "env%3Ddev");
        assert_eq!(
            query(&[
                ("a", Some("1".into())),
                ("b", None),
                ("c", Some("x&y".into()))
            ]),
            "?a=1&c=x%26y"
        );
        assert_eq!(query(&[("a", None)]), "");
    }

    #[test]
    fn server_urls_are_checked() {
        assert!(matches!(
            Http::new("ftp://x", None, None),
            Err(Error::Config(m)) if m.contains("http:// or https://")
        ));
        assert!(matches!(
            Http::new("http://", None, None),
            Err(Error::Config(_))
        ));
        let h = Http::new("http://127.0.0.1:8080/", None, None).expect("http");
        assert_eq!(h.authority, "127.0.0.1:8080");
        assert_eq!(h.host_header, "127.0.0.1:8080");
        let h = Http::new("http://localhost", None, None).expect("http");
        assert_eq!(h.authority, "localhost:80");
        assert_eq!(h.host_header, "localhost");
        let h = Http::new("http://[::1]:9", None, None).expect("http");
        assert_eq!(h.authority, "[::1]:9");
    }

    #[test]
    fn error_bodies_become_the_api_status() {
        let h = Http::new("http://127.0.0.1:1", None, None).expect("http");
        let body = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"request_id reused","details":[{"reason":"REQUEST_ID_REUSED"}]}}"#;
        let e = h.error(&Answer {
            status: 400,
            body: Bytes::from_static(body),
        });
        assert_eq!(e.code(), Some(Code::InvalidArgument));
        assert_eq!(e.reason(), Some("REQUEST_ID_REUSED"));
        assert!(e.is_refused() && !e.is_retryable());
        let e = h.error(&Answer {
            status: 503,
            body: Bytes::from_static(b"busy"),
        });
        assert_eq!(e.code(), Some(Code::Unavailable));
        assert!(e.is_retryable() && !e.is_refused());
        assert!(e.to_string().contains("busy"), "{e}");
    }
}
