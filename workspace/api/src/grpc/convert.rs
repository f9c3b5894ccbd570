//! Wire shapes of the gRPC transport: the domain read models (`ovc_types::resource`)
//! encoded as `ovc.v1` messages, request messages decoded into the inputs of the service
//! layer, and `serde_json::Value` ⇄ `google.protobuf.Struct`.
//!
//! Specs and scale patches are decoded through the same serde types REST uses (a JSON
//! object holding only the fields the client set), so defaults, quantity syntax and
//! value checks are the same on both transports.

use super::proto;
use crate::ApiError;
use chrono::{DateTime, Utc};
use ovc_store::RecordedEvent;
use ovc_types::error::Status;
use ovc_types::resource::{Operation, OperationStep, Snapshot, VCluster};
use ovc_types::spec::{ScalePatch, VClusterSpec};
use prost_types::value::Kind;
use serde_json::{Map, Value};

type ApiResult<T> = Result<T, ApiError>;

/// A time as a protobuf Timestamp.
pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf Timestamp as an RFC 3339 string (the form the service layer parses).
pub(crate) fn rfc3339(t: &prost_types::Timestamp) -> ApiResult<String> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::<Utc>::from_timestamp(t.seconds, n))
        .map(|d| d.to_rfc3339())
        .ok_or_else(|| ApiError::invalid("since is not a valid timestamp", "INVALID_SINCE"))
}

/// A protobuf Duration as the service layer's time-out syntax (`<n>ms`); negative or
/// malformed durations are INVALID_ARGUMENT, like a malformed `?timeout=`.
pub(crate) fn timeout_text(d: &prost_types::Duration) -> ApiResult<String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ApiError::invalid(
            "timeout must be a non-negative duration (at most 60s)",
            "INVALID_TIMEOUT",
        ));
    }
    let millis = (d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add((d.nanos as u64).div_ceil(1_000_000));
    Ok(format!("{millis}ms"))
}

/// A JSON value as a protobuf Value. Numbers become doubles (Struct has no integers).
pub fn json_to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(map_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn map_to_struct(o: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A JSON value as a Struct: objects field by field, `null` as absent, anything else
/// under the key `value`.
pub fn json_to_struct(v: &Value) -> Option<prost_types::Struct> {
    match v {
        Value::Null => None,
        Value::Object(o) => Some(map_to_struct(o)),
        other => Some(prost_types::Struct {
            fields: [("value".to_string(), json_to_value(other))].into(),
        }),
    }
}

/// A protobuf Value as JSON. Whole numbers within ±2^53 become JSON integers (so
/// `replicas: 3` stays `3`); NaN and infinities are INVALID_ARGUMENT.
pub fn value_to_json(v: &prost_types::Value) -> ApiResult<Value> {
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if n.fract() == 0.0 && n.abs() <= EXACT {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(Value::Number)
                    .ok_or_else(|| {
                        ApiError::invalid(format!("{n} is not a JSON number"), "INVALID_BODY")
                    })?
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .map(value_to_json)
                .collect::<ApiResult<_>>()?,
        ),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)?),
    })
}

/// A Struct as a JSON object.
pub fn struct_to_map(s: &prost_types::Struct) -> ApiResult<Map<String, Value>> {
    s.fields
        .iter()
        .map(|(k, v)| Ok((k.clone(), value_to_json(v)?)))
        .collect()
}

