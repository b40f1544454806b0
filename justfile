# Every command a person or CI runs. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

wasm_target_dir := justfile_directory() / "target/wasm"
wasm_dir := wasm_target_dir / "wasm32-wasip2/release"

# List the recipes.
default:
    @just --list

# Build the first-party modules (http-request, ...) for wasm32-wasip2.
modules: wasm-target
    cargo build --manifest-path modules/Cargo.toml --target wasm32-wasip2 --release --target-dir {{wasm_target_dir}}

# Build the small hostile and broken modules the tests use.
guests: wasm-target
    cargo build --manifest-path tests/guests/Cargo.toml --target wasm32-wasip2 --release --target-dir {{wasm_target_dir}}

# The guest target (rustup adds it once; later runs only check).
wasm-target:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# The test servers from npm (oauth2-mock-server, from the lock file) and PyPI
# (SecantusDB, a MongoDB-wire-protocol server, in tests/.venv), and the browser.
# System packages come from apt when missing (Node.js, Python venv, Chromium + ChromeDriver).
test-servers:
    @command -v node >/dev/null && command -v npm >/dev/null && command -v chromedriver >/dev/null && python3 -m venv --help >/dev/null 2>&1 || (echo "installing test prerequisites with apt-get" && apt-get update -qq && apt-get install -y -qq nodejs npm python3-venv chromium chromium-driver)
    @test -d tests/oauth-server/node_modules/oauth2-mock-server || (cd tests/oauth-server && npm ci --no-audit --no-fund)
    @test -x tests/.venv/bin/python && tests/.venv/bin/python -c 'import secantus' 2>/dev/null || (python3 -m venv tests/.venv && tests/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/mongo-server/requirements.txt)

# Build the host.
build: modules
    cargo build -p flow8-host

# Run one module step: `just run-module http-request input.json [flow8-host run-module flags]`.
run-module MODULE INPUT *FLAGS: modules
    cargo run -q -p flow8-host -- --modules-dir {{wasm_dir}} run-module {{MODULE}} {{INPUT}} {{FLAGS}}

# Any other flow8-host command against the built modules: `just host components list`.
host *ARGS: modules
    cargo run -q -p flow8-host -- --modules-dir {{wasm_dir}} {{ARGS}}

# End to end on a fresh machine: a local HTTP server, an API-key component in the
# embedded store, and the http-request module calling the server with the credential
# the host attached.
demo: modules
    cargo build -q -p flow8-host -p flow8-tests --bins
    ./target/debug/demo --host-bin ./target/debug/flow8-host --modules-dir {{wasm_dir}}

# Formatting and lints, host and guests.
lint:
    cargo fmt --all --check
    cargo fmt --manifest-path modules/Cargo.toml --all --check
    cargo fmt --manifest-path tests/guests/Cargo.toml --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --manifest-path modules/Cargo.toml --target wasm32-wasip2 --target-dir {{wasm_target_dir}} -- -D warnings
    cargo clippy --manifest-path tests/guests/Cargo.toml --target wasm32-wasip2 --target-dir {{wasm_target_dir}} -- -D warnings

# The whole test suite: lints, guest builds, unit, doc and end-to-end tests.
test: lint modules guests test-servers
    cargo build -p flow8-host
    FLOW8_WASM_DIR={{wasm_dir}} cargo test --workspace 2>&1 | tee target/test-output.log
    @awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' target/test-output.log

# Benchmarks (release build); prints a table.
bench: modules guests
    cargo build --release -p flow8-host
    FLOW8_WASM_DIR={{wasm_dir}} cargo bench -p flow8-tests --bench step
