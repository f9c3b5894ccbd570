//! Pieces several workflows share: chart values from a spec, readiness waits, and the
//! snapshot artifact steps.

use async_trait::async_trait;
use bytes::Bytes;
use ovc_driver::{
    BackingStoreInfo, BackingStoreSink, BackingStoreSource, DriverError, DriverResult,
    ExportedObject, ReleaseValues,
};
use ovc_engine::{StepCtx, StepError, StepOutput, StepResult};
use ovc_snapshots::{
    BACKING_STORE_FILE, ManifestInput, SnapshotError, SnapshotWriter, VerifiedStream,
    WrittenSnapshot, artifact_prefix, open_backing_store, read_manifest, verify_snapshot,
};
use ovc_types::error::Code;
use ovc_types::event::{Event, StreamName};
use ovc_types::spec::VClusterSpec;
use ovc_types::{ObjectLocation, SnapshotId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often waits look again.
pub const CHECK_IN: Duration = Duration::from_millis(200);

/// The chart values for `spec`.
pub fn values(spec: &VClusterSpec) -> ReleaseValues {
    ReleaseValues {
        kubernetes_version: spec.kubernetes_version.clone(),
        control_plane: spec.control_plane.clone(),
        quota: spec.quota.clone(),
        labels: spec.labels.clone(),
        helm_values: spec.helm_values.clone(),
        chart_version: spec.vcluster_version.clone(),
    }
}

/// Done when the virtual API answers; until then a transient failure (retried).
pub async fn health_check(ctx: &StepCtx) -> StepResult {
    if ctx.driver.health_check(&ctx.call, &ctx.target).await? {
        Ok(StepOutput::done())
    } else {
        Err(StepError::transient(
            "the virtual API server does not answer yet",
        ))
    }
}

/// Done when the control plane is ready, else pending.
pub async fn wait_ready(ctx: &StepCtx) -> StepResult {
    match ctx.driver.control_plane(&ctx.call, &ctx.target).await? {
        Some(cp) if cp.is_ready() => Ok(StepOutput::output(serde_json::json!({
            "replicas": cp.replicas
        }))),
        Some(_) => Ok(StepOutput::pending(CHECK_IN)),
        None => Err(StepError::permanent(
            Code::NotFound,
            format!("release {} is not installed", ctx.target.release),
        )),
    }
}

/// Done when no control-plane pod is left, else pending.
pub async fn wait_pods_gone(ctx: &StepCtx) -> StepResult {
    match ctx.driver.control_plane(&ctx.call, &ctx.target).await? {
        Some(cp) if cp.pods > 0 => Ok(StepOutput::pending(CHECK_IN)),
        _ => Ok(StepOutput::done()),
    }
}

/// The snapshot a step of this operation writes: its id is the operation's id, so a
/// repeated step writes the same artifact.
pub fn own_snapshot_id(ctx: &StepCtx) -> SnapshotId {
    SnapshotId(ctx.operation_id.as_uuid())
}

/// The artifact prefix of `id` for this vcluster.
pub fn prefix(ctx: &StepCtx, id: SnapshotId) -> String {
    artifact_prefix(
        ctx.project.as_str(),
        ctx.vcluster_name.as_str(),
        &id.to_string(),
    )
}

/// A snapshot error as a step error: transient when the storage was unavailable.
pub fn artifact_error(e: SnapshotError) -> StepError {
    if e.is_transient() {
        StepError::transient(e.to_string())
    } else {
        StepError::permanent(Code::FailedPrecondition, e.to_string())
    }
}

/// What a step that takes a snapshot ([`take_snapshot`]) journals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenSnapshot {
    /// The snapshot (the operation's id).
    pub snapshot_id: SnapshotId,
    /// Where its artifact is.
    pub location: String,
    /// Its manifest's sha256.
    pub sha256: String,
    /// Its total size.
    pub size_bytes: u64,
}

