//! What a vcluster should look like: `VClusterSpec` (API.md `spec`) and `ScalePatch`
//! (the body of ScaleVCluster, where only given fields change).
//!
//! Every struct denies unknown fields, so a typo in a request body is a clear
//! INVALID_ARGUMENT rather than a silently ignored setting, and [`VClusterSpec::validate`]
//! checks what serde cannot (replica counts, versions, label syntax, sizes).

use crate::error::Status;
use crate::name::{validate_host_name, validate_label_key, validate_label_value};
use crate::quantity::Quantity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The host cluster of a vcluster whose spec names none: `default` (the one host of a
/// process given no named hosts).
pub const DEFAULT_HOST: &str = "default";

/// The largest `helm_values` document we accept, serialized, in bytes.
pub const MAX_HELM_VALUES_BYTES: usize = 64 * 1024;
/// The most labels a vcluster may carry.
pub const MAX_LABELS: usize = 64;
/// The oldest Kubernetes minor version we install (1.x).
pub const MIN_KUBERNETES_MINOR: u32 = 28;
/// The newest Kubernetes minor version we install (1.x).
pub const MAX_KUBERNETES_MINOR: u32 = 37;

/// Upper bounds of a spec's sizes: past them a request is INVALID_ARGUMENT naming the
/// field and the bound. They stop a typo (`cpu: "4000"` for `"4000m"`) from asking the
/// host for a machine it does not have; a platform that needs more raises them here.
/// Control-plane values are per replica; quota values are the tenant's whole namespace.
pub mod bounds {
    /// `control_plane.cpu` per replica: 8 cores (a virtual API server + etcd).
    pub const CONTROL_PLANE_CPU: &str = "8";
    /// `control_plane.memory` per replica: 32Gi.
    pub const CONTROL_PLANE_MEMORY: &str = "32Gi";
    /// `quota.cpu`: 64 cores.
    pub const QUOTA_CPU: &str = "64";
    /// `quota.memory`: 512Gi.
    pub const QUOTA_MEMORY: &str = "512Gi";
    /// `quota.storage`: 10Ti.
    pub const QUOTA_STORAGE: &str = "10Ti";
    /// `quota.pods`: 10000.
    pub const QUOTA_PODS: u32 = 10_000;
}

/// The Kubernetes distribution of the virtual control plane. vcluster removed k3s in
/// v0.33 and k0s in v0.26 (docs/vcluster-mechanics.md §1), so `k8s` is the only one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    /// Upstream Kubernetes.
    #[default]
    K8s,
}

/// The virtual control plane's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneSpec {
    /// 1, or 3 for high availability.
    #[serde(default = "default_replicas")]
    #[schema(minimum = 1, maximum = 3, example = 1)]
    pub replicas: u32,
    /// CPU request per replica.
    #[serde(default = "default_cp_cpu")]
    pub cpu: Quantity,
    /// Memory request per replica.
    #[serde(default = "default_cp_memory")]
    pub memory: Quantity,
}

/// The host-side ResourceQuota of the vcluster's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// `requests.cpu`.
    #[serde(default = "default_quota_cpu")]
    pub cpu: Quantity,
    /// `requests.memory`.
    #[serde(default = "default_quota_memory")]
    pub memory: Quantity,
    /// `count/pods` (control-plane pods count too).
    #[serde(default = "default_quota_pods")]
    #[schema(minimum = 1, maximum = 10000, example = 50)]
    pub pods: u32,
    /// `requests.storage`.
    #[serde(default = "default_quota_storage")]
    pub storage: Quantity,
}

