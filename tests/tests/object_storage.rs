//! The whole SNAPSHOT → RESTORE lifecycle through the REST API of `ovc dev --artifacts
//! s3://...` against a real S3 server on loopback (moto, started by
//! `scripts/storage-servers.sh`; unreachable → the test fails, it is never skipped).
//! The artifact is checked in the bucket itself; a corrupted artifact makes the restore
//! fail naming the file with the target untouched; deleting the snapshot removes the
//! artifact; the credentials appear nowhere in what ovc printed, logged or serves.

use ovc_snapshots::{ArtifactStore, OpendalArtifacts};
use ovc_tests::dev::DevServer;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const SECRET: &str = "lifecycle-S3cret-Must-Not-Leak";

fn s3_endpoint() -> String {
    let endpoint = std::env::var("OVC_TEST_S3_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:39100".to_string());
    let addr = endpoint.trim_start_matches("http://").parse().unwrap();
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!(
            "the S3 server (moto) is not reachable at {endpoint} ({e}): start it with \
             `eval \"$(bash scripts/storage-servers.sh)\"`"
        );
    }
    endpoint
}

fn done(dev: &DevServer, (status, op): (u16, Value)) -> Value {
    assert_eq!(status, 202, "{op}");
    dev.wait(&op)
}

#[test]
fn snapshot_and_restore_through_ovc_dev_on_s3() {
    let endpoint = s3_endpoint();
    let bucket = std::env::var("OVC_TEST_BUCKET").unwrap_or_else(|_| "ovc-test".into());
    let prefix = format!("lifecycle-{}-{}", std::process::id(), uuid::Uuid::new_v4());
    let url = format!("s3://{bucket}/{prefix}");
    let env = [
        ("AWS_ACCESS_KEY_ID", "lifecycle-key-id"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("OVC_SIM_READY_MS", "100"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let dev =
        DevServer::start_logging_to(&dir.path().join("data"), &["--artifacts", &url], &env, &log);
    // The test's own view of the bucket.
    let bucket_env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let store = OpendalArtifacts::from_url_with_env(&url, &bucket_env).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let op = done(
        &dev,
        dev.call("POST", "/v1/vclusters", Some(&json!({"name": "team-a"}))),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let op = done(
        &dev,
        dev.call(
            "POST",
            "/v1/vclusters/team-a/snapshots",
            Some(&json!({"description": "to s3"})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let id = op["result"]["id"].as_str().unwrap().to_string();
    let (s, snap) = dev.call("GET", &format!("/v1/snapshots/{id}"), None);
    assert_eq!((s, snap["state"].as_str()), (200, Some("READY")), "{snap}");
    let artifact = format!("snapshots/default/team-a/{id}/");
    assert_eq!(
        snap["location"],
        json!(format!("{url}/{artifact}")),
        "{snap}"
    );
    let keys = rt.block_on(store.list(&artifact)).unwrap();
    assert_eq!(
        keys,
        vec![
            format!("{artifact}backing-store.bin"),
            format!("{artifact}manifest.json"),
            format!("{artifact}objects.ndjson")
        ]
    );

    // Restore over the existing vcluster, and as a new one.
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/snapshots/{id}/restore"),
            Some(&json!({"target": {"existing": "team-a"}})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/snapshots/{id}/restore"),
            Some(&json!({"target": {"new_name": "copy"}})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");

    // A corrupted artifact: the restore fails naming the file, the target is untouched.
    let (_, before) = dev.call("GET", "/v1/vclusters/team-a", None);
    let data_key = format!("{artifact}backing-store.bin");
    let good = rt.block_on(store.get(&data_key)).unwrap().unwrap();
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    rt.block_on(store.put(&data_key, bad)).unwrap();
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/snapshots/{id}/restore"),
            Some(&json!({"target": {"existing": "team-a"}})),
        ),
    );
    assert_eq!(op["state"], "FAILED", "{op}");
    let error = op["error"].to_string();
    assert!(error.contains("backing-store.bin"), "{op}");
    assert!(error.contains("FAILED_PRECONDITION"), "{op}");
    let (_, after) = dev.call("GET", "/v1/vclusters/team-a", None);
    assert_eq!(after["state"], "RUNNING", "{after}");
    assert_eq!(after["spec"], before["spec"], "{after}");

    // Deleting the snapshot removes its artifact from the bucket.
    rt.block_on(store.put(&data_key, good)).unwrap();
    let op = done(
        &dev,
        dev.call("DELETE", &format!("/v1/snapshots/{id}"), None),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    assert_eq!(
        rt.block_on(store.list(&artifact)).unwrap(),
        Vec::<String>::new()
    );

    // The secret shows nowhere: events, operations, snapshots, metrics, logs, banner.
    let mut seen = String::new();
    for path in [
        "/v1/events?after=0&limit=1000",
        "/v1/operations?limit=100",
        "/v1/snapshots",
        "/metrics",
    ] {
        let (_, body) = dev.call("GET", path, None);
        seen.push_str(&body.to_string());
    }
    drop(dev);
    seen.push_str(&std::fs::read_to_string(&log).unwrap());
    assert!(seen.contains("team-a"), "nothing was collected");
    assert!(!seen.contains(SECRET), "the secret leaked");
    assert!(!seen.contains("lifecycle-key-id"), "the key id leaked");
}
