//! Typed identifiers: a vcluster uid is never confused with an operation id.
//!
//! Every id is a UUID (v7 when minted by [`crate::time::RandomIds`], so ids sort by
//! creation time) wrapped in a newtype that serializes as the bare UUID string.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The wrapped UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                $name(u)
            }
        }
    };
}

uuid_id!(
    /// The uid of one vcluster incarnation; a name reused after deletion gets a new uid.
    VClusterId
);
uuid_id!(
    /// The id of one long-running operation (API.md `Operation.id`).
    OperationId
);
uuid_id!(
    /// The id of one snapshot artifact.
    SnapshotId
);
uuid_id!(
    /// The id of one row of the run queue (one attempt-carrying run of an operation).
    RunId
);
