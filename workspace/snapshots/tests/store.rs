//! `OpendalArtifacts` on a real temporary directory and on `memory://`: put, get,
//! delete, delete_prefix, url, key validation, URL parsing.

use ovc_snapshots::{ArtifactError, ArtifactStore, OpendalArtifacts};
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

/// Every backend under test, with the temporary directory that backs it (kept alive).
fn stores() -> Vec<(&'static str, Arc<dyn ArtifactStore>, Option<TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let fs = OpendalArtifacts::from_url(&url).unwrap();
    let memory = OpendalArtifacts::from_url("memory://").unwrap();
    vec![
        ("fs", Arc::new(fs), Some(dir)),
        ("memory", Arc::new(memory), None),
    ]
}

fn refused(r: Result<impl std::fmt::Debug, ArtifactError>) -> String {
    match r {
        Err(ArtifactError::Refused(m)) => m,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn put_get_overwrite_and_absent() {
    for (name, store, _dir) in stores() {
        let key = "snapshots/p/v/id/backing-store.bin";
        assert_eq!(store.get(key).await, Ok(None), "{name}");
        store.put(key, b"one".to_vec()).await.unwrap();
        assert_eq!(store.get(key).await, Ok(Some(b"one".to_vec())), "{name}");
        store.put(key, b"two!".to_vec()).await.unwrap();
        assert_eq!(store.get(key).await, Ok(Some(b"two!".to_vec())), "{name}");
        store.put("empty", Vec::new()).await.unwrap();
        assert_eq!(store.get("empty").await, Ok(Some(Vec::new())), "{name}");
        // A "directory" is not an object.
        assert_eq!(store.get("snapshots/p/v").await, Ok(None), "{name}");
        assert_eq!(
            store.get("snapshots/p/v/id/other").await,
            Ok(None),
            "{name}"
        );
    }
}

#[tokio::test]
async fn delete_removes_one_object_and_tolerates_absence() {
    for (name, store, _dir) in stores() {
        store.put("a/b/1", b"1".to_vec()).await.unwrap();
        store.put("a/b/2", b"2".to_vec()).await.unwrap();
        store.delete("a/b/1").await.unwrap();
        assert_eq!(store.get("a/b/1").await, Ok(None), "{name}");
        assert_eq!(store.get("a/b/2").await, Ok(Some(b"2".to_vec())), "{name}");
        store.delete("a/b/1").await.unwrap();
        store.delete("never/was").await.unwrap();
        refused(store.delete("../escape").await);
    }
}

#[tokio::test]
async fn delete_prefix_removes_only_what_is_under_it() {
    for (name, store, _dir) in stores() {
        for key in ["a/b/1", "a/b/c/2", "a/bc/3", "a/b.txt", "x"] {
            store.put(key, key.as_bytes().to_vec()).await.unwrap();
        }
        store.delete_prefix("a/b").await.unwrap();
        assert_eq!(store.get("a/b/1").await, Ok(None), "{name}");
        assert_eq!(store.get("a/b/c/2").await, Ok(None), "{name}");
        for key in ["a/bc/3", "a/b.txt", "x"] {
            assert_eq!(
                store.get(key).await,
                Ok(Some(key.as_bytes().to_vec())),
                "{name} {key}"
            );
        }
        // Again, and an absent prefix: nothing to do.
        store.delete_prefix("a/b/").await.unwrap();
        store.delete_prefix("never/was/").await.unwrap();
        store.delete_prefix("a").await.unwrap();
        assert_eq!(store.get("a/bc/3").await, Ok(None), "{name}");
        assert_eq!(store.get("x").await, Ok(Some(b"x".to_vec())), "{name}");
        // The prefix can be written again afterwards.
        store.put("a/b/1", b"again".to_vec()).await.unwrap();
        assert_eq!(
            store.get("a/b/1").await,
            Ok(Some(b"again".to_vec())),
            "{name}"
        );
    }
}

#[tokio::test]
async fn bad_keys_are_refused_everywhere_and_touch_nothing() {
    for (name, store, dir) in stores() {
        for key in [
            "",
            "/etc/passwd",
            "../escape",
            "a/../../escape",
            "a\\b",
            "a//b",
            ".ovc-tmp/x",
        ] {
            let m = refused(store.put(key, b"x".to_vec()).await);
            assert!(m.contains("artifact key"), "{name} {key:?}: {m}");
            refused(store.get(key).await);
            refused(store.delete_prefix(key).await);
        }
        refused(store.put("dir/", b"x".to_vec()).await);
        refused(store.delete_prefix("/").await);
        if let Some(dir) = dir {
            let parent = dir.path().parent().unwrap();
            assert!(!parent.join("escape").exists(), "{name}");
        }
    }
}

#[tokio::test]
async fn local_layout_urls_and_no_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let store = OpendalArtifacts::from_url(root.to_str().unwrap()).unwrap();
    let key = "snapshots/p/v/id/manifest.json";
    store.put(key, b"{}".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(root.join(key)).unwrap(), b"{}");
    assert_eq!(store.url(key), format!("file://{}/{key}", root.display()));
    assert_eq!(store.root_url(), format!("file://{}/", root.display()));
    assert_eq!(
        store.url("a b/c"),
        format!("file://{}/a%20b/c", root.display())
    );
    // Writes go through .ovc-tmp and are renamed into place: nothing is left there.
    let tmp = root.join(".ovc-tmp");
    let leftovers: Vec<_> = walk(&tmp);
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let memory = OpendalArtifacts::from_url("memory://").unwrap();
    assert_eq!(memory.url(key), format!("memory:///{key}"));
}

#[tokio::test]
async fn every_url_form_of_a_directory_names_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir
        .path()
        .canonicalize()
        .unwrap()
        .join("with space")
        .join("nested");
    let plain = OpendalArtifacts::from_url(root.to_str().unwrap()).unwrap();
    assert!(root.is_dir(), "a missing root is created");
    plain.put("k", b"v".to_vec()).await.unwrap();

    let encoded = plain.root_url().to_string();
    assert!(encoded.contains("with%20space"), "{encoded}");
    let literal = format!("file://{}", root.display());
    let localhost = format!("file://localhost{}/", root.display());
    for url in [encoded, literal, localhost] {
        let other = OpendalArtifacts::from_url(&url).unwrap();
        assert_eq!(other.get("k").await, Ok(Some(b"v".to_vec())), "{url}");
        assert_eq!(other.url("k"), plain.url("k"), "{url}");
    }
}

