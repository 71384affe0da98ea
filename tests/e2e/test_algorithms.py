"""Every signing algorithm Keypost offers works end to end with an independent JWT library:
a realm's access-token algorithm (EdDSA by default; ES256, RS256, PS256 per realm), and a client's
registered ID-token algorithm (RS256 unless it registers another)."""

import jwt
import pytest

from conftest import ACCESS_TOKEN_CLAIMS, jwks_client


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256"])
def test_a_realm_can_sign_access_tokens_with(keypost, alg):
    realm = f"alg-{alg.lower()}"
    keypost.cli("tenant", "create", realm, "--domain", f"{realm}.test", "--token-alg", alg)
    email, password = f"user@{realm}.test", "correct-horse-battery-9"
    keypost.create_user(email, password)

    r = keypost.password_grant(realm, email, password)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == alg

    key = jwks_client(keypost, realm).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[alg],  # pinned: the library refuses any other
        audience=keypost.mail_audience,
        issuer=keypost.discovery(realm)["issuer"],
        options={"require": ACCESS_TOKEN_CLAIMS},
    )
    assert claims["tid"] == realm
    assert keypost.userinfo(realm, token).status_code == 200

    listed = keypost.cli("keys", "list", "--realm", realm, json=True)
    active = [k for k in listed if k["state"] == "active" and k["purpose"] == "access-token"]
    assert [k["alg"] for k in active] == [alg], listed


def test_a_client_can_register_its_id_token_algorithm(keypost, world):
    keypost.create_client(
        "contoso", "es-app", "--first-party", "--grant", "password", "--id-token-alg", "ES256"
    )
    r = keypost.password_grant(
        "contoso", world.alice.email, world.alice.password, scope="openid email", client_id="es-app"
    )
    assert r.status_code == 200, r.text
    id_token = r.json()["id_token"]
    assert jwt.get_unverified_header(id_token)["alg"] == "ES256"
    key = jwks_client(keypost, "contoso").get_signing_key_from_jwt(id_token)
    claims = jwt.decode(
        id_token,
        key.key,
        algorithms=["ES256"],
        audience="es-app",
        issuer=keypost.discovery("contoso")["issuer"],
    )
    assert claims["email"] == world.alice.email

    # Other clients keep the OIDC default.
    default = keypost.tokens_for(world.alice)["id_token"]
    assert jwt.get_unverified_header(default)["alg"] == "RS256"
