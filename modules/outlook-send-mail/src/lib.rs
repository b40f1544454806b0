//! The outlook-send-mail module: send an email from the user's Outlook mailbox with
//! Microsoft Graph (learn.microsoft.com/graph/api/user-sendmail). The host attaches the
//! link's token; the module never reads it.
//!
//! Attachments come from the step's workspace. Small ones (all together under 3 MB,
//! Graph's limit for a request carrying them) ride inline in `POST /me/sendMail` as
//! `fileAttachment` `contentBytes`. Otherwise the message is made a draft
//! (`POST /me/messages`), small attachments are added one by one, each large one (3 MB
//! and up, to 150 MB) goes through an attachment upload session whose chunks the host
//! streams from the workspace (learn.microsoft.com/graph/outlook-large-attachments),
//! and the draft is sent (`POST /me/messages/{id}/send`).

use flow8_graph::{CHUNK_UNIT, Graph, base64, encode_segment, upload_session};
use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const BINDING: &str = "microsoft";
/// Below this an attachment may ride inline (Graph: "under 3 MB"; base64 makes it 4/3
/// larger, and a request may carry at most 4 MB).
const INLINE_MAX: u64 = 3_000_000;
/// Outlook's largest attachment through an upload session.
const SESSION_MAX: u64 = 150 * 1024 * 1024;
/// Upload-session chunk: 10 × 320 KiB, under Outlook's 4 MB a request.
const CHUNK: u64 = 10 * CHUNK_UNIT;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInput {
    file_path: String,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// Read by the host (the binding's `input_field`).
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
    subject: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    attachments: Vec<FileInput>,
    #[serde(default)]
    save_to_sent_items: Option<bool>,
}

#[derive(Debug, Serialize)]
struct SentAttachment {
    name: String,
    size: u64,
    /// `inline` (contentBytes) or `upload_session`.
    upload: &'static str,
}

#[derive(Debug, Serialize)]
struct Output {
    /// `sent`: Graph accepted the message (202).
    status: &'static str,
    /// The recipients (to, cc, bcc) the message was sent to.
    recipients: usize,
    attachments: Vec<SentAttachment>,
    /// How it was sent: `sendMail` or `draft` (a draft, its attachments, then `/send`).
    via: &'static str,
}

/// `Name <user@example.com>` or `user@example.com` as Graph's recipient (the SDK's
/// one mailbox rule, as every mail module reads it).
fn recipient(text: &str) -> Result<Value, Error> {
    let mailbox = flow8_sdk::mail::Mailbox::parse(text)?;
    let mut email = json!({"address": mailbox.address});
    if let Some(n) = mailbox.name {
        email["name"] = json!(n);
    }
    Ok(json!({"emailAddress": email}))
}

fn recipients(list: &[String]) -> Result<Vec<Value>, Error> {
    list.iter().map(|r| recipient(r)).collect()
}

/// An attachment as read from the workspace: name, type, size.
struct File {
    path: String,
    name: String,
    content_type: String,
    size: u64,
}

fn file(input: &FileInput) -> Result<File, Error> {
    let meta = std::fs::metadata(&input.file_path).map_err(|e| {
        Error::invalid_input(format!(
            "attachment `{}` is not in the workspace: {e}",
            input.file_path
        ))
    })?;
    if !meta.is_file() {
        return Err(Error::invalid_input(format!(
            "attachment `{}` is not a file",
            input.file_path
        )));
    }
    if meta.len() > SESSION_MAX {
        return Err(Error::invalid_input(format!(
            "attachment `{}` is {} bytes; Outlook takes at most {SESSION_MAX}",
            input.file_path,
            meta.len()
        )));
    }
    let name = input.filename.clone().unwrap_or_else(|| {
        input
            .file_path
            .rsplit('/')
            .next()
            .unwrap_or("attachment")
            .to_string()
    });
    Ok(File {
        path: input.file_path.clone(),
        name,
        content_type: input
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
        size: meta.len(),
    })
}

/// A small attachment as Graph's `fileAttachment` with its bytes inline.
fn inline(f: &File) -> Result<Value, Error> {
    let bytes = std::fs::read(&f.path)
        .map_err(|e| Error::invalid_input(format!("cannot read `{}`: {e}", f.path)))?;
    Ok(json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": f.name,
        "contentType": f.content_type,
        "contentBytes": base64(&bytes),
    }))
}

fn message(input: &Input) -> Result<Value, Error> {
    let body = match (&input.html, &input.text) {
        (Some(h), _) => json!({"contentType": "HTML", "content": h}),
        (None, Some(t)) => json!({"contentType": "Text", "content": t}),
        (None, None) => json!({"contentType": "Text", "content": ""}),
    };
    let mut message = json!({
        "subject": input.subject,
        "body": body,
        "toRecipients": recipients(&input.to)?,
    });
    if !input.cc.is_empty() {
        message["ccRecipients"] = json!(recipients(&input.cc)?);
    }
    if !input.bcc.is_empty() {
        message["bccRecipients"] = json!(recipients(&input.bcc)?);
    }
    if !input.reply_to.is_empty() {
        message["replyTo"] = json!(recipients(&input.reply_to)?);
    }
    Ok(message)
}

struct OutlookSendMail;

