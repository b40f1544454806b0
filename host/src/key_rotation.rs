//! Master-key rotation: re-seal every secret in the store (component configs, link
//! tokens) with the vault's current key, while hosts keep serving. Every envelope it
//! writes is bound to its record (company, record, field: see `flow8_vault`), so a
//! rotation also turns envelopes from before the binding (secretbox) into bound ones,
//! even those already under the current key; a bound envelope found in a record it was
//! not sealed for is not laundered but reported unreadable.
//!
//! Each record is rewritten on its own with a compare-and-set (a link by its version, a
//! component by its config), so a concurrent refresh or edit is never overwritten: the
//! record is re-read and re-sealed again. Old keys stay in the vault until every secret
//! is rewritten, so an interrupted run loses nothing, and running it again resumes: it
//! rewrites only what is still sealed with another key or unbound.
//!
//! OAuth states (pending authorizations) are not rewritten: they live ten minutes.
//! Keep old keys at least that long after a rotation.

use crate::store::AnyStore;
use crate::store::delivery::EventEndpointRecord;
use crate::store::{ComponentRecord, DeliveryStore, LinkRecord, Store, StoreError};
use crate::vault::{Envelope, Vault, VaultError};
use std::collections::BTreeMap;
use std::time::Duration;

/// The store's meta key recording the rotation in progress (or the last one).
pub const ROTATION_META: &str = "key_rotation";

/// How a rotation walks the store.
#[derive(Debug, Clone)]
pub struct RotationOptions {
    /// Records read per batch.
    pub batch_size: u32,
    /// A pause between batches, to spare a busy production store.
    pub pause: Duration,
}

impl Default for RotationOptions {
    fn default() -> Self {
        RotationOptions {
            batch_size: 200,
            pause: Duration::ZERO,
        }
    }
}

/// What a walk found or did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    /// The key everything is sealed with now.
    pub key_id: String,
    /// Components re-sealed.
    pub components_resealed: u64,
    /// Links re-sealed.
    pub links_resealed: u64,
    /// Event endpoints (their signing secrets) re-sealed.
    #[serde(default)]
    pub endpoints_resealed: u64,
    /// Records skipped because they were already sealed with the current key, bound.
    pub already_current: u64,
    /// Records with a secret this host cannot open (`kind:id`), left as they are.
    pub unreadable: Vec<String>,
}

/// Secrets in the store, counted by the key that sealed them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// The vault's current key.
    pub current_key_id: String,
    /// Sealed secrets per key id (`""` for envelopes from before key ids).
    pub secrets_by_key: BTreeMap<String, u64>,
    /// Of those, secrets sealed before the binding to their record (secretbox).
    pub unbound: u64,
    /// Of those, the ones under the current key (a rotation re-seals them too).
    #[serde(skip)]
    unbound_current: u64,
}

impl KeyUsage {
    /// Secrets a rotation still has to re-seal: not sealed with the current key, or
    /// sealed with it before the binding.
    pub fn remaining(&self) -> u64 {
        let other_keys: u64 = self
            .secrets_by_key
            .iter()
            .filter(|(k, _)| **k != self.current_key_id)
            .map(|(_, n)| n)
            .sum();
        other_keys + self.unbound_current
    }
}

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The store failed (what was rewritten so far stays rewritten; run again).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record kept changing under us.
    #[error("{0} kept changing during the rotation; run it again")]
    Busy(String),
}

/// Progress after each batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Components looked at.
    pub components_seen: u64,
    /// Links looked at.
    pub links_seen: u64,
    /// Records rewritten so far.
    pub resealed: u64,
}

