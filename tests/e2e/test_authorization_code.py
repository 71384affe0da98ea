"""Authorization code + PKCE, driven by an independent OAuth client library (authlib), and the
PKCE and redirect rules the server must enforce."""

import base64
import hashlib
import secrets
import time
from urllib.parse import urlencode

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from conftest import (
    HTTP_TIMEOUT_S,
    login_form,
    query_of,
    random_state,
    s256,
    submit_login,
    verify_access_token,
    verify_id_token,
)

REALM = "contoso"
CLIENT = "webapp"
REDIRECT = "http://127.0.0.1:9/cb"  # never contacted: redirects are not followed


@pytest.fixture(scope="module")
def webapp(keypost, world):
    out = keypost.create_client(REALM, CLIENT, "--redirect-uri", REDIRECT)
    assert not out.get("client_secret"), f"a public client got a secret: {out}"
    return CLIENT


def authorize(keypost, browser=None, **params):
    """GETs the authorization endpoint without following redirects."""
    url = keypost.endpoint(REALM, "authorization_endpoint") + "?" + urlencode(params)
    return (browser or requests).get(url, allow_redirects=False, timeout=HTTP_TIMEOUT_S)


def code_for(keypost, user, verifier, scope="openid email"):
    """Signs `user` in through the login form (fresh browser) and returns the authorization code."""
    browser = requests.Session()
    state = random_state()
    page = authorize(
        keypost,
        browser,
        client_id=CLIENT,
        response_type="code",
        redirect_uri=REDIRECT,
        scope=scope,
        state=state,
        code_challenge=s256(verifier),
        code_challenge_method="S256",
    )
    done = submit_login(browser, page, user.email, user.password)
    assert done.status_code == 303, f"{done.status_code} {done.headers} {done.text}"
    q = query_of(done.headers["Location"])
    assert q.get("state") == state, done.headers["Location"]
    return q["code"]


