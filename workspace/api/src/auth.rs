//! Bearer tokens and projects (API.md "Auth and projects"): a token belongs to one
//! project and has a role; it never sees or touches another project's vclusters,
//! operations, snapshots or events — those answer 404, as if they did not exist.
//! Tokens are stored as SHA-256 only; a revoked or expired one is UNAUTHENTICATED. Roles:
//! a viewer reads (not kubeconfigs), an operator also mutates and reads kubeconfigs, an
//! admin also deletes. `AuthMode::None` (for `ovc dev` on loopback) lets every request
//! act as admin of the project it names.

use crate::{ApiError, AppState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ovc_store::{Role, Store};
use ovc_types::ProjectName;
use ovc_types::error::{Code, Status};
use sha2::{Digest, Sha256};

/// Whether requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request is admin of the project it names (loopback development only).
    None,
    /// `Authorization: Bearer <token>` is required.
    Token,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's project (`None`: any project, auth off).
    pub project: Option<ProjectName>,
    /// The token's role.
    pub role: Role,
    /// The token's name, recorded as the actor of commands.
    pub name: Option<String>,
    /// The token's id (`None`: auth off), recorded in audit events.
    pub token_id: Option<uuid::Uuid>,
}

/// The hex SHA-256 under which a token is stored.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: `ovc_` and 40 hex digits (160 random bits).
pub fn new_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("ovc_{}{}", &a[..20], &b[..20])
}

/// The token of an `Authorization` value: scheme `Bearer`, matched case-insensitively
/// (RFC 7235 §2.1), then the token (`None`: another scheme, or no token).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError(Status::new(Code::Unauthenticated, message).with_reason("UNAUTHENTICATED"))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        Principal::authenticate(state, header).await
    }
}

impl Principal {
    /// The caller of a request with this `Authorization` value (REST header or gRPC
    /// metadata): the one entry point of both transports.
    pub async fn authenticate(
        state: &AppState,
        authorization: Option<&str>,
    ) -> Result<Principal, ApiError> {
        if state.auth == AuthMode::None {
            return Ok(Principal {
                project: None,
                role: Role::Admin,
                name: None,
                token_id: None,
            });
        }
        let header = authorization
            .ok_or_else(|| unauthenticated("missing Authorization: Bearer <token>"))?;
        let token = bearer_token(header)
            .ok_or_else(|| unauthenticated("Authorization must be: Bearer <token>"))?;
        let record = state
            .store
            .find_token(&token_sha256(token))
            .await?
            .ok_or_else(|| unauthenticated("unknown token"))?;
        if let Some(why) = record.refusal(state.store.clock().now()) {
            return Err(unauthenticated(&format!("this token was {why}")));
        }
        state.limits.check(&record.id.to_string())?;
        Ok(Principal {
            project: Some(record.project),
            role: record.role,
            name: Some(record.name),
            token_id: Some(record.id),
        })
    }

    /// Who this is in an audit event: the token's role, or `anonymous` without auth.
    pub fn audit_role(&self) -> &'static str {
        match self.token_id {
            Some(_) => self.role.as_str(),
            None => "anonymous",
        }
    }

    /// The project a request acts in: the token's, or (auth off) the one named, or
    /// `default`. Naming another project than the token's is NOT_FOUND.
    pub fn project(&self, requested: Option<&str>) -> Result<ProjectName, ApiError> {
        let requested = match requested {
            None | Some("") => None,
            Some(p) => Some(
                p.parse::<ProjectName>()
                    .map_err(|e: ovc_types::name::NameError| ApiError(e.into()))?,
            ),
        };
        match (&self.project, requested) {
            (Some(own), Some(r)) if &r != own => {
                Err(ApiError::not_found(format!("project {r} not found")))
            }
            (Some(own), _) => Ok(own.clone()),
            (None, r) => Ok(r.unwrap_or_else(ProjectName::default_project)),
        }
    }

    /// Hides a resource of another project: NOT_FOUND, as if it did not exist.
    pub fn sees(&self, project: &ProjectName, what: &str) -> Result<(), ApiError> {
        match &self.project {
            Some(own) if own != project => Err(ApiError::not_found(format!("{what} not found"))),
            _ => Ok(()),
        }
    }

    /// PERMISSION_DENIED with `reason` unless the token has at least `needed`.
    fn at_least(&self, needed: Role, reason: &str, message: String) -> Result<(), ApiError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(ApiError(
                Status::new(Code::PermissionDenied, message).with_reason(reason),
            ))
        }
    }

    /// Mutations need at least the operator role.
    pub fn may_mutate(&self) -> Result<(), ApiError> {
        self.at_least(
            Role::Operator,
            "ROLE_VIEWER",
            "this token is a viewer: it may read, not change".into(),
        )
    }

    /// A kubeconfig is a full-control credential of the virtual cluster: reading one
    /// needs at least the operator role (API.md).
    pub fn may_read_kubeconfig(&self) -> Result<(), ApiError> {
        self.at_least(
            Role::Operator,
            "ROLE_VIEWER",
            "this token is a viewer: reading a kubeconfig needs the operator role".into(),
        )
    }

    /// Deleting a vcluster or a snapshot needs the admin role (API.md).
    pub fn may_delete(&self) -> Result<(), ApiError> {
        self.at_least(
            Role::Admin,
            "ROLE_NOT_ADMIN",
            format!(
                "this token is an {}: deleting vclusters and snapshots needs the admin role",
                self.role.as_str()
            ),
        )
    }

    /// The role `kind` needs: deletes admin, every other mutation operator.
    pub fn may_run(&self, kind: ovc_types::state::OperationKind) -> Result<(), ApiError> {
        use ovc_types::state::OperationKind;
        self.may_mutate()?;
        match kind {
            OperationKind::DELETE | OperationKind::DELETE_SNAPSHOT => self.may_delete(),
            _ => Ok(()),
        }
    }

    /// The project that owns `stream`, from the projections (`None`: unknown).
    pub async fn stream_project(
        store: &dyn Store,
        stream: &str,
    ) -> Result<Option<ProjectName>, ApiError> {
        let id = |p: &str| {
            stream
                .strip_prefix(p)
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
        };
        Ok(if let Some(u) = id("vcluster-") {
            store
                .get_vcluster_by_uid(ovc_types::VClusterId(u))
                .await?
                .map(|v| v.project)
        } else if let Some(u) = id("operation-") {
            store
                .get_operation(ovc_types::OperationId(u))
                .await?
                .map(|o| o.project)
        } else if let Some(u) = id("snapshot-") {
            store
                .get_snapshot(ovc_types::SnapshotId(u))
                .await?
                .map(|s| s.project)
        } else if let Some(p) = stream.strip_prefix("audit-") {
            p.parse().ok()
        } else {
            None
        })
    }
}
