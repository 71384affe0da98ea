"""Someone who can write the database cannot have the signer bless a rewritten audit log
(issue 17, finding 2): the signer keeps the last head it signed for each chain beside the
key-encryption key, checkpoints are numbered and each names the one before it, and the signed
checkpoints are published at /realms/{realm}/audit-checkpoints so that a mirror proves later
that the log still holds every one of them.

The published checkpoints are checked here by an independent implementation written from
docs/design/003-audit-chain.md (signature with the realm's audit key from its key history,
the link to the previous checkpoint)."""

import base64
import hashlib
import json
import sqlite3
import time

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conftest import Keypost
from test_audit_chain import link
from test_detection import wait_for_alert


def published(keypost: Keypost, realm: str = "contoso") -> list[dict]:
    out, after = [], 0
    while True:
        r = requests.get(f"{keypost.issuer(realm)}/audit-checkpoints",
                         params={"after": after, "limit": 2}, timeout=10)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["checkpoints"]
        if page["next"] is None:
            return out
        after = page["next"]


def message(c: dict) -> bytes:
    """docs/design/003-audit-chain.md: what a checkpoint signs."""
    return (f"keypost-audit-checkpoint-v2\n{c['chain']}\n{c['number']}\n{c['seq']}\n{c['link']}\n"
            f"{c['time']}\n{c['prev']}").encode()


def verify(keypost, *against, env=None):
    args = [a for src in against for a in ("--against", str(src))]
    p = keypost.run("audit", "verify", "--realm", "contoso", *args, "--json", env=env)
    assert p.stdout.startswith("["), p.stderr
    (report,) = json.loads(p.stdout)
    return p.returncode, {q["problem"] for q in report["problems"]}, report


@pytest.fixture(scope="module")
def mirrored(keypost: Keypost, world, tmp_path_factory):
    """Activity over several checkpoints, and an auditor's mirror of what was published."""
    for _ in range(3):
        keypost.tokens_for(world.alice)
        keypost.cli("audit", "checkpoint")
    mirror = tmp_path_factory.mktemp("mirror") / "contoso-checkpoints.json"
    mirror.write_text(json.dumps(published(keypost)))
    return mirror


def test_published_checkpoints_are_numbered_linked_and_signed_by_the_audit_key(keypost, mirrored):
    entries = json.loads(mirrored.read_text())
    assert len(entries) >= 3, entries
    keys = requests.get(f"{keypost.issuer('contoso')}/key-history", timeout=10).json()["keys"]
    audit_keys = {k["kid"]: k["public_jwk"] for k in keys if k["purpose"] == "audit"}
    prev = bytes(32)
    for n, c in enumerate(entries, start=1):
        assert c["number"] == n and c["chain"] == "contoso"
        assert c["prev"] == prev.hex(), f"checkpoint {n} does not name checkpoint {n - 1}"
        x = audit_keys[c["kid"]]["x"]
        public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
        public.verify(bytes.fromhex(c["signature"]), message(c))  # raises if forged
        prev = hashlib.sha256(message(c)).digest()
    # Paged and bounded; a bad parameter is a client error.
    assert requests.get(f"{keypost.issuer('contoso')}/audit-checkpoints", params={"limit": "x"},
                        timeout=10).status_code == 400
    assert requests.get(f"{keypost.issuer('nowhere')}/audit-checkpoints", timeout=10).status_code == 404
    provider = requests.get(f"{keypost.issuer('consumers')}/audit-checkpoints",
                            params={"chain": "provider"}, timeout=10).json()
    assert all(c["chain"] == "" for c in provider["checkpoints"])


def test_the_intact_log_is_consistent_with_its_mirror_and_its_url(keypost, mirrored):
    code, problems, _ = verify(keypost, mirrored)
    assert code == 0 and problems == set()
    code, problems, _ = verify(keypost, f"{keypost.issuer('contoso')}/audit-checkpoints")
    assert code == 0 and problems == set()


def test_a_rewritten_relinked_log_without_its_checkpoints_is_refused_alerted_and_found(keypost, mirrored):
    """The review's attack on the live database: drop the triggers, edit a record, relink the
    chain with the published algorithm, delete the chain's checkpoints. The signer used to
    sign a fresh checkpoint over the result within a minute. Runs last: it breaks the log."""
    db = sqlite3.connect(keypost.data_dir / "keypost.db", timeout=30)
    db.row_factory = sqlite3.Row
    db.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_checkpoints_no_delete;")
    db.execute("UPDATE audit SET actor = 'nobody' WHERE chain = 'contoso' AND seq = 1")
    prev = bytes(32)
    for row in db.execute("SELECT * FROM audit WHERE chain = 'contoso' ORDER BY seq").fetchall():
        prev = link(prev, row["seq"], row)
        db.execute("UPDATE audit SET link = ? WHERE id = ?", (prev, row["id"]))
    db.execute("UPDATE audit_heads SET link = ? WHERE chain = 'contoso'", (prev,))
    db.execute("DELETE FROM audit_checkpoints WHERE chain = 'contoso'")
    db.commit()
    db.close()

    p = keypost.run("audit", "checkpoint")
    assert p.returncode != 0, p.stdout
    assert "REFUSED contoso: checkpoint_removed" in p.stdout, p.stdout
    assert "checkpoint contoso" not in p.stdout, "the rewritten chain was blessed"

    code, problems, report = verify(keypost, mirrored)
    assert code != 0
    assert {"signed_checkpoint_missing", "published_missing"} <= problems, report

    (alert, *_) = wait_for_alert(keypost, "audit-chain-tampered", timeout=15)
    assert alert["severity"] == "critical", alert
    refused = [r for r in keypost.audit("AuditChainRefused") if r["details"]["chain"] == "contoso"]
    assert refused and refused[0]["details"]["problem"] == "checkpoint_removed", refused
    # Nothing the signer did since blessed it either.
    time.sleep(0.5)
    assert not [c for c in published(keypost) if c["number"] == 1]
