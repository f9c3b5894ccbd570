//! Black-box tests of the `ovc` binary as it exists today: migrate, dev, events tail.

use ovc_store::{Commit, ExpectedVersion, NewEvent, StoreConfig, StreamAppend};
use ovc_tests::dev::DevServer;
use ovc_tests::ovc_bin;
use ovc_types::event::{Event, StreamName};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn append_steps(names: &[&str]) -> Commit {
    Commit {
        appends: vec![StreamAppend {
            stream: StreamName::new("test-cli").expect("stream"),
            expected: ExpectedVersion::Any,
            events: names
                .iter()
                .map(|n| {
                    NewEvent::new(Event::StepStarted {
                        step: n.to_string(),
                        attempt: 1,
                    })
                })
                .collect(),
        }],
        ..Commit::default()
    }
}

#[test]
fn migrate_creates_and_reuses_a_sqlite_database() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    for _ in 0..2 {
        let out = Command::new(ovc_bin())
            .args(["migrate", "--database-url", &url])
            .output()
            .expect("run ovc");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("head at position 0"), "{stdout}");
    }
    assert!(dir.path().join("a.db").exists());
}

#[test]
fn migrate_applies_to_postgres() {
    let url = ovc_testkit::postgres_url();
    let out = Command::new(ovc_bin())
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("run ovc");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn bad_database_url_is_a_clear_error() {
    let out = Command::new(ovc_bin())
        .args(["migrate", "--database-url", "mysql://x"])
        .output()
        .expect("run ovc");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported database url"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn events_tail_prints_the_log_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = ovc_store::open(&url, StoreConfig::default())
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    store
        .commit(append_steps(&["first", "second", "third"]))
        .await
        .expect("append");
    let out = Command::new(ovc_bin())
        .args(["events", "tail", "--database-url", &url, "-o", "json"])
        .output()
        .expect("run ovc");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let steps: Vec<&str> = lines
        .iter()
        .map(|e| e["data"]["step"].as_str().expect("step"))
        .collect();
    assert_eq!(steps, ["first", "second", "third"]);
    assert_eq!(lines[2]["position"], 3);
    let after = Command::new(ovc_bin())
        .args([
            "events",
            "tail",
            "--database-url",
            &url,
            "--after",
            "2",
            "-o",
            "json",
        ])
        .output()
        .expect("run ovc");
    assert_eq!(String::from_utf8_lossy(&after.stdout).lines().count(), 1);
}

#[tokio::test]
async fn dev_follows_events_committed_by_another_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut child = Command::new(ovc_bin())
        .args([
            "dev",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
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
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
                && line.contains(needle)
            {
                return true;
            }
        }
        false
    };
    assert!(wait_for("following the event log"), "ovc dev did not start");
    let url = format!("sqlite://{}", data.join("ovc.db").display());
    let store = ovc_store::open(&url, StoreConfig::default())
        .await
        .expect("open");
    store
        .commit(append_steps(&["from-another-process"]))
        .await
        .expect("append");
    let seen = wait_for("from-another-process");
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "ovc dev never printed the event");
}

/// Starts `ovc dev` on a free port with extra environment (e.g. sim faults); returns
/// the server (killed on drop) and its base URL.
fn start_dev_with(data: &std::path::Path, env: &[(&str, &str)]) -> (DevServer, String) {
    let dev = DevServer::start(data, &[], env);
    let url = dev.http.clone();
    (dev, url)
}

