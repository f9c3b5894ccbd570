//! The deployment material of `ops/` checked against the binary it deploys, so neither can
//! drift from the other: every Kubernetes object of the kustomize base (rendered by
//! `kubectl kustomize` when kubectl is on PATH) and of the Helm chart's output (the files
//! of `OVC_HELM_RENDERED`, which scripts/helm-render.sh writes when helm is on PATH) parses
//! into its `k8s-openapi` type without losing a field; every container's arguments are
//! accepted by `ovc`, every environment variable it sets is one the process reads, every
//! required flag is given, ports and probes match the listen flags and the routes; the
//! ClusterRole allows every call the kube driver makes (its conformance suite on the fake
//! API server); the compose file wires the same; and every series the Grafana dashboard
//! and the alert rules query exists in the `/metrics` of a running `ovc`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use ovc_tests::dev::DevServer;
use ovc_tests::ovc_bin;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Files

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository's root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every document of a YAML text, as JSON values (empty documents dropped).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{what}: bad YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(&read(rel), rel);
    assert_eq!(docs.len(), 1, "{rel}: one document expected");
    docs.remove(0)
}

// ---------------------------------------------------------------------------------------
// What the binary reads: parsed from `ovc <command> --help` and the binary itself.

/// One option of a command's help.
#[derive(Debug, Clone)]
struct HelpOption {
    long: String,
    env: Option<String>,
}

/// What `ovc <command> --help` says about the command.
#[derive(Debug, Clone)]
struct CommandHelp {
    options: Vec<HelpOption>,
    /// The long flags of the usage line (required ones).
    required: Vec<String>,
    /// Every `OVC_*` and `OTEL_*` name the help text mentions (`[env: ...]` and the
    /// knobs and tracing settings it lists).
    mentioned: BTreeSet<String>,
}

impl CommandHelp {
    fn env_of(&self, long: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|o| o.long == long)
            .and_then(|o| o.env.as_deref())
    }
    fn read_env(&self) -> BTreeSet<String> {
        self.options.iter().filter_map(|o| o.env.clone()).collect()
    }
}

