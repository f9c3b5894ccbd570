//! What a workflow declares about its operation besides its steps, so that nothing else
//! in the code base has to be edited to add one: its typed parameters (decoded and
//! validated once at accept, hashed for idempotency) and, for an operation on an
//! existing vcluster, the transports generated from them — the REST route
//! `POST /v1/vclusters/{name}/{route}` with its OpenAPI body schema, the gRPC
//! `StartOperation` call and the CLI subcommand `ovc vc <verb>`.
//!
//! The types are erased into function pointers here ([`ParamsDef`], [`OperationApi`]),
//! so the registry holds workflows of any parameter type and the API and CLI crates
//! work from the registry alone.

use ovc_types::command::{Command, OperationParams, request_hash};
use ovc_types::error::Status;
use ovc_types::{ProjectName, VClusterName};
use serde::de::DeserializeOwned;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

/// An operation's schemas: the body's, and the named schemas it refers to.
pub type Schemas = Vec<(String, RefOr<Schema>)>;

/// How a workflow's parameters are checked: decoded into their type, validated, and
/// hashed for idempotency from the typed value (so the hash does not depend on how the
/// caller ordered or spelled its JSON).
#[derive(Clone, Copy)]
pub struct ParamsDef {
    check: fn(&ProjectName, &VClusterName, &Command) -> Result<String, Status>,
}

impl std::fmt::Debug for ParamsDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParamsDef")
    }
}

impl ParamsDef {
    /// The parameters are a `P`.
    pub fn of<P: OperationParams>() -> Self {
        ParamsDef {
            check: |project, vcluster, command| {
                let params = command.params::<P>().map_err(Status::from)?;
                params.validate()?;
                Ok(request_hash(project, vcluster, P::KIND, &params))
            },
        }
    }

    /// Any JSON object (for tests and benchmarks): hashed as given.
    pub fn untyped() -> Self {
        ParamsDef {
            check: |project, vcluster, command| {
                Ok(request_hash(
                    project,
                    vcluster,
                    command.kind(),
                    command.params_json(),
                ))
            },
        }
    }

    /// Decodes and validates `command`'s parameters (INVALID_ARGUMENT naming the field
    /// when they are not the kind's) and returns the request's idempotency hash.
    pub fn check(
        &self,
        project: &ProjectName,
        vcluster: &VClusterName,
        command: &Command,
    ) -> Result<String, Status> {
        (self.check)(project, vcluster, command)
    }
}

/// The parameters of an operation on an existing vcluster, as its transports take them.
///
/// `Body` is the JSON the REST route and gRPC `StartOperation` take (without
/// `request_id`), with its OpenAPI schema; often the parameters themselves
/// (`type Body = Self`). `Args` are the flags of its CLI subcommand, turned into that
/// JSON. Use `#[serde(deny_unknown_fields)]` and defaults on the body: an empty body is
/// `{}`.
pub trait OperationBody: OperationParams {
    /// The request body.
    type Body: DeserializeOwned + utoipa::ToSchema;
    /// The CLI flags.
    type Args: clap::Args;
    /// The parameters of a body.
    fn from_body(body: Self::Body) -> Result<Self, Status>;
    /// The body of the CLI flags; `Err` is a message for the user (exit 3).
    fn body_of_args(args: Self::Args) -> Result<serde_json::Value, String>;
}

/// The transports of an operation on an existing vcluster, generated from its
/// [`OperationBody`].
#[derive(Clone, Copy)]
pub struct OperationApi {
    /// The CLI subcommand (`ovc vc <verb>`).
    pub verb: &'static str,
    /// The REST route's last segment: `POST /v1/vclusters/{name}/<route>`.
    pub route: &'static str,
    /// One line for `--help` and the OpenAPI summary.
    pub summary: &'static str,
    from_body: fn(serde_json::Value) -> Result<Command, Status>,
    body_schema: fn(&mut Schemas) -> RefOr<Schema>,
    body_name: fn() -> String,
    cli_args: fn(clap::Command) -> clap::Command,
    cli_body: fn(&clap::ArgMatches) -> Result<serde_json::Value, String>,
}

impl std::fmt::Debug for OperationApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationApi")
            .field("verb", &self.verb)
            .field("route", &self.route)
            .finish()
    }
}

impl OperationApi {
    /// The transports of `P`: `ovc vc <verb>`, `POST /v1/vclusters/{name}/<route>`.
    pub fn of<P: OperationBody>(
        verb: &'static str,
        route: &'static str,
        summary: &'static str,
    ) -> Self {
        OperationApi {
            verb,
            route,
            summary,
            from_body: |body| {
                let body: P::Body = serde_json::from_value(body).map_err(|e| {
                    Status::invalid_argument(format!("request body: {e}"))
                        .with_reason("INVALID_BODY")
                })?;
                Ok(Command::new(P::from_body(body)?))
            },
            body_schema: |schemas| {
                <P::Body as utoipa::ToSchema>::schemas(schemas);
                <P::Body as utoipa::PartialSchema>::schema()
            },
            body_name: || <P::Body as utoipa::ToSchema>::name().into_owned(),
            cli_args: <P::Args as clap::Args>::augment_args,
            cli_body: |m| {
                let args = <P::Args as clap::FromArgMatches>::from_arg_matches(m)
                    .map_err(|e| e.to_string())?;
                P::body_of_args(args)
            },
        }
    }

    /// The command of a request body (a JSON object without `request_id`; an empty body
    /// is `{}`): INVALID_ARGUMENT `INVALID_BODY` naming the field when it is not the
    /// operation's.
    pub fn command_of_body(&self, body: serde_json::Value) -> Result<Command, Status> {
        (self.from_body)(body)
    }

    /// The body's OpenAPI schema (inline), pushing the named schemas it refers to.
    pub fn body_schema(&self, schemas: &mut Schemas) -> RefOr<Schema> {
        (self.body_schema)(schemas)
    }

    /// The body type's schema name, e.g. `SuspendParams`.
    pub fn body_name(&self) -> String {
        (self.body_name)()
    }

    /// Adds the CLI flags to `cmd`.
    pub fn cli_args(&self, cmd: clap::Command) -> clap::Command {
        (self.cli_args)(cmd)
    }

    /// The request body of parsed CLI flags.
    pub fn cli_body(&self, matches: &clap::ArgMatches) -> Result<serde_json::Value, String> {
        (self.cli_body)(matches)
    }
}
