//! Whole snapshots through `OpendalArtifacts` on a temporary directory and on
//! `memory://`: roundtrip, idempotent rewrite, and every way reading must refuse.

use ovc_snapshots::manifest::sha256_hex;
use ovc_snapshots::{
    ArtifactError, ArtifactStore, BACKING_STORE_FILE, FORMAT_VERSION, MANIFEST_FILE, Manifest,
    ManifestInput, OpendalArtifacts, SnapshotError, artifact_prefix, delete_snapshot,
    read_snapshot, write_snapshot,
};
use serde_json::json;
use std::sync::Arc;
use tempfile::TempDir;

const ID: &str = "0190a8f2-7c1e-7000-8000-000000000001";

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
        project: "team-a".into(),
        vcluster: "dev".into(),
        created_at: "2026-11-26T10:00:00.123456Z".into(),
        metadata: json!({
            "spec": {"kubernetes_version": "1.34", "labels": {"b": "2", "a": "1"}},
            "helm_values": {"syncer": {"replicas": 1}},
            "release_revision": 3,
        }),
    }
}

fn data() -> Vec<u8> {
    (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect()
}

fn prefix() -> String {
    artifact_prefix("team-a", "dev", ID)
}

#[tokio::test]
async fn write_then_read_roundtrips() {
    for (name, store, _dir) in stores() {
        let data = data();
        let written = write_snapshot(store.as_ref(), &prefix(), input(), &data)
            .await
            .unwrap();

        let manifest_bytes = store
            .get(&format!("{}{MANIFEST_FILE}", prefix()))
            .await
            .unwrap();
        let manifest_bytes = manifest_bytes.unwrap();
        assert_eq!(
            written.manifest_sha256,
            sha256_hex(&manifest_bytes),
            "{name}"
        );
        assert_eq!(
            written.size_bytes,
            (data.len() + manifest_bytes.len()) as u64,
            "{name}"
        );
        assert_eq!(written.location, store.url(&prefix()), "{name}");
        assert!(
            written
                .location
                .ends_with("/snapshots/team-a/dev/0190a8f2-7c1e-7000-8000-000000000001/")
        );
        let m = &written.manifest;
        assert_eq!(m.format, FORMAT_VERSION);
        assert_eq!(
            (
                m.project.as_str(),
                m.vcluster.as_str(),
                m.snapshot_id.as_str()
            ),
            ("team-a", "dev", ID)
        );
        assert_eq!(m.created_at, "2026-11-26T10:00:00.123456Z");
        assert_eq!(m.metadata, input().metadata);
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].name, BACKING_STORE_FILE);
        assert_eq!(m.files[0].size, data.len() as u64);
        assert_eq!(m.files[0].sha256, sha256_hex(&data));

        let (read, read_data) = read_snapshot(store.as_ref(), &prefix()).await.unwrap();
        assert_eq!(&read, m, "{name}");
        assert_eq!(read_data, data, "{name}");
        // The prefix may be given without its trailing slash.
        let (_, again) = read_snapshot(store.as_ref(), prefix().trim_end_matches('/'))
            .await
            .unwrap();
        assert_eq!(again, data, "{name}");
    }
}

#[tokio::test]
async fn empty_data_roundtrips() {
    for (name, store, _dir) in stores() {
        write_snapshot(store.as_ref(), &prefix(), input(), &[])
            .await
            .unwrap();
        let (m, d) = read_snapshot(store.as_ref(), &prefix()).await.unwrap();
        assert!(d.is_empty(), "{name}");
        assert_eq!(m.files[0].size, 0);
    }
}

#[tokio::test]
async fn rewriting_with_the_same_inputs_writes_the_same_bytes() {
    for (name, store, _dir) in stores() {
        let data = data();
        let first = write_snapshot(store.as_ref(), &prefix(), input(), &data)
            .await
            .unwrap();
        let manifest_key = format!("{}{MANIFEST_FILE}", prefix());
        let bytes = store.get(&manifest_key).await.unwrap();
        // Same inputs, metadata keys in another order: same result, same bytes.
        let mut reordered = input();
        reordered.metadata = json!({
            "release_revision": 3,
            "helm_values": {"syncer": {"replicas": 1}},
            "spec": {"labels": {"a": "1", "b": "2"}, "kubernetes_version": "1.34"},
        });
        let second = write_snapshot(store.as_ref(), &prefix(), reordered, &data)
            .await
            .unwrap();
        assert_eq!(first, second, "{name}");
        assert_eq!(store.get(&manifest_key).await.unwrap(), bytes, "{name}");
        read_snapshot(store.as_ref(), &prefix()).await.unwrap();
    }
}

