"""Behind a TLS-terminating proxy every connection comes from the proxy: `listen.trusted_proxies`
names the proxies whose `X-Forwarded-For` is believed, so audit records and sign-in throttling
see the real client — and nobody else's header is believed."""

import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S, KEYPOST_BIN, Keypost

REALM = "contoso"
USERS = [f"proxied{i}@contoso.test" for i in range(4)]


def server(**env):
    tmp = Path(tempfile.mkdtemp(prefix="keypost-e2e-proxy-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    kp.env.update(env)
    kp.start()
    kp.cli("tenant", "create", REALM, "--domain", "contoso.test")
    for u in USERS:
        kp.create_user(u, "proxied-correct-horse-1")
    return kp, tmp


@pytest.fixture(scope="module")
def behind_proxy():
    kp, tmp = server(KEYPOST_LISTEN_TRUSTED_PROXIES="127.0.0.1",
                     KEYPOST_LOGIN_MAX_FAILURES_PER_SOURCE="3")
    yield kp
    kp.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def trusting_another_proxy():
    kp, tmp = server(KEYPOST_LISTEN_TRUSTED_PROXIES="10.0.0.0/8")
    yield kp
    kp.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def guess(kp, user, client_ip):
    return requests.post(
        kp.endpoint(REALM, "token_endpoint"),
        data={"grant_type": "password", "username": user, "password": "a wrong guess",
              "client_id": CLI_CLIENT, "scope": "openid"},
        headers={"X-Forwarded-For": f"203.0.113.66, {client_ip}"},
        timeout=HTTP_TIMEOUT_S,
    )


def throttled(r):
    return r.status_code == 400 and "too many" in r.json().get("error_description", "")


def failures_from(kp):
    return [r["source_ip"] for r in kp.cli("audit", "search", "--operation", "SignInFailed", json=True)]


def test_the_client_behind_a_trusted_proxy_is_audited_and_throttled_alone(behind_proxy):
    kp = behind_proxy
    # Three failures from one client (each on its own account: only the source limit counts)...
    for u in USERS[:3]:
        r = guess(kp, u, "198.51.100.7")
        assert r.status_code == 400 and not throttled(r), r.text
    assert failures_from(kp) == ["198.51.100.7"] * 3, "the address the proxy saw, not its own"
    # ...throttle that client, and only it: everyone else comes through the same proxy.
    assert throttled(guess(kp, USERS[3], "198.51.100.7"))
    other = guess(kp, USERS[3], "198.51.100.8")
    assert other.status_code == 400 and not throttled(other), other.text
    ok = requests.post(
        kp.endpoint(REALM, "token_endpoint"),
        data={"grant_type": "password", "username": USERS[3], "password": "proxied-correct-horse-1",
              "client_id": CLI_CLIENT, "scope": "openid"},
        headers={"X-Forwarded-For": "198.51.100.9"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert ok.status_code == 200, ok.text


def test_a_forwarded_for_header_from_anyone_else_is_ignored(trusting_another_proxy):
    kp = trusting_another_proxy
    assert guess(kp, USERS[0], "198.51.100.7").status_code == 400
    assert failures_from(kp) == ["127.0.0.1"], "the peer: it is not a trusted proxy"
