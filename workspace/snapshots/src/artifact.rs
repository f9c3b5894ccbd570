//! Writing and reading whole snapshots through an [`ArtifactStore`].
//!
//! Two promises live here. Writing puts the data before the manifest, so a manifest only
//! exists once the data it describes does; a crash in between leaves a snapshot without
//! a manifest, which reads as [`SnapshotError::MissingManifest`], and writing again with
//! the same inputs produces the same bytes. Reading verifies the size and sha256 of every
//! file the manifest lists before it returns anything, so a restore never starts from
//! damaged data.

use crate::key::check_prefix;
use crate::manifest::{
    BACKING_STORE_FILE, MANIFEST_FILE, Manifest, ManifestFile, ManifestInput, OBJECTS_FILE,
    ObjectsExport,
};
use crate::{ArtifactError, ArtifactReader, ArtifactStore, ArtifactWriter};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

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
    /// The snapshot has no per-object export (its manifest says why).
    #[error("the snapshot has no per-object export: {reason}")]
    NoObjectExport {
        /// Why.
        reason: String,
    },
    /// A line of the per-object export is not an object.
    #[error("snapshot file {name}, line {line}: {message}")]
    BadObjectLine {
        /// The file's name in the manifest.
        name: String,
        /// The line, from 1.
        line: u64,
        /// What is wrong with it.
        message: String,
    },
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

/// A snapshot being written: the backing-store data is streamed in with
/// [`SnapshotWriter::write`] (hashed as it goes, uploaded in parts), then
/// [`SnapshotWriter::finish`] closes the data object and writes [`MANIFEST_FILE`]. Memory
/// stays bounded by the store's part size, whatever the snapshot's size.
///
/// Keys come from the prefix, which the caller derives from the operation: a retried
/// write goes to the same keys and overwrites. If a manifest is already there (a repeat
/// after a crash), the prefix is emptied first, so at no point does a manifest describe
/// data that is not there.
pub struct SnapshotWriter<'a> {
    store: &'a dyn ArtifactStore,
    dir: String,
    input: ManifestInput,
    writer: Box<dyn ArtifactWriter>,
    hasher: Sha256,
    size: u64,
    /// The per-object export being written (opened by the first object).
    objects: Option<ObjectsPart>,
    /// Why there is no export, when the driver said so.
    objects_unavailable: Option<String>,
    /// What the driver said about the data.
    backing_store: Option<serde_json::Value>,
}

/// The [`OBJECTS_FILE`] upload: lines are gathered into chunks of [`OBJECT_CHUNK`]
/// before they go to the store, so memory stays bounded by it and the store's part size.
struct ObjectsPart {
    writer: Box<dyn ArtifactWriter>,
    hasher: Sha256,
    size: u64,
    count: u64,
    buf: Vec<u8>,
}

/// Bytes of export lines gathered before a write to the store.
const OBJECT_CHUNK: usize = 256 * 1024;

impl std::fmt::Debug for SnapshotWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("dir", &self.dir)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'a> SnapshotWriter<'a> {
    /// Starts writing the snapshot under `prefix` (see [`crate::artifact_prefix`]).
    /// `created_at` must be RFC 3339 ([`SnapshotError::BadManifest`] otherwise).
    pub async fn begin(
        store: &'a dyn ArtifactStore,
        prefix: &str,
        input: ManifestInput,
    ) -> Result<Self, SnapshotError> {
        if let Err(e) = chrono::DateTime::parse_from_rfc3339(&input.created_at) {
            return Err(SnapshotError::BadManifest(format!(
                "created_at {:?} is not an RFC 3339 timestamp: {e}",
                input.created_at
            )));
        }
        let dir = check_prefix(prefix)?;
        let manifest_key = format!("{dir}{MANIFEST_FILE}");
        if store.reader(&manifest_key).await?.is_some() {
            delete_snapshot(store, &dir).await?;
        }
        let writer = store.writer(&format!("{dir}{BACKING_STORE_FILE}")).await?;
        Ok(Self {
            store,
            dir,
            input,
            writer,
            hasher: Sha256::new(),
            size: 0,
            objects: None,
            objects_unavailable: None,
            backing_store: None,
        })
    }