fn words_like(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find(prefix) {
        let start = i + off;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + prefix.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_uppercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary && end > start + prefix.len() {
            out.insert(text[start..end].trim_end_matches('_').to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn command_help(command: &str) -> CommandHelp {
    let out = Command::new(ovc_bin())
        .args([command, "--help"])
        .env_clear()
        .output()
        .expect("run ovc --help");
    assert!(out.status.success(), "ovc {command} --help failed");
    let text = String::from_utf8(out.stdout).expect("utf-8 help");
    let mut options = Vec::new();
    let mut current: Option<HelpOption> = None;
    for line in text.lines() {
        let t = line.trim_start();
        // An option line: `  -o, --output <OUTPUT>` or `      --database-url <DATABASE_URL>`.
        let flag = t.strip_prefix("--").or_else(|| {
            t.split_once(", --")
                .map(|(_, r)| r)
                .filter(|_| t.starts_with('-'))
        });
        if let Some(rest) = flag {
            if let Some(o) = current.take() {
                options.push(o);
            }
            let long = rest
                .split(|c: char| c.is_whitespace() || c == '=' || c == '<')
                .next()
                .unwrap_or_default()
                .to_string();
            current = Some(HelpOption { long, env: None });
        }
        if let (Some(o), Some(i)) = (current.as_mut(), line.find("[env: ")) {
            let name = line[i + 6..]
                .split(['=', ']'])
                .next()
                .unwrap_or_default()
                .to_string();
            o.env = Some(name);
        }
    }
    options.extend(current);
    let usage = text
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line in ovc {command} --help:\n{text}"));
    // Optional flags are inside [...]; required ones stand outside.
    let mut required = Vec::new();
    let mut depth = 0;
    for tok in usage.split_whitespace() {
        let opens = tok.matches('[').count();
        let closes = tok.matches(']').count();
        if depth == 0 && opens == 0 && tok.starts_with("--") {
            required.push(tok.trim_start_matches("--").to_string());
        }
        depth += opens;
        depth -= closes.min(depth);
    }
    assert!(
        options.iter().any(|o| o.long == "help"),
        "the help parser found no options in:\n{text}"
    );
    CommandHelp {
        options,
        required,
        mentioned: words_like(&text, "OVC_")
            .into_iter()
            .chain(words_like(&text, "OTEL_"))
            .collect(),
    }
}

/// [`command_help`], run once per command.
fn help(command: &str) -> std::sync::Arc<CommandHelp> {
    static HELPS: OnceLock<std::sync::Mutex<BTreeMap<String, std::sync::Arc<CommandHelp>>>> =
        OnceLock::new();
    let mut m = HELPS.get_or_init(Default::default).lock().expect("helps");
    m.entry(command.to_string())
        .or_insert_with(|| std::sync::Arc::new(command_help(command)))
        .clone()
}

/// The bytes of the `ovc` binary (for names read by libraries, e.g. `AWS_REGION`).
fn binary_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(ovc_bin()).expect("read the ovc binary"))
}

fn binary_contains(name: &str) -> bool {
    binary_bytes()
        .windows(name.len())
        .any(|w| w == name.as_bytes())
}

/// Variables every ovc process reads that no `[env: ...]` names: the log filter
/// (main.rs), and for `serve`/`worker` the kube driver's settings (`KubeHostConfig::from_env`,
/// named in `ovc worker --help`) and the simulated host's knobs (`SimHost::connect_from_env`).
fn process_wide(command: &str) -> BTreeSet<String> {
    let mut s = BTreeSet::from(["OVC_LOG".to_string()]);
    if command == "serve" || command == "worker" {
        s.extend(
            help("worker")
                .mentioned
                .iter()
                .filter(|n| {
                    n.starts_with("OVC_HELM")
                        || n.starts_with("OVC_KUBE_")
                        || n.starts_with("OVC_SIM_")
                })
                .cloned(),
        );
    }
    s
}

/// Why `name` may be set for `ovc <command>`, or `None` when nothing reads it.
fn who_reads(command: &str, name: &str) -> Option<&'static str> {
    let h = help(command);
    if h.read_env().contains(name) {
        return Some("an [env: ...] of the command");
    }
    if process_wide(command).contains(name) {
        return Some("read by every such process");
    }
    if name.starts_with("OTEL_") {
        // The OpenTelemetry settings ovc honours are listed in the command's help (an
        // OTEL_* setting it cannot honour stops it at start).
        return h
            .mentioned
            .contains(name)
            .then_some("an OpenTelemetry setting of the command's help");
    }
    if name.starts_with("OVC_") {
        return None;
    }
    if (command == "serve" || command == "worker")
        && name.starts_with("HELM_")
        && name.ends_with("_HOME")
    {
        // helm's own (helm.sh/helm/v3 pkg/helmpath), read by the helm the kube driver runs.
        return Some("read by helm");
    }
    // Read by a library inside the binary (object storage credentials, OTLP): the name is
    // in the binary's bytes.
    binary_contains(name).then_some("named in the binary")
}

/// Checks that `ovc ARGS --help` parses: every flag exists and every value is accepted.
/// clap checks no environment value under `--help`, so each literal value of an option's
/// variable is passed as that option (`--long=VALUE`) too.
fn assert_args_parse(what: &str, args: &[String], env: &BTreeMap<String, String>) {
    let h = help(args.first().map(String::as_str).unwrap_or_default());
    let mut all = args.to_vec();
    for o in &h.options {
        let given = args
            .iter()
            .any(|a| *a == format!("--{}", o.long) || a.starts_with(&format!("--{}=", o.long)));
        if let (Some(v), false) = (o.env.as_ref().and_then(|e| env.get(e)), given) {
            all.push(format!("--{}={v}", o.long));
        }
    }
    let out = Command::new(ovc_bin())
        .args(&all)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run ovc");
    assert!(
        out.status.success(),
        "{what}: `ovc {}` is refused: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One ovc container, wherever it is declared.
#[derive(Debug, Clone)]
struct OvcProcess {
    what: String,
    args: Vec<String>,
    /// Literal values.
    env: BTreeMap<String, String>,
    /// Every name set, literal or from a Secret/ConfigMap.
    env_names: BTreeSet<String>,
}

impl OvcProcess {
    fn command(&self) -> &str {
        self.args.first().map(String::as_str).unwrap_or_default()
    }

    /// The value of `--long` in the arguments, or of its environment variable.
    fn setting(&self, long: &str) -> Option<String> {
        let flag = format!("--{long}");
        if let Some(i) = self.args.iter().position(|a| *a == flag) {
            return self.args.get(i + 1).cloned();
        }
        if let Some(v) = self
            .args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        {
            return Some(v.to_string());
        }
        help(self.command())
            .env_of(long)
            .and_then(|e| self.env.get(e).cloned())
    }

    /// Every env var is read, every required flag is given, the arguments parse.
    fn check_against_the_binary(&self) {
        let command = self.command();
        assert!(
            ["serve", "worker", "migrate"].contains(&command),
            "{}: runs `ovc {command}`, expected serve, worker or migrate",
            self.what
        );
        let h = help(command);
        for name in &self.env_names {
            assert!(
                who_reads(command, name).is_some(),
                "{}: sets {name}, which `ovc {command}` does not read",
                self.what
            );
        }
        for long in &h.required {
            let given = self
                .args
                .iter()
                .any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
                || h.env_of(long).is_some_and(|e| self.env_names.contains(e));
            assert!(
                given,
                "{}: `ovc {command}` requires --{long} ({}), not given",
                self.what,
                h.env_of(long).unwrap_or("no env")
            );
        }
        assert_args_parse(&self.what, &self.args, &self.env);
    }
}

/// The port of a listen address `HOST:PORT`, checked to listen beyond loopback (a probe
/// or a Service cannot reach a loopback listener of a container).
fn listen_port(what: &str, addr: &str) -> u16 {
    let sock: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {addr:?} is not HOST:PORT: {e}"));
    assert!(
        !sock.ip().is_loopback(),
        "{what}: listens on {addr}, unreachable from outside the container"
    );
    sock.port()
}

/// The routes the probes may use (checked to answer 200 by
/// `probe_routes_and_every_dashboard_series_exist_on_a_running_ovc`).
const HEALTH_ROUTE: &str = "/healthz";
const READY_ROUTE: &str = "/readyz";

// ---------------------------------------------------------------------------------------
// Kubernetes objects

/// `v` parsed as `T`, and `T` serialized back equal to `v`: a misspelt or misplaced field
/// (which k8s-openapi would skip) fails.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(what: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid object: {e}\n{v:#}"));
    let back = serde_json::to_value(&t).expect("serialize");
    let (a, b) = (normalized(v), normalized(&back));
    assert_eq!(
        a,
        b,
        "{what}: fields were dropped or changed when parsed as {} (a misspelt or misplaced key?)",
        std::any::type_name::<T>()
    );
    t
}

/// Drops nulls and empty maps/lists, which the typed form omits.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The objects of one rendering, by kind.
#[derive(Default)]
struct Objects {
    source: String,
    deployments: Vec<Deployment>,
    jobs: Vec<Job>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
}

impl Objects {
    fn parse(source: &str, docs: Vec<Value>) -> Objects {
        let mut o = Objects {
            source: source.to_string(),
            ..Objects::default()
        };
        assert!(!docs.is_empty(), "{source}: no objects");
        for d in docs {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let what = format!(
                "{source}: {kind} {}",
                d["metadata"]["name"].as_str().unwrap_or("?")
            );
            match (d["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
                ("apps/v1", "Deployment") => o.deployments.push(typed(&what, &d)),
                ("batch/v1", "Job") => o.jobs.push(typed(&what, &d)),
                ("v1", "Service") => o.services.push(typed(&what, &d)),
                ("v1", "ServiceAccount") => o.service_accounts.push(typed(&what, &d)),
                ("v1", "Namespace") => drop(typed::<Namespace>(&what, &d)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    o.cluster_roles.push(typed(&what, &d))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    o.bindings.push(typed(&what, &d))
                }
                ("policy/v1", "PodDisruptionBudget") => o.pdbs.push(typed(&what, &d)),
                ("autoscaling/v2", "HorizontalPodAutoscaler") => o.hpas.push(typed(&what, &d)),
                (api, kind) => panic!("{what}: unexpected object {api} {kind}"),
            }
        }
        o
    }

    /// The one Deployment (or Job) whose ovc container runs `command`.
    fn pod_running(&self, command: &str) -> (String, &PodTemplateSpec, Option<&Deployment>) {
        let mut found = Vec::new();
        for d in &self.deployments {
            let t = &d.spec.as_ref().expect("spec").template;
            if first_arg(t) == Some(command) {
                found.push((format!("Deployment {}", name(&d.metadata)), t, Some(d)));
            }
        }
        for j in &self.jobs {
            let t = &j.spec.as_ref().expect("spec").template;
            if first_arg(t) == Some(command) {
                found.push((format!("Job {}", name(&j.metadata)), t, None));
            }
        }
        assert_eq!(
            found.len(),
            1,
            "{}: expected one workload running `ovc {command}`, found {:?}",
            self.source,
            found.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        found.remove(0)
    }
}

fn name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

fn pod_spec(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().expect("pod spec")
}

fn first_arg(t: &PodTemplateSpec) -> Option<&str> {
    pod_spec(t)
        .containers
        .first()
        .and_then(|c| c.args.as_ref())
        .and_then(|a| a.first())
        .map(String::as_str)
}

fn container_process(what: &str, c: &Container) -> OvcProcess {
    assert!(
        c.command.is_none(),
        "{what}: sets `command`; the image's ENTRYPOINT is `ovc`, give `args` only"
    );
    let mut env = BTreeMap::new();
    let mut env_names = BTreeSet::new();
    for e in c.env.iter().flatten() {
        assert!(
            env_names.insert(e.name.clone()),
            "{what}: {} is set twice",
            e.name
        );
        if let Some(v) = &e.value {
            env.insert(e.name.clone(), v.clone());
        }
    }
    OvcProcess {
        what: what.to_string(),
        args: c.args.clone().unwrap_or_default(),
        env,
        env_names,
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// The rules of the canonical ClusterRole, ops/rbac/ovc-host-role.yaml.
fn canonical_rules() -> Vec<PolicyRule> {
    let docs = yaml_docs(
        &read("ops/rbac/ovc-host-role.yaml"),
        "ops/rbac/ovc-host-role.yaml",
    );
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole in ops/rbac/ovc-host-role.yaml");
    let role: ClusterRole = typed("ops/rbac/ovc-host-role.yaml", role);
    role.rules.expect("rules")
}

/// The Dockerfile's `USER uid:gid`.
fn image_uid() -> i64 {
    let docker = read("ops/Dockerfile");
    let user = docker
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line in ops/Dockerfile");
    user.split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or_else(|| panic!("ops/Dockerfile: USER {user:?} is not a numeric uid"))
}

/// Every check of one rendering of the Kubernetes manifests.
fn check_manifests(o: &Objects) {
    let src = &o.source;
    // The ServiceAccount, its ClusterRole and the binding between them.
    assert_eq!(o.service_accounts.len(), 1, "{src}: one ServiceAccount");
    let sa = &o.service_accounts[0];
    let sa_name = name(&sa.metadata);
    let sa_ns = sa.metadata.namespace.as_deref();
    assert_eq!(o.cluster_roles.len(), 1, "{src}: one ClusterRole");
    let role = &o.cluster_roles[0];
    assert_eq!(
        role.rules.clone().unwrap_or_default(),
        canonical_rules(),
        "{src}: the ClusterRole's rules differ from ops/rbac/ovc-host-role.yaml"
    );
    assert!(
        o.bindings.iter().any(|b| b.role_ref.kind == "ClusterRole"
            && b.role_ref.name == name(&role.metadata)
            && b.subjects
                .iter()
                .flatten()
                .any(|s| s.kind == "ServiceAccount"
                    && s.name == sa_name
                    && s.namespace.as_deref() == sa_ns)),
        "{src}: no ClusterRoleBinding gives {} to ServiceAccount {sa_ns:?}/{sa_name}",
        name(&role.metadata)
    );

    let uid = image_uid();
    let mut processes = BTreeMap::new();
    for command in ["serve", "worker", "migrate"] {
        let (what, t, deployment) = o.pod_running(command);
        let what = format!("{src}: {what}");
        let spec = pod_spec(t);
        assert_eq!(spec.containers.len(), 1, "{what}: one container");
        let c = &spec.containers[0];
        let p = container_process(&what, c);
        p.check_against_the_binary();
        // The database URL comes from a Secret, never a literal.
        let db = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "OVC_DATABASE_URL")
            .unwrap_or_else(|| panic!("{what}: no OVC_DATABASE_URL"));
        assert!(
            db.value.is_none()
                && db
                    .value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref())
                    .is_some(),
            "{what}: OVC_DATABASE_URL must come from a Secret (secretKeyRef)"
        );
        // Non-root as the image's user, with requests.
        let psc = spec.security_context.as_ref();
        assert_eq!(
            psc.and_then(|s| s.run_as_non_root),
            Some(true),
            "{what}: runAsNonRoot"
        );
        assert_eq!(
            psc.and_then(|s| s.run_as_user),
            Some(uid),
            "{what}: runAsUser must be the image's USER"
        );
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        for r in ["cpu", "memory"] {
            assert!(requests.contains_key(r), "{what}: no {r} request");
        }
        // A read-only root needs a writable /tmp (helm's directories, the values file of
        // `helm upgrade`, tempfiles) where the host is kube.
        let read_only = c
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem)
            == Some(true);
        if read_only && command != "migrate" && p.setting("host").as_deref() == Some("kube") {
            let tmp = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == "/tmp")
                .unwrap_or_else(|| {
                    panic!("{what}: a read-only root with --host kube needs /tmp mounted")
                });
            assert!(
                spec.volumes
                    .iter()
                    .flatten()
                    .any(|v| v.name == tmp.name && v.empty_dir.is_some()),
                "{what}: /tmp is not an emptyDir"
            );
            for home in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
                let v = env_value(c, home).unwrap_or_else(|| {
                    panic!("{what}: {home} unset: helm cannot write under a read-only root")
                });
                assert!(
                    v.starts_with("/tmp/"),
                    "{what}: {home}={v} is not under /tmp"
                );
            }
        }
        if command != "migrate" {
            assert_eq!(
                spec.service_account_name.as_deref(),
                Some(sa_name),
                "{what}: must run as the ServiceAccount bound to the kube driver's ClusterRole"
            );
            let d = deployment.expect("a Deployment");
            let selector = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default();
            assert!(
                labels_match(&selector, &template_labels(t)),
                "{what}: the selector does not match the pod labels"
            );
            assert!(
                o.pdbs.iter().any(|pdb| pdb
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|s| labels_match(s, &template_labels(t)))),
                "{what}: no PodDisruptionBudget selects its pods"
            );
        }
        processes.insert(command, (what, t, deployment, p));
    }

    // The API: ports from its listen flags, probes on the health routes, the Service.
    let (what, t, _, api) = &processes["serve"];
    let c = &pod_spec(t).containers[0];
    let http = listen_port(
        what,
        &api.setting("http")
            .unwrap_or_else(|| panic!("{what}: no --http")),
    );
    let grpc = listen_port(
        what,
        &api.setting("grpc")
            .unwrap_or_else(|| panic!("{what}: no --grpc")),
    );
    let ports: BTreeMap<String, i32> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports.get("http"),
        Some(&i32::from(http)),
        "{what}: port http vs --http"
    );
    assert_eq!(
        ports.get("grpc"),
        Some(&i32::from(grpc)),
        "{what}: port grpc vs --grpc"
    );
    let probe_port = |probe: &k8s_openapi::api::core::v1::Probe, which: &str| {
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the {which} probe is not an httpGet"));
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                *ports.get(s).unwrap_or_else(|| {
                    panic!("{what}: the {which} probe names port {s:?}, which the container lacks")
                })
            }
        };
        assert_eq!(
            port,
            i32::from(http),
            "{what}: the {which} probe is not on --http"
        );
        get.path.clone().unwrap_or_default()
    };
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no livenessProbe"));
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no readinessProbe"));
    assert_eq!(probe_port(live, "liveness"), HEALTH_ROUTE, "{what}");
    assert_eq!(probe_port(ready, "readiness"), READY_ROUTE, "{what}");
    let svc = o
        .services
        .iter()
        .find(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| labels_match(sel, &template_labels(t)))
        })
        .unwrap_or_else(|| panic!("{src}: no Service selects the API's pods"));
    for sp in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
    {
        let target = match sp.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                *ports.get(&s).unwrap_or_else(|| {
                    panic!(
                        "{src}: Service port {:?} targets {s:?}, which the API lacks",
                        sp.name
                    )
                })
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
            None => sp.port,
        };
        assert!(
            ports.values().any(|p| *p == target),
            "{src}: Service port {:?} targets {target}, not a port of the API",
            sp.name
        );
    }

    // The workers: snapshot storage a vcluster pod can write to; HPA-ready.
    let (what, _, worker_deployment, worker) = &processes["worker"];
    let artifacts = worker
        .setting("artifacts")
        .unwrap_or_else(|| panic!("{what}: no snapshot storage (OVC_ARTIFACTS)"));
    if worker.setting("host").as_deref() == Some("kube") {
        assert!(
            artifacts.starts_with("s3://") || artifacts.starts_with("azblob://"),
            "{what}: OVC_ARTIFACTS={artifacts}: the kube driver's vcluster pods write snapshots to S3 or Azure only"
        );
    }
    ovc_snapshots::OpendalArtifacts::from_url(&artifacts)
        .unwrap_or_else(|e| panic!("{what}: OVC_ARTIFACTS={artifacts} is refused: {e}"));
    let worker_name = name(&worker_deployment.expect("worker Deployment").metadata);
    for hpa in &o.hpas {
        let spec = hpa.spec.as_ref().expect("hpa spec");
        assert_eq!(
            (
                spec.scale_target_ref.kind.as_str(),
                spec.scale_target_ref.name.as_str()
            ),
            ("Deployment", worker_name),
            "{src}: the HPA must scale the workers"
        );
        assert!(
            worker_deployment
                .and_then(|d| d.spec.as_ref())
                .and_then(|s| s.replicas)
                .is_none(),
            "{src}: with an HPA the worker Deployment must not set replicas (they would fight)"
        );
    }
}