def exchange(keypost, code, verifier):
    return requests.post(
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


def test_authorization_code_with_pkce_completed_by_authlib(keypost, world, webapp):
    doc = keypost.discovery(REALM)
    client = OAuth2Session(
        client_id=webapp,
        redirect_uri=REDIRECT,
        scope="openid email",
        code_challenge_method="S256",
    )
    verifier = generate_token(64)
    nonce = generate_token(24)
    url, state = client.create_authorization_url(
        doc["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )

    browser = requests.Session()
    page = browser.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    done = submit_login(browser, page, world.alice.email, world.alice.password)

    assert done.status_code == 303, f"{done.status_code} {done.text}"
    location = done.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    q = query_of(location)
    assert q.get("code"), location
    assert q.get("state") == state, location
    assert q.get("iss") == doc["issuer"], location  # RFC 9207

    token = client.fetch_token(
        doc["token_endpoint"], authorization_response=location, code_verifier=verifier
    )
    assert token["token_type"].lower() == "bearer"

    id_header = jwt.get_unverified_header(token["id_token"])
    assert id_header["alg"] == "RS256" and id_header.get("kid")
    id_claims = verify_id_token(keypost, REALM, token["id_token"], webapp)
    assert id_claims["nonce"] == nonce

    at_claims = verify_access_token(keypost, REALM, token["access_token"])
    assert at_claims["client_id"] == webapp
    assert at_claims["sub"] == id_claims["sub"]

    info = keypost.userinfo(REALM, token["access_token"])
    assert info.status_code == 200, info.text
    assert info.json()["email"] == world.alice.email
    assert info.json()["sub"] == id_claims["sub"]


def test_public_client_without_code_challenge_is_invalid_request(keypost, world, webapp):
    state = random_state()
    r = authorize(
        keypost,
        client_id=CLIENT,
        response_type="code",
        redirect_uri=REDIRECT,
        scope="openid email",
        state=state,
    )
    assert r.status_code in (302, 303), f"{r.status_code} {r.text}"
    location = r.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    q = query_of(location)
    assert q.get("error") == "invalid_request", location
    assert q.get("state") == state, location
    assert "code" not in q


def test_plain_code_challenge_method_is_invalid_request(keypost, world, webapp):
    verifier = secrets.token_urlsafe(48)
    r = authorize(
        keypost,
        client_id=CLIENT,
        response_type="code",
        redirect_uri=REDIRECT,
        scope="openid email",
        state=random_state(),
        code_challenge=verifier,
        code_challenge_method="plain",
    )
    assert r.status_code in (302, 303), f"{r.status_code} {r.text}"
    q = query_of(r.headers["Location"])
    assert q.get("error") == "invalid_request", r.headers["Location"]
    assert "code" not in q


def code_refusals(keypost) -> list[str]:
    """The reasons of the authorization codes refused so far, as the audit log has them."""
    records = keypost.cli(
        "audit", "search", "--realm", REALM, "--operation", "TokenRejected", "--limit", "1000000", json=True
    )
    return [r["details"]["reason"] for r in records if r["details"].get("token_type") == "authorization_code"]


def test_wrong_code_verifier_is_invalid_grant(keypost, world, webapp):
    verifier = secrets.token_urlsafe(48)
    code = code_for(keypost, world.alice, verifier)
    before = code_refusals(keypost)
    r = exchange(keypost, code, secrets.token_urlsafe(48))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    assert "access_token" not in r.json()
    # Audited with its reason, as every refused token is (a PKCE failure is what an
    # intercepted code looks like).
    assert code_refusals(keypost) == before + ["PkceFailed"]
    # Whoever intercepted the code could not burn it: the client it was issued to, with its
    # verifier, still gets its tokens.
    good = exchange(keypost, code, verifier)
    assert good.status_code == 200, good.text


def test_authorization_code_works_only_once(keypost, world, webapp):
    verifier = secrets.token_urlsafe(48)
    code = code_for(keypost, world.alice, verifier)
    first = exchange(keypost, code, verifier)
    assert first.status_code == 200, first.text
    second = exchange(keypost, code, verifier)
    assert second.status_code == 400, second.text
    assert second.json()["error"] == "invalid_grant"
    assert "access_token" not in second.json()


def test_unregistered_redirect_uri_gets_error_page_not_redirect(keypost, world, webapp):
    r = authorize(
        keypost,
        client_id=CLIENT,
        response_type="code",
        redirect_uri="http://127.0.0.1:9/attacker",
        scope="openid email",
        state=random_state(),
        code_challenge=s256(secrets.token_urlsafe(48)),
        code_challenge_method="S256",
    )
    assert r.status_code == 400, f"{r.status_code} {r.headers} {r.text}"
    assert "Location" not in r.headers
    assert "text/html" in r.headers.get("Content-Type", "")


def test_login_form_posted_from_another_site_is_refused(keypost, world, webapp):
    """Login CSRF: a page elsewhere posts the attacker's credentials into the victim's browser.
    Such a post lacks the SameSite=Strict anti-CSRF cookie, so no code is issued."""
    verifier = generate_token(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    page = authorize(
        keypost,
        browser=requests.Session(),
        client_id=webapp,
        redirect_uri=REDIRECT,
        response_type="code",
        scope="openid",
        state="s",
        code_challenge=challenge.decode(),
        code_challenge_method="S256",
    )
    assert page.status_code == 200, page.text
    victim_browser = requests.Session()  # never loaded the form: no anti-CSRF cookie
    forged = submit_login(victim_browser, page, world.alice.email, world.alice.password)
    assert forged.status_code == 400, f"{forged.status_code} {forged.headers}"
    assert "Location" not in forged.headers
    assert "code=" not in forged.text


def test_single_sign_on_takes_the_browsers_cookie_not_a_tokens_sid(keypost, world, webapp):
    """A browser that signed in gets its next code without the form. The session's id, which
    every token minted under the session carries as `sid`, signs nobody in when presented as
    the cookie: otherwise any client holding one of the user's tokens would hold their sign-in."""
    browser = requests.Session()
    verifier = secrets.token_urlsafe(48)
    params = dict(client_id=CLIENT, response_type="code", redirect_uri=REDIRECT, scope="openid email",
                  code_challenge=s256(verifier), code_challenge_method="S256")
    page = authorize(keypost, browser, state=random_state(), **params)
    done = submit_login(browser, page, world.alice.email, world.alice.password)
    assert done.status_code == 303, done.text
    cookie_name = f"kp_sid_{REALM}"
    cookie = browser.cookies.get(cookie_name)
    assert cookie, done.headers
    tokens = exchange(keypost, query_of(done.headers["Location"])["code"], verifier).json()
    sid = verify_id_token(keypost, REALM, tokens["id_token"], CLIENT)["sid"]
    assert sid and sid != cookie

    again = authorize(keypost, browser, state=random_state(), **params)
    assert again.status_code in (302, 303), again.text
    assert query_of(again.headers["Location"]).get("code"), again.headers["Location"]

    url = keypost.endpoint(REALM, "authorization_endpoint") + "?" + urlencode(
        dict(params, state=random_state()))
    replayed = requests.get(url, headers={"Cookie": f"{cookie_name}={sid}"},
                            allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    assert replayed.status_code == 200, replayed.headers
    assert login_form(replayed.text), "the sign-in form, not a code"


def test_prompt_none_and_max_age(keypost, world, webapp):
    """OpenID Connect's prompt=none never shows a page: a signed-in browser gets its code, any
    other the error login_required at the client. max_age asks for a sign-in no older than
    that many seconds, and gets the form otherwise."""
    browser = requests.Session()
    verifier = secrets.token_urlsafe(48)
    params = dict(client_id=CLIENT, response_type="code", redirect_uri=REDIRECT, scope="openid",
                  code_challenge=s256(verifier), code_challenge_method="S256")
    silent = authorize(keypost, browser, state="s1", prompt="none", **params)
    assert silent.status_code == 303, silent.text
    q = query_of(silent.headers["Location"])
    assert q.get("error") == "login_required" and q.get("state") == "s1", q

    page = authorize(keypost, browser, state="s2", **params)
    assert submit_login(browser, page, world.alice.email, world.alice.password).status_code == 303
    silent = authorize(keypost, browser, state="s3", prompt="none", **params)
    assert query_of(silent.headers["Location"]).get("code"), silent.headers["Location"]
    assert authorize(keypost, browser, state="s4", prompt="none login", **params).status_code == 303
    assert query_of(authorize(keypost, browser, state="s5", prompt="none login", **params)
                    .headers["Location"]).get("error") == "invalid_request"

    fresh_enough = authorize(keypost, browser, state="s6", max_age="3600", **params)
    assert query_of(fresh_enough.headers["Location"]).get("code"), "signed in within the hour"
    time.sleep(1.1)
    stale = authorize(keypost, browser, state="s7", max_age="0", **params)
    assert stale.status_code == 200 and login_form(stale.text), "older than 0 s: the form"
    stale_silent = authorize(keypost, browser, state="s8", max_age="0", prompt="none", **params)
    assert query_of(stale_silent.headers["Location"]).get("error") == "login_required"
    bad = authorize(keypost, browser, state="s9", max_age="soon", **params)
    assert query_of(bad.headers["Location"]).get("error") == "invalid_request"


def test_an_application_reads_mail_only_if_registered_to(keypost, world, webapp):
    """A sign-in application (registered without scopes) asking for mail gets invalid_scope at
    its redirect URI, before anyone signs in; one registered with --scope mail gets it."""
    verifier = secrets.token_urlsafe(48)
    params = dict(response_type="code", redirect_uri=REDIRECT, scope="openid mail",
                  code_challenge=s256(verifier), code_challenge_method="S256")
    refused = authorize(keypost, None, client_id=CLIENT, state="m1", **params)
    assert refused.status_code == 303, refused.text
    q = query_of(refused.headers["Location"])
    assert q.get("error") == "invalid_scope" and q.get("state") == "m1", q

    keypost.create_client(REALM, "mail-reader", "--redirect-uri", REDIRECT, "--scope", "openid email mail")
    page = authorize(keypost, requests.Session(), client_id="mail-reader", state="m2", **params)
    assert page.status_code == 200 and login_form(page.text), "the sign-in form"
