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

/// `bytes` with the first occurrence of `from` replaced by `to` (same length).
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{} not in the module", String::from_utf8_lossy(from)));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// A step naming one module does not compile every other module of the directory to
/// find it. On a cold compile cache, a file whose `flow8:module-name` section (the Rust
/// SDK writes the package name there) names another module is skipped; one without the
/// section is compiled to read its manifest; when no file answers to the name, the
/// files skipped by their section are compiled too, so a section that lies only costs
/// time. Once the compile cache knows each digest's name, the section is not needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_naming_one_module_compiles_only_the_files_that_may_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["http_request.wasm", "slack_message.wasm"] {
        std::fs::copy(support::wasm_dir().join(file), dir.path().join(file)).expect(file);
    }
    let read = |f: &str| std::fs::read(support::wasm_dir().join(f)).expect(f);
    // No section (its name is broken): only its manifest tells.
    let plain = patched(
        &read("microsoft_calendar.wasm"),
        b"flow8:module-name",
        b"flow8:module-nama",
    );
    std::fs::write(dir.path().join("plain.wasm"), &plain).unwrap();
    // A section that names another module than the manifest does.
    let liar = patched(
        &read("s3_upload.wasm"),
        b"flow8:module-names3-upload",
        b"flow8:module-names3-uplaad",
    );
    std::fs::write(dir.path().join("liar.wasm"), &liar).unwrap();
    assert_eq!(flow8_host::runtime::name_hint::read(&plain), None);
    assert_eq!(
        flow8_host::runtime::name_hint::read(&read("slack_message.wasm")).as_deref(),
        Some("slack-message")
    );

    let cache_dir = tempfile::tempdir().unwrap();
    let registry = |cache: &CompileCache| {
        ModuleRegistry::new(
            support::shared_engine(),
            cache.clone(),
            vec![dir.path().to_path_buf()],
        )
    };

    // Cold: http-request itself and the file without a section.
    let cold = CompileCache::at(cache_dir.path()).unwrap();
    let r = registry(&cold);
    r.resolve("http-request").await.unwrap();
    assert_eq!(
        cold.compiled(),
        2,
        "slack-message or the lying file was compiled to find http-request"
    );
    // The lying file is skipped at first; nothing else answers, so the skipped files
    // are compiled and s3-upload is found under its manifest's name.
    let s3 = r.resolve("s3-upload").await.expect("s3-upload is found");
    assert_eq!(s3.manifest.name, "s3-upload");
    assert_eq!(cold.compiled(), 4);
    assert_eq!(
        r.resolve("s3-uplaad").await.unwrap_err().name.as_str(),
        "module_not_found",
        "the section's name is not a module's name"
    );
    assert_eq!(cold.compiled(), 4);

    // The compiled entries go; the names the cache learnt stay, and lead.
    for e in std::fs::read_dir(cache_dir.path()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "cwasm") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let warm = CompileCache::at(cache_dir.path()).unwrap();
    let r = registry(&warm);
    r.resolve("s3-upload").await.unwrap();
    assert_eq!(
        warm.compiled(),
        1,
        "only the file the cache knows holds s3-upload"
    );
    r.resolve("microsoft-calendar").await.unwrap();
    assert_eq!(warm.compiled(), 2);
    // A listing loads every file.
    let listed = r.scan().await;
    assert_eq!(
        listed.iter().filter(|e| e.module.is_ok()).count(),
        4,
        "{listed:?}"
    );
    assert_eq!(warm.compiled(), 4);
}

/// The same from the CLI, as an author or operator meets it: `run-module NAME` on an
/// empty compile cache, with every first-party module in the module path, compiles one
/// component, not the whole directory.
#[test]
fn run_module_by_name_on_a_cold_cache_compiles_only_that_module() {
    let modules_dir = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for folder in std::fs::read_dir(support::repo_root().join("modules")).unwrap() {
        let name = folder
            .unwrap()
            .file_name()
            .to_string_lossy()
            .replace('-', "_");
        let built = support::wasm_dir().join(format!("{name}.wasm"));
        if built.exists() {
            std::fs::copy(&built, modules_dir.path().join(format!("{name}.wasm"))).unwrap();
            copied += 1;
        }
    }
    assert!(
        copied >= 15,
        "the module path holds the built modules ({copied})"
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let mut cli = support::Cli::new();
    for (var, dir) in [
        ("FLOW8_CACHE_DIR", &cache_dir),
        ("FLOW8_MODULES_PATH", &modules_dir),
    ] {
        cli.env
            .push((var.into(), dir.path().to_str().unwrap().into()));
    }
    let input = cli.data_dir.path().join("input.json");
    // Refused by the module's input schema: the module is loaded, nothing is sent.
    std::fs::write(&input, r#"{"method":"GET"}"#).unwrap();
    let out = cli.run(&["run-module", "http-request", input.to_str().unwrap()]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    let compiled: Vec<_> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
}