fn kubectl() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

/// `kubectl kustomize DIR`, or `None` without kubectl.
fn kustomize(dir: &str) -> Option<Vec<Value>> {
    let kubectl = kubectl()?;
    let out = Command::new(kubectl)
        .args(["kustomize", &repo().join(dir).display().to_string()])
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml_docs(&String::from_utf8_lossy(&out.stdout), dir))
}

/// The kustomize base read file by file, as kustomize would (its `namespace:` applied).
fn base_files() -> Vec<Value> {
    let k = yaml("ops/kustomize/base/kustomization.yaml");
    let ns = k["namespace"].as_str().map(str::to_string);
    let mut docs = Vec::new();
    for r in k["resources"].as_array().expect("resources") {
        let rel = format!("ops/kustomize/base/{}", r.as_str().expect("a file"));
        for mut d in yaml_docs(&read(&rel), &rel) {
            let cluster_scoped = matches!(
                d["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding" | "Namespace")
            );
            if let (Some(ns), false) = (&ns, cluster_scoped) {
                d["metadata"]["namespace"] = json!(ns);
            }
            docs.push(d);
        }
    }
    docs
}

#[test]
fn the_kustomize_base_is_wired_to_the_binary() {
    let files = Objects::parse("ops/kustomize/base (files)", base_files());
    check_manifests(&files);
    match kustomize("ops/kustomize/base") {
        Some(rendered) => check_manifests(&Objects::parse(
            "kubectl kustomize ops/kustomize/base",
            rendered,
        )),
        None => eprintln!("kubectl is not on PATH: the base was checked file by file"),
    }
}

