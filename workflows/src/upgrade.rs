//! UpgradeVCluster: move a RUNNING vcluster to a newer chart version and/or virtual
//! Kubernetes version, one minor version at a time (docs/vcluster-mechanics.md §6: an
//! upgrade is a `helm upgrade` of the same release; vcluster supports upgrading one minor
//! version at a time, as Kubernetes does).
//!
//! Steps: check the versions against the installed release (the authority, whatever the
//! spec says), snapshot, `helm upgrade` with the new chart version and values, wait
//! ready, health-check the virtual API. A failure after the upgrade undoes it: `helm
//! upgrade` back to the old chart and values (Helm's rollback, as a new revision), and
//! when the Kubernetes version changed, the API server may have rewritten stored objects
//! for the new version, so the data comes back from the pre-upgrade snapshot too
//! (pause, load, resume). On success the vcluster is RUNNING with the new versions in its
//! spec, and the pre-upgrade snapshot stays as a READY snapshot the user may delete.
//!
//! Accept refuses what can be told from the spec before anything is written (nothing to
//! do, a downgrade, a skipped minor version: FAILED_PRECONDITION `UPGRADE_SKIPS_MINOR`
//! naming the next allowed version); `check_versions` says the same from the release.

use crate::common::{
    CHECK_IN, delete_own_snapshot, health_check, load_from_artifact, own_snapshot_id, prefix,
    take_snapshot, values, wait_ready,
};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{
    OperationApi, ParamsDef, StepCtx, StepDef, StepError, StepKey, StepOutput, StepResult,
};
use ovc_types::command::{Command, OperationParams};
use ovc_types::error::{Code, Status};
use ovc_types::resource::VCluster;
use ovc_types::spec::{ChartVersion, MinorVersion, VClusterSpec};
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use serde::{Deserialize, Serialize};

/// The UPGRADE kind.
pub const KIND: OperationKind = OperationKind::from_static("UPGRADE");

/// UpgradeVCluster's parameters: `POST /v1/vclusters/{name}/upgrade`'s body, `ovc vc
/// upgrade`'s flags. A field left out keeps its current value.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::Args,
)]
#[serde(deny_unknown_fields)]
pub struct UpgradeParams {
    /// The new chart version (`MAJOR.MINOR.PATCH`), e.g. 0.30.0; absent keeps the
    /// current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0.30.0")]
    #[arg(long)]
    pub vcluster_version: Option<String>,
    /// The new Kubernetes version (`1.MINOR`), e.g. 1.32; absent keeps the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "1.32")]
    #[arg(long)]
    pub kubernetes_version: Option<String>,
}

impl OperationParams for UpgradeParams {
    const KIND: OperationKind = KIND;
}

params_are_the_body!(UpgradeParams);

/// What the upgrade moves from and to, decided once from the installed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradePlan {
    /// The installed chart version.
    pub from_chart: String,
    /// The chart version to install.
    pub to_chart: String,
    /// The current Kubernetes version.
    pub from_kubernetes: String,
    /// The Kubernetes version to run.
    pub to_kubernetes: String,
}

impl UpgradePlan {
    /// True when the virtual Kubernetes changes version: its API server may migrate the
    /// stored objects, so an undo brings the data back from the snapshot.
    pub fn changes_kubernetes(&self) -> bool {
        self.from_kubernetes != self.to_kubernetes
    }
}

/// `check_versions` journals the plan; the upgrade, its undo and the settlement read it.
const CHECK_VERSIONS: StepKey<UpgradePlan> = StepKey::named("check_versions");
/// `upgrade_release` journals the new Helm revision.
const UPGRADE_RELEASE: StepKey<Revision> = StepKey::named("upgrade_release");

/// A Helm revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Revision {
    revision: u32,
}

