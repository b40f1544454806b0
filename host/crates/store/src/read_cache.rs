//! Records a hot path reads on every call (a step's component and OAuth link, the API
//! caller's token), kept for a short, bounded time so that a busy host does not read
//! the store for the same record each time (issue 19, item 6).
//!
//! What is kept is the record as the store holds it: sealed secrets stay sealed and are
//! opened by the caller each time. A kept record is used again only while both hold:
//!
//! - it was read less than the cache's lifetime ago: the bound within which a change
//!   made by another process (another host on the same store, the operator's CLI)
//!   reaches this host;
//! - no write to that family of records went through this host's store since it was read
//!   ([`WriteCounts`], counted by [`AnyStore`]): a change made through this host
//!   reaches its next read at once.
//!
//! Lookups that find nothing are not kept: a record created anywhere is found at once.

use crate::AnyStore;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A family of records whose writes are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// API-key components.
    Components,
    /// OAuth links (a refresh, a lease, an unlink, a share all count).
    Links,
    /// API tokens.
    Tokens,
}

/// How many writes of each family a store and its clones have made, finished or failed
/// (a failed one may still have changed the store: a timeout after the server applied
/// it).
#[derive(Debug, Default)]
pub struct WriteCounts {
    components: AtomicU64,
    links: AtomicU64,
    tokens: AtomicU64,
}

impl WriteCounts {
    fn of(&self, records: Records) -> &AtomicU64 {
        match records {
            Records::Components => &self.components,
            Records::Links => &self.links,
            Records::Tokens => &self.tokens,
        }
    }

    /// The writes of `records` so far.
    pub fn get(&self, records: Records) -> u64 {
        self.of(records).load(Ordering::Acquire)
    }

    /// Count one write of `records`.
    pub(crate) fn count(&self, records: Records) {
        self.of(records).fetch_add(1, Ordering::AcqRel);
    }
}

/// At most this many records are kept; a full cache starts over (the records come
/// back on their next use).
const MAX_ENTRIES: usize = 4096;

struct Kept<V> {
    record: Arc<V>,
    read_at: Instant,
    writes: u64,
}

/// Records of one family recently read, by lookup key (see the module documentation).
pub struct ReadCache<K, V> {
    records: Records,
    lifetime: Duration,
    kept: Mutex<HashMap<K, Kept<V>>>,
    /// Added to the clock: how tests age the entries without waiting.
    skew_nanos: AtomicU64,
}

impl<K: Hash + Eq, V> ReadCache<K, V> {
    /// A cache of `records` keeping each at most `lifetime` (zero: nothing is kept).
    pub fn new(records: Records, lifetime: Duration) -> ReadCache<K, V> {
        ReadCache {
            records,
            lifetime,
            kept: Mutex::new(HashMap::new()),
            skew_nanos: AtomicU64::new(0),
        }
    }

    /// How long a record is kept: the bound on another process's change reaching a read.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The record `key` names: the kept one while it is fresh, else what `read` finds
    /// (kept when it found one).
    pub async fn get_or_read<E>(
        &self,
        store: &AnyStore,
        key: K,
        read: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<Arc<V>>, E> {
        if self.lifetime.is_zero() {
            return Ok(read.await?.map(Arc::new));
        }
        // Noted before the read: a write racing it makes the entry stale, never the
        // other way round.
        let writes = store.writes(self.records);
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

    /// Age every kept entry by `by`: how tests reach the lifetime without waiting.
    #[doc(hidden)]
    pub fn age(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew_nanos.fetch_add(by, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Kept<V>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::{Store, TokenRecord};

    fn token(id: &str, hash: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            company_id: "A".into(),
            user_id: "u".into(),
            admin: false,
            name: "t".into(),
            token_hash: hash.into(),
            created_at: crate::now(),
            revoked_at: None,
        }
    }

    async fn cached(
        cache: &ReadCache<String, TokenRecord>,
        store: &AnyStore,
        hash: &str,
    ) -> Option<Arc<TokenRecord>> {
        cache
            .get_or_read(store, hash.to_string(), store.find_token_by_hash(hash))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_write_of_the_family_through_this_store_ends_every_kept_record_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let cache = ReadCache::new(Records::Tokens, Duration::from_secs(3600));
        store.insert_token(token("t1", "h1")).await.unwrap();
        assert!(
            cached(&cache, &store, "h1")
                .await
                .unwrap()
                .revoked_at
                .is_none()
        );
        // A write of another family leaves it kept (the store is not read again: a
        // revocation through another process is not seen yet).
        let before = store.writes(Records::Tokens);
        store
            .delete_component("A", "0123456789abcdef01234567")
            .await
            .unwrap();
        assert_eq!(store.writes(Records::Tokens), before);
        assert!(store.revoke_token("t1").await.unwrap());
        // Revoked through this store: the next read sees it.
        assert!(
            cached(&cache, &store, "h1")
                .await
                .unwrap()
                .revoked_at
                .is_some()
        );
    }

    #[tokio::test]
    async fn another_processes_change_shows_at_the_lifetime_and_misses_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let here = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let there = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let lifetime = Duration::from_secs(2);
        let cache = ReadCache::new(Records::Tokens, lifetime);
        assert!(cached(&cache, &here, "h2").await.is_none());
        there.insert_token(token("t2", "h2")).await.unwrap();
        assert!(
            cached(&cache, &here, "h2").await.is_some(),
            "a miss is not kept"
        );
        assert!(there.revoke_token("t2").await.unwrap());
        cache.age(lifetime / 2);
        assert!(
            cached(&cache, &here, "h2")
                .await
                .unwrap()
                .revoked_at
                .is_none()
        );
        cache.age(lifetime / 2);
        assert!(
            cached(&cache, &here, "h2")
                .await
                .unwrap()
                .revoked_at
                .is_some(),
            "another process's revocation shows once the lifetime passed"
        );
    }

    #[tokio::test]
    async fn a_zero_lifetime_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let here = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let there = AnyStore::from(EmbeddedStore::open(dir.path()).await.unwrap());
        let cache = ReadCache::new(Records::Tokens, Duration::ZERO);
        here.insert_token(token("t3", "h3")).await.unwrap();
        assert!(
            cached(&cache, &here, "h3")
                .await
                .unwrap()
                .revoked_at
                .is_none()
        );
        assert!(there.revoke_token("t3").await.unwrap());
        assert!(
            cached(&cache, &here, "h3")
                .await
                .unwrap()
                .revoked_at
                .is_some()
        );
    }
}