#[test]
fn the_autoscaling_overlay_hands_the_workers_to_an_hpa() {
    let Some(rendered) = kustomize("ops/kustomize/overlays/autoscaling") else {
        eprintln!("skipped: kubectl is not on PATH (the overlay needs kustomize's patches)");
        return;
    };
    let o = Objects::parse(
        "kubectl kustomize ops/kustomize/overlays/autoscaling",
        rendered,
    );
    assert_eq!(o.hpas.len(), 1, "one HPA");
    check_manifests(&o);
}

#[test]
fn the_rendered_helm_chart_is_wired_to_the_binary() {
    let Some(files) = std::env::var_os("OVC_HELM_RENDERED") else {
        eprintln!(
            "skipped: OVC_HELM_RENDERED is not set (scripts/helm-render.sh sets it when helm is on PATH)"
        );
        return;
    };
    let paths: Vec<PathBuf> = std::env::split_paths(&files).collect();
    assert!(!paths.is_empty(), "OVC_HELM_RENDERED names no file");
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        check_manifests(&Objects::parse(
            &p.display().to_string(),
            yaml_docs(&text, "helm template"),
        ));
    }
}

/// Every `.Values.x.y` a template uses exists in values.yaml, the chart's RBAC rules are
/// the canonical ones, and the chart, the image tag and the workspace agree on the version.
#[test]
fn the_helm_chart_uses_only_values_it_declares() {
    let values = yaml("ops/helm/ovc/values.yaml");
    let chart = yaml("ops/helm/ovc/Chart.yaml");
    let dir = repo().join("ops/helm/ovc/templates");
    let mut used = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("templates") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("template");
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".Values.") {
            rest = &rest[i + 8..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            used.insert(path.trim_end_matches('.').to_string());
        }
    }
    assert!(
        used.len() > 20,
        "the template scan found too few values: {used:?}"
    );
    for path in &used {
        let mut v = &values;
        for part in path.split('.') {
            v = v
                .get(part)
                .unwrap_or_else(|| panic!("templates use .Values.{path}, which values.yaml lacks"));
        }
    }
    let rules: Vec<PolicyRule> = serde_json::from_value(Value::Array(
        yaml_docs(&read("ops/helm/ovc/files/host-rules.yaml"), "host-rules")
            .into_iter()
            .flat_map(|d| d.as_array().cloned().unwrap_or_default())
            .collect(),
    ))
    .expect("rules");
    assert_eq!(
        rules,
        canonical_rules(),
        "ops/helm/ovc/files/host-rules.yaml"
    );
    let cargo = read("Cargo.toml");
    let version = cargo
        .lines()
        .skip_while(|l| !l.starts_with("[workspace.package]"))
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"'))
        .expect("workspace version");
    assert_eq!(
        chart["appVersion"], version,
        "Chart.yaml appVersion vs the workspace"
    );
    for doc in base_files() {
        if let Some(containers) = doc
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
        {
            for c in containers {
                assert_eq!(
                    c["image"],
                    format!(
                        "{}:{version}",
                        values["image"]["repository"].as_str().expect("repository")
                    ),
                    "kustomize base: the image is the chart's default"
                );
            }
        }
    }
}

