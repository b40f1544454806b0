//! The Extism side of flow8's peer benchmark (see ../README.md).

use extism_pdk::{FnResult, HttpRequest, Json, WithReturnCode, host_fn, http, plugin_fn};
use serde_json::{Value, json};

#[host_fn]
extern "ExtismHost" {
    /// A GET through the bench host's pooled HTTP client (Extism's fastest arrangement):
    /// answers `{"status", "headers", "body"}` as JSON.
    fn pooled_get(url: String) -> String;
}

fn url_of(input: &Value) -> FnResult<&str> {
    input["url"]
        .as_str()
        .ok_or_else(|| WithReturnCode::new(extism_pdk::Error::msg("input needs a url"), 1))
}

/// The JSON echo flow8's bench runs as its no-network step.
#[plugin_fn]
pub fn echo(Json(input): Json<Value>) -> FnResult<Json<Value>> {
    Ok(Json(json!({"ok": true, "echo": input})))
}

/// http-request's work through Extism's own HTTP host function (`allowed_hosts` checked
/// by Extism; a new client per call, as Extism makes it).
#[plugin_fn]
pub fn fetch(Json(input): Json<Value>) -> FnResult<Json<Value>> {
    let request = HttpRequest::new(url_of(&input)?).with_method("GET");
    let response = http::request::<()>(&request, None)?;
    let body = String::from_utf8_lossy(&response.body()).into_owned();
    Ok(Json(json!({
        "status": response.status_code(),
        "headers": response.headers(),
        "body": body,
    })))
}

/// The same through the bench host's pooled client.
#[plugin_fn]
pub fn fetch_pooled(Json(input): Json<Value>) -> FnResult<Json<Value>> {
    let answer = unsafe { pooled_get(url_of(&input)?.to_string())? };
    let answer: Value = serde_json::from_str(&answer)?;
    Ok(Json(answer))
}
