//! `GET /openapi.json`: the OpenAPI 3.1 description of every route of
//! [`crate::http::router`], written as YAML in `openapi.yaml` (kept beside
//! the code it describes) and turned into JSON once, at the first request.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, header};
use llmgw_kit::{ErrorCode, GwError};

const SOURCE: &str = include_str!("openapi.yaml");

/// The document as JSON bytes, or why `openapi.yaml` does not parse (a
/// unit test keeps that from ever shipping).
fn document() -> &'static Result<Bytes, String> {
    static DOC: OnceLock<Result<Bytes, String>> = OnceLock::new();
    DOC.get_or_init(|| {
        let value: serde_json::Value = serde_yaml_ng::from_str(SOURCE).map_err(|e| e.to_string())?;
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    })
}

pub(crate) async fn handler() -> Response {
    match document() {
        Ok(json) => {
            let mut resp = json.clone().into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => crate::http::error_response(&GwError::new(
            ErrorCode::Internal,
            format!("the OpenAPI document does not parse: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        let bytes = document().as_ref().unwrap();
        serde_json::from_slice(bytes).unwrap()
    }

    /// Every `$ref` points at a component that exists.
    #[test]
    fn parses_and_every_ref_resolves() {
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 100);
        for r in all {
            let pointer = r.strip_prefix('#').unwrap();
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }

    /// The routes of `http::router` and of the admin API are all described,
    /// and nothing else is.
    #[test]
    fn describes_every_route_and_only_those() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        for route in crate::http::ROUTES {
            if *route == "/admin/v1" {
                continue; // the admin API's root: every path under it is below
            }
            assert!(paths.contains_key(*route), "{route} is not in openapi.yaml");
        }
        for (path, item) in paths {
            let methods: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|m| *m != "parameters")
                .collect();
            assert!(!methods.is_empty(), "{path} has no operation");
            if crate::http::ROUTES.contains(&path.as_str()) || path == "/v1/models/{model}" {
                continue;
            }
            // The rest is the admin API: its router must know each method.
            let concrete = path
                .replace("{scope}", "keys")
                .replace("{org_id}", "org_1")
                .replace("{key_id}", "key_1")
                .replace("{scope_id}", "key_1")
                .replace("{credential_id}", "cred_1");
            for m in methods {
                let method = m.to_ascii_uppercase();
                assert!(
                    llmgw_kit::admin::route(&method, &concrete).is_ok(),
                    "{method} {path} is described but the admin API has no such route"
                );
            }
        }
    }
}
