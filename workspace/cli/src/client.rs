//! The client commands (`ovc vc ...`, `ovc ops ...`): people and scripts driving a
//! running server over its REST API.
//!
//! Output is for people by default, `-o json` prints the API's JSON for scripts. With
//! `--wait`, a mutation shows each step as it finishes. Exit codes scripts can branch on:
//! 0 done (or accepted), 1 the operation ended FAILED / CANCELLED / STUCK, 3 the API
//! refused the request (4xx), 4 the server could not be reached or failed (5xx); clap
//! uses 2 for usage errors. `http://` and `https://` servers (rustls; `--ca-cert` trusts a
//! private CA instead of the public roots).

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Where the server is and how to talk to it.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Base URL of the ovc server.
    #[arg(
        long,
        env = "OVC_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// PEM file of the CA that signed an `https://` server's certificate (trusted instead
    /// of the public roots).
    #[arg(long, env = "OVC_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Bearer token (see `ovc token create`).
    #[arg(long, env = "OVC_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Project (default: the token's, or `default`).
    #[arg(long, global = true)]
    pub project: Option<String>,
    /// Output: `text` for people, `json` for scripts.
    #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text", global = true)]
    pub output: String,
}

/// `ovc vc ...`.
#[derive(Debug, Subcommand)]
pub enum VcCommand {
    /// Create a vcluster.
    Create {
        /// Its name.
        name: String,
        /// Control-plane replicas (1, or 3 for HA).
        #[arg(long)]
        replicas: Option<u32>,
        /// The host cluster (one the service is configured with); default `default`.
        #[arg(long)]
        host: Option<String>,
        /// A JSON file with the whole spec (API.md `spec`).
        #[arg(long)]
        spec_file: Option<std::path::PathBuf>,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
    },
    /// Show a vcluster.
    Get {
        /// Its name.
        name: String,
    },
    /// List vclusters.
    List,
    /// Suspend (scale the control plane to zero).
    Suspend {
        /// Its name.
        name: String,
        /// Take a snapshot first.
        #[arg(long)]
        snapshot: bool,
        /// Evict workload pods first.
        #[arg(long)]
        evict_workloads: bool,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
    /// Resume.
    Resume {
        /// Its name.
        name: String,
        /// Ask for a workload reconcile once ready.
        #[arg(long)]
        reconcile_workloads: bool,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
    /// Take a snapshot.
    Snapshot {
        /// Its name.
        name: String,
        /// Free text kept with the snapshot.
        #[arg(long)]
        description: Option<String>,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
    /// Change size: only the given values change.
    Scale {
        /// Its name.
        name: String,
        /// Control-plane replicas (1 or 3).
        #[arg(long)]
        replicas: Option<u32>,
        /// Control-plane CPU request, e.g. 500m.
        #[arg(long)]
        cpu: Option<String>,
        /// Control-plane memory request, e.g. 512Mi.
        #[arg(long)]
        memory: Option<String>,
        /// Quota pods.
        #[arg(long)]
        quota_pods: Option<u32>,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
    /// Delete.
    Delete {
        /// Its name.
        name: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
    /// Print the kubeconfig (read live from the host); e.g.
    /// `ovc vc kubeconfig team-a > team-a.yaml && kubectl --kubeconfig team-a.yaml get ns`.
    Kubeconfig {
        /// Its name.
        name: String,
    },
}

/// `ovc ops ...`.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Show an operation.
    Get {
        /// Its id.
        id: String,
    },
    /// List operations.
    List {
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this vcluster.
        #[arg(long)]
        vcluster: Option<String>,
    },
    /// Wait until an operation ends, showing its steps.
    Wait {
        /// Its id.
        id: String,
    },
    /// Follow an operation's events live (each step attempt, retry, compensation) until
    /// it ends; the exit code says how it ended.
    Watch {
        /// Its id.
        id: String,
    },
    /// Ask to cancel an operation (it compensates).
    Cancel {
        /// Its id.
        id: String,
    },
    /// Retry a FAILED or STUCK operation, or in bulk every operation matching
    /// `--state/--kind/--since` (e.g. `ovc ops retry --state FAILED --kind SUSPEND --since 1h`).
    Retry {
        /// Its id (omit for a bulk retry).
        id: Option<String>,
        /// Bulk: only operations in this state (FAILED or STUCK).
        #[arg(long)]
        state: Option<String>,
        /// Bulk: only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Bulk: only operations created within this long ago: 30m, 1h, 2d.
        #[arg(long)]
        since: Option<String>,
        /// Wait until the new operation(s) end.
        #[arg(long)]
        wait: bool,
    },
}

/// `ovc snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots.
    List {
        /// Only snapshots of this vcluster.
        #[arg(long)]
        vcluster: Option<String>,
    },
    /// Show a snapshot.
    Get {
        /// Its id.
        id: String,
    },
    /// Delete a snapshot's artifact (the vcluster is not touched).
    Delete {
        /// Its id.
        id: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
    /// Restore a snapshot into a new vcluster (`--new NAME`) or over one (`--existing NAME`).
    Restore {
        /// Its id.
        id: String,
        /// Restore into a new vcluster with this name.
        #[arg(
            long,
            conflicts_with = "existing",
            required_unless_present = "existing"
        )]
        new: Option<String>,
        /// Restore over this existing vcluster.
        #[arg(long)]
        existing: Option<String>,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
    },
}

/// How a client command ended; `main` turns it into the exit code.
#[derive(Debug)]
pub enum Outcome {
    /// Done.
    Ok,
    /// The operation ended badly.
    OperationFailed,
    /// The API refused the request.
    Refused,
    /// Unreachable, or a server error.
    Unavailable,
}

impl Outcome {
    /// The process exit code.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::OperationFailed => 1,
            Outcome::Refused => 3,
            Outcome::Unavailable => 4,
        }
    }
}

