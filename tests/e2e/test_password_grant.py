"""Resource-owner password grant with the built-in first-party `keypost-cli` client."""

import time

import jwt

from conftest import (
    ACCESS_TOKEN_CLAIMS,
    DEFAULT_SCOPE,
    unverified,
    verify_access_token,
)


def test_password_grant_returns_access_and_refresh_tokens(keypost, world):
    r = keypost.password_grant("contoso", world.alice.email, world.alice.password)
    assert r.status_code == 200, r.text
    assert "no-store" in r.headers.get("Cache-Control", ""), r.headers  # RFC 6749 §5.1
    body = r.json()
    assert body["token_type"].lower() == "bearer"
    assert body["access_token"]
    assert body["refresh_token"], "offline_access was requested"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0


def test_access_token_is_an_rfc9068_jwt_with_kid(keypost, world):
    token = keypost.tokens_for(world.alice)["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"
    assert header.get("kid")


def test_access_token_verifies_with_pyjwt_from_discovery_and_jwks_alone(keypost, world):
    before = int(time.time())
    body = keypost.tokens_for(world.alice)
    claims = verify_access_token(keypost, "contoso", body["access_token"])
    for name in ACCESS_TOKEN_CLAIMS:
        assert name in claims, f"missing {name}: {claims}"
    assert claims["iss"] == keypost.discovery("contoso")["issuer"]
    assert keypost.mail_audience in claims["aud"]
    assert claims["tid"] == "contoso"
    assert claims["client_id"] == "keypost-cli"
    assert claims["sub"] and claims["jti"]
    granted = set(claims["scope"].split())
    assert granted and granted <= set(DEFAULT_SCOPE.split()), claims["scope"]
    assert before - 5 <= claims["iat"] <= time.time() + 5
    assert claims["nbf"] <= claims["iat"] + 5
    assert abs((claims["exp"] - claims["iat"]) - body["expires_in"]) <= 5


def test_each_grant_gets_a_fresh_jti(keypost, world):
    a = unverified(keypost.tokens_for(world.alice)["access_token"])[1]
    b = unverified(keypost.tokens_for(world.alice)["access_token"])[1]
    assert a["jti"] != b["jti"]
    assert a["sub"] == b["sub"]


def test_consumer_account_signs_in_at_consumer_realm(keypost, world):
    body = keypost.tokens_for(world.carol)
    claims = verify_access_token(keypost, "consumers", body["access_token"])
    assert claims["tid"] == "consumers"
    assert keypost.userinfo("consumers", body["access_token"]).json()["email"] == world.carol.email


def test_password_grant_refused_for_non_first_party_client(keypost, world):
    keypost.create_client("contoso", "thirdparty", "--redirect-uri", "http://127.0.0.1:9/cb")
    r = keypost.password_grant(
        "contoso", world.alice.email, world.alice.password, client_id="thirdparty"
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "unauthorized_client", r.text
    assert "access_token" not in r.json()


def test_wrong_password_is_invalid_grant_400(keypost, world):
    r = keypost.password_grant("contoso", world.alice.email, "not-alices-password")
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "invalid_grant"
    assert "access_token" not in r.json()


def test_unknown_user_looks_like_wrong_password(keypost, world):
    wrong = keypost.password_grant("contoso", world.alice.email, "not-alices-password")
    unknown = keypost.password_grant("contoso", "nobody@contoso.test", "whatever-password")
    assert unknown.status_code == wrong.status_code == 400
    assert unknown.json()["error"] == wrong.json()["error"] == "invalid_grant"
