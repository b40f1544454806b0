//! A module that makes its requests through standard `wasi:http/outgoing-handler`
//! instead of `flow8:integration/http`, as a JavaScript or Python runtime does. One
//! request per step (`{"url", "method"?, "headers"?: [[name, value]], "body"?}`), and
//! it reports what came back: `{"status", "headers", "body"}` or `{"error": CODE}`.
//! With `"then": {...}` it makes a second request after the first, sending the first
//! answer's body on when `then.body_from_first` is true.
//! The tests use it to try every egress attack the flow8 interface is tested against.

use flow8_sdk::{Credential, Error, Manifest, Module};
use serde_json::{Map, Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct WasiHttpGuest;

fn field<'a>(input: &'a Value, k: &str) -> Result<&'a str, Error> {
    input[k]
        .as_str()
        .ok_or_else(|| Error::invalid_input(format!("`{k}` is required")))
}

/// An error code as the tests name it: `HttpRequestDenied`, `HttpResponseBodySize(Some(65536))`.
fn code(e: &wasip2::http::types::ErrorCode) -> String {
    format!("{e:?}")
        .trim_start_matches("ErrorCode::")
        .to_string()
}

/// Send the request the input describes; `Err` is the wasi:http error code, as text.
fn fetch(input: &Value) -> Result<Value, String> {
    let url = field(input, "url").map_err(|e| e.message().to_string())?;
    let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    for pair in input["headers"].as_array().into_iter().flatten() {
        let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) else {
            return Err("headers are [name, value] pairs".into());
        };
        headers
            .append(k, v.as_bytes())
            .map_err(|e| format!("header {k}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(headers);
    let method = match input["method"].as_str().unwrap_or("GET") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        other => Method::Other(other.to_string()),
    };
    request.set_method(&method).map_err(|()| "bad method")?;
    request
        .set_scheme(Some(&match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        }))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| "bad path")?;
    let body = request.body().map_err(|()| "no body")?;
    // The body is written after `handle`, as streaming clients (fetch) do.
    let future = outgoing_handler::handle(request, None).map_err(|e| code(&e))?;
    {
        let stream = body.write().map_err(|()| "no body stream")?;
        if let Some(text) = input["body"].as_str() {
            for chunk in text.as_bytes().chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("write: {e:?}"))?;
            }
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| code(&e))?;
    let mut headers = Map::new();
    for (k, v) in response.headers().entries() {
        headers.insert(k, Value::String(String::from_utf8_lossy(&v).into_owned()));
    }
    let body = response.consume().map_err(|()| "no response body")?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| "no response stream")?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("read: {e:?}")),
            }
        }
    }
    Ok(json!({
        "status": response.status(),
        "headers": headers,
        "body": String::from_utf8_lossy(&bytes),
    }))
}

impl Module for WasiHttpGuest {
    type Input = Value;
    type Output = Value;

    fn manifest() -> Manifest {
        Manifest::new("wasi-http-guest", "0.1.0")
            .description("Test module that sends its requests through standard wasi:http.")
            .input_schema(json!({"type": "object", "required": ["url"]}))
            .credential(Credential::component("api", "http").optional())
            .allowed_host("http://127.0.0.1:*")
            .allowed_host("http://localhost:*")
            .allowed_host("http://169.254.169.254")
    }

    fn execute(input: Value) -> Result<Value, Error> {
        let report = |r: Result<Value, String>| match r {
            Ok(v) => v,
            Err(code) => json!({"error": code}),
        };
        let first = report(fetch(&input));
        // A second request in the same step, after the first one's answer (what the
        // module does with what came back).
        Ok(match input.get("then") {
            Some(then) => {
                let mut then = then.clone();
                if then["body_from_first"] == true {
                    then["body"] = first["body"].clone();
                }
                json!({"first": first, "then": report(fetch(&then))})
            }
            None => first,
        })
    }
}

flow8_sdk::export_module!(WasiHttpGuest);
