//! How ovc's snapshot storage is named to a vcluster, whose pod writes (and its restore
//! pod reads) the snapshot itself (docs/vcluster-mechanics.md §4, §5).
//!
//! vcluster wants a URL of its own form (`s3://BUCKET/KEY` with `region`/`url`/
//! `force-path-style` in the query, or an Azure blob's `https://` URL; pkg/snapshot/
//! options.go `Parse`) and a storage-options JSON carrying the credentials
//! (`snapshotapi.Options`: `type` plus `s3` / `azure`). [`vcluster_storage`] builds both
//! from an [`ObjectLocation`] and the credentials of ovc's own environment
//! ([`StorageCredentials`]: `AWS_*` for S3, `AZURE_*` for Azure). A store the vcluster
//! pod cannot reach (`file://`, `memory://`) or cannot write (GCS: vcluster has no GCS
//! storage) is refused.
//!
//! The credentials go only into the options, which go only into Secrets; the URL holds
//! none, and [`StorageCredentials::redact`] masks them in any text the driver passes on
//! (a vcluster's error message may quote what it was given).

use super::{KubeError, KubeResult};
use ovc_types::ObjectLocation;
use ovc_types::error::Code;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The environment variables whose values are handed to a vcluster as credentials.
pub const CREDENTIAL_VARS: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
];

/// The snapshot-storage credentials a vcluster pod is given: ovc's own (the process
/// environment's [`CREDENTIAL_VARS`]), so the vcluster writes where ovc reads.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageCredentials {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for StorageCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which are set, never their values.
        f.debug_struct("StorageCredentials")
            .field("set", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StorageCredentials {
    /// The credentials of the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(
            CREDENTIAL_VARS
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))),
        )
    }

    /// The credentials of `vars` (names of [`CREDENTIAL_VARS`]; others are ignored, empty
    /// values are unset).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: vars
                .into_iter()
                .filter(|(k, v)| !v.is_empty() && CREDENTIAL_VARS.contains(&k.as_str()))
                .collect(),
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// `text` with every credential value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let mut values: Vec<&String> = self.vars.values().filter(|v| v.len() >= 4).collect();
        // Longest first: a value containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for v in values {
            out = out.replace(v.as_str(), "***");
        }
        out
    }

    /// A field of `AZURE_STORAGE_CONNECTION_STRING` (`AccountKey`, ...).
    fn connection_field(&self, name: &str) -> Option<String> {
        self.var("AZURE_STORAGE_CONNECTION_STRING")?
            .split(';')
            .find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
    }
}

/// What a vcluster is told about where its snapshot goes.
#[derive(Clone, PartialEq)]
pub struct VclusterStorage {
    /// The URL in vcluster's form (`spec.url` of a snapshot request; no credentials).
    pub url: String,
    /// The storage options (`snapshotOptions` / `VCLUSTER_STORAGE_OPTIONS`), credentials
    /// included: only ever written into Secrets.
    pub options: Value,
}

impl std::fmt::Debug for VclusterStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VclusterStorage")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `%`-escapes what a query value cannot hold as is.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URL and options that send a vcluster's snapshot to `location`, with `creds`.
/// Refuses (permanent `FAILED_PRECONDITION`, reason `SNAPSHOT_STORAGE_UNREACHABLE`) a
/// local store and GCS.
pub fn vcluster_storage(
    location: &ObjectLocation,
    creds: &StorageCredentials,
) -> KubeResult<VclusterStorage> {
    match location {
        ObjectLocation::S3 {
            bucket,
            key,
            region,
            endpoint,
            path_style,
        } => {
            let mut query = vec![format!("region={}", query_escape(region))];
            let mut s3 = json!({"bucket": bucket, "key": key, "region": region});
            if let Some(endpoint) = endpoint {
                // vcluster's `url` option is base64 in the URL (options.go: `url,base64`).
                query.push(format!("url={}", query_escape(&base64(endpoint))));
                s3["url"] = json!(endpoint);
                if *path_style {
                    query.push("force-path-style=true".into());
                    s3["force-path-style"] = json!(true);
                }
            }
            for (field, var) in [
                ("access-key-id", "AWS_ACCESS_KEY_ID"),
                ("secret-access-key", "AWS_SECRET_ACCESS_KEY"),
                ("session-token", "AWS_SESSION_TOKEN"),
            ] {
                if let Some(v) = creds.var(var) {
                    s3[field] = json!(v);
                }
            }
            Ok(VclusterStorage {
                url: format!("s3://{bucket}/{key}?{}", query.join("&")),
                options: json!({"type": "s3", "s3": s3}),
            })
        }
        ObjectLocation::Azblob { .. } => {
            let url = location.url();
            if !url.starts_with("https://") {
                return Err(unreachable(
                    location,
                    "vcluster reads Azure blobs only over https:// (its URL form); the \
                     endpoint of the snapshot storage is not https",
                ));
            }
            let mut azure = json!({"blob-url": url});
            let key = creds
                .var("AZURE_STORAGE_KEY")
                .map(str::to_string)
                .or_else(|| creds.connection_field("AccountKey"));
            if let Some(key) = key {
                azure["storage-key"] = json!(key);
            }
            let sas = creds
                .var("AZURE_STORAGE_SAS_TOKEN")
                .map(str::to_string)
                .or_else(|| creds.connection_field("SharedAccessSignature"));
            if let Some(sas) = sas {
                azure["sas"] = json!(sas);
            }
            for (field, var) in [
                ("tenant-id", "AZURE_TENANT_ID"),
                ("client-id", "AZURE_CLIENT_ID"),
                ("client-secret", "AZURE_CLIENT_SECRET"),
            ] {
                if let Some(v) = creds.var(var) {
                    azure[field] = json!(v);
                }
            }
            Ok(VclusterStorage {
                url,
                options: json!({"type": "azure", "azure": azure}),
            })
        }
        ObjectLocation::Gcs { .. } => Err(unreachable(
            location,
            "vcluster has no Google Cloud Storage backend (it writes to s3://, oci://, \
             container:// or Azure https://); use an S3 or Azure snapshot storage with the \
             kube host",
        )),
        ObjectLocation::Local { .. } => Err(unreachable(
            location,
            "the vcluster pod writes its snapshot itself and cannot reach a store local to \
             ovc (file://, memory://); configure an s3:// or azblob:// snapshot storage for \
             the kube host",
        )),
    }
}

