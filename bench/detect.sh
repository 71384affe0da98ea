#!/usr/bin/env bash
# End-to-end detection latency under a mail-read load: starts a release `keypost serve`, keeps
# it busy with JMAP Email/get (wrk, every request audited as MailItemsAccessed), and meanwhile
# presents forged tokens (each signed by a different key of another realm) and times, for each,
# the request to the moment its critical alert is readable through the admin API.
#
#   bench/detect.sh [SAMPLES]        (default 50; needs wrk: apt-get install wrk)
#
# Prints the read load's requests/s and the alert latency p50/p99. Uses the e2e venv's Python
# (scripts/test creates it) for PyJWT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SAMPLES="${1:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keypost/target}"
PY="${KEYPOST_VENV:-$HOME/.cache/keypost/venv}/bin/python"
command -v wrk >/dev/null || { echo "bench/detect.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -x "$PY" ] || { echo "run scripts/test once first (it creates $PY)" >&2; exit 1; }
cargo build --release -q -p keypost
BIN="$CARGO_TARGET_DIR/release/keypost"

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
export KEYPOST_DATA_DIR="$WORK/data" KEYPOST_LISTEN_HTTP="127.0.0.1:$PORT" KEYPOST_PUBLIC_URL="$URL" KEYPOST_LOG=warn
"$BIN" tenant create bench --domain bench.test >/dev/null
echo 'bench-password-1' | "$BIN" user create alice@bench.test >/dev/null
echo 'bench-password-2' | "$BIN" user create secops@bench.test --admin >/dev/null
python3 - "$WORK/in.mbox" <<'PY'
import mailbox, sys
from email.message import EmailMessage
mb = mailbox.mbox(sys.argv[1], create=True)
for n in range(200):
    m = EmailMessage(); m["From"] = "s@example.org"; m["To"] = "alice@bench.test"; m["Subject"] = f"Message {n}"
    m.set_content("Hello. " * 20); mb.add(m)
mb.flush()
PY
"$BIN" mail import alice@bench.test "$WORK/in.mbox" >/dev/null
# The stolen keys: genuine keys of the consumer realm, as in the original breach.
"$PY" - "$WORK" "$SAMPLES" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
work, n = Path(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    k = Ed25519PrivateKey.generate()
    (work / f"k{i}.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
PY
for i in $(seq 0 $((SAMPLES - 1))); do
  "$BIN" keys import --realm consumers --file "$WORK/k$i.pem" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["kid"])' >> "$WORK/kids"
done
"$BIN" serve >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done

token() { curl -sf "$URL/realms/bench/token" -d grant_type=password -d client_id=keypost-cli "$@" \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'; }
export JMAP_TOKEN="$(token -d username=alice@bench.test -d password=bench-password-1 -d 'scope=openid mail')"
ADMIN_TOKEN="$(token -d username=secops@bench.test -d password=bench-password-2 -d 'scope=openid audit' -d "resource=$URL/admin")"
ACCOUNT="$(curl -sf "$URL/.well-known/jmap" -H "Authorization: Bearer $JMAP_TOKEN" | "$PY" -c 'import json,sys; print(list(json.load(sys.stdin)["accounts"])[0])')"
IDS="$(curl -sf "$URL/jmap/api" -H "Authorization: Bearer $JMAP_TOKEN" -H 'Content-Type: application/json' \
  -d "{\"using\":[\"urn:ietf:params:jmap:core\",\"urn:ietf:params:jmap:mail\"],\"methodCalls\":[[\"Email/query\",{\"accountId\":\"$ACCOUNT\",\"limit\":20},\"q\"]]}" \
  | "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["methodResponses"][0][1]["ids"]))')"
export JMAP_BODY="{\"using\":[\"urn:ietf:params:jmap:core\",\"urn:ietf:params:jmap:mail\"],\"methodCalls\":[[\"Email/get\",{\"accountId\":\"$ACCOUNT\",\"ids\":$IDS,\"properties\":[\"subject\",\"preview\"]},\"g\"]]}"
DURATION=$((SAMPLES / 4 + 20))
wrk -t1 -c8 -d"${DURATION}s" -s bench/jmap_get.lua "$URL/jmap/api" > "$WORK/wrk.out" 2>&1 &
LOAD=$!
sleep 2
if "$PY" - "$URL" "$ADMIN_TOKEN" "$ACCOUNT" "$WORK" <<'PY'
import json, sys, time, uuid
from pathlib import Path
import jwt, requests
from cryptography.hazmat.primitives import serialization
url, admin, sub, work = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
kids = (work / "kids").read_text().split()
latencies = []
for i, kid in enumerate(kids):
    key = serialization.load_pem_private_key((work / f"k{i}.pem").read_bytes(), None)
    now = int(time.time())
    forged = jwt.encode({"iss": f"{url}/realms/bench", "sub": sub, "aud": [f"{url}/mail"], "exp": now + 300, "iat": now,
                         "nbf": now, "jti": str(uuid.uuid4()), "client_id": "keypost-cli", "scope": "openid mail", "tid": "bench"},
                        key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"})
    t0 = time.monotonic()
    r = requests.post(f"{url}/jmap/api", headers={"Authorization": f"Bearer {forged}"}, json={"using": [], "methodCalls": []}, timeout=10)
    assert r.status_code == 401, r.status_code
    while True:
        alerts = requests.get(f"{url}/admin/alerts", params={"limit": 5}, headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()["alerts"]
        if any(a["dedup_key"] == kid for a in alerts):
            latencies.append(time.monotonic() - t0)
            break
        if time.monotonic() - t0 > 10:
            raise SystemExit(f"no alert for {kid} within 10 s")
        time.sleep(0.005)
    time.sleep(0.2)
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
print(f"alerts: {len(latencies)}, latency p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {latencies[-1] * 1000:.0f} ms")
PY
then :; else echo "--- serve.err (tail)"; tail -20 "$WORK/serve.err"; exit 1; fi
wait $LOAD || true
grep -E "Requests/sec" "$WORK/wrk.out" | sed 's/^/mail-read load: /'
