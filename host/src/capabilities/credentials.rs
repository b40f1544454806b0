//! `flow8:integration/credentials`: a module asks for the credentials its step was
//! granted, by binding name. Reading a secret taints the step: from then on its
//! requests may go only to that credential's pinned hosts (the step policy,
//! `runtime::policy`, keeps that state and decides), and so does every later step on
//! the same workspace (`runtime::taint`).

use crate::runtime::bindings::GuestError;
use crate::runtime::bindings::flow8::integration::credentials::Host;
use crate::runtime::policy::{BindingUse, RefreshTicket};
use crate::runtime::sandbox::{CredentialUse, StepState};

impl Host for StepState {
    async fn refresh(&mut self, binding: String) -> wasmtime::Result<Result<(), GuestError>> {
        let ticket = match self.policy.begin_refresh(&binding, self.refresher.clone()) {
            Ok(t) => t,
            Err(denial) => return Ok(Err(denial.into())),
        };
        let RefreshTicket {
            refresher,
            link_id,
            rejected,
        } = ticket;
        let company = self.company_id.clone();
        // Its own task, so a step stopped at its deadline cannot cut a refresh short
        // after the provider spent the old refresh token.
        let refresh =
            tokio::spawn(
                async move { refresher.force_refresh(&company, &link_id, &rejected).await },
            );
        let answer = match refresh.await {
            Ok(a) => a,
            Err(e) => {
                return Ok(Err(GuestError::Internal(format!(
                    "the refresh failed: {e}"
                ))));
            }
        };
        match answer {
            Ok(token) => Ok(self
                .policy
                .record_refresh(&binding, token)
                .map_err(GuestError::from)),
            Err(
                crate::oauth::OAuthError::TokenRevoked(s)
                | crate::oauth::OAuthError::InvalidGrant(s),
            ) => Ok(Err(GuestError::TokenRevoked(format!(
                "the {s} connection was revoked; the user must reconnect it"
            )))),
            Err(crate::oauth::OAuthError::NeedsReconnect { service, reason }) => {
                Ok(Err(GuestError::TokenRevoked(format!(
                    "the {service} connection needs reconnecting: {reason}"
                ))))
            }
            Err(crate::oauth::OAuthError::NotFound) => Ok(Err(GuestError::AccessDenied(format!(
                "the link behind `{binding}` was deleted"
            )))),
            Err(e) => Ok(Err(GuestError::Upstream(
                crate::runtime::bindings::UpstreamError {
                    status: 502,
                    message: e.to_string(),
                },
            ))),
        }
    }

    async fn is_bound(&mut self, binding: String) -> wasmtime::Result<bool> {
        Ok(self.policy.grant(&binding).is_some())
    }

    async fn config(&mut self, binding: String) -> wasmtime::Result<Result<String, GuestError>> {
        Ok(self
            .policy
            .granted(&binding, BindingUse::Credentials)
            .map(|g| g.config.to_string())
            .map_err(GuestError::from))
    }

    async fn get(
        &mut self,
        binding: String,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, GuestError>> {
        // Reading a secret into guest memory is a capability the manifest declares (and
        // capability review shows an admin); a module that did not declare it is refused
        // before anything is looked up.
        if !self.reads_secrets {
            return Ok(Err(GuestError::AccessDenied(format!(
                "the module's manifest does not declare `{}`; declare it (\"capabilities\": [\"{}\"]) or let the host attach `{binding}` to the request",
                crate::manifest::READ_SECRETS,
                crate::manifest::READ_SECRETS
            ))));
        }
        let grant = match self.policy.record_secret_read(&binding) {
            Ok(g) => g,
            Err(denial) => return Ok(Err(denial.into())),
        };
        let fields = grant
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let (resource_id, kind) = (grant.resource_id.clone(), grant.kind);
        // The workspace is tainted before the secret is in the sandbox: a step running
        // beside this one on the same workspace is confined from now on. No record, no
        // secret.
        if let Err(e) = self.record_workspace_taint() {
            return Ok(Err(e));
        }
        self.record_use(CredentialUse {
            binding,
            resource_id,
            kind,
            how: "read",
            destination: None,
        });
        Ok(Ok(fields))
    }
}
