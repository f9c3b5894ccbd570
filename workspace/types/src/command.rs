//! What a caller asked for: an operation kind and its parameters, as recorded in the
//! operation's first event so a worker knows exactly what to do, and hashed for
//! idempotency (API.md "Idempotency": same `request_id` + same parameters = same op).
//!
//! [`Command`] is open: `{kind, params}`, serialized as the one internally tagged JSON
//! object ovc has always written (`{"kind":"SUSPEND","snapshot":true,...}`), so every
//! stored event decodes. Each workflow declares its parameters as a typed struct
//! ([`OperationParams`]); accept decodes and validates them once, steps read them typed.
//! The parameter types of the calls accept handles by hand (they create a vcluster or
//! target a snapshot) live here.

use crate::error::Status;
use crate::ids::SnapshotId;
use crate::name::{ProjectName, VClusterName};
use crate::spec::VClusterSpec;
use crate::state::{Call, OperationKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why parameters do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The parameters are not a JSON object.
    #[error("the parameters of {kind} must be a JSON object")]
    NotAnObject {
        /// The kind.
        kind: OperationKind,
    },
    /// The command is of another kind than the parameters asked for.
    #[error("a {got} command has no {want} parameters")]
    WrongKind {
        /// The command's kind.
        got: OperationKind,
        /// The kind of the parameter type.
        want: OperationKind,
    },
    /// The parameters do not decode into the kind's type.
    #[error("{kind} parameters: {message}")]
    Invalid {
        /// The kind.
        kind: OperationKind,
        /// serde's message (it names the field).
        message: String,
    },
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        Status::invalid_argument(e.to_string()).with_reason("INVALID_PARAMETERS")
    }
}

/// The typed parameters of one operation kind, declared next to its workflow. The JSON
/// of a value is the command without `kind` (what the log stores, what `ovc_submit`
/// takes). Use `#[serde(deny_unknown_fields)]`, and give every field that older
/// commands lack a default.
pub trait OperationParams: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind these parameters start.
    const KIND: OperationKind;

    /// Checks what serde cannot (lengths, formats); run once at accept.
    fn validate(&self) -> Result<(), Status> {
        Ok(())
    }
}

/// The parameters of one mutating call: its kind and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    kind: OperationKind,
    params: serde_json::Map<String, serde_json::Value>,
}

impl Command {
    /// The command of typed parameters.
    pub fn new<P: OperationParams>(params: P) -> Self {
        let value = serde_json::to_value(&params).unwrap_or_default();
        let params = match value {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Command {
            kind: P::KIND,
            params,
        }
    }

    /// The command of `kind` with untyped `params` (a JSON object; `null` is `{}`); the
    /// caller decodes them with the kind's type before trusting them.
    pub fn from_parts(
        kind: OperationKind,
        params: serde_json::Value,
    ) -> Result<Self, CommandError> {
        let params = match params {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            _ => return Err(CommandError::NotAnObject { kind }),
        };
        Ok(Command { kind, params })
    }

    /// The operation kind this command starts.
    pub fn kind(&self) -> OperationKind {
        self.kind
    }

    /// The parameters as JSON (the command without `kind`).
    pub fn params_json(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.params
    }

    /// The parameters, typed; an error when the command is of another kind or its
    /// parameters are not a `P`.
    pub fn params<P: OperationParams>(&self) -> Result<P, CommandError> {
        if self.kind != P::KIND {
            return Err(CommandError::WrongKind {
                got: self.kind,
                want: P::KIND,
            });
        }
        serde_json::from_value(serde_json::Value::Object(self.params.clone())).map_err(|e| {
            CommandError::Invalid {
                kind: self.kind,
                message: e.to_string(),
            }
        })
    }

    /// The vcluster state-machine call this command is; `None` for commands that do not
    /// go through the vcluster's state machine (DeleteSnapshot is checked against its
    /// snapshot instead). CREATE makes a vcluster, RESTORE makes one or overwrites one
    /// (by its target), every other kind works on an existing one.
    pub fn call(&self) -> Option<Call> {
        Some(match self.kind {
            OperationKind::DELETE_SNAPSHOT => return None,
            OperationKind::CREATE => Call::New(self.kind),
            OperationKind::RESTORE => match self.params::<RestoreParams>() {
                Ok(RestoreParams {
                    target: RestoreTarget::NewName(_),
                    ..
                }) => Call::New(self.kind),
                _ => Call::On(self.kind),
            },
            kind => Call::On(kind),
        })
    }
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.params.len() + 1))?;
        m.serialize_entry("kind", &self.kind)?;
        for (k, v) in &self.params {
            if k != "kind" {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut params = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let kind = match params.remove("kind") {
            Some(serde_json::Value::String(k)) => OperationKind::from_trusted(&k)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown kind {k:?}")))?,
            _ => return Err(serde::de::Error::missing_field("kind")),
        };
        Ok(Command { kind, params })
    }
}

