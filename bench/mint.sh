#!/usr/bin/env bash
# Minting throughput over HTTP, with the durable ledger (and audit) writes: starts a release
# `keypost serve` on loopback in a temporary directory and drives the token endpoint with wrk.
#
#   bench/mint.sh [DURATION]        (default 15s; needs wrk: apt-get install wrk)
#
# Prints wrk's requests/s and latency percentiles for client_credentials and refresh_token.
# Every request and the server stay on 127.0.0.1; the script stops the server when done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${1:-15s}"
THREADS="${THREADS:-8}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keypost/target}"
command -v wrk >/dev/null || { echo "bench/mint.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p keypost
BIN="$CARGO_TARGET_DIR/release/keypost"

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export KEYPOST_DATA_DIR="$WORK/data" KEYPOST_LISTEN_HTTP="127.0.0.1:$PORT" KEYPOST_PUBLIC_URL="http://127.0.0.1:$PORT"
# Throttling counts failures only; raise it anyway so a mistake in the script cannot lock us out.
export KEYPOST_LOGIN_MAX_FAILURES_PER_SOURCE=1000000 KEYPOST_LOG=warn
"$BIN" serve >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

"$BIN" tenant create bench --domain bench.test >/dev/null
echo 'bench-password-1' | "$BIN" user create user@bench.test >/dev/null
SECRET="$("$BIN" client create bench loadgen --confidential --grant client_credentials --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')"
export CLIENT_AUTH="Basic $(printf 'loadgen:%s' "$SECRET" | base64 -w0)"

TOKENS=""
for _ in $(seq "$THREADS"); do
  TOKENS="$TOKENS $(curl -sf "http://127.0.0.1:$PORT/realms/bench/token" \
    -d grant_type=password -d client_id=keypost-cli -d username=user@bench.test \
    -d password=bench-password-1 -d 'scope=openid offline_access mail' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["refresh_token"])')"
done
export REFRESH_TOKENS="$TOKENS"

URL="http://127.0.0.1:$PORT/realms/bench/token"
echo "== client_credentials ($THREADS threads x 4 connections, $DURATION)"
wrk -t"$THREADS" -c"$((THREADS * 4))" -d"$DURATION" --latency -s bench/client_credentials.lua "$URL"
echo "== refresh_token with rotation ($THREADS chains, one connection each, $DURATION)"
wrk -t"$THREADS" -c"$THREADS" -d"$DURATION" --latency -s bench/refresh_token.lua "$URL"
echo "== ledger rows written: $(sqlite3 "$WORK/data/keypost.db" 'select count(*) from ledger' 2>/dev/null || echo '(sqlite3 not installed)')"