#[tokio::test]
async fn a_crash_between_data_and_manifest_leaves_no_snapshot_and_a_repeat_completes_it() {
    for (name, store, _dir) in stores() {
        let data = data();
        // What a crash after the first put leaves behind.
        store
            .put(
                &format!("{}{BACKING_STORE_FILE}", prefix()),
                data[..10].to_vec(),
            )
            .await
            .unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::MissingManifest { .. }),
            "{name}: {e}"
        );
        write_snapshot(store.as_ref(), &prefix(), input(), &data)
            .await
            .unwrap();
        assert_eq!(
            read_snapshot(store.as_ref(), &prefix()).await.unwrap().1,
            data,
            "{name}"
        );
    }
}

#[tokio::test]
async fn rewriting_with_other_data_replaces_the_snapshot() {
    for (name, store, _dir) in stores() {
        write_snapshot(store.as_ref(), &prefix(), input(), b"old")
            .await
            .unwrap();
        let mut later = input();
        later.created_at = "2026-11-26T10:05:00Z".into();
        let w = write_snapshot(store.as_ref(), &prefix(), later, b"new data")
            .await
            .unwrap();
        let (m, d) = read_snapshot(store.as_ref(), &prefix()).await.unwrap();
        assert_eq!(d, b"new data", "{name}");
        assert_eq!(m, w.manifest, "{name}");
        assert_eq!(m.created_at, "2026-11-26T10:05:00Z");
    }
}

#[tokio::test]
async fn tampered_data_is_a_checksum_mismatch() {
    for (name, store, _dir) in stores() {
        let mut data = data();
        write_snapshot(store.as_ref(), &prefix(), input(), &data)
            .await
            .unwrap();
        let expected = sha256_hex(&data);
        data[1234] ^= 0x01;
        let key = format!("{}{BACKING_STORE_FILE}", prefix());
        store.put(&key, data.clone()).await.unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert_eq!(
            e,
            SnapshotError::ChecksumMismatch {
                name: BACKING_STORE_FILE.into(),
                expected,
                actual: sha256_hex(&data),
            },
            "{name}"
        );
        assert!(e.to_string().contains(BACKING_STORE_FILE), "{e}");
        assert!(!e.is_transient());
    }
}

#[tokio::test]
async fn a_manifest_that_lies_is_a_checksum_mismatch() {
    for (name, store, _dir) in stores() {
        write_snapshot(store.as_ref(), &prefix(), input(), b"data")
            .await
            .unwrap();
        let key = format!("{}{MANIFEST_FILE}", prefix());
        let mut m = Manifest::from_bytes(&store.get(&key).await.unwrap().unwrap()).unwrap();
        m.files[0].sha256 = sha256_hex(b"atad");
        store.put(&key, m.to_bytes().unwrap()).await.unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::ChecksumMismatch { .. }),
            "{name}: {e}"
        );
    }
}