/// Count the store's secrets by key.
pub async fn key_usage(store: &AnyStore, vault: &Vault) -> Result<KeyUsage, StoreError> {
    let mut usage = KeyUsage {
        current_key_id: vault.key_id(),
        ..KeyUsage::default()
    };
    let current = usage.current_key_id.clone();
    let mut count = |e: &Envelope| {
        *usage.secrets_by_key.entry(e.key_id.clone()).or_default() += 1;
        if !e.is_bound() {
            usage.unbound += 1;
            usage.unbound_current += u64::from(e.key_id == current);
        }
    };
    let mut after: Option<String> = None;
    loop {
        let batch = store.scan_components(after.as_deref(), 500).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id.clone());
        for c in &batch {
            c.config
                .values()
                .filter_map(Envelope::from_json)
                .for_each(|e| count(&e));
        }
    }
    let mut after: Option<String> = None;
    loop {
        let batch = store.scan_links(after.as_deref(), 500).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id.clone());
        for l in &batch {
            count(&l.access_token);
            if let Some(r) = &l.refresh_token {
                count(r);
            }
            if let Some(w) = &l.webhook_signature_secret {
                count(w);
            }
        }
    }
    let mut after: Option<String> = None;
    loop {
        let batch = store.scan_event_endpoints(after.as_deref(), 500).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.company_id.clone());
        for e in &batch {
            count(&e.signing_secret);
        }
    }
    Ok(usage)
}

