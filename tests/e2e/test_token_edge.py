"""One authenticated edge for every protocol: JMAP, userinfo and the admin API take the bearer
token through the same reader and the same gate, so each refuses the same malformed or foreign
credential the same way — with its own protocol's error form — and every refusal is audited,
including tokens too broken to name a realm (before, /admin refused those unaudited)."""

import uuid

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import HTTP_TIMEOUT_S, forge_access_token


def endpoints(keypost):
    return {
        "jmap": f"{keypost.url}/.well-known/jmap",
        "userinfo": keypost.endpoint("contoso", "userinfo_endpoint"),
        "admin": f"{keypost.url}/admin/audit",
    }


def refusals_with(keypost, marker: str) -> list[dict]:
    return [r for r in keypost.audit("TokenRejected")
            if marker in (r.get("jti") or "") + (r.get("kid") or "") + str(r["details"].get("iss", ""))]


@pytest.mark.parametrize("service", ["jmap", "userinfo", "admin"])
def test_an_unknown_issuers_token_is_refused_and_audited_with_what_it_presented(keypost, world, service):
    marker = uuid.uuid4().hex
    token = forge_access_token(keypost, Ed25519PrivateKey.generate(), f"kid-{marker}", "contoso",
                               "someone", iss=f"https://elsewhere.example/realms/{marker}")
    r = requests.get(endpoints(keypost)[service], headers={"Authorization": f"Bearer {token}"},
                     timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    (record,) = refusals_with(keypost, marker)
    # JMAP and the admin API take the realm from `iss`, and no realm has this one; userinfo's
    # URL names contoso, whose policy refuses the key before it reads `iss`.
    expected = "UnknownKid" if service == "userinfo" else "IssuerMismatch"
    assert record["details"]["reason"] == expected, record
    assert (record["realm"] == "contoso") == (service == "userinfo"), record
    assert record["kid"] == f"kid-{marker}" and marker in record["details"]["iss"], record
    assert record["details"]["audience"].endswith({"jmap": "/mail", "userinfo": "/userinfo", "admin": "/admin"}[service])


@pytest.mark.parametrize("service", ["jmap", "userinfo", "admin"])
@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer not\"a-token", "Bearer ===", "bearer x.y.z"])
def test_malformed_bearer_credentials_are_refused_and_audited_everywhere(keypost, world, service, header):
    before = len(keypost.audit("TokenRejected"))
    r = requests.get(endpoints(keypost)[service], headers={"Authorization": header}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"], r.headers
    after = keypost.audit("TokenRejected")
    assert len(after) == before + 1, "the refusal was not audited"
    assert after[-1]["details"]["reason"] in ("Malformed", "MissingClaim", "IssuerMismatch"), after[-1]


@pytest.mark.parametrize("service", ["jmap", "userinfo", "admin"])
@pytest.mark.parametrize("header", [None, "Basic YWxpY2U6cGFzc3dvcmQ="])
def test_no_bearer_token_is_asked_for_not_refused(keypost, world, service, header):
    before = len(keypost.audit("TokenRejected"))
    headers = {"Authorization": header} if header else {}
    r = requests.get(endpoints(keypost)[service], headers=headers, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=") and "error=" not in challenge, challenge
    assert len(keypost.audit("TokenRejected")) == before, "nothing was presented, nothing refused"


def test_a_good_token_passes_the_edge_of_each_service(keypost, world):
    token = keypost.tokens_for(world.alice, scope="openid email mail offline_access")["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(endpoints(keypost)["jmap"], headers=auth, timeout=HTTP_TIMEOUT_S).status_code == 200
    assert requests.get(endpoints(keypost)["userinfo"], headers=auth, timeout=HTTP_TIMEOUT_S).status_code == 200


def test_a_made_up_realm_in_iss_is_a_foreign_issuer_and_gets_no_chain_of_its_own(keypost, world):
    marker = uuid.uuid4().hex[:12]
    token = forge_access_token(keypost, Ed25519PrivateKey.generate(), f"kid-{marker}", "contoso",
                               "someone", iss=f"{keypost.url}/realms/madeup{marker}")
    r = requests.get(endpoints(keypost)["jmap"], headers={"Authorization": f"Bearer {token}"},
                     timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401
    (record,) = refusals_with(keypost, marker)
    assert record["realm"] is None and record["details"]["reason"] == "IssuerMismatch", record
    chains = {c["chain"] for c in keypost.cli("audit", "verify", json=True)}
    assert f"madeup{marker}" not in chains, chains
