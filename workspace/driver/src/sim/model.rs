//! What the simulated host stores: namespaces and releases as plain serde structs, and the
//! pure rules for scaling and readiness. No IO here; `super` loads, changes and saves.

use crate::{ANNOTATION_CREATED_BY, ControlPlaneStatus, Owner, ReleaseInfo, ReleaseValues};
use chrono::{DateTime, Utc};
use ovc_types::OperationId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The chart version the simulated host reports when the values name none.
pub const SIM_CHART_VERSION: &str = "0.29.1-sim";

/// The workload pods a fresh vcluster runs (what the syncer syncs to the host).
pub const WORKLOAD_PODS: [&str; 3] = ["workload-0", "workload-1", "workload-2"];

/// Everything on the simulated host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimState {
    /// Namespaces by name.
    pub namespaces: Vec<SimNamespace>,
    /// Releases by (namespace, name).
    pub releases: Vec<SimRelease>,
}

/// A host namespace: one ovc created (labelled with its owner) or one created by someone
/// else ([`crate::sim::SimHost::create_foreign_namespace`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimNamespace {
    /// The name.
    pub name: String,
    /// Labels (`app.kubernetes.io/managed-by=ovc` and the owner's, [`Owner::labels`]).
    pub labels: BTreeMap<String, String>,
    /// Annotations (`vcluster.loft.sh/created=true`, mechanics §1, and the creating
    /// operation, [`ANNOTATION_CREATED_BY`]).
    pub annotations: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl SimNamespace {
    /// A namespace as `ensure_namespace` creates it for `owner` in `operation`.
    pub(crate) fn owned(
        name: &str,
        owner: &Owner,
        operation: Option<OperationId>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut annotations = BTreeMap::from([("vcluster.loft.sh/created".into(), "true".into())]);
        if let Some(op) = operation {
            annotations.insert(ANNOTATION_CREATED_BY.into(), op.to_string());
        }
        Self {
            name: name.to_string(),
            labels: owner.labels(),
            annotations,
            created_at: now,
        }
    }
}

/// One vcluster release on the simulated host: the Helm release, its control plane
/// (StatefulSet), the synced workload pods and the backing store (PVC `data-NAME-0`).
///
/// Scaling is modelled as: at `scaled_at` the spec became `replicas`; until `settles_at`
/// the pods are still `pods_before` (`ready_before` of them ready), from then on there
/// are `replicas` pods, all ready. `first_ready_at` is when the control plane was first
/// ready (the syncer then writes the kubeconfig Secret `vc-NAME`, which survives pauses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimRelease {
    /// Host namespace.
    pub namespace: String,
    /// Release name.
    pub name: String,
    /// Helm revision, from 1.
    pub revision: u32,
    /// The values of that revision.
    pub values: ReleaseValues,
    /// The control plane's `spec.replicas`.
    pub replicas: u32,
    /// Annotated `loft.sh/paused=true`.
    pub paused: bool,
    /// `loft.sh/paused-replicas`.
    pub paused_replicas: Option<u32>,
    /// `loft.sh/paused-date`.
    pub paused_at: Option<DateTime<Utc>>,
    /// Pods that existed when it was last scaled.
    pub pods_before: u32,
    /// Ready pods when it was last scaled.
    pub ready_before: u32,
    /// When it was last scaled.
    pub scaled_at: DateTime<Utc>,
    /// When the last scale is complete (`scaled_at` + the ready delay).
    pub settles_at: DateTime<Utc>,
    /// When the control plane was first ready (the kubeconfig exists from then on).
    pub first_ready_at: Option<DateTime<Utc>>,
    /// Names of the synced workload pods in the namespace.
    pub workload_pods: Vec<String>,
    /// The backing store's content (hex in the stored document); empty when it is kept
    /// in etcd (`etcd_prefix`).
    #[serde(with = "hex_bytes")]
    pub backing_store: Vec<u8>,
    /// Where in the simulator's etcd the backing store is kept (`None`: in
    /// `backing_store`). Chosen at install (`OVC_SIM_ETCD`) and kept for life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
    /// When revision 1 was installed.
    pub installed_at: DateTime<Utc>,
    /// When anything last changed.
    pub updated_at: DateTime<Utc>,
}

