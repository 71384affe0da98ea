"""The JWT attack catalogue: every way to get a token accepted that THREAT-MODEL.md lists, each
a small named case against the real JMAP endpoint of a running `keypost serve`.

Every case asserts the same four things (`refused`):
  1. HTTP 401 with RFC 6750's `invalid_token` challenge, and nothing else to learn;
  2. no mail in the response (the victim has a message with a known subject);
  3. exactly one new `TokenRejected` audit record, naming the expected reason;
  4. the alert the detection rules raise for that reason (see ALERTS), or none.

Tokens are built here with PyJWT and `cryptography`, never with Keypost's code. The victim
realm `contoso` holds an Ed25519 key the attacker also has (`own`: the worst case, a stolen
key of the right realm); `northwind` is an ES256 realm for the ECDSA cases.
"""

import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S, new_ed25519_pem, session_from, unverified
from jmap_client import api, auth

SECRET_SUBJECT = "Quarterly secrets"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# The alert each refusal raises (detect crate rules); refusals not listed raise none.
ALERTS = {
    "KeyNotInRealm": "forged-token", "NotIssued": "forged-token", "LedgerMismatch": "forged-token",
    "KeyRevoked": "forged-token", "UnknownKid": "forged-token",
    "AlgorithmNotAllowed": "token-out-of-policy", "AlgorithmMismatch": "token-out-of-policy",
    "HeaderKeyForbidden": "token-out-of-policy", "CritUnsupported": "token-out-of-policy",
    "LifetimeExceedsPolicy": "token-out-of-policy", "IssuedInFuture": "token-out-of-policy",
    "TypeMismatch": "token-out-of-policy", "MissingClaim": "token-out-of-policy",
    # Refused after the signature verified with one of the realm's keys.
    "TenantMismatch": "misdirected-token", "IssuerMismatch": "misdirected-token",
    "AudienceMismatch": "misdirected-token", "WrongKeyPurpose": "misdirected-token",
}


# ---- helpers ---------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(header: dict, claims: dict, signature: bytes = b"\x00" * 64) -> str:
    """A token assembled by hand, with whatever signature bytes the case wants."""
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)])


def claims_for(keypost, victim, **over) -> dict:
    """Exactly the claims Keypost writes for the victim; `over` changes some."""
    now = int(time.time())
    c = {"iss": keypost.issuer(victim["realm"]), "sub": victim["sub"], "aud": [keypost.mail_audience],
         "exp": now + 300, "iat": now, "nbf": now, "jti": str(uuid.uuid4()), "client_id": CLI_CLIENT,
         "scope": "openid mail", "tid": victim["realm"]}
    c.update(over)
    return c


def signed(keypost, victim, key, kid, header=None, **over) -> str:
    """A correctly signed EdDSA token with the victim's claims (changed by `over`)."""
    return jwt.encode(claims_for(keypost, victim, **over), key, algorithm="EdDSA",
                      headers={"kid": kid, "typ": "at+jwt", **(header or {})})


_sources = itertools.count(1)


