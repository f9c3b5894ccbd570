//! Writing and reading whole snapshots through an [`ArtifactStore`].
//!
//! Two promises live here. Writing puts the data before the manifest, so a manifest only
//! exists once the data it describes does; a crash in between leaves a snapshot without
//! a manifest, which reads as [`SnapshotError::MissingManifest`], and writing again with
//! the same inputs produces the same bytes. Reading verifies the size and sha256 of every
//! file the manifest lists before it returns anything, so a restore never starts from
//! damaged data.

use crate::key::check_prefix;
use crate::manifest::{BACKING_STORE_FILE, MANIFEST_FILE, Manifest, ManifestFile, ManifestInput};
use crate::{ArtifactError, ArtifactStore};

/// Why a snapshot could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The storage failed or refused.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// There is no manifest: the snapshot was never completed, or it was deleted.
    #[error("snapshot manifest {key} is missing (the snapshot was not completed or was deleted)")]
    MissingManifest {
        /// The manifest's key.
        key: String,
    },
    /// A file the manifest lists is absent.
    #[error("snapshot file {name} is missing ({key}), though the manifest lists it")]
    MissingFile {
        /// The file's name in the manifest.
        name: String,
        /// Its key.
        key: String,
    },
    /// A file's sha256 differs from the manifest's.
    #[error("snapshot file {name} is damaged: sha256 {actual}, the manifest says {expected}")]
    ChecksumMismatch {
        /// The file's name in the manifest.
        name: String,
        /// The manifest's sha256.
        expected: String,
        /// The sha256 of the bytes read.
        actual: String,
    },
    /// A file's size differs from the manifest's.
    #[error("snapshot file {name} is damaged: {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The file's name in the manifest.
        name: String,
        /// The manifest's size.
        expected: u64,
        /// The size of the bytes read.
        actual: u64,
    },
    /// The manifest is unreadable or inconsistent, or the input to write one is.
    #[error("bad snapshot manifest: {0}")]
    BadManifest(String),
}

impl SnapshotError {
    /// Whether trying again may succeed: only when the storage was unavailable.
    pub fn is_transient(&self) -> bool {
        matches!(self, SnapshotError::Artifact(ArtifactError::Unavailable(_)))
    }
}

