"""The JWT attack catalogue (issues 3 and 6): every rejection of the validation policy
(THREAT-MODEL.md) over the real JMAP endpoint — 401 with RFC 6750's `invalid_token` and nothing
else, no mail in the response, a `TokenRejected` audit record naming the reason, and the alert
the detection rules raise for it. Tokens are built with PyJWT, outside Keypost's code."""

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CLI_CLIENT, forge_access_token, new_ed25519_pem, unverified
from jmap_client import api

SECRET_SUBJECT = "Quarterly secrets"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, claims: dict, signature: bytes = b"\x00" * 64) -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)])


@pytest.fixture(scope="module")
def victim(keypost, world, tmp_path_factory):
    email, pw = "victim-jmap@contoso.test", "victim-correct-horse-battery-10"
    keypost.create_user(email, pw)
    tokens = keypost.password_grant("contoso", email, pw).json()
    sub = unverified(tokens["access_token"])[1]["sub"]
    d = tmp_path_factory.mktemp("victim")
    (d / "m.eml").write_bytes(f"From: cfo@contoso.test\r\nTo: {email}\r\nSubject: {SECRET_SUBJECT}\r\n\r\nNumbers.\r\n".encode())
    keypost.cli("mail", "import", email, str(d / "m.eml"))
    # A key bound to contoso itself: the worst case, an attacker holding the realm's own key.
    own_key, own_pem = new_ed25519_pem(d, "own.pem")
    own_kid = keypost.import_key("contoso", own_pem)
    return {"email": email, "password": pw, "sub": sub, "tokens": tokens, "dir": d,
            "own": (own_key, own_kid)}


def claims_for(keypost, sub, **over):
    now = int(time.time())
    c = {"iss": keypost.issuer("contoso"), "sub": sub, "aud": [keypost.mail_audience], "exp": now + 300,
         "iat": now, "nbf": now, "jti": str(uuid.uuid4()), "client_id": CLI_CLIENT, "scope": "openid mail", "tid": "contoso"}
    c.update(over)
    return c