impl utoipa::PartialSchema for Command {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The operation's kind and its parameters (the request body of its call)",
            ))
            .property(
                "kind",
                utoipa::openapi::Ref::from_schema_name("OperationKind"),
            )
            .required("kind")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for Command {
    fn name() -> std::borrow::Cow<'static, str> {
        "Command".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "OperationKind".into(),
            <OperationKind as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// Where a restore goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreTarget {
    /// Into a new vcluster with this name (spec from the snapshot's metadata).
    NewName(VClusterName),
    /// Over an existing vcluster.
    Existing(VClusterName),
}

/// CreateVCluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The desired spec.
    pub spec: VClusterSpec,
}

impl OperationParams for CreateParams {
    const KIND: OperationKind = OperationKind::CREATE;
}

/// RestoreVCluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// The snapshot to restore.
    pub snapshot_id: SnapshotId,
    /// Where to restore it.
    pub target: RestoreTarget,
}

impl OperationParams for RestoreParams {
    const KIND: OperationKind = OperationKind::RESTORE;
}

/// DeleteVCluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {}

impl OperationParams for DeleteParams {
    const KIND: OperationKind = OperationKind::DELETE;
}

/// DeleteSnapshot (`DELETE /v1/snapshots/{id}`): deletes the snapshot's artifact. It
/// targets the snapshot, not a vcluster: the operation carries the snapshot's project
/// and vcluster name, and the vcluster's state is neither checked nor changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteSnapshotParams {
    /// The snapshot to delete.
    pub snapshot_id: SnapshotId,
}

impl OperationParams for DeleteSnapshotParams {
    const KIND: OperationKind = OperationKind::DELETE_SNAPSHOT;
}