/// `now + d` (saturating at the far future rather than failing).
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl SimRelease {
    /// A fresh install (revision 1) whose control plane becomes ready after `delay`; its
    /// backing store in etcd under `etcd_prefix` when given.
    pub(crate) fn install(
        namespace: &str,
        name: &str,
        values: &ReleaseValues,
        now: DateTime<Utc>,
        delay: Duration,
        etcd_prefix: Option<String>,
    ) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            revision: 1,
            values: values.clone(),
            replicas: values.control_plane.replicas,
            paused: false,
            paused_replicas: None,
            paused_at: None,
            pods_before: 0,
            ready_before: 0,
            scaled_at: now,
            settles_at: after(now, delay),
            first_ready_at: None,
            workload_pods: WORKLOAD_PODS.iter().map(|p| p.to_string()).collect(),
            backing_store: if etcd_prefix.is_some() {
                Vec::new()
            } else {
                initial_backing_store(namespace, name)
            },
            etcd_prefix,
            installed_at: now,
            updated_at: now,
        }
    }

    /// The release as Helm reports it.
    pub fn info(&self) -> ReleaseInfo {
        ReleaseInfo {
            revision: self.revision,
            values: self.values.clone(),
            status: crate::ReleaseStatus::Deployed,
            chart_version: self
                .values
                .chart_version
                .clone()
                .unwrap_or_else(|| SIM_CHART_VERSION.to_owned()),
        }
    }

    /// The control plane's status at `now`.
    pub fn control_plane(&self, now: DateTime<Utc>) -> ControlPlaneStatus {
        let (pods, ready) = if now >= self.settles_at {
            (self.replicas, self.replicas)
        } else {
            (self.pods_before, self.ready_before.min(self.pods_before))
        };
        ControlPlaneStatus {
            replicas: self.replicas,
            pods,
            ready,
            paused: self.paused,
            paused_replicas: if self.paused {
                self.paused_replicas
            } else {
                None
            },
        }
    }

    /// Not paused, and every wanted replica exists and is ready at `now`.
    pub fn is_running(&self, now: DateTime<Utc>) -> bool {
        !self.paused && self.control_plane(now).is_ready()
    }

    /// The kubeconfig at `now`: present once the control plane has been ready.
    pub fn kubeconfig(&self, now: DateTime<Utc>) -> Option<String> {
        let mut settled = self.clone();
        settled.settle(now);
        settled
            .first_ready_at
            .map(|_| render_kubeconfig(&self.namespace, &self.name))
    }

    /// Records what time alone has done by `now` (the first readiness).
    pub(crate) fn settle(&mut self, now: DateTime<Utc>) {
        if self.first_ready_at.is_none() && self.replicas > 0 && now >= self.settles_at {
            self.first_ready_at = Some(self.settles_at);
        }
    }

    /// Sets `spec.replicas`; the pods follow after `delay`.
    pub(crate) fn scale(&mut self, replicas: u32, now: DateTime<Utc>, delay: Duration) {
        self.settle(now);
        let current = self.control_plane(now);
        self.pods_before = current.pods;
        self.ready_before = current.ready;
        self.replicas = replicas;
        self.scaled_at = now;
        self.settles_at = after(now, delay);
    }
}

/// The objects a fresh virtual control plane writes on its first start, with their
/// etcd keys (relative to the backing store's prefix, Kubernetes' `/registry/` layout).
pub fn initial_objects() -> Vec<(String, serde_json::Value)> {
    let obj = |kind: &str, namespace: Option<&str>, name: &str| {
        let mut metadata = serde_json::json!({"name": name});
        if let Some(ns) = namespace {
            metadata["namespace"] = ns.into();
        }
        serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": metadata})
    };
    vec![
        (
            "registry/namespaces/default".into(),
            obj("Namespace", None, "default"),
        ),
        (
            "registry/namespaces/kube-system".into(),
            obj("Namespace", None, "kube-system"),
        ),
        (
            "registry/serviceaccounts/default/default".into(),
            obj("ServiceAccount", Some("default"), "default"),
        ),
        (
            "registry/configmaps/default/kube-root-ca.crt".into(),
            obj("ConfigMap", Some("default"), "kube-root-ca.crt"),
        ),
    ]
}

/// `backing_store` as a virtual API server of Kubernetes `version` leaves it: the JSON
/// document marked with its `storage_version` (data that is not such a document, e.g.
/// loaded from elsewhere, is left as it is).
pub fn at_storage_version(backing_store: &[u8], version: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(backing_store) {
        Ok(serde_json::Value::Object(mut doc)) => {
            doc.insert("storage_version".into(), version.into());
            serde_json::Value::Object(doc).to_string().into_bytes()
        }
        _ => backing_store.to_vec(),
    }
}

/// The backing store of a fresh vcluster kept in the simulator's database: a small
/// deterministic JSON document whose `objects` are [`initial_objects`].
pub fn initial_backing_store(namespace: &str, release: &str) -> Vec<u8> {
    let doc = serde_json::json!({
        "release": release,
        "namespace": namespace,
        "revision": 1,
        "objects": initial_objects().into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
    });
    doc.to_string().into_bytes()
}

