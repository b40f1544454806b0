//! The smtp-send module (flow8's "SMTP" usage): send an email with the bound SMTP
//! component. The host connects to the component's server, secures the connection,
//! logs in and reads the attachments from the step's workspace, so this module never
//! holds the password or the attachments' bytes.

use flow8_sdk::mail::{Attachment, Email, send};
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::json;

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
    #[serde(default)]
    from: Option<String>,
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
}

#[derive(Debug, Serialize)]
struct Output {
    message_id: String,
    accepted: Vec<String>,
}

struct SmtpSend;

impl Module for SmtpSend {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        let addresses = json!({"type": "array", "maxItems": 100, "items": {"type": "string", "minLength": 3, "maxLength": 320}});
        Manifest::new("smtp-send", env!("CARGO_PKG_VERSION"))
            .description("Send an email (text and HTML, workspace attachments) through an SMTP component; the host logs in and sends.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["subject"],
                "properties": {
                    "from": {"type": "string", "minLength": 3, "maxLength": 320},
                    "to": addresses,
                    "cc": addresses,
                    "bcc": addresses,
                    "reply_to": addresses,
                    "subject": {"type": "string", "maxLength": 998},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
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
            // The host connects to the component's own server: no HTTP hosts needed.
            .credential(Credential::component("mail", "smtp"))
    }

    fn execute(input: Input) -> Result<Output, Error> {
        if input.to.is_empty() && input.cc.is_empty() && input.bcc.is_empty() {
            return Err(Error::invalid_input(
                "give at least one of `to`, `cc` or `bcc`",
            ));
        }
        log::info(&format!(
            "sending \"{}\" to {} recipient(s) with {} attachment(s)",
            input.subject,
            input.to.len() + input.cc.len() + input.bcc.len(),
            input.attachments.len()
        ));
        let sent = send(&Email {
            credential: "mail".into(),
            from: input.from,
            to: input.to,
            cc: input.cc,
            bcc: input.bcc,
            reply_to: input.reply_to,
            subject: input.subject,
            text: input.text,
            html: input.html,
            attachments: input
                .attachments
                .into_iter()
                .map(|a| Attachment {
                    file_path: a.file_path,
                    filename: a.filename,
                    content_type: a.content_type,
                })
                .collect(),
        })?;
        Ok(Output {
            message_id: sent.message_id,
            accepted: sent.accepted,
        })
    }
}

flow8_sdk::export_module!(SmtpSend);
