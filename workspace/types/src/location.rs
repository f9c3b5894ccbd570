//! Where one object of the snapshot storage lives, said structurally.
//!
//! A snapshot's data object is normally written by ovc itself, but a real vcluster writes
//! its snapshot straight to object storage from its own pod (docs/vcluster-mechanics.md
//! §4). The host driver then needs the object's bucket, key, region and endpoint, not a
//! URL string to re-parse: the snapshot storage says it with an [`ObjectLocation`], and
//! the driver translates that into whatever its host understands. Credentials are never
//! part of a location.

use serde::{Deserialize, Serialize};

/// One object of the snapshot storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectLocation {
    /// An S3 (or S3-compatible) object.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object's key (no leading `/`).
        key: String,
        /// The region.
        region: String,
        /// An S3-compatible endpoint (`None`: AWS's own).
        endpoint: Option<String>,
        /// Path-style addressing (`https://endpoint/bucket/key`).
        path_style: bool,
    },
    /// A Google Cloud Storage object.
    Gcs {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// A non-default endpoint (an emulator).
        endpoint: Option<String>,
    },
    /// An Azure Blob Storage blob.
    Azblob {
        /// The account's blob endpoint, e.g. `https://ACCOUNT.blob.core.windows.net`
        /// (no trailing `/`).
        endpoint: String,
        /// The container.
        container: String,
        /// The blob's name.
        key: String,
    },
    /// A file or memory store only this process can reach (`file://...`, `memory://...`).
    Local {
        /// Its URL.
        url: String,
    },
}

impl ObjectLocation {
    /// The location as one URL (`s3://bucket/key`, `gcs://bucket/key`, the blob's
    /// `https://` URL, or the local URL): for messages and as a stable name.
    pub fn url(&self) -> String {
        match self {
            ObjectLocation::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
            ObjectLocation::Gcs { bucket, key, .. } => format!("gcs://{bucket}/{key}"),
            ObjectLocation::Azblob {
                endpoint,
                container,
                key,
            } => format!("{endpoint}/{container}/{key}"),
            ObjectLocation::Local { url } => url.clone(),
        }
    }

    /// True for a store only this process can reach.
    pub fn is_local(&self) -> bool {
        matches!(self, ObjectLocation::Local { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_object() {
        let s3 = ObjectLocation::S3 {
            bucket: "b".into(),
            key: "snapshots/p/v/1/backing-store.bin".into(),
            region: "eu-west-1".into(),
            endpoint: None,
            path_style: true,
        };
        assert_eq!(s3.url(), "s3://b/snapshots/p/v/1/backing-store.bin");
        assert!(!s3.is_local());
        let az = ObjectLocation::Azblob {
            endpoint: "https://acct.blob.core.windows.net".into(),
            container: "c".into(),
            key: "k/x".into(),
        };
        assert_eq!(az.url(), "https://acct.blob.core.windows.net/c/k/x");
        assert!(
            ObjectLocation::Local {
                url: "memory://".into()
            }
            .is_local()
        );
    }
}
