//! Tracing across processes, black-box: an OTLP/gRPC trace receiver runs on loopback
//! inside this test; `ovc serve` and `ovc worker` processes on PostgreSQL export to it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, a 50 ms batch interval).
//!
//! - A create (no traceparent from the caller) runs on worker A, which is killed with
//!   SIGKILL after its first step; worker B steals the lease and finishes, retrying a
//!   step that fails transiently once. The API's request span and every operation and
//!   step span of both workers share one trace id; each parent id names a span of the
//!   trace (request -> operation runs -> step attempts), and step spans come from both
//!   worker processes (told apart by the `process.pid` resource attribute).
//! - A suspend sent with a caller's `traceparent` continues the caller's trace: the
//!   request span's parent is the caller's span.
//! - Worker B logs JSON lines (`--log-format json`) carrying its step spans' trace and
//!   span ids.
//! - An `OTEL_*` setting ovc cannot honour stops the process at start.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use ovc_store::Backend;
use ovc_testkit::TestDb;
use ovc_tests::dev::http;
use ovc_tests::ovc_bin;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// Span attributes, as strings.
    attrs: BTreeMap<String, String>,
    /// `process.pid` of the exporting process.
    pid: String,
    /// OpenTelemetry status code (2 = error).
    status: i32,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or("")
    }
}