fn id_text<T: ToString>(id: Option<T>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

/// The wire name of a serde enum (e.g. `Distro::K8s` → `k8s`).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A domain status as the `ovc.v1.Status` message.
pub(crate) fn status(s: &Status) -> proto::Status {
    proto::Status {
        code: s.code.grpc_code(),
        status: s.code.as_str().to_string(),
        message: s.message.clone(),
        details: s
            .details
            .iter()
            .map(|d| proto::ErrorDetail {
                reason: d.reason.clone(),
                metadata: d.metadata.clone().into_iter().collect(),
            })
            .collect(),
    }
}

/// A spec as its message, every field set.
pub(crate) fn spec(s: &VClusterSpec) -> proto::VClusterSpec {
    proto::VClusterSpec {
        kubernetes_version: Some(s.kubernetes_version.clone()),
        distro: Some(wire_name(&s.distro)),
        control_plane: Some(proto::ControlPlane {
            replicas: Some(s.control_plane.replicas),
            cpu: Some(s.control_plane.cpu.to_string()),
            memory: Some(s.control_plane.memory.to_string()),
        }),
        quota: Some(proto::Quota {
            cpu: Some(s.quota.cpu.to_string()),
            memory: Some(s.quota.memory.to_string()),
            pods: Some(s.quota.pods),
            storage: Some(s.quota.storage.to_string()),
        }),
        labels: s.labels.clone().into_iter().collect(),
        helm_values: Some(map_to_struct(&s.helm_values)),
        host: Some(s.host.clone()),
        vcluster_version: s.vcluster_version.clone(),
    }
}

/// A vcluster as its message.
pub(crate) fn vcluster(v: &VCluster) -> proto::VCluster {
    proto::VCluster {
        name: v.name.to_string(),
        project: v.project.to_string(),
        uid: v.uid.to_string(),
        state: v.state.as_str().to_string(),
        spec: Some(spec(&v.spec)),
        host_namespace: v.host_namespace.clone(),
        active_operation: id_text(v.active_operation),
        last_operation: id_text(v.last_operation),
        version: v.version,
        created_at: Some(timestamp(v.created_at)),
        updated_at: Some(timestamp(v.updated_at)),
    }
}

fn step(s: &OperationStep) -> proto::Step {
    proto::Step {
        name: s.name.clone(),
        state: s.state.as_str().to_string(),
        attempts: s.attempts,
        started_at: s.started_at.map(timestamp),
        finished_at: s.finished_at.map(timestamp),
        error: s.error.as_ref().map(status),
    }
}

/// An operation as its message.
pub(crate) fn operation(o: &Operation) -> proto::Operation {
    proto::Operation {
        id: o.id.to_string(),
        name: o.name.clone(),
        kind: o.kind.as_str().to_string(),
        vcluster: o.vcluster.to_string(),
        project: o.project.to_string(),
        request_id: o.request_id.clone().unwrap_or_default(),
        state: o.state.as_str().to_string(),
        done: o.done,
        steps: o.steps.iter().map(step).collect(),
        error: o.error.as_ref().map(status),
        result: json_to_struct(&o.result),
        retry_of: id_text(o.retry_of),
        created_at: Some(timestamp(o.created_at)),
        updated_at: Some(timestamp(o.updated_at)),
    }
}

/// A snapshot as its message.
pub(crate) fn snapshot(s: &Snapshot) -> proto::Snapshot {
    proto::Snapshot {
        id: s.id.to_string(),
        vcluster: s.vcluster.to_string(),
        project: s.project.to_string(),
        state: s.state.as_str().to_string(),
        size_bytes: s.size_bytes,
        sha256: s.sha256.clone().unwrap_or_default(),
        location: s.location.clone().unwrap_or_default(),
        metadata: json_to_struct(&s.metadata),
        description: s.description.clone().unwrap_or_default(),
        operation_id: s.operation_id.to_string(),
        error: s.error.as_ref().map(status),
        created_at: Some(timestamp(s.created_at)),
        updated_at: Some(timestamp(s.updated_at)),
    }
}

/// An event-log row as its message.
pub(crate) fn event(e: &RecordedEvent) -> proto::Event {
    proto::Event {
        position: e.position,
        stream: e.stream.clone(),
        version: e.version,
        r#type: e.event_type.clone(),
        data: json_to_struct(&e.data),
        metadata: json_to_struct(&e.metadata),
        recorded_at: Some(timestamp(e.recorded_at)),
    }
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(key.to_string(), v);
    }
}

fn control_plane_json(c: &proto::ControlPlane) -> Value {
    let mut m = Map::new();
    put(&mut m, "replicas", c.replicas.map(Value::from));
    put(&mut m, "cpu", c.cpu.clone().map(Value::from));
    put(&mut m, "memory", c.memory.clone().map(Value::from));
    Value::Object(m)
}

