//! `ovc snapshot import`: registers snapshot artifacts whose index entries were lost (a
//! database restored from an older backup, a new database beside an old bucket), from
//! their manifests alone. It works on the database and the snapshot storage directly,
//! like `ovc token`, not through a server.
//!
//! Each artifact under `snapshots/` with a readable manifest and no snapshot of its id in
//! the store becomes a READY snapshot (`SnapshotImported`, appended to a stream that must
//! not exist yet, so two imports at once register it once). Known ids are left alone,
//! whatever their state. Manifests that cannot be read, or that do not belong where they
//! are (a copy under another vcluster's prefix would be restored from the wrong place),
//! are reported and make the command exit 1. Data files are not read here: a restore
//! verifies every checksum before it touches its target.

use crate::serve::DatabaseArgs;
use anyhow::Context;
use clap::Args;
use ovc_snapshots::inventory::{FoundArtifact, find_artifacts};
use ovc_snapshots::{ArtifactStore, OpendalArtifacts, artifact_prefix};
use ovc_store::{Commit, CommitOutcome, ExpectedVersion, NewEvent, Store, StreamAppend};
use ovc_types::event::{Event, EventMetadata, StreamName};
use ovc_types::{ProjectName, SnapshotId, VClusterId, VClusterName};
use serde::Serialize;

/// Arguments of `ovc snapshot import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: DatabaseArgs,
    /// The snapshot storage to scan, as `ovc worker --artifacts` (credentials from the
    /// environment).
    #[arg(long, env = "OVC_ARTIFACTS")]
    pub artifacts: String,
    /// Only say what would be imported; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What happened to one artifact.
#[derive(Debug, Serialize)]
struct Line {
    snapshot_id: String,
    project: String,
    vcluster: String,
    location: String,
    /// `imported`, `would_import`, `known` (with its state) or `refused`.
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// The whole report, as `-o json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    imported: usize,
    known: usize,
    refused: usize,
    artifacts: Vec<Line>,
}

/// Runs `ovc snapshot import`; `project` (the global `--project`) limits it to one
/// project; `json` prints the report as JSON. Exit code 1 when an artifact was refused.
pub async fn run(args: ImportArgs, project: Option<String>, json: bool) -> anyhow::Result<i32> {
    let project: Option<ProjectName> = project
        .map(|p| {
            p.parse()
                .map_err(|e| anyhow::anyhow!("--project {p:?}: {e}"))
        })
        .transpose()?;
    let store = args.store.open().await?;
    let pending = store.pending_migrations().await?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the database is not migrated (pending: {pending:?}); run `ovc migrate` first"
        );
    }
    let artifacts = OpendalArtifacts::from_url(&args.artifacts).with_context(|| {
        format!(
            "opening snapshot storage {}",
            ovc_snapshots::object_url::redact(&args.artifacts)
        )
    })?;
    let (found, unreadable) = find_artifacts(&artifacts).await.with_context(|| {
        format!(
            "listing snapshot storage {}",
            ovc_snapshots::object_url::redact(&args.artifacts)
        )
    })?;
    let mut lines = Vec::new();
    for (key, e) in unreadable {
        lines.push(Line {
            snapshot_id: String::new(),
            project: String::new(),
            vcluster: String::new(),
            location: artifacts.url(&key),
            outcome: "refused".into(),
            detail: Some(e.to_string()),
        });
    }
    for artifact in found {
        if let Some(p) = &project
            && artifact.manifest.project != p.as_str()
        {
            continue;
        }
        let outcome = import_one(store.as_ref(), &artifact, args.dry_run).await?;
        let (outcome, detail) = match outcome {
            Outcome::Imported if args.dry_run => ("would_import".to_string(), None),
            Outcome::Imported => ("imported".to_string(), None),
            Outcome::Known(state) => ("known".to_string(), Some(state)),
            Outcome::Refused(why) => ("refused".to_string(), Some(why)),
        };
        lines.push(Line {
            snapshot_id: artifact.manifest.snapshot_id.clone(),
            project: artifact.manifest.project.clone(),
            vcluster: artifact.manifest.vcluster.clone(),
            location: ovc_snapshots::object_url::redact(&artifact.location),
            outcome,
            detail,
        });
    }
    let count = |o: &str| lines.iter().filter(|l| l.outcome == o).count();
    let report = Report {
        imported: count("imported") + count("would_import"),
        known: count("known"),
        refused: count("refused"),
        artifacts: lines,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for l in &report.artifacts {
            let detail = l
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            println!(
                "{:<13} {} {}/{} {}{detail}",
                l.outcome, l.snapshot_id, l.project, l.vcluster, l.location
            );
        }
        let verb = if args.dry_run {
            "would import"
        } else {
            "imported"
        };
        println!(
            "{verb} {}, already known {}, refused {}",
            report.imported, report.known, report.refused
        );
    }
    Ok(if report.refused > 0 { 1 } else { 0 })
}

