//! The google-drive-share module: share a Drive file or folder with Drive's
//! `permissions.create` (`POST /drive/v3/files/{fileId}/permissions`,
//! developers.google.com/drive/api/reference/rest/v3/permissions/create): a role
//! (`reader`, `commenter`, `writer`) for a `user` or `group` (by email), a `domain`, or
//! `anyone` with the link. `sendNotificationEmail` (and its message) are sent only for
//! users and groups: Drive refuses them for the other types. The host attaches the token.

use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module};
use google_common::{BINDING, Roots, encode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[allow(dead_code)]
    link_id: String,
    file_id: String,
    role: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    email_address: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    send_notification_email: Option<bool>,
    #[serde(default)]
    email_message: Option<String>,
    #[serde(default)]
    allow_file_discovery: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    role: String,
    #[serde(rename = "emailAddress", skip_serializing_if = "Option::is_none")]
    email_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

/// The permission resource and the query for `input`.
pub fn request_parts(input: &Input) -> Result<(Value, Vec<(String, String)>), Error> {
    let mut permission = json!({"role": input.role, "type": input.kind});
    let mut query = vec![
        ("supportsAllDrives".to_string(), "true".to_string()),
        (
            "fields".to_string(),
            "id,type,role,emailAddress,domain".to_string(),
        ),
    ];
    match input.kind.as_str() {
        "user" | "group" => {
            let email = input.email_address.as_deref().ok_or_else(|| {
                Error::invalid_input(format!("a {} permission needs email_address", input.kind))
            })?;
            permission["emailAddress"] = json!(email);
            if let Some(send) = input.send_notification_email {
                query.push(("sendNotificationEmail".into(), send.to_string()));
            }
            if let Some(msg) = &input.email_message {
                if input.send_notification_email == Some(false) {
                    return Err(Error::invalid_input(
                        "email_message needs send_notification_email (it is the notification's text)",
                    ));
                }
                query.push(("emailMessage".into(), msg.clone()));
            }
        }
        "domain" | "anyone" => {
            if input.email_address.is_some()
                || input.send_notification_email.is_some()
                || input.email_message.is_some()
            {
                return Err(Error::invalid_input(format!(
                    "a {} permission takes no email_address, send_notification_email or email_message",
                    input.kind
                )));
            }
            if input.kind == "domain" {
                let domain = input
                    .domain
                    .as_deref()
                    .ok_or_else(|| Error::invalid_input("a domain permission needs domain"))?;
                permission["domain"] = json!(domain);
            }
            if let Some(d) = input.allow_file_discovery {
                permission["allowFileDiscovery"] = json!(d);
            }
        }
        other => return Err(Error::invalid_input(format!("unknown type `{other}`"))),
    }
    if input.kind != "domain" && input.domain.is_some() {
        return Err(Error::invalid_input(
            "domain is for a domain permission only",
        ));
    }
    Ok((permission, query))
}

struct DriveShare;

impl Module for DriveShare {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("google-drive-share", env!("CARGO_PKG_VERSION"))
            .description("Share a Google Drive file (permissions.create): reader, commenter or writer for a user, group, domain or anyone.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "file_id", "role", "type"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "file_id": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9_-]+$"},
                    "role": {"enum": ["reader", "commenter", "writer"]},
                    "type": {"enum": ["user", "group", "domain", "anyone"]},
                    "email_address": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$", "maxLength": 320},
                    "domain": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": "^[A-Za-z0-9.-]+$"},
                    "send_notification_email": {"type": "boolean"},
                    "email_message": {"type": "string", "maxLength": 4096},
                    "allow_file_discovery": {"type": "boolean"}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "google")
                    .scopes(["https://www.googleapis.com/auth/drive.file"])
                    .input_field("link_id"),
            )
            .allowed_host("https://www.googleapis.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let roots = Roots::of_link()?;
        let (permission, query) = request_parts(&input)?;
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v, b",")))
            .collect();
        let request = Request::post(&format!(
            "{}/drive/v3/files/{}/permissions?{}",
            roots.drive,
            encode(&input.file_id, b""),
            query.join("&")
        ))
        .json(&permission)?
        .credential(BINDING);
        let resp = google_common::send("Drive", &request)?;
        let p = google_common::json("Drive", &resp)?;
        let text = |k: &str| p[k].as_str().map(str::to_string);
        Ok(Output {
            id: text("id").ok_or_else(|| {
                Error::upstream(resp.status, "Drive answered without a permission id")
            })?,
            kind: text("type").unwrap_or(input.kind),
            role: text("role").unwrap_or(input.role),
            email_address: text("emailAddress"),
            domain: text("domain"),
        })
    }
}

flow8_sdk::export_module!(DriveShare);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Input {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn notification_flags_only_for_users_and_groups() {
        let (p, q) = request_parts(&input(
            json!({"link_id": "l", "file_id": "f", "role": "reader", "type": "user",
            "email_address": "a@example.com", "send_notification_email": false}),
        ))
        .unwrap();
        assert_eq!(p["emailAddress"], "a@example.com");
        assert!(q.contains(&("sendNotificationEmail".into(), "false".into())));
        assert!(
            request_parts(&input(
                json!({"link_id": "l", "file_id": "f", "role": "reader", "type": "anyone",
            "send_notification_email": true})
            ))
            .is_err()
        );
        assert!(
            request_parts(&input(
                json!({"link_id": "l", "file_id": "f", "role": "writer", "type": "domain"})
            ))
            .is_err()
        );
        let (p, _) = request_parts(&input(json!({"link_id": "l", "file_id": "f", "role": "writer", "type": "domain", "domain": "example.com"}))).unwrap();
        assert_eq!(
            p,
            json!({"role": "writer", "type": "domain", "domain": "example.com"})
        );
    }
}
