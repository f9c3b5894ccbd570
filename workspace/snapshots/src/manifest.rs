//! The artifact format (DESIGN.md §8): where a snapshot's files live and what its
//! `manifest.json` says about them.
//!
//! This module is pure (no IO, no clock): it names keys, describes files (size and
//! sha256) and turns a [`Manifest`] into bytes and back. The same inputs always give the
//! same bytes — object keys in `metadata` are sorted and the timestamp is passed in — so
//! a step that writes a snapshot again after a crash writes exactly what it wrote before.
//! [`crate::artifact`] does the IO.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format written by this version (`Manifest::format`).
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's file name inside a snapshot's prefix.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The backing-store data file's name inside a snapshot's prefix.
pub const BACKING_STORE_FILE: &str = "backing-store.bin";

/// The per-object export's file name inside a snapshot's prefix: one JSON object per
/// line (`apiVersion`, `kind`, `namespace`, `name`, `key`, and `object` or `protobuf`).
pub const OBJECTS_FILE: &str = "objects.ndjson";

/// What the manifest says about the per-object export (DESIGN.md §8, for selective
/// restore): where it is, or why there is none. A manifest without it (`objects` absent)
/// was written before exports existed; its snapshot restores as any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ObjectsExport {
    /// The export is the file `file` (listed in `files` with size and sha256), holding
    /// `count` objects, taken from the same read as the backing-store data.
    Exported {
        /// Its file name ([`OBJECTS_FILE`]).
        file: String,
        /// How many objects (lines) it holds.
        count: u64,
    },
    /// There is no export, and why (the host wrote its snapshot in a format ovc does not
    /// read).
    Unavailable {
        /// Why, for people.
        reason: String,
    },
}

/// The prefix of a snapshot's artifact: `snapshots/<project>/<vcluster>/<snapshot-id>/`
/// (with the trailing `/`).
///
/// The parts are not checked here: project and vcluster names are validated by
/// `ovc-types`, and a part that would make a bad key (`..`, `/`, …) is refused by the
/// store when the key is used.
pub fn artifact_prefix(project: &str, vcluster: &str, snapshot_id: &str) -> String {
    format!("snapshots/{project}/{vcluster}/{snapshot_id}/")
}

/// What the caller knows about a snapshot; [`crate::write_snapshot`] adds the files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestInput {
    /// The snapshot's id.
    pub snapshot_id: String,
    /// The project of the vcluster it was taken of.
    pub project: String,
    /// The name of the vcluster it was taken of.
    pub vcluster: String,
    /// When it was taken, RFC 3339 (from the injected clock: this crate never reads one).
    pub created_at: String,
    /// Spec, Helm values, versions, labels: opaque here, recorded as given (object keys
    /// sorted).
    pub metadata: serde_json::Value,
}

/// One file of a snapshot, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Its name inside the snapshot's prefix (a plain name, no `/`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl ManifestFile {
    /// Describes `data` stored as `name`.
    pub fn describe(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
        }
    }
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format version, [`FORMAT_VERSION`].
    pub format: u32,
    /// The snapshot's id.
    pub snapshot_id: String,
    /// The project of the vcluster it was taken of.
    pub project: String,
    /// The name of the vcluster it was taken of.
    pub vcluster: String,
    /// When it was taken, RFC 3339.
    pub created_at: String,
    /// Spec, Helm values, versions, labels (opaque here).
    pub metadata: serde_json::Value,
    /// Every file of the snapshot besides the manifest, with size and checksum.
    pub files: Vec<ManifestFile>,
    /// What the driver said about the backing-store data (`kind`; for etcd the
    /// `revision` every key was read at and the `keys`); absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_store: Option<serde_json::Value>,
    /// The per-object export; absent in manifests written before exports existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectsExport>,
}

impl Manifest {
    /// A manifest of the current format for `input` and `files`; `metadata`'s object keys
    /// are sorted so that equal values always encode to equal bytes.
    pub fn new(input: ManifestInput, files: Vec<ManifestFile>) -> Self {
        Self {
            format: FORMAT_VERSION,
            snapshot_id: input.snapshot_id,
            project: input.project,
            vcluster: input.vcluster,
            created_at: input.created_at,
            metadata: sorted(input.metadata),
            files,
            backing_store: None,
            objects: None,
        }
    }

    /// The same manifest with the driver's description of the data and the export.
    pub fn with_export(
        mut self,
        backing_store: Option<serde_json::Value>,
        objects: Option<ObjectsExport>,
    ) -> Self {
        self.backing_store = backing_store.map(sorted);
        self.objects = objects;
        self
    }