    /// Appends one object to the per-object export ([`OBJECTS_FILE`]): `line` is its
    /// JSON, on one line (a newline is added). The first object opens the upload.
    pub async fn write_object_line(&mut self, line: &[u8]) -> Result<(), SnapshotError> {
        if line.contains(&b'\n') {
            return Err(SnapshotError::BadManifest(
                "an exported object must be one line of JSON".into(),
            ));
        }
        if self.objects.is_none() {
            let writer = self
                .store
                .writer(&format!("{}{OBJECTS_FILE}", self.dir))
                .await?;
            self.objects = Some(ObjectsPart {
                writer,
                hasher: Sha256::new(),
                size: 0,
                count: 0,
                buf: Vec::with_capacity(OBJECT_CHUNK),
            });
        }
        let part = self.objects.as_mut().expect("opened above");
        part.buf.extend_from_slice(line);
        part.buf.push(b'\n');
        part.count += 1;
        if part.buf.len() >= OBJECT_CHUNK {
            part.flush().await?;
        }
        Ok(())
    }

    /// There will be no per-object export, because `reason` (recorded in the manifest).
    pub fn objects_unavailable(&mut self, reason: String) {
        self.objects_unavailable = Some(reason);
    }

    /// Records what the driver says about the data (kind, etcd revision) in the manifest.
    pub fn record_backing_store(&mut self, info: serde_json::Value) {
        self.backing_store = Some(info);
    }

    /// Appends `chunk` to the backing-store data.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), SnapshotError> {
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        self.writer.write(chunk).await?;
        Ok(())
    }

    /// Bytes of backing-store data written so far.
    pub fn written_bytes(&self) -> u64 {
        self.size
    }

    /// Completes the data object and the per-object export (an empty one when no object
    /// was given and the driver did not say why there is none), then writes the manifest
    /// describing them.
    pub async fn finish(mut self) -> Result<WrittenSnapshot, SnapshotError> {
        self.writer.close().await?;
        self.write_manifest().await
    }

    async fn write_manifest(mut self) -> Result<WrittenSnapshot, SnapshotError> {
        let mut files = vec![ManifestFile {
            name: BACKING_STORE_FILE.to_string(),
            size: self.size,
            sha256: hex(&std::mem::take(&mut self.hasher).finalize()),
        }];
        let objects = match (self.objects_unavailable.take(), self.objects.take()) {
            (Some(reason), part) => {
                if let Some(mut part) = part {
                    part.writer.abort().await;
                }
                ObjectsExport::Unavailable { reason }
            }
            (None, Some(mut part)) => {
                if let Err(e) = part.finish().await {
                    part.writer.abort().await;
                    return Err(e);
                }
                files.push(ManifestFile {
                    name: OBJECTS_FILE.to_string(),
                    size: part.size,
                    sha256: hex(&std::mem::take(&mut part.hasher).finalize()),
                });
                ObjectsExport::Exported {
                    file: OBJECTS_FILE.to_string(),
                    count: part.count,
                }
            }
            (None, None) => {
                self.store
                    .put(&format!("{}{OBJECTS_FILE}", self.dir), Vec::new())
                    .await?;
                files.push(ManifestFile::describe(OBJECTS_FILE, b""));
                ObjectsExport::Exported {
                    file: OBJECTS_FILE.to_string(),
                    count: 0,
                }
            }
        };
        let data_bytes: u64 = files.iter().map(|f| f.size).sum();
        let manifest =
            Manifest::new(self.input, files).with_export(self.backing_store, Some(objects));
        let manifest_bytes = manifest
            .to_bytes()
            .map_err(|e| SnapshotError::BadManifest(format!("cannot encode the manifest: {e}")))?;
        let manifest_sha256 = crate::manifest::sha256_hex(&manifest_bytes);
        let size_bytes = data_bytes + manifest_bytes.len() as u64;
        self.store
            .put(&format!("{}{MANIFEST_FILE}", self.dir), manifest_bytes)
            .await?;
        Ok(WrittenSnapshot {
            manifest,
            manifest_sha256,
            size_bytes,
            location: self.store.url(&self.dir),
        })
    }

    /// Where the data object is written, for a host that writes it itself
    /// ([`SnapshotWriter::adopt_written`]).
    pub fn data_location(&self) -> ovc_types::ObjectLocation {
        self.store
            .object_location(&format!("{}{BACKING_STORE_FILE}", self.dir))
    }

    /// The data object was written by someone else (a vcluster pod writes its snapshot
    /// straight to object storage): this writer's own upload is given up unwritten, the
    /// object is read back as a stream to measure its size and sha256, and the manifest
    /// describing it is written. Nothing written through [`SnapshotWriter::write`] may
    /// precede this. A missing object is [`SnapshotError::MissingFile`].
    pub async fn adopt_written(mut self) -> Result<WrittenSnapshot, SnapshotError> {
        if self.size > 0 {
            return Err(SnapshotError::BadManifest(
                "bytes were written through the writer; the object cannot also be adopted"
                    .to_string(),
            ));
        }
        self.writer.abort().await;
        if self.objects_unavailable.is_none() {
            self.objects_unavailable =
                Some("the host wrote the backing-store data itself; ovc did not read it".into());
        }
        let key = format!("{}{BACKING_STORE_FILE}", self.dir);
        let Some(reader) = self.store.reader(&key).await? else {
            return Err(SnapshotError::MissingFile {
                name: BACKING_STORE_FILE.to_string(),
                key,
            });
        };
        let mut stream = reader.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            self.hasher.update(&chunk);
            self.size += chunk.len() as u64;
        }
        self.write_manifest().await
    }

    /// Gives the write up: the data upload (and the export's) is aborted, no manifest is
    /// written.
    pub async fn abort(mut self) {
        self.writer.abort().await;
        if let Some(mut part) = self.objects.take() {
            part.writer.abort().await;
        }
    }
}