/// The Dockerfile builds the binary the manifests run, with the pinned toolchain, as the
/// user the manifests expect.
#[test]
fn the_dockerfile_builds_the_binary_the_manifests_run() {
    let docker = read("ops/Dockerfile");
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .map(|v| v.trim_matches('"'))
        .expect("channel");
    assert!(
        docker.contains(&format!("ARG RUST_VERSION={channel}\n")),
        "ops/Dockerfile: RUST_VERSION must be rust-toolchain.toml's {channel}"
    );
    let cli = read("workspace/cli/Cargo.toml");
    assert!(
        cli.contains("[[bin]]\nname = \"ovc\""),
        "the binary is still `ovc`"
    );
    assert!(
        docker.contains("--bin ovc"),
        "ops/Dockerfile builds --bin ovc"
    );
    assert!(
        docker.contains("ENTRYPOINT [\"ovc\"]"),
        "ENTRYPOINT [\"ovc\"]"
    );
    assert_ne!(image_uid(), 0, "the image runs as a non-root uid");
    let protoc = read(".cargo/config.toml");
    assert!(
        protoc.contains("scripts/protoc") && docker.contains("COPY . ."),
        "the build stage has scripts/protoc (.cargo/config.toml's PROTOC)"
    );
    let ignore = read("ops/Dockerfile.dockerignore");
    for must_stay in ["scripts", "migrations", ".cargo", "workspace", "Cargo.lock"] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == must_stay),
            "ops/Dockerfile.dockerignore drops {must_stay}, which the build needs"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Compose

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment must be a map: {other}"),
    }
}

fn url_host_port(url: &str) -> (String, Option<u16>) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()),
        None => (authority.to_string(), None),
    }
}

