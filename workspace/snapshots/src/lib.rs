//! Snapshot artifacts (DESIGN.md §8): where they are stored and what they look like.
//!
//! A snapshot is a directory of objects under
//! `snapshots/<project>/<vcluster>/<snapshot-id>/`: the backing-store data
//! (`backing-store.bin`), the per-object export (`objects.ndjson`) and a `manifest.json`
//! that names every file with its size and sha256. This crate keeps storage and format apart:
//!
//! - [`ArtifactStore`] (here) is the narrow storage interface the engine's steps use:
//!   put, get, delete a key or a prefix, name a key as a URL. [`key`] holds the rules every key
//!   obeys, so a key can never climb out of the storage root.
//! - [`OpendalArtifacts`] ([`opendal_store`]) implements it over Apache OpenDAL: a local
//!   directory (`file:///abs/path` or a plain path), `memory://` for tests, and object
//!   stores by URL (`s3://`, `gcs://`, `azblob://`, [`object_url`]).
//! - [`manifest`] is the artifact format (pure: encoding and checksums, no IO) and
//!   [`artifact`] writes and reads whole snapshots through any [`ArtifactStore`],
//!   writing the data before the manifest, verifying every checksum on read, and
//!   deleting the manifest before the data.
//! - [`inventory`] checks that artifacts still exist and finds the ones the index lost.
//! - [`objects`] reads the per-object export (`objects.ndjson`), verified, for listing a
//!   snapshot's objects and taking one out.

pub mod artifact;
pub mod inventory;
pub mod key;
pub mod manifest;
pub mod object_url;
pub mod objects;
pub mod opendal_store;

pub use artifact::{
    SnapshotError, SnapshotWriter, VerifiedStream, WrittenSnapshot, delete_snapshot,
    open_backing_store, read_manifest, read_snapshot, verify_snapshot, write_snapshot,
};
pub use manifest::{
    BACKING_STORE_FILE, FORMAT_VERSION, MANIFEST_FILE, Manifest, ManifestFile, ManifestInput,
    OBJECTS_FILE, ObjectsExport, artifact_prefix,
};
pub use object_url::{ProcessEnv, StorageEnv};
pub use objects::{ObjectLines, open_objects};
pub use opendal_store::OpendalArtifacts;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::fmt::Debug;

/// Why an artifact operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// Worth retrying (I/O, network).
    #[error("artifact storage unavailable: {0}")]
    Unavailable(String),
    /// The key is malformed or the storage refuses it.
    #[error("artifact storage refused: {0}")]
    Refused(String),
}

/// Where snapshot artifacts live (`snapshots/<project>/<vcluster>/<snapshot-id>/...`).
#[async_trait]
pub trait ArtifactStore: Send + Sync + Debug {
    /// Writes `bytes` at `key` (overwrites: uploads go to keys derived from ids, so a
    /// repeat writes the same bytes).
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArtifactError>;
    /// Reads `key` (`None`: absent).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ArtifactError>;
    /// Deletes the object at `key` (absent: nothing to do).
    async fn delete(&self, key: &str) -> Result<(), ArtifactError>;
    /// Deletes every object under `prefix` (absent: nothing to do).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), ArtifactError>;
    /// A URL naming `key`, for `Snapshot.location`.
    fn url(&self, key: &str) -> String;
    /// Where `key` lives, for a client other than this process (a vcluster pod writing
    /// its snapshot itself); [`ObjectLocation::Local`] for a store only this process can
    /// reach.
    fn object_location(&self, key: &str) -> ovc_types::ObjectLocation;
    /// Starts a streamed write of `key` (multipart on object stores). Nothing is visible
    /// under `key` until [`ArtifactWriter::close`] succeeds; a repeat overwrites.
    async fn writer(&self, key: &str) -> Result<Box<dyn ArtifactWriter>, ArtifactError>;
    /// Opens `key` for a streamed read (`None`: absent).
    async fn reader(&self, key: &str) -> Result<Option<ArtifactReader>, ArtifactError>;
    /// Every key under `prefix` (`""`: the whole store), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArtifactError>;
}

/// A streamed write of one object, from [`ArtifactStore::writer`].
#[async_trait]
pub trait ArtifactWriter: Send + Debug {
    /// Appends `chunk`.
    async fn write(&mut self, chunk: Bytes) -> Result<(), ArtifactError>;
    /// Completes the object: it exists under its key once this returns `Ok`.
    async fn close(&mut self) -> Result<(), ArtifactError>;
    /// Gives the write up (best effort: uploaded parts are discarded).
    async fn abort(&mut self);
}

/// A streamed read of one object, from [`ArtifactStore::reader`].
pub struct ArtifactReader {
    /// The object's size in bytes, as the store reports it.
    pub size: u64,
    /// Its content, in chunks.
    pub stream: BoxStream<'static, Result<Bytes, ArtifactError>>,
}

impl Debug for ArtifactReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}