def refused(keypost, victim, token, reasons):
    before = len(keypost.cli("audit", "search", "--operation", "TokenRejected", "--limit", "100000", json=True))
    r = api(keypost, token, [["Email/query", {"accountId": victim["sub"]}, "q"],
                             ["Email/get", {"accountId": victim["sub"], "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}}, "g"]])
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert SECRET_SUBJECT not in r.text and victim["sub"] not in r.text
    after = keypost.cli("audit", "search", "--operation", "TokenRejected", "--limit", "100000", json=True)
    assert len(after) == before + 1, "exactly one TokenRejected for the request"
    record = after[-1]
    assert record["details"]["reason"] in reasons, record
    # And the alert a security team would get (a new one, or a repeat counted on an open one),
    # or none at all for plain garbage, expiry and the like.
    rule = ALERTS.get(record["details"]["reason"])
    keypost.cli("alerts", "scan")
    raised = {a["rule"] for a in keypost.cli("alerts", "list", "--limit", "1000", json=True)
              if record["id"] in a["evidence"]}
    if rule:
        assert rule in raised, f"no {rule} alert for {record['details']['reason']}"
    else:
        assert not raised, f"an alert for {record['details']['reason']}: {raised}"


# The alert each refusal raises (detect crate rules); refusals not listed raise none.
ALERTS = {
    "KeyNotInRealm": "forged-token", "NotIssued": "forged-token", "LedgerMismatch": "forged-token",
    "KeyRevoked": "forged-token", "UnknownKid": "forged-token",
    "AlgorithmNotAllowed": "token-out-of-policy", "AlgorithmMismatch": "token-out-of-policy",
    "HeaderKeyForbidden": "token-out-of-policy", "CritUnsupported": "token-out-of-policy",
    "LifetimeExceedsPolicy": "token-out-of-policy", "IssuedInFuture": "token-out-of-policy",
    "TypeMismatch": "token-out-of-policy",
}


def test_a_key_of_the_consumer_realm(keypost, victim, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("consumers", pem)
    refused(keypost, victim, forge_access_token(keypost, key, kid, "contoso", victim["sub"], scope="openid mail"), {"KeyNotInRealm"})


def test_a_key_of_another_tenant(keypost, victim, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("fabrikam", pem)
    refused(keypost, victim, forge_access_token(keypost, key, kid, "contoso", victim["sub"], scope="openid mail"), {"KeyNotInRealm"})


def test_the_realms_own_key_on_a_token_never_issued(keypost, victim):
    key, kid = victim["own"]
    refused(keypost, victim, forge_access_token(keypost, key, kid, "contoso", victim["sub"], scope="openid mail"), {"NotIssued"})


def test_an_unknown_kid_a_path_and_an_injection(keypost, victim):
    key = Ed25519PrivateKey.generate()
    for kid in ["no-such-key", "../../keys/contoso", "' OR 1=1 --"]:
        token = jwt.encode(claims_for(keypost, victim["sub"]), key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"})
        refused(keypost, victim, token, {"UnknownKid", "Malformed"})


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_every_case(keypost, victim, alg):
    _, kid = victim["own"]
    refused(keypost, victim, raw_token({"alg": alg, "typ": "at+jwt", "kid": kid}, claims_for(keypost, victim["sub"])),
            {"AlgorithmNotAllowed"})


def test_hs256_keyed_with_the_realms_public_key(keypost, victim):
    _, kid = victim["own"]
    jwks = requests.get(keypost.discovery("contoso")["jwks_uri"], timeout=10).json()
    public = json.dumps(next(k for k in jwks["keys"] if k["kid"] == kid)).encode()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims_for(keypost, victim["sub"])).encode())
    sig = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    refused(keypost, victim, signing_input + "." + b64(sig), {"AlgorithmNotAllowed"})


def test_algorithm_switched_against_the_pinned_one(keypost, victim):
    _, kid = victim["own"]
    refused(keypost, victim, raw_token({"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims_for(keypost, victim["sub"])),
            {"AlgorithmMismatch"})


@pytest.mark.parametrize("param", ["jwk", "jku", "x5u", "x5c"])
def test_header_supplied_keys(keypost, victim, param):
    key, kid = victim["own"]
    value = {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "jku": "http://127.0.0.1:1/jwks",
             "x5u": "http://127.0.0.1:1/cert", "x5c": ["AAAA"]}[param]
    token = jwt.encode(claims_for(keypost, victim["sub"]), key, algorithm="EdDSA",
                       headers={"kid": kid, "typ": "at+jwt", param: value})
    refused(keypost, victim, token, {"HeaderKeyForbidden"})


def test_unknown_crit(keypost, victim):
    key, kid = victim["own"]
    token = jwt.encode(claims_for(keypost, victim["sub"]), key, algorithm="EdDSA",
                       headers={"kid": kid, "typ": "at+jwt", "crit": ["exp"], "exp": 1})
    refused(keypost, victim, token, {"CritUnsupported"})


@pytest.mark.parametrize("over,reasons", [
    ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900, "nbf": int(time.time()) - 900}, {"Expired"}),
    ({"nbf": int(time.time()) + 600, "exp": int(time.time()) + 900}, {"NotYetValid", "IssuedInFuture"}),
    ({"iat": int(time.time()) + 600}, {"IssuedInFuture"}),
    ({"exp": int(time.time()) + 86_400 * 30}, {"LifetimeExceedsPolicy"}),
    ({"aud": ["https://elsewhere.example/mail"]}, {"AudienceMismatch"}),
    ({"tid": "fabrikam"}, {"TenantMismatch"}),
    ({"client_id": "no-such-client"}, {"ClientUnknown"}),
])
def test_claims_out_of_policy_on_a_correctly_signed_token(keypost, victim, over, reasons):
    key, kid = victim["own"]
    token = jwt.encode(claims_for(keypost, victim["sub"], **over), key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"})
    refused(keypost, victim, token, reasons)


def test_an_id_token_and_a_refresh_token_as_access_tokens(keypost, victim):
    refused(keypost, victim, victim["tokens"]["id_token"], {"TypeMismatch", "WrongKeyPurpose"})
    refused(keypost, victim, victim["tokens"]["refresh_token"], {"Malformed"})


def test_a_genuine_token_with_a_signature_stripped_swapped_or_claims_edited(keypost, victim):
    genuine = victim["tokens"]["access_token"]
    h, c, s = genuine.split(".")
    other = keypost.password_grant("contoso", victim["email"], victim["password"]).json()["access_token"]
    edited = json.loads(base64.urlsafe_b64decode(c + "=="))
    edited["scope"] = "openid mail admin"
    refused(keypost, victim, f"{h}.{c}.", {"Malformed"})
    refused(keypost, victim, f"{h}.{c}.{other.split('.')[2]}", {"SignatureInvalid"})
    refused(keypost, victim, f"{h}.{b64(json.dumps(edited).encode())}.{s}", {"SignatureInvalid"})


def test_malformed_tokens(keypost, victim):
    genuine = victim["tokens"]["access_token"]
    h, c, s = genuine.split(".")
    for token in [f"{h}.{c}", f"{h}.{c}.{s}.{s}", f"{h}!.{c}.{s}", f"{h}==.{c}.{s}", "a" * 20_000,
                  b64(b'{"alg":"EdDSA","alg":"none","typ":"at+jwt","kid":"k"}') + "." + c + "." + s,
                  b64(('{"a":' * 200 + "1" + "}" * 200).encode()) + "." + c + "." + s]:
        refused(keypost, victim, token, {"Malformed"})


def test_revoked_token_disabled_account_and_revoked_key(keypost, victim):
    token = keypost.password_grant("contoso", victim["email"], victim["password"]).json()["access_token"]
    r = requests.post(keypost.endpoint("contoso", "revocation_endpoint"), data={"token": token, "client_id": CLI_CLIENT}, timeout=10)
    assert r.status_code == 200
    refused(keypost, victim, token, {"TokenRevoked"})

    key, kid = victim["own"]
    forged = forge_access_token(keypost, key, kid, "contoso", victim["sub"], scope="openid mail")
    keypost.cli("keys", "revoke", kid)
    refused(keypost, victim, forged, {"KeyRevoked"})

    live = keypost.password_grant("contoso", victim["email"], victim["password"]).json()["access_token"]
    keypost.cli("user", "disable", victim["email"])
    refused(keypost, victim, live, {"AccountDisabled"})


def test_a_token_without_an_issuer(keypost, victim):
    key, kid = victim["own"]
    claims = claims_for(keypost, victim["sub"])
    del claims["iss"]
    refused(keypost, victim, jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}),
            {"MissingClaim"})
