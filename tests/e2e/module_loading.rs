//! Loading modules under concurrency: a host that has not loaded a module yet compiles
//! it once however many steps ask for it at the same moment, and a module that does not
//! load fails every one of them by name without blocking the next load.

use flow8_host::runtime::cache::CompileCache;
use flow8_host::runtime::registry::ModuleRegistry;
use flow8_tests as support;
use std::sync::Arc;

/// A registry of its own (the shared one has every module loaded already) over a
/// directory holding only `http-request`, counting what its cache compiles.
fn cold_registry(dir: &std::path::Path) -> (Arc<ModuleRegistry>, CompileCache) {
    std::fs::copy(
        support::wasm_dir().join("http_request.wasm"),
        dir.join("http_request.wasm"),
    )
    .expect("copy http_request.wasm");
    let cache = CompileCache::disabled();
    let registry = ModuleRegistry::new(
        support::shared_engine(),
        cache.clone(),
        vec![dir.to_path_buf()],
    );
    (Arc::new(registry), cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_steps_of_a_module_compile_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, cache) = cold_registry(dir.path());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.resolve("http-request").await })
        })
        .collect();
    let mut digests = Vec::new();
    for t in tasks {
        let module = t.await.unwrap().expect("http-request resolves");
        digests.push(module.digest.clone());
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "every step got the same module");
    assert_eq!(
        cache.compiled(),
        1,
        "16 concurrent first loads must share one compile"
    );
    // Loaded now: later steps compile nothing.
    registry.resolve("http-request").await.unwrap();
    assert_eq!(cache.compiled(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_of_a_broken_module_all_fail_by_name_and_block_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, cache) = cold_registry(dir.path());
    // A component header with nothing valid after it: it reaches the compiler.
    let broken: Arc<Vec<u8>> = Arc::new(b"\0asm\x0d\x00\x01\x00\xff\xff\xff".to_vec());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (registry, broken) = (registry.clone(), broken.clone());
            tokio::spawn(async move { registry.load_bytes(&broken).await })
        })
        .collect();
    for t in tasks {
        let err = t
            .await
            .unwrap()
            .expect_err("a broken component does not load");
        assert_eq!(err.name.as_str(), "invalid_module", "{err:?}");
    }
    // Nothing was left waiting: a good module loads right after, and so does the broken
    // one's next attempt (refused again, by name).
    registry.resolve("http-request").await.unwrap();
    assert_eq!(cache.compiled(), 1);
    let again = registry
        .load_bytes(&broken)
        .await
        .expect_err("still broken");
    assert_eq!(again.name.as_str(), "invalid_module");
}

/// A step naming one module does not compile every other module of the directory to
/// find it: the compile cache remembers which name each `.wasm` declared, so a host
/// whose compiled entries are gone (a new engine, eviction) compiles only the one the
/// step names. A listing still loads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_naming_one_module_compiles_only_that_one_once_names_are_known() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["http_request.wasm", "slack_message.wasm"] {
        std::fs::copy(support::wasm_dir().join(file), dir.path().join(file)).expect(file);
    }
    let cache_dir = tempfile::tempdir().unwrap();
    let registry = |cache: &CompileCache| {
        ModuleRegistry::new(
            support::shared_engine(),
            cache.clone(),
            vec![dir.path().to_path_buf()],
        )
    };

    // A cold cache knows no names: finding http-request loads both.
    let cold = CompileCache::at(cache_dir.path()).unwrap();
    registry(&cold).resolve("http-request").await.unwrap();
    assert_eq!(cold.compiled(), 2);

    // The compiled entries go; the names stay.
    for e in std::fs::read_dir(cache_dir.path()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "cwasm") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let warm = CompileCache::at(cache_dir.path()).unwrap();
    let r = registry(&warm);
    r.resolve("http-request").await.unwrap();
    assert_eq!(
        warm.compiled(),
        1,
        "slack-message was compiled to find http-request"
    );
    r.resolve("slack-message").await.unwrap();
    assert_eq!(warm.compiled(), 2);
    // Both found now, and a listing has both.
    r.resolve("http-request").await.unwrap();
    assert_eq!(warm.compiled(), 2);
    let listed = r.scan().await;
    assert_eq!(
        listed.iter().filter(|e| e.module.is_ok()).count(),
        2,
        "{listed:?}"
    );
}
