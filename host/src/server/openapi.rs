//! The OpenAPI 3.1 document the server serves at `/openapi.json`, generated from one
//! hand-written table of routes (`ROUTES`). Tests hold it against the table the router
//! is built from ([`super::served_routes`]) in both directions, methods included, and
//! call every route it lists.

use serde_json::{Map, Value, json};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Public,
    /// Any token of the company.
    Member,
    /// An admin token.
    Admin,
    /// The operator's metrics token (no company's token).
    Operator,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path with `{param}`s.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What it does.
    pub summary: &'static str,
    /// Success status.
    pub ok: u16,
}

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
    ok: u16,
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
        ok,
    }
}

/// Every route the server answers.
pub const ROUTES: &[Route] = &[
    r("get", "/healthz", Access::Public, "Liveness", 200),
    r(
        "get",
        "/readyz",
        Access::Public,
        "Readiness: the store answers",
        200,
    ),
    r(
        "get",
        "/metrics",
        Access::Operator,
        "Prometheus metrics (the operator's metrics token)",
        200,
    ),
    r("get", "/openapi.json", Access::Public, "This document", 200),
    r(
        "post",
        "/api/v1/admin/components",
        Access::Admin,
        "Create an API-key component (flow8 body); answers config_summary, never a credential",
        201,
    ),
    r(
        "get",
        "/api/v1/admin/components",
        Access::Admin,
        "List the company's components",
        200,
    ),
    r(
        "get",
        "/api/v1/admin/components/{id}",
        Access::Admin,
        "One component",
        200,
    ),
    r(
        "delete",
        "/api/v1/admin/components/{id}",
        Access::Admin,
        "Delete a component",
        204,
    ),
    r(
        "post",
        "/api/v1/admin/components/{id}/default",
        Access::Admin,
        "Make a component the default of its kind",
        200,
    ),
    r(
        "get",
        "/api/v1/components",
        Access::Member,
        "List the company's components (summaries)",
        200,
    ),
    r(
        "post",
        "/api/v1/steps",
        Access::Member,
        "Run one flow step: {name, module_ref, input_mapping, bindings, limits}",
        200,
    ),
    r(
        "get",
        "/api/v1/admin/audit",
        Access::Admin,
        "The audit log, newest first (filters: action_type, resource_type, resource_id, since, until; paging: limit, offset)",
        200,
    ),
    r(
        "get",
        "/api/v1/modules",
        Access::Member,
        "Modules this company can run",
        200,
    ),
    r(
        "get",
        "/api/v1/modules/{module_ref}",
        Access::Member,
        "One module by name or name@version",
        200,
    ),
    r(
        "post",
        "/api/v1/admin/modules",
        Access::Admin,
        "Install a module: the .wasm as the body (application/wasm)",
        201,
    ),
    r(
        "delete",
        "/api/v1/admin/modules/{module_ref}",
        Access::Admin,
        "Remove an installed module (name@version)",
        204,
    ),
    r(
        "get",
        "/api/v1/integrations/authorize",
        Access::Member,
        "Start an OAuth connection for the caller (?service=slack): {auth_url}, the provider's authorization URL",
        200,
    ),
    r(
        "get",
        "/auth/callback",
        Access::Public,
        "The provider's redirect target (code, state): stores the link and shows \"Connected!\" (JSON with Accept: application/json)",
        200,
    ),
    r(
        "get",
        "/api/v1/integrations/links",
        Access::Member,
        "The company's links, never their tokens (filters: service, expiring_within_days, needs_reconnect)",
        200,
    ),
    r(
        "delete",
        "/api/v1/integrations/links",
        Access::Admin,
        "Unlink and revoke every link of a service (?service=slack)",
        200,
    ),
    r(
        "delete",
        "/api/v1/integrations/{service}/{link_id}",
        Access::Member,
        "Unlink a link and revoke its tokens at the provider (its owner, or an admin)",
        204,
    ),
    r(
        "post",
        "/api/v1/integrations/{service}/{link_id}/shares",
        Access::Member,
        "Let another member use the link ({user_id}, or * for every member); its owner, or an admin",
        200,
    ),
    r(
        "delete",
        "/api/v1/integrations/{service}/{link_id}/shares/{user_id}",
        Access::Member,
        "Stop sharing the link with a member (or *); its owner, or an admin",
        200,
    ),
    r(
        "post",
        "/api/v1/integrations/test",
        Access::Member,
        "Health check of a link with the provider's identity endpoint: {link_id}",
        200,
    ),
    r(
        "get",
        "/connect/{token}",
        Access::Public,
        "The connect page of a connect link (single use): the company's integrations and a Connect button per provider",
        200,
    ),
    r(
        "post",
        "/api/v1/integrations/connect-sessions",
        Access::Member,
        "A short-lived, single-use connect link for the caller: {connect_url, expires_at}; the page it opens offers Connect buttons",
        201,
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": route.summary,
            "parameters": params,
            "responses": {
                route.ok.to_string(): {"description": "Success"},
                "default": {"description": "A named error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if route.access != Access::Public {
            op["security"] = json!([{"bearer": []}]);
            op["x-flow8-access"] = json!(match route.access {
                Access::Admin => "admin",
                Access::Operator => "operator",
                _ => "member",
            });
        }
        entry[route.method] = op;
    }
    // The step route's body and report, the taint fields included (flow8 carries a
    // report's `pinned_to` into the next step's body).
    if let Some(op) = paths
        .get_mut("/api/v1/steps")
        .and_then(|p| p.get_mut("post"))
    {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StepRequest"}}}});
        op["responses"]["200"]["content"] =
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/StepReport"}}});
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "flow8 integration host", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}}
                },
                "Taint": {
                    "type": "object",
                    "description": "Data derived from a credential's secret may only go to that credential's pins.",
                    "required": ["credential", "service", "pins"],
                    "additionalProperties": false,
                    "properties": {
                        "credential": {"type": "string", "description": "The binding whose secret the step held"},
                        "service": {"type": "string"},
                        "pins": {"type": "array", "items": {"type": "string", "description": "scheme://host[:port][/path-prefix]"}}
                    }
                },
                "StepRequest": {
                    "type": "object",
                    "required": ["module_ref"],
                    "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string"},
                        "module_ref": {"type": "string"},
                        "input_mapping": {"type": "object"},
                        "bindings": {"type": "object", "additionalProperties": {"type": "string"}},
                        "workspace": {"type": "string"},
                        "limits": {"type": "object", "properties": {
                            "deadline_seconds": {"type": "number"},
                            "memory_mib": {"type": "integer"},
                            "output_kib": {"type": "integer"}
                        }},
                        "pinned_to": {"type": "array", "items": {"$ref": "#/components/schemas/Taint"},
                            "description": "The `pinned_to` of the reports whose outputs the input was mapped from"}
                    }
                },
                "StepReport": {
                    "type": "object",
                    "required": ["status", "tainted", "pinned_to"],
                    "properties": {
                        "name": {"type": "string"},
                        "status": {"enum": ["ok", "error"]},
                        "output": {},
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "log": {"type": "array"},
                        "log_truncated": {"type": "boolean"},
                        "duration_ms": {"type": "number"},
                        "credentials_used": {"type": "array"},
                        "tainted": {"type": "boolean", "description": "The output (and the workspace) may hold data derived from a secret"},
                        "pinned_to": {"type": "array", "items": {"$ref": "#/components/schemas/Taint"}}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The step route documents its body and report, the taint fields included.
    #[test]
    fn the_step_route_documents_its_taint_fields() {
        let doc = document();
        let op = &doc["paths"]["/api/v1/steps"]["post"];
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/StepRequest"
        );
        let schemas = &doc["components"]["schemas"];
        assert!(schemas["StepRequest"]["properties"]["pinned_to"].is_object());
        assert!(schemas["StepReport"]["properties"]["tainted"].is_object());
        assert_eq!(
            schemas["Taint"]["required"],
            serde_json::json!(["credential", "service", "pins"])
        );
    }

    /// Both directions, methods included: every route the router serves is documented
    /// and every documented route is served.
    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let served: BTreeSet<(String, String)> = crate::server::served_routes()
            .into_iter()
            .map(|(verb, path)| (verb.as_str().to_ascii_lowercase(), path.to_string()))
            .collect();
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for method in ops.as_object().into_iter().flatten().map(|(m, _)| m) {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but not documented: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "documented but not served: {unserved:?}"
        );
    }
}
