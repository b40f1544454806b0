# Every command a person or CI runs. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Cargo's target directory: `CARGO_TARGET_DIR` when set (CI points it at a directory
# that outlives the clone), otherwise `target/` here.
target_dir := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")
wasm_target_dir := target_dir / "wasm"
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

# The example modules in JavaScript (componentize-js, npm) and Python (componentize-py,
# PyPI) under `modules/examples/`, into `<wasm target dir>/examples/`. Each toolchain is
# installed once, pinned (package-lock.json, requirements.txt), into its own folder
# (node_modules, .venv); a module is rebuilt only when its source, the WIT or this
# justfile changed.
examples:
    #!/usr/bin/env bash
    set -euo pipefail
    out="{{wasm_target_dir}}/examples"
    wit="{{justfile_directory()}}/wit"
    mkdir -p "$out"
    stale() { [ ! -f "$1" ] || [ "$2" -nt "$1" ] || [ "$wit/world.wit" -nt "$1" ] || [ "{{justfile()}}" -nt "$1" ]; }
    # The `flow8:module-name` custom section the Rust SDK writes (host/src/runtime/
    # name_hint.rs), appended: a host looking for another module skips the file
    # uncompiled. Id 0, size, name length 17, the section name, the module name.
    name_section() { printf "\\000\\$(printf %03o $((18 + ${#2})))\\021flow8:module-name%s" "$2" >> "$1"; }
    cd "{{justfile_directory()}}/modules/examples/js-fetch"
    test -x node_modules/.bin/componentize-js || npm ci --no-audit --no-fund
    if stale "$out/js-fetch.wasm" app.js; then
        echo "building js-fetch (componentize-js)"
        node_modules/.bin/componentize-js app.js --wit "$wit" --world-name module -o "$out/js-fetch.wasm"
        name_section "$out/js-fetch.wasm" js-fetch
    fi
    cd ../python-echo
    .venv/bin/python -c 'import componentize_py' 2>/dev/null || { python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt; }
    if stale "$out/python-echo.wasm" app.py; then
        echo "building python-echo (componentize-py)"
        .venv/bin/componentize-py -d "$wit" -w module componentize app -o "$out/python-echo.wasm"
        name_section "$out/python-echo.wasm" python-echo
    fi
    ls -l "$out"/*.wasm

# The guest target (rustup adds it once; later runs only check).
wasm-target:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# What the tests need besides Rust, installed only where missing and one piece at a
# time, saying what it installs: Node.js and npm (the OAuth servers), Python's venv
# (SecantusDB for MongoDB), Chromium and ChromeDriver (the connect-page test), the CNCF
# distribution registry (Debian's docker-registry, for the OCI tests). A
# Node.js or Python already on the machine is never replaced: an apt-get install that
# would remove a package is refused with the reason. FLOW8_PREREQS_DRY_RUN=1 only says
# what it would install.
test-prereqs:
    #!/usr/bin/env bash
    set -euo pipefail
    dry="${FLOW8_PREREQS_DRY_RUN:-}"
    updated=""
    install() { # install PACKAGE WHY
        if [ -n "$dry" ]; then echo "would install $1 ($2)"; return; fi
        if ! command -v apt-get >/dev/null; then
            echo "error: $1 is missing ($2) and there is no apt-get here: install it, then run this again" >&2
            exit 1
        fi
        if [ -z "$updated" ]; then apt-get update -qq; updated=1; fi
        plan=$(DEBIAN_FRONTEND=noninteractive apt-get install -s --no-install-recommends "$1" 2>&1) || {
            echo "error: apt-get cannot install $1 ($2) beside what is installed:" >&2
            echo "$plan" | grep -E '^ |^E:' >&2 || true
            exit 1
        }
        if echo "$plan" | grep -q '^Remv '; then
            echo "error: installing $1 ($2) would remove installed packages; install it by hand:" >&2
            echo "$plan" | grep '^Remv ' >&2
            exit 1
        fi
        echo "installing $1 ($2) with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    }
    missing=""
    command -v node >/dev/null || { install nodejs "Node.js runs the OAuth2 test servers"; missing=1; }
    command -v npm >/dev/null || { install npm "npm installs the OAuth2 test servers"; missing=1; }
    command -v python3 >/dev/null || { install python3 "Python runs the MongoDB test server"; missing=1; }
    python3 -c 'import venv, ensurepip' 2>/dev/null || { install python3-venv "a venv holds the MongoDB test server"; missing=1; }
    command -v chromium >/dev/null || { install chromium "the connect-page test drives a browser"; missing=1; }
    command -v chromedriver >/dev/null || { install chromium-driver "WebDriver for that browser"; missing=1; }
    command -v docker-registry >/dev/null || { install docker-registry "the OCI tests push and pull modules through a real registry"; missing=1; }
    [ -n "$missing" ] || echo "test prerequisites: all present"

# The test servers from npm (oauth2-mock-server and oidc-provider, each from its lock
# file) and PyPI (SecantusDB, a MongoDB-wire-protocol server, and schemathesis, the API
# contract checker, both pinned, in tests/.venv).
test-servers: test-prereqs
    @test -d tests/oauth-server/node_modules/oauth2-mock-server || (cd tests/oauth-server && npm ci --no-audit --no-fund)
    @test -d tests/oidc-server/node_modules/oidc-provider || (cd tests/oidc-server && npm ci --no-audit --no-fund)
    @test -x tests/.venv/bin/python && tests/.venv/bin/python -c 'import secantus' 2>/dev/null || (python3 -m venv tests/.venv && tests/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/mongo-server/requirements.txt)
    @tests/.venv/bin/python -c 'import aiosmtpd, pyftpdlib, OpenSSL, cryptography' 2>/dev/null || tests/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/py-servers/requirements.txt
    @tests/.venv/bin/python -c 'import schemathesis' 2>/dev/null || tests/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/contract/requirements.txt

# The API contract: schemathesis, every check on, against a live host with two
# companies' member tokens, bounded in examples and time (FLOW8_CONTRACT_EXAMPLES,
# FLOW8_CONTRACT_SECONDS per company; about 2.5 minutes in all on 2 cores).
contract: test-servers
    cargo build -p flow8-host
    tests/contract/run.sh {{target_dir}}/debug/flow8-host {{wasm_dir}}

# cargo-fuzz, pinned, installed only where missing (about 2 minutes).
fuzz-tools:
    @cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz 0.13.2' || cargo install cargo-fuzz --locked --version 0.13.2

# The cargo-fuzz targets in tests/fuzz/ (see tests/fuzz/FUZZING.md), from the committed
# seeds, on the stable toolchain with AddressSanitizer; a crash stops it and names the
# input.
# Fuzz every target for FLOW8_FUZZ_SECONDS (300) each; `just fuzz envelope` runs one.
fuzz *TARGETS: fuzz-tools
    tests/fuzz/run.sh {{target_dir}} ${FLOW8_FUZZ_SECONDS:-300} {{TARGETS}}

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
    {{target_dir}}/debug/demo --host-bin {{target_dir}}/debug/flow8-host --modules-dir {{wasm_dir}} --data-dir {{target_dir}}/demo-data

# Formatting and lints, host and guests.
lint: wasm-target
    cargo fmt --all --check
    cargo fmt --manifest-path modules/Cargo.toml --all --check
    cargo fmt --manifest-path tests/guests/Cargo.toml --all --check
    cargo fmt --manifest-path tests/fuzz/Cargo.toml --all --check
    cargo fmt --manifest-path tests/peers/extism/Cargo.toml --all --check
    cargo fmt --manifest-path tests/peers/extism/plugin/Cargo.toml --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --manifest-path modules/Cargo.toml --target wasm32-wasip2 --target-dir {{wasm_target_dir}} -- -D warnings
    cargo clippy --manifest-path tests/guests/Cargo.toml --target wasm32-wasip2 --target-dir {{wasm_target_dir}} -- -D warnings

# The whole test suite: lints, guest builds, unit, doc and end-to-end tests.
test: lint modules guests examples test-servers fuzz-tools
    cargo build -p flow8-host
    FLOW8_WASM_DIR={{wasm_dir}} FLOW8_EXAMPLES_DIR={{wasm_target_dir}}/examples cargo test --workspace 2>&1 | tee {{target_dir}}/test-output.log
    # The modules' own unit tests (URL joining, query encoding), natively.
    cargo test --manifest-path modules/Cargo.toml --workspace --lib 2>&1 | tee -a {{target_dir}}/test-output.log
    # The hostile-module suites again, each host on MongoDB (SecantusDB) instead of the
    # embedded store.
    FLOW8_TEST_STORE=mongodb FLOW8_WASM_DIR={{wasm_dir}} cargo test -p flow8-tests --test e2e -- hostile_ step_budgets:: 2>&1 | tee -a {{target_dir}}/test-output.log
    # The API contract (schemathesis) against a live host; a failure stops here.
    tests/contract/run.sh {{target_dir}}/debug/flow8-host {{wasm_dir}}
    # Every fuzz target briefly (FLOW8_TEST_FUZZ_SECONDS each, default 15); `just fuzz`
    # runs them longer. A crash stops here.
    tests/fuzz/run.sh {{target_dir}} ${FLOW8_TEST_FUZZ_SECONDS:-15} 2>&1 | tee -a {{target_dir}}/test-output.log
    @awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' {{target_dir}}/test-output.log

# Benchmarks (release build); prints a table.
bench: modules guests examples
    cargo build --release -p flow8-host
    FLOW8_WASM_DIR={{wasm_dir}} cargo bench -p flow8-tests --bench step

# Extism beside this host in one run (issue 19, target 3; tests/peers/extism/README.md):
# `rounds` alternating rounds of flow8's peer section (`BENCH_ONLY=peers`) and the
# Extism bench, then each path's median as one table. Extism cannot link into flow8's
# bench (another wasmtime), so it is its own binary, built here, never by `just test`.
bench-peers rounds="3": modules guests
    #!/usr/bin/env bash
    set -euo pipefail
    peers="{{justfile_directory()}}/tests/peers/extism"
    peer_target="{{target_dir}}/peers"
    (cd "$peers/plugin" && cargo build --release --locked --target-dir "$peer_target")
    plugin="$peer_target/wasm32-wasip2/release/flow8_peer_extism_plugin.wasm"
    cargo build --release --locked --manifest-path "$peers/Cargo.toml" --target-dir "$peer_target"
    FLOW8_WASM_DIR={{wasm_dir}} cargo bench -p flow8-tests --bench step --no-run
    rows=$(mktemp)
    trap 'rm -f "$rows"' EXIT
    for round in $(seq {{rounds}}); do
        echo "bench-peers: round $round of {{rounds}}"
        FLOW8_WASM_DIR={{wasm_dir}} BENCH_ONLY=peers cargo bench -q -p flow8-tests --bench step | tee -a "$rows"
        "$peer_target/release/extism-peer-bench" run "$plugin" | tee -a "$rows"
    done
    "$peer_target/release/extism-peer-bench" summarize "$rows"

# The share of an http step's CPU the security budgets, pins, taint and redaction take
# (issue 18), sampled with `perf` (linux-perf; not part of `just test`). They cannot be
# switched off to compare; tests/benches/budget-share.sh explains what it counts.
bench-budgets requests="30000": modules guests
    #!/usr/bin/env bash
    set -euo pipefail
    bin=$(cargo bench -p flow8-tests --bench step --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
    FLOW8_WASM_DIR={{wasm_dir}} tests/benches/budget-share.sh "$bin" {{requests}}

# The README's quick start as a new user meets it: a fresh clone of HEAD in a temporary
# folder with its own empty target directory, then `just demo` and `just test` there,
# each timed. Cold on 2 cores this takes about as long as both README commands do
# (see the README); it is not part of `just test`.
quickstart-check:
    #!/usr/bin/env bash
    set -euo pipefail
    work=$(mktemp -d /var/tmp/flow8-quickstart.XXXXXX)
    git clone -q "{{justfile_directory()}}" "$work/flow8"
    cd "$work/flow8"
    export CARGO_TARGET_DIR="$work/target"
    for cmd in demo test; do
        start=$(date +%s)
        just "$cmd"
        echo "quickstart-check: just $cmd took $(( $(date +%s) - start )) s"
    done
    rm -rf "$work"
