//! OpenAPI schemas of the wire types whose JSON is a plain string with rules of its own
//! (names, ids, quantities), so the API's OpenAPI document (`GET /openapi.json`,
//! generated with utoipa) states those rules instead of "any string".

use crate::ids::{OperationId, RunId, SnapshotId, VClusterId};
use crate::name::{ProjectName, VClusterName};
use crate::quantity::Quantity;
use std::borrow::Cow;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// The DNS-1123 label pattern of vcluster and project names.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The Kubernetes quantity pattern (decimal number with an optional SI or binary suffix).
pub const QUANTITY_PATTERN: &str =
    "^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([numkMGTPE]|Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?[0-9]+)?$";

fn string(description: &str, pattern: Option<&str>, max_len: Option<usize>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(Some(1))
        .max_length(max_len)
        .into()
}

fn uuid(description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .description(Some(description))
        .into()
}

macro_rules! string_schema {
    ($ty:ty, $name:literal, $schema:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_schema!(
    VClusterName,
    "VClusterName",
    string(
        "A DNS-1123 label of 1 to 40 characters.",
        Some(DNS_LABEL_PATTERN),
        Some(VClusterName::MAX_LEN)
    )
);
string_schema!(
    ProjectName,
    "ProjectName",
    string(
        "A DNS-1123 label of 1 to 63 characters.",
        Some(DNS_LABEL_PATTERN),
        Some(ProjectName::MAX_LEN)
    )
);
string_schema!(
    Quantity,
    "Quantity",
    string(
        "A Kubernetes quantity, e.g. \"4\", \"500m\", \"8Gi\".",
        Some(QUANTITY_PATTERN),
        Some(64)
    )
);
string_schema!(OperationId, "OperationId", uuid("An operation id."));
string_schema!(SnapshotId, "SnapshotId", uuid("A snapshot id."));
string_schema!(VClusterId, "VClusterId", uuid("A vcluster uid."));
string_schema!(RunId, "RunId", uuid("A run id."));