/// The idempotency hash of a request: SHA-256 (hex) of the canonical JSON of the
/// project, the target vcluster and the command, the command being `kind` followed by
/// the typed parameters re-encoded (struct fields in declaration order, maps sorted) —
/// the bytes ovc has always hashed, so a key keeps its hash across versions. Two
/// requests with the same `request_id` must have the same hash, or the second is
/// `REQUEST_ID_REUSED`.
pub fn request_hash<P: Serialize + ?Sized>(
    project: &ProjectName,
    vcluster: &VClusterName,
    kind: OperationKind,
    params: &P,
) -> String {
    #[derive(Serialize)]
    struct Tagged<'a, P: Serialize + ?Sized> {
        kind: OperationKind,
        #[serde(flatten)]
        params: &'a P,
    }
    #[derive(Serialize)]
    struct Canonical<'a, P: Serialize + ?Sized> {
        project: &'a ProjectName,
        vcluster: &'a VClusterName,
        command: Tagged<'a, P>,
    }
    // serde_json writes struct fields in declaration order and maps (BTreeMap, and
    // serde_json::Map without `preserve_order`) sorted, so the bytes are canonical.
    let bytes = serde_json::to_vec(&Canonical {
        project,
        vcluster,
        command: Tagged { kind, params },
    })
    .unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> (ProjectName, VClusterName) {
        (
            "default".parse().expect("project"),
            "team-a".parse().expect("name"),
        )
    }

    #[test]
    fn commands_roundtrip_with_kind_tag() {
        let cmds = vec![
            Command::new(CreateParams::default()),
            Command::new(RestoreParams {
                snapshot_id: SnapshotId(uuid::Uuid::nil()),
                target: RestoreTarget::NewName("copy".parse().expect("name")),
            }),
            Command::new(DeleteParams {}),
            Command::new(DeleteSnapshotParams {
                snapshot_id: SnapshotId(uuid::Uuid::from_u128(5)),
            }),
            Command::from_parts(
                OperationKind::SUSPEND,
                json!({"snapshot": true, "evict_workloads": false}),
            )
            .expect("object"),
        ];
        for c in cmds {
            let v = serde_json::to_value(&c).expect("ser");
            assert_eq!(v["kind"], c.kind().as_str());
            let back: Command = serde_json::from_value(v).expect("de");
            assert_eq!(back, c);
        }
        // What earlier versions wrote decodes.
        let old: Command = serde_json::from_value(
            json!({"kind": "SCALE", "patch": {"control_plane": {"replicas": 3}}}),
        )
        .expect("old");
        assert_eq!(old.kind(), OperationKind::SCALE);
        assert_eq!(old.params_json()["patch"]["control_plane"]["replicas"], 3);
        assert!(serde_json::from_value::<Command>(json!({"snapshot": true})).is_err());
        assert!(Command::from_parts(OperationKind::SUSPEND, json!([1])).is_err());
    }

    /// The bytes hashed are the ones the closed `Command` enum of earlier versions
    /// serialized (internally tagged, fields in declaration order), so a request id
    /// keeps its hash across the upgrade: this digest was computed by that version.
    #[test]
    fn hash_is_stable_across_versions_and_parameter_sensitive() {
        #[derive(Serialize)]
        struct Suspend {
            snapshot: bool,
            evict_workloads: bool,
        }
        let (p, n) = names();
        let a = Suspend {
            snapshot: true,
            evict_workloads: true,
        };
        let b = Suspend {
            snapshot: true,
            evict_workloads: false,
        };
        let k = OperationKind::SUSPEND;
        let old_bytes = br#"{"project":"default","vcluster":"team-a","command":{"kind":"SUSPEND","snapshot":true,"evict_workloads":false}}"#;
        let old: String = Sha256::digest(old_bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(request_hash(&p, &n, k, &b), old);
        assert_ne!(request_hash(&p, &n, k, &a), request_hash(&p, &n, k, &b));
        let other: VClusterName = "team-b".parse().expect("name");
        assert_ne!(request_hash(&p, &n, k, &a), request_hash(&p, &other, k, &a));
        assert_eq!(request_hash(&p, &n, k, &a).len(), 64);
        assert_eq!(
            request_hash(&p, &n, OperationKind::DELETE, &DeleteParams {}),
            request_hash(&p, &n, OperationKind::DELETE, &json!({}))
        );
    }

    #[test]
    fn hash_ignores_json_key_order_of_helm_values() {
        let (p, n) = names();
        let s1: VClusterSpec =
            serde_json::from_value(json!({"helm_values": {"a": 1, "b": {"c": 2, "d": 3}}}))
                .expect("spec");
        let s2: VClusterSpec =
            serde_json::from_value(json!({"helm_values": {"b": {"d": 3, "c": 2}, "a": 1}}))
                .expect("spec");
        let k = OperationKind::CREATE;
        assert_eq!(
            request_hash(&p, &n, k, &CreateParams { spec: s1 }),
            request_hash(&p, &n, k, &CreateParams { spec: s2 })
        );
    }

    #[test]
    fn restore_target_decides_the_call() {
        let id = SnapshotId(uuid::Uuid::nil());
        let new = Command::new(RestoreParams {
            snapshot_id: id,
            target: RestoreTarget::NewName("x".parse().expect("name")),
        });
        let over = Command::new(RestoreParams {
            snapshot_id: id,
            target: RestoreTarget::Existing("x".parse().expect("name")),
        });
        assert_eq!(new.call(), Some(Call::New(OperationKind::RESTORE)));
        assert_eq!(over.call(), Some(Call::On(OperationKind::RESTORE)));
        let del = Command::new(DeleteSnapshotParams { snapshot_id: id });
        assert_eq!(del.call(), None);
        assert_eq!(
            serde_json::to_value(&del).expect("ser"),
            json!({"kind": "DELETE_SNAPSHOT", "snapshot_id": id})
        );
        assert_eq!(
            serde_json::to_value(&new).expect("ser")["target"],
            json!({"new_name": "x"})
        );
        assert!(matches!(
            del.params::<RestoreParams>(),
            Err(CommandError::WrongKind { .. })
        ));
        let bad =
            Command::from_parts(OperationKind::DELETE_SNAPSHOT, json!({"x": 1})).expect("obj");
        assert!(matches!(
            bad.params::<DeleteSnapshotParams>(),
            Err(CommandError::Invalid { .. })
        ));
    }
}
