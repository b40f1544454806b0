//! `flow8:integration/credentials`: a module asks for the credentials its step was
//! granted, by binding name. Reading a secret taints the step: from then on its
//! requests may go only to that credential's pinned hosts (see `http`).

use crate::runtime::bindings::GuestError;
use crate::runtime::bindings::flow8::integration::credentials::Host;
use crate::runtime::sandbox::{CredentialUse, StepState};

impl StepState {
    fn not_granted(&self, binding: &str) -> GuestError {
        GuestError::AccessDenied(format!(
            "credential `{binding}` is not bound to this step (declare it in the manifest and bind it when running the step)"
        ))
    }
}

impl Host for StepState {
    async fn refresh(&mut self, binding: String) -> wasmtime::Result<Result<(), GuestError>> {
        use crate::manifest::CredentialKind;
        use crate::runtime::grants::Attach;
        let Some((index, grant)) = self.grant(&binding) else {
            return Ok(Err(self.not_granted(&binding)));
        };
        if grant.kind != CredentialKind::OauthLink {
            return Ok(Err(GuestError::InvalidInput(format!(
                "credential `{binding}` is not an OAuth link; only links refresh"
            ))));
        }
        if self.refreshed.contains(&binding) {
            return Ok(Err(GuestError::TokenRevoked(format!(
                "the {} token was already refreshed once in this step and is still refused",
                grant.service
            ))));
        }
        let (Attach::Bearer(rejected), Some(refresher)) =
            (grant.attach.clone(), self.refresher.clone())
        else {
            return Ok(Err(GuestError::TokenRevoked(format!(
                "the {} token cannot be refreshed",
                grant.service
            ))));
        };
        let (company, link_id) = (self.company_id.clone(), grant.resource_id.clone());
        self.refreshed.push(binding.clone());
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
            Ok(token) => {
                let grant = &mut self.grants[index];
                grant.attach = Attach::Bearer(token.clone());
                grant.secrets = vec![("access_token".to_string(), token)];
                Ok(Ok(()))
            }
            Err(
                crate::oauth::OAuthError::TokenRevoked(s)
                | crate::oauth::OAuthError::InvalidGrant(s),
            ) => Ok(Err(GuestError::TokenRevoked(format!(
                "the {s} connection was revoked; the user must reconnect it"
            )))),
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
        Ok(self.grant(&binding).is_some())
    }

    async fn config(&mut self, binding: String) -> wasmtime::Result<Result<String, GuestError>> {
        Ok(match self.grant(&binding) {
            Some((_, g)) => Ok(g.config.to_string()),
            None => Err(self.not_granted(&binding)),
        })
    }

    async fn get(
        &mut self,
        binding: String,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, GuestError>> {
        let Some((index, grant)) = self.grant(&binding) else {
            return Ok(Err(self.not_granted(&binding)));
        };
        let fields = grant
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let resource_id = grant.resource_id.clone();
        if !self.tainted.contains(&index) {
            self.tainted.push(index);
        }
        self.uses.push(CredentialUse {
            binding,
            resource_id,
            how: "read",
            destination: None,
        });
        Ok(Ok(fields))
    }
}