impl Module for OutlookSendMail {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        let addresses = json!({"type": "array", "maxItems": 500, "items": {"type": "string", "minLength": 3, "maxLength": 320}});
        Manifest::new("outlook-send-mail", env!("CARGO_PKG_VERSION"))
            .description("Send an email from the user's Outlook mailbox through Microsoft Graph (POST /me/sendMail): to, cc, bcc, HTML or text, workspace attachments (large ones through an upload session streamed by the host).")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "subject"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "to": addresses,
                    "cc": addresses,
                    "bcc": addresses,
                    "reply_to": addresses,
                    "subject": {"type": "string", "maxLength": 998},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "save_to_sent_items": {"type": "boolean"},
                    "attachments": {
                        "type": "array",
                        "maxItems": 50,
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["file_path"],
                            "properties": {
                                "file_path": {"type": "string", "minLength": 1},
                                "filename": {"type": "string", "minLength": 1, "maxLength": 255},
                                "content_type": {"type": "string", "minLength": 3, "maxLength": 255}
                            }
                        }
                    }
                }
            }))
            .credential(
                // Least privilege: sending needs Mail.Send. A large attachment needs a
                // draft, which Graph allows only with Mail.ReadWrite: without it that
                // send fails with insufficient_scope, naming the scope.
                Credential::oauth_link(BINDING, "microsoft")
                    .scopes(["Mail.Send"])
                    .input_field("link_id"),
            )
            .allowed_host("https://graph.microsoft.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let count = input.to.len() + input.cc.len() + input.bcc.len();
        if count == 0 {
            return Err(Error::invalid_input(
                "give at least one recipient (to, cc or bcc)",
            ));
        }
        let message = message(&input)?;
        let files = input
            .attachments
            .iter()
            .map(file)
            .collect::<Result<Vec<_>, _>>()?;
        let graph = Graph::new(BINDING)?;
        let save = input.save_to_sent_items.unwrap_or(true);
        let inline_total: u64 = files.iter().map(|f| f.size).sum();
        if inline_total < INLINE_MAX {
            let mut message = message;
            message["attachments"] =
                json!(files.iter().map(inline).collect::<Result<Vec<_>, _>>()?);
            let request = Request::post(&graph.url("/me/sendMail"))
                .json(&json!({"message": message, "saveToSentItems": save}))?;
            graph.send_ok(request)?;
            log::info(&format!(
                "sent to {count} recipients with {} inline attachments",
                files.len()
            ));
            return Ok(Output {
                status: "sent",
                recipients: count,
                attachments: files
                    .iter()
                    .map(|f| SentAttachment {
                        name: f.name.clone(),
                        size: f.size,
                        upload: "inline",
                    })
                    .collect(),
                via: "sendMail",
            });
        }
        // Too large for one request: a draft, then each attachment, then send.
        let draft = graph.send_ok(Request::post(&graph.url("/me/messages")).json(&message)?)?;
        let draft: Value = draft.json()?;
        let id = draft["id"]
            .as_str()
            .ok_or_else(|| Error::upstream(201, "Graph made a draft without an id"))?;
        let message_url = graph.url(&format!("/me/messages/{}", encode_segment(id)));
        let mut sent = Vec::new();
        for f in &files {
            if f.size < INLINE_MAX {
                let r = Request::post(&format!("{message_url}/attachments")).json(&inline(f)?)?;
                graph.send_ok(r)?;
                sent.push(SentAttachment {
                    name: f.name.clone(),
                    size: f.size,
                    upload: "inline",
                });
                continue;
            }
            let r = Request::post(&format!("{message_url}/attachments/createUploadSession")).json(
                &json!({"AttachmentItem": {
                    "attachmentType": "file",
                    "name": f.name,
                    "size": f.size,
                    "contentType": f.content_type,
                }}),
            )?;
            let session: Value = graph.send_ok(r)?.json()?;
            let url = session["uploadUrl"].as_str().ok_or_else(|| {
                Error::upstream(201, "Graph made an upload session without an uploadUrl")
            })?;
            let done = upload_session(url, &f.path, f.size, CHUNK)?;
            log::info(&format!(
                "attached `{}` ({} bytes) in {} chunks",
                f.name, f.size, done.chunks
            ));
            sent.push(SentAttachment {
                name: f.name.clone(),
                size: f.size,
                upload: "upload_session",
            });
        }
        // A sent draft is saved to Sent Items; `save_to_sent_items: false` cannot be
        // honoured on this path (Graph's `/send` has no such option).
        if !save {
            log::warn(
                "save_to_sent_items: false is not possible with large attachments; the message is kept in Sent Items",
            );
        }
        graph.send_ok(Request::post(&format!("{message_url}/send")))?;
        Ok(Output {
            status: "sent",
            recipients: count,
            attachments: sent,
            via: "draft",
        })
    }
}

flow8_sdk::export_module!(OutlookSendMail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_with_and_without_names() {
        assert_eq!(
            recipient("Ann Example <ann@example.com>").unwrap(),
            json!({"emailAddress": {"address": "ann@example.com", "name": "Ann Example"}})
        );
        assert_eq!(
            recipient(" bob@example.com ").unwrap(),
            json!({"emailAddress": {"address": "bob@example.com"}})
        );
        for bad in [
            "nobody",
            "<>",
            "a b@example.com",
            "@example.com",
            "a@x.com,b@y.com",
        ] {
            assert!(recipient(bad).is_err(), "{bad}");
        }
    }
}
