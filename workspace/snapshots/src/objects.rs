//! Reading a snapshot's per-object export (DESIGN.md §8: "a per-object export for
//! selective restore"), so one can list what a snapshot holds and take one object out
//! to re-apply it by hand, without restoring the whole vcluster.
//!
//! The export is [`crate::OBJECTS_FILE`], one JSON object per line, written by the snapshot
//! step from the same read of the backing store as the data ([`crate::SnapshotWriter::write_object_line`]).
//! It is a file of the manifest like the data: listed with size and sha256, checked by
//! every verify and the inventory. Here it is read as lines from a [`VerifiedStream`],
//! so the last [`ObjectLines::next_line`] fails instead of ending when the file is not
//! the one the manifest describes; a reader that acts only after the end never acts on
//! damaged data.

use crate::ArtifactStore;
use crate::artifact::{SnapshotError, VerifiedStream, open_file};
use crate::manifest::{Manifest, ObjectsExport};

/// The longest line accepted (an etcd value is at most 1.5 MiB by default; base64 and
/// the envelope add a third): past it the file is refused rather than buffered.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Opens the per-object export of the snapshot whose `manifest` was read from `prefix`.
/// [`SnapshotError::NoObjectExport`] when the manifest has none (with its reason, or
/// because it predates exports); [`SnapshotError::MissingFile`] /
/// [`SnapshotError::SizeMismatch`] naming the file when it is not there as listed.
pub async fn open_objects(
    store: &dyn ArtifactStore,
    prefix: &str,
    manifest: &Manifest,
) -> Result<ObjectLines, SnapshotError> {
    let file = match &manifest.objects {
        None => {
            return Err(SnapshotError::NoObjectExport {
                reason: "it was taken before ovc wrote per-object exports (its data still \
                         restores as a whole)"
                    .into(),
            });
        }
        Some(ObjectsExport::Unavailable { reason }) => {
            return Err(SnapshotError::NoObjectExport {
                reason: reason.clone(),
            });
        }
        Some(ObjectsExport::Exported { file, .. }) => file,
    };
    let listed = manifest.file(file).ok_or_else(|| {
        SnapshotError::BadManifest(format!("the object export {file:?} is not listed"))
    })?;
    Ok(ObjectLines {
        stream: open_file(store, prefix, listed).await?,
        buf: Vec::new(),
        line: 0,
        ended: false,
    })
}

/// The lines of an export, each checked to be one JSON object; the end only once the
/// whole file matched its manifest.
#[derive(Debug)]
pub struct ObjectLines {
    stream: VerifiedStream,
    buf: Vec<u8>,
    line: u64,
    ended: bool,
}

impl ObjectLines {
    /// The file's name ([`OBJECTS_FILE`]).
    pub fn name(&self) -> &str {
        &self.stream.file().name
    }

    /// The next object, parsed; `Ok(None)` at the end, once size and sha256 matched.
    pub async fn next_line(&mut self) -> Result<Option<serde_json::Value>, SnapshotError> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(at + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                self.line += 1;
                return self.parse(&line).map(Some);
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.bad("the last line has no newline (the file is cut)"));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(self.bad(&format!("a line is longer than {MAX_LINE_BYTES} bytes")));
            }
            match self.stream.next_chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.ended = true,
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<serde_json::Value, SnapshotError> {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(self.bad("not a JSON object")),
            Err(e) => Err(self.bad(&format!("not JSON: {e}"))),
        }
    }

    fn bad(&self, message: &str) -> SnapshotError {
        SnapshotError::BadObjectLine {
            name: self.stream.file().name.clone(),
            line: self.line.max(1),
            message: message.to_string(),
        }
    }
}
