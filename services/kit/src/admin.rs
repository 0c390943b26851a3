//! The admin API's routes: which REST method and path is which operation.
//! The edge serves them under `/admin/v1`, and `llmgw admin METHOD PATH`
//! runs the same operations against the store directly, so both read paths
//! here.
//!
//! | method and path | operation |
//! |---|---|
//! | `POST /admin/v1/orgs`, `GET /admin/v1/orgs` | create (platform admins), list |
//! | `GET /admin/v1/orgs/{org}` | one org |
//! | `POST`, `GET /admin/v1/orgs/{org}/projects` | create, list projects |
//! | `POST`, `GET /admin/v1/orgs/{org}/keys` | create (the key is shown once), list (never secrets) |
//! | `GET`, `PATCH /admin/v1/keys/{key}` | one key; change its name, metadata, expiry, routing config |
//! | `POST /admin/v1/keys/{key}/revoke`, `/rotate` | revoke; a new secret for the same key |
//! | `GET`, `PUT /admin/v1/{orgs,projects,keys}/{id}/policy` | a scope's policy (models, providers, endpoints, max tokens, rpm/tpm, budgets) |
//! | `PATCH /admin/v1/{orgs,projects,keys}/{id}/policy` | only the fields given (a JSON merge patch): e.g. the limits or the budgets alone |
//! | `GET /admin/v1/{orgs,projects,keys}/{id}/budgets` | its budgets with this period's spend and reservations |
//! | `POST`, `GET /admin/v1/orgs/{org}/credentials` | store (encrypted), list the org's own provider credentials (BYOK; never secrets) |
//! | `DELETE /admin/v1/credentials/{id}` | delete one |

use llmgw_proto as pb;
use pb::AdminOp;

use crate::{ErrorCode, GwError};

/// Where the admin API lives.
pub const PREFIX: &str = "/admin/v1";

/// An admin operation named by a method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub op: AdminOp,
    /// `org`, `project` or `key` for policy operations.
    pub scope: &'static str,
    pub id: String,
}

/// Maps `method` and `path` (with the `/admin/v1` prefix) to an operation:
/// 404 for an unknown path, 405 for a known path with another method.
pub fn route(method: &str, path: &str) -> Result<Route, GwError> {
    match resolve(method, path)? {
        (_, Some((op, scope, id))) => Ok(Route { op, scope, id }),
        (methods, None) => Err(GwError::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{method} is not allowed on {path}; allowed: {}",
                methods.join(", ")
            ),
        )),
    }
}

/// The methods an admin `path` answers (empty for an unknown path): the
/// `Allow` header of a 405.
pub fn allowed(path: &str) -> &'static [&'static str] {
    resolve("", path).map_or(&[], |(methods, _)| methods)
}

