"""Hostile or broken requests get 4xx answers, never a 5xx."""

import requests

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S, random_state

TWO_MB = 2 * 1024 * 1024


def token_url(keypost, realm="contoso"):
    return f"{keypost.issuer(realm)}/token"


def test_token_endpoint_with_empty_body_is_invalid_request(keypost, world):
    r = requests.post(
        token_url(keypost),
        data=b"",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 400, f"{r.status_code} {r.text}"
    assert r.json()["error"] == "invalid_request"


def test_token_endpoint_with_json_body_is_a_client_error(keypost, world):
    r = requests.post(
        token_url(keypost),
        json={
            "grant_type": "password",
            "username": world.alice.email,
            "password": world.alice.password,
            "client_id": CLI_CLIENT,
        },
        timeout=HTTP_TIMEOUT_S,
    )
    assert 400 <= r.status_code < 500, f"{r.status_code} {r.text}"
    assert "access_token" not in r.text


def test_token_endpoint_with_two_megabyte_body_is_rejected(keypost, world):
    body = b"grant_type=password&client_id=keypost-cli&username=" + b"a" * (TWO_MB + 1024)
    r = requests.post(
        token_url(keypost),
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code in (400, 413), f"{r.status_code} {r.text[:500]}"


def test_unknown_grant_type_is_unsupported_grant_type(keypost, world):
    r = requests.post(
        token_url(keypost),
        data={"grant_type": "urn:example:no-such-grant", "client_id": CLI_CLIENT},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 400, f"{r.status_code} {r.text}"
    assert r.json()["error"] == "unsupported_grant_type"


def test_unknown_realm_is_404(keypost, world):
    r = requests.post(
        token_url(keypost, "no-such-realm"),
        data={
            "grant_type": "password",
            "username": world.alice.email,
            "password": world.alice.password,
            "client_id": CLI_CLIENT,
        },
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 404, f"{r.status_code} {r.text}"
    d = requests.get(
        f"{keypost.issuer('no-such-realm')}/.well-known/openid-configuration",
        timeout=HTTP_TIMEOUT_S,
    )
    assert d.status_code == 404, f"{d.status_code} {d.text}"


def test_authorize_with_unknown_client_shows_error_page_not_redirect(keypost, world):
    r = requests.get(
        f"{keypost.issuer('contoso')}/authorize",
        params={
            "client_id": "no-such-client",
            "response_type": "code",
            "redirect_uri": "http://127.0.0.1:9/cb",
            "scope": "openid",
            "state": random_state(),
        },
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 400, f"{r.status_code} {r.headers} {r.text}"
    assert "Location" not in r.headers
    assert "text/html" in r.headers.get("Content-Type", ""), r.headers


def test_server_is_still_healthy_afterwards(keypost, world):
    assert requests.get(f"{keypost.url}/healthz", timeout=HTTP_TIMEOUT_S).status_code == 200
    assert keypost.password_grant("contoso", world.alice.email, world.alice.password).ok


def test_a_client_that_never_sends_its_body_is_cut_off(keypost):
    """Slow-loris: headers promise a body that never comes. The server answers with a 4xx and
    frees the connection within its body timeout (10 s) instead of waiting forever."""
    import socket
    import time
    from urllib.parse import urlsplit

    u = urlsplit(keypost.endpoint("consumers", "token_endpoint"))
    with socket.create_connection((u.hostname, u.port), timeout=20) as s:
        s.sendall(
            f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant".encode()
        )
        started = time.monotonic()
        reply = s.recv(4096).decode(errors="replace")
        waited = time.monotonic() - started
    status = int(reply.split(" ", 2)[1])
    assert 400 <= status < 500, reply
    assert waited < 20, waited