/// The desired shape of a vcluster (API.md `VCluster.spec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VClusterSpec {
    /// `major.minor` (or `major.minor.patch`) of the virtual Kubernetes.
    #[serde(default = "default_kubernetes_version")]
    #[schema(pattern = "^1[.][0-9]{1,2}([.][0-9]{1,3})?$", example = "1.31")]
    pub kubernetes_version: String,
    /// The distribution.
    #[serde(default)]
    pub distro: Distro,
    /// The vcluster Helm chart version (`MAJOR.MINOR.PATCH[-PRE]`). A create without it
    /// gets the service's configured default (`--vcluster-version`); vclusters created
    /// before ovc recorded it have none, and then the installed release's version counts.
    /// Changed only by UPGRADE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[0-9]+[.][0-9]+[.][0-9]+(-[0-9A-Za-z.-]+)?$",
        example = "0.29.1"
    )]
    pub vcluster_version: Option<String>,
    /// Control-plane size.
    #[serde(default)]
    pub control_plane: ControlPlaneSpec,
    /// Namespace quota.
    #[serde(default)]
    pub quota: QuotaSpec,
    /// Kubernetes-syntax labels, also used for `?label=k=v` filtering.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Extra values merged into the vcluster chart's values.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub helm_values: serde_json::Map<String, serde_json::Value>,
    /// The host cluster it runs on, one of the names the service is configured with
    /// (`--kube-host NAME=CONTEXT`); set at create and kept for life (a scale cannot
    /// change it).
    #[serde(default = "default_host")]
    #[schema(
        pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length = 63,
        example = "default"
    )]
    pub host: String,
}

fn default_host() -> String {
    DEFAULT_HOST.to_string()
}

fn default_replicas() -> u32 {
    1
}
fn q(s: &str) -> Quantity {
    // The defaults below are literals that parse; a failure is a bug caught by tests.
    Quantity::parse(s).unwrap_or_else(|e| unreachable!("default quantity {s}: {e}"))
}
fn default_cp_cpu() -> Quantity {
    q("200m")
}
fn default_cp_memory() -> Quantity {
    q("256Mi")
}
fn default_quota_cpu() -> Quantity {
    q("4")
}
fn default_quota_memory() -> Quantity {
    q("8Gi")
}
fn default_quota_pods() -> u32 {
    50
}
fn default_quota_storage() -> Quantity {
    q("20Gi")
}
fn default_kubernetes_version() -> String {
    "1.31".to_string()
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            cpu: default_cp_cpu(),
            memory: default_cp_memory(),
        }
    }
}

impl Default for QuotaSpec {
    fn default() -> Self {
        Self {
            cpu: default_quota_cpu(),
            memory: default_quota_memory(),
            pods: default_quota_pods(),
            storage: default_quota_storage(),
        }
    }
}

impl Default for VClusterSpec {
    fn default() -> Self {
        Self {
            kubernetes_version: default_kubernetes_version(),
            distro: Distro::default(),
            vcluster_version: None,
            control_plane: ControlPlaneSpec::default(),
            quota: QuotaSpec::default(),
            labels: BTreeMap::new(),
            helm_values: serde_json::Map::new(),
            host: default_host(),
        }
    }
}

/// Why a spec or patch is invalid. Every variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field has a value outside what we support.
    #[error("spec.{field}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `control_plane.replicas`.
        field: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

impl SpecError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Invalid { field, .. } => field,
        }
    }
}

impl From<SpecError> for Status {
    fn from(e: SpecError) -> Self {
        let field = format!("spec.{}", e.field());
        Status::invalid_argument(e.to_string())
            .with_reason("INVALID_SPEC")
            .with_metadata("field", field)
    }
}

/// A `major.minor` version: what "one minor version at a time" compares (UPGRADE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinorVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl MinorVersion {
    /// The kubernetes version `v` (`1.31` or `1.31.2`) as major.minor.
    pub fn of_kubernetes(v: &str) -> Option<Self> {
        parse_kubernetes_version(v).map(|(major, minor)| Self { major, minor })
    }

    /// The chart version `v` as major.minor.
    pub fn of_chart(v: &str) -> Option<Self> {
        ChartVersion::parse(v).map(|c| Self {
            major: c.major,
            minor: c.minor,
        })
    }
}

impl std::fmt::Display for MinorVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A chart version, `MAJOR.MINOR.PATCH[-PRE]` (semver without build metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
    /// The pre-release part after `-`, if any.
    pub pre: Option<String>,
}

