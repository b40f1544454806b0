//! Declaring a module's manifest in Rust (the SDK re-exports this as `flow8_sdk::Manifest`
//! and `flow8_sdk::Credential`); it serialises to the JSON of `wit/MANIFEST.md` (the host
//! checks every rule there when it loads the module and refuses a module that breaks one
//! with `invalid_manifest`).

use crate::{CredentialBinding as Credential, CredentialKind, Manifest};

impl Credential {
    /// A user's connected OAuth account of `service` (`slack`, `microsoft`, ...).
    pub fn oauth_link(name: &str, service: &str) -> Credential {
        Credential {
            name: name.into(),
            kind: CredentialKind::OauthLink,
            service: service.into(),
            scopes: Vec::new(),
            required: true,
            input_field: None,
            scopes_field: None,
        }
    }

    /// A user's connected OAuth account of any service the host knows ([`crate::ANY_SERVICE`]):
    /// the step names the link (give it an [`Credential::input_field`]) and the host sends
    /// its token only to that link's own provider. Scopes come from the input
    /// ([`Credential::scopes_field`]), since they depend on the call.
    pub fn any_oauth_link(name: &str) -> Credential {
        Credential::oauth_link(name, crate::ANY_SERVICE)
    }

    /// An API-key component of `provider` (`s3`, `http`, `openai`, ...).
    pub fn component(name: &str, provider: &str) -> Credential {
        Credential {
            name: name.into(),
            kind: CredentialKind::Component,
            service: provider.into(),
            scopes: Vec::new(),
            required: true,
            input_field: None,
            scopes_field: None,
        }
    }

    /// Scopes the link must have been granted (checked before the step runs).
    pub fn scopes<I, S>(mut self, scopes: I) -> Credential
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The step may leave it unbound.
    pub fn optional(mut self) -> Credential {
        self.required = false;
        self
    }

    /// The input field listing more scopes the link must have been granted (an array of
    /// strings; checked before the step runs, like [`Credential::scopes`]).
    pub fn scopes_field(mut self, field: &str) -> Credential {
        self.scopes_field = Some(field.into());
        self
    }

    /// The input field that names the link (flow8 steps pass `link_id`).
    pub fn input_field(mut self, field: &str) -> Credential {
        self.input_field = Some(field.into());
        self
    }
}

impl Manifest {
    /// A manifest for `name` at `version` (semantic version).
    pub fn new(name: &str, version: &str) -> Manifest {
        Manifest {
            manifest_version: 1,
            name: name.into(),
            version: version.into(),
            description: String::new(),
            input_schema: serde_json::json!({}),
            credentials: Vec::new(),
            allowed_hosts: Vec::new(),
            capabilities: Vec::new(),
        }
    }

    /// Declare that the module reads secrets into its memory with `credentials.get`
    /// (without it the host refuses that call; prefer requests the host attaches a
    /// credential to, which need no declaration).
    pub fn declare_credentials_get(mut self) -> Manifest {
        if !self.capabilities.iter().any(|c| c == crate::READ_SECRETS) {
            self.capabilities.push(crate::READ_SECRETS.into());
        }
        self
    }

    /// What the module does.
    pub fn description(mut self, text: &str) -> Manifest {
        self.description = text.into();
        self
    }

    /// The JSON Schema of the input (the host validates every step's input with it).
    pub fn input_schema(mut self, schema: serde_json::Value) -> Manifest {
        self.input_schema = schema;
        self
    }

    /// A credential binding.
    pub fn credential(mut self, credential: Credential) -> Manifest {
        self.credentials.push(credential);
        self
    }

    /// A host the module may send requests to: `https://api.example.com`,
    /// `https://*.example.com` (subdomains), `http://127.0.0.1:*` (any port), or
    /// `https://*` / `https://*:*` for any public host on the default / any port.
    pub fn allowed_host(mut self, pattern: &str) -> Manifest {
        self.allowed_hosts.push(pattern.into());
        self
    }

    /// Several allowed hosts (see [`Manifest::allowed_host`]).
    pub fn allowed_hosts<I, S>(mut self, patterns: I) -> Manifest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts
            .extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The manifest as the JSON the host reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("manifests serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serialises_to_the_documented_json() {
        // The example of wit/MANIFEST.md, field for field.
        let m = Manifest::new("slack-message", "0.1.0")
            .description("Post a message to a Slack channel.")
            .input_schema(json!({ "type": "object", "required": ["channel"], "properties": { "channel": { "type": "string" } } }))
            .credential(
                Credential::oauth_link("slack", "slack")
                    .scopes(["chat:write"])
                    .input_field("link_id"),
            )
            .credential(Credential::component("request", "http").optional())
            .allowed_hosts(["https://slack.com", "https://*.slack.com"]);
        let expected = json!({
          "manifest_version": 1,
          "name": "slack-message",
          "version": "0.1.0",
          "description": "Post a message to a Slack channel.",
          "input_schema": { "type": "object", "required": ["channel"], "properties": { "channel": { "type": "string" } } },
          "credentials": [
            { "name": "slack", "kind": "oauth-link", "service": "slack", "scopes": ["chat:write"], "required": true, "input_field": "link_id" },
            { "name": "request", "kind": "component", "service": "http", "required": false }
          ],
          "allowed_hosts": ["https://slack.com", "https://*.slack.com"]
        });
        let actual: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(actual, expected);
        assert_eq!(m.name(), "slack-message");
        // What a module builds is what the host reads back, rules checked.
        #[cfg(feature = "validate")]
        assert_eq!(Manifest::parse(&m.to_json()), Ok(m));
    }

    #[test]
    fn defaults() {
        let actual: serde_json::Value =
            serde_json::from_str(&Manifest::new("x", "1.0.0").to_json()).unwrap();
        assert_eq!(
            actual,
            json!({"manifest_version": 1, "name": "x", "version": "1.0.0", "description": "",
                   "input_schema": {}, "credentials": [], "allowed_hosts": []})
        );
    }
}
