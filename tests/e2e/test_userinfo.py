"""The userinfo endpoint as a resource server: RFC 6750 bearer semantics."""

import requests

from conftest import HTTP_TIMEOUT_S, unverified, www_authenticate


def test_userinfo_with_valid_token_returns_sub_and_email(keypost, world):
    token = keypost.tokens_for(world.alice)["access_token"]
    r = keypost.userinfo("contoso", token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sub"] == unverified(token)[1]["sub"]
    assert body["email"] == world.alice.email


def test_userinfo_without_token_is_401_with_bearer_challenge(keypost, world):
    r = keypost.userinfo("contoso", None)
    assert r.status_code == 401, r.text
    assert www_authenticate(r).startswith("Bearer"), r.headers


def test_userinfo_with_garbage_token_is_401_invalid_token(keypost, world):
    r = keypost.userinfo("contoso", "this-is-not-a-jwt")
    assert r.status_code == 401, r.text
    challenge = www_authenticate(r)
    assert challenge.startswith("Bearer"), r.headers
    assert 'error="invalid_token"' in challenge, challenge


def test_token_of_one_realm_is_refused_at_another(keypost, world):
    token = keypost.tokens_for(world.alice)["access_token"]  # contoso
    for realm in ("fabrikam", "consumers"):
        r = keypost.userinfo(realm, token)
        assert r.status_code == 401, f"{realm} accepted a contoso token: {r.text}"
        assert world.alice.email not in r.text


def test_userinfo_accepts_token_in_authorization_header_only_as_bearer(keypost, world):
    token = keypost.tokens_for(world.alice)["access_token"]
    r = requests.get(
        keypost.endpoint("contoso", "userinfo_endpoint"),
        headers={"Authorization": f"Basic {token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 401, r.text
