//! Black-box tests of API.md over REST against the built `ovc dev` binary: the full
//! lifecycle, and every invalid transition of the seed answered FAILED_PRECONDITION
//! from each state the lifecycle passes through (RUNNING, SUSPENDED, an operation in
//! progress, FAILED, DELETED).

use ovc_tests::dev::DevServer;
use serde_json::{Value, json};

fn refused(dev: &DevServer, method: &str, path: &str, body: Value, status: u16, name: &str) {
    let (s, b) = dev.call(method, path, Some(&body));
    assert_eq!(s, status, "{method} {path}: {b}");
    assert_eq!(b["error"]["status"], name, "{method} {path}: {b}");
}

/// The calls API.md allows from some state, as (method, path, body).
fn calls(name: &str, snapshot: &str) -> Vec<(&'static str, String, Value)> {
    vec![
        ("POST", format!("/v1/vclusters/{name}/suspend"), json!({})),
        ("POST", format!("/v1/vclusters/{name}/resume"), json!({})),
        ("POST", format!("/v1/vclusters/{name}/snapshots"), json!({})),
        (
            "POST",
            format!("/v1/vclusters/{name}/scale"),
            json!({"quota": {"pods": 77}}),
        ),
        (
            "POST",
            format!("/v1/snapshots/{snapshot}/restore"),
            json!({"target": {"existing": name}}),
        ),
        ("DELETE", format!("/v1/vclusters/{name}"), Value::Null),
    ]
}

/// Every call not in `allowed` (by path suffix) is FAILED_PRECONDITION from here.
fn only_allowed(dev: &DevServer, name: &str, snapshot: &str, allowed: &[&str]) {
    for (method, path, body) in calls(name, snapshot) {
        let key = if method == "DELETE" {
            "delete"
        } else if path.ends_with("/restore") {
            "restore"
        } else {
            path.rsplit('/').next().unwrap_or_default()
        };
        if allowed.contains(&key) {
            continue;
        }
        refused(dev, method, &path, body, 400, "FAILED_PRECONDITION");
    }
}

fn accepted(dev: &DevServer, method: &str, path: &str, body: Value) -> Value {
    let (s, op) = dev.call(method, path, Some(&body));
    assert_eq!(s, 202, "{method} {path}: {op}");
    let done = dev.wait(&op);
    assert_eq!(done["state"], "SUCCEEDED", "{method} {path}: {done}");
    done
}

fn state(dev: &DevServer, name: &str) -> String {
    let (s, vc) = dev.call("GET", &format!("/v1/vclusters/{name}"), None);
    assert_eq!(s, 200, "{vc}");
    vc["state"].as_str().expect("state").to_string()
}