    /// The file called `name`, if the manifest lists one.
    pub fn file(&self, name: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The bytes of `manifest.json`: pretty JSON with a final newline, deterministic.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses `manifest.json` and checks what a reader relies on: the format version, and
    /// file names that are plain, distinct names. Errors are human-readable.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if manifest.format != FORMAT_VERSION {
            return Err(format!(
                "format {} is not supported (this version reads format {FORMAT_VERSION})",
                manifest.format
            ));
        }
        for (i, file) in manifest.files.iter().enumerate() {
            if !is_plain_name(&file.name) || file.name == MANIFEST_FILE {
                return Err(format!("file name {:?} is not allowed", file.name));
            }
            if manifest.files[..i].iter().any(|f| f.name == file.name) {
                return Err(format!("file {:?} is listed twice", file.name));
            }
        }
        if let Some(ObjectsExport::Exported { file, .. }) = &manifest.objects
            && manifest.file(file).is_none()
        {
            return Err(format!(
                "the object export {file:?} is not among the files it lists"
            ));
        }
        Ok(manifest)
    }
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A file name inside a snapshot's prefix: a valid key with no `/`.
fn is_plain_name(name: &str) -> bool {
    !name.contains('/') && crate::key::check_key(name).is_ok()
}

/// `value` with every object's keys in sorted order, whatever serde_json's map type
/// (`preserve_order` may be switched on by another crate of the build).
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(metadata: serde_json::Value) -> ManifestInput {
        ManifestInput {
            snapshot_id: "0190a8f2-7c1e-7000-8000-000000000001".into(),
            project: "p".into(),
            vcluster: "v".into(),
            created_at: "2026-11-26T10:00:00Z".into(),
            metadata,
        }
    }

    #[test]
    fn prefix_layout() {
        assert_eq!(artifact_prefix("p", "v", "id"), "snapshots/p/v/id/");
    }

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn encoding_is_deterministic_and_roundtrips() {
        let files = vec![ManifestFile::describe(BACKING_STORE_FILE, b"data")];
        let a = Manifest::new(
            input(json!({"b": 1, "a": {"y": 2, "x": [{"d": 1, "c": 2}]}})),
            files.clone(),
        );
        let b = Manifest::new(
            input(json!({"a": {"x": [{"c": 2, "d": 1}], "y": 2}, "b": 1})),
            files,
        );
        let (ab, bb) = (a.to_bytes().unwrap(), b.to_bytes().unwrap());
        assert_eq!(ab, bb);
        let text = String::from_utf8(ab.clone()).unwrap();
        assert!(
            text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap(),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        assert_eq!(Manifest::from_bytes(&ab).unwrap(), a);
        assert_eq!(a.format, FORMAT_VERSION);
        assert_eq!(a.file(BACKING_STORE_FILE).unwrap().size, 4);
        assert!(a.file("other").is_none());
    }

    #[test]
    fn exports_encode_with_their_state_and_old_manifests_read_without() {
        let files = vec![
            ManifestFile::describe(BACKING_STORE_FILE, b"data"),
            ManifestFile::describe(OBJECTS_FILE, b"{}\n"),
        ];
        let m = Manifest::new(input(json!({})), files).with_export(
            Some(json!({"revision": 7, "kind": "etcd"})),
            Some(ObjectsExport::Exported {
                file: OBJECTS_FILE.into(),
                count: 1,
            }),
        );
        let doc: serde_json::Value = serde_json::from_slice(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(
            doc["objects"],
            json!({"state": "exported", "file": OBJECTS_FILE, "count": 1})
        );
        assert_eq!(doc["backing_store"]["revision"], 7);
        assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap(), m);
        let none = m.clone().with_export(
            None,
            Some(ObjectsExport::Unavailable {
                reason: "why".into(),
            }),
        );
        let doc: serde_json::Value = serde_json::from_slice(&none.to_bytes().unwrap()).unwrap();
        assert_eq!(
            doc["objects"],
            json!({"state": "unavailable", "reason": "why"})
        );
        // A manifest of before exports: no keys, reads as None.
        let old = Manifest::new(input(json!({})), vec![ManifestFile::describe("f", b"x")]);
        let text = String::from_utf8(old.to_bytes().unwrap()).unwrap();
        assert!(
            !text.contains("objects") && !text.contains("backing_store"),
            "{text}"
        );
        assert_eq!(Manifest::from_bytes(text.as_bytes()).unwrap().objects, None);
    }

    #[test]
    fn bad_manifests_are_explained() {
        let good = Manifest::new(input(json!({})), vec![ManifestFile::describe("f", b"x")]);
        let with = |edit: &dyn Fn(&mut Manifest)| {
            let mut m = good.clone();
            edit(&mut m);
            Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap_err()
        };
        assert!(with(&|m| m.format = 2).contains("format 2 is not supported"));
        assert!(with(&|m| m.files[0].name = "../x".into()).contains("not allowed"));
        assert!(with(&|m| m.files[0].name = "a/b".into()).contains("not allowed"));
        assert!(with(&|m| m.files[0].name = MANIFEST_FILE.into()).contains("not allowed"));
        assert!(with(&|m| m.files.push(m.files[0].clone())).contains("listed twice"));
        assert!(
            with(&|m| {
                m.objects = Some(ObjectsExport::Exported {
                    file: OBJECTS_FILE.into(),
                    count: 1,
                })
            })
            .contains("not among the files")
        );
        assert!(
            Manifest::from_bytes(b"{")
                .unwrap_err()
                .contains("not a manifest")
        );
        assert!(
            Manifest::from_bytes(b"{}")
                .unwrap_err()
                .contains("not a manifest")
        );
    }
}
