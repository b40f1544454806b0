//! Email through a bound SMTP component. The host builds and sends the message: it
//! connects to the component's own server, secures the connection as the component
//! says (STARTTLS or implicit TLS), logs in with the component's username and password
//! and reads the attachments from the step's workspace, so neither the password nor
//! the attachments' bytes pass through the module.
//!
//! ```no_run
//! use flow8_sdk::mail::{Email, send};
//!
//! # fn run() -> Result<(), flow8_sdk::Error> {
//! // `mail` is a component binding of provider `smtp` in the module's manifest:
//! // `Credential::component("mail", "smtp")`.
//! let sent = send(
//!     &Email::new("mail", "Invoice 2026-04")
//!         .to("Ann Example <ann@example.com>")
//!         .bcc("archive@example.com")
//!         .text("Your invoice is attached.")
//!         .html("<p>Your invoice is attached.</p>")
//!         .attach("/tmp/invoice.pdf", Some("application/pdf")),
//! )?;
//! flow8_sdk::log::info(&format!("sent {} to {:?}", sent.message_id, sent.accepted));
//! # Ok(())
//! # }
//! ```
//!
//! Errors: a refused login is [`Error::AccessDenied`](crate::Error), a refused
//! recipient [`Error::InvalidInput`](crate::Error) naming the address (nothing is
//! sent then), a server that cannot be reached [`Error::Network`](crate::Error);
//! temporary (4xx) answers are retried by the host within the step's deadline.

use crate::__private::bindings::flow8::integration::mail as wit;
use crate::Error;

/// A workspace file to attach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// Path of the file in the step's workspace.
    pub file_path: String,
    /// The file name the recipient sees (default: the path's last segment).
    pub filename: Option<String>,
    /// MIME type (default `application/octet-stream`).
    pub content_type: Option<String>,
}

/// A message. Addresses are `user@example.com` or `Name <user@example.com>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Email {
    /// The SMTP component binding.
    pub credential: String,
    /// Sender (default: the component's `from`).
    pub from: Option<String>,
    /// Recipients.
    pub to: Vec<String>,
    /// Copy recipients.
    pub cc: Vec<String>,
    /// Blind copy recipients: they get the message, no header names them.
    pub bcc: Vec<String>,
    /// Where replies go.
    pub reply_to: Vec<String>,
    /// Subject (one line).
    pub subject: String,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body (an alternative to `text` when both are given).
    pub html: Option<String>,
    /// Attached workspace files.
    pub attachments: Vec<Attachment>,
}

impl Email {
    /// A message sent through binding `credential`.
    pub fn new(credential: &str, subject: &str) -> Email {
        Email {
            credential: credential.into(),
            subject: subject.into(),
            ..Email::default()
        }
    }

    /// Add a recipient.
    pub fn to(mut self, address: &str) -> Email {
        self.to.push(address.into());
        self
    }

    /// Add a copy recipient.
    pub fn cc(mut self, address: &str) -> Email {
        self.cc.push(address.into());
        self
    }

    /// Add a blind copy recipient.
    pub fn bcc(mut self, address: &str) -> Email {
        self.bcc.push(address.into());
        self
    }

    /// Set the sender.
    pub fn from(mut self, address: &str) -> Email {
        self.from = Some(address.into());
        self
    }

    /// Add a reply-to address.
    pub fn reply_to(mut self, address: &str) -> Email {
        self.reply_to.push(address.into());
        self
    }

    /// Set the plain-text body.
    pub fn text(mut self, body: &str) -> Email {
        self.text = Some(body.into());
        self
    }

    /// Set the HTML body.
    pub fn html(mut self, body: &str) -> Email {
        self.html = Some(body.into());
        self
    }

    /// Attach a workspace file.
    pub fn attach(mut self, file_path: &str, content_type: Option<&str>) -> Email {
        self.attachments.push(Attachment {
            file_path: file_path.into(),
            filename: None,
            content_type: content_type.map(str::to_string),
        });
        self
    }
}

/// What the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The `Message-ID` header, angle brackets included.
    pub message_id: String,
    /// The envelope recipients the server accepted (to, cc and bcc).
    pub accepted: Vec<String>,
}

/// Send a message through the host.
pub fn send(email: &Email) -> Result<Sent, Error> {
    let r = wit::send(&wit::Message {
        credential: email.credential.clone(),
        from: email.from.clone(),
        to: email.to.clone(),
        cc: email.cc.clone(),
        bcc: email.bcc.clone(),
        reply_to: email.reply_to.clone(),
        subject: email.subject.clone(),
        text: email.text.clone(),
        html: email.html.clone(),
        attachments: email
            .attachments
            .iter()
            .map(|a| wit::Attachment {
                file_path: a.file_path.clone(),
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
            })
            .collect(),
    })
    .map_err(Error::from_wit)?;
    Ok(Sent {
        message_id: r.message_id,
        accepted: r.accepted,
    })
}

/// One mailbox as a flow writes it: `user@example.com` or `Name <user@example.com>`
/// (the name may be quoted). The one rule every mail module reads recipients by, so
/// `a@x.com,b@y.com` is refused the same way everywhere instead of reaching one
/// provider as a single address and another as two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name, if one was given.
    pub name: Option<String>,
    /// `local@domain`.
    pub address: String,
}

impl Mailbox {
    /// Read one mailbox; a list (`,` or `;`), a header break, spaces or angle
    /// brackets inside the address, or a missing local part or domain is
    /// [`Error::InvalidInput`](crate::Error) naming the text.
    pub fn parse(text: &str) -> Result<Mailbox, Error> {
        let text = text.trim();
        let (name, address) = match (text.rfind('<'), text.strip_suffix('>')) {
            (Some(open), Some(_)) => (
                Some(text[..open].trim().trim_matches('"').trim()),
                text[open + 1..text.len() - 1].trim(),
            ),
            _ => (None, text),
        };
        let address_ok = address.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
                })
        });
        let name_ok =
            name.is_none_or(|n| !n.chars().any(|c| c.is_control() || matches!(c, '<' | '>')));
        if !address_ok || !name_ok {
            return Err(Error::invalid_input(format!(
                "`{}` is not one email address (`user@example.com` or `Name <user@example.com>`; a list is one entry per address)",
                text.escape_debug()
            )));
        }
        Ok(Mailbox {
            name: name.filter(|n| !n.is_empty()).map(str::to_string),
            address: address.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Mailbox;

    #[test]
    fn one_mailbox_with_or_without_a_name() {
        let m = Mailbox::parse(" \"Ann Example\" <ann@example.com> ").unwrap();
        assert_eq!(m.name.as_deref(), Some("Ann Example"));
        assert_eq!(m.address, "ann@example.com");
        let m = Mailbox::parse("bob@example.com").unwrap();
        assert_eq!((m.name, m.address.as_str()), (None, "bob@example.com"));
        assert_eq!(Mailbox::parse("<c@example.com>").unwrap().name, None);
    }

    #[test]
    fn lists_header_breaks_and_junk_are_refused() {
        for bad in [
            "a@x.com,b@y.com",
            "a@x.com; b@y.com",
            "Ann <a@x.com>, Bob <b@y.com>",
            "a@b.c\r\nBcc: x@y.z",
            "Ann\r\nBcc: x@y.z <a@b.c>",
            "not an address",
            "@example.com",
            "ann@",
            "a@b@c",
            "a b@example.com",
            "",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?}");
        }
    }
}