/// The upgrade workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: KIND,
        name: "upgrade",
        params: ParamsDef::of::<UpgradeParams>(),
        rule: CallRule {
            verb: "upgrade",
            new_verb: None,
            starts_from: &[VClusterState::Running],
            in_progress: Some(VClusterState::Upgrading),
            hints: &[(
                VClusterState::Suspended,
                "; ovc never upgrades a paused vcluster, resume it first",
            )],
        },
        api: Some(OperationApi::of::<UpgradeParams>(
            "upgrade",
            "upgrade",
            "Upgrade the chart and/or Kubernetes version of a running vcluster, one minor \
             version at a time (snapshots first; a failed upgrade is rolled back)",
        )),
        steps: vec![
            StepDef::new(CHECK_VERSIONS.name, |c| check_versions(c).boxed()),
            StepDef::new("snapshot", |c| {
                take_snapshot(c, Some("taken by upgrade".into())).boxed()
            })
            .undo(|c| delete_own_snapshot(c).boxed()),
            StepDef::new(UPGRADE_RELEASE.name, |c| upgrade_release(c).boxed())
                .undo(|c| roll_back(c).boxed()),
            StepDef::new("wait_ready", |c| wait_ready(c).boxed()),
            StepDef::new("health_check", |c| health_check(c).boxed()),
        ],
        settle: |ctx| {
            let spec = upgraded_spec(ctx.spec()?, &plan(ctx)?);
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: Some(spec),
                result: serde_json::Value::Null,
            })
        },
        revert: None,
        admit: Some(admit),
    }
}