enum Outcome {
    Imported,
    Known(String),
    Refused(String),
}

async fn import_one(
    store: &dyn Store,
    artifact: &FoundArtifact,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let m = &artifact.manifest;
    let Ok(id) = m.snapshot_id.parse::<uuid::Uuid>().map(SnapshotId) else {
        return Ok(Outcome::Refused(format!(
            "snapshot id {:?} is not a uuid",
            m.snapshot_id
        )));
    };
    let (project, vcluster): (ProjectName, VClusterName) =
        match (m.project.parse(), m.vcluster.parse()) {
            (Ok(p), Ok(v)) => (p, v),
            _ => {
                return Ok(Outcome::Refused(format!(
                    "project {:?} / vcluster {:?} are not valid names",
                    m.project, m.vcluster
                )));
            }
        };
    let expected = artifact_prefix(project.as_str(), vcluster.as_str(), &m.snapshot_id);
    if artifact.prefix != expected {
        return Ok(Outcome::Refused(format!(
            "the manifest names snapshot {id} of {project}/{vcluster}, which belongs under \
             {expected}; move it there to import it"
        )));
    }
    let Ok(taken_at) = chrono::DateTime::parse_from_rfc3339(&m.created_at) else {
        return Ok(Outcome::Refused(format!(
            "created_at {:?} is not an RFC 3339 time",
            m.created_at
        )));
    };
    if let Some(known) = store.get_snapshot(id).await? {
        return Ok(Outcome::Known(known.state.as_str().to_string()));
    }
    // The uid recorded by this version; older manifests: the live vcluster of that name.
    let vcluster_uid = match m.metadata["vcluster_uid"]
        .as_str()
        .and_then(|u| u.parse::<uuid::Uuid>().ok())
    {
        Some(uid) => VClusterId(uid),
        None => store
            .get_vcluster(&project, &vcluster)
            .await?
            .map(|v| v.uid)
            .unwrap_or(VClusterId(uuid::Uuid::nil())),
    };
    if dry_run {
        return Ok(Outcome::Imported);
    }
    let event = Event::SnapshotImported {
        vcluster_uid,
        vcluster,
        project,
        description: m.metadata["description"].as_str().map(str::to_string),
        taken_at: taken_at.with_timezone(&chrono::Utc),
        size_bytes: artifact.size_bytes,
        sha256: artifact.manifest_sha256.clone(),
        location: artifact.location.clone(),
        metadata: m.metadata.clone(),
    };
    let commit = Commit {
        appends: vec![StreamAppend {
            stream: StreamName::snapshot(id),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent {
                event,
                metadata: EventMetadata {
                    actor: Some("ovc snapshot import".into()),
                    ..EventMetadata::default()
                },
            }],
        }],
        ..Commit::default()
    };
    match store.commit(commit).await {
        Ok(CommitOutcome::Committed(_)) => Ok(Outcome::Imported),
        Ok(CommitOutcome::Duplicate { .. }) => Ok(Outcome::Known("READY".into())),
        // Another import registered it meanwhile.
        Err(ovc_store::Error::WrongExpectedVersion { .. }) => Ok(Outcome::Known("READY".into())),
        Err(e) => Err(e.into()),
    }
}