/// Dumps the backing store straight into the artifact (streamed), then writes the
/// manifest; emits `SnapshotStarted` and `SnapshotCompleted` on `snapshot-<id>` with the
/// step's success.
pub async fn take_snapshot(ctx: &StepCtx, description: Option<String>) -> StepResult {
    let spec = ctx.spec()?.clone();
    let id = own_snapshot_id(ctx);
    let release = ctx.driver.release(&ctx.call, &ctx.target).await?;
    let metadata = serde_json::json!({
        "spec": spec,
        "helm_values": spec.helm_values,
        "kubernetes_version": spec.kubernetes_version,
        "labels": spec.labels,
        "release_revision": release.map(|r| r.revision),
        // So that `ovc snapshot import` can register the artifact from its manifest alone.
        "vcluster_uid": ctx.vcluster_uid,
        "description": description,
    });
    let input = ManifestInput {
        snapshot_id: id.to_string(),
        project: ctx.project.to_string(),
        vcluster: ctx.vcluster_name.to_string(),
        created_at: ctx.clock.now().to_rfc3339(),
        metadata: metadata.clone(),
    };
    let written = dump_to_artifact(ctx, &prefix(ctx, id), input).await?;
    let stream = StreamName::snapshot(id);
    let taken = TakenSnapshot {
        snapshot_id: id,
        location: written.location.clone(),
        sha256: written.manifest_sha256.clone(),
        size_bytes: written.size_bytes,
    };
    Ok(StepOutput::Done {
        output: serde_json::to_value(&taken)
            .map_err(|e| StepError::permanent(Code::Internal, format!("snapshot output: {e}")))?,
        events: vec![
            (
                stream.clone(),
                Event::SnapshotStarted {
                    operation_id: ctx.operation_id,
                    vcluster_uid: ctx.vcluster_uid,
                    vcluster: ctx.vcluster_name.clone(),
                    project: ctx.project.clone(),
                    description,
                },
            ),
            (
                stream,
                Event::SnapshotCompleted {
                    size_bytes: written.size_bytes,
                    sha256: written.manifest_sha256,
                    location: written.location,
                    metadata,
                },
            ),
        ],
    })
}

/// Streams the driver's dump of the backing store into a snapshot under `prefix`
/// (data, then manifest). A failed dump aborts the upload and writes no manifest.
pub async fn dump_to_artifact(
    ctx: &StepCtx,
    prefix: &str,
    input: ManifestInput,
) -> Result<WrittenSnapshot, StepError> {
    let store = ctx.services.artifacts.as_ref();
    let writer = SnapshotWriter::begin(store, prefix, input)
        .await
        .map_err(artifact_error)?;
    let mut sink = ArtifactSink {
        location: store.url(&format!("{}{BACKING_STORE_FILE}", dir(prefix))),
        object: writer.data_location(),
        writer: Some(writer),
        adopted: None,
        failure: None,
    };
    let dumped = ctx
        .driver
        .dump_backing_store(&ctx.call, &ctx.target, &mut sink)
        .await;
    let ArtifactSink {
        writer,
        adopted,
        failure,
        ..
    } = sink;
    match (dumped, failure, adopted, writer) {
        // The host wrote the object itself and the sink adopted it: manifest written.
        (Ok(_), None, Some(written), _) => Ok(written),
        (Ok(_), None, None, Some(writer)) => writer.finish().await.map_err(artifact_error),
        (Ok(_), None, None, None) => Err(StepError::permanent(
            Code::Internal,
            "the snapshot writer was given up without a result",
        )),
        (_, Some(e), _, writer) => {
            if let Some(writer) = writer {
                writer.abort().await;
            }
            Err(artifact_error(e))
        }
        (Err(e), None, _, writer) => {
            if let Some(writer) = writer {
                writer.abort().await;
            }
            Err(e.into())
        }
    }
}

/// Verifies the snapshot under `prefix` (the manifest against `manifest_sha256`, then
/// every file, streamed) and streams its backing-store data into the driver, which
/// commits only after the stream has checked itself whole. Returns the bytes loaded.
pub async fn load_from_artifact(
    ctx: &StepCtx,
    prefix: &str,
    manifest_sha256: Option<&str>,
) -> Result<u64, StepError> {
    let store = ctx.services.artifacts.as_ref();
    let (manifest, _) = read_manifest(store, prefix, manifest_sha256)
        .await
        .map_err(artifact_error)?;
    let stream = open_backing_store(store, prefix, &manifest)
        .await
        .map_err(artifact_error)?;
    let mut source = ArtifactSource {
        location: store.url(&format!("{}{BACKING_STORE_FILE}", dir(prefix))),
        object: store.object_location(&format!("{}{BACKING_STORE_FILE}", dir(prefix))),
        stream,
        failure: None,
    };
    let loaded = ctx
        .driver
        .load_backing_store(&ctx.call, &ctx.target, &mut source)
        .await;
    match (loaded, source.failure) {
        (Ok(n), None) => Ok(n),
        (_, Some(e)) => Err(artifact_error(e)),
        (Err(e), None) => Err(e.into()),
    }
}