/// Accept's check against the spec: valid versions, something to do, no downgrade, no
/// skipped minor version. A spec without a chart version (a vcluster from before ovc
/// recorded it) leaves the chart check to `check_versions`.
fn admit(command: &Command, vc: &VCluster) -> Result<(), Status> {
    let p: UpgradeParams = command.params()?;
    let (chart, kubernetes) = (
        p.vcluster_version.as_deref(),
        p.kubernetes_version.as_deref(),
    );
    if chart.is_none() && kubernetes.is_none() {
        return Err(Status::invalid_argument(
            "nothing to upgrade: give vcluster_version and/or kubernetes_version",
        )
        .with_reason("UPGRADE_NOTHING_REQUESTED"));
    }
    if let Some(v) = chart
        && ChartVersion::parse(v).is_none()
    {
        return Err(Status::invalid_argument(format!(
            "vcluster_version: {v:?} is not a chart version; use MAJOR.MINOR.PATCH, e.g. \"0.29.1\""
        ))
        .with_reason("INVALID_VERSION"));
    }
    if let Some(v) = kubernetes {
        let mut next = vc.spec.clone();
        next.kubernetes_version = v.to_string();
        next.validate().map_err(Status::from)?;
    }
    let chart_moves = match (chart, vc.spec.vcluster_version.as_deref()) {
        (Some(to), Some(from)) => check_step("vcluster_version", from, to, MinorVersion::of_chart)?,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let kubernetes_moves = match kubernetes {
        Some(to) => check_step(
            "kubernetes_version",
            &vc.spec.kubernetes_version,
            to,
            MinorVersion::of_kubernetes,
        )?,
        None => false,
    };
    if !chart_moves && !kubernetes_moves {
        return Err(Status::failed_precondition(format!(
            "vcluster {}/{} already runs chart {} with Kubernetes {}: nothing to upgrade",
            vc.project,
            vc.name,
            vc.spec
                .vcluster_version
                .as_deref()
                .unwrap_or("(as installed)"),
            vc.spec.kubernetes_version
        ))
        .with_reason("UPGRADE_NOTHING_TO_DO"));
    }
    Ok(())
}

/// Checks one version move: `Ok(true)` when it moves forward by at most one minor
/// version (or to the next major's `.0`), `Ok(false)` when it stays; a downgrade or a
/// skipped minor version is FAILED_PRECONDITION naming the next allowed version.
fn check_step(
    field: &str,
    from: &str,
    to: &str,
    minor: fn(&str) -> Option<MinorVersion>,
) -> Result<bool, Status> {
    let (Some(cur), Some(req)) = (minor(from), minor(to)) else {
        return Err(Status::invalid_argument(format!(
            "{field}: cannot compare {from:?} with {to:?}"
        ))
        .with_reason("INVALID_VERSION"));
    };
    let chart_core = |v: &str| ChartVersion::parse(v).map(|c| (c.major, c.minor, c.patch));
    let downgrade = req < cur
        || (field == "vcluster_version"
            && matches!((chart_core(from), chart_core(to)), (Some(a), Some(b)) if b < a));
    if downgrade {
        return Err(Status::failed_precondition(format!(
            "{field}: {to} is older than the current {from}; an upgrade never goes back \
             (restore a snapshot taken before the upgrade instead)"
        ))
        .with_reason("UPGRADE_IS_DOWNGRADE")
        .with_metadata("field", field)
        .with_metadata("current", from)
        .with_metadata("requested", to));
    }
    let next_minor = MinorVersion {
        major: cur.major,
        minor: cur.minor + 1,
    };
    let next_major = MinorVersion {
        major: cur.major + 1,
        minor: 0,
    };
    if req == cur {
        return Ok(from != to);
    }
    if req == next_minor || req == next_major {
        return Ok(true);
    }
    Err(Status::failed_precondition(format!(
        "{field}: {from} -> {to} skips a minor version; upgrade one minor version at a \
         time, next to {next_minor}"
    ))
    .with_reason("UPGRADE_SKIPS_MINOR")
    .with_metadata("field", field)
    .with_metadata("current", from)
    .with_metadata("requested", to)
    .with_metadata("next_allowed", next_minor.to_string()))
}

/// The plan `check_versions` journaled.
fn plan(ctx: &StepCtx) -> Result<UpgradePlan, StepError> {
    ctx.output(&CHECK_VERSIONS)?
        .ok_or_else(|| StepError::permanent(Code::Internal, "check_versions journaled no plan"))
}

/// `spec` with the plan's versions.
fn upgraded_spec(spec: &VClusterSpec, plan: &UpgradePlan) -> VClusterSpec {
    let mut next = spec.clone();
    next.vcluster_version = Some(plan.to_chart.clone());
    next.kubernetes_version = plan.to_kubernetes.clone();
    next
}

/// `spec` with the versions the plan moves from (what the undo puts back).
fn original_spec(spec: &VClusterSpec, plan: &UpgradePlan) -> VClusterSpec {
    let mut old = spec.clone();
    old.vcluster_version = Some(plan.from_chart.clone());
    old.kubernetes_version = plan.from_kubernetes.clone();
    old
}

/// Decides the plan from the installed release (the authority: a spec may predate
/// recorded chart versions) and checks it as accept did.
async fn check_versions(ctx: &StepCtx) -> StepResult {
    let spec = ctx.spec()?;
    let release = ctx
        .driver
        .release(&ctx.call, &ctx.target)
        .await?
        .ok_or_else(|| {
            StepError::permanent(
                Code::FailedPrecondition,
                format!("release {} is not installed", ctx.target.release),
            )
        })?;
    let p: UpgradeParams = ctx.params()?;
    let (chart, kubernetes) = (
        p.vcluster_version.as_deref(),
        p.kubernetes_version.as_deref(),
    );
    let from_chart = release.chart_version.clone();
    let to_chart = chart.unwrap_or(&from_chart).to_string();
    check_step(
        "vcluster_version",
        &from_chart,
        &to_chart,
        MinorVersion::of_chart,
    )
    .map_err(StepError::Permanent)?;
    let from_kubernetes = spec.kubernetes_version.clone();
    let to_kubernetes = kubernetes.unwrap_or(&from_kubernetes).to_string();
    check_step(
        "kubernetes_version",
        &from_kubernetes,
        &to_kubernetes,
        MinorVersion::of_kubernetes,
    )
    .map_err(StepError::Permanent)?;
    CHECK_VERSIONS.done(&UpgradePlan {
        from_chart,
        to_chart,
        from_kubernetes,
        to_kubernetes,
    })
}

/// `helm upgrade` to the new chart version with the new values.
async fn upgrade_release(ctx: &StepCtx) -> StepResult {
    let next = upgraded_spec(ctx.spec()?, &plan(ctx)?);
    let revision = ctx
        .driver
        .install_release(&ctx.call, &ctx.target, &values(&next))
        .await?;
    UPGRADE_RELEASE.done(&Revision { revision })
}

/// Puts the old chart and values back (a no-op when the upgrade never happened); when
/// the Kubernetes version changed, also the data of the pre-upgrade snapshot. Every part
/// is an ensure, so the whole undo can run again after a crash.
async fn roll_back(ctx: &StepCtx) -> StepResult {
    let plan = plan(ctx)?;
    let old = original_spec(ctx.spec()?, &plan);
    ctx.driver
        .install_release(&ctx.call, &ctx.target, &values(&old))
        .await?;
    if !plan.changes_kubernetes() {
        return Ok(StepOutput::done());
    }
    ctx.driver
        .pause_control_plane(&ctx.call, &ctx.target)
        .await?;
    if let Some(cp) = ctx.driver.control_plane(&ctx.call, &ctx.target).await?
        && cp.pods > 0
    {
        return Ok(StepOutput::pending(CHECK_IN));
    }
    let id = own_snapshot_id(ctx);
    let sha256 = ctx
        .store
        .get_snapshot(id)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?
        .and_then(|s| s.sha256);
    load_from_artifact(ctx, &prefix(ctx, id), sha256.as_deref()).await?;
    ctx.driver
        .resume_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::done())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(field: &str, from: &str, to: &str) -> Option<String> {
        let minor = if field == "vcluster_version" {
            MinorVersion::of_chart
        } else {
            MinorVersion::of_kubernetes
        };
        check_step(field, from, to, minor)
            .err()
            .map(|s| s.reason().unwrap_or_default().to_string())
    }

    #[test]
    fn one_minor_version_at_a_time() {
        let ok = [
            ("vcluster_version", "0.29.1", "0.29.2"),
            ("vcluster_version", "0.29.1", "0.30.0"),
            ("vcluster_version", "0.29.1", "0.30.0-rc.1"),
            ("vcluster_version", "0.29.1", "1.0.0"),
            ("kubernetes_version", "1.31", "1.32"),
            ("kubernetes_version", "1.31", "1.31.4"),
        ];
        for (f, from, to) in ok {
            assert_eq!(refusal(f, from, to), None, "{from} -> {to}");
        }
        let refused = [
            (
                "vcluster_version",
                "0.29.1",
                "0.31.0",
                "UPGRADE_SKIPS_MINOR",
            ),
            ("vcluster_version", "0.29.1", "1.1.0", "UPGRADE_SKIPS_MINOR"),
            (
                "vcluster_version",
                "0.29.1",
                "0.28.9",
                "UPGRADE_IS_DOWNGRADE",
            ),
            (
                "vcluster_version",
                "0.29.2",
                "0.29.1",
                "UPGRADE_IS_DOWNGRADE",
            ),
            ("kubernetes_version", "1.31", "1.33", "UPGRADE_SKIPS_MINOR"),
            ("kubernetes_version", "1.31", "1.30", "UPGRADE_IS_DOWNGRADE"),
        ];
        for (f, from, to, reason) in refused {
            assert_eq!(
                refusal(f, from, to).as_deref(),
                Some(reason),
                "{from} -> {to}"
            );
        }
        let skip = check_step(
            "kubernetes_version",
            "1.31",
            "1.33",
            MinorVersion::of_kubernetes,
        )
        .expect_err("skips");
        assert_eq!(skip.code, Code::FailedPrecondition);
        assert!(skip.message.contains("next to 1.32"), "{}", skip.message);
        assert_eq!(
            check_step(
                "kubernetes_version",
                "1.31",
                "1.31",
                MinorVersion::of_kubernetes
            ),
            Ok(false)
        );
    }
}

