//! A running `ovc dev` child process for black-box tests, with a typed client of it
//! ([`DevServer::client`], `ovc-client`) and a minimal blocking HTTP/1.1 client (one
//! connection per request) for the tests of the wire contract itself: malformed bodies,
//! missing content types, foreign hosts, exact statuses — requests the typed client is
//! built never to send.

use crate::ovc_bin;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `ovc dev` or `ovc serve` process on free ports (REST and gRPC); killed on drop.
pub struct DevServer {
    /// The child process.
    pub child: Child,
    /// `http://127.0.0.1:PORT` of its REST API.
    pub http: String,
    /// `http://127.0.0.1:PORT` of its gRPC API.
    pub grpc: String,
    /// Every line it printed up to its addresses, for diagnostics.
    pub banner: Vec<String>,
}

impl DevServer {
    /// Starts `ovc dev --http 127.0.0.1:0 --grpc 127.0.0.1:0 --data-dir DATA` with `args`
    /// and `env` added, and waits until it prints its addresses (on stdout).
    pub fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> DevServer {
        let mut child = Command::new(ovc_bin())
            .args([
                "dev",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ovc dev");
        let out = child.stdout.take().expect("stdout");
        let lines = BufReader::new(out).lines().map_while(Result::ok);
        Self::addresses(child, lines, "REST API", "gRPC API")
    }

    /// [`DevServer::start`], with the server's stderr (its logs) written to `log`.
    pub fn start_logging_to(
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> DevServer {
        let log = std::fs::File::create(log).expect("create the log file");
        let mut child = Command::new(ovc_bin())
            .args([
                "dev",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn ovc dev");
        let out = child.stdout.take().expect("stdout");
        let lines = BufReader::new(out).lines().map_while(Result::ok);
        Self::addresses(child, lines, "REST API", "gRPC API")
    }

    /// Starts `ovc serve --http 127.0.0.1:0 --grpc 127.0.0.1:0` with `args` (e.g.
    /// `--database-url`, `--auth`), and waits until it prints its addresses (on stderr).
    pub fn serve(args: &[&str]) -> DevServer {
        let mut child = Command::new(ovc_bin())
            .arg("serve")
            .args(args)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ovc serve");
        let err = child.stderr.take().expect("stderr");
        let lines = BufReader::new(err).lines().map_while(Result::ok);
        Self::addresses(
            child,
            lines,
            "ovc serve: REST API on",
            "ovc serve: gRPC API on",
        )
    }

    /// Reads `lines` until both addresses are printed (after `rest_prefix` and
    /// `grpc_prefix`), then keeps draining them so the child never blocks on a full pipe.
    fn addresses(
        mut child: Child,
        lines: impl Iterator<Item = String> + Send + 'static,
        rest_prefix: &str,
        grpc_prefix: &str,
    ) -> DevServer {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in lines {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first_word = |s: &str| s.split_whitespace().next().unwrap_or_default().to_string();
        let (mut rest, mut grpc, mut banner) = (None, None, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && (rest.is_none() || grpc.is_none()) {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            banner.push(line.clone());
            let line = line.trim();
            if let Some(r) = line.strip_prefix(rest_prefix) {
                let r = r.trim();
                let r = r.strip_prefix("https://").unwrap_or(r);
                rest = Some(first_word(r.trim_start_matches("http://")));
            }
            if let Some(g) = line.strip_prefix(grpc_prefix) {
                grpc = Some(first_word(g));
            }
        }
        std::thread::spawn(move || for _ in rx {});
        match (rest, grpc) {
            (Some(rest), Some(grpc)) => DevServer {
                child,
                http: format!("http://{rest}"),
                grpc: format!("http://{grpc}"),
                banner,
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not print its addresses: {banner:?}");
            }
        }
    }

    /// A typed client of this server's API (`ovc-client`), for tests that use the API
    /// as a service would; [`DevServer::call`] stays for the tests of the wire itself
    /// (raw bodies, headers and statuses a typed client never sends).
    pub fn client(&self) -> ovc_client::Client {
        ovc_client::Client::new(self.http.clone()).expect("a client of the dev server")
    }

    /// `127.0.0.1:PORT` of the REST API.
    pub fn rest_addr(&self) -> &str {
        self.http.trim_start_matches("http://")
    }

    /// A request to this server.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        http(method, &format!("{}{path}", self.http), body, &[])
    }

    /// Waits (server-side, up to 30 s) for the operation and returns it done.
    pub fn wait(&self, op: &Value) -> Value {
        let id = op["id"]
            .as_str()
            .unwrap_or_else(|| panic!("not an operation: {op}"));
        for _ in 0..3 {
            let (s, done) = self.call(
                "GET",
                &format!("/v1/operations/{id}/wait?timeout=10s"),
                None,
            );
            assert_eq!(s, 200, "{done}");
            if done["done"] == true {
                return done;
            }
        }
        panic!("operation {id} not done after 30 s");
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`); returns the status and the JSON body
/// (`Value::Null` when empty, a string when not JSON).
pub fn http(
    method: &str,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(70)))
        .expect("timeout");
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        payload.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    stream.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, value)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
