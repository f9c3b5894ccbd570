//! `ovc snapshot objects` and `ovc snapshot object`: what a snapshot holds, object by
//! object, and one object taken out to re-apply it by hand (selective restore, as one
//! would with Velero), without restoring the whole vcluster.
//!
//! Both read the snapshot's per-object export (`objects.ndjson`) straight from the
//! snapshot storage (`--artifacts`, as `ovc snapshot import` and the workers do; works
//! while no server runs), checked against the manifest's size and sha256: nothing is
//! printed from a file that does not verify, and the error names the file. A snapshot
//! without an export (taken before exports existed, or written by a host that made its
//! own archive) says why; it still restores as a whole.

use anyhow::Context;
use clap::Args;
use ovc_driver::ExportedObject;
use ovc_snapshots::{ArtifactStore, MANIFEST_FILE, OpendalArtifacts, open_objects, read_manifest};
use serde::Serialize;

/// Arguments of `ovc snapshot objects`.
#[derive(Debug, Args)]
pub struct ObjectsArgs {
    /// The snapshot's id.
    pub snapshot: String,
    /// The snapshot storage, as `ovc worker --artifacts` (credentials from the
    /// environment).
    #[arg(long, env = "OVC_ARTIFACTS")]
    pub artifacts: String,
    /// Only objects of this kind (case-insensitive, e.g. `ConfigMap`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only objects in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Arguments of `ovc snapshot object`.
#[derive(Debug, Args)]
pub struct ObjectArgs {
    /// The snapshot's id.
    pub snapshot: String,
    /// The object: `KIND/NAMESPACE/NAME`, or `KIND/NAME` when cluster-scoped (kind
    /// case-insensitive).
    pub object: String,
    /// The snapshot storage, as `ovc worker --artifacts`.
    #[arg(long, env = "OVC_ARTIFACTS")]
    pub artifacts: String,
    /// Print the export's whole line (key, and base64 for protobuf-stored objects)
    /// instead of the object ready to apply (server-set metadata removed).
    #[arg(long)]
    pub raw: bool,
}

/// One row of `ovc snapshot objects`.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    /// `json` or `protobuf`: whether `ovc snapshot object` can print it as an object.
    stored_as: &'static str,
}

/// Metadata the API server sets, removed so the printed object can be created again.
const SERVER_SET: [&str; 6] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
];

/// Runs `ovc snapshot objects`; `project` is the global `--project` (narrows the search).
pub async fn list(args: ObjectsArgs, project: Option<String>, json: bool) -> anyhow::Result<i32> {
    let store = open_store(&args.artifacts)?;
    let prefix = find_snapshot(&store, &args.snapshot, project.as_deref()).await?;
    let (manifest, _) = read_manifest(&store, &prefix, None)
        .await
        .with_context(|| format!("reading {}", store.url(&format!("{prefix}{MANIFEST_FILE}"))))?;
    // First pass: the whole file against its checksum, so nothing is printed from a
    // damaged export; second pass: print as it streams (re-checked at its end).
    let mut lines = open_objects(&store, &prefix, &manifest).await?;
    while lines.next_line().await?.is_some() {}
    let mut lines = open_objects(&store, &prefix, &manifest).await?;
    let kind = args.kind.as_deref().map(str::to_ascii_lowercase);
    let mut shown = 0u64;
    if json {
        print!("[");
    }
    while let Some(line) = lines.next_line().await? {
        let o = decode(lines.name(), line)?;
        if kind
            .as_ref()
            .is_some_and(|k| o.kind.to_ascii_lowercase() != *k)
            || args
                .namespace
                .as_ref()
                .is_some_and(|n| o.namespace.as_ref() != Some(n))
        {
            continue;
        }
        let row = Row {
            stored_as: if o.object.is_some() {
                "json"
            } else {
                "protobuf"
            },
            api_version: o.api_version,
            kind: o.kind,
            namespace: o.namespace,
            name: o.name,
        };
        if json {
            let sep = if shown == 0 { "" } else { "," };
            print!("{sep}\n  {}", serde_json::to_string(&row)?);
        } else {
            if shown == 0 {
                println!(
                    "{:<28} {:<24} {:<40} {:<24} STORED",
                    "KIND", "NAMESPACE", "NAME", "APIVERSION"
                );
            }
            println!(
                "{:<28} {:<24} {:<40} {:<24} {}",
                row.kind,
                row.namespace.as_deref().unwrap_or("-"),
                row.name,
                row.api_version,
                row.stored_as
            );
        }
        shown += 1;
    }
    if json {
        println!("{}]", if shown == 0 { "" } else { "\n" });
    } else if shown == 0 {
        println!("no objects");
    }
    Ok(0)
}