impl ChartVersion {
    /// Parses `v`; `None` when it is not `MAJOR.MINOR.PATCH[-PRE]` (at most 64 bytes).
    pub fn parse(v: &str) -> Option<Self> {
        if v.is_empty() || v.len() > 64 {
            return None;
        }
        let (core, pre) = match v.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        };
        if let Some(pre) = pre
            && (pre.is_empty()
                || !pre
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        {
            return None;
        }
        let mut parts = core.split('.');
        let mut number = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.len() > 9 {
                return None;
            }
            p.parse().ok()
        };
        let (major, minor, patch) = (number()?, number()?, number()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
            pre: pre.map(str::to_string),
        })
    }
}

fn parse_kubernetes_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    if let Some(patch) = parts.next() {
        patch.parse::<u32>().ok()?;
    }
    if parts.next().is_some() || v.starts_with('+') || v.contains("+") {
        return None;
    }
    Some((major, minor))
}

/// Refuses `value` above the quantity `max` (one of [`bounds`]).
fn at_most(field: &str, value: &Quantity, max: &str) -> Result<(), SpecError> {
    if value.millis() > q(max).millis() {
        return Err(SpecError::invalid(
            field,
            format!("{value} is more than the {max} allowed"),
        ));
    }
    Ok(())
}

impl VClusterSpec {
    /// Checks everything serde cannot; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        match parse_kubernetes_version(&self.kubernetes_version) {
            Some((1, minor)) if (MIN_KUBERNETES_MINOR..=MAX_KUBERNETES_MINOR).contains(&minor) => {}
            _ => {
                return Err(SpecError::invalid(
                    "kubernetes_version",
                    format!(
                        "{:?} is not supported; use 1.{MIN_KUBERNETES_MINOR} to 1.{MAX_KUBERNETES_MINOR}, e.g. \"1.31\"",
                        self.kubernetes_version
                    ),
                ));
            }
        }
        if let Some(v) = &self.vcluster_version
            && ChartVersion::parse(v).is_none()
        {
            return Err(SpecError::invalid(
                "vcluster_version",
                format!("{v:?} is not a chart version; use MAJOR.MINOR.PATCH, e.g. \"0.29.1\""),
            ));
        }
        self.control_plane.validate()?;
        self.quota.validate()?;
        if self.quota.pods < self.control_plane.replicas {
            return Err(SpecError::invalid(
                "quota.pods",
                format!(
                    "{} is fewer than the {} control-plane pods, which count against the quota",
                    self.quota.pods, self.control_plane.replicas
                ),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(SpecError::invalid(
                "labels",
                format!("at most {MAX_LABELS} labels (got {})", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            validate_label_key(k)
                .map_err(|e| SpecError::invalid(format!("labels.{k}"), e.to_string()))?;
            validate_label_value(v)
                .map_err(|e| SpecError::invalid(format!("labels.{k}"), e.to_string()))?;
        }
        validate_host_name(&self.host).map_err(|e| SpecError::invalid("host", e.to_string()))?;
        let helm_bytes = serde_json::to_vec(&self.helm_values)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if helm_bytes > MAX_HELM_VALUES_BYTES {
            return Err(SpecError::invalid(
                "helm_values",
                format!("{helm_bytes} bytes is more than the {MAX_HELM_VALUES_BYTES} allowed"),
            ));
        }
        Ok(())
    }
}

impl ControlPlaneSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if !matches!(self.replicas, 1 | 3) {
            return Err(SpecError::invalid(
                "control_plane.replicas",
                format!(
                    "{} is not allowed; use 1, or 3 for high availability",
                    self.replicas
                ),
            ));
        }
        if self.cpu.millis() == 0 {
            return Err(SpecError::invalid(
                "control_plane.cpu",
                "must be greater than 0",
            ));
        }
        if self.memory.millis() < 64 * 1024 * 1024 * 1000 {
            return Err(SpecError::invalid(
                "control_plane.memory",
                format!("{} is below the 64Mi a control plane needs", self.memory),
            ));
        }
        at_most("control_plane.cpu", &self.cpu, bounds::CONTROL_PLANE_CPU)?;
        at_most(
            "control_plane.memory",
            &self.memory,
            bounds::CONTROL_PLANE_MEMORY,
        )?;
        Ok(())
    }
}

impl QuotaSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.cpu.millis() == 0 {
            return Err(SpecError::invalid("quota.cpu", "must be greater than 0"));
        }
        if self.memory.millis() == 0 {
            return Err(SpecError::invalid("quota.memory", "must be greater than 0"));
        }
        if self.pods == 0 || self.pods > bounds::QUOTA_PODS {
            return Err(SpecError::invalid(
                "quota.pods",
                format!("{} is out of range 1..={}", self.pods, bounds::QUOTA_PODS),
            ));
        }
        at_most("quota.cpu", &self.cpu, bounds::QUOTA_CPU)?;
        at_most("quota.memory", &self.memory, bounds::QUOTA_MEMORY)?;
        at_most("quota.storage", &self.storage, bounds::QUOTA_STORAGE)?;
        Ok(())
    }
}

