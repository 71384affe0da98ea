"""The Storm-0558 chain, replayed against Keypost.

An attacker holds a real signing key and mints a perfectly well-formed access token for a victim
in another tenant. Keypost must refuse it (THREAT-MODEL steps 3 and 4) and say why in the audit
log, while telling the attacker nothing beyond RFC 6750's `invalid_token`.

Each test imports its own key with `keypost keys import`, which binds the key to one realm and
makes it that realm's active access-token signing key: the attacker's key is a *genuine* Keypost
key of some realm, exactly as the stolen consumer key was a genuine consumer key.
"""

import jwt
import pytest

from conftest import forge_access_token, new_ed25519_pem, rejections, unverified, www_authenticate

VICTIM_REALM = "contoso"


@pytest.fixture(scope="module")
def alice_sub(keypost, world):
    """Alice's subject id, read from a token Keypost legitimately issued to her."""
    return unverified(keypost.tokens_for(world.alice)["access_token"])[1]["sub"]


def assert_refused_without_leaking(keypost, response, victim):
    assert response.status_code == 401, f"forged token accepted: {response.text}"
    assert victim.email not in response.text, "victim's data in the refusal"
    challenge = www_authenticate(response)
    assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge, challenge
    for reason in ("KeyNotInRealm", "NotIssued", "KeyRevoked", "TK00"):
        assert reason not in response.text and reason not in challenge, "refusal names the check"


def test_storm0558_consumer_key_cannot_sign_for_a_tenant(keypost, world, alice_sub, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("consumers", pem)

    forged = forge_access_token(keypost, key, kid, VICTIM_REALM, alice_sub)
    header, claims = unverified(forged)
    assert header == {"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}
    assert claims["iss"] == keypost.issuer(VICTIM_REALM) and claims["tid"] == VICTIM_REALM
    # The forgery verifies against the consumer realm's published JWKS: the signature is real.
    jwks = jwt.PyJWKClient(keypost.discovery("consumers")["jwks_uri"], cache_keys=False)
    jwt.decode(
        forged,
        jwks.get_signing_key(kid).key,
        algorithms=["EdDSA"],
        audience=keypost.mail_audience,
        issuer=keypost.issuer(VICTIM_REALM),
    )

    r = keypost.userinfo(VICTIM_REALM, forged)
    assert_refused_without_leaking(keypost, r, world.alice)

    (record, *_) = rejections(keypost, "KeyNotInRealm", kid)
    assert record["operation"] == "TokenRejected"
    assert record["result"] == "failure"
    assert record["realm"] == VICTIM_REALM
    assert record["details"]["code"] == "TK0013"
    assert record["details"]["iss"] == keypost.issuer(VICTIM_REALM)
    assert record["details"]["sub"] == alice_sub
    assert record["source_ip"] == "127.0.0.1"
    assert record["user_agent"].startswith("python-requests/")


def test_one_tenants_key_cannot_sign_for_another_tenant(keypost, world, alice_sub, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("fabrikam", pem)
    forged = forge_access_token(keypost, key, kid, VICTIM_REALM, alice_sub)

    r = keypost.userinfo(VICTIM_REALM, forged)
    assert_refused_without_leaking(keypost, r, world.alice)
    (record, *_) = rejections(keypost, "KeyNotInRealm", kid)
    assert record["realm"] == VICTIM_REALM


def test_token_signed_by_the_realms_own_key_but_never_issued_is_refused(
    keypost, world, alice_sub, tmp_path
):
    # The worst case: the attacker has contoso's own active signing key.
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key(VICTIM_REALM, pem)
    legit = keypost.tokens_for(world.alice)["access_token"]
    assert unverified(legit)[0]["kid"] == kid, "the imported key did not become the active key"

    forged = forge_access_token(keypost, key, kid, VICTIM_REALM, alice_sub)
    r = keypost.userinfo(VICTIM_REALM, forged)
    assert_refused_without_leaking(keypost, r, world.alice)
    (record, *_) = rejections(keypost, "NotIssued", kid)
    assert record["realm"] == VICTIM_REALM
    assert record["details"]["code"] == "TK0021"

    # The same key still signs what Keypost itself issues.
    assert keypost.userinfo(VICTIM_REALM, legit).status_code == 200
