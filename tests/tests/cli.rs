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
    assert_eq!(ops[1]["retry_of"], ops[0]["id"]);
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