#[test]
fn lifecycle_of_api_md_over_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    // Control planes take 600 ms to become ready, so operations are seen in progress.
    let dev = DevServer::start(
        &dir.path().join("data"),
        &[],
        &[("OVC_SIM_READY_MS", "600")],
    );

    let op = accepted(
        &dev,
        "POST",
        "/v1/vclusters",
        json!({"name": "team-a", "spec": {"labels": {"env": "dev"}}}),
    );
    assert_eq!(op["kind"], "CREATE");
    assert_eq!(state(&dev, "team-a"), "RUNNING");
    // RUNNING allows suspend, scale, snapshot, restore (overwrite), delete.
    let nil = "00000000-0000-0000-0000-000000000000";
    only_allowed(
        &dev,
        "team-a",
        nil,
        &["suspend", "scale", "snapshots", "restore", "delete"],
    );
    refused(
        &dev,
        "POST",
        "/v1/vclusters",
        json!({"name": "team-a"}),
        409,
        "ALREADY_EXISTS",
    );

    let op = accepted(
        &dev,
        "POST",
        "/v1/vclusters/team-a/suspend",
        json!({"snapshot": true, "evict_workloads": true}),
    );
    let steps: Vec<&str> = op["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["state"] == "SUCCEEDED")
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        steps.contains(&"snapshot") && steps.contains(&"evict_workloads"),
        "{steps:?}"
    );
    assert_eq!(state(&dev, "team-a"), "SUSPENDED");
    // SUSPENDED allows resume, restore (overwrite), delete.
    only_allowed(&dev, "team-a", nil, &["resume", "restore", "delete"]);

    // Resume, and while it runs (RESUMING) nothing else is allowed.
    let (s, resume) = dev.call("POST", "/v1/vclusters/team-a/resume", Some(&json!({})));
    assert_eq!(s, 202, "{resume}");
    assert_eq!(state(&dev, "team-a"), "RESUMING");
    only_allowed(&dev, "team-a", nil, &[]);
    assert_eq!(dev.wait(&resume)["state"], "SUCCEEDED");
    assert_eq!(state(&dev, "team-a"), "RUNNING");

    let op = accepted(
        &dev,
        "POST",
        "/v1/vclusters/team-a/snapshots",
        json!({"description": "before scale"}),
    );
    let snapshot = op["result"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot in {op}"))
        .to_string();
    let (s, snap) = dev.call("GET", &format!("/v1/snapshots/{snapshot}"), None);
    assert_eq!(s, 200, "{snap}");
    assert_eq!(snap["state"], "READY");
    assert_eq!(snap["vcluster"], "team-a");

    accepted(
        &dev,
        "POST",
        "/v1/vclusters/team-a/scale",
        json!({"control_plane": {"replicas": 3}, "quota": {"cpu": "8"}}),
    );
    let (_, vc) = dev.call("GET", "/v1/vclusters/team-a", None);
    assert_eq!(vc["spec"]["control_plane"]["replicas"], 3);
    assert_eq!(vc["spec"]["quota"]["cpu"], "8");
    assert_eq!(vc["spec"]["labels"]["env"], "dev");

    // Restore as new: a second vcluster with the snapshot's spec (replicas 1).
    accepted(
        &dev,
        "POST",
        &format!("/v1/snapshots/{snapshot}/restore"),
        json!({"target": {"new_name": "team-b"}}),
    );
    let (_, b) = dev.call("GET", "/v1/vclusters/team-b", None);
    assert_eq!(b["state"], "RUNNING");
    assert_eq!(b["spec"]["control_plane"]["replicas"], 1);
    // Restore over the existing team-a.
    accepted(
        &dev,
        "POST",
        &format!("/v1/snapshots/{snapshot}/restore"),
        json!({"target": {"existing": "team-a"}}),
    );
    assert_eq!(state(&dev, "team-a"), "RUNNING");
    // Restore as new onto a taken name.
    refused(
        &dev,
        "POST",
        &format!("/v1/snapshots/{snapshot}/restore"),
        json!({"target": {"new_name": "team-b"}}),
        409,
        "ALREADY_EXISTS",
    );

    // Delete the snapshot: its own operation; team-a stays RUNNING.
    let op = accepted(
        &dev,
        "DELETE",
        &format!("/v1/snapshots/{snapshot}"),
        Value::Null,
    );
    assert_eq!(op["kind"], "DELETE_SNAPSHOT");
    assert_eq!(state(&dev, "team-a"), "RUNNING");
    let (_, snap) = dev.call("GET", &format!("/v1/snapshots/{snapshot}"), None);
    assert_eq!(snap["state"], "DELETED", "{snap}");
    refused(
        &dev,
        "POST",
        &format!("/v1/snapshots/{snapshot}/restore"),
        json!({"target": {"new_name": "team-c"}}),
        400,
        "FAILED_PRECONDITION",
    );
    refused(
        &dev,
        "DELETE",
        &format!("/v1/snapshots/{snapshot}"),
        Value::Null,
        400,
        "FAILED_PRECONDITION",
    );

    accepted(&dev, "DELETE", "/v1/vclusters/team-a", Value::Null);
    assert_eq!(state(&dev, "team-a"), "DELETED");
    // A deleted vcluster takes no calls; its name is free again.
    for (method, path, body) in calls("team-a", &snapshot) {
        let (s, b) = dev.call(method, &path, Some(&body));
        assert!(
            (s == 404 && b["error"]["status"] == "NOT_FOUND")
                || (s == 400 && b["error"]["status"] == "FAILED_PRECONDITION"),
            "{method} {path}: {s} {b}"
        );
    }
    accepted(&dev, "POST", "/v1/vclusters", json!({"name": "team-a"}));
    // The whole story is in the operations list.
    let (_, ops) = dev.call("GET", "/v1/operations?vcluster=team-a&page_size=100", None);
    let kinds: Vec<&str> = ops["operations"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for k in [
        "CREATE", "SUSPEND", "RESUME", "SNAPSHOT", "SCALE", "RESTORE", "DELETE",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}

/// An undo that fails for good leaves the operation STUCK and the vcluster FAILED: only
/// delete and operation retry are allowed.
#[test]
fn failed_vcluster_allows_only_delete_and_retry() {
    let dir = tempfile::tempdir().expect("tmp");
    let dev = DevServer::start(
        &dir.path().join("data"),
        &[],
        &[(
            "OVC_SIM_FAULTS",
            "scale/wait_ready:permanent;scale/undo:upgrade_release:permanent",
        )],
    );
    accepted(&dev, "POST", "/v1/vclusters", json!({"name": "f"}));
    let (s, op) = dev.call(
        "POST",
        "/v1/vclusters/f/scale",
        Some(&json!({"quota": {"pods": 60}})),
    );
    assert_eq!(s, 202, "{op}");
    let done = dev.wait(&op);
    // The undo failed for good: the operation is STUCK with the whole story in its steps.
    assert_eq!(done["state"], "STUCK", "{done}");
    assert_eq!(state(&dev, "f"), "FAILED");
    let nil = "00000000-0000-0000-0000-000000000000";
    only_allowed(&dev, "f", nil, &["delete"]);
    // Retry is allowed (it fails again: the fault is still injected) ...
    let id = op["id"].as_str().expect("id");
    let (s, retry) = dev.call(
        "POST",
        &format!("/v1/operations/{id}/retry"),
        Some(&json!({})),
    );
    assert_eq!(s, 202, "{retry}");
    assert_eq!(retry["retry_of"], op["id"]);
    dev.wait(&retry);
    // ... and delete always is.
    let (s, del) = dev.call("DELETE", "/v1/vclusters/f", None);
    assert_eq!(s, 202, "{del}");
}
