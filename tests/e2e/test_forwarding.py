"""Forwarding to the systems that watch Keypost (issue 4): every audit record to syslog
(RFC 5424 over UDP), every new alert to a webhook, signed with HMAC-SHA256 over the timestamp
and body. The receivers here are plain Python sockets, written from the RFCs."""

import hashlib
import hmac
import json
import shutil
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import KEYPOST_BIN, Keypost, forge_access_token, new_ed25519_pem, unverified
from jmap_client import api

SECRET = "webhook-secret-for-the-e2e-test"


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receivers():
    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    lines = []

    def drain():
        while True:
            try:
                lines.append(udp.recv(65536).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    yield hook.server_address[1], udp.getsockname()[1], lines
    hook.shutdown()
    udp.close()


@pytest.fixture(scope="module")
def kp(receivers):
    hook_port, syslog_port, _ = receivers
    tmp = Path(tempfile.mkdtemp(prefix="keypost-fwd-"))
    k = Keypost(KEYPOST_BIN, tmp)
    k.env.update(KEYPOST_ALERTS_WEBHOOK=f"http://127.0.0.1:{hook_port}/hook",
                 KEYPOST_ALERTS_WEBHOOK_SECRET=SECRET,
                 KEYPOST_AUDIT_SYSLOG=f"udp://127.0.0.1:{syslog_port}")
    k.start()
    yield k
    k.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_audit_records_go_to_syslog_and_alerts_to_the_signed_webhook(kp, receivers, tmp_path):
    _, _, lines = receivers
    kp.cli("tenant", "create", "contoso", "--domain", "contoso.test")
    kp.create_user("amy@contoso.test", "amy-correct-horse-battery-12")
    token = kp.password_grant("contoso", "amy@contoso.test", "amy-correct-horse-battery-12").json()["access_token"]
    assert wait(lambda: any(" TokenIssued " in l for l in lines)), lines[-5:]
    line = next(l for l in lines if " TokenIssued " in l)
    # RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG; facility 13 (log audit).
    pri = int(line[1:line.index(">")])
    assert pri // 8 == 13 and line[line.index(">") + 1:].startswith("1 ")
    assert '[keypost@32473 id="' in line and 'realm="contoso"' in line
    assert json.loads(line[line.index("] ") + 2:])["operation"] == "TokenIssued"

    key, pem = new_ed25519_pem(tmp_path)
    kid = kp.import_key("consumers", pem)
    sub = unverified(token)[1]["sub"]
    assert api(kp, forge_access_token(kp, key, kid, "contoso", sub, scope="openid mail"), []).status_code == 401
    assert wait(lambda: any(kid in json.loads(b)["alert"]["details"]["kids"] for _, b in Hook.received)), Hook.received
    headers, body = next((h, b) for h, b in Hook.received if kid in json.loads(b)["alert"]["details"]["kids"])
    expected = "sha256=" + hmac.new(SECRET.encode(), headers["x-keypost-timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    assert headers["x-keypost-signature"] == expected
    assert abs(int(headers["x-keypost-timestamp"]) - time.time()) < 60
    critical = next(l for l in lines if " TokenRejected " in l)
    assert int(critical[1:critical.index(">")]) % 8 == 2, "a refusal suggesting a stolen key is critical"


def test_the_secret_is_never_printed(kp):
    shown = kp.cli("config")
    assert SECRET not in shown and "[redacted]" in shown
    bad = dict(kp.env, KEYPOST_ALERTS_WEBHOOK="https://siem.example/hook")
    p = kp.run("config", env=bad)
    assert p.returncode != 0 and "http://" in p.stderr
