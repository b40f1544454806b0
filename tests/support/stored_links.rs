//! A link written straight into a host's embedded store, as the OAuth callback stores
//! one, for tests of what arrives for a link (webhooks, events) rather than of how it
//! was connected. Its access token is sealed under a throwaway key: nothing opens it.

use flow8_host::store::embedded::EmbeddedStore;
use flow8_host::store::{LinkRecord, LinkStatus, Store, new_object_id, now, sealing};
use serde_json::Value;
use std::path::Path;

/// Store an active link of `company` (owner `alice`) for `service` with the provider's
/// `metadata` (Slack's `{"team": {"id": "T0A"}}`, QuickBooks' `realmId`) in the
/// embedded store under `data_dir`; returns its id.
pub async fn insert_link(data_dir: &Path, company: &str, service: &str, metadata: Value) -> String {
    let store = EmbeddedStore::open(data_dir)
        .await
        .expect("the host's embedded store");
    let vault = flow8_host::vault::Vault::new(flow8_host::vault::MasterKey::generate());
    let id = new_object_id();
    let t = now();
    store
        .insert_link(LinkRecord {
            access_token: vault.encrypt(
                "unused",
                &sealing::link(company, &id, sealing::ACCESS_TOKEN),
            ),
            id: id.clone(),
            user_id: "alice".into(),
            company_id: company.into(),
            integration_type: service.into(),
            refresh_token: None,
            token_expiry: None,
            scopes: vec![],
            provider_user_id: "u1".into(),
            provider_user_email: "alice@example.com".into(),
            provider_metadata: metadata,
            status: LinkStatus::Active,
            status_reason: None,
            shared_with: Vec::new(),
            webhook_signature_secret: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 0,
            created_at: t,
            updated_at: t,
        })
        .await
        .expect("the link is stored");
    id
}
