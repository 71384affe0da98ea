#!/usr/bin/env bash
# Minting throughput over HTTP, with the durable ledger (and audit) writes: starts a release
# `keypost serve` on loopback in a temporary directory and drives the token endpoint with wrk.
#
#   bench/mint.sh [DURATION]            (default 15s; needs wrk: apt-get install wrk;
#                                       THREADS=N wrk threads, default 2 (the cores: a thread
#                                       per connection costs the shared cores more than the
#                                       server); CONNECTIONS=N for client_credentials and
#                                       CHAINS=N refresh chains (a connection each), both
#                                       default 64 and multiples of THREADS;
#                                       REFRESH_SCOPE, default "openid offline_access mail":
#                                       with openid each refresh also signs an RS256 ID token)
#   BASELINE=BIN bench/mint.sh [DUR]    alternates this tree's build with another `keypost`
#                                       binary (an older commit's) ROUNDS times under both
#                                       loads and prints the medians: for before/after figures
#   REFRESH_ONLY=1 ...                  only the refresh_token load (with BASELINE too), and
#                                       what each refresh cost: `serve`'s and the signer's CPU
#                                       (from /proc/PID/stat) and `serve`'s write and read
#                                       syscalls (/proc/PID/io) — steadier than requests/s on
#                                       a machine whose speed drifts
#   PRUNE_BACKLOG=N ...                 N rows of long-expired tokens in the ledger when the
#                                       server starts: its first pruning pass (at start, 500
#                                       rows a transaction) runs during the loads
#   COMPARE=1 bench/mint.sh [DURATION]  also builds a benchmark-only binary that signs inside
#                                       `serve` (feature bench-in-process-signer) and runs the
#                                       client_credentials load against both, alternating,
#                                       to measure what the separate signer process costs
#
# Prints wrk's requests/s and latency percentiles for client_credentials and refresh_token.
# Every request and the server stay on 127.0.0.1; the script stops the server when done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${1:-15s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
CHAINS="${CHAINS:-64}"
if [ $((CHAINS % THREADS)) -ne 0 ] || [ $((CONNECTIONS % THREADS)) -ne 0 ]; then
  echo "bench/mint.sh: CONNECTIONS and CHAINS must be multiples of THREADS" >&2; exit 1
fi
REFRESH_SCOPE="${REFRESH_SCOPE:-openid offline_access mail}"
ROUNDS="${ROUNDS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keypost/target}"
command -v wrk >/dev/null || { echo "bench/mint.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

BINS="$(mktemp -d)"
trap 'rm -rf "$BINS"' EXIT
if [ -n "${COMPARE:-}" ]; then
  cargo build --release -q -p keypost --features bench-in-process-signer
  cp "$CARGO_TARGET_DIR/release/keypost" "$BINS/keypost-in-process"
fi
# Built last, so the target directory is left with the deployable binary.
cargo build --release -q -p keypost
cp "$CARGO_TARGET_DIR/release/keypost" "$BINS/keypost"

# costs SERVE_PID SIGNER_PID: serve's CPU ticks, the signer's, serve's write and read syscalls.
costs() {
  echo "$(awk '{print $14 + $15}' "/proc/$1/stat") $(awk '{print $14 + $15}' "/proc/$2/stat")" \
    "$(awk '/^syscw/ {print $2}' "/proc/$1/io") $(awk '/^syscr/ {print $2}' "/proc/$1/io")"
}

# stop SERVER_PID WORK: stops the server and removes its data directory (which holds keys).
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  rm -rf "$2"
}

# failed WRK_OUTPUT WHAT: whether wrk saw a failed request or a socket error (it prints either
# line only if there were some), saying so: such a run measured something else (a refused
# refresh costs a fraction of a real one; a timed-out one loses its chain).
failed() {
  [[ "$1" == *Non-2xx* || "$1" == *"Socket errors"* ]] || return 1
  echo "!! some $2 requests failed: the figures of this run are not valid" >&2
}

