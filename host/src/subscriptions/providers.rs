//! The provider calls of a subscription, as each provider documents them:
//!
//! - Microsoft Graph (<https://learn.microsoft.com/graph/api/resources/subscription>):
//!   `POST /subscriptions` (Graph first sends the validation handshake to the
//!   `notificationUrl`), `PATCH /subscriptions/{id}` with a new `expirationDateTime` to
//!   renew (404 when Graph no longer has it), `DELETE /subscriptions/{id}`.
//! - Google Drive (<https://developers.google.com/drive/api/guides/push>): a channel is
//!   `POST /drive/v3/changes/watch?pageToken=` or `/drive/v3/files/{id}/watch` with
//!   `{id, type: "web_hook", address, token, expiration}`, and cannot be renewed: a new
//!   channel is opened and the old one closed with `POST /drive/v3/channels/stop`.
//! - Gmail (<https://developers.google.com/gmail/api/guides/push>): `POST
//!   /gmail/v1/users/me/watch` with the Pub/Sub `topicName`, called again to renew;
//!   `POST /gmail/v1/users/me/stop`.
//!
//! Each call carries the link's access token, is sent only to the provider's pinned API
//! hosts, and goes through the host's outbound client (the operator's egress policy).

use super::SubscriptionError;
use crate::outbound::{OutboundBody, OutboundClient, OutboundRequest};
use crate::store::SubscriptionRecord;
use crate::vault::Secret;
use serde_json::{Value, json};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long one provider call may take (Graph's own validation handshake is 10 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest provider answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Graph's longest subscription for Outlook messages, events and contacts ("under 7
/// days"), less a margin for clock skew.
const GRAPH_OUTLOOK_MINUTES: i64 = 10_070;
/// Graph's longest subscription for OneDrive / SharePoint drive items ("under 30 days").
const GRAPH_DRIVE_MINUTES: i64 = 42_300;
/// Other Graph resources (groups' conversations, users, ...): the shortest long limit.
const GRAPH_OTHER_MINUTES: i64 = 4_230;
/// Drive's longest channel on a file (one day) and on changes (one week).
const DRIVE_FILE_SECONDS: i64 = 86_400;
const DRIVE_CHANGES_SECONDS: i64 = 604_800;

/// What a provider answered for a made or renewed subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// Graph's subscription id or Google's channel id (None for Gmail).
    pub provider_id: Option<String>,
    /// Google's channel `resourceId`.
    pub resource_id: Option<String>,
    /// When it lapses, as the provider said.
    pub expires_at: OffsetDateTime,
}

/// The longest lifetime the provider allows for a resource (what the host asks for).
pub fn max_lifetime(service: &str, resource: &str) -> time::Duration {
    let r = resource.to_ascii_lowercase();
    if service == "microsoft" {
        let minutes = if ["messages", "events", "contacts", "mailfolders"]
            .iter()
            .any(|k| r.contains(k))
        {
            GRAPH_OUTLOOK_MINUTES
        } else if r.contains("drive") || r.contains("root") {
            GRAPH_DRIVE_MINUTES
        } else {
            GRAPH_OTHER_MINUTES
        };
        time::Duration::minutes(minutes)
    } else if r == "drive/changes" {
        time::Duration::seconds(DRIVE_CHANGES_SECONDS)
    } else if r == "gmail" {
        // Gmail decides the expiration itself (about 7 days) and says so.
        time::Duration::days(7)
    } else {
        time::Duration::seconds(DRIVE_FILE_SECONDS)
    }
}

/// Where the provider calls of one link go, and with what.
pub struct Caller<'a> {
    /// The outbound client (the operator's policy).
    pub outbound: &'a OutboundClient,
    /// The provider's API base (`api_base_url`, e.g. `https://graph.microsoft.com/v1.0`).
    pub api_base: &'a str,
    /// The hosts the link's token may be sent to.
    pub pins: &'a [crate::catalogue::Pin],
    /// The link's access token.
    pub token: &'a Secret,
    /// The notification URL (`public_url` + `/webhooks/{service}/{link_id}`).
    pub notification_url: &'a str,
    /// The link's webhook secret (Graph's `clientState`, Google's channel token).
    pub client_state: &'a Secret,
}

