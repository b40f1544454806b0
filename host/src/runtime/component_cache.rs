//! The component records a step's bindings resolve to, kept for a short, bounded time
//! (`record_cache_seconds`, 2 s by default, 0 turns it off) so that a busy flow does not
//! read the store for the same component on every step (issue 19, item 6). The rules of
//! what is kept and for how long are [`crate::store::read_cache`]'s: a change through
//! this host shows at its next step, another process's within the lifetime, and a
//! lookup that found nothing is never kept.

use crate::store::read_cache::{ReadCache, Records};
use crate::store::{AnyStore, ComponentRecord, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// How a binding names its component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lookup {
    /// By id or name, as the step's bindings gave it.
    Named(String),
    /// The company's default component of a kind.
    Default(String),
}

/// Component records recently read for steps (see the module documentation).
pub struct ComponentCache {
    kept: ReadCache<(String, Lookup), ComponentRecord>,
}

impl ComponentCache {
    /// A cache keeping each record at most `lifetime` (zero: nothing is kept).
    pub fn new(lifetime: Duration) -> ComponentCache {
        ComponentCache {
            kept: ReadCache::new(Records::Components, lifetime),
        }
    }

    /// How long a record is kept: the bound on another process's change reaching a step.
    pub fn lifetime(&self) -> Duration {
        self.kept.lifetime()
    }

    /// The component a binding names (`named`: an id or a name), as
    /// `Store::get_component` then `Store::find_component_by_name` find it.
    pub async fn named(
        &self,
        store: &AnyStore,
        company_id: &str,
        named: &str,
        by_id_first: bool,
    ) -> Result<Option<Arc<ComponentRecord>>, StoreError> {
        let key = (company_id.to_string(), Lookup::Named(named.to_string()));
        self.kept
            .get_or_read(store, key, async {
                if by_id_first && let Some(r) = store.get_component(company_id, named).await? {
                    return Ok(Some(r));
                }
                store.find_component_by_name(company_id, named).await
            })
            .await
    }

    /// The company's default component of `kind` (`Store::default_component`).
    pub async fn default_of(
        &self,
        store: &AnyStore,
        company_id: &str,
        kind: &str,
    ) -> Result<Option<Arc<ComponentRecord>>, StoreError> {
        let key = (company_id.to_string(), Lookup::Default(kind.to_string()));
        self.kept
            .get_or_read(store, key, store.default_component(company_id, kind))
            .await
    }

    /// Age every kept entry by `by` (tests).
    #[cfg(test)]
    fn age(&self, by: Duration) {
        self.kept.age(by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn record(company: &str, id: &str, name: &str, base_url: &str) -> ComponentRecord {
        serde_json::from_value(serde_json::json!({
            "_id": id, "company_id": company, "name": name, "kind": "http",
            "config": {"provider": "http", "base_url": base_url},
            "is_default": false,
            "created_at": "2026-12-03T00:00:00Z", "updated_at": "2026-12-03T00:00:00Z"
        }))
        .expect("a component record")
    }

    /// Two stores on one directory, as two hosts see it.
    async fn two_processes_view() -> (tempfile::TempDir, AnyStore, AnyStore) {
        let dir = tempfile::tempdir().unwrap();
        let here = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let there = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        (dir, here, there)
    }

    fn base_url(r: &Option<Arc<ComponentRecord>>) -> Option<String> {
        r.as_ref()
            .map(|r| r.config["base_url"].as_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn a_kept_record_serves_steps_until_a_write_through_this_hosts_store() {
        let (_dir, store, _) = two_processes_view().await;
        let cache = ComponentCache::new(Duration::from_secs(3600));
        let id = "0123456789abcdef01234567";
        store
            .insert_component(record("A", id, "api", "https://one.example"))
            .await
            .unwrap();
        let first = cache.named(&store, "A", "api", false).await.unwrap();
        assert_eq!(base_url(&first).as_deref(), Some("https://one.example"));
        // Another company's lookup of the same name is its own.
        assert!(
            cache
                .named(&store, "B", "api", false)
                .await
                .unwrap()
                .is_none()
        );
        // A write through this host's store: the next lookup reads.
        let mut changed = first.unwrap().config.clone();
        changed.insert("base_url".into(), "https://two.example".into());
        let expected = record("A", id, "api", "https://one.example").config;
        assert!(
            store
                .replace_component_config("A", id, &expected, changed)
                .await
                .unwrap()
        );
        let after = cache.named(&store, "A", "api", false).await.unwrap();
        assert_eq!(base_url(&after).as_deref(), Some("https://two.example"));
        assert!(store.delete_component("A", id).await.unwrap());
        assert!(
            cache
                .named(&store, "A", "api", false)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn another_hosts_change_shows_once_the_record_ages_out_and_misses_are_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let here = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        // Another host's store on the same data: its writes are not this one's.
        let there = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let lifetime = Duration::from_secs(2);
        let cache = ComponentCache::new(lifetime);
        let id = "0123456789abcdef01234568";
        // Not there yet: nothing is kept, so the component is found once created.
        assert!(cache.named(&here, "A", id, true).await.unwrap().is_none());
        there
            .insert_component(record("A", id, "api", "https://one.example"))
            .await
            .unwrap();
        let kept = cache.named(&here, "A", id, true).await.unwrap();
        assert_eq!(base_url(&kept).as_deref(), Some("https://one.example"));
        assert!(there.delete_component("A", id).await.unwrap());
        // Within the lifetime the kept record is still used: that is the cache.
        cache.age(lifetime / 2);
        let still = cache.named(&here, "A", id, true).await.unwrap();
        assert_eq!(base_url(&still).as_deref(), Some("https://one.example"));
        // At the lifetime, never.
        cache.age(lifetime / 2);
        assert!(
            cache.named(&here, "A", id, true).await.unwrap().is_none(),
            "a record another process deleted is not used once the cache's lifetime passed"
        );
    }

    #[tokio::test]
    async fn a_zero_lifetime_keeps_nothing() {
        let (_dir, store, there) = two_processes_view().await;
        let cache = ComponentCache::new(Duration::ZERO);
        let id = "0123456789abcdef01234569";
        store
            .insert_component(record("A", id, "api", "https://one.example"))
            .await
            .unwrap();
        assert!(
            cache
                .named(&store, "A", "api", false)
                .await
                .unwrap()
                .is_some()
        );
        assert!(there.delete_component("A", id).await.unwrap());
        assert!(
            cache
                .named(&store, "A", "api", false)
                .await
                .unwrap()
                .is_none()
        );
    }
}