impl ObjectsPart {
    async fn flush(&mut self) -> Result<(), SnapshotError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(OBJECT_CHUNK),
        ));
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        self.writer.write(chunk).await?;
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), SnapshotError> {
        self.flush().await?;
        self.writer.close().await?;
        Ok(())
    }
}

/// Writes a snapshot of `data` under `prefix` in one call ([`SnapshotWriter`] for
/// streams), without a per-object export (the manifest says so).
pub async fn write_snapshot(
    store: &dyn ArtifactStore,
    prefix: &str,
    manifest_base: ManifestInput,
    data: &[u8],
) -> Result<WrittenSnapshot, SnapshotError> {
    let mut w = SnapshotWriter::begin(store, prefix, manifest_base).await?;
    w.objects_unavailable("written from bytes, without a per-object export".into());
    for chunk in data.chunks(crate::opendal_store::WRITE_CHUNK_BYTES) {
        if let Err(e) = w.write(Bytes::copy_from_slice(chunk)).await {
            w.abort().await;
            return Err(e);
        }
    }
    w.finish().await
}

/// Reads and parses the manifest under `prefix`; with `expected_sha256` (the index's
/// record, `Snapshot.sha256`), its bytes must have that sha256. Returns the manifest and
/// the sha256 of its bytes.
pub async fn read_manifest(
    store: &dyn ArtifactStore,
    prefix: &str,
    expected_sha256: Option<&str>,
) -> Result<(Manifest, String), SnapshotError> {
    let (manifest, sha256, _) = read_manifest_sized(store, prefix, expected_sha256).await?;
    Ok((manifest, sha256))
}

