//! The per-object export (`objects.ndjson`) through `OpendalArtifacts` on a directory and
//! on `memory://`: written beside the data from the same writer, listed in the manifest
//! with size and sha256, read back line by line only once it verifies; a damaged, cut or
//! missing export is an error naming the file; a snapshot without one (the host wrote
//! its own archive, or the manifest predates exports) says why and still restores.

use bytes::Bytes;
use ovc_snapshots::manifest::sha256_hex;
use ovc_snapshots::{
    ArtifactStore, BACKING_STORE_FILE, MANIFEST_FILE, Manifest, ManifestInput, OBJECTS_FILE,
    ObjectsExport, OpendalArtifacts, SnapshotError, SnapshotWriter, artifact_prefix, open_objects,
    read_manifest, read_snapshot, verify_snapshot,
};
use serde_json::json;
use std::sync::Arc;
use tempfile::TempDir;

const ID: &str = "0190a8f2-7c1e-7000-8000-0000000000aa";

fn stores() -> Vec<(&'static str, Arc<dyn ArtifactStore>, Option<TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let fs = OpendalArtifacts::from_url(dir.path().to_str().unwrap()).unwrap();
    let memory = OpendalArtifacts::from_url("memory://").unwrap();
    vec![
        ("fs", Arc::new(fs), Some(dir)),
        ("memory", Arc::new(memory), None),
    ]
}

fn input() -> ManifestInput {
    ManifestInput {
        snapshot_id: ID.into(),
        project: "p".into(),
        vcluster: "v".into(),
        created_at: "2026-12-01T10:00:00Z".into(),
        metadata: json!({}),
    }
}

fn prefix() -> String {
    artifact_prefix("p", "v", ID)
}

fn object(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns", "name": format!("cm-{i}"),
           "object": {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": format!("cm-{i}"), "namespace": "ns"},
                      "data": {"pad": "x".repeat(i % 3000)}}})
}

/// Writes a snapshot with `n` objects (enough for several of the writer's chunks).
async fn write_with_objects(store: &dyn ArtifactStore, n: usize) {
    let mut w = SnapshotWriter::begin(store, &prefix(), input())
        .await
        .unwrap();
    w.write(Bytes::from_static(b"backing store data"))
        .await
        .unwrap();
    for i in 0..n {
        w.write_object_line(serde_json::to_string(&object(i)).unwrap().as_bytes())
            .await
            .unwrap();
    }
    w.record_backing_store(json!({"kind": "etcd", "revision": 42, "keys": n}));
    w.finish().await.unwrap();
}

async fn read_all(store: &dyn ArtifactStore) -> Result<Vec<serde_json::Value>, SnapshotError> {
    let (manifest, _) = read_manifest(store, &prefix(), None).await?;
    let mut lines = open_objects(store, &prefix(), &manifest).await?;
    let mut out = Vec::new();
    while let Some(line) = lines.next_line().await? {
        out.push(line);
    }
    Ok(out)
}

#[tokio::test]
async fn objects_round_trip_listed_in_the_manifest() {
    for (name, store, _dir) in stores() {
        let n = 600; // ~900 KiB: several chunks
        write_with_objects(store.as_ref(), n).await;
        let manifest = verify_snapshot(store.as_ref(), &prefix(), None)
            .await
            .unwrap();
        let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [BACKING_STORE_FILE, OBJECTS_FILE], "{name}");
        assert_eq!(
            manifest.objects,
            Some(ObjectsExport::Exported {
                file: OBJECTS_FILE.into(),
                count: n as u64
            }),
            "{name}"
        );
        assert_eq!(manifest.backing_store.as_ref().unwrap()["revision"], 42);
        let bytes = store
            .get(&format!("{}{OBJECTS_FILE}", prefix()))
            .await
            .unwrap()
            .unwrap();
        let listed = manifest.file(OBJECTS_FILE).unwrap();
        assert_eq!(
            (listed.size, listed.sha256.as_str()),
            (bytes.len() as u64, sha256_hex(&bytes).as_str())
        );
        let objects = read_all(store.as_ref()).await.unwrap();
        assert_eq!(objects.len(), n, "{name}");
        for (i, o) in objects.iter().enumerate() {
            assert_eq!(*o, object(i), "{name}: line {i}");
        }
        // The data reads as before.
        let (_, data) = read_snapshot(store.as_ref(), &prefix()).await.unwrap();
        assert_eq!(data, b"backing store data");
    }
}