#[cfg(test)]
mod sweeps {
    use super::UpgradeParams;
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;
    use ovc_types::resource::Operation;

    /// A RUNNING vcluster, to the next chart minor version (the undo is Helm's rollback).
    struct Chart;

    impl Fixture for Chart {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(UpgradeParams {
                vcluster_version: Some("0.30.0".into()),
                kubernetes_version: None,
            })
        }

        async fn after_compensation(&self, h: &Harness, op: &Operation, failed: &str) {
            sweep::assert_own_snapshot_undone(h, op, failed, "snapshot").await;
        }
    }

    /// A RUNNING vcluster, to the next chart and Kubernetes minor versions: the new API
    /// server rewrites the data, so the undo also restores it from the snapshot (the
    /// sweep's host comparison includes the backing store).
    struct ChartAndKubernetes;

    impl Fixture for ChartAndKubernetes {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(UpgradeParams {
                vcluster_version: Some("0.30.0".into()),
                kubernetes_version: Some("1.32".into()),
            })
        }

        async fn after_compensation(&self, h: &Harness, op: &Operation, failed: &str) {
            sweep::assert_own_snapshot_undone(h, op, failed, "snapshot").await;
        }
    }

    sweeps!(crate::upgrade::definition(); chart: Chart, chart_and_kubernetes: ChartAndKubernetes);
}
