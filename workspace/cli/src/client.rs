//! The client commands (`ovc vc ...`, `ovc ops ...`, `ovc snapshot ...`, `ovc events
//! tail`): people and scripts driving a running server, through the typed client crate
//! `ovc-client` (REST; request ids, retries on UNAVAILABLE/ABORTED, wait and watch).
//!
//! Output is for people by default, `-o json` prints the API's JSON for scripts. With
//! `--wait`, a mutation shows each step as it finishes. Exit codes scripts can branch on:
//! 0 done (or accepted), 1 the operation ended FAILED / CANCELLED / STUCK, 3 the API
//! refused the request (4xx), 4 the server could not be reached or failed (5xx); clap
//! uses 2 for usage errors. `http://` and `https://` servers (rustls; `--ca-cert` trusts a
//! private CA instead of the public roots).

use clap::{Args, Subcommand};
use ovc_client::{
    Accepted, Client, CreateVCluster, Error, ListOperations, ListSnapshots, ListVClusters,
};
use ovc_types::resource::{Operation, Snapshot, VCluster};
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationState, StepState};
use serde::Serialize;
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

/// `ovc vc ...`: the hand-written subcommands, and one per registered operation on an
/// existing vcluster (`suspend`, `resume`, `snapshot`, `scale`, `upgrade`, ...),
/// generated from the registry ([`OpCall`]).
#[derive(Debug)]
pub enum VcCommand {
    /// A hand-written subcommand.
    Builtin(VcBuiltin),
    /// A registered operation.
    Operation(OpCall),
}

/// `ovc vc <verb> NAME [its flags] [--wait] [--request-id ID]` for a registered
/// operation: its flags come from the workflow's parameter type (`clap::Args`).
#[derive(Debug)]
pub struct OpCall {
    /// The subcommand.
    pub verb: String,
    /// The vcluster.
    pub name: String,
    /// The request body from the flags (`Err`: refused input, exit 3).
    pub body: Result<Value, String>,
    /// `--wait`.
    pub wait: bool,
    /// `--request-id`.
    pub request_id: Option<String>,
}

/// The subcommand of a registered operation.
fn operation_command(api: &ovc_engine::OperationApi) -> clap::Command {
    use clap::{Arg, ArgAction};
    let cmd = clap::Command::new(api.verb).about(api.summary).arg(
        Arg::new("name")
            .value_name("NAME")
            .required(true)
            .help("Its name"),
    );
    // After the flags: clap's derive gives the command the parameter type's doc comment.
    api.cli_args(cmd)
        .about(api.summary)
        .long_about(None::<&str>)
        .arg(
            Arg::new("wait")
                .long("wait")
                .action(ArgAction::SetTrue)
                .help("Wait until the operation ends, showing its steps"),
        )
        .arg(
            Arg::new("request_id")
                .long("request-id")
                .value_name("ID")
                .help("The request id (idempotency key); default: a fresh one"),
        )
}

impl clap::FromArgMatches for VcCommand {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let registry = ovc_workflows::registry();
        if let Some((verb, sub)) = m.subcommand()
            && let Some((_, api)) = registry.by_verb(verb)
        {
            return Ok(VcCommand::Operation(OpCall {
                verb: verb.to_string(),
                name: sub.get_one::<String>("name").cloned().unwrap_or_default(),
                body: api.cli_body(sub),
                wait: sub.get_flag("wait"),
                request_id: sub.get_one::<String>("request_id").cloned(),
            }));
        }
        VcBuiltin::from_arg_matches(m).map(VcCommand::Builtin)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Subcommand for VcCommand {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        let mut cmd = VcBuiltin::augment_subcommands(cmd);
        for (_, api) in ovc_workflows::registry().operations() {
            cmd = cmd.subcommand(operation_command(api));
        }
        cmd
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        VcBuiltin::has_subcommand(name) || ovc_workflows::registry().by_verb(name).is_some()
    }
}

/// The hand-written `ovc vc ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum VcBuiltin {
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
/// Why a client command stopped early: the client's error, or a refusal decided here
/// (bad input the command could not send).
enum Stop {
    Client(Error),
    Invalid(String),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Client(e)
    }
}

