#!/usr/bin/env bash
# `keypost mail import` throughput: writes an mbox of N messages (~1.4 KB each) with Python's
# mailbox module, imports it into a fresh data directory with a release build, prints the time.
#
#   bench/import.sh [N]     (default 2000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-2000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keypost/target}"
cargo build --release -q -p keypost
BIN="$CARGO_TARGET_DIR/release/keypost"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/in.mbox" "$N" <<'PY'
import mailbox, sys
from email.message import EmailMessage
mb = mailbox.mbox(sys.argv[1], create=True)
for n in range(int(sys.argv[2])):
    m = EmailMessage()
    m["From"] = f"Sender {n % 50} <s{n % 50}@example.org>"
    m["To"] = "alice@bench.test"
    m["Subject"] = f"Report number {n}"
    m["Message-ID"] = f"<{n}@example.org>"
    m.set_content(("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20) + f"\nItem {n}\n")
    mb.add(m)
mb.flush()
PY
export KEYPOST_DATA_DIR="$WORK/data"
"$BIN" tenant create bench --domain bench.test >/dev/null
echo 'bench-password-1' | "$BIN" user create alice@bench.test >/dev/null
start=$(date +%s.%N)
"$BIN" mail import alice@bench.test "$WORK/in.mbox"
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'{int(sys.argv[3])} messages in {s:.2f} s = {int(sys.argv[3])/s:.0f} messages/s')" "$start" "$end" "$N"