#[tokio::test]
async fn memory_stores_are_independent() {
    let a = OpendalArtifacts::from_url("memory://").unwrap();
    let b = OpendalArtifacts::memory().unwrap();
    a.put("k", b"v".to_vec()).await.unwrap();
    assert_eq!(b.get("k").await, Ok(None));
    // A clone shares its storage.
    let a2 = a.clone();
    assert_eq!(a2.get("k").await, Ok(Some(b"v".to_vec())));
}

#[test]
fn object_store_urls_with_secrets_or_unknown_options_are_refused() {
    let env = std::collections::BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_string(), "id".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "hidden".to_string()),
        ("AZURE_STORAGE_ACCOUNT".to_string(), "acct".to_string()),
    ]);
    for url in [
        "s3://bucket/x",
        "s3://bucket/x/?region=eu-west-1&endpoint=http://127.0.0.1:1&path_style=false",
        "s3://bucket?sse=AES256",
        "s3://bucket?sse=aws:kms&sse_kms_key_id=arn:aws:kms:eu:1:key/k",
        "gcs://bucket",
        "gs://bucket/p",
        "azblob://container/p",
        "S3://b",
    ] {
        let store =
            OpendalArtifacts::from_url_with_env(url, &env).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(
            !store.root_url().contains('?'),
            "{url}: {}",
            store.root_url()
        );
    }
    for (url, why) in [
        ("s3://id:hidden@bucket/x", "credentials"),
        ("s3://bucket/x?secret_access_key=hidden", "secret"),
        ("s3://bucket/x?X-Amz-Signature=hidden", "secret"),
        ("azblob://c/x?sig=hidden", "secret"),
        ("azblob://c/x?sas_token=hidden", "secret"),
        ("s3://bucket/x?regoin=eu", "unknown option \"regoin\""),
        ("s3://bucket/x?path_style=maybe", "true or false"),
        ("s3://bucket/x?sse=rot13", "not supported"),
        ("s3://bucket/x?endpoint=127.0.0.1:9000", "http://"),
        ("gcs://bucket/x?region=eu", "unknown option"),
        ("s3:///x", "bucket name"),
        ("s3://bucket/../x", "'..'"),
    ] {
        let m = refused(OpendalArtifacts::from_url_with_env(url, &env));
        assert!(m.contains(why), "{url}: {m}");
        assert!(
            !m.contains("hidden"),
            "{url}: the refusal repeats the secret: {m}"
        );
    }
    let m = refused(OpendalArtifacts::from_url_with_env(
        "azblob://c/x",
        &std::collections::BTreeMap::new(),
    ));
    assert!(m.contains("AZURE_STORAGE_ACCOUNT"), "{m}");
    let half =
        std::collections::BTreeMap::from([("AWS_ACCESS_KEY_ID".to_string(), "id".to_string())]);
    let m = refused(OpendalArtifacts::from_url_with_env("s3://b", &half));
    assert!(m.contains("together"), "{m}");
    for url in ["http://example.com/x", "ftp://h/x", "sftp://h/x"] {
        let m = refused(OpendalArtifacts::from_url(url));
        assert!(m.contains("unknown scheme"), "{url}: {m}");
    }
    for (url, why) in [
        ("", "empty"),
        ("file://host/x", "absolute path"),
        ("file://relative", "absolute path"),
        ("file:///a%zz", "%-escape"),
        ("file:///a?b", "query"),
        ("memory://name", "nothing after"),
    ] {
        let m = refused(OpendalArtifacts::from_url(url));
        assert!(m.contains(why), "{url}: {m}");
    }
}

#[tokio::test]
async fn storage_failures_are_errors_with_the_right_kind() {
    let dir = tempfile::tempdir().unwrap();
    // The root is a regular file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e = OpendalArtifacts::from_url(file.to_str().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not-a-dir"), "{e}");

    // A file is in the way of a key: nothing there to read, and nothing to retry on write.
    let store = OpendalArtifacts::from_url(dir.path().to_str().unwrap()).unwrap();
    store.put("f", b"x".to_vec()).await.unwrap();
    assert_eq!(store.get("f/g").await, Ok(None));
    refused(store.put("f/g", b"y".to_vec()).await);
    // A directory is in the way of a key.
    store.put("d/e", b"x".to_vec()).await.unwrap();
    assert_eq!(store.get("d").await, Ok(None));
    refused(store.put("d", b"y".to_vec()).await);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