fn query_param(url: &str, key: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
fn the_compose_file_is_wired_to_the_binary_and_its_services() {
    let compose = yaml("ops/docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let svc = |n: &str| {
        services
            .get(n)
            .unwrap_or_else(|| panic!("ops/docker-compose.yml: no service {n}"))
    };
    for n in [
        "postgres",
        "minio",
        "otel-collector",
        "jaeger",
        "migrate",
        "api",
        "worker",
    ] {
        svc(n);
    }
    let mut ovc = BTreeMap::new();
    for (n, s) in services {
        // The ovc services: built from ops/Dockerfile (the `<<` merge of x-ovc-image).
        if s["build"]["dockerfile"] != "ops/Dockerfile" {
            continue;
        }
        let context = repo()
            .join("ops")
            .join(s["build"]["context"].as_str().expect("build context"));
        assert!(
            context
                .join(s["build"]["dockerfile"].as_str().expect("dockerfile"))
                .is_file(),
            "{n}: the build context does not hold ops/Dockerfile"
        );
        let args: Vec<String> = serde_json::from_value(s["command"].clone())
            .unwrap_or_else(|e| panic!("{n}: command must be a list of strings: {e}"));
        assert!(
            s["entrypoint"].is_null(),
            "{n}: keep the image's ENTRYPOINT (ovc)"
        );
        let env = compose_env(s);
        let p = OvcProcess {
            what: format!("ops/docker-compose.yml: {n}"),
            args,
            env_names: env.keys().cloned().collect(),
            env,
        };
        p.check_against_the_binary();
        ovc.insert(p.command().to_string(), (n.clone(), s.clone(), p));
    }
    for command in ["migrate", "serve", "worker"] {
        assert!(
            ovc.contains_key(command),
            "no compose service runs `ovc {command}`"
        );
    }

    // The database: the postgres service's user, password and database.
    let pg = compose_env(svc("postgres"));
    for (n, _, p) in ovc.values() {
        let url = p.setting("database-url").unwrap_or_default();
        let expected = format!(
            "postgres://{}:{}@postgres:5432/{}",
            pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
        );
        assert_eq!(url, expected, "{n}: OVC_DATABASE_URL");
    }
    let (migrate_name, ..) = &ovc["migrate"];
    for command in ["serve", "worker"] {
        let (n, s, _) = &ovc[command];
        assert_eq!(
            s["depends_on"][migrate_name.as_str()]["condition"],
            "service_completed_successfully",
            "{n}: starts after `ovc migrate` succeeded"
        );
    }
    assert_eq!(
        svc(migrate_name)["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );

    // The API: published ports from its listen flags; Prometheus scrapes that port.
    let (n, s, api) = &ovc["serve"];
    let http = listen_port(n, &api.setting("http").expect("--http"));
    let grpc = listen_port(n, &api.setting("grpc").expect("--grpc"));
    let published: Vec<String> = serde_json::from_value(s["ports"].clone()).expect("ports");
    for port in [http, grpc] {
        assert!(
            published.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{n}: port {port} is not published: {published:?}"
        );
    }
    let prometheus = yaml("ops/compose/prometheus.yml");
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(
        targets,
        &json!([format!("{n}:{http}")]),
        "prometheus scrapes the API"
    );
    assert_eq!(prometheus["scrape_configs"][0]["metrics_path"], "/metrics");

    // The workers: two, snapshots on MinIO's bucket with MinIO's credentials.
    let (n, s, worker) = &ovc["worker"];
    assert_eq!(s["deploy"]["replicas"], 2, "{n}: two replicas");
    let artifacts = worker.setting("artifacts").expect("OVC_ARTIFACTS");
    ovc_snapshots::OpendalArtifacts::from_url(&artifacts)
        .unwrap_or_else(|e| panic!("{n}: OVC_ARTIFACTS={artifacts} is refused: {e}"));
    let endpoint = query_param(&artifacts, "endpoint").expect("an endpoint= for MinIO");
    assert_eq!(
        url_host_port(&endpoint),
        ("minio".to_string(), Some(9000)),
        "{n}: endpoint"
    );
    let bucket = url_host_port(&artifacts).0;
    let init = svc("minio-init")["command"].to_string();
    assert!(
        init.contains(&format!("local/{bucket}")),
        "minio-init must create bucket {bucket}: {init}"
    );
    assert_eq!(
        s["depends_on"]["minio-init"]["condition"], "service_completed_successfully",
        "{n}: starts after the bucket exists"
    );
    let minio = compose_env(svc("minio"));
    assert_eq!(
        worker.env.get("AWS_ACCESS_KEY_ID"),
        minio.get("MINIO_ROOT_USER"),
        "{n}"
    );
    assert_eq!(
        worker.env.get("AWS_SECRET_ACCESS_KEY"),
        minio.get("MINIO_ROOT_PASSWORD"),
        "{n}"
    );

    // Traces: OTLP/gRPC to the collector's receiver, the collector to Jaeger.
    let collector = yaml("ops/compose/otel-collector.yaml");
    let grpc_receiver = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .expect("the collector's OTLP/gRPC receiver");
    let receiver_port = url_host_port(grpc_receiver).1;
    for command in ["serve", "worker"] {
        let (n, _, p) = &ovc[command];
        let endpoint = p
            .env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| panic!("{n}: no OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert_eq!(
            url_host_port(endpoint),
            ("otel-collector".to_string(), receiver_port),
            "{n}: OTEL_EXPORTER_OTLP_ENDPOINT"
        );
    }
    let exporters = collector["service"]["pipelines"]["traces"]["exporters"]
        .as_array()
        .expect("trace exporters");
    assert!(
        exporters.iter().any(|e| {
            let e = e.as_str().unwrap_or_default();
            url_host_port(
                collector["exporters"][e]["endpoint"]
                    .as_str()
                    .unwrap_or_default(),
            )
            .0 == "jaeger"
        }),
        "the collector exports traces to jaeger"
    );
    assert_eq!(
        compose_env(svc("jaeger"))
            .get("COLLECTOR_OTLP_ENABLED")
            .map(String::as_str),
        Some("true")
    );

    // The mounted files exist.
    for (n, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let src = v
                .as_str()
                .and_then(|v| v.split(':').next())
                .unwrap_or_default();
            if src.starts_with("./") {
                assert!(
                    repo().join("ops").join(src).is_file(),
                    "{n}: mounts {src}, which is missing"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// RBAC against the kube driver's calls

mod rbac {
    use super::*;
    use async_trait::async_trait;
    use ovc_driver::conformance::{ConformanceHost, ObjectShelf, run_all};
    use ovc_driver::kube::KubeHost;
    use ovc_driver::kube::fake::{FakeCluster, install_stand_in_helm};
    use ovc_driver::{HostDriver, Target};
    use ovc_types::ObjectLocation;

    struct Fake {
        fake: FakeCluster,
        host: KubeHost,
    }

    #[async_trait]
    impl ConformanceHost for Fake {
        fn driver(&self) -> &dyn HostDriver {
            &self.host
        }
        fn target(&self, name: &str) -> Target {
            Target {
                host: "default".into(),
                namespace: format!("ovc-rbac-{name}"),
                release: name.into(),
            }
        }
        async fn settle(&self) {
            self.fake.settle();
        }
        async fn create_foreign_namespace(&self, t: &Target) -> bool {
            self.fake.insert(
                "/api/v1/namespaces",
                json!({"metadata": {"name": t.namespace}}),
            );
            true
        }
        fn patience(&self) -> u32 {
            5
        }
        fn snapshot_storage(&self, name: &str) -> Option<(ObjectShelf, ObjectLocation)> {
            let location = ObjectLocation::S3 {
                bucket: "rbac".into(),
                key: format!("snapshots/{name}/backing-store.bin"),
                region: "us-east-1".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                path_style: true,
            };
            Some((self.fake.shelf(), location))
        }
    }

    /// `(apiGroup, resource, verb)` of a request path, or `None` for a non-resource URL.
    pub fn authorization_of(
        method: &str,
        path: &str,
        query: &BTreeMap<String, String>,
    ) -> Option<(String, String, String)> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => (String::new(), rest.to_vec()),
            ["apis", group, _version, rest @ ..] => (group.to_string(), rest.to_vec()),
            _ => return None,
        };
        let (resource, name, sub) = match rest.as_slice() {
            ["namespaces", _ns, resource, name, sub] => (*resource, Some(*name), Some(*sub)),
            ["namespaces", _ns, resource, name] => (*resource, Some(*name), None),
            ["namespaces", _ns, resource] => (*resource, None, None),
            ["namespaces", name] => ("namespaces", Some(*name), None),
            [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
            [resource, name] => (*resource, Some(*name), None),
            [resource] => (*resource, None, None),
            _ => panic!("unexpected API path {path}"),
        };
        let resource = match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let verb = match (method, name.is_some()) {
            ("GET", _) if query.get("watch").map(String::as_str) == Some("true") => "watch",
            ("GET", true) => "get",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (m, _) => panic!("unexpected method {m} on {path}"),
        };
        Some((group, resource, verb.to_string()))
    }

    pub fn allows(
        rules: &[PolicyRule],
        (group, resource, verb): &(String, String, String),
    ) -> bool {
        let any =
            |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == "*" || x == v);
        rules.iter().any(|r| {
            any(&r.api_groups, group)
                && any(&r.resources, resource)
                && r.verbs.iter().any(|x| x == "*" || x == verb)
        })
    }

    /// The resources of the ClusterRole that only helm uses (the chart's own objects,
    /// installed with ovc's credentials): not called by the driver itself.
    const HELM_ONLY: [&str; 7] = [
        "services",
        "serviceaccounts",
        "limitranges",
        "roles",
        "rolebindings",
        "clusterroles",
        "clusterrolebindings",
    ];

    /// The kube driver's conformance suite on the fake API server: every request it makes
    /// is allowed by the ClusterRole, and every resource the ClusterRole names is one the
    /// driver calls or one helm needs for the chart.
    #[tokio::test]
    async fn the_cluster_role_allows_every_call_of_the_kube_driver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let helm = install_stand_in_helm(dir.path()).expect("helm");
        let fake = FakeCluster::new(dir.path());
        let host = fake.driver(&helm);
        host.check()
            .await
            .expect("check (GET /version, helm version)");
        let harness = Fake {
            fake: fake.clone(),
            host,
        };
        run_all(&harness).await;
        let rules = canonical_rules();
        let mut seen = BTreeSet::new();
        let requests = fake.requests();
        assert!(
            requests.len() > 50,
            "the suite made only {} requests",
            requests.len()
        );
        for r in requests.iter().filter(|r| !r.virtual_api) {
            let Some(auth) = authorization_of(&r.method, &r.path, &r.query) else {
                assert_eq!(
                    r.path,
                    "/version",
                    "a non-resource URL other than /version: {}",
                    r.line()
                );
                continue;
            };
            assert!(
                allows(&rules, &auth),
                "ops/rbac/ovc-host-role.yaml does not allow {auth:?}, which the driver calls: {}",
                r.line()
            );
            seen.insert((auth.0, auth.1));
        }
        eprintln!("the driver called: {seen:?}");
        for r in &rules {
            for group in r.api_groups.iter().flatten() {
                for resource in r.resources.iter().flatten() {
                    assert!(
                        seen.contains(&(group.clone(), resource.clone()))
                            || HELM_ONLY.contains(&resource.as_str()),
                        "the ClusterRole grants {group:?}/{resource}, which neither the driver nor helm needs"
                    );
                }
            }
        }
    }

    #[test]
    fn request_paths_map_to_rbac_attributes() {
        let q = BTreeMap::new();
        let a =
            |m: &str, p: &str| authorization_of(m, p, &q).map(|(g, r, v)| format!("{g}/{r}:{v}"));
        assert_eq!(
            a("GET", "/api/v1/namespaces/x").as_deref(),
            Some("/namespaces:get")
        );
        assert_eq!(
            a("POST", "/api/v1/namespaces").as_deref(),
            Some("/namespaces:create")
        );
        assert_eq!(
            a("GET", "/api/v1/namespaces/x/pods").as_deref(),
            Some("/pods:list")
        );
        assert_eq!(
            a("PATCH", "/apis/apps/v1/namespaces/x/statefulsets/y").as_deref(),
            Some("apps/statefulsets:patch")
        );
        assert_eq!(
            a("POST", "/api/v1/namespaces/x/pods/y/eviction").as_deref(),
            Some("/pods/eviction:create")
        );
        assert_eq!(a("GET", "/version"), None);
        let rules = canonical_rules();
        assert!(!allows(&rules, &("".into(), "nodes".into(), "list".into())));
        assert!(allows(
            &rules,
            &("apps".into(), "statefulsets".into(), "patch".into())
        ));
    }
}

// ---------------------------------------------------------------------------------------
// The dashboard and the alert rules against /metrics

/// Every PromQL expression of the dashboard (panels, nested rows) and the alert rules.
fn promql_expressions() -> Vec<(String, String)> {
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(expr)), true) = (m.get("expr"), m.contains_key("refId"))
                {
                    out.push(("ops/dashboards/ovc.json".into(), expr.clone()));
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: Value =
        serde_json::from_str(&read("ops/dashboards/ovc.json")).expect("dashboard JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    let alerts = yaml("ops/dashboards/ovc-alerts.yaml");
    for g in alerts["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            assert!(r["labels"]["severity"].is_string(), "{name}: no severity");
            assert!(
                r["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            out.push((
                format!("alert {name}"),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// The label sets of every series of a `/metrics` text, by metric name.
fn exposed_series(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, labels) = match line.find('{') {
            Some(i) => {
                let end = line.rfind('}').expect("closing brace");
                (&line[..i], &line[i + 1..end])
            }
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let mut set = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
            set.insert(
                k.trim_matches(',').to_string(),
                v.trim_end_matches('"').to_string(),
            );
        }
        out.entry(name.to_string()).or_default().push(set);
    }
    out
}

/// One label matcher of a selector: `(label, operator, value)`.
type Matcher = (String, String, String);
/// The `ovc_*` selectors of an expression with their matchers, and its grouping labels.
type Selectors = (Vec<(String, Vec<Matcher>)>, Vec<String>);

/// `(metric, [(label, op, value)])` of every `ovc_*` selector of `expr`, and the labels
/// of its `by (...)` / `without (...)` clauses.
fn selectors(expr: &str) -> Selectors {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("ovc_") {
        let start = i + off;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = expr[start..end].to_string();
        let mut matchers = Vec::new();
        if expr[end..].starts_with('{') {
            let close = end + expr[end..].find('}').expect("closing brace");
            for m in expr[end + 1..close]
                .split(',')
                .filter(|m| !m.trim().is_empty())
            {
                let op = ["=~", "!~", "!=", "="]
                    .into_iter()
                    .find(|op| m.contains(op))
                    .expect("a matcher");
                let (k, v) = m.split_once(op).expect("matcher");
                matchers.push((
                    k.trim().to_string(),
                    op.to_string(),
                    v.trim().trim_matches('"').to_string(),
                ));
            }
            end = close;
        }
        found.push((name, matchers));
        i = end.max(start + 1);
    }
    let mut grouping = Vec::new();
    for kw in ["by (", "without ("] {
        let mut rest = expr;
        while let Some(j) = rest.find(kw) {
            rest = &rest[j + kw.len()..];
            let list = &rest[..rest.find(')').expect("closing paren")];
            grouping.extend(
                list.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    (found, grouping)
}

/// The probe routes answer on a running `ovc`, and every series (with its labels and
/// state values) the dashboard and the alert rules query exists in its `/metrics`.
#[test]
fn probe_routes_and_every_dashboard_series_exist_on_a_running_ovc() {
    let data = tempfile::tempdir().expect("tempdir");
    let dev = DevServer::start(data.path(), &[], &[("OVC_SIM_READY_MS", "20")]);
    for route in [HEALTH_ROUTE, READY_ROUTE] {
        let (s, body) = dev.call("GET", route, None);
        assert_eq!(s, 200, "{route}: {body}");
    }
    // One gRPC call and one operation, so the per-method, per-kind and per-step series
    // exist.
    let grpc = dev.grpc.clone();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let channel = tonic::transport::Channel::from_shared(grpc)
                .expect("uri")
                .connect()
                .await
                .expect("connect to the gRPC API");
            ovc_api::grpc::proto::v_cluster_service_client::VClusterServiceClient::new(channel)
                .list_v_clusters(ovc_api::grpc::proto::ListVClustersRequest::default())
                .await
                .expect("ListVClusters");
        });
    let (s, op) = dev.call(
        "POST",
        "/v1/vclusters",
        Some(&json!({"name": "ops-metrics"})),
    );
    assert_eq!(s, 202, "{op}");
    assert_eq!(dev.wait(&op)["state"], "SUCCEEDED");
    let (s, body) = dev.call("GET", "/metrics", None);
    assert_eq!(s, 200);
    let exposed = exposed_series(body.as_str().expect("text"));
    for new in [
        "ovc_runs_oldest_due_age_seconds",
        "ovc_idempotency_keys_expired",
        "ovc_idempotency_purge_lag_seconds",
    ] {
        assert!(exposed.contains_key(new), "{new} is not in /metrics");
    }
    let states: BTreeSet<&str> = ovc_types::state::OperationState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(
            ovc_types::state::SnapshotState::ALL
                .iter()
                .map(|s| s.as_str()),
        )
        .collect();
    let exprs = promql_expressions();
    assert!(
        exprs.len() >= 20,
        "found only {} PromQL expressions",
        exprs.len()
    );
    let mut queried = BTreeSet::new();
    for (source, expr) in &exprs {
        let (found, grouping) = selectors(expr);
        assert!(
            !found.is_empty(),
            "{source}: {expr:?} queries no ovc series"
        );
        let mut labels_here = BTreeSet::new();
        for (name, matchers) in found {
            let series = exposed
                .get(&name)
                .unwrap_or_else(|| panic!("{source}: {name} is not in /metrics ({expr})"));
            queried.insert(name.clone());
            let label_names: BTreeSet<&String> = series.iter().flat_map(|s| s.keys()).collect();
            labels_here.extend(label_names.iter().map(|s| s.to_string()));
            for (label, op, value) in matchers {
                assert!(
                    label_names.contains(&label),
                    "{source}: {name} has no label {label} ({expr})"
                );
                if label == "state" && (op == "=" || op == "=~") {
                    for v in value.split('|') {
                        assert!(
                            states.contains(v),
                            "{source}: state {v:?} is not a state ({expr})"
                        );
                    }
                }
                if label != "state" && op == "=" {
                    assert!(
                        series.iter().any(|s| s.get(&label) == Some(&value)),
                        "{source}: no {name} series has {label}={value:?} ({expr})"
                    );
                }
            }
        }
        for g in grouping {
            assert!(
                labels_here.contains(&g),
                "{source}: groups by {g}, a label of none of its series ({expr})"
            );
        }
    }
    eprintln!("the dashboard and the alert rules query {queried:?}");
}
