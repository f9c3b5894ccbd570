//! [`ArtifactStore`] over Apache OpenDAL, chosen by URL.
//!
//! OpenDAL gives one API over local directories and object stores: a local directory
//! (`file:///abs/path` or a plain path), `memory://` (a fresh, empty store per call, for
//! tests), and `s3://`, `gcs://`, `azblob://` ([`crate::object_url`]). Large objects are
//! written in [`WRITE_CHUNK_BYTES`] parts (multipart uploads on object stores) and read
//! as a stream, so memory stays bounded whatever the size. On a local directory every
//! write goes to a temporary file under `<root>/.ovc-tmp/`, is synced, and is renamed
//! into place, so a crash never leaves a half-written object under its real key.

use crate::key::{check_key, check_prefix};
use crate::object_url::{ProcessEnv, StorageEnv};
use crate::{ArtifactError, ArtifactReader, ArtifactStore, ArtifactWriter};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use opendal::{ErrorKind, Operator};
use ovc_types::ObjectLocation;
use std::io;
use std::path::Path;

/// The directory, under the root of a local store, that holds files being written.
pub const LOCAL_TMP_DIR: &str = ".ovc-tmp";

/// The part size of streamed writes (S3 wants at least 5 MiB per part).
pub const WRITE_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Parts uploaded at once by a streamed write.
const WRITE_CONCURRENCY: usize = 2;

/// Snapshot artifact storage through an [`opendal::Operator`].
#[derive(Debug, Clone)]
pub struct OpendalArtifacts {
    op: Operator,
    /// The URL of the root, ending with `/`; [`ArtifactStore::url`] appends the key.
    root_url: String,
    /// GCS: streamed writes go through a resumable upload session (JSON API) instead of
    /// the XML multipart API, which OpenDAL uses only for conditional writes; so a
    /// streamed write deletes the old object and then creates the key if absent.
    resumable_writes: bool,
    /// The root as an object location (its key is the prefix); `None`: a local or
    /// memory store, reachable only from this process.
    object_root: Option<ObjectLocation>,
}

impl OpendalArtifacts {
    /// Opens the storage named by `url`:
    ///
    /// - `file:///abs/path` (or `file://localhost/abs/path`; `%XX` escapes are decoded),
    /// - a plain filesystem path, absolute or relative to the current directory,
    /// - `memory://`: a new, empty in-memory store (for tests).
    ///
    /// - `s3://bucket/prefix`, `gcs://bucket/prefix` (or `gs://`), `azblob://container/prefix`,
    ///   with options in the query and credentials from the environment
    ///   ([`crate::object_url`]; a URL carrying a secret is refused).
    ///
    /// A local directory is created if it does not exist. Any other scheme, an empty URL,
    /// or a malformed URL is refused.
    pub fn from_url(url: &str) -> Result<Self, ArtifactError> {
        Self::from_url_with_env(url, &ProcessEnv)
    }

