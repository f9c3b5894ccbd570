//! The simulated host keeping a vcluster's backing store in a real etcd (`ovc dev
//! --sim-etcd`, Debian's etcd-server started by `scripts/storage-servers.sh`;
//! unreachable → the test fails, it is never skipped), end to end through the REST API
//! of a spawned `ovc dev`: keys put, SNAPSHOT (dumped through `EtcdBackingStore`, the
//! revision in the manifest equal to the dump's own), keys changed and wiped, RESTORE
//! over it and into a new vcluster, every key and value compared. Then the per-object
//! export of that snapshot through the CLI (`ovc snapshot objects` / `object`), and a
//! damaged or missing `objects.ndjson` making the object read fail naming the file.

use etcd_client::{Client, GetOptions};
use ovc_tests::dev::DevServer;
use ovc_tests::ovc_bin;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn endpoint() -> String {
    let endpoint = std::env::var("OVC_TEST_ETCD_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:39103".to_string());
    let addr = endpoint.trim_start_matches("http://").parse().unwrap();
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!(
            "etcd is not reachable at {endpoint} ({e}): start it with \
             `eval \"$(bash scripts/storage-servers.sh)\"`"
        );
    }
    endpoint
}

fn done(dev: &DevServer, (status, op): (u16, Value)) -> Value {
    assert_eq!(status, 202, "{op}");
    dev.wait(&op)
}

/// Every key under `prefix` (relative to it) and its value, at `revision` or now.
async fn keys(
    client: &mut Client,
    prefix: &str,
    revision: Option<i64>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut options = GetOptions::new().with_prefix();
    if let Some(r) = revision {
        options = options.with_revision(r);
    }
    let resp = client.get(prefix, Some(options)).await.expect("get");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key()[prefix.len()..].to_vec(), kv.value().to_vec()))
        .collect()
}

fn host_prefix(dev: &DevServer, name: &str) -> String {
    let (s, vc) = dev.call("GET", &format!("/v1/vclusters/{name}"), None);
    assert_eq!(s, 200, "{vc}");
    let ns = vc["host_namespace"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            let uid: ovc_types::VClusterId =
                serde_json::from_value(vc["uid"].clone()).expect("uid");
            ovc_types::resource::host_namespace(&name.parse().unwrap(), uid)
        });
    format!("/ovc-sim/{ns}/{name}/")
}

/// `ovc snapshot ARGS --artifacts DIR`: (exit code, stdout, stderr).
fn cli(artifacts: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ovc_bin())
        .arg("snapshot")
        .args(args)
        .arg("--artifacts")
        .arg(artifacts)
        .env_remove("OVC_ARTIFACTS")
        .output()
        .expect("run ovc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Kubernetes protobuf value: `k8s\0` + runtime.Unknown{TypeMeta{v1, Pod}, raw}.
fn protobuf_pod() -> Vec<u8> {
    let type_meta = [&[0x0a, 2][..], b"v1", &[0x12, 3], b"Pod"].concat();
    let unknown = [
        &[0x0a, type_meta.len() as u8][..],
        &type_meta,
        &[0x12, 4],
        b"\x08\x01\x10\x02",
    ]
    .concat();
    [&b"k8s\0"[..], &unknown].concat()
}

fn config_map(ns: &str, name: &str, i: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": format!("{}", 100 + i),
                        "uid": format!("uid-{i}"), "labels": {"i": i.to_string()}},
           "data": {"value": format!("v-{i}")}})
}