/// The session of one client command: the typed client and how to print.
struct Session {
    client: Client,
    /// The CLI's `--ca-cert`, for the hint after a failed TLS handshake.
    ca_cert: bool,
    json: bool,
}

impl Session {
    /// A session on `conn.server`, or the reason it cannot be one (printed).
    fn new(conn: Conn) -> Result<Session, Outcome> {
        Self::setup(&conn).map_err(|m| {
            eprintln!("error: {m}");
            Outcome::Unavailable
        })
    }

    fn setup(conn: &Conn) -> Result<Session, String> {
        let base = conn.server.trim_end_matches('/');
        let mut b = Client::builder(base);
        if base.starts_with("https://") {
            let config =
                crate::tls::client_config(conn.ca_cert.as_deref()).map_err(|e| format!("{e:#}"))?;
            b = b.tls_config(std::sync::Arc::new(config));
        } else if let Some(ca) = &conn.ca_cert {
            return Err(format!(
                "--ca-cert {} applies to https:// servers only, and {base} is http://",
                ca.display()
            ));
        }
        if let Some(t) = &conn.token {
            b = b.token(t.clone());
        }
        if let Some(p) = &conn.project {
            b = b.project(p.clone());
        }
        let client = b.build().map_err(|e| e.to_string())?;
        Ok(Session {
            client,
            ca_cert: conn.ca_cert.is_some(),
            json: conn.output == "json",
        })
    }

    /// Prints `v` as the API's JSON (`-o json`) or as `text` makes it.
    fn print<T: Serialize>(&self, v: &T, text: impl FnOnce(&T) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{}", text(v));
        }
    }

    /// Says why the command stopped, and the outcome it ends with.
    fn report(&self, stop: Stop) -> Outcome {
        match stop {
            Stop::Invalid(m) => {
                eprintln!("error: INVALID_ARGUMENT: {m}");
                Outcome::Refused
            }
            Stop::Client(e) if e.is_refused() => {
                eprintln!("error: {e}");
                Outcome::Refused
            }
            Stop::Client(Error::Api {
                http_status,
                status,
            }) => {
                eprintln!("error: server error {http_status}: {status}");
                Outcome::Unavailable
            }
            Stop::Client(e @ Error::Tls { .. }) => {
                let hint = if self.ca_cert {
                    "is the server's certificate signed by the CA of --ca-cert, for this host name?"
                } else {
                    "for a private CA, pass its certificate with --ca-cert FILE (or OVC_CA_CERT)"
                };
                eprintln!("error: {e}; {hint}");
                Outcome::Unavailable
            }
            Stop::Client(e) => {
                eprintln!("error: {e}");
                Outcome::Unavailable
            }
        }
    }

    /// Waits for operation `id`, printing each step as it changes (text mode).
    async fn wait(&self, id: &str) -> Result<Operation, Stop> {
        let mut shown: HashMap<String, StepState> = HashMap::new();
        let text = !self.json;
        let done = self
            .client
            .wait_with(id, None, Duration::from_secs(2), |op| {
                if !text {
                    return;
                }
                for s in &op.steps {
                    if s.state == StepState::Pending || shown.get(&s.name) == Some(&s.state) {
                        continue;
                    }
                    let mark = match s.state {
                        StepState::Succeeded => "✓",
                        StepState::Failed => "✗",
                        StepState::Compensated => "↶",
                        StepState::Skipped => "-",
                        _ => "…",
                    };
                    let err = s
                        .error
                        .as_ref()
                        .map(|e| format!("  ({})", e.message))
                        .unwrap_or_default();
                    eprintln!(
                        "  {mark} {} {}{err}",
                        s.name,
                        s.state.as_str().to_lowercase()
                    );
                    shown.insert(s.name.clone(), s.state);
                }
            })
            .await?;
        Ok(done)
    }

    /// Prints an accepted operation, waits if asked, and says how it ended.
    async fn finish(&self, accepted: Accepted, wait: bool) -> Result<Outcome, Stop> {
        let op = accepted.operation;
        let id = op.id.to_string();
        if !wait {
            self.print(&op, |o| {
                format!(
                    "{} {} accepted: operation {id} ({}); follow with: ovc ops wait {id}",
                    o.kind.as_str(),
                    o.vcluster,
                    o.state.as_str(),
                )
            });
            return Ok(Outcome::Ok);
        }
        if !self.json {
            eprintln!("{} {} (operation {id})", op.kind.as_str(), op.vcluster);
        }
        let done = self.wait(&id).await?;
        self.print(&done, describe_operation);
        Ok(ended(&done))
    }

    /// `ovc ops watch`: prints the operation's events as they are committed until it ends.
    async fn watch(&self, id: &str) -> Result<Outcome, Stop> {
        let op = self.client.get_operation(id).await?;
        if !self.json {
            eprintln!(
                "{} {} (operation {id}), {}",
                op.kind.as_str(),
                op.vcluster,
                op.state.as_str()
            );
        }
        if !op.done {
            let mut feed = self.client.watch(id);
            while let Some(e) = feed.next().await {
                let e = e?;
                if self.json {
                    println!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    eprintln!("  {}", describe_event(&e));
                }
            }
        }
        let done = self.client.get_operation(id).await?;
        self.print(&done, describe_operation);
        Ok(ended(&done))
    }
}