# run BIN WHAT: starts a server from BIN in a fresh data directory, runs the load (WHAT is
# "all" or "client_credentials"), stops the server.
run() {
  local BIN="$1" WHAT="$2" WORK PORT SERVER
  WORK="$(mktemp -d)"
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  export KEYPOST_DATA_DIR="$WORK/data" KEYPOST_LISTEN_HTTP="127.0.0.1:$PORT" KEYPOST_PUBLIC_URL="http://127.0.0.1:$PORT"
  # Throttling counts failures only; raise it anyway so a mistake in the script cannot lock us out.
  export KEYPOST_LOGIN_MAX_FAILURES_PER_SOURCE=1000000 KEYPOST_LOG=warn
  "$BIN" serve >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

  "$BIN" tenant create bench --domain bench.test >/dev/null
  echo 'bench-password-1' | "$BIN" user create user@bench.test >/dev/null
  local SECRET
  SECRET="$("$BIN" client create bench loadgen --confidential --grant client_credentials --scope mail --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')"
  export CLIENT_AUTH="Basic $(printf 'loadgen:%s' "$SECRET" | base64 -w0)"

  if [ -n "${PRUNE_BACKLOG:-}" ]; then
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    python3 - "$WORK/data/keypost.db" "$PRUNE_BACKLOG" <<'PY'
import secrets, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
minted = int(time.time()) - 400 * 86400  # past any lifetime plus retention
prefix = f"{minted * 1000:012x}"
rows = ((prefix + secrets.token_hex(7), "bench", "access", "u", "loadgen", None, None, None,
         "mail", "[]", minted, minted + 600, secrets.token_bytes(32), None, None)
        for _ in range(int(sys.argv[2])))
db.executemany("INSERT INTO ledger(jti, realm, kind, subject, client_id, kid, session_id, "
               "family_id, scope, audience, issued_at, expires_at, token_hash, revoked_at, used_at) "
               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
db.commit()
PY
    echo "== $PRUNE_BACKLOG long-expired ledger rows: serve prunes them from its start on"
    "$BIN" serve >>"$WORK/serve.out" 2>>"$WORK/serve.err" &
    SERVER=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  fi
  local URL="http://127.0.0.1:$PORT/realms/bench/token"

  if [ -z "${REFRESH_ONLY:-}" ]; then
    echo "== client_credentials ($THREADS threads, $CONNECTIONS connections, $DURATION)"
    local CC
    CC="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/client_credentials.lua "$URL")"
    echo "$CC"
    if failed "$CC" client_credentials; then stop "$SERVER" "$WORK"; return 1; fi
  fi

  if [ "$WHAT" = all ]; then
    local TOKENS=""
    for _ in $(seq "$CHAINS"); do
      TOKENS="$TOKENS $(curl -sf "$URL" \
        -d grant_type=password -d client_id=keypost-cli -d username=user@bench.test \
        -d password=bench-password-1 --data-urlencode "scope=$REFRESH_SCOPE" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["refresh_token"])')"
    done
    export REFRESH_TOKENS="$TOKENS"
    echo "== refresh_token with rotation ($CHAINS chains on as many connections, $THREADS wrk threads, scope \"$REFRESH_SCOPE\", $DURATION)"
    local SIGNER BEFORE OUT
    SIGNER="$(pgrep -P "$SERVER" | head -1)"
    BEFORE="$(costs "$SERVER" "$SIGNER")"
    OUT="$(WRK_THREADS="$THREADS" wrk -t"$THREADS" -c"$CHAINS" -d"$DURATION" --latency -s bench/refresh_token.lua "$URL")"
    echo "$OUT"
    if failed "$OUT" refresh_token; then stop "$SERVER" "$WORK"; return 1; fi
    # CPU ticks are 1/100 s (USER_HZ); per refresh, in microseconds.
    python3 - "$BEFORE" "$(costs "$SERVER" "$SIGNER")" "$(echo "$OUT" | awk '/requests in/ {print $1}')" <<'PY'
import sys
(s0, g0, w0, r0), (s1, g1, w1, r1) = (map(int, a.split()) for a in sys.argv[1:3])
n = int(sys.argv[3])
print(f"== per refresh: serve {(s1 - s0) * 1e4 / n:.1f} µs CPU, signer {(g1 - g0) * 1e4 / n:.1f} µs, "
      f"serve write syscalls {(w1 - w0) / n:.2f}, read syscalls {(r1 - r0) / n:.2f}")
PY
    echo "== ledger rows written: $(sqlite3 "$WORK/data/keypost.db" 'select count(*) from ledger' 2>/dev/null || echo '(sqlite3 not installed)')"
  fi
  stop "$SERVER" "$WORK"
}

if [ -n "${BASELINE:-}" ]; then
  cp "$BASELINE" "$BINS/baseline"
  for round in $(seq "$ROUNDS"); do
    # Either build first, turn about, so neither always runs on a fresher machine.
    order="baseline keypost"; [ $((round % 2)) -eq 0 ] && order="keypost baseline"
    for build in $order; do
      run "$BINS/$build" all | awk -v b="$build" -v r="$round" '
        /^== client_credentials/ {g="client_credentials"} /^== refresh_token/ {g="refresh_token"}
        /^Requests\/sec/ {print "round " r "  " b "  " g "  " $2; print b, g, $2 >> "'"$BINS/results"'"}
        /^== per refresh/ {print "round " r "  " b "  " $0; print b, "serve_cpu_us_per_refresh", $5 >> "'"$BINS/results"'"}'
    done
  done
  python3 - "$BINS/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    build, grant, rps = line.split()
    runs.setdefault((grant, build), []).append(float(rps))
for what in ("client_credentials", "refresh_token", "serve_cpu_us_per_refresh"):
    if (what, "keypost") not in runs:
        continue
    base, new = (statistics.median(runs[(what, b)]) for b in ("baseline", "keypost"))
    unit = " µs" if what.startswith("serve") else "/s"
    print(f"median {what}: baseline {base:,.1f}{unit}, this tree {new:,.1f}{unit} ({100 * (new / base - 1):+.1f} %)")
PY
  exit 0
fi

if [ -z "${COMPARE:-}" ]; then
  run "$BINS/keypost" all
  exit 0
fi

# Alternate the two builds so drift in the machine's speed hits both alike.
for round in $(seq "$ROUNDS"); do
  order="keypost-in-process keypost"; [ $((round % 2)) -eq 0 ] && order="keypost keypost-in-process"
  for build in $order; do
    rps="$(run "$BINS/$build" client_credentials | awk '/^Requests\/sec/ {print $2}')"
    echo "round $round  $build  $rps tokens/s"
    echo "$build $rps" >>"$BINS/results"
  done
done
python3 - "$BINS/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    build, rps = line.split()
    runs.setdefault(build, []).append(float(rps))
inproc, signer = statistics.median(runs["keypost-in-process"]), statistics.median(runs["keypost"])
print(f"median: in-process signing {inproc:,.0f} tokens/s, signer process {signer:,.0f} tokens/s")
print(f"the separate signer process costs {100 * (1 - signer / inproc):.1f} % of minting throughput")
# Each round's pair ran back to back, so its ratio is spared most of the machine's drift.
costs = sorted(100 * (1 - s / i) for i, s in zip(runs["keypost-in-process"], runs["keypost"]))
print(f"per round: {' / '.join(f'{c:.1f}' for c in costs)} %, median {statistics.median(costs):.1f} %")
PY