#[test]
fn an_etcd_backing_store_round_trips_through_snapshot_and_restore_of_ovc_dev() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("snapshots");
    let dev = DevServer::start(
        &dir.path().join("data"),
        &[
            "--sim-etcd",
            &endpoint,
            "--artifacts",
            artifacts.to_str().unwrap(),
        ],
        &[("OVC_SIM_READY_MS", "100")],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = rt
        .block_on(Client::connect([endpoint.as_str()], None))
        .expect("connect to etcd");
    // A name of its own, so parallel or repeated runs never share a prefix.
    let name = format!("e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    let op = done(
        &dev,
        dev.call("POST", "/v1/vclusters", Some(&json!({"name": name}))),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let prefix = host_prefix(&dev, &name);
    // The control plane's first start wrote its objects into etcd.
    let first = rt.block_on(keys(&mut etcd, &prefix, None));
    for key in [
        "registry/namespaces/default",
        "registry/namespaces/kube-system",
        "registry/serviceaccounts/default/default",
        "registry/configmaps/default/kube-root-ca.crt",
    ] {
        assert!(
            first.contains_key(key.as_bytes()),
            "{key} missing: {:?}",
            first.keys()
        );
    }

    // The tenant's data: 300 ConfigMaps (more than a page of the dump), a custom
    // resource under its group, a protobuf-stored Pod, and a key that is no object.
    let mut last_put = 0;
    rt.block_on(async {
        for i in 0..300u32 {
            let cm = config_map("team", &format!("cm-{i:03}"), i);
            let r = etcd
                .put(
                    format!("{prefix}registry/configmaps/team/cm-{i:03}"),
                    cm.to_string(),
                    None,
                )
                .await
                .expect("put");
            last_put = r.header().unwrap().revision();
        }
        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                            "metadata": {"name": "w1", "namespace": "team"}, "spec": {"size": 3}});
        etcd.put(
            format!("{prefix}registry/example.com/widgets/team/w1"),
            widget.to_string(),
            None,
        )
        .await
        .expect("put");
        etcd.put(
            format!("{prefix}registry/pods/default/web"),
            protobuf_pod(),
            None,
        )
        .await
        .expect("put");
        let r = etcd
            .put(format!("{prefix}compact_rev_key"), vec![0u8, 0xff, 7], None)
            .await
            .expect("put");
        last_put = r.header().unwrap().revision();
    });
    let before = rt.block_on(keys(&mut etcd, &prefix, None));
    assert_eq!(before.len(), first.len() + 303);

    // SNAPSHOT.
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/vclusters/{name}/snapshots"),
            Some(&json!({})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let id = op["result"]["id"].as_str().unwrap().to_string();
    let artifact = artifacts.join(format!("snapshots/default/{name}/{id}"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(artifact.join("manifest.json")).unwrap()).unwrap();
    let data = std::fs::read(artifact.join("backing-store.bin")).unwrap();
    assert_eq!(&data[..8], b"OVCETCD2");
    let dumped_at = i64::from_be_bytes(data[8..16].try_into().unwrap());
    assert_eq!(manifest["backing_store"]["kind"], "etcd", "{manifest}");
    assert_eq!(
        manifest["backing_store"]["revision"], dumped_at,
        "{manifest}"
    );
    assert_eq!(
        manifest["backing_store"]["keys"],
        before.len(),
        "{manifest}"
    );
    assert!(
        dumped_at >= last_put,
        "dumped at {dumped_at}, before the last put {last_put}"
    );
    assert_eq!(
        rt.block_on(keys(&mut etcd, &prefix, Some(dumped_at))),
        before,
        "the keys at the manifest's revision are the keys snapshotted"
    );
    // Objects: the four, 300 ConfigMaps, the Widget, the Pod; not the raw key.
    assert_eq!(
        manifest["objects"],
        json!({"state": "exported", "file": "objects.ndjson", "count": 306}),
        "{manifest}"
    );
    let files: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["backing-store.bin", "objects.ndjson"]);

    // Change, add, delete — then wipe half of it for good measure.
    rt.block_on(async {
        for i in (0..300u32).step_by(3) {
            etcd.put(
                format!("{prefix}registry/configmaps/team/cm-{i:03}"),
                "changed",
                None,
            )
            .await
            .expect("put");
        }
        etcd.put(format!("{prefix}registry/configmaps/team/new"), "new", None)
            .await
            .expect("put");
        etcd.delete(
            format!("{prefix}registry/configmaps/team/cm-1"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete");
        etcd.delete(format!("{prefix}registry/pods/default/web"), None)
            .await
            .expect("delete");
    });
    assert_ne!(rt.block_on(keys(&mut etcd, &prefix, None)), before);

    // RESTORE over it: every key and value as snapshotted, nothing else.
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/snapshots/{id}/restore"),
            Some(&json!({"target": {"existing": name}})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let after = rt.block_on(keys(&mut etcd, &prefix, None));
    assert_eq!(after.len(), before.len());
    assert!(
        after == before,
        "the restored keys differ from the snapshot's"
    );

    // RESTORE into a new vcluster: its own prefix, the same keys and values.
    let copy = format!("{name}-c");
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/snapshots/{id}/restore"),
            Some(&json!({"target": {"new_name": copy}})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let copy_prefix = host_prefix(&dev, &copy);
    assert_ne!(copy_prefix, prefix);
    assert!(
        rt.block_on(keys(&mut etcd, &copy_prefix, None)) == before,
        "the copy differs"
    );

    // The export through the CLI: the list, filtered, and one object ready to apply.
    let (code, out, err) = cli(&artifacts, &["objects", &id, "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rows.len(), 306, "{out}");
    let row = |kind: &str, ns: Option<&str>, n: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind && r["namespace"].as_str() == ns && r["name"] == n)
            .cloned()
    };
    assert!(row("Namespace", None, "kube-system").is_some(), "{out}");
    assert_eq!(
        row("Widget", Some("team"), "w1").unwrap()["apiVersion"],
        "example.com/v1"
    );
    assert_eq!(
        row("Pod", Some("default"), "web").unwrap()["stored_as"],
        "protobuf"
    );
    let (code, out, err) = cli(
        &artifacts,
        &[
            "objects",
            &id,
            "--kind",
            "configmap",
            "--namespace",
            "team",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 300);
    let (code, out, err) = cli(&artifacts, &["objects", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("Widget") && l.contains("w1")),
        "{out}"
    );

    let (code, out, err) = cli(
        &artifacts,
        &["object", &id, "ConfigMap/team/cm-007", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    let mut want = config_map("team", "cm-007", 7);
    let meta = want["metadata"].as_object_mut().unwrap();
    meta.remove("resourceVersion");
    meta.remove("uid");
    assert_eq!(
        printed, want,
        "server-set metadata removed, the rest as stored"
    );
    let (code, out, err) = cli(&artifacts, &["object", &id, "widget/team/w1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("kind: Widget") && out.contains("size: 3"),
        "YAML: {out}"
    );
    let (code, _, err) = cli(&artifacts, &["object", &id, "Pod/default/web"]);
    assert_ne!(code, 0);
    assert!(err.contains("protobuf") && err.contains("--raw"), "{err}");
    let (code, out, err) = cli(
        &artifacts,
        &["object", &id, "Pod/default/web", "--raw", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["key"],
        "/registry/pods/default/web"
    );
    let (code, _, err) = cli(&artifacts, &["object", &id, "ConfigMap/team/none"]);
    assert_eq!(code, 1);
    assert!(err.contains("no object ConfigMap/team/none"), "{err}");

    // A damaged export: the read fails naming the file and prints nothing of it.
    let objects = artifact.join("objects.ndjson");
    let good = std::fs::read(&objects).unwrap();
    let mut bad = good.clone();
    let at = bad.iter().rposition(|b| *b == b'v').unwrap();
    bad[at] = b'w';
    std::fs::write(&objects, &bad).unwrap();
    for args in [
        vec!["object", id.as_str(), "ConfigMap/team/cm-007"],
        vec!["objects", id.as_str()],
    ] {
        let (code, out, err) = cli(&artifacts, &args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(
            err.contains("objects.ndjson") && err.contains("damaged"),
            "{args:?}: {err}"
        );
        assert!(
            !out.contains("cm-007"),
            "printed from a damaged file: {out}"
        );
    }
    // Missing: the same, naming the file.
    std::fs::remove_file(&objects).unwrap();
    let (code, _, err) = cli(&artifacts, &["object", &id, "ConfigMap/team/cm-007"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("objects.ndjson") && err.contains("missing"),
        "{err}"
    );
    std::fs::write(&objects, &good).unwrap();
    let (code, _, err) = cli(&artifacts, &["object", &id, "ConfigMap/team/cm-007"]);
    assert_eq!(code, 0, "{err}");

    // An upgrade of Kubernetes marks the storage version in etcd (the simulated API
    // server rewriting its objects), leaving the objects as they are.
    let (_, vc) = dev.call("GET", &format!("/v1/vclusters/{name}"), None);
    let version = vc["spec"]["kubernetes_version"]
        .as_str()
        .unwrap()
        .to_string();
    let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
    let next = format!("1.{}", minor + 1);
    let op = done(
        &dev,
        dev.call(
            "POST",
            &format!("/v1/vclusters/{name}/upgrade"),
            Some(&json!({"kubernetes_version": next})),
        ),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    let mut upgraded = rt.block_on(keys(&mut etcd, &prefix, None));
    let mark = upgraded.remove(b"registry/ovc-sim/storage-version".as_slice());
    assert_eq!(
        mark.as_deref(),
        Some(next.as_bytes()),
        "the storage version mark"
    );
    assert!(upgraded == before, "an upgrade changed the objects");

    // Deleting a vcluster deletes its data in etcd.
    let op = done(
        &dev,
        dev.call("DELETE", &format!("/v1/vclusters/{copy}"), None),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    assert!(rt.block_on(keys(&mut etcd, &copy_prefix, None)).is_empty());
    let op = done(
        &dev,
        dev.call("DELETE", &format!("/v1/vclusters/{name}"), None),
    );
    assert_eq!(op["state"], "SUCCEEDED", "{op}");
    assert!(rt.block_on(keys(&mut etcd, &prefix, None)).is_empty());
}
