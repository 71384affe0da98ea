"""RP-initiated logout ends the sign-in session, and every token issued under it dies with it."""

import secrets
from urllib.parse import urlencode

import pytest
import requests

from conftest import HTTP_TIMEOUT_S, query_of, random_state, s256, submit_login

REALM = "contoso"
CLIENT = "webapp"
REDIRECT = "http://127.0.0.1:9/cb"  # never contacted: redirects are not followed


@pytest.fixture(scope="module")
def webapp(keypost, world):
    keypost.create_client(REALM, CLIENT, "--redirect-uri", REDIRECT)
    return CLIENT


def browser_sign_in(keypost, user):
    """Browser sign-in with code + PKCE; returns the browser session and the token response."""
    browser = requests.Session()
    verifier = secrets.token_urlsafe(48)
    state = random_state()
    params = {
        "client_id": CLIENT,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": "openid email offline_access",
        "state": state,
        "nonce": random_state(),
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    }
    page = browser.get(
        keypost.endpoint(REALM, "authorization_endpoint") + "?" + urlencode(params),
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    done = submit_login(browser, page, user.email, user.password)
    assert done.status_code == 303, f"{done.status_code} {done.text}"
    code = query_of(done.headers["Location"])["code"]
    r = requests.post(
        keypost.endpoint(REALM, "token_endpoint"),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT,
            "code_verifier": verifier,
        },
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 200, r.text
    return browser, r.json()


def test_discovery_advertises_end_session_endpoint(keypost, world):
    assert keypost.discovery(REALM)["end_session_endpoint"] == f"{keypost.issuer(REALM)}/logout"


def test_logout_with_id_token_hint_kills_the_sessions_tokens(keypost, world, webapp):
    browser, tokens = browser_sign_in(keypost, world.alice)
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 200

    r = browser.get(
        keypost.endpoint(REALM, "end_session_endpoint"),
        params={"id_token_hint": tokens["id_token"]},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code in (200, 303), f"{r.status_code} {r.text}"

    after = keypost.userinfo(REALM, tokens["access_token"])
    assert after.status_code == 401, f"access token outlived its session: {after.text}"
    if tokens.get("refresh_token"):
        refreshed = keypost.refresh(REALM, tokens["refresh_token"], client_id=CLIENT)
        assert refreshed.status_code == 400, f"refresh token outlived its session: {refreshed.text}"
        assert refreshed.json()["error"] == "invalid_grant"