/// 0 for a SUCCEEDED operation, 1 for any other end.
fn ended(op: &Operation) -> Outcome {
    if op.state == OperationState::Succeeded {
        Outcome::Ok
    } else {
        Outcome::OperationFailed
    }
}

/// One line per item, or `empty` when there is none.
fn rows<T>(items: &[T], describe: fn(&T) -> String, empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.iter().map(describe).collect::<Vec<_>>().join("\n")
    }
}

fn describe_snapshot(s: &Snapshot) -> String {
    format!(
        "{}  {}/{}  {}  {} bytes  {}",
        s.id,
        s.project,
        s.vcluster,
        s.state.as_str(),
        s.size_bytes.map_or("null".to_string(), |n| n.to_string()),
        s.description.as_deref().unwrap_or("")
    )
}

/// One event as a progress line: time, type, and the step, attempt and error if any.
fn describe_event(e: &ovc_client::EventRecord) -> String {
    let time = e.recorded_at.format("%H:%M:%S%.3f");
    let d = &e.data;
    let mut s = format!("{time}  {:<20}", e.event_type);
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

fn describe_operation(o: &Operation) -> String {
    let mut s = format!(
        "operation {} {} {}: {}",
        o.id,
        o.kind.as_str(),
        o.vcluster,
        o.state.as_str()
    );
    if let Some(e) = &o.error {
        s.push_str(&format!(" — {}", e.message));
    }
    s
}

fn describe_vcluster(v: &VCluster) -> String {
    format!(
        "{}/{}  {}  k8s {}  replicas {}  namespace {}",
        v.project,
        v.name,
        v.state.as_str(),
        v.spec.kubernetes_version,
        v.spec.control_plane.replicas,
        v.host_namespace
    )
}

/// The spec of `ovc vc create`: the `--spec-file` JSON (API.md `spec`) with `--replicas`
/// and `--host` set over it.
fn create_spec(
    spec_file: Option<std::path::PathBuf>,
    replicas: Option<u32>,
    host: Option<String>,
) -> Result<VClusterSpec, Stop> {
    let mut spec: Value = match &spec_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                Stop::Client(Error::Config(format!("cannot read {}: {e}", f.display())))
            })?;
            serde_json::from_str(&text).map_err(|e| {
                Stop::Client(Error::Config(format!("{}: not JSON: {e}", f.display())))
            })?
        }
        None => json!({}),
    };
    if !spec.is_object() {
        return Err(Stop::Invalid("the spec must be a JSON object".into()));
    }
    if let Some(r) = replicas {
        spec["control_plane"]["replicas"] = json!(r);
    }
    if let Some(h) = host {
        spec["host"] = json!(h);
    }
    let from = spec_file.map_or("spec".to_string(), |f| f.display().to_string());
    serde_json::from_value(spec).map_err(|e| Stop::Invalid(format!("{from}: {e}")))
}

