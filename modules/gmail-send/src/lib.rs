//! The gmail-send module: an email from the user's Gmail account. The module builds the
//! RFC 5322 message (to, cc, bcc, reply-to, subject, a text and/or HTML body,
//! attachments read from the step's workspace as MIME parts) and sends it with
//! `users.messages.send` in its media-upload form: `POST
//! /upload/gmail/v1/users/me/messages/send?uploadType=media` with `Content-Type:
//! message/rfc822` (developers.google.com/gmail/api/reference/rest/v1/users.messages/send,
//! developers.google.com/gmail/api/guides/uploads). Gmail takes the `Bcc` header for
//! delivery and strips it from what recipients see. The host attaches the link's token.

use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module};
use google_common::{BINDING, Roots};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Gmail's limit for a message sent through the media upload (35 MB) is for the whole
/// encoded message; attachments are base64 in it (4/3 larger), so 25 MB of files is
/// what fits, the same limit Gmail's own interface has.
const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Path in the step's workspace (`file_path`, as in `outlook-send-mail` and
    /// `smtp-send`; `path`, this module's first name for it, is still read).
    #[serde(alias = "path")]
    pub file_path: String,
    /// The file name the recipient sees (default: the path's last segment).
    #[serde(default)]
    pub filename: Option<String>,
    /// MIME type (default: from the extension, else `application/octet-stream`).
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[allow(dead_code)]
    link_id: String,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    #[serde(default)]
    bcc: Vec<String>,
    #[serde(default)]
    reply_to: Vec<String>,
    /// A send-as alias of the account; Gmail uses the account's address when absent.
    #[serde(default)]
    from: Option<String>,
    subject: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    id: String,
    #[serde(rename = "threadId")]
    thread_id: String,
    #[serde(rename = "labelIds")]
    label_ids: Vec<String>,
}

/// `Name <user@example.com>` or `user@example.com` as mail-builder's address (the
/// SDK's one mailbox rule, as every mail module reads it).
fn address(value: &str) -> Result<Address<'static>, Error> {
    let mailbox = flow8_sdk::mail::Mailbox::parse(value)?;
    Ok(Address::new_address(mailbox.name, mailbox.address))
}

fn addresses(list: &[String]) -> Result<Address<'static>, Error> {
    Ok(Address::new_list(
        list.iter().map(|a| address(a)).collect::<Result<_, _>>()?,
    ))
}

/// A MIME type from a file name's extension, for the common attachment kinds.
fn guess_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "csv" => "text/csv",
        "txt" => "text/plain",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}

/// The RFC 5322 message for `input`, attachments read from the workspace.
pub fn build(input: &Input) -> Result<Vec<u8>, Error> {
    if input.to.is_empty() && input.cc.is_empty() && input.bcc.is_empty() {
        return Err(Error::invalid_input(
            "give at least one recipient in to, cc or bcc",
        ));
    }
    if input.text.is_none() && input.html.is_none() {
        return Err(Error::invalid_input(
            "give a text or an html body (or both)",
        ));
    }
    if input.subject.contains(['\r', '\n']) {
        return Err(Error::invalid_input(
            "the subject may not contain line breaks",
        ));
    }
    let mut m = MessageBuilder::new().subject(input.subject.clone());
    if !input.to.is_empty() {
        m = m.to(addresses(&input.to)?);
    }
    if !input.cc.is_empty() {
        m = m.cc(addresses(&input.cc)?);
    }
    if !input.bcc.is_empty() {
        m = m.bcc(addresses(&input.bcc)?);
    }
    if !input.reply_to.is_empty() {
        m = m.reply_to(addresses(&input.reply_to)?);
    }
    if let Some(from) = &input.from {
        m = m.from(address(from)?);
    }
    if let Some(text) = &input.text {
        m = m.text_body(text.clone());
    }
    if let Some(html) = &input.html {
        m = m.html_body(html.clone());
    }
    let mut total = 0u64;
    for a in &input.attachments {
        let meta = std::fs::metadata(&a.file_path)
            .map_err(|e| Error::invalid_input(format!("attachment `{}`: {e}", a.file_path)))?;
        if !meta.is_file() {
            return Err(Error::invalid_input(format!(
                "attachment `{}` is not a file",
                a.file_path
            )));
        }
        total = total.saturating_add(meta.len());
        if total > MAX_ATTACHMENT_BYTES {
            return Err(Error::invalid_input(format!(
                "the attachments are larger than Gmail's {} MB",
                MAX_ATTACHMENT_BYTES / (1024 * 1024)
            )));
        }
        let bytes = std::fs::read(&a.file_path)
            .map_err(|e| Error::invalid_input(format!("attachment `{}`: {e}", a.file_path)))?;
        let name = a.filename.clone().unwrap_or_else(|| {
            a.file_path
                .rsplit('/')
                .next()
                .unwrap_or(&a.file_path)
                .to_string()
        });
        if name.is_empty() || name.contains(['\r', '\n']) {
            return Err(Error::invalid_input(format!(
                "attachment `{}` needs a file name",
                a.file_path
            )));
        }
        let ctype = a
            .content_type
            .clone()
            .unwrap_or_else(|| guess_type(&name).to_string());
        if ctype.contains(['\r', '\n', ';']) || !ctype.contains('/') {
            return Err(Error::invalid_input(format!(
                "`{ctype}` is not a MIME type"
            )));
        }
        m = m.attachment(ctype, name, bytes);
    }
    m.write_to_vec()
        .map_err(|e| Error::internal(format!("building the message: {e}")))
}

