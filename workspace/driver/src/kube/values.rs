//! ovc's [`ReleaseValues`] as vcluster chart values (docs/vcluster-mechanics.md §1, §6),
//! and back. Quota and control-plane resources go through Helm values only, since direct
//! patches are reverted by the next upgrade. The chart's schema refuses unknown keys, so
//! ovc keeps its own copy of the values (for [`ReleaseValues`] read-back) as an annotation
//! of the control-plane StatefulSet, a free-form map of the chart.

use super::error::{KubeError, KubeResult};
use crate::ReleaseValues;
use serde_json::{Map, Value, json};

/// The StatefulSet annotation holding ovc's values of the release.
pub const VALUES_ANNOTATION: &str = "ovc.dev/release-values";

/// Renders the chart values: `helm_values` first, ovc's typed values on top.
/// `server` is the API server address written into `vc-NAME` (`exportKubeConfig.server`)
/// and added to the certificate's SANs (`None`: neither).
pub fn render(values: &ReleaseValues, server: Option<&str>) -> KubeResult<Value> {
    if values.control_plane.replicas == 0 {
        return Err(KubeError::refused(
            ovc_types::error::Code::InvalidArgument,
            "INVALID_VALUES",
            "control_plane.replicas must be at least 1",
        ));
    }
    let own = serde_json::to_string(values)
        .map_err(|e| KubeError::Config(format!("values do not encode: {e}")))?;
    let cp = &values.control_plane;
    let q = &values.quota;
    let mut labels = Map::new();
    for (k, v) in &values.labels {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    let san = server.and_then(server_host);
    let mut typed = json!({
        "controlPlane": {
            "distro": {"k8s": {"enabled": true, "image": {"tag": format!("v{}", values.kubernetes_version)}}},
            "statefulSet": {
                "highAvailability": {"replicas": cp.replicas},
                "resources": {"requests": {"cpu": cp.cpu.as_str(), "memory": cp.memory.as_str()}},
                "labels": labels,
                "annotations": {VALUES_ANNOTATION: own},
            },
            "proxy": {"extraSANs": san.map(|h| vec![h]).unwrap_or_default()},
        },
        "policies": {
            "resourceQuota": {
                "enabled": true,
                "quota": {
                    "requests.cpu": q.cpu.as_str(),
                    "requests.memory": q.memory.as_str(),
                    "requests.storage": q.storage.as_str(),
                    "count/pods": q.pods,
                },
            },
        },
    });
    if let Some(server) = server {
        merge(&mut typed, json!({"exportKubeConfig": {"server": server}}));
    }
    let mut out = Value::Object(values.helm_values.clone());
    merge(&mut out, typed);
    if out.pointer("/controlPlane/backingStore").is_none() {
        // The chart default, spelled out so the snapshot path (kine/sqlite) is known.
        merge(
            &mut out,
            json!({"controlPlane": {"backingStore": {"database": {"embedded": {"enabled": true}}}}}),
        );
    }
    Ok(out)
}

/// ovc's values of a release from its chart values (`helm status` `config`); `None` when
/// the release was not installed by ovc.
pub fn parse(config: &Map<String, Value>) -> Option<ReleaseValues> {
    let own = config
        .get("controlPlane")?
        .get("statefulSet")?
        .get("annotations")?
        .get(VALUES_ANNOTATION)?
        .as_str()?;
    serde_json::from_str(own).ok()
}

/// True when the chart values say the etcd is deployed as its own StatefulSet, which
/// vcluster cannot snapshot through the request objects.
pub fn deploys_etcd(config: &Map<String, Value>) -> bool {
    Value::Object(config.clone())
        .pointer("/controlPlane/backingStore/etcd/deploy/enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// `controlPlane.statefulSet.highAvailability.replicas` of chart values (default 1).
pub fn ha_replicas(config: &Value) -> u32 {
    config
        .pointer("/controlPlane/statefulSet/highAvailability/replicas")
        .and_then(Value::as_u64)
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r > 0)
        .unwrap_or(1)
}

fn server_host(server: &str) -> Option<String> {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

/// Deep merge: objects merge key by key, anything else in `top` replaces.
pub fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, t) => *b = t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovc_types::spec::VClusterSpec;

    fn values() -> ReleaseValues {
        let spec: VClusterSpec = serde_json::from_value(json!({})).unwrap();
        ReleaseValues {
            kubernetes_version: spec.kubernetes_version,
            control_plane: spec.control_plane,
            quota: spec.quota,
            labels: [("team".to_string(), "a".to_string())].into(),
            helm_values: json!({"sync": {"toHost": {"ingresses": {"enabled": true}}}, "policies": {"limitRange": {"enabled": true}}})
                .as_object()
                .unwrap()
                .clone(),
            chart_version: None,
        }
    }

    #[test]
    fn rendered_values_carry_the_spec_and_read_back() {
        let v = values();
        let out = render(&v, Some("https://demo.ovc-p-demo:443")).unwrap();
        assert_eq!(
            out.pointer("/controlPlane/statefulSet/highAvailability/replicas"),
            Some(&json!(1))
        );
        assert_eq!(
            out.pointer("/policies/resourceQuota/quota/count~1pods"),
            Some(&json!(v.quota.pods))
        );
        assert_eq!(
            out.pointer("/policies/limitRange/enabled"),
            Some(&json!(true))
        );
        assert_eq!(
            out.pointer("/sync/toHost/ingresses/enabled"),
            Some(&json!(true))
        );
        assert_eq!(
            out.pointer("/controlPlane/proxy/extraSANs/0"),
            Some(&json!("demo.ovc-p-demo"))
        );
        assert_eq!(
            out.pointer("/exportKubeConfig/server"),
            Some(&json!("https://demo.ovc-p-demo:443"))
        );
        assert_eq!(
            out.pointer("/controlPlane/statefulSet/labels/team"),
            Some(&json!("a"))
        );
        assert_eq!(parse(out.as_object().unwrap()), Some(v));
    }

    #[test]
    fn zero_replicas_are_refused() {
        let mut v = values();
        v.control_plane.replicas = 0;
        assert!(render(&v, Some("https://x:443")).is_err());
    }
}