/// The OTLP trace receiver: keeps every span exported to it.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let pid = resource.get("process.pid").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Got {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        attrs: attributes(&s.attributes),
                        pid: pid.clone(),
                        status: s.status.map(|st| st.code).unwrap_or(0),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves on a free loopback port; returns its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("OTLP receiver");
        });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits (up to 20 s) until `pred` holds for the received spans.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Got]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pred(&self.spans()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; spans: {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Processes of the test; killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("process {} did not stop after SIGTERM", child.id());
}

/// `ovc` with the database and telemetry settings of the test.
fn ovc(db: &TestDb, endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(ovc_bin());
    cmd.args(args)
        .args(["--database-url", db.url()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OVC_SIM_LATENCY_MS", "400")
        // The control plane is ready 1.5 s after the install: wait_ready ends a run or
        // two as pending (a durable reschedule) first.
        .env("OVC_SIM_READY_MS", "1500")
        .env("OVC_SIM_FAULTS", "create/read_kubeconfig:transient:1");
    if let Some(schema) = db.config().pg_schema {
        cmd.args(["--pg-schema", &schema]);
    }
    cmd
}

/// Starts `ovc serve --auth none` and returns it with its REST base URL.
fn serve(db: &TestDb, endpoint: &str) -> (Child, String) {
    let mut child = ovc(
        db,
        endpoint,
        &[
            "serve",
            "--auth",
            "none",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ],
    )
    .env("OTEL_SERVICE_NAME", "ovc-api")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn ovc serve");
    let lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(addr) = line
                .strip_prefix("ovc serve: REST API on http://")
                .and_then(|rest| rest.split_whitespace().next())
            {
                let api = format!("http://{addr}");
                std::thread::spawn(move || for _ in rx {});
                return (child, api);
            }
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("ovc serve printed no address: {seen:?}");
}

/// Starts `ovc worker NAME`, its stderr (JSON lines when `json`) in `log`.
fn worker(db: &TestDb, endpoint: &str, name: &str, json: bool, log: &std::path::Path) -> Child {
    let dir = log.parent().expect("dir").join("snapshots");
    let mut cmd = ovc(
        db,
        endpoint,
        &[
            "worker",
            "--name",
            name,
            "--lease-ms",
            "1000",
            "--idle-poll-ms",
            "50",
            "--artifacts",
            &dir.display().to_string(),
        ],
    );
    if json {
        cmd.args(["--log-format", "json"])
            .env("OVC_LOG", "warn,ovc_engine::executor=debug");
    } else {
        cmd.env("OVC_LOG", "warn");
    }
    cmd.env("OTEL_SERVICE_NAME", "ovc-worker")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn ovc worker")
}

/// Waits (server side) until the operation is done; returns it.
fn wait_done(api: &str, op: &Value) -> Value {
    let id = op["id"]
        .as_str()
        .unwrap_or_else(|| panic!("not an operation: {op}"));
    for _ in 0..6 {
        let (s, done) = http(
            "GET",
            &format!("{api}/v1/operations/{id}/wait?timeout=10s"),
            None,
            &[],
        );
        assert_eq!(s, 200, "{done}");
        if done["done"] == true {
            return done;
        }
    }
    panic!("operation {id} not done after 60 s");
}

/// The spans of operation `op` whose name starts with `prefix`.
fn by_op<'a>(spans: &'a [Got], prefix: &str, op: &str) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.name.starts_with(prefix) && s.attr("operation_id") == op)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_api_call_and_every_step_across_a_worker_kill() {
    let db = TestDb::new(Backend::Postgres).await;
    db.open().await; // migrated
    let dir = tempfile::tempdir().expect("dir");
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let mut procs = Procs(Vec::new());
    let (api_proc, api) = serve(&db, &endpoint);
    let api_pid = api_proc.id().to_string();
    procs.0.push(api_proc);

    let a = worker(&db, &endpoint, "wa", false, &dir.path().join("wa.log"));
    let a_pid = a.id().to_string();
    procs.0.push(a);

    // A create without a traceparent: the API starts the trace.
    let (s, op) = http(
        "POST",
        &format!("{api}/v1/vclusters"),
        Some(&json!({"name": "traced"})),
        &[],
    );
    assert_eq!(s, 202, "{op}");
    let op_id = op["id"].as_str().expect("id").to_string();

    // Kill worker A once one of its runs of the operation has ended (wait_ready was
    // pending) and been exported, with its step attempts.
    receiver
        .wait_for("an operation run of worker A", |spans| {
            spans.iter().any(|s| {
                s.name == "operation CREATE" && s.pid == a_pid && s.attr("operation_id") == op_id
            })
        })
        .await;
    procs.0[1].kill().expect("kill -9 worker A");
    let _ = procs.0[1].wait();
    let (_, now) = http("GET", &format!("{api}/v1/operations/{op_id}"), None, &[]);
    assert_eq!(now["done"], false, "A finished before it was killed: {now}");

    let b_log = dir.path().join("wb.log");
    let b = worker(&db, &endpoint, "wb", true, &b_log);
    let b_pid = b.id().to_string();
    procs.0.push(b);
    let done = wait_done(&api, &op);
    assert_eq!(done["state"], "SUCCEEDED", "{done}");

    // A suspend with the caller's own traceparent continues the caller's trace.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let (s, op2) = http(
        "POST",
        &format!("{api}/v1/vclusters/traced/suspend"),
        None,
        &[(
            "traceparent",
            &format!("00-{caller_trace}-{caller_span}-01"),
        )],
    );
    assert_eq!(s, 202, "{op2}");
    let op2_id = op2["id"].as_str().expect("id").to_string();
    let done2 = wait_done(&api, &op2);
    assert_eq!(done2["state"], "SUCCEEDED", "{done2}");

    // Stop the API and worker B gracefully: they export what they still hold.
    terminate(&mut procs.0[2]);
    terminate(&mut procs.0[0]);
    let spans = receiver.spans();
    // For a failure's diagnosis: B's log and the spans in the order they arrived.
    eprintln!(
        "--- worker B's log\n{}",
        std::fs::read_to_string(&b_log).unwrap_or_default()
    );
    for s in &spans {
        eprintln!(
            "{} pid={} trace={} span={} parent={} epoch={} attempt={} outcome={}",
            s.name,
            s.pid,
            s.trace_id,
            s.span_id,
            s.parent,
            s.attr("epoch"),
            s.attr("attempt"),
            s.attr("outcome")
        );
    }

    // --- the create: one trace from the request through both workers.
    let requests: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == "POST /v1/vclusters" && s.attr("operation_id") == op_id)
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "one request span for the create: {spans:#?}"
    );
    let request = requests[0];
    assert_eq!(
        request.pid, api_pid,
        "the request span comes from ovc serve"
    );
    assert_eq!(
        request.parent, "",
        "no caller traceparent: the request is the root"
    );
    assert_eq!(request.attr("http.response.status_code"), "202");
    assert_eq!(request.attr("operation_kind"), "CREATE");
    let trace = request.trace_id.clone();
    let in_trace: Vec<&Got> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let ids: HashSet<&str> = in_trace.iter().map(|s| s.span_id.as_str()).collect();
    for s in &in_trace {
        // The run span A was in when it was killed died with it; a step it ended before
        // (exported) may name it. Every other parent must be a span of the trace.
        let orphan_of_the_kill = s.pid == a_pid && s.name.starts_with("step ");
        assert!(
            s.span_id == request.span_id || ids.contains(s.parent.as_str()) || orphan_of_the_kill,
            "span {} ({}) has parent {:?}, which is no span of the trace",
            s.name,
            s.span_id,
            s.parent
        );
    }
    let runs = by_op(&spans, "operation CREATE", &op_id);
    let steps = by_op(&spans, "step ", &op_id);
    for s in runs.iter().chain(&steps) {
        assert_eq!(s.trace_id, trace, "{s:#?} is not in the request's trace");
    }
    for run in &runs {
        assert_eq!(
            run.parent, request.span_id,
            "operation runs are the request's children"
        );
        assert_eq!(run.attr("project"), "default");
        assert_eq!(run.attr("vcluster"), "traced");
        assert_eq!(run.attr("operation_kind"), "CREATE");
    }
    let run_ids: BTreeMap<&str, &Got> = runs.iter().map(|r| (r.span_id.as_str(), *r)).collect();
    let mut a_steps_under_runs = 0;
    for step in &steps {
        assert_eq!(step.name, format!("step {}", step.attr("step")));
        match run_ids.get(step.parent.as_str()) {
            Some(run) => {
                assert_eq!(run.pid, step.pid, "a step's run is in the same process");
                a_steps_under_runs += usize::from(step.pid == a_pid);
            }
            None => assert_eq!(
                step.pid, a_pid,
                "step {step:#?} is not a child of an exported operation run"
            ),
        }
        for key in [
            "step",
            "attempt",
            "host",
            "project",
            "vcluster",
            "operation_kind",
        ] {
            assert!(
                !step.attr(key).is_empty(),
                "step span without {key}: {step:#?}"
            );
        }
        assert_eq!(step.attr("host"), "default");
    }
    assert!(
        a_steps_under_runs > 0,
        "A's exported run has its steps: {steps:#?}"
    );
    let step_pids: HashSet<&str> = steps.iter().map(|s| s.pid.as_str()).collect();
    assert!(
        step_pids.contains(a_pid.as_str()) && step_pids.contains(b_pid.as_str()),
        "step spans from both the killed worker ({a_pid}) and the one that stole its lease \
         ({b_pid}): {step_pids:?}"
    );
    let run_pids: HashSet<&str> = runs.iter().map(|s| s.pid.as_str()).collect();
    assert!(
        run_pids.contains(b_pid.as_str()),
        "B's run is traced: {run_pids:?}"
    );
    // Every step of the workflow is there, and the retry of the failing one.
    for name in [
        "create_namespace",
        "install_release",
        "wait_ready",
        "read_kubeconfig",
    ] {
        assert!(
            steps.iter().any(|s| s.attr("step") == name),
            "no span of step {name}: {steps:#?}"
        );
    }
    let kubeconfig: Vec<&&Got> = steps
        .iter()
        .filter(|s| s.attr("step") == "read_kubeconfig")
        .collect();
    assert!(
        kubeconfig.iter().any(|s| s.attr("attempt") == "1"
            && s.status == 2
            && s.attr("outcome") == "failed, transient"),
        "the injected transient failure is an error span: {kubeconfig:#?}"
    );
    assert!(
        kubeconfig
            .iter()
            .any(|s| s.attr("attempt") == "2" && s.attr("outcome") == "done"),
        "the retry is a second attempt span: {kubeconfig:#?}"
    );

    // --- the suspend: the caller's trace continues.
    let requests2: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name.starts_with("POST /v1/vclusters/") && s.attr("operation_id") == op2_id)
        .collect();
    assert_eq!(
        requests2.len(),
        1,
        "one request span for the suspend: {spans:#?}"
    );
    assert_eq!(requests2[0].trace_id, caller_trace);
    assert_eq!(requests2[0].parent, caller_span);
    let runs2 = by_op(&spans, "operation SUSPEND", &op2_id);
    assert!(!runs2.is_empty(), "the suspend's run is traced");
    for run in &runs2 {
        assert_eq!(run.trace_id, caller_trace);
        assert_eq!(run.parent, requests2[0].span_id);
    }
    let steps2 = by_op(&spans, "step ", &op2_id);
    assert!(!steps2.is_empty(), "the suspend's steps are traced");
    assert!(steps2.iter().all(|s| s.trace_id == caller_trace));

    // --- worker B's JSON log lines carry the trace and span of their step.
    let b_steps: HashSet<&str> = steps
        .iter()
        .chain(&steps2)
        .filter(|s| s.pid == b_pid)
        .map(|s| s.span_id.as_str())
        .collect();
    let log = std::fs::read_to_string(&b_log).expect("B's log");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{')) // not the start-up and stop banners
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let attempts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "step attempt ended")
        .collect();
    assert!(!attempts.is_empty(), "B logged no step attempt: {log}");
    for line in &attempts {
        let span = line["span_id"].as_str().unwrap_or_default();
        assert!(
            b_steps.contains(span),
            "log line of no exported step span: {line}"
        );
        let t = line["trace_id"].as_str().unwrap_or_default();
        assert!(
            t == trace || t == caller_trace,
            "log line of another trace: {line}"
        );
    }
}

#[test]
fn an_otel_setting_ovc_cannot_honour_stops_it_at_start() {
    for (var, value, cmd) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "worker"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", "serve"),
        ("OTEL_METRICS_EXPORTER", "otlp", "worker"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem", "serve"),
    ] {
        let started = Instant::now();
        let out = Command::new(ovc_bin())
            .args([cmd, "--database-url", "sqlite:///nonexistent/dir/ovc.db"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env(var, value)
            .output()
            .expect("run ovc");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: {err}");
        assert!(
            err.contains(var),
            "{var}={value}: the error names it: {err}"
        );
        assert!(
            !err.contains("cannot open"),
            "refused before the database: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // A schemeless endpoint means TLS, which this build does not speak.
    let out = Command::new(ovc_bin())
        .args([
            "worker",
            "--database-url",
            "sqlite:///nonexistent/dir/ovc.db",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
        .output()
        .expect("run ovc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("OTLP exporter"),
        "{err}"
    );
}
