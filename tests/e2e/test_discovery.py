"""Each realm is its own issuer with its own key set (THREAT-MODEL step 3: no mixed key set)."""

import requests

from conftest import HTTP_TIMEOUT_S

REALMS = ["consumers", "contoso", "fabrikam"]
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def jwks(keypost, realm):
    r = requests.get(keypost.discovery(realm)["jwks_uri"], timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert keys, f"{realm} publishes no keys"
    return keys


def test_healthz_answers_200(keypost):
    assert requests.get(f"{keypost.url}/healthz", timeout=HTTP_TIMEOUT_S).status_code == 200


def test_first_start_prints_provider_admin_and_one_time_password(keypost):
    assert keypost.admin_email and "@" in keypost.admin_email, keypost.logs()
    assert keypost.admin_password, keypost.logs()


def test_each_realm_discovery_names_its_own_issuer_and_endpoints(keypost, world):
    for realm in REALMS:
        doc = keypost.discovery(realm)
        issuer = f"{keypost.url}/realms/{realm}"
        assert doc["issuer"] == issuer
        assert doc["authorization_endpoint"] == f"{issuer}/authorize"
        assert doc["token_endpoint"] == f"{issuer}/token"
        assert doc["userinfo_endpoint"] == f"{issuer}/userinfo"
        assert doc["jwks_uri"] == f"{issuer}/jwks"
        assert doc["revocation_endpoint"] == f"{issuer}/revoke"
        assert doc["end_session_endpoint"] == f"{issuer}/logout"


def test_realms_share_no_signing_key(keypost, world):
    kids = {realm: {k["kid"] for k in jwks(keypost, realm)} for realm in REALMS}
    assert not kids["contoso"] & kids["consumers"], "contoso and consumers publish a common kid"
    assert not kids["fabrikam"] & kids["consumers"], "fabrikam and consumers publish a common kid"
    assert not kids["contoso"] & kids["fabrikam"], "contoso and fabrikam publish a common kid"


def test_every_published_key_is_a_public_signing_key_with_alg(keypost, world):
    for realm in REALMS:
        for key in jwks(keypost, realm):
            assert key.get("kid"), key
            assert key.get("alg"), f"{realm} key without alg: {key}"
            assert key.get("use") == "sig", f"{realm} key without use=sig: {key}"
            leaked = PRIVATE_JWK_MEMBERS & key.keys()
            assert not leaked, f"{realm} JWKS publishes private members {leaked}"


def test_default_algorithms_are_eddsa_access_and_rs256_id_tokens(keypost, world):
    for realm in REALMS:
        algs = {k["alg"] for k in jwks(keypost, realm)}
        assert "EdDSA" in algs, f"{realm}: {algs}"
        assert "RS256" in algs, f"{realm}: {algs}"