fn unreachable(location: &ObjectLocation, why: &str) -> KubeError {
    KubeError::refused(
        Code::FailedPrecondition,
        "SNAPSHOT_STORAGE_UNREACHABLE",
        format!("snapshot storage {}: {why}", location.url()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> StorageCredentials {
        StorageCredentials::from_vars([
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                "wJalrXUtnFEMI/K7MDENG".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ])
    }

    #[test]
    fn s3_compatible_endpoints_go_into_the_query_as_vcluster_parses_it() {
        let loc = ObjectLocation::S3 {
            bucket: "b".into(),
            key: "snapshots/p/v/1/backing-store.bin".into(),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: true,
        };
        let s = vcluster_storage(&loc, &creds()).unwrap();
        assert_eq!(
            s.url,
            format!(
                "s3://b/snapshots/p/v/1/backing-store.bin?region=us-east-1&url={}&force-path-style=true",
                query_escape(&base64("http://127.0.0.1:9000"))
            )
        );
        assert_eq!(s.options["type"], "s3");
        assert_eq!(s.options["s3"]["url"], "http://127.0.0.1:9000");
        assert_eq!(s.options["s3"]["access-key-id"], "AKIDEXAMPLE");
        assert!(!s.url.contains("AKIDEXAMPLE") && !s.url.contains("wJalr"));
        assert!(!format!("{s:?}").contains("wJalr"));
    }

    #[test]
    fn aws_s3_has_only_the_region() {
        let loc = ObjectLocation::S3 {
            bucket: "b".into(),
            key: "k".into(),
            region: "eu-west-1".into(),
            endpoint: None,
            path_style: true,
        };
        let s = vcluster_storage(&loc, &StorageCredentials::default()).unwrap();
        assert_eq!(s.url, "s3://b/k?region=eu-west-1");
        assert!(s.options["s3"].get("access-key-id").is_none());
    }

    #[test]
    fn azure_takes_the_key_of_a_connection_string() {
        let loc = ObjectLocation::Azblob {
            endpoint: "https://acct.blob.core.windows.net".into(),
            container: "c".into(),
            key: "k/backing-store.bin".into(),
        };
        let creds = StorageCredentials::from_vars([(
            "AZURE_STORAGE_CONNECTION_STRING".to_string(),
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3CR3TKEY==".to_string(),
        )]);
        let s = vcluster_storage(&loc, &creds).unwrap();
        assert_eq!(
            s.url,
            "https://acct.blob.core.windows.net/c/k/backing-store.bin"
        );
        assert_eq!(s.options["azure"]["storage-key"], "S3CR3TKEY==");
        assert_eq!(s.options["azure"]["blob-url"], s.url);
    }

    #[test]
    fn local_and_gcs_stores_are_refused() {
        for loc in [
            ObjectLocation::Local {
                url: "file:///tmp/x/backing-store.bin".into(),
            },
            ObjectLocation::Gcs {
                bucket: "b".into(),
                key: "k".into(),
                endpoint: None,
            },
        ] {
            match vcluster_storage(&loc, &creds()) {
                Err(KubeError::Refused { reason, code, .. }) => {
                    assert_eq!(reason, "SNAPSHOT_STORAGE_UNREACHABLE");
                    assert_eq!(code, Code::FailedPrecondition);
                }
                other => panic!("{loc:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn redact_masks_every_credential() {
        let text = "access denied for AKIDEXAMPLE with wJalrXUtnFEMI/K7MDENG";
        assert_eq!(creds().redact(text), "access denied for *** with ***");
    }
}