impl Caller<'_> {
    async fn call(
        &self,
        method: http::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), SubscriptionError> {
        let url = url::Url::parse(url)
            .map_err(|e| SubscriptionError::Config(format!("`{url}` is not a URL: {e}")))?;
        // The token goes only where its provider's pins allow, as for a module's request.
        if !self.pins.iter().any(|p| p.matches(&url)) {
            return Err(SubscriptionError::Forbidden(format!(
                "{} is not one of the provider's API hosts",
                crate::outbound::origin(&url)
            )));
        }
        let mut headers = http::HeaderMap::new();
        let bearer = http::HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| {
                SubscriptionError::Vault("the access token is not a header value".into())
            })?;
        headers.insert(http::header::AUTHORIZATION, bearer);
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let body = match body {
            Some(b) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                OutboundBody::Bytes(b.to_string().into_bytes())
            }
            None => OutboundBody::Empty,
        };
        let answer = self
            .outbound
            .send(OutboundRequest {
                method,
                url,
                headers,
                body,
                timeout: CALL_TIMEOUT,
            })
            .await
            .map_err(SubscriptionError::from)?;
        let value = if answer.body.is_empty() || answer.body.len() > MAX_ANSWER_BYTES {
            Value::Null
        } else {
            serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
        };
        Ok((answer.status, value))
    }

    /// Make the subscription at the provider.
    pub async fn create(
        &self,
        rec: &SubscriptionRecord,
        channel_id: &str,
    ) -> Result<Granted, SubscriptionError> {
        let want = crate::store::now() + max_lifetime(&rec.service, &rec.resource);
        match (rec.service.as_str(), rec.resource.as_str()) {
            ("microsoft", resource) => {
                let body = json!({
                    "changeType": rec.change_type.as_deref().unwrap_or("created,updated"),
                    "notificationUrl": self.notification_url,
                    "lifecycleNotificationUrl": self.notification_url,
                    "resource": resource,
                    "expirationDateTime": rfc3339(want),
                    "clientState": self.client_state.expose(),
                });
                let url = format!("{}/subscriptions", self.base());
                let (status, v) = self.call(http::Method::POST, &url, Some(body)).await?;
                expect_ok(status, &v, "creating the Graph subscription")?;
                let id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| malformed("a Graph subscription without an id"))?;
                Ok(Granted {
                    provider_id: Some(id.to_string()),
                    resource_id: None,
                    expires_at: graph_expiry(&v)?,
                })
            }
            ("google", "gmail") => self.gmail_watch(rec).await,
            ("google", resource) => {
                let url = if resource == "drive/changes" {
                    let start = format!("{}/drive/v3/changes/startPageToken", self.base());
                    let (status, v) = self.call(http::Method::GET, &start, None).await?;
                    expect_ok(status, &v, "reading Drive's start page token")?;
                    let token = v
                        .get("startPageToken")
                        .and_then(Value::as_str)
                        .ok_or_else(|| malformed("no startPageToken"))?;
                    let mut u = url::Url::parse(&format!("{}/drive/v3/changes/watch", self.base()))
                        .map_err(|e| SubscriptionError::Config(e.to_string()))?;
                    u.query_pairs_mut().append_pair("pageToken", token);
                    u.to_string()
                } else {
                    let file = resource.strip_prefix("drive/files/").unwrap_or(resource);
                    format!("{}/drive/v3/files/{file}/watch", self.base())
                };
                let body = json!({
                    "id": channel_id,
                    "type": "web_hook",
                    "address": self.notification_url,
                    "token": self.client_state.expose(),
                    "expiration": (want.unix_timestamp_nanos() / 1_000_000).to_string(),
                });
                let (status, v) = self.call(http::Method::POST, &url, Some(body)).await?;
                expect_ok(status, &v, "opening the Drive watch channel")?;
                let resource_id = v
                    .get("resourceId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("a Drive channel without a resourceId"))?;
                Ok(Granted {
                    provider_id: Some(
                        v.get("id")
                            .and_then(Value::as_str)
                            .unwrap_or(channel_id)
                            .to_string(),
                    ),
                    resource_id: Some(resource_id.to_string()),
                    expires_at: millis_expiry(&v)?,
                })
            }
            (other, _) => Err(SubscriptionError::NotConfigured(other.to_string())),
        }
    }

    /// Extend the subscription. Graph's is patched in place; a Drive channel cannot be
    /// extended, so a new one is opened (`channel_id`) and the old one closed; Gmail's
    /// watch is called again. `Gone` when the provider no longer has it.
    pub async fn renew(
        &self,
        rec: &SubscriptionRecord,
        channel_id: &str,
    ) -> Result<Granted, SubscriptionError> {
        match (rec.service.as_str(), rec.resource.as_str()) {
            ("microsoft", _) => {
                let Some(id) = rec.provider_id.as_deref() else {
                    return Err(SubscriptionError::Gone("it was never made".into()));
                };
                let want = crate::store::now() + max_lifetime(&rec.service, &rec.resource);
                let url = format!("{}/subscriptions/{}", self.base(), encode(id));
                let (status, v) = self
                    .call(
                        http::Method::PATCH,
                        &url,
                        Some(json!({"expirationDateTime": rfc3339(want)})),
                    )
                    .await?;
                if status == 404 || status == 410 {
                    return Err(SubscriptionError::Gone(format!(
                        "Graph answered {status} to the renewal"
                    )));
                }
                expect_ok(status, &v, "renewing the Graph subscription")?;
                Ok(Granted {
                    provider_id: Some(id.to_string()),
                    resource_id: None,
                    expires_at: graph_expiry(&v)?,
                })
            }
            ("google", "gmail") => self.gmail_watch(rec).await,
            ("google", _) => {
                let granted = self.create(rec, channel_id).await?;
                if let Err(e) = self.delete(rec).await {
                    // The old channel lapses on its own at its expiration.
                    tracing::warn!(subscription = %rec.id, error = %e, "could not stop the replaced Drive channel");
                }
                Ok(granted)
            }
            (other, _) => Err(SubscriptionError::NotConfigured(other.to_string())),
        }
    }

    /// Remove the subscription at the provider; one the provider no longer has counts
    /// as removed.
    pub async fn delete(&self, rec: &SubscriptionRecord) -> Result<(), SubscriptionError> {
        let (status, v) = match (rec.service.as_str(), rec.resource.as_str()) {
            ("microsoft", _) => {
                let Some(id) = rec.provider_id.as_deref() else {
                    return Ok(());
                };
                let url = format!("{}/subscriptions/{}", self.base(), encode(id));
                self.call(http::Method::DELETE, &url, None).await?
            }
            ("google", "gmail") => {
                let url = format!("{}/gmail/v1/users/me/stop", self.gmail_base());
                self.call(http::Method::POST, &url, None).await?
            }
            ("google", _) => {
                let (Some(id), Some(resource_id)) = (&rec.provider_id, &rec.provider_resource_id)
                else {
                    return Ok(());
                };
                let url = format!("{}/drive/v3/channels/stop", self.base());
                self.call(
                    http::Method::POST,
                    &url,
                    Some(json!({"id": id, "resourceId": resource_id})),
                )
                .await?
            }
            (other, _) => return Err(SubscriptionError::NotConfigured(other.to_string())),
        };
        if status == 404 || status == 410 {
            return Ok(());
        }
        expect_ok(status, &v, "removing the subscription")
    }

    async fn gmail_watch(&self, rec: &SubscriptionRecord) -> Result<Granted, SubscriptionError> {
        let topic = rec.topic_name.as_deref().ok_or_else(|| {
            SubscriptionError::InvalidInput("a Gmail watch needs topic_name".into())
        })?;
        let url = format!("{}/gmail/v1/users/me/watch", self.gmail_base());
        let (status, v) = self
            .call(http::Method::POST, &url, Some(json!({"topicName": topic})))
            .await?;
        if status == 404 {
            return Err(SubscriptionError::Gone("Gmail answered 404".into()));
        }
        expect_ok(status, &v, "watching the Gmail mailbox")?;
        Ok(Granted {
            provider_id: None,
            resource_id: None,
            expires_at: millis_expiry(&v)?,
        })
    }

    fn base(&self) -> &str {
        self.api_base.trim_end_matches('/')
    }

    /// Gmail lives on its own host (`gmail.googleapis.com`) beside the other Google APIs'
    /// `www.googleapis.com`; an operator (or a test) that moved `api_base_url` keeps
    /// Gmail there too.
    fn gmail_base(&self) -> &str {
        if self.base() == "https://www.googleapis.com" {
            "https://gmail.googleapis.com"
        } else {
            self.base()
        }
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn malformed(what: &str) -> SubscriptionError {
    SubscriptionError::Upstream(format!("the provider answered {what}"))
}

/// A 2xx, or the provider's refusal with its own words (Graph's `error.code` and
/// `message`, Google's `error.message`).
fn expect_ok(status: u16, v: &Value, doing: &str) -> Result<(), SubscriptionError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let err = v.get("error");
    let code = err
        .and_then(|e| e.get("code"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let detail: String = format!("{code} {message}")
        .trim()
        .chars()
        .take(300)
        .collect();
    Err(SubscriptionError::Upstream(format!(
        "{doing}: the provider answered {status}{}{detail}",
        if detail.is_empty() { "" } else { ": " }
    )))
}

/// Graph's `expirationDateTime` (RFC 3339, often with 7 fractional digits).
fn graph_expiry(v: &Value) -> Result<OffsetDateTime, SubscriptionError> {
    v.get("expirationDateTime")
        .and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .map(truncate)
        .ok_or_else(|| malformed("no readable expirationDateTime"))
}

/// Google's `expiration`: milliseconds since the epoch, as a string (or a number).
fn millis_expiry(v: &Value) -> Result<OffsetDateTime, SubscriptionError> {
    let ms = match v.get("expiration") {
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| malformed("no readable expiration"))?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| malformed("an expiration out of range"))
}

/// To milliseconds, what both stores keep.
fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_follow_the_providers_limits() {
        assert_eq!(
            max_lifetime("microsoft", "me/mailFolders('Inbox')/messages").whole_minutes(),
            GRAPH_OUTLOOK_MINUTES
        );
        assert_eq!(
            max_lifetime("microsoft", "me/drive/root").whole_minutes(),
            GRAPH_DRIVE_MINUTES
        );
        assert_eq!(
            max_lifetime("microsoft", "groups/g1/conversations").whole_minutes(),
            GRAPH_OTHER_MINUTES
        );
        assert_eq!(
            max_lifetime("google", "drive/changes").whole_seconds(),
            DRIVE_CHANGES_SECONDS
        );
        assert_eq!(
            max_lifetime("google", "drive/files/abc").whole_seconds(),
            DRIVE_FILE_SECONDS
        );
    }

    #[test]
    fn provider_answers_are_read_or_refused_by_name() {
        let t =
            graph_expiry(&json!({"expirationDateTime": "2026-12-08T10:00:00.1234567Z"})).unwrap();
        assert_eq!(t.nanosecond(), 123_000_000);
        assert!(graph_expiry(&json!({})).is_err());
        let t = millis_expiry(&json!({"expiration": "1767225600000"})).unwrap();
        assert_eq!(t.unix_timestamp(), 1_767_225_600);
        assert!(millis_expiry(&json!({"expiration": "soon"})).is_err());
        let e = expect_ok(
            400,
            &json!({"error": {"code": "ValidationError", "message": "notification endpoint must respond"}}),
            "creating",
        )
        .unwrap_err();
        assert!(e.to_string().contains("ValidationError"), "{e}");
        assert!(expect_ok(201, &Value::Null, "creating").is_ok());
    }
}
