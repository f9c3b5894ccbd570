//! The vocabulary of ovc, shared by every other crate and free of IO.
//!
//! What lives here: validated names ([`name`]) and Kubernetes quantities ([`quantity`]),
//! the vcluster spec ([`spec`]), the state machine of API.md as one table ([`state`]),
//! the commands a caller can issue ([`command`]), the events that record everything
//! ([`event`]), the read models that events fold into ([`resource`]), the error status
//! of API.md ([`error`]), and the injected clock and id source ([`time`]) that keep
//! replay deterministic.

pub mod command;
pub mod error;
pub mod event;
pub mod ids;
pub mod location;
pub mod name;
pub mod quantity;
pub mod resource;
pub mod schema;
pub mod spec;
pub mod state;
pub mod time;

pub use command::{Command, OperationParams, RestoreTarget};
pub use error::{Code, ErrorDetail, Status};
pub use event::{Event, EventMetadata, StreamName};
pub use ids::{OperationId, RunId, SnapshotId, VClusterId};
pub use location::ObjectLocation;
pub use name::{ProjectName, VClusterName};
pub use quantity::Quantity;
pub use resource::{Operation, OperationStep, Snapshot, VCluster};
pub use spec::{ScalePatch, VClusterSpec};
pub use state::{
    Call, CallRule, CallRules, OperationKind, OperationState, SnapshotState, StepState,
    VClusterState,
};
pub use time::{Clock, IdSource};