/// A component's config with every envelope not sealed with the current key, bound to
/// its field, re-sealed so; None when nothing needed it.
fn reseal_config(
    vault: &Vault,
    c: &ComponentRecord,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, VaultError> {
    let mut config = c.config.clone();
    let mut changed = false;
    for (field, value) in c.config.iter() {
        if let Some(e) = Envelope::from_json(value)
            && let Some(new) = vault.reseal(&e, &c.seal_context(field))?
        {
            config.insert(field.clone(), new.to_json());
            changed = true;
        }
    }
    Ok(changed.then_some(config))
}

/// A link with its tokens and webhook secret re-sealed (current key, bound); None when nothing needed it.
fn reseal_link(vault: &Vault, l: &LinkRecord) -> Result<Option<LinkRecord>, VaultError> {
    let mut out = l.clone();
    let mut changed = false;
    if let Some(new) = vault.reseal(&l.access_token, &l.access_token_context())? {
        out.access_token = new;
        changed = true;
    }
    if let Some(r) = &l.refresh_token
        && let Some(new) = vault.reseal(r, &l.refresh_token_context())?
    {
        out.refresh_token = Some(new);
        changed = true;
    }
    if let Some(w) = &l.webhook_signature_secret
        && let Some(new) = vault.reseal(w, &l.webhook_secret_context())?
    {
        out.webhook_signature_secret = Some(new);
        changed = true;
    }
    Ok(changed.then_some(out))
}

/// An endpoint with its signing secret re-sealed; None when it needed nothing.
fn reseal_endpoint(
    vault: &Vault,
    e: &EventEndpointRecord,
) -> Result<Option<EventEndpointRecord>, VaultError> {
    Ok(vault
        .reseal(&e.signing_secret, &e.signing_secret_context())?
        .map(|new| EventEndpointRecord {
            signing_secret: new,
            ..e.clone()
        }))
}

const CAS_TRIES: usize = 5;

/// Re-seal every secret not sealed with the vault's current key. Safe to run while
/// hosts serve, and to run again after an interruption.
pub async fn reseal_all(
    store: &AnyStore,
    vault: &Vault,
    opts: &RotationOptions,
    mut on_batch: impl FnMut(Progress),
) -> Result<RotationReport, RotationError> {
    let key_id = vault.key_id();
    let mut report = RotationReport {
        key_id: key_id.clone(),
        ..RotationReport::default()
    };
    let mut progress = Progress::default();
    let batch = opts.batch_size.max(1);

    let mut after: Option<String> = None;
    loop {
        let records = store.scan_components(after.as_deref(), batch).await?;
        let Some(last) = records.last() else { break };
        after = Some(last.id.clone());
        for first in records {
            progress.components_seen += 1;
            let mut current = first;
            let mut tries = 0;
            loop {
                let config = match reseal_config(vault, &current) {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        report.already_current += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(component = %current.id, error = %e, "cannot open a component secret; left as it is");
                        report.unreadable.push(format!("component:{}", current.id));
                        break;
                    }
                };
                if store
                    .replace_component_config(
                        &current.company_id,
                        &current.id,
                        &current.config,
                        config,
                    )
                    .await?
                {
                    report.components_resealed += 1;
                    progress.resealed += 1;
                    break;
                }
                // Changed under us (or deleted): read it again.
                tries += 1;
                match store
                    .get_component(&current.company_id, &current.id)
                    .await?
                {
                    None => break,
                    Some(_) if tries >= CAS_TRIES => {
                        return Err(RotationError::Busy(format!("component {}", current.id)));
                    }
                    Some(c) => current = c,
                }
            }
        }
        on_batch(progress);
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await;
        }
    }

    let mut after: Option<String> = None;
    loop {
        let records = store.scan_links(after.as_deref(), batch).await?;
        let Some(last) = records.last() else { break };
        after = Some(last.id.clone());
        for first in records {
            progress.links_seen += 1;
            let mut current = first;
            let mut tries = 0;
            loop {
                let updated = match reseal_link(vault, &current) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        report.already_current += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(link = %current.id, error = %e, "cannot open a link token; left as it is");
                        report.unreadable.push(format!("link:{}", current.id));
                        break;
                    }
                };
                // The version check keeps a refresh that raced us (new tokens, a lease).
                if store.update_link_cas(updated, current.version).await? {
                    report.links_resealed += 1;
                    progress.resealed += 1;
                    break;
                }
                tries += 1;
                match store.get_link(&current.company_id, &current.id).await? {
                    None => break,
                    Some(_) if tries >= CAS_TRIES => {
                        return Err(RotationError::Busy(format!("link {}", current.id)));
                    }
                    Some(l) => current = l,
                }
            }
        }
        on_batch(progress);
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await;
        }
    }

    let mut after: Option<String> = None;
    loop {
        let records = store.scan_event_endpoints(after.as_deref(), batch).await?;
        let Some(last) = records.last() else { break };
        after = Some(last.company_id.clone());
        for first in records {
            let mut current = first;
            let mut tries = 0;
            loop {
                let updated = match reseal_endpoint(vault, &current) {
                    Ok(Some(e)) => e,
                    Ok(None) => {
                        report.already_current += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(company = %current.company_id, error = %e, "cannot open an event endpoint's signing secret; left as it is");
                        report
                            .unreadable
                            .push(format!("event_endpoint:{}", current.company_id));
                        break;
                    }
                };
                // The version check keeps a URL change or a new secret that raced us.
                if store
                    .replace_event_endpoint_cas(updated, current.version)
                    .await?
                {
                    report.endpoints_resealed += 1;
                    progress.resealed += 1;
                    break;
                }
                tries += 1;
                match store.get_event_endpoint(&current.company_id).await? {
                    None => break,
                    Some(_) if tries >= CAS_TRIES => {
                        return Err(RotationError::Busy(format!(
                            "event endpoint {}",
                            current.company_id
                        )));
                    }
                    Some(e) => current = e,
                }
            }
        }
        on_batch(progress);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{new_object_id, now};
    use crate::vault::MasterKey;

    fn component(vault: &Vault, company: &str, name: &str) -> ComponentRecord {
        let mut c = ComponentRecord {
            id: new_object_id(),
            company_id: company.into(),
            name: name.into(),
            kind: "http".into(),
            config: serde_json::Map::new(),
            is_default: false,
            created_at: now(),
            updated_at: now(),
        };
        let sealed = vault.encrypt(&format!("secret-{name}"), &c.seal_context("auth_value"));
        c.config.insert("provider".into(), "http".into());
        c.config.insert("auth_value".into(), sealed.to_json());
        c
    }

    /// A component as hosts sealed it before the binding (secretbox, unbound).
    fn legacy_component(vault: &Vault, company: &str, name: &str) -> ComponentRecord {
        let mut c = component(vault, company, name);
        let old = vault.encrypt_unbound_legacy(&format!("secret-{name}"));
        c.config.insert("auth_value".into(), old.to_json());
        c
    }

    #[tokio::test]
    async fn envelopes_from_before_the_binding_are_resealed_bound_even_under_the_current_key() {
        let store = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let key = MasterKey::generate();
        let vault = Vault::new(key.clone());
        let c = legacy_component(&vault, "A", "old");
        store.insert_component(c.clone()).await.unwrap();
        let before = key_usage(&store, &vault).await.unwrap();
        assert_eq!((before.unbound, before.remaining()), (1, 1));
        let r = reseal_all(&store, &vault, &RotationOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.components_resealed, 1);
        let after = key_usage(&store, &vault).await.unwrap();
        assert_eq!((after.unbound, after.remaining()), (0, 0));
        let back = store.get_component("A", &c.id).await.unwrap().unwrap();
        let e = Envelope::from_json(&back.config["auth_value"]).unwrap();
        assert!(e.is_bound());
        assert_eq!(
            vault
                .decrypt(&e, &back.seal_context("auth_value"))
                .unwrap()
                .expose(),
            "secret-old"
        );
        // Bound now: copied into another company's component, it no longer opens.
        let mut other = component(&vault, "B", "other");
        other.config.insert("auth_value".into(), e.to_json());
        assert!(matches!(
            vault.decrypt(&e, &other.seal_context("auth_value")),
            Err(VaultError::WrongRecord { .. })
        ));
        // And a rotation does not launder it: it is reported, and left as it is.
        store.insert_component(other.clone()).await.unwrap();
        let rotated = Vault::new(MasterKey::generate()).with_old_key(key);
        let r = reseal_all(&store, &rotated, &RotationOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.unreadable, [format!("component:{}", other.id)]);
        assert_eq!(
            store.get_component("B", &other.id).await.unwrap().unwrap(),
            other
        );
    }

    #[tokio::test]
    async fn reseals_everything_once_and_keeps_it_readable() {
        let store = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let old_key = MasterKey::generate();
        let old = Vault::new(old_key.clone());
        for i in 0..7 {
            store
                .insert_component(component(&old, "A", &format!("c{i}")))
                .await
                .unwrap();
        }
        let new = Vault::new(MasterKey::generate()).with_old_key(old_key);
        let before = key_usage(&store, &new).await.unwrap();
        assert_eq!(before.remaining(), 7);
        let mut batches = 0;
        let opts = RotationOptions {
            batch_size: 3,
            ..RotationOptions::default()
        };
        let r = reseal_all(&store, &new, &opts, |_| batches += 1)
            .await
            .unwrap();
        assert_eq!(
            (r.components_resealed, r.links_resealed, batches),
            (7, 0, 3)
        );
        let after = key_usage(&store, &new).await.unwrap();
        assert_eq!(after.remaining(), 0);
        assert_eq!(after.secrets_by_key[&new.key_id()], 7);
        // Sealed with the new key; a second run has nothing to do.
        for c in store.list_components("A").await.unwrap() {
            let e = Envelope::from_json(&c.config["auth_value"]).unwrap();
            assert_eq!(e.key_id, new.key_id());
            assert_eq!(
                new.decrypt(&e, &c.seal_context("auth_value"))
                    .unwrap()
                    .expose(),
                format!("secret-{}", c.name)
            );
        }
        let again = reseal_all(&store, &new, &opts, |_| {}).await.unwrap();
        assert_eq!((again.components_resealed, again.already_current), (0, 7));
    }

    #[tokio::test]
    async fn a_secret_under_an_unknown_key_is_reported_and_left_alone() {
        let store = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let stranger = Vault::new(MasterKey::generate());
        let c = component(&stranger, "A", "x");
        store.insert_component(c.clone()).await.unwrap();
        let vault = Vault::new(MasterKey::generate());
        let r = reseal_all(&store, &vault, &RotationOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.unreadable, [format!("component:{}", c.id)]);
        assert_eq!(store.get_component("A", &c.id).await.unwrap().unwrap(), c);
    }

    /// Issue 14: a link's webhook secret is sealed like its tokens, so `keys rotate`
    /// re-seals it under the new key (and counts it), and it still opens after.
    #[tokio::test]
    async fn a_links_webhook_secret_is_resealed_with_its_tokens() {
        let store = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let old_key = MasterKey::generate();
        let old = Vault::new(old_key.clone());
        let new = Vault::new(MasterKey::generate()).with_old_key(old_key);
        let id = new_object_id();
        let ctx = |field| crate::store::sealing::link("A", &id, field);
        let link = LinkRecord {
            id: id.clone(),
            user_id: "u".into(),
            company_id: "A".into(),
            integration_type: "microsoft".into(),
            // The tokens are current already: only the webhook secret is under the old key.
            access_token: new.encrypt("at", &ctx(crate::store::sealing::ACCESS_TOKEN)),
            refresh_token: None,
            token_expiry: None,
            scopes: vec![],
            provider_user_id: String::new(),
            provider_user_email: String::new(),
            provider_metadata: serde_json::Value::Null,
            status: Default::default(),
            status_reason: None,
            shared_with: vec![],
            webhook_signature_secret: Some(
                old.encrypt("whsec", &ctx(crate::store::sealing::WEBHOOK_SECRET)),
            ),
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 0,
            created_at: now(),
            updated_at: now(),
        };
        store.insert_link(link).await.unwrap();
        assert_eq!(key_usage(&store, &new).await.unwrap().remaining(), 1);
        let r = reseal_all(&store, &new, &RotationOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.links_resealed, 1);
        assert_eq!(key_usage(&store, &new).await.unwrap().remaining(), 0);
        let l = store.get_link("A", &id).await.unwrap().unwrap();
        let w = l.webhook_signature_secret.as_ref().unwrap();
        assert_eq!(w.key_id, new.key_id());
        assert_eq!(
            new.decrypt(w, &l.webhook_secret_context())
                .unwrap()
                .expose(),
            "whsec"
        );
    }

    /// Issue 14: a company's event endpoint signing secret is sealed like every other
    /// secret, so `keys rotate` re-seals it under the new key, and it still opens.
    #[tokio::test]
    async fn an_event_endpoints_signing_secret_is_resealed() {
        let store = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let old_key = MasterKey::generate();
        let old = Vault::new(old_key.clone());
        let new = Vault::new(MasterKey::generate()).with_old_key(old_key);
        let ctx = crate::store::delivery::event_endpoint_context("A");
        store
            .insert_event_endpoint(EventEndpointRecord {
                company_id: "A".into(),
                url: "https://flow8.example.com/hooks".into(),
                signing_secret: old.encrypt("whsec_c2VjcmV0", &ctx),
                version: 0,
                created_at: now(),
                updated_at: now(),
            })
            .await
            .unwrap();
        assert_eq!(key_usage(&store, &new).await.unwrap().remaining(), 1);
        let r = reseal_all(&store, &new, &RotationOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.endpoints_resealed, 1);
        assert_eq!(key_usage(&store, &new).await.unwrap().remaining(), 0);
        let e = store.get_event_endpoint("A").await.unwrap().unwrap();
        assert_eq!(e.signing_secret.key_id, new.key_id());
        assert_eq!(e.version, 1);
        assert_eq!(
            new.decrypt(&e.signing_secret, &e.signing_secret_context())
                .unwrap()
                .expose(),
            "whsec_c2VjcmV0"
        );
        let again = reseal_all(&store, &new, &RotationOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(again.endpoints_resealed, 0);
    }
}