fn dir(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// The driver's view of a [`SnapshotWriter`]: the storage error, if any, is kept so the
/// step reports it as it is (transient or not) rather than as a host error.
struct ArtifactSink<'a> {
    location: String,
    object: ObjectLocation,
    /// `None` once the host's own object was adopted.
    writer: Option<SnapshotWriter<'a>>,
    adopted: Option<WrittenSnapshot>,
    failure: Option<SnapshotError>,
}

#[async_trait]
impl BackingStoreSink for ArtifactSink<'_> {
    fn location(&self) -> &str {
        &self.location
    }

    fn object(&self) -> ObjectLocation {
        self.object.clone()
    }

    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(DriverError::permanent(
                Code::FailedPrecondition,
                "the host's own object was already adopted as this snapshot's data",
            ));
        };
        writer.write(chunk).await.map_err(|e| {
            let d = driver_error(&e);
            self.failure = Some(e);
            d
        })
    }

    async fn adopt_written(&mut self) -> DriverResult<u64> {
        let Some(writer) = self.writer.take() else {
            return Err(DriverError::permanent(
                Code::FailedPrecondition,
                "the host's own object was already adopted as this snapshot's data",
            ));
        };
        match writer.adopt_written().await {
            Ok(written) => {
                let size = written.manifest.files.iter().map(|f| f.size).sum();
                self.adopted = Some(written);
                Ok(size)
            }
            Err(e) => {
                let d = driver_error(&e);
                self.failure = Some(e);
                Err(d)
            }
        }
    }

    async fn write_object(&mut self, object: &ExportedObject) -> DriverResult<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(DriverError::permanent(
                Code::FailedPrecondition,
                "the host's own object was already adopted as this snapshot's data",
            ));
        };
        let line = serde_json::to_vec(object).map_err(|e| {
            DriverError::permanent(Code::Internal, format!("cannot encode an object: {e}"))
        })?;
        writer.write_object_line(&line).await.map_err(|e| {
            let d = driver_error(&e);
            self.failure = Some(e);
            d
        })
    }

    fn objects_unavailable(&mut self, reason: String) {
        if let Some(writer) = self.writer.as_mut() {
            writer.objects_unavailable(reason);
        }
    }

    fn record_backing_store(&mut self, info: BackingStoreInfo) {
        if let Some(writer) = self.writer.as_mut() {
            writer.record_backing_store(serde_json::to_value(info).unwrap_or_default());
        }
    }
}

/// The driver's view of a [`VerifiedStream`] (storage or checksum errors kept, as in
/// [`ArtifactSink`]).
struct ArtifactSource {
    location: String,
    object: ObjectLocation,
    stream: VerifiedStream,
    failure: Option<SnapshotError>,
}

#[async_trait]
impl BackingStoreSource for ArtifactSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn object(&self) -> ObjectLocation {
        self.object.clone()
    }

    fn size(&self) -> u64 {
        self.stream.file().size
    }

    async fn next_chunk(&mut self) -> DriverResult<Option<Bytes>> {
        self.stream.next_chunk().await.map_err(|e| {
            let d = driver_error(&e);
            self.failure = Some(e);
            d
        })
    }
}

fn driver_error(e: &SnapshotError) -> DriverError {
    if e.is_transient() {
        DriverError::transient(e.to_string())
    } else {
        DriverError::permanent(Code::FailedPrecondition, e.to_string())
    }
}

/// Undo of [`take_snapshot`]: deletes the artifact and marks the snapshot deleted.
pub async fn delete_own_snapshot(ctx: &StepCtx) -> StepResult {
    let id = own_snapshot_id(ctx);
    ctx.services
        .artifacts
        .delete_prefix(&prefix(ctx, id))
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    Ok(StepOutput::Done {
        output: serde_json::Value::Null,
        events: vec![(StreamName::snapshot(id), Event::SnapshotDeleted {})],
    })
}

/// Verifies (manifest sha256, every file's size and sha256, streamed) the artifact under
/// `prefix`.
pub async fn verify_artifact(
    ctx: &StepCtx,
    prefix: &str,
    manifest_sha256: Option<&str>,
) -> Result<ovc_snapshots::Manifest, StepError> {
    verify_snapshot(ctx.services.artifacts.as_ref(), prefix, manifest_sha256)
        .await
        .map_err(artifact_error)
}
