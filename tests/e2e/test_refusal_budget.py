"""Garbage tokens cost no unbounded audit writes, and nothing is dropped silently: past a
budget per source network and minute, refusals decided before any signature verified are
counted, and written as one summary record per source when the window ends (or the server
stops). A token that names another realm's key — someone may hold a signing key — is always
audited on its own."""

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import HTTP_TIMEOUT_S, forge_access_token, session_from

BUDGET = 20  # tokens::refusal_budget::PER_WINDOW
SOURCE = "127.0.0.77"


def from_source(keypost) -> list[dict]:
    return [r for r in keypost.audit("TokenRejected") if r.get("source_ip") == SOURCE]


def test_garbage_past_the_budget_is_counted_then_summarised(keypost, world):
    s = session_from(SOURCE)
    url = f"{keypost.url}/.well-known/jmap"
    for _ in range(BUDGET + 25):
        r = s.get(url, headers={"Authorization": "Bearer x.y.z"}, timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 401
    records = from_source(keypost)
    assert len(records) == BUDGET, f"{len(records)} written one by one"
    assert {r["details"]["reason"] for r in records} == {"Malformed"}

    # A token signed for another realm's key is evidence of a stolen key: never held back.
    fabrikam_kid = requests.get(keypost.endpoint("fabrikam", "jwks_uri"), timeout=10).json()["keys"][0]["kid"]
    for _ in range(5):
        token = forge_access_token(keypost, Ed25519PrivateKey.generate(), fabrikam_kid, "contoso", "x")
        assert s.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT_S).status_code == 401
    stolen = [r for r in from_source(keypost) if r["details"]["reason"] == "KeyNotInRealm"]
    assert len(stolen) == 5, stolen

    # A stopping server writes what it counted.
    keypost.stop()
    keypost.start()
    (summary,) = [r for r in from_source(keypost) if r["details"]["reason"] == "Summarized"]
    assert summary["details"]["summarized"] == 25 and summary["details"]["reasons"] == {"Malformed": 25}, summary
    assert summary["details"]["from"] <= summary["details"]["until"]