/// Runs `ovc vc ...`.
pub async fn vc(conn: Conn, cmd: VcCommand) -> Outcome {
    let s = match Session::new(conn) {
        Ok(s) => s,
        Err(o) => return o,
    };
    vc_in(&s, cmd).await.unwrap_or_else(|e| s.report(e))
}

async fn vc_in(s: &Session, cmd: VcCommand) -> Result<Outcome, Stop> {
    let c = &s.client;
    let cmd = match cmd {
        VcCommand::Builtin(b) => b,
        VcCommand::Operation(op) => {
            let body = op.body.map_err(Stop::Invalid)?;
            let route = ovc_workflows::registry()
                .by_verb(&op.verb)
                .map(|(_, api)| api.route)
                .unwrap_or_default();
            let accepted = c
                .start_operation(&op.name, route, &body, op.request_id.as_deref())
                .await?;
            return s.finish(accepted, op.wait).await;
        }
    };
    match cmd {
        VcBuiltin::Create {
            name,
            replicas,
            host,
            spec_file,
            wait,
        } => {
            let spec = create_spec(spec_file, replicas, host)?;
            let req = CreateVCluster {
                name,
                spec,
                request_id: None,
            };
            s.finish(c.create_vcluster(&req).await?, wait).await
        }
        VcBuiltin::Get { name } => {
            s.print(&c.get_vcluster(&name).await?, describe_vcluster);
            Ok(Outcome::Ok)
        }
        VcBuiltin::List => {
            let page = c.list_vclusters(&ListVClusters::default()).await?;
            s.print(&page, |p| {
                rows(&p.vclusters, describe_vcluster, "no vclusters")
            });
            Ok(Outcome::Ok)
        }
        VcBuiltin::Delete { name, wait } => {
            s.finish(c.delete_vcluster(&name, None).await?, wait).await
        }
        VcBuiltin::Kubeconfig { name } => {
            let k = c.kubeconfig(&name).await?;
            if s.json {
                s.print(&json!({ "kubeconfig": k }), |_| String::new());
            } else {
                print!("{k}");
            }
            Ok(Outcome::Ok)
        }
    }
}

/// `ovc events tail` against a server: a page at a time, or with `follow` the live SSE
/// feed (resumed across reconnects), printing each event with `line`.
pub async fn tail_events(
    conn: Conn,
    after: u64,
    follow: bool,
    line: fn(&Value) -> String,
) -> Outcome {
    let s = match Session::new(conn) {
        Ok(s) => s,
        Err(o) => return o,
    };
    tail_in(&s, after, follow, line)
        .await
        .unwrap_or_else(|e| s.report(e))
}

async fn tail_in(
    s: &Session,
    mut after: u64,
    follow: bool,
    line: fn(&Value) -> String,
) -> Result<Outcome, Stop> {
    let show = |e: &ovc_client::EventRecord| {
        if s.json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{}", line(&serde_json::to_value(e).unwrap_or_default()));
        }
    };
    if follow {
        let mut feed = s.client.follow_events(after);
        while let Some(e) = feed.next().await {
            show(&e?);
        }
        return Ok(Outcome::Ok);
    }
    loop {
        let page = s.client.list_events(after, Some(1000)).await?;
        for e in &page.events {
            show(e);
        }
        if page.next_after == after {
            return Ok(Outcome::Ok);
        }
        after = page.next_after;
    }
}

/// Runs `ovc ops ...`.
pub async fn ops(conn: Conn, cmd: OpsCommand) -> Outcome {
    let s = match Session::new(conn) {
        Ok(s) => s,
        Err(o) => return o,
    };
    ops_in(&s, cmd).await.unwrap_or_else(|e| s.report(e))
}