#[tokio::test]
async fn no_objects_is_an_empty_export_and_a_host_archive_has_none() {
    for (name, store, _dir) in stores() {
        let w = SnapshotWriter::begin(store.as_ref(), &prefix(), input())
            .await
            .unwrap();
        let m = w.finish().await.unwrap().manifest;
        assert_eq!(
            m.objects,
            Some(ObjectsExport::Exported {
                file: OBJECTS_FILE.into(),
                count: 0
            }),
            "{name}"
        );
        assert_eq!(
            read_all(store.as_ref()).await.unwrap(),
            Vec::<serde_json::Value>::new()
        );

        // The driver says there is none: the manifest carries the reason, no file.
        let mut w = SnapshotWriter::begin(store.as_ref(), &prefix(), input())
            .await
            .unwrap();
        w.write(Bytes::from_static(b"archive")).await.unwrap();
        w.write_object_line(b"{\"kind\":\"X\"}").await.unwrap();
        w.objects_unavailable("the host wrote its own archive".into());
        let m = w.finish().await.unwrap().manifest;
        assert_eq!(m.files.len(), 1, "{name}");
        let keys = store.list(&prefix()).await.unwrap();
        assert!(
            !keys.iter().any(|k| k.ends_with(OBJECTS_FILE)),
            "{name}: {keys:?}"
        );
        let e = read_all(store.as_ref()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::NoObjectExport { .. }),
            "{name}: {e}"
        );
        assert!(
            e.to_string().contains("the host wrote its own archive"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_damaged_cut_or_missing_export_names_the_file() {
    for (name, store, _dir) in stores() {
        write_with_objects(store.as_ref(), 50).await;
        let key = format!("{}{OBJECTS_FILE}", prefix());
        let good = store.get(&key).await.unwrap().unwrap();

        // One byte changed (same size): every line parses, the end fails the checksum,
        // and so does the whole verify of a restore.
        let mut bad = good.clone();
        let at = bad.iter().rposition(|b| *b == b'x').unwrap();
        bad[at] = b'y';
        store.put(&key, bad).await.unwrap();
        let e = read_all(store.as_ref()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::ChecksumMismatch { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(OBJECTS_FILE), "{e}");
        let e = verify_snapshot(store.as_ref(), &prefix(), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(OBJECTS_FILE), "{e}");

        // Cut: a size mismatch before a line is read.
        store
            .put(&key, good[..good.len() - 10].to_vec())
            .await
            .unwrap();
        let e = read_all(store.as_ref()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::SizeMismatch { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(OBJECTS_FILE), "{e}");

        // Gone.
        store.delete(&key).await.unwrap();
        let e = read_all(store.as_ref()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::MissingFile { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(OBJECTS_FILE), "{e}");
        store.put(&key, good).await.unwrap();
        assert_eq!(read_all(store.as_ref()).await.unwrap().len(), 50);
    }
}

#[tokio::test]
async fn a_manifest_from_before_exports_still_restores_and_says_why_it_has_none() {
    for (name, store, _dir) in stores() {
        // What an older ovc wrote: the data and a manifest without `objects`.
        let data = b"old data".to_vec();
        store
            .put(&format!("{}{BACKING_STORE_FILE}", prefix()), data.clone())
            .await
            .unwrap();
        let manifest = Manifest::new(
            input(),
            vec![ovc_snapshots::ManifestFile::describe(
                BACKING_STORE_FILE,
                &data,
            )],
        );
        let bytes = manifest.to_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("objects"));
        store
            .put(&format!("{}{MANIFEST_FILE}", prefix()), bytes.clone())
            .await
            .unwrap();
        let (m, read) = read_snapshot(store.as_ref(), &prefix()).await.unwrap();
        assert_eq!((m.objects, read), (None, data), "{name}");
        verify_snapshot(store.as_ref(), &prefix(), Some(&sha256_hex(&bytes)))
            .await
            .unwrap();
        let e = read_all(store.as_ref()).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("before ovc wrote per-object exports"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn lines_that_are_not_objects_are_refused_with_their_line() {
    for (name, store, _dir) in stores() {
        let mut w = SnapshotWriter::begin(store.as_ref(), &prefix(), input())
            .await
            .unwrap();
        w.write_object_line(b"{\"a\":1}").await.unwrap();
        w.write_object_line(b"[1,2]").await.unwrap();
        assert!(w.write_object_line(b"{\"a\":\n1}").await.is_err(), "{name}");
        w.finish().await.unwrap();
        let e = read_all(store.as_ref()).await.unwrap_err();
        match &e {
            SnapshotError::BadObjectLine { name: f, line, .. } => {
                assert_eq!((f.as_str(), *line), (OBJECTS_FILE, 2), "{name}");
            }
            other => panic!("{name}: {other}"),
        }
    }
}