/// [`read_manifest`], with the manifest's size in bytes (one read of the object).
pub(crate) async fn read_manifest_sized(
    store: &dyn ArtifactStore,
    prefix: &str,
    expected_sha256: Option<&str>,
) -> Result<(Manifest, String, u64), SnapshotError> {
    let dir = check_prefix(prefix)?;
    let manifest_key = format!("{dir}{MANIFEST_FILE}");
    let bytes = store
        .get(&manifest_key)
        .await?
        .ok_or_else(|| SnapshotError::MissingManifest {
            key: manifest_key.clone(),
        })?;
    let actual = crate::manifest::sha256_hex(&bytes);
    if let Some(expected) = expected_sha256
        && !expected.eq_ignore_ascii_case(&actual)
    {
        return Err(SnapshotError::ChecksumMismatch {
            name: MANIFEST_FILE.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    let manifest = Manifest::from_bytes(&bytes)
        .map_err(|e| SnapshotError::BadManifest(format!("{manifest_key}: {e}")))?;
    if manifest.file(BACKING_STORE_FILE).is_none() {
        return Err(SnapshotError::BadManifest(format!(
            "{manifest_key}: lists no {BACKING_STORE_FILE}"
        )));
    }
    Ok((manifest, actual, bytes.len() as u64))
}

/// Verifies the whole snapshot under `prefix` without keeping it in memory: the manifest
/// (against `expected_sha256` when given), then the size and sha256 of every file it
/// lists, streamed. Errors name the file: [`SnapshotError::MissingManifest`],
/// [`SnapshotError::BadManifest`], [`SnapshotError::MissingFile`],
/// [`SnapshotError::SizeMismatch`], [`SnapshotError::ChecksumMismatch`], and
/// [`SnapshotError::Artifact`] from the store.
pub async fn verify_snapshot(
    store: &dyn ArtifactStore,
    prefix: &str,
    expected_sha256: Option<&str>,
) -> Result<Manifest, SnapshotError> {
    let (manifest, _) = read_manifest(store, prefix, expected_sha256).await?;
    for file in &manifest.files {
        let mut stream = open_file(store, prefix, file).await?;
        while stream.next_chunk().await?.is_some() {}
    }
    Ok(manifest)
}

/// Opens the backing-store data of a snapshot whose `manifest` was read from `prefix`,
/// as a stream checked against the manifest as it is read.
pub async fn open_backing_store(
    store: &dyn ArtifactStore,
    prefix: &str,
    manifest: &Manifest,
) -> Result<VerifiedStream, SnapshotError> {
    let file = manifest.file(BACKING_STORE_FILE).ok_or_else(|| {
        SnapshotError::BadManifest(format!("the manifest lists no {BACKING_STORE_FILE}"))
    })?;
    open_file(store, prefix, file).await
}

pub(crate) async fn open_file(
    store: &dyn ArtifactStore,
    prefix: &str,
    file: &ManifestFile,
) -> Result<VerifiedStream, SnapshotError> {
    let dir = check_prefix(prefix)?;
    let key = format!("{dir}{}", file.name);
    let reader = store
        .reader(&key)
        .await?
        .ok_or_else(|| SnapshotError::MissingFile {
            name: file.name.clone(),
            key: key.clone(),
        })?;
    if reader.size != file.size {
        return Err(SnapshotError::SizeMismatch {
            name: file.name.clone(),
            expected: file.size,
            actual: reader.size,
        });
    }
    Ok(VerifiedStream {
        file: file.clone(),
        reader,
        hasher: Sha256::new(),
        seen: 0,
        done: false,
    })
}

/// One file of a snapshot, read in chunks and checked against the manifest: the last
/// [`VerifiedStream::next_chunk`] (the one that returns `Ok(None)`) fails instead if
/// the size or sha256 differ, so a consumer that only commits at the end never commits
/// damaged data.
pub struct VerifiedStream {
    file: ManifestFile,
    reader: ArtifactReader,
    hasher: Sha256,
    seen: u64,
    done: bool,
}

impl std::fmt::Debug for VerifiedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedStream")
            .field("file", &self.file)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl VerifiedStream {
    /// The manifest's record of the file.
    pub fn file(&self) -> &ManifestFile {
        &self.file
    }

    /// The next chunk; `Ok(None)` at the end, once size and sha256 matched.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        match self.reader.stream.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                self.seen += chunk.len() as u64;
                if self.seen > self.file.size {
                    return Err(SnapshotError::SizeMismatch {
                        name: self.file.name.clone(),
                        expected: self.file.size,
                        actual: self.seen,
                    });
                }
                self.hasher.update(&chunk);
                Ok(Some(chunk))
            }
            None => {
                self.done = true;
                if self.seen != self.file.size {
                    return Err(SnapshotError::SizeMismatch {
                        name: self.file.name.clone(),
                        expected: self.file.size,
                        actual: self.seen,
                    });
                }
                let actual = hex(&std::mem::take(&mut self.hasher).finalize());
                if !actual.eq_ignore_ascii_case(&self.file.sha256) {
                    return Err(SnapshotError::ChecksumMismatch {
                        name: self.file.name.clone(),
                        expected: self.file.sha256.clone(),
                        actual,
                    });
                }
                Ok(None)
            }
        }
    }
}

/// Reads the snapshot under `prefix` and returns its manifest and backing-store data,
/// whole, after verifying every file ([`verify_snapshot`]). For small snapshots and
/// tests; restores stream with [`open_backing_store`].
pub async fn read_snapshot(
    store: &dyn ArtifactStore,
    prefix: &str,
) -> Result<(Manifest, Vec<u8>), SnapshotError> {
    let manifest = verify_snapshot(store, prefix, None).await?;
    let mut stream = open_backing_store(store, prefix, &manifest).await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.next_chunk().await? {
        data.extend_from_slice(&chunk);
    }
    Ok((manifest, data))
}

fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
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
            SnapshotError::NoObjectExport { reason: "r".into() },
            SnapshotError::BadObjectLine {
                name: "f".into(),
                line: 1,
                message: "m".into(),
            },
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