/// The per-object export of a backing store kept in the simulator's database (the
/// document of [`initial_backing_store`]): its `objects`. Documents written before the
/// objects were full Kubernetes objects list `{kind, namespace, name}` only; those kinds
/// (Namespace, ServiceAccount, ConfigMap) are all core `v1`, which fills `apiVersion`.
/// `Err`: not such a document (data loaded from elsewhere), with why.
pub fn sim_export(data: &[u8]) -> Result<Vec<crate::ExportedObject>, String> {
    let doc: serde_json::Value = serde_json::from_slice(data).map_err(|e| {
        format!("the simulated backing store is not the simulator's JSON document: {e}")
    })?;
    let objects = doc
        .get("objects")
        .and_then(|o| o.as_array())
        .ok_or("the simulated backing store's document has no `objects` list")?;
    objects
        .iter()
        .map(|o| {
            let text =
                |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
            let kind = text(o.get("kind")).ok_or_else(|| format!("an object without kind: {o}"))?;
            let full = o.get("metadata").is_some();
            let (namespace, name) = if full {
                (
                    text(o.pointer("/metadata/namespace")),
                    text(o.pointer("/metadata/name")),
                )
            } else {
                (text(o.get("namespace")), text(o.get("name")))
            };
            let name = name.ok_or_else(|| format!("an object without name: {o}"))?;
            let api_version = if full {
                text(o.get("apiVersion")).unwrap_or_default()
            } else {
                "v1".to_string()
            };
            let object = if full {
                o.clone()
            } else {
                let mut metadata = serde_json::json!({"name": name});
                if let Some(ns) = &namespace {
                    metadata["namespace"] = ns.as_str().into();
                }
                serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": metadata})
            };
            Ok(crate::ExportedObject {
                api_version,
                kind,
                namespace,
                name,
                key: None,
                object: Some(object),
                protobuf: None,
            })
        })
        .collect()
}

/// The kubeconfig the syncer writes into Secret `vc-NAME` (server = the Service).
pub fn render_kubeconfig(namespace: &str, release: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {release}\n\
         \x20 cluster:\n\
         \x20   server: https://{release}.{namespace}:443\n\
         contexts:\n\
         - name: {release}\n\
         \x20 context:\n\
         \x20   cluster: {release}\n\
         \x20   user: {release}\n\
         current-context: {release}\n\
         users:\n\
         - name: {release}\n\
         \x20 user:\n\
         \x20   token: sim-{namespace}-{release}\n"
    )
}

/// `Vec<u8>` as a lowercase hex string.
mod hex_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Write as _;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            // Writing into a String cannot fail.
            let _ = write!(out, "{b:02x}");
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("hex string of odd length"));
        }
        let digit = |c: u8| -> Result<u8, D::Error> {
            (c as char)
                .to_digit(16)
                .map(|v| v as u8)
                .ok_or_else(|| D::Error::custom(format!("bad hex digit {:?}", c as char)))
        };
        text.as_bytes()
            .chunks(2)
            .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_store_round_trips_as_hex() {
        let mut r = SimRelease::install(
            "ns",
            "a",
            &crate::ReleaseValues {
                kubernetes_version: "1.31".into(),
                control_plane: Default::default(),
                quota: Default::default(),
                labels: Default::default(),
                helm_values: Default::default(),
                chart_version: None,
            },
            Utc::now(),
            Duration::ZERO,
            None,
        );
        r.backing_store = vec![0, 1, 0xab, 0xff];
        let doc = serde_json::to_value(&r).expect("serialize");
        assert_eq!(doc["backing_store"], "0001abff");
        let back: SimRelease = serde_json::from_value(doc).expect("deserialize");
        assert_eq!(back, r);
        let mut bad = serde_json::to_value(&r).expect("serialize");
        bad["backing_store"] = "0g".into();
        assert!(serde_json::from_value::<SimRelease>(bad).is_err());
    }

    #[test]
    fn the_export_lists_the_documents_objects_old_and_new() {
        let objects = sim_export(&initial_backing_store("ns", "a")).expect("export");
        let refs: Vec<String> = objects.iter().map(|o| o.reference()).collect();
        assert_eq!(
            refs,
            [
                "Namespace/default",
                "Namespace/kube-system",
                "ServiceAccount/default/default",
                "ConfigMap/default/kube-root-ca.crt"
            ]
        );
        assert!(objects.iter().all(|o| o.api_version == "v1"));
        let old = br#"{"objects":[{"kind":"ConfigMap","namespace":"default","name":"x"}]}"#;
        let old = sim_export(old).expect("an old document");
        assert_eq!(
            old[0].object.as_ref().unwrap()["metadata"]["namespace"],
            "default"
        );
        assert_eq!(old[0].api_version, "v1");
        assert!(
            sim_export(b"\x00\x01")
                .unwrap_err()
                .contains("not the simulator's")
        );
        assert!(sim_export(b"{}").unwrap_err().contains("no `objects`"));
    }

    #[test]
    fn kubeconfig_names_the_service() {
        let k = render_kubeconfig("ovc-default-a", "a");
        assert!(k.contains("server: https://a.ovc-default-a:443"), "{k}");
    }
}