#[tokio::test]
async fn truncated_data_is_a_size_mismatch() {
    for (name, store, _dir) in stores() {
        let data = data();
        write_snapshot(store.as_ref(), &prefix(), input(), &data)
            .await
            .unwrap();
        let key = format!("{}{BACKING_STORE_FILE}", prefix());
        store
            .put(&key, data[..data.len() - 1].to_vec())
            .await
            .unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert_eq!(
            e,
            SnapshotError::SizeMismatch {
                name: BACKING_STORE_FILE.into(),
                expected: data.len() as u64,
                actual: data.len() as u64 - 1,
            },
            "{name}"
        );
        assert!(
            e.to_string()
                .contains("backing-store.bin is damaged: 399999 bytes, the manifest says 400000"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn missing_manifest_and_missing_file() {
    for (name, store, _dir) in stores() {
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        let key = format!("{}{MANIFEST_FILE}", prefix());
        assert_eq!(
            e,
            SnapshotError::MissingManifest { key: key.clone() },
            "{name}"
        );
        assert!(e.to_string().contains("manifest.json is missing"), "{e}");

        // A manifest whose data is gone.
        let other = OpendalArtifacts::memory().unwrap();
        write_snapshot(&other, &prefix(), input(), b"data")
            .await
            .unwrap();
        store
            .put(&key, other.get(&key).await.unwrap().unwrap())
            .await
            .unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert_eq!(
            e,
            SnapshotError::MissingFile {
                name: BACKING_STORE_FILE.into(),
                key: format!("{}{BACKING_STORE_FILE}", prefix()),
            },
            "{name}"
        );

        // Deleting the snapshot removes it whole.
        write_snapshot(store.as_ref(), &prefix(), input(), b"data")
            .await
            .unwrap();
        store.delete_prefix(&prefix()).await.unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert!(
            matches!(e, SnapshotError::MissingManifest { .. }),
            "{name}: {e}"
        );
        assert_eq!(
            store
                .get(&format!("{}{BACKING_STORE_FILE}", prefix()))
                .await,
            Ok(None)
        );
    }
}

#[tokio::test]
async fn unreadable_or_unknown_manifests_are_bad_manifests() {
    for (name, store, _dir) in stores() {
        let key = format!("{}{MANIFEST_FILE}", prefix());
        store.put(&key, b"{not json".to_vec()).await.unwrap();
        let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
        assert!(
            matches!(&e, SnapshotError::BadManifest(m) if m.contains("not a manifest")),
            "{name}: {e}"
        );

        write_snapshot(store.as_ref(), &prefix(), input(), b"data")
            .await
            .unwrap();
        let good = Manifest::from_bytes(&store.get(&key).await.unwrap().unwrap()).unwrap();
        for (edit, why) in [
            (
                &(|m: &mut Manifest| m.format = 2) as &dyn Fn(&mut Manifest),
                "format 2",
            ),
            (
                &|m: &mut Manifest| m.files[0].name = "../../x".into(),
                "not allowed",
            ),
            (
                &|m: &mut Manifest| m.files.clear(),
                "lists no backing-store.bin",
            ),
        ] {
            let mut m = good.clone();
            edit(&mut m);
            store.put(&key, m.to_bytes().unwrap()).await.unwrap();
            let e = read_snapshot(store.as_ref(), &prefix()).await.unwrap_err();
            assert!(
                matches!(&e, SnapshotError::BadManifest(m) if m.contains(why)),
                "{name}: {e}"
            );
            assert!(e.to_string().contains(&key), "{e}");
        }
    }
}

#[tokio::test]
async fn bad_inputs_are_refused_before_anything_is_written() {
    for (name, store, _dir) in stores() {
        let mut bad_time = input();
        bad_time.created_at = "yesterday".into();
        let e = write_snapshot(store.as_ref(), &prefix(), bad_time, b"data")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, SnapshotError::BadManifest(m) if m.contains("RFC 3339")),
            "{name}: {e}"
        );
        assert_eq!(
            store
                .get(&format!("{}{BACKING_STORE_FILE}", prefix()))
                .await,
            Ok(None)
        );

        for bad_prefix in ["", "/abs/", "../up/", "a//b/"] {
            let e = write_snapshot(store.as_ref(), bad_prefix, input(), b"d")
                .await
                .unwrap_err();
            assert!(
                matches!(e, SnapshotError::Artifact(ArtifactError::Refused(_))),
                "{e}"
            );
            assert!(!e.is_transient());
            let e = read_snapshot(store.as_ref(), bad_prefix).await.unwrap_err();
            assert!(
                matches!(e, SnapshotError::Artifact(ArtifactError::Refused(_))),
                "{e}"
            );
        }
        // A vcluster or project part that would climb out is refused too.
        let e = write_snapshot(
            store.as_ref(),
            &artifact_prefix("..", "v", ID),
            input(),
            b"d",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Artifact(ArtifactError::Refused(_))),
            "{e}"
        );
    }
}

#[tokio::test]
async fn the_files_on_disk_are_the_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = OpendalArtifacts::from_url(dir.path().to_str().unwrap()).unwrap();
    let data = data();
    let w = write_snapshot(&store, &prefix(), input(), &data)
        .await
        .unwrap();
    let root = dir.path().join("snapshots/team-a/dev").join(ID);
    assert_eq!(std::fs::read(root.join(BACKING_STORE_FILE)).unwrap(), data);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest["format"], 1);
    assert_eq!(manifest["files"][0]["name"], BACKING_STORE_FILE);
    assert_eq!(manifest["files"][0]["sha256"], sha256_hex(&data));
    assert_eq!(manifest["metadata"]["spec"]["kubernetes_version"], "1.34");
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        w.location,
        format!("file://{}/{}", canonical.display(), prefix())
    );
    // Tampering on disk is caught.
    let mut damaged = data.clone();
    damaged[0] ^= 0xff;
    std::fs::write(root.join(BACKING_STORE_FILE), &damaged).unwrap();
    let e = read_snapshot(&store, &prefix()).await.unwrap_err();
    assert!(matches!(e, SnapshotError::ChecksumMismatch { .. }), "{e}");
}

#[tokio::test]
async fn delete_removes_the_manifest_first_and_can_be_repeated() {
    for (name, store, _dir) in stores() {
        write_snapshot(store.as_ref(), &prefix(), input(), &data())
            .await
            .unwrap();
        let other = artifact_prefix("team-a", "dev", "another");
        write_snapshot(store.as_ref(), &other, input(), b"keep")
            .await
            .unwrap();
        // A crash right after the first delete: no manifest, so it reads as incomplete.
        store
            .delete(&format!("{}{MANIFEST_FILE}", prefix()))
            .await
            .unwrap();
        assert!(
            matches!(
                read_snapshot(store.as_ref(), &prefix()).await,
                Err(SnapshotError::MissingManifest { .. })
            ),
            "{name}"
        );
        delete_snapshot(store.as_ref(), &prefix()).await.unwrap();
        delete_snapshot(store.as_ref(), &prefix()).await.unwrap();
        for file in [MANIFEST_FILE, BACKING_STORE_FILE] {
            assert_eq!(
                store.get(&format!("{}{file}", prefix())).await,
                Ok(None),
                "{name} {file}"
            );
        }
        assert!(
            read_snapshot(store.as_ref(), &other).await.is_ok(),
            "{name}"
        );
    }
}