def refused(keypost, victim, token, reasons):
    """Presents `token` for the victim's mail and checks the four promises. Each case comes
    from an address of its own: the token alerts count repeats per source, so each case's
    record is the first evidence of an alert of its own."""
    before = len(keypost.cli("audit", "search", "--operation", "TokenRejected", "--limit", "100000", json=True))
    n = next(_sources)
    r = session_from(f"127.30.{n // 250}.{n % 250 + 1}").post(f"{keypost.url}/jmap/api", headers=auth(token), timeout=HTTP_TIMEOUT_S, json={
        "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
        "methodCalls": [["Email/query", {"accountId": victim["sub"]}, "q"],
                        ["Email/get", {"accountId": victim["sub"],
                                       "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}}, "g"]]})
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert SECRET_SUBJECT not in r.text and victim["sub"] not in r.text
    after = keypost.cli("audit", "search", "--operation", "TokenRejected", "--limit", "100000", json=True)
    assert len(after) == before + 1, "exactly one TokenRejected for the request"
    record = after[-1]
    assert record["details"]["reason"] in reasons, record
    rule = ALERTS.get(record["details"]["reason"])
    if not record.get("realm"):
        # Refused before any realm's key was tried: an `iss` that is none of Keypost's issuers
        # alerts the provider; no `iss` at all, or no token, is garbage and alerts nobody.
        rule = "unknown-issuer" if record["details"]["reason"] == "IssuerMismatch" else None
    keypost.cli("alerts", "scan")
    raised = {a["rule"] for a in keypost.cli("alerts", "list", "--limit", "1000", json=True)
              if record["id"] in a["evidence"]}
    if rule:
        assert rule in raised, f"no {rule} alert for {record['details']['reason']}"
    else:
        assert not raised, f"an alert for {record['details']['reason']}: {raised}"


def new_victim(keypost, realm: str, name: str, directory) -> dict:
    """An account with one message whose subject must never appear in a refusal."""
    email, pw = f"{name}@{realm}.test", f"{name}-correct-horse-battery-10"
    keypost.create_user(email, pw)
    tokens = keypost.password_grant(realm, email, pw).json()
    (directory / f"{name}.eml").write_bytes(
        f"From: cfo@{realm}.test\r\nTo: {email}\r\nSubject: {SECRET_SUBJECT}\r\n\r\nNumbers.\r\n".encode())
    keypost.cli("mail", "import", email, str(directory / f"{name}.eml"))
    return {"email": email, "password": pw, "realm": realm, "tokens": tokens,
            "sub": unverified(tokens["access_token"])[1]["sub"]}


@pytest.fixture(scope="module")
def victim(keypost, world, tmp_path_factory):
    d = tmp_path_factory.mktemp("victim")
    v = new_victim(keypost, "contoso", "victim-jmap", d)
    own_key, own_pem = new_ed25519_pem(d, "own.pem")
    v["own"] = (own_key, keypost.import_key("contoso", own_pem))
    return v


@pytest.fixture()
def fresh_victim(keypost, world, tmp_path):
    """A victim of its own, for cases that disable or revoke something."""
    return new_victim(keypost, "contoso", f"v{uuid.uuid4().hex[:8]}", tmp_path)


@pytest.fixture(scope="module")
def es256_victim(keypost, world, tmp_path_factory):
    d = tmp_path_factory.mktemp("northwind")
    keypost.cli("tenant", "create", "northwind", "--domain", "northwind.test")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = d / "p256.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    kid = keypost.import_key("northwind", pem)
    v = new_victim(keypost, "northwind", "victim-ec", d)
    assert unverified(v["tokens"]["access_token"])[0] == {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    v["own"] = (key, kid)
    return v


# ---- stolen and foreign keys (THREAT-MODEL steps 3-5) ------------------------------------------

def test_the_replay_a_consumer_realm_key_signs_for_an_enterprise_user(keypost, victim, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("consumers", pem)  # stands in for the stolen consumer key
    refused(keypost, victim, signed(keypost, victim, key, kid), {"KeyNotInRealm"})


def test_a_key_of_tenant_fabrikam_signs_for_a_contoso_user(keypost, victim, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("fabrikam", pem)
    refused(keypost, victim, signed(keypost, victim, key, kid), {"KeyNotInRealm"})


def test_the_realms_own_key_on_a_token_keypost_never_issued(keypost, victim):
    key, kid = victim["own"]
    refused(keypost, victim, signed(keypost, victim, key, kid), {"NotIssued"})


def test_a_key_nobody_has_published(keypost, victim):
    refused(keypost, victim, signed(keypost, victim, Ed25519PrivateKey.generate(), "no-such-key"),
            {"UnknownKid"})


@pytest.mark.parametrize("kid", [
    "../../keys/contoso", "' OR 1=1 --", "kid\r\nX-Injected: 1", "%00", "k" * 5000, "",
], ids=["path", "sql-injection", "header-injection", "nul", "very-long", "empty"])
def test_kid_naming_a_path_or_carrying_an_injection(keypost, victim, kid):
    token = signed(keypost, victim, Ed25519PrivateKey.generate(), kid)
    refused(keypost, victim, token, {"UnknownKid", "KidMissing", "Malformed"})


# ---- algorithm confusion --------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none(keypost, victim, alg):
    _, kid = victim["own"]
    header = {"alg": alg, "typ": "at+jwt", "kid": kid}
    refused(keypost, victim, compact(header, claims_for(keypost, victim), b""), {"AlgorithmNotAllowed", "Malformed"})


@pytest.mark.parametrize("secret", ["jwk-json", "raw-public-key"])
def test_hs256_keyed_with_the_realms_public_key(keypost, victim, secret):
    _, kid = victim["own"]
    jwks = requests.get(keypost.discovery("contoso")["jwks_uri"], timeout=10).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    mac_key = json.dumps(jwk).encode() if secret == "jwk-json" else unb64(jwk["x"])
    header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims_for(keypost, victim)).encode())
    mac = hmac.new(mac_key, signing_input.encode(), hashlib.sha256).digest()
    refused(keypost, victim, signing_input + "." + b64(mac), {"AlgorithmNotAllowed"})


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256"])
def test_algorithm_switched_against_the_keys_pinned_one(keypost, victim, alg):
    _, kid = victim["own"]  # an EdDSA key
    refused(keypost, victim, compact({"alg": alg, "typ": "at+jwt", "kid": kid}, claims_for(keypost, victim)),
            {"AlgorithmMismatch"})


@pytest.mark.parametrize("param,value", [
    ("jwk", {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
    ("jku", "http://127.0.0.1:1/jwks"),
    ("x5u", "http://127.0.0.1:1/cert"),
    ("x5c", ["MIIBszCCAVmgAwIBAgIUAAAA"]),
])
def test_a_key_supplied_in_the_header(keypost, victim, param, value):
    key, kid = victim["own"]
    refused(keypost, victim, signed(keypost, victim, key, kid, {param: value}), {"HeaderKeyForbidden"})


def test_an_unknown_critical_extension(keypost, victim):
    key, kid = victim["own"]
    refused(keypost, victim, signed(keypost, victim, key, kid, {"crit": ["exp"], "exp": 1}), {"CritUnsupported"})


# ---- invalid signatures ---------------------------------------------------------------------

@pytest.mark.parametrize("signature", [
    b"\x00" * 64,
    P256_ORDER.to_bytes(32, "big") * 2,
    (1).to_bytes(32, "big") + P256_ORDER.to_bytes(32, "big"),
], ids=["r=s=0 (CVE-2022-21449)", "r=s=n", "s=n"])
def test_ecdsa_signature_with_out_of_range_values(keypost, es256_victim, signature):
    _, kid = es256_victim["own"]
    token = compact({"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims_for(keypost, es256_victim), signature)
    refused(keypost, es256_victim, token, {"SignatureInvalid"})


def test_ecdsa_signature_in_der_instead_of_jose_encoding(keypost, es256_victim):
    key, kid = es256_victim["own"]
    header = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims_for(keypost, es256_victim)).encode())
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))  # a valid signature, wrong encoding
    refused(keypost, es256_victim, signing_input + "." + b64(der), {"SignatureInvalid", "Malformed"})


def test_ecdsa_signature_one_byte_short(keypost, es256_victim):
    _, kid = es256_victim["own"]
    token = compact({"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims_for(keypost, es256_victim), b"\x01" * 63)
    refused(keypost, es256_victim, token, {"SignatureInvalid", "Malformed"})


def test_a_genuine_token_with_its_signature_stripped(keypost, victim):
    h, c, _ = victim["tokens"]["access_token"].split(".")
    refused(keypost, victim, f"{h}.{c}.", {"Malformed"})


def test_a_genuine_token_with_the_signature_of_another_genuine_token(keypost, victim):
    h, c, _ = victim["tokens"]["access_token"].split(".")
    other = keypost.password_grant("contoso", victim["email"], victim["password"]).json()["access_token"]
    refused(keypost, victim, f"{h}.{c}.{other.split('.')[2]}", {"SignatureInvalid"})


def test_a_genuine_token_with_claims_edited_after_signing(keypost, victim):
    h, c, s = victim["tokens"]["access_token"].split(".")
    claims = json.loads(unb64(c))
    claims["scope"] = "openid mail admin"
    refused(keypost, victim, f"{h}.{b64(json.dumps(claims).encode())}.{s}", {"SignatureInvalid"})


# ---- claims out of policy on a correctly signed token ----------------------------------------

NOW = int(time.time())


@pytest.mark.parametrize("over,reasons", [
    ({"exp": NOW - 600, "iat": NOW - 900, "nbf": NOW - 900}, {"Expired"}),
    ({"nbf": NOW + 600, "exp": NOW + 900}, {"NotYetValid", "IssuedInFuture"}),
    ({"iat": NOW + 600}, {"IssuedInFuture"}),
    ({"exp": NOW + 86_400 * 30}, {"LifetimeExceedsPolicy"}),
    ({"aud": ["https://elsewhere.example/mail"]}, {"AudienceMismatch"}),
    ({"tid": "fabrikam"}, {"TenantMismatch"}),
    ({"client_id": "no-such-client"}, {"ClientUnknown"}),
], ids=["expired", "not-yet-valid", "iat-in-the-future", "lifetime-over-policy", "wrong-audience",
        "another-tenant-in-tid", "unknown-client"])
def test_claims_out_of_policy(keypost, victim, over, reasons):
    key, kid = victim["own"]
    refused(keypost, victim, signed(keypost, victim, key, kid, **over), reasons)


@pytest.mark.parametrize("issuer,reasons", [
    # Claiming another realm's issuer moves the key lookup there, where the key is not.
    ("{url}/realms/fabrikam", {"KeyNotInRealm"}),
    ("{url}/realms/consumers", {"KeyNotInRealm"}),
    ("{url}/realms/contoso/", {"IssuerMismatch"}),
    ("{url}/realms/Contoso", {"IssuerMismatch"}),
    ("{url}/realms/contoso.evil", {"IssuerMismatch"}),
    ("https://evil.example/realms/contoso", {"IssuerMismatch"}),
    ("{url}/realms/c\u03bfntoso", {"IssuerMismatch"}),
], ids=["another-tenant", "consumer-realm", "trailing-slash", "case", "suffix", "other-host",
        "greek-omicron"])
def test_wrong_or_look_alike_issuer(keypost, victim, issuer, reasons):
    key, kid = victim["own"]
    token = signed(keypost, victim, key, kid, iss=issuer.format(url=keypost.url))
    refused(keypost, victim, token, reasons)


def test_a_token_without_the_mail_scope_gets_403_and_no_mail(keypost, victim):
    """RFC 6750 §3.1: a valid token lacking the scope is `insufficient_scope` (403), not 401."""
    key, kid = victim["own"]
    # Signed by the realm's own key but never issued: refused as a forgery before scope.
    refused(keypost, victim, signed(keypost, victim, key, kid, scope="openid"), {"NotIssued"})
    # A genuine token issued without the mail scope.
    token = keypost.password_grant("contoso", victim["email"], victim["password"], scope="openid").json()["access_token"]
    r = api(keypost, token, [["Email/query", {"accountId": victim["sub"]}, "q"]])
    assert r.status_code == 403 and r.json() == {"error": "insufficient_scope"}, r.text
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert SECRET_SUBJECT not in r.text


@pytest.mark.parametrize("claim,reasons", [
    ("iss", {"MissingClaim"}), ("sub", {"MissingClaim"}), ("exp", {"MissingClaim"}),
    ("jti", {"MissingClaim"}), ("aud", {"AudienceMismatch"}),
])
def test_a_required_claim_missing(keypost, victim, claim, reasons):
    key, kid = victim["own"]
    claims = claims_for(keypost, victim)
    del claims[claim]
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"})
    refused(keypost, victim, token, reasons)


@pytest.mark.parametrize("typ", ["JWT", "id_token", None], ids=["JWT", "id_token", "absent"])
def test_typ_other_than_at_jwt(keypost, victim, typ):
    key, kid = victim["own"]
    header = {"kid": kid} if typ is None else {"kid": kid, "typ": typ}
    token = jwt.encode(claims_for(keypost, victim), key, algorithm="EdDSA", headers=header)
    if typ is None:
        # PyJWT adds "typ": "JWT" unless told otherwise; build it by hand without one.
        h, c, _ = token.split(".")
        hdr = {"alg": "EdDSA", "kid": kid}
        signing_input = b64(json.dumps(hdr).encode()) + "." + c
        token = signing_input + "." + b64(key.sign(signing_input.encode()))
    refused(keypost, victim, token, {"TypeMismatch"})


def test_an_id_token_presented_as_an_access_token(keypost, victim):
    refused(keypost, victim, victim["tokens"]["id_token"], {"TypeMismatch", "WrongKeyPurpose"})


def test_a_refresh_token_presented_as_an_access_token(keypost, victim):
    refused(keypost, victim, victim["tokens"]["refresh_token"], {"Malformed"})


# ---- revoked and disabled --------------------------------------------------------------------

def test_a_revoked_token(keypost, fresh_victim):
    token = fresh_victim["tokens"]["access_token"]
    r = requests.post(keypost.endpoint("contoso", "revocation_endpoint"),
                      data={"token": token, "client_id": CLI_CLIENT}, timeout=10)
    assert r.status_code == 200
    refused(keypost, fresh_victim, token, {"TokenRevoked"})


def test_a_token_of_a_revoked_session(keypost, fresh_victim):
    keypost.cli("sessions", "revoke", "--user", fresh_victim["email"])
    refused(keypost, fresh_victim, fresh_victim["tokens"]["access_token"], {"SessionRevoked", "TokenRevoked"})


def test_a_token_signed_by_a_revoked_key(keypost, victim, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("contoso", pem)
    forged = signed(keypost, victim, key, kid)
    keypost.cli("keys", "revoke", kid)
    refused(keypost, victim, forged, {"KeyRevoked"})


def test_a_genuine_token_of_a_disabled_account(keypost, fresh_victim):
    keypost.cli("user", "disable", fresh_victim["email"])
    refused(keypost, fresh_victim, fresh_victim["tokens"]["access_token"], {"AccountDisabled"})


# ---- malformed -------------------------------------------------------------------------------

def malformed_variants(token: str) -> dict[str, str]:
    h, c, s = token.split(".")
    last = s[-1]
    # The last character of an 86-character signature carries 2 bits and 4 zero bits; any other
    # character decodes to the same bytes under a lax decoder (non-canonical base64).
    lax_twin = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = lax_twin.index(last)
    noncanonical = s[:-1] + lax_twin[i + 1 if i % 16 == 0 else i - 1]
    return {
        "two-segments": f"{h}.{c}",
        "four-segments": f"{h}.{c}.{s}.{s}",
        "bad-base64-character": f"{h}!.{c}.{s}",
        "base64-padding": f"{h}==.{c}.{s}",
        "non-canonical-base64": f"{h}.{c}.{noncanonical}",
        "whitespace-inside": f"{h}. {c}.{s}",
        "oversized": "a" * 20_000,
        "duplicate-alg-header": b64(b'{"alg":"EdDSA","alg":"none","typ":"at+jwt","kid":"k"}') + f".{c}.{s}",
        "deeply-nested-claims": f"{h}." + b64(('{"a":' * 200 + "1" + "}" * 200).encode()) + f".{s}",
        "header-not-json": b64(b"not json") + f".{c}.{s}",
        "claims-an-array": f"{h}." + b64(b"[1,2]") + f".{s}",
    }


MALFORMED = list(malformed_variants("aaaa.bbbb." + "A" * 86))


@pytest.mark.parametrize("variant", MALFORMED)
def test_malformed_token(keypost, victim, variant):
    token = malformed_variants(victim["tokens"]["access_token"])[variant]
    refused(keypost, victim, token, {"Malformed"})