async fn ops_in(s: &Session, cmd: OpsCommand) -> Result<Outcome, Stop> {
    let c = &s.client;
    match cmd {
        OpsCommand::Watch { id } => s.watch(&id).await,
        OpsCommand::Get { id } => {
            s.print(&c.get_operation(&id).await?, describe_operation);
            Ok(Outcome::Ok)
        }
        OpsCommand::List {
            state,
            kind,
            vcluster,
        } => {
            let req = ListOperations {
                state,
                kind,
                vcluster,
                ..ListOperations::default()
            };
            let page = c.list_operations(&req).await?;
            s.print(&page, |p| {
                rows(&p.operations, describe_operation, "no operations")
            });
            Ok(Outcome::Ok)
        }
        OpsCommand::Wait { id } => {
            let done = s.wait(&id).await?;
            s.print(&done, describe_operation);
            Ok(ended(&done))
        }
        OpsCommand::Cancel { id } => {
            let op = c.cancel_operation(&id).await?;
            s.print(&op, |o| {
                format!("cancellation requested: {}", describe_operation(o))
            });
            Ok(Outcome::Ok)
        }
        OpsCommand::Retry {
            id: Some(id), wait, ..
        } => s.finish(c.retry_operation(&id, None).await?, wait).await,
        OpsCommand::Retry {
            id: None,
            state,
            kind,
            since,
            wait,
        } => {
            let since = since
                .map(|s| {
                    crate::duration::parse_chrono(&s)
                        .map_err(|e| Stop::Invalid(format!("--since {e}")))
                })
                .transpose()?
                .map(|age| {
                    // whole seconds, as the operator wrote it
                    let t = chrono::Utc::now() - age;
                    chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
                });
            let req = ListOperations {
                state: Some(state.unwrap_or_else(|| "FAILED".into())),
                kind,
                since,
                page_size: Some(1000),
                ..ListOperations::default()
            };
            let list = c.list_operations(&req).await?;
            if list.operations.is_empty() {
                eprintln!("no operations match");
                return Ok(Outcome::Ok);
            }
            let mut outcome = Outcome::Ok;
            for op in list.operations {
                // One retry per failed operation; a refusal (e.g. the vcluster moved on)
                // is reported and the others still go.
                match c.retry_operation(op.id, None).await {
                    Ok(accepted) => {
                        if !matches!(s.finish(accepted, wait).await?, Outcome::Ok) {
                            outcome = Outcome::OperationFailed;
                        }
                    }
                    Err(e) => {
                        eprintln!("operation {}:", op.id);
                        outcome = s.report(Stop::Client(e));
                    }
                }
            }
            Ok(outcome)
        }
    }
}

/// Runs `ovc snapshot ...`.
pub async fn snapshot(conn: Conn, cmd: SnapshotCommand) -> Outcome {
    let s = match Session::new(conn) {
        Ok(s) => s,
        Err(o) => return o,
    };
    snapshot_in(&s, cmd).await.unwrap_or_else(|e| s.report(e))
}

async fn snapshot_in(s: &Session, cmd: SnapshotCommand) -> Result<Outcome, Stop> {
    let c = &s.client;
    match cmd {
        SnapshotCommand::List { vcluster } => {
            let req = ListSnapshots {
                vcluster,
                ..ListSnapshots::default()
            };
            let page = c.list_snapshots(&req).await?;
            s.print(&page, |p| {
                rows(&p.snapshots, describe_snapshot, "no snapshots")
            });
            Ok(Outcome::Ok)
        }
        SnapshotCommand::Get { id } => {
            s.print(&c.get_snapshot(&id).await?, describe_snapshot);
            Ok(Outcome::Ok)
        }
        SnapshotCommand::Delete { id, wait } => {
            s.finish(c.delete_snapshot(&id, None).await?, wait).await
        }
        SnapshotCommand::Restore {
            id,
            new,
            existing,
            wait,
        } => {
            let target = match (new, existing) {
                (Some(n), _) => ovc_client::RestoreTarget::NewName(n),
                (None, Some(e)) => ovc_client::RestoreTarget::Existing(e),
                // clap requires one of them
                (None, None) => return Err(Stop::Invalid("--new or --existing".into())),
            };
            let req = ovc_client::RestoreSnapshot {
                target,
                request_id: None,
            };
            s.finish(c.restore_snapshot(&id, &req).await?, wait).await
        }
    }
}
