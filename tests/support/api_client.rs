//! Calling the host's REST API as a user does: a bearer token, a body with its content
//! type, extra headers; the answer's status, headers and JSON body (`null` for a body
//! that is not JSON).

use serde_json::Value;

/// One answer of the API.
#[derive(Debug)]
pub struct ApiAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`null` when it is not JSON).
    pub body: Value,
}

impl ApiAnswer {
    /// A response header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `method url` with `Authorization: Bearer token`, `body` (content type, bytes) and
/// `headers`.
pub async fn call_api(
    method: &str,
    url: &str,
    token: &str,
    body: Option<(&str, Vec<u8>)>,
    headers: &[(&str, String)],
) -> ApiAnswer {
    let client = reqwest::Client::new();
    let mut req = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method"),
            url,
        )
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    let resp = req.send().await.expect("the host answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("the answer's body");
    ApiAnswer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// [`call_api`], status and body only.
pub async fn call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<(&str, Vec<u8>)>,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let a = call_api(method, url, token, body, headers).await;
    (a.status, a.body)
}
