"""A password someone else chose (the provider admin's first-start password, or an admin's
`user set-password --temporary`) gets no token until the user has chosen their own, in the
browser."""

import base64
import hashlib
import secrets
from urllib.parse import urlencode, urljoin

import requests

from conftest import HTTP_TIMEOUT_S, parse_forms, query_of

REALM = "consumers"
CLIENT = "console"
REDIRECT = "http://127.0.0.1:9/console"


def authorize(keypost, browser, realm=REALM, client=CLIENT):
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = dict(
        client_id=client,
        response_type="code",
        redirect_uri=REDIRECT,
        scope="openid",
        state="st",
        code_challenge=challenge.decode(),
        code_challenge_method="S256",
    )
    url = keypost.endpoint(realm, "authorization_endpoint") + "?" + urlencode(params)
    return browser.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT_S)


def start_sign_in(keypost, browser, realm=REALM, client=CLIENT):
    page = authorize(keypost, browser, realm, client)
    assert page.status_code == 200, page.text
    return page


def post_form(browser, page, **fields):
    (form,) = [f for f in parse_forms(page.text) if f["method"] == "post"]
    data = {i["name"]: i.get("value", "") for i in form["inputs"] if i.get("type") == "hidden"}
    data.update(fields)
    return browser.post(urljoin(page.url, form["action"]), data=data, allow_redirects=False, timeout=HTTP_TIMEOUT_S)


def field_names(page):
    return {i.get("name") for f in parse_forms(page.text) for i in f["inputs"]}


def test_first_start_password_must_be_replaced_before_any_token(keypost):
    admin, one_time = keypost.admin_email, keypost.admin_password
    refused = keypost.password_grant(REALM, admin, one_time)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text
    assert "temporary" in refused.json()["error_description"]

    keypost.create_client(REALM, CLIENT, "--redirect-uri", REDIRECT)
    browser = requests.Session()
    page = start_sign_in(keypost, browser)
    asked = post_form(browser, page, username=admin, password=one_time)
    assert asked.status_code == 200, asked.text
    assert {"new_password", "confirm_password"} <= field_names(asked), asked.text
    assert "code=" not in asked.headers.get("Location", "")

    mismatch = post_form(browser, asked, username=admin, password=one_time,
                         new_password="a-new-password-1", confirm_password="another-one-22")
    assert mismatch.status_code == 401 and "do not match" in mismatch.text

    done = post_form(browser, asked, username=admin, password=one_time,
                     new_password="a-new-password-1", confirm_password="a-new-password-1")
    assert done.status_code == 303, done.text
    assert query_of(done.headers["Location"]).get("code")

    assert keypost.password_grant(REALM, admin, "a-new-password-1").status_code == 200
    assert keypost.password_grant(REALM, admin, one_time).status_code == 400
    changed = keypost.cli("audit", "search", "--operation", "PasswordChanged", json=True)
    assert any(r["actor"] == admin and r["details"].get("at_sign_in") for r in changed), changed


def test_admin_reset_with_temporary_password(keypost, world):
    user = world.carol
    keypost.cli("user", "set-password", user.email, "--temporary", input="temporary-pass-1\n")
    r = keypost.password_grant(user.realm, user.email, "temporary-pass-1")
    assert r.status_code == 400 and "temporary" in r.json()["error_description"], r.text


def test_a_new_password_ends_every_session_and_token_made_with_the_old_one(keypost, world):
    """An administrator resets a password because someone else may know it: whatever was
    signed in or issued with the old one — a browser's single sign-on, access and refresh
    tokens — stops working at once."""
    email, old = "erin@contoso.test", "erins-first-password-1"
    keypost.create_user(email, old)
    keypost.create_client("contoso", "reset-app", "--redirect-uri", REDIRECT)
    tokens = keypost.password_grant("contoso", email, old).json()
    assert keypost.userinfo("contoso", tokens["access_token"]).status_code == 200
    browser = requests.Session()
    page = start_sign_in(keypost, browser, "contoso", "reset-app")
    assert post_form(browser, page, username=email, password=old).status_code == 303
    sso = authorize(keypost, browser, "contoso", "reset-app")
    assert sso.status_code in (302, 303) and query_of(sso.headers["Location"]).get("code"), sso.text

    keypost.cli("user", "set-password", email, input="erins-second-password-2\n")

    assert keypost.userinfo("contoso", tokens["access_token"]).status_code == 401
    refreshed = keypost.refresh("contoso", tokens["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant", refreshed.text
    again = authorize(keypost, browser, "contoso", "reset-app")
    assert again.status_code == 200 and "password" in field_names(again), "signed out: the form"
    (changed,) = [r for r in keypost.cli("audit", "search", "--operation", "PasswordChanged", json=True)
                  if r["target"] == email]
    assert changed["details"]["sessions_revoked"] == 2, changed  # the grant's and the browser's
    assert keypost.password_grant("contoso", email, "erins-second-password-2").status_code == 200