type Found = Option<(AdminOp, &'static str, String)>;

/// The methods `path` answers, and the operation `method` names there.
fn resolve(method: &str, path: &str) -> Result<(&'static [&'static str], Found), GwError> {
    let rest = path
        .strip_prefix(PREFIX)
        .ok_or_else(|| not_found(path))?
        .trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    let id = |s: &str| s.to_owned();
    let (methods, found): (&'static [&'static str], Found) = match parts.as_slice() {
        ["orgs"] => (
            &["GET", "POST"],
            match method {
                "POST" => Some((AdminOp::OrgCreate, "", String::new())),
                "GET" => Some((AdminOp::OrgList, "", String::new())),
                _ => None,
            },
        ),
        ["orgs", org] if valid(org) => (
            &["GET"],
            (method == "GET").then(|| (AdminOp::OrgGet, "", id(org))),
        ),
        ["orgs", org, "projects"] if valid(org) => (
            &["GET", "POST"],
            match method {
                "POST" => Some((AdminOp::ProjectCreate, "", id(org))),
                "GET" => Some((AdminOp::ProjectList, "", id(org))),
                _ => None,
            },
        ),
        ["orgs", org, "keys"] if valid(org) => (
            &["GET", "POST"],
            match method {
                "POST" => Some((AdminOp::KeyCreate, "", id(org))),
                "GET" => Some((AdminOp::KeyList, "", id(org))),
                _ => None,
            },
        ),
        ["orgs", org, "credentials"] if valid(org) => (
            &["GET", "POST"],
            match method {
                "POST" => Some((AdminOp::CredentialCreate, "", id(org))),
                "GET" => Some((AdminOp::CredentialList, "", id(org))),
                _ => None,
            },
        ),
        ["credentials", cred] if valid(cred) => (
            &["DELETE"],
            (method == "DELETE").then(|| (AdminOp::CredentialDelete, "", id(cred))),
        ),
        ["keys", key] if valid(key) => (
            &["GET", "PATCH"],
            match method {
                "GET" => Some((AdminOp::KeyGet, "", id(key))),
                "PATCH" => Some((AdminOp::KeyUpdate, "", id(key))),
                _ => None,
            },
        ),
        ["keys", key, action @ ("revoke" | "rotate")] if valid(key) => (
            &["POST"],
            (method == "POST").then(|| {
                let op = if *action == "revoke" {
                    AdminOp::KeyRevoke
                } else {
                    AdminOp::KeyRotate
                };
                (op, "", id(key))
            }),
        ),
        [kind @ ("orgs" | "projects" | "keys"), scope_id, "budgets"] if valid(scope_id) => (
            &["GET"],
            (method == "GET").then(|| (AdminOp::BudgetStatus, scope_of(kind), id(scope_id))),
        ),
        [kind @ ("orgs" | "projects" | "keys"), scope_id, "policy"] if valid(scope_id) => {
            let scope = scope_of(kind);
            (
                &["GET", "PUT", "PATCH"],
                match method {
                    "GET" => Some((AdminOp::PolicyGet, scope, id(scope_id))),
                    "PUT" => Some((AdminOp::PolicyPut, scope, id(scope_id))),
                    "PATCH" => Some((AdminOp::PolicyPatch, scope, id(scope_id))),
                    _ => None,
                },
            )
        }
        _ => return Err(not_found(path)),
    };
    Ok((methods, found))
}

fn scope_of(kind: &str) -> &'static str {
    match kind {
        "orgs" => "org",
        "projects" => "project",
        _ => "key",
    }
}

/// An id segment: what the store's ids look like, so nothing else reaches it.
fn valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn not_found(path: &str) -> GwError {
    GwError::new(ErrorCode::NotFound, format!("no admin route {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_methods_and_paths() {
        let r = route("POST", "/admin/v1/orgs/org_1/keys").unwrap();
        assert_eq!((r.op, r.id.as_str()), (AdminOp::KeyCreate, "org_1"));
        let r = route("PUT", "/admin/v1/projects/proj_9/policy/").unwrap();
        assert_eq!(
            (r.op, r.scope, r.id.as_str()),
            (AdminOp::PolicyPut, "project", "proj_9")
        );
        assert_eq!(
            route("POST", "/admin/v1/keys/key_1/rotate").unwrap().op,
            AdminOp::KeyRotate
        );
        assert_eq!(
            route("DELETE", "/admin/v1/credentials/cred_1").unwrap().op,
            AdminOp::CredentialDelete
        );
        assert_eq!(
            route("POST", "/admin/v1/orgs/org_1/credentials").unwrap().op,
            AdminOp::CredentialCreate
        );
        assert_eq!(
            route("GET", "/admin/v1/credentials/cred_1")
                .unwrap_err()
                .http_status(),
            405
        );
        let e = route("DELETE", "/admin/v1/orgs").unwrap_err();
        assert_eq!(e.http_status(), 405);
        for bad in [
            "/admin/v1/nope",
            "/admin/v1/keys/a'b",
            "/admin/v1/orgs/x/keys/y",
            "/v1/orgs",
        ] {
            assert_eq!(route("GET", bad).unwrap_err().http_status(), 404, "{bad}");
        }
    }
}
