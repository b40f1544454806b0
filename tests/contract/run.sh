#!/usr/bin/env bash
# The API contract check: schemathesis (tests/contract/requirements.txt, in tests/.venv)
# against a live `flow8-host serve` with every check on, once with a member token of
# one company and once with a member token of another, bounded in examples and time.
# The host runs on a free loopback port with a temporary data directory, removed on
# exit. Usage: tests/contract/run.sh HOST_BIN MODULES_DIR
set -euo pipefail
host_bin=$1
modules_dir=$2
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
work=$(mktemp -d /var/tmp/flow8-contract.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
export FLOW8_DATA_DIR="$work/data" FLOW8_MODULES_PATH="$modules_dir" FLOW8_CACHE_DIR="$work/cache"
export FLOW8_METRICS_TOKEN="contract-metrics-token-0123456789"
# One OAuth provider configured, so the integration routes answer as in production
# (nothing here reaches it: no link is ever connected).
cat > "$work/config.yml" <<YAML
oauth2:
  slack:
    client_id: "contract.test"
    client_secret: "contract-secret"
    redirect_uri: http://127.0.0.1:1/auth/callback
    scopes: [chat:write]
YAML
token() { "$host_bin" tokens create --for-company "$1" --user "$2" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p'; }
token_a=$(token contract-a alice)
token_b=$(token contract-b bob)
# Port 0: the host says where it listens on its first line.
"$host_bin" --config "$work/config.yml" serve --listen 127.0.0.1:0 > "$work/out" 2> "$work/log" &
pid=$!
for _ in $(seq 1 300); do
    grep -q '^listening on ' "$work/out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
    # Bounded wait for the host's readiness line (a debug host starts in seconds).
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$work/out" | head -1)
[ -n "$base" ] || { echo "the host did not start" >&2; cat "$work/log" >&2; exit 1; }
# schemathesis keeps a cache in its working directory: the temporary one.
cd "$work"
status=0
for who in a b; do
    t=token_$who
    echo "schemathesis: company $who against $base"
    # anyio is imported up front: imported lazily from a worker thread, Python 3.11's
    # compiler failed ("AST constructor recursion depth mismatch").
    "$py" -c 'import sys, anyio, schemathesis.transport.asgi; from schemathesis.cli import schemathesis; sys.argv[0] = "schemathesis"; sys.exit(schemathesis())' \
        --config-file "$here/schemathesis.toml" --no-color run "$base/openapi.json" \
        --checks all \
        -H "Authorization: Bearer ${!t}" \
        --max-examples "${FLOW8_CONTRACT_EXAMPLES:-25}" \
        --max-time "${FLOW8_CONTRACT_SECONDS:-60}" \
        --seed 17 \
        --workers 2 \
        --warnings off || status=1
done
if [ "$status" != 0 ]; then echo "host log:" >&2; tail -50 "$work/log" >&2; fi
exit "$status"