fn quota_json(q: &proto::Quota) -> Value {
    let mut m = Map::new();
    put(&mut m, "cpu", q.cpu.clone().map(Value::from));
    put(&mut m, "memory", q.memory.clone().map(Value::from));
    put(&mut m, "pods", q.pods.map(Value::from));
    put(&mut m, "storage", q.storage.clone().map(Value::from));
    Value::Object(m)
}

/// A requested spec: the fields the client set, through REST's serde path (absent
/// fields take their defaults; bad quantities or distros are INVALID_ARGUMENT).
pub(crate) fn spec_from(s: Option<proto::VClusterSpec>) -> ApiResult<VClusterSpec> {
    let Some(s) = s else {
        return Ok(VClusterSpec::default());
    };
    let mut m = Map::new();
    put(
        &mut m,
        "kubernetes_version",
        s.kubernetes_version.map(Value::from),
    );
    put(&mut m, "distro", s.distro.map(Value::from));
    put(&mut m, "host", s.host.map(Value::from));
    put(
        &mut m,
        "vcluster_version",
        s.vcluster_version.map(Value::from),
    );
    put(
        &mut m,
        "control_plane",
        s.control_plane.as_ref().map(control_plane_json),
    );
    put(&mut m, "quota", s.quota.as_ref().map(quota_json));
    if !s.labels.is_empty() {
        m.insert(
            "labels".into(),
            Value::Object(
                s.labels
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ),
        );
    }
    if let Some(h) = &s.helm_values {
        m.insert("helm_values".into(), Value::Object(struct_to_map(h)?));
    }
    serde_json::from_value(Value::Object(m))
        .map_err(|e| ApiError::invalid(format!("spec: {e}"), "INVALID_BODY"))
}

/// A requested scale: only the fields the client set change.
pub(crate) fn scale_patch_from(
    control_plane: Option<&proto::ControlPlane>,
    quota: Option<&proto::Quota>,
) -> ApiResult<ScalePatch> {
    let mut m = Map::new();
    put(
        &mut m,
        "control_plane",
        control_plane.map(control_plane_json),
    );
    put(&mut m, "quota", quota.map(quota_json));
    serde_json::from_value(Value::Object(m))
        .map_err(|e| ApiError::invalid(format!("scale: {e}"), "INVALID_BODY"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_struct_roundtrip() {
        let v = json!({"a": 1, "b": [true, null, "x", 1.5], "c": {"d": -3}});
        let s = json_to_struct(&v).expect("object");
        assert_eq!(Value::Object(struct_to_map(&s).expect("back")), v);
    }

    #[test]
    fn non_finite_numbers_are_invalid_argument() {
        let v = prost_types::Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        let e = value_to_json(&v).expect_err("NaN");
        assert_eq!(e.0.code, ovc_types::error::Code::InvalidArgument);
    }

    #[test]
    fn spec_defaults_and_validation_follow_the_serde_path() {
        let s = spec_from(None).expect("default");
        assert_eq!(s, VClusterSpec::default());
        let partial = proto::VClusterSpec {
            quota: Some(proto::Quota {
                cpu: Some("8".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = spec_from(Some(partial)).expect("partial");
        assert_eq!(s.quota.cpu.as_str(), "8");
        assert_eq!(s.quota.memory, VClusterSpec::default().quota.memory);
        // The whole spec round-trips through its message.
        assert_eq!(spec_from(Some(spec(&s))).expect("roundtrip"), s);
        let bad = proto::VClusterSpec {
            distro: Some("k3s".into()),
            ..Default::default()
        };
        let e = spec_from(Some(bad)).expect_err("k3s");
        assert_eq!(e.0.code, ovc_types::error::Code::InvalidArgument);
        assert!(e.0.message.contains("k3s"), "{}", e.0.message);
    }

    #[test]
    fn durations_become_millis_and_negative_ones_are_refused() {
        let d = prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000,
        };
        assert_eq!(timeout_text(&d).expect("ok"), "2500ms");
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(timeout_text(&neg).is_err());
    }
}