/// Runs `ovc snapshot object`: prints the object (YAML, or JSON with `-o json`); exit 1
/// when the snapshot has no such object.
pub async fn get(args: ObjectArgs, project: Option<String>, json: bool) -> anyhow::Result<i32> {
    let wanted = Reference::parse(&args.object)?;
    let store = open_store(&args.artifacts)?;
    let prefix = find_snapshot(&store, &args.snapshot, project.as_deref()).await?;
    let (manifest, _) = read_manifest(&store, &prefix, None)
        .await
        .with_context(|| format!("reading {}", store.url(&format!("{prefix}{MANIFEST_FILE}"))))?;
    let mut lines = open_objects(&store, &prefix, &manifest).await?;
    // One pass: the match is kept and printed only once the whole file verified.
    let mut found = None;
    while let Some(line) = lines.next_line().await? {
        if found.is_some() {
            continue;
        }
        let o = decode(lines.name(), line)?;
        if wanted.matches(&o) {
            found = Some(o);
        }
    }
    let Some(o) = found else {
        eprintln!(
            "snapshot {} has no object {} (list them with `ovc snapshot objects {}`)",
            args.snapshot, args.object, args.snapshot
        );
        return Ok(1);
    };
    let value = if args.raw {
        serde_json::to_value(&o)?
    } else {
        let Some(mut object) = o.object else {
            anyhow::bail!(
                "{} is stored as Kubernetes protobuf, which ovc does not decode; \
                 `--raw` prints its export line with the bytes in base64",
                o.reference()
            );
        };
        if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for field in SERVER_SET {
                meta.remove(field);
            }
        }
        object
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!(
            "{}",
            serde_saphyr::to_string(&value).context("printing the object as YAML")?
        );
    }
    Ok(0)
}

fn decode(file: &str, line: serde_json::Value) -> anyhow::Result<ExportedObject> {
    serde_json::from_value(line)
        .with_context(|| format!("snapshot file {file}: a line is not an exported object"))
}

fn open_store(url: &str) -> anyhow::Result<OpendalArtifacts> {
    OpendalArtifacts::from_url(url).with_context(|| {
        format!(
            "opening snapshot storage {}",
            ovc_snapshots::object_url::redact(url)
        )
    })
}

/// The prefix of snapshot `id` in `store`: `snapshots/<project>/<vcluster>/<id>/`, found
/// by its manifest's key (under `snapshots/<project>/` when the project is given).
async fn find_snapshot(
    store: &OpendalArtifacts,
    id: &str,
    project: Option<&str>,
) -> anyhow::Result<String> {
    let id: ovc_types::SnapshotId = id
        .parse()
        .map_err(|e| anyhow::anyhow!("{id:?} is not a snapshot id: {e}"))?;
    let under = match project {
        Some(p) => format!("snapshots/{p}/"),
        None => "snapshots/".to_string(),
    };
    let tail = format!("/{id}/{MANIFEST_FILE}");
    let keys = store
        .list(&under)
        .await
        .with_context(|| format!("listing {}", store.url(&under)))?;
    let mut found: Vec<String> = keys
        .into_iter()
        .filter(|k| k.ends_with(&tail) && k.matches('/').count() == 4)
        .map(|k| k.trim_end_matches(MANIFEST_FILE).to_string())
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!(
            "no snapshot {id} in {} (no {MANIFEST_FILE} under it: never completed, deleted, \
             or in another storage or project)",
            store.url(&under)
        ),
        _ => anyhow::bail!(
            "snapshot {id} is under several vclusters in {} ({}); give --project",
            store.url(&under),
            found.join(", ")
        ),
    }
}

/// `KIND/NAMESPACE/NAME` or `KIND/NAME`.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl Reference {
    fn parse(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [kind, name] if !kind.is_empty() && !name.is_empty() => Ok(Self {
                kind: kind.to_ascii_lowercase(),
                namespace: None,
                name: name.to_string(),
            }),
            [kind, ns, name] if !kind.is_empty() && !ns.is_empty() && !name.is_empty() => {
                Ok(Self {
                    kind: kind.to_ascii_lowercase(),
                    namespace: Some(ns.to_string()),
                    name: name.to_string(),
                })
            }
            _ => anyhow::bail!(
                "{s:?}: expected KIND/NAMESPACE/NAME, or KIND/NAME for a cluster-scoped object"
            ),
        }
    }

    fn matches(&self, o: &ExportedObject) -> bool {
        o.kind.to_ascii_lowercase() == self.kind
            && o.namespace == self.namespace
            && o.name == self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = Reference::parse("ConfigMap/default/x").unwrap();
        assert_eq!(
            r,
            Reference {
                kind: "configmap".into(),
                namespace: Some("default".into()),
                name: "x".into()
            }
        );
        assert_eq!(
            Reference::parse("Namespace/kube-system").unwrap().namespace,
            None
        );
        for bad in ["x", "a//b", "/a/b", "a/b/c/d", ""] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