struct Client {
    conn: Conn,
    /// `host:port` of the server.
    authority: String,
    /// For `https://`: the TLS connector and the name the certificate must carry.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

enum CallError {
    Refused(Value),
    Unavailable(String),
}

impl Client {
    /// A client of `conn.server`, or the reason it cannot be one (printed).
    fn new(conn: Conn) -> Result<Client, Outcome> {
        Self::setup(conn).map_err(|m| {
            eprintln!("error: {m}");
            Outcome::Unavailable
        })
    }

    fn setup(conn: Conn) -> Result<Client, String> {
        let base = conn.server.trim_end_matches('/').to_string();
        let (https, rest) = if let Some(rest) = base.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "{base}: the server must be an http:// or https:// URL"
            ));
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.is_empty() {
            return Err(format!("{base}: no host in the server URL"));
        }
        // The host without the port; IPv6 literals are bracketed.
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => authority.contains(':'),
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let tls = if https {
            let config =
                crate::tls::client_config(conn.ca_cert.as_deref()).map_err(|e| format!("{e:#}"))?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{base}: {host:?} is not a host name for TLS: {e}"))?;
            Some((
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
                name,
            ))
        } else {
            if let Some(ca) = &conn.ca_cert {
                return Err(format!(
                    "--ca-cert {} applies to https:// servers only, and {base} is http://",
                    ca.display()
                ));
            }
            None
        };
        Ok(Client {
            conn,
            authority,
            tls,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CallError> {
        let (mut sender, req) = self.connect(method, path).await?;
        let req = req.header("content-type", "application/json");
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        json_answer(res).await
    }

    /// A connection to the server and a request to `path` on it, with the host and the
    /// bearer token set.
    async fn connect(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(SendRequest<Full<Bytes>>, hyper::http::request::Builder), CallError> {
        let base = self.conn.server.trim_end_matches('/');
        let authority = &self.authority;
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| CallError::Unavailable(format!("cannot reach {base}: {e}")))?;
        let sender = match &self.tls {
            None => http1(stream).await?,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| {
                        let hint = if self.conn.ca_cert.is_some() {
                            "is the server's certificate signed by the CA of --ca-cert, for this host name?"
                        } else {
                            "for a private CA, pass its certificate with --ca-cert FILE (or OVC_CA_CERT)"
                        };
                        CallError::Unavailable(format!(
                            "TLS handshake with {base} failed: {e}; {hint}"
                        ))
                    })?;
                http1(tls).await?
            }
        };
        let host = authority
            .strip_suffix(if self.tls.is_some() { ":443" } else { ":80" })
            .unwrap_or(authority);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if let Some(t) = &self.conn.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        Ok((sender, req))
    }

