//! The etcd backing store against a real etcd on loopback (Debian's etcd-server, started
//! by `scripts/storage-servers.sh`; unreachable → the test fails, it is never skipped):
//! keys are dumped at one revision while a writer keeps changing them, the dump goes
//! into a snapshot artifact whose manifest records the revision, the prefix is wiped and
//! dirtied, and the load brings back exactly the keys and values of that revision —
//! nothing outside the prefix is touched, and what is not a complete dump is refused.

use etcd_client::{Client, DeleteOptions, GetOptions};
use ovc_driver::etcd::EtcdBackingStore;
use ovc_driver::{CallCtx, MemorySink, MemorySource};
use ovc_snapshots::{ManifestInput, OpendalArtifacts, read_snapshot, write_snapshot};
use std::collections::BTreeMap;
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

async fn keys_at(
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
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

#[tokio::test]
async fn dump_at_one_revision_into_an_artifact_then_wipe_and_load_it_back() {
    let endpoint = endpoint();
    let prefix = format!("/ovc-test-{}/", uuid::Uuid::new_v4());
    let outside = format!("{}-outside", prefix.trim_end_matches('/'));
    let mut client = Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    // 1,200 keys (three pages), binary values, one of 300 KiB, a key with 0xff bytes.
    for i in 0..1200u32 {
        let value: Vec<u8> = if i == 7 {
            (0..300 * 1024).map(|b| (b % 251) as u8).collect()
        } else {
            vec![0, 0xff, (i % 256) as u8, b'v']
        };
        client
            .put(format!("{prefix}k-{i:05}"), value, None)
            .await
            .expect("put");
    }
    let mut odd = prefix.clone().into_bytes();
    odd.extend_from_slice(&[0xff, 0xfe, 0x00, 0x01]);
    client.put(odd.clone(), "odd", None).await.expect("put");
    client
        .put(outside.clone(), "keep me", None)
        .await
        .expect("put");

    // A writer keeps changing keys of every page while the dump runs.
    let writer = {
        let mut client = client.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for n in 0u32.. {
                let key = format!("{prefix}k-{:05}", (n * 397) % 1200);
                if client.put(key, format!("changed-{n}"), None).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let store = EtcdBackingStore::connect(std::slice::from_ref(&endpoint), prefix.clone())
        .await
        .expect("connect");
    let ctx = CallCtx::read("etcd test");
    let mut sink = MemorySink::default();
    let dump = store.dump(&ctx, &mut sink).await.expect("dump");
    tokio::time::sleep(Duration::from_millis(50)).await;
    writer.abort();
    let _ = writer.await;
    assert_eq!(dump.keys, 1201, "{dump:?}");
    assert_eq!(dump.bytes, sink.data.len() as u64);
    let at_revision = keys_at(&mut client, &prefix, Some(dump.revision)).await;
    let now = keys_at(&mut client, &prefix, None).await;
    assert_ne!(
        at_revision, now,
        "the writer changed keys after the dump's revision"
    );

    // Into a snapshot artifact that records the revision.
    let dir = tempfile::tempdir().unwrap();
    let artifacts = OpendalArtifacts::local_dir(dir.path()).unwrap();
    let artifact = format!("snapshots/default/etcd/{}/", uuid::Uuid::new_v4());
    let input = ManifestInput {
        snapshot_id: uuid::Uuid::new_v4().to_string(),
        project: "default".into(),
        vcluster: "etcd".into(),
        created_at: chrono::Utc::now().to_rfc3339(),
        metadata: serde_json::json!({"etcd_revision": dump.revision}),
    };
    write_snapshot(&artifacts, &artifact, input, &sink.data)
        .await
        .expect("write the artifact");
    let (manifest, data) = read_snapshot(&artifacts, &artifact)
        .await
        .expect("read it back");
    assert_eq!(manifest.metadata["etcd_revision"], dump.revision);

    // What is not a dump is refused before anything is wiped.
    let refused = store
        .load(
            &ctx,
            &mut MemorySource::new(b"{\"not\": \"a dump\"}".to_vec()),
        )
        .await
        .expect_err("not a dump");
    assert!(refused.to_string().contains("OVCETCD1"), "{refused}");
    assert_eq!(keys_at(&mut client, &prefix, None).await, now);

    // Wipe and dirty the prefix, then load: exactly the keys of the dump's revision.
    client
        .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("wipe");
    client
        .put(format!("{prefix}junk"), "junk", None)
        .await
        .expect("junk");
    let loaded = store
        .load(&ctx, &mut MemorySource::new(data.clone()))
        .await
        .expect("load");
    assert_eq!(
        (loaded.keys, loaded.dumped_at_revision),
        (1201, dump.revision)
    );
    let restored = keys_at(&mut client, &prefix, None).await;
    assert_eq!(restored.len(), at_revision.len());
    assert!(
        restored == at_revision,
        "the load differs from the dump's revision"
    );
    let outside_now = client.get(outside.as_str(), None).await.expect("get");
    assert_eq!(outside_now.kvs()[0].value(), b"keep me");

    // A cut dump is an error naming it (a restore verifies the artifact's checksums
    // before it gets here, so this is the format's own last check).
    let cut = store
        .load(
            &ctx,
            &mut MemorySource::new(data[..data.len() - 5].to_vec()),
        )
        .await
        .expect_err("cut short");
    assert!(cut.to_string().contains("cut short"), "{cut}");
    client
        .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("clean up");
    client
        .delete(outside.as_str(), None)
        .await
        .expect("clean up");
}
