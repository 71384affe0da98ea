"""RP-initiated logout ends the sign-in session, and every token issued under it dies with it."""

import secrets
from urllib.parse import urlencode, urljoin

import pytest
import requests

from conftest import HTTP_TIMEOUT_S, parse_forms, query_of, random_state, s256, submit_login

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



def test_an_id_token_without_its_browser_signs_nobody_out(keypost, world, webapp):
    """Every application the user signed in to holds their ID token (and hints travel in URLs):
    presented from anywhere but the browser whose session it names, it ends nothing."""
    browser, tokens = browser_sign_in(keypost, world.alice)
    r = requests.get(
        keypost.endpoint(REALM, "end_session_endpoint"),
        params={"id_token_hint": tokens["id_token"]},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 200, "session still live"


def test_a_bare_logout_link_asks_first(keypost, world, webapp):
    """A sign-out nothing shows the user wants (any site can link here, and the browser sends
    its cookie along) asks for confirmation; a form posted from elsewhere is asked again."""
    browser, tokens = browser_sign_in(keypost, world.alice)
    asked = browser.get(
        keypost.endpoint(REALM, "end_session_endpoint"),
        params={"post_logout_redirect_uri": REDIRECT, "client_id": CLIENT, "state": "s1"},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert asked.status_code == 200, asked.text
    (form,) = [f for f in parse_forms(asked.text) if f["method"] == "post"]
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 200, "not yet"

    fields = {i["name"]: i.get("value", "") for i in form["inputs"] if i.get("name")}
    forged = requests.post(urljoin(asked.url, form["action"]), data=fields,
                           cookies={f"kp_sid_{REALM}": browser.cookies.get(f"kp_sid_{REALM}")},
                           allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    assert forged.status_code == 200 and "Sign out?" in forged.text, "no CSRF cookie: asked again"
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 200

    done = browser.post(urljoin(asked.url, form["action"]), data=fields,
                        allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    assert done.status_code == 303, done.text
    assert done.headers["Location"].startswith(REDIRECT) and query_of(done.headers["Location"])["state"] == "s1"
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 401, "signed out"
