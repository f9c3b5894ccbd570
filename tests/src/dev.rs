//! A running `ovc dev` child process for black-box tests, and a minimal blocking
//! HTTP/1.1 client (one connection per request) to talk to it: the tests see the server
//! exactly as a user's script would.

use crate::ovc_bin;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `ovc dev` on free ports (REST and gRPC); killed on drop.
pub struct DevServer {
    /// The child process.
    pub child: Child,
    /// `http://127.0.0.1:PORT` of its REST API.
    pub http: String,
    /// Every line it printed before the address, for diagnostics.
    pub banner: Vec<String>,
}

impl DevServer {
    /// Starts `ovc dev --http 127.0.0.1:0 --data-dir DATA` with `args` and `env` added,
    /// and waits until it prints its address.
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
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut banner = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                banner.push(line.clone());
                if let Some(url) = line.trim().strip_prefix("REST API") {
                    // Keep draining stdout so the child never blocks on a full pipe.
                    std::thread::spawn(move || for _ in rx {});
                    return DevServer {
                        child,
                        http: url.trim().to_string(),
                        banner,
                    };
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("ovc dev did not print its address: {banner:?}");
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
