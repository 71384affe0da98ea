"""client_credentials for a confidential client authenticated with HTTP Basic."""

import pytest
import requests

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S, verify_access_token, www_authenticate

REALM = "contoso"


@pytest.fixture(scope="module")
def backend(keypost, world):
    out = keypost.create_client(
        REALM, "backend", "--confidential", "--grant", "client_credentials", "--scope", "mail"
    )
    assert out.get("client_secret"), f"no client_secret printed: {out}"
    return "backend", out["client_secret"]


def token_request(keypost, data, auth=None):
    return requests.post(
        keypost.endpoint(REALM, "token_endpoint"), data=data, auth=auth, timeout=HTTP_TIMEOUT_S
    )


def test_client_credentials_with_basic_auth_issues_verifiable_token(keypost, backend):
    client_id, secret = backend
    r = token_request(keypost, {"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"].lower() == "bearer"
    claims = verify_access_token(keypost, REALM, body["access_token"])
    assert claims["client_id"] == client_id
    assert claims["tid"] == REALM


def test_wrong_client_secret_is_401_invalid_client_with_www_authenticate(keypost, backend):
    client_id, secret = backend
    r = token_request(
        keypost, {"grant_type": "client_credentials"}, auth=(client_id, secret + "x")
    )
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"
    assert www_authenticate(r), r.headers
    assert "access_token" not in r.json()


def test_public_client_cannot_use_client_credentials(keypost, world):
    r = token_request(keypost, {"grant_type": "client_credentials", "client_id": CLI_CLIENT})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "unauthorized_client"
    assert "access_token" not in r.json()