    /// [`Self::from_url`], with object-store settings and credentials read from `env`
    /// instead of the process environment (see [`crate::object_url`]).
    pub fn from_url_with_env(url: &str, env: &dyn StorageEnv) -> Result<Self, ArtifactError> {
        if url.is_empty() {
            return Err(ArtifactError::Refused(
                "the artifact storage URL is empty (expected file:///abs/path, a path, or \
                 memory://)"
                    .to_string(),
            ));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self::local_dir(Path::new(url));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = if rest.starts_with('/') {
                    rest
                } else if let Some(path) = rest.strip_prefix("localhost") {
                    path
                } else {
                    return Err(ArtifactError::Refused(format!(
                        "artifact storage URL {url:?}: a file URL needs an absolute path \
                         (file:///abs/path); hosts other than localhost are not supported"
                    )));
                };
                if !path.starts_with('/') {
                    return Err(ArtifactError::Refused(format!(
                        "artifact storage URL {url:?}: a file URL needs an absolute path \
                         (file:///abs/path)"
                    )));
                }
                if path.contains(['?', '#']) {
                    return Err(ArtifactError::Refused(format!(
                        "artifact storage URL {url:?}: a file URL cannot have a query or \
                         fragment"
                    )));
                }
                let decoded = percent_decode(path).ok_or_else(|| {
                    ArtifactError::Refused(format!(
                        "artifact storage URL {url:?}: bad %-escape or not UTF-8"
                    ))
                })?;
                Self::local_dir(Path::new(&decoded))
            }
            "memory" => {
                if !rest.trim_start_matches('/').is_empty() {
                    return Err(ArtifactError::Refused(format!(
                        "artifact storage URL {url:?}: write memory:// (nothing after it)"
                    )));
                }
                Self::memory()
            }
            s @ ("s3" | "gcs" | "gs" | "azblob") => {
                let opened = crate::object_url::open(url, s, rest, env)?;
                Ok(Self {
                    op: opened.op,
                    root_url: opened.root_url,
                    resumable_writes: opened.resumable_writes,
                    object_root: Some(opened.root),
                })
            }
            _ => Err(ArtifactError::Refused(format!(
                "artifact storage URL {:?}: unknown scheme {scheme:?} (supported: \
                 file:///abs/path, a plain path, memory://, s3://bucket/prefix, \
                 gcs://bucket/prefix, azblob://container/prefix)",
                url.split('?').next().unwrap_or(url)
            ))),
        }
    }

    /// Opens the local directory `path` (created if missing), relative paths against the
    /// current directory. [`ArtifactStore::url`] names keys as `file://<canonical root>/key`.
    pub fn local_dir(path: &Path) -> Result<Self, ArtifactError> {
        if path.as_os_str().is_empty() {
            return Err(ArtifactError::Refused(
                "the artifact directory path is empty".to_string(),
            ));
        }
        let abs = std::path::absolute(path).map_err(|e| {
            ArtifactError::Unavailable(format!("artifact directory {}: {e}", path.display()))
        })?;
        let root = utf8(&abs)?;
        let tmp_dir = abs.join(LOCAL_TMP_DIR);
        let tmp = utf8(&tmp_dir)?;
        let builder = opendal::services::Fs::default()
            .root(root)
            .atomic_write_dir(tmp);
        let op = Operator::new(builder).map_err(|e| map_err("open", root, e))?;
        // The builder created the directory; name it by its canonical path.
        let canonical = std::fs::canonicalize(&abs).map_err(|e| {
            ArtifactError::Unavailable(format!("artifact directory {}: {e}", abs.display()))
        })?;
        let canonical = utf8(&canonical)?;
        let mut root_url = format!("file://{}", percent_encode(canonical));
        if !root_url.ends_with('/') {
            root_url.push('/');
        }
        Ok(Self {
            op,
            root_url,
            resumable_writes: false,
            object_root: None,
        })
    }

    /// A new, empty in-memory store; [`ArtifactStore::url`] names keys as
    /// `memory:///key`.
    pub fn memory() -> Result<Self, ArtifactError> {
        let op = Operator::new(opendal::services::Memory::default())
            .map_err(|e| map_err("open", "memory://", e))?;
        Ok(Self {
            op,
            root_url: "memory:///".to_string(),
            resumable_writes: false,
            object_root: None,
        })
    }

    /// The URL of the store's root, ending with `/`.
    pub fn root_url(&self) -> &str {
        &self.root_url
    }
}