fn ovc_client(server: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(ovc_bin())
        .args(args)
        .args(["--server", server])
        .output()
        .expect("run ovc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn client_commands_drive_ovc_dev_with_exit_codes_scripts_can_use() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_dev, server) = start_dev_with(&dir.path().join("data"), &[]);
    let (code, out) = ovc_client(&server, &["vc", "create", "demo", "--wait", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(op["state"], "SUCCEEDED");
    let (code, out) = ovc_client(&server, &["vc", "get", "demo", "-o", "json"]);
    assert_eq!(code, 0);
    let vc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(vc["state"], "RUNNING");
    // Refused by the state machine: exit 3.
    assert_eq!(ovc_client(&server, &["vc", "resume", "demo"]).0, 3);
    assert_eq!(ovc_client(&server, &["vc", "get", "nope"]).0, 3);
    let (code, out) = ovc_client(&server, &["vc", "suspend", "demo", "--snapshot", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCEEDED"), "{out}");
    let (code, out) = ovc_client(&server, &["ops", "list", "--kind", "SUSPEND", "-o", "json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list["operations"].as_array().map(Vec::len), Some(1));
    // Unreachable server: exit 4.
    assert_eq!(ovc_client("http://127.0.0.1:1", &["vc", "list"]).0, 4);
    // `--host`: the dev host is `default`; another is refused (exit 3) and nothing is
    // created.
    let (code, out) = ovc_client(
        &server,
        &["vc", "create", "elsewhere", "--host", "north", "-o", "json"],
    );
    assert_eq!(code, 3, "{out}");
    assert_eq!(ovc_client(&server, &["vc", "get", "elsewhere"]).0, 3);
    let (code, out) = ovc_client(
        &server,
        &["vc", "create", "here", "--host", "default", "-o", "json"],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn snapshot_commands_and_bulk_retry() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_dev, server) = start_dev_with(
        &dir.path().join("data"),
        &[("OVC_SIM_FAULTS", "scale/upgrade_release:permanent")],
    );
    assert_eq!(
        ovc_client(&server, &["vc", "create", "demo", "--wait"]).0,
        0
    );
    let (code, out) = ovc_client(&server, &["vc", "snapshot", "demo", "--wait", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    let snapshot_id = op["result"]["id"].as_str().expect("id").to_string();
    let (code, out) = ovc_client(&server, &["snapshot", "list", "-o", "json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list["snapshots"][0]["id"], snapshot_id.as_str());
    let (code, out) = ovc_client(
        &server,
        &[
            "snapshot",
            "restore",
            &snapshot_id,
            "--new",
            "copy",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(ovc_client(&server, &["vc", "get", "copy"]).0, 0);
    // Upgrade: a skipped minor version is refused (exit 3, naming the next version);
    // one minor version is fine.
    let refused = Command::new(ovc_bin())
        .args(["vc", "upgrade", "copy", "--vcluster-version", "0.31.0"])
        .args(["--server", &server])
        .output()
        .expect("run ovc");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("next to 0.30"), "{stderr}");
    let (code, out) = ovc_client(
        &server,
        &[
            "vc",
            "upgrade",
            "copy",
            "--vcluster-version",
            "0.30.0",
            "--kubernetes-version",
            "1.32",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (_, out) = ovc_client(&server, &["vc", "get", "copy", "-o", "json"]);
    let copy: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(copy["spec"]["vcluster_version"], "0.30.0", "{out}");
    assert_eq!(copy["spec"]["kubernetes_version"], "1.32", "{out}");
    // A scale that fails (injected permanent fault): exit 1.
    assert_eq!(
        ovc_client(
            &server,
            &["vc", "scale", "demo", "--replicas", "3", "--wait"]
        )
        .0,
        1
    );
    // Nothing SUSPEND failed: the bulk retry has nothing to do.
    assert_eq!(
        ovc_client(
            &server,
            &["ops", "retry", "--state", "FAILED", "--kind", "SUSPEND"]
        )
        .0,
        0
    );
    // The failed SCALE is found and retried (and fails again: the fault is still there).
    let (code, _) = ovc_client(
        &server,
        &[
            "ops", "retry", "--state", "FAILED", "--kind", "SCALE", "--since", "1h", "--wait",
        ],
    );
    assert_eq!(code, 1);
    let (_, out) = ovc_client(&server, &["ops", "list", "--kind", "SCALE", "-o", "json"]);
    let ops: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ops = ops["operations"].as_array().expect("ops");
    assert_eq!(ops.len(), 2, "{ops:?}");
    // Newest first: the retry, then the operation it retried.
    assert_eq!(ops[0]["retry_of"], ops[1]["id"]);
}

/// `ovc ops watch` follows a running operation's events to the end (exit 0 on success,
/// 1 on failure); `ovc vc kubeconfig` reads the host live; `ovc events tail` over HTTP
/// prints the same log as reading the store directly.
#[test]
fn watch_kubeconfig_and_events_tail_over_http() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let (_dev, server) = start_dev_with(
        &data,
        &[
            ("OVC_SIM_READY_MS", "1500"),
            ("OVC_SIM_FAULTS", "suspend/scale_to_zero:permanent"),
        ],
    );
    let (code, out) = ovc_client(&server, &["vc", "create", "demo", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = op["id"].as_str().expect("id").to_string();
    // Not ready yet: no kubeconfig, a refusal (exit 3).
    assert_eq!(ovc_client(&server, &["vc", "kubeconfig", "demo"]).0, 3);
    let (code, out) = ovc_client(&server, &["ops", "watch", &id, "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let types: Vec<&str> = lines.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"OperationRequested"), "{types:?}");
    assert!(types.contains(&"StepStarted"), "{types:?}");
    assert!(types.contains(&"OperationSucceeded"), "{types:?}");
    let positions: Vec<u64> = lines
        .iter()
        .filter_map(|e| e["position"].as_u64())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let (code, out) = ovc_client(&server, &["vc", "kubeconfig", "demo"]);
    assert_eq!(code, 0);
    assert!(out.contains("kind: Config"), "{out}");
    // A failing operation watched to its end: exit 1.
    let (_, out) = ovc_client(&server, &["vc", "suspend", "demo", "-o", "json"]);
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    let (code, _) = ovc_client(&server, &["ops", "watch", op["id"].as_str().expect("id")]);
    assert_eq!(code, 1);
    // The log over HTTP equals the log read from the store.
    let (code, over_http) = ovc_client(&server, &["events", "tail", "-o", "json"]);
    assert_eq!(code, 0);
    let url = format!("sqlite://{}", data.join("ovc.db").display());
    let direct = Command::new(ovc_bin())
        .args(["events", "tail", "--database-url", &url, "-o", "json"])
        .output()
        .expect("tail");
    let direct = String::from_utf8_lossy(&direct.stdout).into_owned();
    let ids = |s: &str| -> Vec<u64> {
        s.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["position"].as_u64())
            .collect()
    };
    assert!(!ids(&over_http).is_empty());
    assert_eq!(ids(&over_http), ids(&direct));
}

/// The database password never appears in what `ovc` prints: errors (an unreachable or
/// unsupported URL, with the password in the userinfo or the query) and `--help`, which
/// shows the values of environment variables unless told not to.
#[test]
fn database_passwords_are_redacted_everywhere_they_are_printed() {
    const SECRET: &str = "S3cretPassw0rd";
    let urls = [
        format!("postgres://ovc:{SECRET}@127.0.0.1:1/ovc"),
        format!("postgres://127.0.0.1:1/ovc?user=ovc&password={SECRET}"),
        format!("mysql://ovc:{SECRET}@127.0.0.1/ovc"),
    ];
    // All at once: an unreachable PostgreSQL takes the store's connect timeout to fail.
    let mut runs = Vec::new();
    for url in &urls {
        for args in [
            vec!["migrate", "--database-url", url.as_str()],
            vec!["worker", "--database-url", url.as_str()],
            vec![
                "serve",
                "--database-url",
                url.as_str(),
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
            ],
            vec!["events", "tail", "--database-url", url.as_str()],
        ] {
            let child = Command::new(ovc_bin())
                .args(&args)
                .env("OVC_LOG", "debug")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run ovc");
            runs.push((format!("{args:?}"), child));
        }
    }
    for (args, child) in runs {
        let out = child.wait_with_output().expect("wait");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args}: {printed}");
        assert!(
            !printed.contains(SECRET),
            "{args} printed the password: {printed}"
        );
        assert!(
            printed.contains("***"),
            "{args}: the URL is shown redacted: {printed}"
        );
    }
    // --help shows environment values: not this one.
    for cmd in [
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["dev", "--help"],
    ] {
        let out = Command::new(ovc_bin())
            .args(&cmd)
            .env(
                "OVC_DATABASE_URL",
                format!("postgres://ovc:{SECRET}@db/ovc"),
            )
            .env("DATABASE_URL", format!("postgres://ovc:{SECRET}@db/ovc"))
            .output()
            .expect("run ovc");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("OVC_DATABASE_URL"), "{cmd:?}: {help}");
        assert!(
            !help.contains(SECRET),
            "{cmd:?} printed the password: {help}"
        );
    }
}

/// `ovc token ...` with `args` on the database `url`: (success, stdout, stderr).
fn ovc_token(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ovc_bin())
        .arg("token")
        .args(args)
        .args(["--database-url", url])
        .output()
        .expect("run ovc token");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn tokens_default_to_viewer_list_without_secrets_expire_and_revoke() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("ovc.db").display());
    let out = Command::new(ovc_bin())
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{out:?}");

    // Least privilege unless told; an expiry in humane units.
    let (ok, viewer, err) = ovc_token(&url, &["create", "--project", "alpha"]);
    assert!(ok, "{err}");
    assert!(err.contains("(viewer, never expires)"), "{err}");
    let (ok, admin, err) = ovc_token(
        &url,
        &[
            "create",
            "--project",
            "alpha",
            "--role",
            "admin",
            "--expires-in",
            "30d",
        ],
    );
    assert!(ok, "{err}");
    for bad in ["0s", "30", "30x", "-1d", "99999999999999999d"] {
        let flag = format!("--expires-in={bad}");
        let (ok, _, err) = ovc_token(&url, &["create", "--project", "alpha", &flag]);
        assert!(!ok, "--expires-in {bad} was accepted");
        assert!(err.contains("--expires-in"), "{bad}: {err}");
    }

    let (ok, json, err) = ovc_token(&url, &["list", "-o", "json"]);
    assert!(ok, "{err}");
    let tokens: serde_json::Value = serde_json::from_str(&json).expect("json");
    let tokens = tokens.as_array().expect("array");
    assert_eq!(tokens.len(), 2, "{json}");
    assert_eq!(tokens[0]["role"], "viewer");
    assert_eq!(tokens[0]["expires_at"], serde_json::Value::Null);
    assert_eq!(tokens[0]["revoked_at"], serde_json::Value::Null);
    assert_eq!(tokens[1]["role"], "admin");
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(tokens[1]["expires_at"].clone()).expect("expires_at");
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.0).contains(&days), "expires in {days} days");
    let (ok, table, _) = ovc_token(&url, &["list", "--project", "alpha"]);
    assert!(ok);
    for secret in [&viewer, &admin] {
        let hash = ovc_api::auth::token_sha256(secret);
        for listing in [&json, &table] {
            assert!(
                !listing.contains(secret.as_str()) && !listing.contains(&hash),
                "{listing}"
            );
        }
    }
    let (ok, table, _) = ovc_token(&url, &["list", "--project", "beta"]);
    assert!(ok);
    assert_eq!(table.lines().count(), 1, "only the header: {table}");

    // A served token works until it is revoked.
    let server = DevServer::serve(&["--database-url", &url, "--auth", "token"]);
    let get = |token: &str| {
        ovc_tests::dev::http(
            "GET",
            &format!("{}/v1/vclusters", server.http),
            None,
            &[("authorization", &format!("bearer {token}"))],
        )
    };
    assert_eq!(get(&viewer).0, 200);
    let id = tokens[0]["id"].as_str().expect("id");
    let (ok, out, err) = ovc_token(&url, &["revoke", id]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (status, body) = get(&viewer);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(get(&admin).0, 200);
    let (ok, json, _) = ovc_token(&url, &["list", "-o", "json"]);
    assert!(ok);
    assert!(json.contains("\"revoked_at\": \"20"), "{json}");
    let (ok, _, err) = ovc_token(&url, &["revoke", "0190b6f0-0000-7000-8000-000000000000"]);
    assert!(!ok);
    assert!(err.contains("no token"), "{err}");
}

/// One raw HTTP/1.1 request to `addr`; the status code.
fn raw_status(addr: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"))
}

/// The attacks of issue 8 item 3 against a running `ovc dev`: a cross-site `text/plain`
/// POST, and DNS rebinding (a foreign Host).
#[test]
fn ovc_dev_refuses_browser_attacks() {
    let dir = tempfile::tempdir().expect("tmp");
    let dev = DevServer::start(dir.path(), &[], &[]);
    let addr = dev.rest_addr().to_string();
    let body = r#"{"name":"x"}"#;
    let post = |host: &str, extra: &str| {
        format!(
            "POST /v1/vclusters HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    assert_eq!(
        raw_status(
            &addr,
            &post(
                &addr,
                "content-type: text/plain\r\norigin: https://evil.example\r\n"
            )
        ),
        403
    );
    assert_eq!(
        raw_status(&addr, &post(&addr, "content-type: text/plain\r\n")),
        415
    );
    assert_eq!(
        raw_status(
            &addr,
            &post("evil.example:8080", "content-type: application/json\r\n")
        ),
        403
    );
    let get = "GET /v1/vclusters HTTP/1.1\r\nhost: rebound.example\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_status(&addr, get), 403);
    let (status, list) = dev.call("GET", "/v1/vclusters", None);
    assert_eq!(status, 200);
    assert_eq!(
        list["vclusters"],
        serde_json::json!([]),
        "nothing was created"
    );
}

/// `--host kube` without a usable kubeconfig: `ovc worker`, `ovc serve` and `ovc dev` exit
/// at start with a message naming KUBECONFIG (no cluster, no panic, no half start).
#[test]
fn host_kube_without_a_usable_kubeconfig_exits_at_start_naming_kubeconfig() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let unreachable = dir.path().join("unreachable.yaml");
    std::fs::write(
        &unreachable,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .expect("kubeconfig");
    let missing = dir.path().join("missing.yaml");
    let data = dir.path().join("dev");
    let data = data.display().to_string();
    let runs: Vec<(Vec<&str>, &std::path::Path)> = vec![
        (
            vec!["worker", "--database-url", &url, "--host", "kube"],
            &missing,
        ),
        (
            vec!["worker", "--database-url", &url, "--host", "kube"],
            &unreachable,
        ),
        (
            vec![
                "serve",
                "--database-url",
                &url,
                "--host",
                "kube",
                "--auth",
                "none",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
            ],
            &missing,
        ),
        (
            vec![
                "dev",
                "--data-dir",
                &data,
                "--host",
                "kube",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
            ],
            &missing,
        ),
    ];
    for (args, kubeconfig) in runs {
        let out = Command::new(ovc_bin())
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", dir.path())
            .env("OVC_HELM", "/nonexistent/helm")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .output()
            .expect("run ovc");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must exit: {stderr}");
        assert!(stderr.contains("KUBECONFIG"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `--kube-host NAME=CONTEXT`: a malformed flag, a NAME given twice, `--kube-host` without
/// `--host kube`, a context the kubeconfig does not have and an unreachable named host
/// all exit at start with a message saying which.
#[test]
fn kube_host_flags_that_cannot_be_honoured_exit_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: east\n  context:\n    cluster: c\n    user: u\n- name: west\n  context:\n    cluster: c\n    user: u\ncurrent-context: east\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .expect("kubeconfig");
    let worker = |extra: &[&str]| {
        let mut a = vec!["worker", "--database-url", url.as_str()];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let serve = |extra: &[&str]| {
        let mut a = vec![
            "serve",
            "--database-url",
            url.as_str(),
            "--auth",
            "none",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            worker(&["--host", "kube", "--kube-host", "east"]),
            vec!["NAME=CONTEXT"],
        ),
        (
            worker(&["--host", "kube", "--kube-host", "East=east"]),
            vec!["uppercase"],
        ),
        (
            worker(&[
                "--host",
                "kube",
                "--kube-host",
                "a=east",
                "--kube-host",
                "a=west",
            ]),
            vec!["\"a\" is given twice"],
        ),
        (
            serve(&["--host", "sim", "--kube-host", "a=east"]),
            vec!["--host kube"],
        ),
        (
            worker(&["--host", "kube", "--kube-host", "a=east,b=north"]),
            vec!["no context \"north\"", "KUBECONFIG", "east, west"],
        ),
        (
            serve(&["--host", "kube", "--kube-host", "a=west"]),
            vec!["--kube-host a=west", "not usable"],
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(ovc_bin())
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .env("OVC_HELM", "/nonexistent/helm")
            .env_remove("OVC_KUBE_HOSTS")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .output()
            .expect("run ovc");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must exit: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{args:?}: wanted {s:?} in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The subcommands of the registered operations are generated from the registry: each
/// with its workflow's flags and help, and the shared NAME, `--wait` and `--request-id`;
/// refused input the CLI cannot send (a bad quantity) is exit 3 before any request.
#[test]
fn operation_subcommands_come_from_the_registry() {
    let help = |args: &[&str]| {
        let out = Command::new(ovc_bin())
            .args(args)
            .output()
            .expect("run ovc");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let vc = help(&["vc", "--help"]);
    for verb in [
        "suspend", "resume", "snapshot", "scale", "upgrade", "create", "delete",
    ] {
        assert!(vc.contains(verb), "ovc vc --help lacks {verb}: {vc}");
    }
    let upgrade = help(&["vc", "upgrade", "--help"]);
    for flag in [
        "--vcluster-version",
        "--kubernetes-version",
        "--wait",
        "--request-id",
        "<NAME>",
        "one minor",
    ] {
        assert!(upgrade.contains(flag), "lacks {flag}: {upgrade}");
    }
    let scale = help(&["vc", "scale", "--help"]);
    assert!(
        scale.contains("--quota-pods") && scale.contains("e.g. 500m"),
        "{scale}"
    );
    let (code, _) = ovc_client(
        "http://127.0.0.1:1",
        &["vc", "scale", "demo", "--cpu", "lots"],
    );
    assert_eq!(code, 3, "a bad quantity is refused before any request");
    let (code, _) = ovc_client("http://127.0.0.1:1", &["vc", "explode", "demo"]);
    assert_eq!(code, 2, "an unknown subcommand is a usage error");
}