struct GmailSend;

impl Module for GmailSend {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        let addresses = json!({"type": "array", "maxItems": 100, "items": {"type": "string", "minLength": 3, "maxLength": 320}});
        Manifest::new("gmail-send", env!("CARGO_PKG_VERSION"))
            .description("Send an email from the user's Gmail (users.messages.send): to/cc/bcc, subject, text or HTML, workspace attachments.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "subject"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "to": addresses, "cc": addresses, "bcc": addresses, "reply_to": addresses,
                    "from": {"type": "string", "minLength": 3, "maxLength": 320},
                    "subject": {"type": "string", "maxLength": 998},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "attachments": {"type": "array", "maxItems": 100, "items": {
                        "type": "object", "additionalProperties": false,
                        "oneOf": [{"required": ["file_path"]}, {"required": ["path"]}],
                        "properties": {
                            "file_path": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "minLength": 1, "description": "the old name of `file_path`"},
                            "filename": {"type": "string", "minLength": 1, "maxLength": 255},
                            "content_type": {"type": "string", "minLength": 3, "maxLength": 255}
                        }
                    }}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "google")
                    .scopes(["https://www.googleapis.com/auth/gmail.send"])
                    .input_field("link_id"),
            )
            .allowed_host("https://gmail.googleapis.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let roots = Roots::of_link()?;
        let message = build(&input)?;
        let request = Request::post(&format!(
            "{}/upload/gmail/v1/users/me/messages/send?uploadType=media",
            roots.gmail
        ))
        .header("content-type", "message/rfc822")
        .body(message)
        .credential(BINDING);
        let resp = google_common::send("Gmail", &request)?;
        let v = google_common::json("Gmail", &resp)?;
        Ok(Output {
            id: v["id"]
                .as_str()
                .ok_or_else(|| Error::upstream(resp.status, "Gmail answered without a message id"))?
                .to_string(),
            thread_id: v["threadId"].as_str().unwrap_or_default().to_string(),
            label_ids: v["labelIds"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

flow8_sdk::export_module!(GmailSend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_header_injection_is_refused() {
        assert!(address("Ada <ada@example.com>").is_ok());
        assert!(address("ada@example.com").is_ok());
        assert!(address("not an address").is_err());
        assert!(address("a@b.c\r\nBcc: x@y.z").is_err());
    }

    #[test]
    fn a_message_has_its_headers_and_bodies() {
        let input: Input = serde_json::from_value(json!({"link_id": "l", "to": ["a@example.com"],
            "bcc": ["hidden@example.com"], "subject": "Grüße", "text": "hello", "html": "<p>hello</p>"}))
        .unwrap();
        let m = String::from_utf8(build(&input).unwrap()).unwrap();
        assert!(
            m.contains("To: <a@example.com>") || m.contains("To: a@example.com"),
            "{m}"
        );
        assert!(m.contains("Bcc:"), "{m}");
        assert!(m.contains("multipart/alternative"), "{m}");
        assert!(!m.contains("Grüße"), "the subject is an encoded word: {m}");
    }
}