/// What [`write_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSnapshot {
    /// The manifest as written.
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json`'s bytes, lowercase hex (`Snapshot.sha256`).
    pub manifest_sha256: String,
    /// Total bytes of the artifact: every file plus the manifest (`Snapshot.size_bytes`).
    pub size_bytes: u64,
    /// The store's URL of the snapshot's prefix (`Snapshot.location`).
    pub location: String,
}

/// Writes a snapshot under `prefix` (see [`crate::artifact_prefix`]): the backing-store
/// `data` as [`BACKING_STORE_FILE`], then [`MANIFEST_FILE`] describing it.
///
/// Idempotent: the same inputs write the same bytes, so repeating a write that was
/// interrupted is harmless. If a different manifest is already there (a repeat with
/// other inputs), the prefix is emptied first, so at no point does a manifest describe
/// data that is not there. `created_at` must be RFC 3339 ([`SnapshotError::BadManifest`]
/// otherwise).
///
/// The sha256 is computed on the calling task (about 0.5–1 s per GB).
pub async fn write_snapshot(
    store: &dyn ArtifactStore,
    prefix: &str,
    manifest_base: ManifestInput,
    data: &[u8],
) -> Result<WrittenSnapshot, SnapshotError> {
    if let Err(e) = chrono::DateTime::parse_from_rfc3339(&manifest_base.created_at) {
        return Err(SnapshotError::BadManifest(format!(
            "created_at {:?} is not an RFC 3339 timestamp: {e}",
            manifest_base.created_at
        )));
    }
    let dir = check_prefix(prefix)?;
    let manifest = Manifest::new(
        manifest_base,
        vec![ManifestFile::describe(BACKING_STORE_FILE, data)],
    );
    let manifest_bytes = manifest
        .to_bytes()
        .map_err(|e| SnapshotError::BadManifest(format!("cannot encode the manifest: {e}")))?;
    let manifest_key = format!("{dir}{MANIFEST_FILE}");

    match store.get(&manifest_key).await? {
        Some(existing) if existing == manifest_bytes => {}
        Some(_) => store.delete_prefix(&dir).await?,
        None => {}
    }
    store
        .put(&format!("{dir}{BACKING_STORE_FILE}"), data.to_vec())
        .await?;
    let manifest_sha256 = crate::manifest::sha256_hex(&manifest_bytes);
    let size_bytes = data.len() as u64 + manifest_bytes.len() as u64;
    store.put(&manifest_key, manifest_bytes).await?;
    Ok(WrittenSnapshot {
        manifest,
        manifest_sha256,
        size_bytes,
        location: store.url(&dir),
    })
}

/// Reads the snapshot under `prefix` and returns its manifest and backing-store data.
///
/// Every file the manifest lists is read and checked (size, then sha256) before anything
/// is returned. Errors: [`SnapshotError::MissingManifest`], [`SnapshotError::BadManifest`]
/// (unparsable, unknown format, bad file names, no backing-store file),
/// [`SnapshotError::MissingFile`], [`SnapshotError::SizeMismatch`],
/// [`SnapshotError::ChecksumMismatch`], each naming the file, and
/// [`SnapshotError::Artifact`] from the store.
pub async fn read_snapshot(
    store: &dyn ArtifactStore,
    prefix: &str,
) -> Result<(Manifest, Vec<u8>), SnapshotError> {
    let dir = check_prefix(prefix)?;
    let manifest_key = format!("{dir}{MANIFEST_FILE}");
    let bytes = store
        .get(&manifest_key)
        .await?
        .ok_or_else(|| SnapshotError::MissingManifest {
            key: manifest_key.clone(),
        })?;
    let manifest = Manifest::from_bytes(&bytes)
        .map_err(|e| SnapshotError::BadManifest(format!("{manifest_key}: {e}")))?;
    if manifest.file(BACKING_STORE_FILE).is_none() {
        return Err(SnapshotError::BadManifest(format!(
            "{manifest_key}: lists no {BACKING_STORE_FILE}"
        )));
    }

    let mut backing_store = None;
    for file in &manifest.files {
        let key = format!("{dir}{}", file.name);
        let data = store
            .get(&key)
            .await?
            .ok_or_else(|| SnapshotError::MissingFile {
                name: file.name.clone(),
                key: key.clone(),
            })?;
        verify(file, &data)?;
        if file.name == BACKING_STORE_FILE {
            backing_store = Some(data);
        }
    }
    let data = backing_store.ok_or_else(|| {
        SnapshotError::BadManifest(format!("{manifest_key}: lists no {BACKING_STORE_FILE}"))
    })?;
    Ok((manifest, data))
}

/// Deletes the snapshot under `prefix`: the manifest first, so a snapshot that is only
/// partly deleted (a crash, a failing storage) never reads as complete, then everything
/// else under the prefix (data, leftovers of interrupted writes). Idempotent: absent
/// objects are fine, so a repeat after a crash finishes the job.
pub async fn delete_snapshot(store: &dyn ArtifactStore, prefix: &str) -> Result<(), SnapshotError> {
    let dir = check_prefix(prefix)?;
    store.delete(&format!("{dir}{MANIFEST_FILE}")).await?;
    store.delete_prefix(&dir).await?;
    Ok(())
}

/// Checks `data` against the manifest's record of it.
fn verify(file: &ManifestFile, data: &[u8]) -> Result<(), SnapshotError> {
    let actual = data.len() as u64;
    if actual != file.size {
        return Err(SnapshotError::SizeMismatch {
            name: file.name.clone(),
            expected: file.size,
            actual,
        });
    }
    let actual = crate::manifest::sha256_hex(data);
    if !actual.eq_ignore_ascii_case(&file.sha256) {
        return Err(SnapshotError::ChecksumMismatch {
            name: file.name.clone(),
            expected: file.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_storage_is_transient() {
        let unavailable = SnapshotError::from(ArtifactError::Unavailable("disk".into()));
        assert!(unavailable.is_transient());
        for e in [
            SnapshotError::from(ArtifactError::Refused("key".into())),
            SnapshotError::MissingManifest { key: "k".into() },
            SnapshotError::MissingFile {
                name: "f".into(),
                key: "k".into(),
            },
            SnapshotError::ChecksumMismatch {
                name: "f".into(),
                expected: "a".into(),
                actual: "b".into(),
            },
            SnapshotError::SizeMismatch {
                name: "f".into(),
                expected: 1,
                actual: 2,
            },
            SnapshotError::BadManifest("x".into()),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }

    #[test]
    fn verify_checks_size_before_checksum() {
        let file = ManifestFile::describe("f", b"abc");
        assert_eq!(verify(&file, b"abc"), Ok(()));
        assert!(matches!(
            verify(&file, b"ab"),
            Err(SnapshotError::SizeMismatch {
                expected: 3,
                actual: 2,
                ..
            })
        ));
        assert!(matches!(
            verify(&file, b"abd"),
            Err(SnapshotError::ChecksumMismatch { .. })
        ));
    }
}