/// Changes to the control plane; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlanePatch {
    /// New replica count (1 or 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// New CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// New memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Changes to the quota; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    /// New `requests.cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// New `requests.memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// New `count/pods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
    /// New `requests.storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
}

/// The body of ScaleVCluster: only the given fields change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalePatch {
    /// Control-plane changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlanePatch>,
    /// Quota changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaPatch>,
}

impl ScalePatch {
    /// The spec after the patch, validated. A patch that changes nothing is refused, so a
    /// caller learns that their request had no effect.
    pub fn apply_to(&self, spec: &VClusterSpec) -> Result<VClusterSpec, SpecError> {
        let mut next = spec.clone();
        if let Some(cp) = &self.control_plane {
            if let Some(r) = cp.replicas {
                next.control_plane.replicas = r;
            }
            if let Some(c) = &cp.cpu {
                next.control_plane.cpu = c.clone();
            }
            if let Some(m) = &cp.memory {
                next.control_plane.memory = m.clone();
            }
        }
        if let Some(qp) = &self.quota {
            if let Some(c) = &qp.cpu {
                next.quota.cpu = c.clone();
            }
            if let Some(m) = &qp.memory {
                next.quota.memory = m.clone();
            }
            if let Some(p) = qp.pods {
                next.quota.pods = p;
            }
            if let Some(s) = &qp.storage {
                next.quota.storage = s.clone();
            }
        }
        next.validate()?;
        if &next == spec {
            return Err(SpecError::invalid(
                "scale",
                "the request changes nothing: give control_plane and/or quota fields that differ from the current spec",
            ));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Result<VClusterSpec, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn api_md_example_parses_and_validates() {
        let s = spec(json!({
            "kubernetes_version": "1.31", "distro": "k8s",
            "control_plane": {"replicas": 1, "cpu": "200m", "memory": "256Mi"},
            "quota": {"cpu": "4", "memory": "8Gi", "pods": 50, "storage": "20Gi"},
            "labels": {"env": "dev"}, "helm_values": {}
        }))
        .expect("parses");
        s.validate().expect("valid");
        assert_eq!(s, {
            let mut d = VClusterSpec::default();
            d.labels.insert("env".into(), "dev".into());
            d
        });
    }

    #[test]
    fn empty_object_is_the_default_spec() {
        let s = spec(json!({})).expect("parses");
        assert_eq!(s, VClusterSpec::default());
        s.validate().expect("default is valid");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = spec(json!({"replicas": 3})).expect_err("unknown top-level");
        assert!(err.to_string().contains("replicas"), "{err}");
        let err = spec(json!({"control_plane": {"cpus": "1"}})).expect_err("unknown nested");
        assert!(err.to_string().contains("cpus"), "{err}");
        let err: Result<ScalePatch, _> = serde_json::from_value(json!({"quota": {"gpu": 1}}));
        assert!(err.expect_err("unknown").to_string().contains("gpu"));
    }

    #[test]
    fn bad_quantities_are_refused_by_serde() {
        assert!(spec(json!({"quota": {"memory": "8GB"}})).is_err());
        assert!(spec(json!({"control_plane": {"cpu": "-1"}})).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                json!({"control_plane": {"replicas": 2}}),
                "control_plane.replicas",
            ),
            (json!({"control_plane": {"cpu": "0"}}), "control_plane.cpu"),
            (
                json!({"control_plane": {"memory": "1Mi"}}),
                "control_plane.memory",
            ),
            (json!({"quota": {"pods": 0}}), "quota.pods"),
            (json!({"quota": {"cpu": "0"}}), "quota.cpu"),
            (json!({"kubernetes_version": "2.0"}), "kubernetes_version"),
            (
                json!({"kubernetes_version": "1.31.x"}),
                "kubernetes_version",
            ),
            (json!({"kubernetes_version": "1.3"}), "kubernetes_version"),
            (json!({"kubernetes_version": ""}), "kubernetes_version"),
            (json!({"vcluster_version": "0.29"}), "vcluster_version"),
            (json!({"vcluster_version": "v0.29.1"}), "vcluster_version"),
            (json!({"vcluster_version": "0.29.1-"}), "vcluster_version"),
            (
                json!({"vcluster_version": "0.29.1+build"}),
                "vcluster_version",
            ),
            (json!({"labels": {"Bad Key": "x"}}), "labels.Bad Key"),
            (json!({"labels": {"ok": "bad value!"}}), "labels.ok"),
            (
                json!({"control_plane": {"replicas": 3}, "quota": {"pods": 2}}),
                "quota.pods",
            ),
        ];
        for (body, field) in cases {
            let s = spec(body.clone()).expect("parses");
            let err = s.validate().expect_err(&format!("{body} must be invalid"));
            assert_eq!(err.field(), field, "{body}");
            let status: Status = err.into();
            assert_eq!(status.code, crate::Code::InvalidArgument);
        }
    }

    #[test]
    fn sizes_past_their_bounds_are_refused_naming_field_and_bound() {
        let cases = [
            (
                json!({"control_plane": {"cpu": "8001m"}}),
                "control_plane.cpu",
                "8",
            ),
            (
                json!({"control_plane": {"memory": "33Gi"}}),
                "control_plane.memory",
                "32Gi",
            ),
            (json!({"quota": {"cpu": "4000"}}), "quota.cpu", "64"),
            (json!({"quota": {"memory": "1Ti"}}), "quota.memory", "512Gi"),
            (
                json!({"quota": {"storage": "11Ti"}}),
                "quota.storage",
                "10Ti",
            ),
            (
                json!({"quota": {"storage": "1e15"}}),
                "quota.storage",
                "10Ti",
            ),
            (json!({"quota": {"pods": 10001}}), "quota.pods", "10000"),
        ];
        for (body, field, bound) in cases {
            let err = spec(body.clone())
                .expect("parses")
                .validate()
                .expect_err(&format!("{body} must be refused"));
            assert_eq!(err.field(), field, "{body}");
            assert!(err.to_string().contains(bound), "{body}: {err}");
        }
        // The bounds themselves are allowed.
        let at_bounds = spec(json!({
            "control_plane": {"cpu": "8", "memory": "32Gi"},
            "quota": {"cpu": "64", "memory": "512Gi", "storage": "10Ti", "pods": 10000}
        }))
        .expect("parses");
        at_bounds.validate().expect("the bounds are inclusive");
    }

    #[test]
    fn oversized_helm_values_are_refused() {
        let big = "x".repeat(MAX_HELM_VALUES_BYTES);
        let s = spec(json!({"helm_values": {"blob": big}})).expect("parses");
        assert_eq!(s.validate().expect_err("too big").field(), "helm_values");
    }

    #[test]
    fn scale_patch_changes_only_given_fields() {
        let base = VClusterSpec::default();
        let patch: ScalePatch =
            serde_json::from_value(json!({"control_plane": {"replicas": 3}})).expect("parses");
        let next = patch.apply_to(&base).expect("valid");
        assert_eq!(next.control_plane.replicas, 3);
        assert_eq!(next.control_plane.cpu, base.control_plane.cpu);
        assert_eq!(next.quota, base.quota);

        let patch: ScalePatch =
            serde_json::from_value(json!({"quota": {"memory": "16Gi"}})).expect("parses");
        let next = patch.apply_to(&base).expect("valid");
        assert_eq!(next.quota.memory.as_str(), "16Gi");
        assert_eq!(next.quota.cpu, base.quota.cpu);
        assert_eq!(next.control_plane, base.control_plane);
    }

    #[test]
    fn scale_patch_that_changes_nothing_or_breaks_the_spec_is_refused() {
        let base = VClusterSpec::default();
        assert!(ScalePatch::default().apply_to(&base).is_err());
        let same: ScalePatch =
            serde_json::from_value(json!({"control_plane": {"replicas": 1}})).expect("parses");
        assert!(same.apply_to(&base).is_err());
        let bad: ScalePatch =
            serde_json::from_value(json!({"control_plane": {"replicas": 2}})).expect("parses");
        assert_eq!(
            bad.apply_to(&base).expect_err("2 replicas").field(),
            "control_plane.replicas"
        );
    }

    #[test]
    fn host_defaults_to_the_default_host_and_is_validated_as_a_dns_label() {
        assert_eq!(spec(json!({})).expect("parses").host, DEFAULT_HOST);
        let named = spec(json!({"host": "eu-west-2"})).expect("parses");
        assert_eq!(named.host, "eu-west-2");
        named.validate().expect("a DNS label is a valid host");
        for bad in ["", "EU", "eu_west", "-eu", &"h".repeat(64)] {
            let err = spec(json!({"host": bad}))
                .expect("parses")
                .validate()
                .expect_err(bad);
            assert_eq!(err.field(), "host", "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_scale_patch_cannot_name_a_host() {
        let err = serde_json::from_value::<ScalePatch>(json!({"host": "other"}))
            .expect_err("host is not a scale field");
        assert!(err.to_string().contains("unknown field `host`"), "{err}");
        // And a patch keeps the host it is applied to.
        let base = spec(json!({"host": "eu"})).expect("parses");
        let patch: ScalePatch =
            serde_json::from_value(json!({"control_plane": {"replicas": 3}})).expect("parses");
        assert_eq!(patch.apply_to(&base).expect("valid").host, "eu");
    }

    #[test]
    fn chart_versions_parse_as_semver_without_build_metadata() {
        let v = ChartVersion::parse("0.30.0-rc.1").expect("parses");
        assert_eq!((v.major, v.minor, v.patch), (0, 30, 0));
        assert_eq!(v.pre.as_deref(), Some("rc.1"));
        assert_eq!(ChartVersion::parse("1.2.3").map(|v| v.pre), Some(None));
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1..3",
            "1.2.3-",
            "1.2.3-a b",
            "01234567890.1.1",
        ] {
            assert_eq!(ChartVersion::parse(bad), None, "{bad}");
        }
        assert_eq!(
            MinorVersion::of_kubernetes("1.31.4"),
            Some(MinorVersion {
                major: 1,
                minor: 31
            })
        );
        assert_eq!(
            MinorVersion::of_chart("0.29.1").map(|m| m.to_string()),
            Some("0.29".into())
        );
        let spec: VClusterSpec =
            serde_json::from_value(json!({"vcluster_version": "0.29.1"})).expect("parses");
        spec.validate().expect("valid");
        // Absent, it is not written: the request hash of an older create stays the same.
        let plain = serde_json::to_value(VClusterSpec::default()).expect("ser");
        assert!(plain.get("vcluster_version").is_none(), "{plain}");
    }
}
