//! The component records a step's bindings resolve to, kept for a short, bounded time so
//! that a busy flow does not read the store for the same component on every step
//! (issue 19, item 6).
//!
//! What is kept is the record as the store holds it: its secrets stay sealed, and every
//! step still opens them with the vault. A record is used again only while both hold:
//!
//! - it was read less than the cache's lifetime ago (`component_cache_seconds`, 2 s by
//!   default, 0 turns the cache off): the bound within which a change made by another
//!   process (another host on the same store, the operator's CLI) reaches this host's
//!   steps;
//! - no component write went through this host's store since it was read
//!   ([`AnyStore::component_writes`]): a change made through this host (its API, a key
//!   rotation it ran) reaches its next step at once.
//!
//! Lookups that find nothing are not kept: a step naming a missing component reads the
//! store every time, so a component created anywhere is found at once.

use crate::store::{AnyStore, ComponentRecord, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most this many records are kept; a full cache starts over (the records come
/// back on their next use).
const MAX_ENTRIES: usize = 4096;

/// How a binding names its component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lookup {
    /// By id or name, as the step's bindings gave it.
    Named(String),
    /// The company's default component of a kind.
    Default(String),
}

struct Kept {
    record: Arc<ComponentRecord>,
    read_at: Instant,
    writes: u64,
}

/// Component records recently read for steps (see the module documentation).
pub struct ComponentCache {
    lifetime: Duration,
    kept: Mutex<HashMap<(String, Lookup), Kept>>,
    /// Added to the clock: how tests age the entries without waiting.
    skew_nanos: AtomicU64,
}

impl ComponentCache {
    /// A cache keeping each record at most `lifetime` (zero: nothing is kept).
    pub fn new(lifetime: Duration) -> ComponentCache {
        ComponentCache {
            lifetime,
            kept: Mutex::new(HashMap::new()),
            skew_nanos: AtomicU64::new(0),
        }
    }

    /// How long a record is kept: the bound on another process's change reaching a step.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
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
        self.get_or_read(store, key, async {
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
        self.get_or_read(store, key, store.default_component(company_id, kind))
            .await
    }

    async fn get_or_read(
        &self,
        store: &AnyStore,
        key: (String, Lookup),
        read: impl Future<Output = Result<Option<ComponentRecord>, StoreError>>,
    ) -> Result<Option<Arc<ComponentRecord>>, StoreError> {
        if self.lifetime.is_zero() {
            return Ok(read.await?.map(Arc::new));
        }
        // Noted before the read: a write racing it makes the entry stale, never the
        // other way round.
        let writes = store.component_writes();
        if let Some(k) = self.lock().get(&key)
            && k.writes == writes
            && self.now().saturating_duration_since(k.read_at) < self.lifetime
        {
            return Ok(Some(k.record.clone()));
        }
        let read_at = self.now();
        let Some(record) = read.await?.map(Arc::new) else {
            self.lock().remove(&key);
            return Ok(None);
        };
        let mut kept = self.lock();
        if kept.len() >= MAX_ENTRIES && !kept.contains_key(&key) {
            kept.clear();
        }
        kept.insert(
            key,
            Kept {
                record: record.clone(),
                read_at,
                writes,
            },
        );
        Ok(Some(record))
    }

    fn now(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.skew_nanos.load(Ordering::Relaxed))
    }

    /// Age every kept entry by `by` (tests).
    #[cfg(test)]
    fn age(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew_nanos.fetch_add(by, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Lookup), Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
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
        cache.age(lifetime - Duration::from_millis(1));
        let still = cache.named(&here, "A", id, true).await.unwrap();
        assert_eq!(base_url(&still).as_deref(), Some("https://one.example"));
        // At the lifetime, never.
        cache.age(Duration::from_millis(1));
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
