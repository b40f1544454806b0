//! The host functions a module may call, one file per WIT interface: `credentials`,
//! `file-transfer`, `http`, `log`, `mail`, `object-storage` and `step`, and standard
//! `wasi:http/outgoing-handler` (`wasi_http`) under the same policy. Each implements the generated `Host`
//! trait on the step's sandbox state; the security questions they ask go to the step
//! policy (`runtime::policy`), whose denials become guest errors here.

pub mod credentials;
pub mod file_transfer;
pub mod http;
pub mod log;
pub mod mail;
pub mod object_storage;
pub mod step;
pub mod wasi_http;
pub mod workspace_write;

use crate::runtime::bindings::GuestError;
use crate::runtime::bindings::flow8::integration::types;
use crate::runtime::policy::{DenialKind, PolicyDenial};
use crate::runtime::sandbox::StepState;

impl types::Host for StepState {}

/// The one place a policy denial becomes the error a module sees.
impl From<PolicyDenial> for GuestError {
    fn from(denial: PolicyDenial) -> GuestError {
        let message = denial.to_string();
        match denial.kind() {
            DenialKind::Forbidden => GuestError::Forbidden(message),
            DenialKind::AccessDenied => GuestError::AccessDenied(message),
            DenialKind::InvalidInput => GuestError::InvalidInput(message),
            DenialKind::TokenRevoked => GuestError::TokenRevoked(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::policy::BindingUse;

    #[test]
    fn each_denial_becomes_its_guest_error_with_its_message() {
        let cases = [
            (
                PolicyDenial::HostNotAllowed {
                    destination: "https://evil.example:443".into(),
                },
                "forbidden",
            ),
            (
                PolicyDenial::NotBound {
                    binding: "api".into(),
                    asked_by: BindingUse::Request,
                },
                "access_denied",
            ),
            (PolicyDenial::UserInfo, "invalid_input"),
            (
                PolicyDenial::AlreadyRefreshed {
                    service: "slack".into(),
                },
                "token_revoked",
            ),
        ];
        for (denial, name) in cases {
            let message = denial.to_string();
            let got = match GuestError::from(denial) {
                GuestError::Forbidden(m) => ("forbidden", m),
                GuestError::AccessDenied(m) => ("access_denied", m),
                GuestError::InvalidInput(m) => ("invalid_input", m),
                GuestError::TokenRevoked(m) => ("token_revoked", m),
                other => panic!("{other:?}"),
            };
            assert_eq!(got, (name, message));
        }
    }
}