    /// Follows the SSE feed at `path` from position `after`, calling `each` with every
    /// event (as its JSON) until it returns false. A dropped connection is resumed with
    /// `Last-Event-ID`, so no event is missed or repeated.
    async fn follow_sse(
        &self,
        path: &str,
        mut after: u64,
        mut each: impl FnMut(&Value) -> bool,
    ) -> Result<(), CallError> {
        let base = self.conn.server.trim_end_matches('/').to_string();
        let mut failures = 0u32;
        loop {
            let res = self.open_sse(path, after).await;
            let mut body = match res {
                Ok(b) => {
                    failures = 0;
                    b
                }
                Err(CallError::Unavailable(m)) if failures < 5 => {
                    failures += 1;
                    eprintln!("  (feed from {base} interrupted: {m}; reconnecting)");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut buf = String::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.push_str(&String::from_utf8_lossy(data));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if data.is_empty() {
                        continue; // a keep-alive comment
                    }
                    let Ok(event) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    if let Some(p) = event["position"].as_u64() {
                        after = p;
                    }
                    if !each(&event) {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn open_sse(&self, path: &str, after: u64) -> Result<hyper::body::Incoming, CallError> {
        let (mut sender, req) = self.connect(Method::GET, path).await?;
        let req = req
            .header("accept", "text/event-stream")
            .header("last-event-id", after.to_string());
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res.into_body());
        }
        let value = json_answer(res).await?;
        Err(CallError::Unavailable(format!(
            "unexpected {status} for a live feed: {value}"
        )))
    }

    /// `ovc ops watch`: prints the operation's events as they are committed until it ends.
    async fn watch(&self, id: &str) -> Result<Outcome, CallError> {
        let op = self
            .call(Method::GET, &format!("/v1/operations/{id}"), None)
            .await?;
        if self.conn.output != "json" {
            eprintln!(
                "{} {} (operation {id}), {}",
                op["kind"].as_str().unwrap_or("?"),
                op["vcluster"].as_str().unwrap_or("?"),
                op["state"].as_str().unwrap_or("?")
            );
        }
        let json = self.conn.output == "json";
        let terminal = [
            "OperationSucceeded",
            "OperationFailed",
            "OperationCancelled",
            "OperationStuck",
        ];
        let mut ended = op["done"] == json!(true);
        if !ended {
            self.follow_sse(&format!("/v1/operations/{id}/events"), 0, |e| {
                if json {
                    println!("{e}");
                } else {
                    eprintln!("  {}", describe_event(e));
                }
                let t = e["type"].as_str().unwrap_or_default();
                ended = terminal.contains(&t);
                !ended
            })
            .await?;
        }
        let done = self
            .call(Method::GET, &format!("/v1/operations/{id}"), None)
            .await?;
        self.print(&done, describe_operation);
        Ok(if done["state"] == "SUCCEEDED" {
            Outcome::Ok
        } else {
            Outcome::OperationFailed
        })
    }

    fn q(&self) -> String {
        match &self.conn.project {
            Some(p) => format!("?project={p}"),
            None => String::new(),
        }
    }

    fn print(&self, v: &Value, text: impl FnOnce(&Value) -> String) {
        if self.conn.output == "json" {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{}", text(v));
        }
    }

    /// Waits for operation `id`, printing each step as it changes (text mode).
    async fn wait(&self, id: &str) -> Result<Value, CallError> {
        let mut shown: HashMap<String, String> = HashMap::new();
        let text = self.conn.output != "json";
        loop {
            let op = self
                .call(
                    Method::GET,
                    &format!("/v1/operations/{id}/wait?timeout=2s"),
                    None,
                )
                .await?;
            if text {
                for s in op["steps"].as_array().into_iter().flatten() {
                    let name = s["name"].as_str().unwrap_or("?").to_string();
                    let state = s["state"].as_str().unwrap_or("?").to_string();
                    if state == "PENDING" || shown.get(&name) == Some(&state) {
                        continue;
                    }
                    let mark = match state.as_str() {
                        "SUCCEEDED" => "✓",
                        "FAILED" => "✗",
                        "COMPENSATED" => "↶",
                        "SKIPPED" => "-",
                        _ => "…",
                    };
                    let err = s["error"]["message"]
                        .as_str()
                        .map(|m| format!("  ({m})"))
                        .unwrap_or_default();
                    eprintln!("  {mark} {name} {}{err}", state.to_lowercase());
                    shown.insert(name, state);
                }
            }
            if op["done"] == json!(true) {
                return Ok(op);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints an accepted operation, waits if asked, and says how it ended.
    async fn finish(&self, op: Value, wait: bool) -> Result<Outcome, CallError> {
        let id = op["id"].as_str().unwrap_or_default().to_string();
        if !wait {
            self.print(&op, |o| {
                format!(
                    "{} {} accepted: operation {} ({}); follow with: ovc ops wait {}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["vcluster"].as_str().unwrap_or("?"),
                    id,
                    o["state"].as_str().unwrap_or("?"),
                    id
                )
            });
            return Ok(Outcome::Ok);
        }
        if self.conn.output != "json" {
            eprintln!(
                "{} {} (operation {id})",
                op["kind"].as_str().unwrap_or("?"),
                op["vcluster"].as_str().unwrap_or("?")
            );
        }
        let done = self.wait(&id).await?;
        self.print(&done, describe_operation);
        Ok(if done["state"] == "SUCCEEDED" {
            Outcome::Ok
        } else {
            Outcome::OperationFailed
        })
    }
}

/// A response's JSON (or its text as a JSON string); 4xx is `Refused`, 5xx `Unavailable`.
/// An HTTP/1.1 connection over `io` (plain TCP or TLS), driven by its own task.
async fn http1<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, CallError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| CallError::Unavailable(e.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn json_answer(res: hyper::Response<hyper::body::Incoming>) -> Result<Value, CallError> {
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Unavailable(e.to_string()))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    if status.is_server_error() {
        return Err(CallError::Unavailable(format!(
            "server error {status}: {value}"
        )));
    }
    if status.is_client_error() {
        return Err(CallError::Refused(value));
    }
    Ok(value)
}

/// `?k=v&...` from the given pairs (absent values left out), or nothing.
fn query(params: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// One line per item of the array `key`, or `empty` when there is none.
fn rows(v: &Value, key: &str, describe: fn(&Value) -> String, empty: &str) -> String {
    let lines: Vec<String> = v[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(describe)
        .collect();
    if lines.is_empty() {
        empty.to_string()
    } else {
        lines.join("\n")
    }
}

fn describe_snapshot(v: &Value) -> String {
    format!(
        "{}  {}/{}  {}  {} bytes  {}",
        v["id"].as_str().unwrap_or("?"),
        v["project"].as_str().unwrap_or("?"),
        v["vcluster"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["size_bytes"],
        v["description"].as_str().unwrap_or("")
    )
}

/// One event as a progress line: time, type, and the step, attempt and error if any.
fn describe_event(e: &Value) -> String {
    let time = e["recorded_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let d = &e["data"];
    let mut s = format!("{time}  {:<20}", e["type"].as_str().unwrap_or("?"));
    if let Some(step) = d["step"].as_str() {
        s.push_str(&format!(" {step}"));
    }
    if let Some(a) = d["attempt"].as_u64() {
        s.push_str(&format!(" (attempt {a})"));
    }
    if let Some(m) = d["error"]["message"].as_str() {
        s.push_str(&format!(" — {m}"));
    }
    s
}

fn describe_operation(o: &Value) -> String {
    let mut s = format!(
        "operation {} {} {}: {}",
        o["id"].as_str().unwrap_or("?"),
        o["kind"].as_str().unwrap_or("?"),
        o["vcluster"].as_str().unwrap_or("?"),
        o["state"].as_str().unwrap_or("?")
    );
    if let Some(m) = o["error"]["message"].as_str() {
        s.push_str(&format!(" — {m}"));
    }
    s
}

fn describe_vcluster(v: &Value) -> String {
    format!(
        "{}/{}  {}  k8s {}  replicas {}  namespace {}",
        v["project"].as_str().unwrap_or("?"),
        v["name"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["spec"]["kubernetes_version"].as_str().unwrap_or("?"),
        v["spec"]["control_plane"]["replicas"],
        v["host_namespace"].as_str().unwrap_or("?")
    )
}

fn report(e: CallError) -> Outcome {
    match e {
        CallError::Refused(v) => {
            let status = v["error"]["status"].as_str().unwrap_or("ERROR");
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or(v.to_string());
            eprintln!("error: {status}: {msg}");
            Outcome::Refused
        }
        CallError::Unavailable(m) => {
            eprintln!("error: {m}");
            Outcome::Unavailable
        }
    }
}

/// Runs `ovc vc ...`.
pub async fn vc(conn: Conn, cmd: VcCommand) -> Outcome {
    let c = match Client::new(conn) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let r = async {
        let q = c.q();
        let post = |path: String, body: Value| {
            let c = &c;
            async move { c.call(Method::POST, &path, Some(body)).await }
        };
        match cmd {
            VcCommand::Create {
                name,
                replicas,
                host,
                spec_file,
                wait,
            } => {
                let mut spec: Value = match spec_file {
                    Some(f) => {
                        let text = std::fs::read_to_string(&f).map_err(|e| {
                            CallError::Unavailable(format!("cannot read {}: {e}", f.display()))
                        })?;
                        serde_json::from_str(&text).map_err(|e| {
                            CallError::Unavailable(format!("{}: not JSON: {e}", f.display()))
                        })?
                    }
                    None => json!({}),
                };
                if let Some(r) = replicas {
                    spec["control_plane"]["replicas"] = json!(r);
                }
                if let Some(h) = host {
                    spec["host"] = json!(h);
                }
                let mut body = json!({"name": name, "spec": spec});
                if let Some(p) = &c.conn.project {
                    body["project"] = json!(p);
                }
                let op = post("/v1/vclusters".into(), body).await?;
                c.finish(op, wait).await
            }
            VcCommand::Get { name } => {
                let v = c
                    .call(Method::GET, &format!("/v1/vclusters/{name}{q}"), None)
                    .await?;
                c.print(&v, describe_vcluster);
                Ok(Outcome::Ok)
            }
            VcCommand::List => {
                let v = c
                    .call(Method::GET, &format!("/v1/vclusters{q}"), None)
                    .await?;
                c.print(&v, |v| {
                    rows(v, "vclusters", describe_vcluster, "no vclusters")
                });
                Ok(Outcome::Ok)
            }
            VcCommand::Suspend {
                name,
                snapshot,
                evict_workloads,
                wait,
            } => {
                let body = json!({"snapshot": snapshot, "evict_workloads": evict_workloads});
                let op = post(format!("/v1/vclusters/{name}/suspend{q}"), body).await?;
                c.finish(op, wait).await
            }
            VcCommand::Resume {
                name,
                reconcile_workloads,
                wait,
            } => {
                let body = json!({"reconcile_workloads": reconcile_workloads});
                let op = post(format!("/v1/vclusters/{name}/resume{q}"), body).await?;
                c.finish(op, wait).await
            }
            VcCommand::Snapshot {
                name,
                description,
                wait,
            } => {
                let op = post(
                    format!("/v1/vclusters/{name}/snapshots{q}"),
                    json!({"description": description}),
                )
                .await?;
                c.finish(op, wait).await
            }
            VcCommand::Scale {
                name,
                replicas,
                cpu,
                memory,
                quota_pods,
                wait,
            } => {
                let mut body = json!({});
                if replicas.is_some() || cpu.is_some() || memory.is_some() {
                    body["control_plane"] = json!({});
                    if let Some(r) = replicas {
                        body["control_plane"]["replicas"] = json!(r);
                    }
                    if let Some(v) = cpu {
                        body["control_plane"]["cpu"] = json!(v);
                    }
                    if let Some(v) = memory {
                        body["control_plane"]["memory"] = json!(v);
                    }
                }
                if let Some(p) = quota_pods {
                    body["quota"] = json!({"pods": p});
                }
                let op = post(format!("/v1/vclusters/{name}/scale{q}"), body).await?;
                c.finish(op, wait).await
            }
            VcCommand::Delete { name, wait } => {
                let op = c
                    .call(Method::DELETE, &format!("/v1/vclusters/{name}{q}"), None)
                    .await?;
                c.finish(op, wait).await
            }
            VcCommand::Kubeconfig { name } => {
                let v = c
                    .call(
                        Method::GET,
                        &format!("/v1/vclusters/{name}/kubeconfig{q}"),
                        None,
                    )
                    .await?;
                if c.conn.output == "json" {
                    c.print(&v, |_| String::new());
                } else {
                    print!("{}", v["kubeconfig"].as_str().unwrap_or_default());
                }
                Ok(Outcome::Ok)
            }
        }
    }
    .await;
    r.unwrap_or_else(report)
}

/// `ovc events tail` against a server: a page at a time, or with `follow` the live SSE
/// feed (resumed across reconnects), printing each event with `line`.
pub async fn tail_events(
    conn: Conn,
    after: u64,
    follow: bool,
    line: fn(&Value) -> String,
) -> Outcome {
    let c = match Client::new(conn) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let json = c.conn.output == "json";
    let show = |e: &Value| {
        if json {
            println!("{e}");
        } else {
            println!("{}", line(e));
        }
    };
    let r = async {
        if follow {
            c.follow_sse("/v1/events", after, |e| {
                show(e);
                true
            })
            .await?;
            return Ok(Outcome::Ok);
        }
        let mut after = after;
        loop {
            let page = c
                .call(
                    Method::GET,
                    &format!("/v1/events?after={after}&limit=1000"),
                    None,
                )
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                show(e);
            }
            let next = page["next_after"].as_u64().unwrap_or(after);
            if next == after {
                return Ok(Outcome::Ok);
            }
            after = next;
        }
    }
    .await;
    r.unwrap_or_else(report)
}

/// Runs `ovc ops ...`.
pub async fn ops(conn: Conn, cmd: OpsCommand) -> Outcome {
    let c = match Client::new(conn) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let r = async {
        match cmd {
            OpsCommand::Watch { id } => c.watch(&id).await,
            OpsCommand::Get { id } => {
                let v = c
                    .call(Method::GET, &format!("/v1/operations/{id}"), None)
                    .await?;
                c.print(&v, describe_operation);
                Ok(Outcome::Ok)
            }
            OpsCommand::List {
                state,
                kind,
                vcluster,
            } => {
                let q = query(&[
                    ("state", state.as_deref()),
                    ("kind", kind.as_deref()),
                    ("vcluster", vcluster.as_deref()),
                    ("project", c.conn.project.as_deref()),
                ]);
                let v = c
                    .call(Method::GET, &format!("/v1/operations{q}"), None)
                    .await?;
                c.print(&v, |v| {
                    rows(v, "operations", describe_operation, "no operations")
                });
                Ok(Outcome::Ok)
            }
            OpsCommand::Wait { id } => {
                let done = c.wait(&id).await?;
                c.print(&done, describe_operation);
                Ok(if done["state"] == "SUCCEEDED" {
                    Outcome::Ok
                } else {
                    Outcome::OperationFailed
                })
            }
            OpsCommand::Cancel { id } => {
                let v = c
                    .call(Method::POST, &format!("/v1/operations/{id}/cancel"), None)
                    .await?;
                c.print(&v, |o| {
                    format!("cancellation requested: {}", describe_operation(o))
                });
                Ok(Outcome::Ok)
            }
            OpsCommand::Retry {
                id: Some(id), wait, ..
            } => {
                let op = c
                    .call(Method::POST, &format!("/v1/operations/{id}/retry"), None)
                    .await?;
                c.finish(op, wait).await
            }
            OpsCommand::Retry {
                id: None,
                state,
                kind,
                since,
                wait,
            } => {
                let mut params = vec![format!("state={}", state.as_deref().unwrap_or("FAILED"))];
                if let Some(k) = kind {
                    params.push(format!("kind={k}"));
                }
                if let Some(s) = since {
                    let age = crate::duration::parse_chrono(&s).map_err(|e| {
                        CallError::Refused(json!({"error": {"status": "INVALID_ARGUMENT",
                            "message": format!("--since {e}")}}))
                    })?;
                    let t = (chrono::Utc::now() - age)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    params.push(format!("since={t}"));
                }
                if let Some(p) = &c.conn.project {
                    params.push(format!("project={p}"));
                }
                params.push("page_size=1000".into());
                let list = c
                    .call(
                        Method::GET,
                        &format!("/v1/operations?{}", params.join("&")),
                        None,
                    )
                    .await?;
                let ids: Vec<String> = list["operations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["id"].as_str().map(str::to_string))
                    .collect();
                if ids.is_empty() {
                    eprintln!("no operations match");
                    return Ok(Outcome::Ok);
                }
                let mut outcome = Outcome::Ok;
                for id in ids {
                    // One retry per failed operation; a refusal (e.g. the vcluster moved on)
                    // is reported and the others still go.
                    match c
                        .call(Method::POST, &format!("/v1/operations/{id}/retry"), None)
                        .await
                    {
                        Ok(op) => {
                            if !matches!(c.finish(op, wait).await?, Outcome::Ok) {
                                outcome = Outcome::OperationFailed;
                            }
                        }
                        Err(e) => {
                            eprintln!("operation {id}:");
                            outcome = report(e);
                        }
                    }
                }
                Ok(outcome)
            }
        }
    }
    .await;
    r.unwrap_or_else(report)
}

/// Runs `ovc snapshot ...`.
pub async fn snapshot(conn: Conn, cmd: SnapshotCommand) -> Outcome {
    let c = match Client::new(conn) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let r = async {
        match cmd {
            SnapshotCommand::List { vcluster } => {
                let q = query(&[
                    ("vcluster", vcluster.as_deref()),
                    ("project", c.conn.project.as_deref()),
                ]);
                let v = c
                    .call(Method::GET, &format!("/v1/snapshots{q}"), None)
                    .await?;
                c.print(&v, |v| {
                    rows(v, "snapshots", describe_snapshot, "no snapshots")
                });
                Ok(Outcome::Ok)
            }
            SnapshotCommand::Get { id } => {
                let v = c
                    .call(Method::GET, &format!("/v1/snapshots/{id}"), None)
                    .await?;
                c.print(&v, describe_snapshot);
                Ok(Outcome::Ok)
            }
            SnapshotCommand::Delete { id, wait } => {
                let op = c
                    .call(Method::DELETE, &format!("/v1/snapshots/{id}"), None)
                    .await?;
                c.finish(op, wait).await
            }
            SnapshotCommand::Restore {
                id,
                new,
                existing,
                wait,
            } => {
                let target = match (new, existing) {
                    (Some(n), _) => json!({"new_name": n}),
                    (None, Some(e)) => json!({"existing": e}),
                    (None, None) => json!(null),
                };
                let q = c.q();
                let op = c
                    .call(
                        Method::POST,
                        &format!("/v1/snapshots/{id}/restore{q}"),
                        Some(json!({"target": target})),
                    )
                    .await?;
                c.finish(op, wait).await
            }
        }
    }
    .await;
    r.unwrap_or_else(report)
}
