//! The HTML pages a browser sees: the connect page, and the end of an OAuth connection
//! (the API server's `/auth/callback` and the CLI's `links connect` callback). They are
//! rendered from the templates in `host/templates/`, compiled into the binary, by one
//! minijinja environment with HTML auto-escaping: every value a page shows (a
//! provider's `error_description`, a service label, a user's email) is escaped by the
//! engine, never by hand, and no template marks a value safe.

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, UndefinedBehavior, Value, context};
use std::sync::LazyLock;

/// Every template, by the name templates extend it by. The `.html` suffix is what turns
/// on minijinja's HTML auto-escaping for a template.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../../templates/layout.html")),
    ("message.html", include_str!("../../templates/message.html")),
    ("connect.html", include_str!("../../templates/connect.html")),
];

static PAGES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A value a template names but the caller did not give is a bug, not a blank.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    for (name, source) in TEMPLATES {
        // The templates are fixed at compile time and a unit test renders each, so
        // this only fails in a build whose tests failed.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "a page template does not parse");
        }
    }
    env
});

/// Shown if a template cannot be rendered (holds nothing from the request).
const FALLBACK: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title></head><body><h1>Error</h1><p>This page cannot be shown.</p></body></html>";

fn render(name: &str, ctx: Value) -> String {
    match PAGES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(template = name, error = %e, "cannot render a page");
            FALLBACK.to_string()
        }
    }
}

/// "Connected!": a connection ended well. `name` is the service's display name from
/// the provider catalogue ([`crate::catalogue::Catalogue::display_name`]).
pub fn connected(name: &str) -> String {
    connected_with(name, None)
}

/// "Connected!", with what the user should know about the new link (a provider that
/// gave no refresh token: `crate::oauth::OAuthService::connect_warning`).
pub fn connected_with(name: &str, warning: Option<&str>) -> String {
    let mut message =
        format!("Your {name} account is connected to flow8. You can close this window.");
    if let Some(w) = warning {
        message = format!("Your {name} account is connected to flow8, but: {w}");
    }
    render(
        "message.html",
        context! {
            title => "Connected!",
            message => message,
            error => false,
        },
    )
}

/// "Not connected": a connection failed, with the error's name and message (which may
/// quote the provider).
pub fn not_connected(error: &str, message: &str) -> String {
    render(
        "message.html",
        context! {
            title => "Not connected",
            message => format!("{error}: {message}"),
            error => true,
        },
    )
}

/// "Link expired": a connect link that is used up, expired or cannot be served.
pub fn link_expired(message: &str) -> String {
    render(
        "message.html",
        context! { title => "Link expired", message => message, error => true },
    )
}

/// One of the company's integrations on the connect page.
#[derive(Debug, Clone)]
pub struct LinkRow<'a> {
    /// The service (`slack`, ...).
    pub service: &'a str,
    /// Its display name from the provider catalogue (`Slack`, ...).
    pub name: &'a str,
    /// Who it is connected as (email, else the provider's user id).
    pub who: &'a str,
    /// `active` or `needs_reconnect`.
    pub status: &'a str,
}

/// A "Connect ..." button: the provider's authorization URL for one service.
#[derive(Debug, Clone)]
pub struct ConnectButton {
    /// The service.
    pub service: String,
    /// Its display name from the provider catalogue.
    pub name: String,
    /// The authorization URL (with its own single-use state).
    pub url: String,
}

/// The connect page: the company's integrations and a button per offered provider.
pub fn connect(links: &[LinkRow<'_>], buttons: &[ConnectButton]) -> String {
    let links: Vec<Value> = links
        .iter()
        .map(|l| {
            context! {
                service => l.service,
                name => l.name,
                who => l.who,
                status => l.status,
            }
        })
        .collect();
    let buttons: Vec<Value> = buttons
        .iter()
        .map(|b| {
            context! {
                service => b.service.as_str(),
                name => b.name.as_str(),
                url => b.url.as_str(),
            }
        })
        .collect();
    render(
        "connect.html",
        context! { title => "Your integrations", links => links, buttons => buttons },
    )
}

/// A page as an HTTP answer. Every page here is reached with a secret in its URL (a
/// connect token, an authorization code and state), so it is never cached, never sent
/// on as a Referer (the provider must not see the connect token), and never framed.
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    private_headers(response.headers_mut());
    response
}

/// The headers of [`respond`], for any answer reached with a secret in its URL (the
/// callback's JSON answers and redirects too).
pub fn private_headers(headers: &mut axum::http::HeaderMap) {
    use axum::http::HeaderValue;
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "<script>alert(1)</script>";
    const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;";

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            assert!(PAGES.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn every_page_escapes_what_it_shows() {
        let pages = [
            connected(SCRIPT),
            not_connected("access_denied", SCRIPT),
            link_expired(SCRIPT),
            connect(
                &[LinkRow {
                    service: SCRIPT,
                    name: SCRIPT,
                    who: SCRIPT,
                    status: SCRIPT,
                }],
                &[ConnectButton {
                    service: SCRIPT.into(),
                    name: SCRIPT.into(),
                    url: format!("https://provider.example/authorize?x=\"{SCRIPT}"),
                }],
            ),
        ];
        for page in pages {
            assert!(page.starts_with("<!doctype html>"), "{page}");
            assert!(!page.contains(SCRIPT), "{page}");
            assert!(page.contains(ESCAPED), "{page}");
            assert!(!page.contains("\"<"), "{page}");
        }
    }

    #[test]
    fn pages_say_what_happened() {
        assert!(connected("Google").contains("Your Google account is connected"));
        let failed = not_connected("access_denied", "the user said no");
        assert!(failed.contains("Not connected"));
        assert!(failed.contains("access_denied: the user said no"));
        let empty = connect(&[], &[]);
        assert!(empty.contains("No integrations yet."), "{empty}");
        let page = connect(
            &[LinkRow {
                service: "google",
                name: "Google",
                who: "alice@example.com",
                status: "active",
            }],
            &[ConnectButton {
                service: "slack".into(),
                name: "Slack".into(),
                url: "https://slack.com/oauth/v2/authorize?state=s&scope=a%20b".into(),
            }],
        );
        assert!(
            page.contains("data-service=\"google\">Google: alice@example.com (active)"),
            "{page}"
        );
        assert!(page.contains("id=\"connect-slack\""), "{page}");
        assert!(page.contains(">Connect Slack</a>"), "{page}");
        assert!(!page.contains("No integrations yet."), "{page}");
    }
}