#[async_trait]
impl ArtifactStore for OpendalArtifacts {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArtifactError> {
        check_key(key)?;
        self.op
            .write_with(key, bytes)
            .content_type(content_type(key))
            .await
            .map(|_| ())
            .map_err(|e| map_err("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ArtifactError> {
        check_key(key)?;
        match self.op.read(key).await {
            Ok(buffer) => Ok(Some(buffer.to_vec())),
            // A "directory", or a path through a file, is not an object: absent, as on an
            // object store.
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory)
                    || matches!(
                        io_kind(&e),
                        Some(io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory)
                    ) =>
            {
                Ok(None)
            }
            Err(e) => Err(map_err("get", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        check_key(key)?;
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err("delete", key, e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), ArtifactError> {
        let dir = check_prefix(prefix)?;
        match self.op.delete_with(&dir).recursive(true).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err("delete", &dir, e)),
        }
    }

    fn url(&self, key: &str) -> String {
        format!("{}{}", self.root_url, percent_encode(key))
    }

    fn object_location(&self, key: &str) -> ObjectLocation {
        let join = |prefix: &str| {
            if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{}/{key}", prefix.trim_end_matches('/'))
            }
        };
        match &self.object_root {
            None => ObjectLocation::Local { url: self.url(key) },
            Some(ObjectLocation::S3 {
                bucket,
                key: prefix,
                region,
                endpoint,
                path_style,
            }) => ObjectLocation::S3 {
                bucket: bucket.clone(),
                key: join(prefix),
                region: region.clone(),
                endpoint: endpoint.clone(),
                path_style: *path_style,
            },
            Some(ObjectLocation::Gcs {
                bucket,
                key: prefix,
                endpoint,
            }) => ObjectLocation::Gcs {
                bucket: bucket.clone(),
                key: join(prefix),
                endpoint: endpoint.clone(),
            },
            Some(ObjectLocation::Azblob {
                endpoint,
                container,
                key: prefix,
            }) => ObjectLocation::Azblob {
                endpoint: endpoint.clone(),
                container: container.clone(),
                key: join(prefix),
            },
            Some(ObjectLocation::Local { url }) => ObjectLocation::Local { url: url.clone() },
        }
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ArtifactWriter>, ArtifactError> {
        check_key(key)?;
        if self.resumable_writes {
            self.delete(key).await?;
        }
        let writer = self
            .op
            .writer_with(key)
            .content_type(content_type(key))
            .chunk(WRITE_CHUNK_BYTES)
            .concurrent(WRITE_CONCURRENCY)
            .if_not_exists(self.resumable_writes)
            .await
            .map_err(|e| map_err("put", key, e))?;
        Ok(Box::new(OpendalWriter {
            key: key.to_string(),
            writer: Some(writer),
        }))
    }

    async fn reader(&self, key: &str) -> Result<Option<ArtifactReader>, ArtifactError> {
        check_key(key)?;
        let size = match self.op.stat(key).await {
            Ok(meta) if meta.is_dir() => return Ok(None),
            Ok(meta) => meta.content_length(),
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(map_err("get", key, e)),
        };
        // One streamed GET for the whole object (ranged reads of parts cost a request
        // each, and some servers re-read the object for every range).
        let reader = match self.op.reader(key).await {
            Ok(r) => r,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(map_err("get", key, e)),
        };
        let owned = key.to_string();
        let stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| map_err("get", key, e))?
            .map_err(move |e| ArtifactError::Unavailable(format!("get {owned}: {e}")));
        Ok(Some(ArtifactReader {
            size,
            stream: Box::pin(stream),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArtifactError> {
        let dir = if prefix.is_empty() {
            String::new()
        } else {
            check_prefix(prefix)?
        };
        let entries = match self.op.list_with(&dir).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(map_err("list", &dir, e)),
        };
        let mut keys: Vec<String> = entries
            .into_iter()
            .filter(|e| !e.metadata().is_dir())
            .map(|e| e.path().trim_start_matches('/').to_string())
            .filter(|k| !k.starts_with(LOCAL_TMP_DIR))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// A streamed write of one object through an [`opendal::Writer`].
struct OpendalWriter {
    key: String,
    /// `None` once closed or aborted.
    writer: Option<opendal::Writer>,
}

impl std::fmt::Debug for OpendalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpendalWriter")
            .field("key", &self.key)
            .finish()
    }
}

#[async_trait]
impl ArtifactWriter for OpendalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ArtifactError> {
        let w = self.writer.as_mut().ok_or_else(|| {
            ArtifactError::Refused(format!("put {}: the writer is closed", self.key))
        })?;
        w.write(chunk)
            .await
            .map_err(|e| map_err("put", &self.key, e))
    }

    async fn close(&mut self) -> Result<(), ArtifactError> {
        let mut w = self.writer.take().ok_or_else(|| {
            ArtifactError::Refused(format!("put {}: the writer is closed", self.key))
        })?;
        w.close()
            .await
            .map(|_| ())
            .map_err(|e| map_err("put", &self.key, e))
    }

    async fn abort(&mut self) {
        if let Some(mut w) = self.writer.take() {
            let _ = w.abort().await;
        }
    }
}

/// The content type objects are stored with (object stores show it; some emulators
/// answer `null` without one).
fn content_type(key: &str) -> &'static str {
    if key.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

fn is_absent(e: &opendal::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory)
        || matches!(
            io_kind(e),
            Some(io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory)
        )
}

/// Maps an OpenDAL error: what retrying may fix (I/O, a full disk, rate limits,
/// conflicts, anything OpenDAL marks temporary) is `Unavailable`; what it cannot (bad
/// config, permissions, a directory or file in the way, a name the filesystem refuses, …)
/// is `Refused`. OpenDAL marks most local I/O errors temporary, so the underlying
/// `std::io::Error` is looked at first.
fn map_err(action: &str, key: &str, e: opendal::Error) -> ArtifactError {
    let message = format!("{action} {key}: {e}");
    if matches!(
        io_kind(&e),
        Some(
            io::ErrorKind::IsADirectory
                | io::ErrorKind::NotADirectory
                | io::ErrorKind::InvalidFilename
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::ReadOnlyFilesystem
                | io::ErrorKind::FileTooLarge
                | io::ErrorKind::PermissionDenied
        )
    ) {
        return ArtifactError::Refused(message);
    }
    if e.is_temporary() {
        return ArtifactError::Unavailable(message);
    }
    match e.kind() {
        ErrorKind::Unexpected | ErrorKind::RateLimited | ErrorKind::Conflict => {
            ArtifactError::Unavailable(message)
        }
        _ => ArtifactError::Refused(message),
    }
}

/// The kind of the `std::io::Error` behind `e`, if there is one.
fn io_kind(e: &opendal::Error) -> Option<io::ErrorKind> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

fn utf8(path: &Path) -> Result<&str, ArtifactError> {
    path.to_str().ok_or_else(|| {
        ArtifactError::Refused(format!(
            "artifact directory {} is not UTF-8",
            path.display()
        ))
    })
}

/// Escapes everything but unreserved characters and `/` (RFC 3986), for URLs.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` on a bad escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_roundtrip() {
        for s in ["/a b/c%d/ü", "/plain/path", "/x?y#z"] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_encode("/a b"), "/a%20b");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn temporary_and_io_errors_are_unavailable() {
        let io = opendal::Error::new(ErrorKind::Unexpected, "disk on fire");
        assert!(matches!(
            map_err("put", "k", io),
            ArtifactError::Unavailable(_)
        ));
        let denied = opendal::Error::new(ErrorKind::PermissionDenied, "no");
        assert!(matches!(
            map_err("put", "k", denied),
            ArtifactError::Refused(_)
        ));
        let temp = opendal::Error::new(ErrorKind::PermissionDenied, "later").set_temporary();
        assert!(matches!(
            map_err("put", "k", temp),
            ArtifactError::Unavailable(_)
        ));
        // OpenDAL marks these temporary; they are not.
        for kind in [io::ErrorKind::IsADirectory, io::ErrorKind::NotADirectory] {
            let e = opendal::Error::new(ErrorKind::Unexpected, "fs")
                .set_temporary()
                .set_source(io::Error::from(kind));
            assert_eq!(io_kind(&e), Some(kind));
            assert!(matches!(map_err("put", "k", e), ArtifactError::Refused(_)));
        }
        let full = opendal::Error::new(ErrorKind::Unexpected, "fs")
            .set_temporary()
            .set_source(io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(
            map_err("put", "k", full),
            ArtifactError::Unavailable(_)
        ));
    }
}
