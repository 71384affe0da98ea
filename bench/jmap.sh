#!/usr/bin/env bash
# JMAP read performance on mailboxes of growing size: for each N, imports N messages into one
# account (bench/import.sh's generator), then drives /jmap/api with wrk for
#   - Email/get of 50 messages (headers + preview), and
#   - Email/query sorted by receivedAt with a text filter (first 50 ids), with and without
#     calculateTotal,
# printing requests/s and latency percentiles. Every request passes the token gate and writes
# its MailItemsAccessed / MailboxQueried audit record.
#
#   bench/jmap.sh [N ...]      (default: 1000 10000)      needs wrk (apt-get install wrk)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZES=("${@:-1000 10000}")
[ $# -eq 0 ] && SIZES=(1000 10000)
DURATION="${DURATION:-10s}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keypost/target}"
command -v wrk >/dev/null || { echo "bench/jmap.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p keypost
BIN="$CARGO_TARGET_DIR/release/keypost"

for N in "${SIZES[@]}"; do
  WORK="$(mktemp -d)"
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  export KEYPOST_DATA_DIR="$WORK/data" KEYPOST_LISTEN_HTTP="127.0.0.1:$PORT" KEYPOST_PUBLIC_URL="http://127.0.0.1:$PORT" KEYPOST_LOG=warn
  "$BIN" tenant create bench --domain bench.test >/dev/null
  echo 'bench-password-1' | "$BIN" user create alice@bench.test >/dev/null
  python3 - "$WORK/in.mbox" "$N" <<'PY'
import mailbox, sys
from email.message import EmailMessage
mb = mailbox.mbox(sys.argv[1], create=True)
words = ["budget", "report", "meeting", "invoice", "travel", "contract", "release", "review"]
for n in range(int(sys.argv[2])):
    m = EmailMessage()
    m["From"] = f"Sender {n % 50} <s{n % 50}@example.org>"
    m["To"] = "alice@bench.test"
    m["Subject"] = f"{words[n % 8].title()} number {n}"
    m["Message-ID"] = f"<{n}@example.org>"
    m["Date"] = f"Mon, 23 Nov 2026 {n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d} +0000"
    m.set_content(f"Notes about the {words[(n * 7) % 8]} for item {n}.\n" + "Lorem ipsum dolor sit amet. " * 10)
    mb.add(m)
mb.flush()
PY
  "$BIN" mail import alice@bench.test "$WORK/in.mbox" >/dev/null
  "$BIN" serve >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  export JMAP_TOKEN="$(curl -sf "http://127.0.0.1:$PORT/realms/bench/token" -d grant_type=password -d client_id=keypost-cli \
      -d username=alice@bench.test -d password=bench-password-1 -d 'scope=openid mail' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
  read -r ACCOUNT IDS < <(curl -sf "http://127.0.0.1:$PORT/jmap/api" -H "Authorization: Bearer $JMAP_TOKEN" -H 'Content-Type: application/json' \
      -d "{\"using\":[\"urn:ietf:params:jmap:core\",\"urn:ietf:params:jmap:mail\"],\"methodCalls\":[[\"Email/query\",{\"accountId\":\"$(curl -sf "http://127.0.0.1:$PORT/.well-known/jmap" -H "Authorization: Bearer $JMAP_TOKEN" | python3 -c 'import json,sys; print(list(json.load(sys.stdin)["accounts"])[0])')\",\"limit\":50},\"q\"]]}" \
      | python3 -c 'import json,sys; r=json.load(sys.stdin)["methodResponses"][0][1]; print(r["accountId"], json.dumps(r["ids"]))')
  CORE='"urn:ietf:params:jmap:core","urn:ietf:params:jmap:mail"'
  echo "== N=$N messages: Email/get of 50 (headers + preview)"
  JMAP_BODY="{\"using\":[$CORE],\"methodCalls\":[[\"Email/get\",{\"accountId\":\"$ACCOUNT\",\"ids\":$IDS,\"properties\":[\"subject\",\"from\",\"to\",\"receivedAt\",\"preview\",\"keywords\",\"mailboxIds\",\"threadId\"]},\"g\"]]}" \
    wrk -t2 -c16 -d"$DURATION" --latency -s bench/jmap_get.lua "http://127.0.0.1:$PORT/jmap/api" | grep -E "Requests/sec|50%|99%"
  echo "== N=$N messages: Email/query, receivedAt desc, text filter, first 50"
  JMAP_BODY="{\"using\":[$CORE],\"methodCalls\":[[\"Email/query\",{\"accountId\":\"$ACCOUNT\",\"filter\":{\"text\":\"budget\"},\"sort\":[{\"property\":\"receivedAt\",\"isAscending\":false}],\"limit\":50,\"calculateTotal\":true},\"q\"]]}" \
    wrk -t2 -c16 -d"$DURATION" --latency -s bench/jmap_get.lua "http://127.0.0.1:$PORT/jmap/api" | grep -E "Requests/sec|50%|99%"
  echo "== N=$N messages: Email/query, receivedAt desc, text filter, first 50, no total"
  JMAP_BODY="{\"using\":[$CORE],\"methodCalls\":[[\"Email/query\",{\"accountId\":\"$ACCOUNT\",\"filter\":{\"text\":\"budget\"},\"sort\":[{\"property\":\"receivedAt\",\"isAscending\":false}],\"limit\":50},\"q\"]]}" \
    wrk -t2 -c16 -d"$DURATION" --latency -s bench/jmap_get.lua "http://127.0.0.1:$PORT/jmap/api" | grep -E "Requests/sec|50%|99%"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
  rm -rf "$WORK"
done
