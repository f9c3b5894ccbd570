//! The inventory of the snapshot storage: does a snapshot's artifact still exist, and
//! which artifacts are there at all. The periodic check (`ovc_engine::inventory`) marks
//! snapshots whose artifact vanished as MISSING; `ovc snapshot import` registers
//! artifacts whose index entries were lost. Both only list keys and read manifests —
//! never the data — so a check of thousands of snapshots stays cheap; a full checksum
//! verification is what a restore does before it touches its target.

use crate::artifact::{SnapshotError, read_manifest, read_manifest_sized};
use crate::key::check_prefix;
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::{ArtifactError, ArtifactStore};
use std::collections::HashSet;

/// The top-level prefix every artifact lives under (see [`crate::artifact_prefix`]).
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";

/// What is gone or changed of the artifact under `prefix`: empty when the manifest is
/// there (with `expected_sha256`, the index's record, when given) and every file it lists
/// exists. Only storage failures are errors — an unreachable storage must never make a
/// snapshot look missing.
pub async fn missing_parts(
    store: &dyn ArtifactStore,
    prefix: &str,
    expected_sha256: Option<&str>,
) -> Result<Vec<String>, ArtifactError> {
    let dir = check_prefix(prefix)?;
    let manifest = match read_manifest(store, &dir, expected_sha256).await {
        Ok((manifest, _)) => manifest,
        Err(SnapshotError::Artifact(e)) => return Err(e),
        Err(SnapshotError::MissingManifest { .. }) => return Ok(vec![MANIFEST_FILE.into()]),
        Err(SnapshotError::ChecksumMismatch { .. }) => {
            return Ok(vec![format!(
                "{MANIFEST_FILE} (changed: its sha256 is not the recorded one)"
            )]);
        }
        Err(e) => return Ok(vec![format!("{MANIFEST_FILE} ({e})")]),
    };
    let present: HashSet<String> = store.list(&dir).await?.into_iter().collect();
    Ok(manifest
        .files
        .iter()
        .filter(|f| !present.contains(&format!("{dir}{}", f.name)))
        .map(|f| f.name.clone())
        .collect())
}

/// An artifact found in the storage, described by its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundArtifact {
    /// Its prefix (`snapshots/<project>/<vcluster>/<id>/`).
    pub prefix: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json`'s bytes (`Snapshot.sha256`).
    pub manifest_sha256: String,
    /// Every file plus the manifest, in bytes (`Snapshot.size_bytes`).
    pub size_bytes: u64,
    /// The storage's URL of the prefix (`Snapshot.location`).
    pub location: String,
}

/// Every artifact under [`SNAPSHOTS_PREFIX`] with a readable manifest, and the manifests
/// that could not be read (key and why), each in key order. Data files are not read.
pub async fn find_artifacts(
    store: &dyn ArtifactStore,
) -> Result<(Vec<FoundArtifact>, Vec<(String, SnapshotError)>), ArtifactError> {
    let suffix = format!("/{MANIFEST_FILE}");
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for key in store.list(SNAPSHOTS_PREFIX).await? {
        let Some(dir) = key.strip_suffix(&suffix) else {
            continue;
        };
        let prefix = format!("{dir}/");
        match read_manifest_sized(store, &prefix, None).await {
            Ok((manifest, manifest_sha256, manifest_len)) => {
                let size_bytes = manifest.files.iter().map(|f| f.size).sum::<u64>() + manifest_len;
                found.push(FoundArtifact {
                    location: store.url(&prefix),
                    prefix,
                    manifest,
                    manifest_sha256,
                    size_bytes,
                });
            }
            Err(SnapshotError::Artifact(e)) => return Err(e),
            Err(e) => unreadable.push((key, e)),
        }
    }
    Ok((found, unreadable))
}
