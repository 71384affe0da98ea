"""The audit log nobody can quietly edit (issue 4): each tenant's records form a hash chain,
checkpoints of each chain's head are signed with the realm's audit key, and `keypost audit
verify` finds every edit, deletion, insertion and reordering made directly in the database,
even by someone who rewrites the whole chain with the published algorithm.

The link is recomputed here by an independent implementation written from
docs/design/003-audit-chain.md, so the format is what the document says."""

import base64
import hashlib
import time
import json
import shutil
import sqlite3
import struct

import pytest
import requests

from conftest import Keypost


def link(prev: bytes, seq: int, row: sqlite3.Row) -> bytes:
    """docs/design/003-audit-chain.md: the link of one record."""
    m = bytearray(b"keypost-audit-v1") + prev + struct.pack(">Q", seq)
    fields = [row["chain"], str(row["time"]), row["realm"], row["actor"], row["operation"], row["target"],
              row["result"], row["source_ip"], row["user_agent"], row["client_id"], row["jti"], row["kid"],
              row["details"]]
    for f in fields:
        if f is None:
            m += b"\x00"
        else:
            b = f.encode()
            m += b"\x01" + struct.pack(">Q", len(b)) + b
    return hashlib.sha256(m).digest()


@pytest.fixture(scope="module")
def activity(keypost: Keypost, world):
    for user in (world.alice, world.bob, world.carol):
        keypost.tokens_for(user)
    keypost.password_grant("contoso", world.alice.email, "wrong password")
    # Every chain's head gets a checkpoint: made here, or already made by the signer, which
    # signs them on its own (every pass, and at once when a realm appears). The command names
    # only the chains it signed, so which of the two covered contoso's activity varies.
    keypost.cli("audit", "checkpoint")
    again = keypost.cli("audit", "checkpoint")
    assert "checkpoint contoso" not in again, f"contoso's head was left uncovered: {again}"
    keypost.tokens_for(world.alice)  # and more after the checkpoint
    return keypost


def tampered_copy(keypost: Keypost, tmp_path, sql: str | None = None, fn=None):
    """A copy of the live database, changed the way someone with file access would. The
    key-encryption key and the signer's record of the heads it signed (beside the KEK, out of
    the intruder's reach) are copied as they were, first: the copy's signer must not share the
    live one's record, or a pass over the copy would change what the live signer remembers."""
    data = tmp_path / "copy"
    data.mkdir(parents=True)
    kek = keypost.data_dir.with_name(keypost.data_dir.name + ".kek")
    copied_kek = tmp_path / "copy.kek"
    heads = kek.with_name(kek.name + ".audit-heads")
    for src, dst in ((heads, copied_kek.with_name(copied_kek.name + ".audit-heads")), (kek, copied_kek)):
        if src.exists():
            shutil.copyfile(src, dst)
            dst.chmod(0o600)
    src = sqlite3.connect(keypost.data_dir / "keypost.db")
    dst = sqlite3.connect(data / "keypost.db")
    src.backup(dst)
    src.close()
    dst.row_factory = sqlite3.Row
    dst.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
    if sql:
        dst.executescript(sql)
    if fn:
        fn(dst)
    dst.commit()
    dst.close()
    env = {**keypost.env, "KEYPOST_DATA_DIR": str(data), "KEYPOST_KEYS_KEK_FILE": str(copied_kek)}
    return env


def verify(keypost: Keypost, env=None, realm="contoso"):
    p = keypost.run("audit", "verify", "--realm", realm, "--json", env=env)
    assert p.stdout.startswith("["), p.stderr
    (report,) = json.loads(p.stdout)
    return p.returncode, report


def contoso_ids(keypost):
    db = sqlite3.connect(keypost.data_dir / "keypost.db")
    ids = [r[0] for r in db.execute("SELECT id FROM audit WHERE chain = 'contoso' ORDER BY id")]
    db.close()
    return ids


def test_an_untouched_log_verifies_and_matches_the_documented_format(activity):
    code, report = verify(activity)
    assert code == 0 and report["problems"] == [], report
    assert report["records"] >= 3 and report["checkpoints"] >= 1
    db = sqlite3.connect(activity.data_dir / "keypost.db")
    db.row_factory = sqlite3.Row
    prev = bytes(32)
    for row in db.execute("SELECT * FROM audit WHERE chain = 'contoso' ORDER BY seq"):
        prev = link(prev, row["seq"], row)
        assert prev == row["link"], f"record {row['id']}: the documented link differs from the stored one"
    all_chains = json.loads(activity.cli("audit", "verify", "--json"))
    assert {c["chain"] for c in all_chains} >= {"contoso", "fabrikam", "consumers"}


def test_an_edited_record_is_found(activity, tmp_path):
    victim = contoso_ids(activity)[1]
    env = tampered_copy(activity, tmp_path, f"UPDATE audit SET actor = 'someone-else' WHERE id = {victim};")
    code, report = verify(activity, env)
    assert code != 0
    assert {"problem": "altered", "id": victim, "seq": 2} in report["problems"]


def test_a_deleted_record_is_found(activity, tmp_path):
    victim = contoso_ids(activity)[1]
    env = tampered_copy(activity, tmp_path, f"DELETE FROM audit WHERE id = {victim};")
    code, report = verify(activity, env)
    assert code != 0
    assert {"problem": "missing", "from_seq": 2, "to_seq": 2} in report["problems"]


def test_an_inserted_record_is_found(activity, tmp_path):
    env = tampered_copy(activity, tmp_path, """
        INSERT INTO audit(time, realm, actor, operation, result, details, chain)
        VALUES (1, 'contoso', 'alibi@contoso.test', 'SignInSucceeded', 'success', '{}', 'contoso');""")
    code, report = verify(activity, env)
    assert code != 0
    assert any(p["problem"] == "unlinked" for p in report["problems"]), report


def test_reordered_records_are_found(activity, tmp_path):
    first, second = contoso_ids(activity)[:2]
    env = tampered_copy(activity, tmp_path, f"""
        UPDATE audit SET seq = -1 WHERE id = {first};
        UPDATE audit SET seq = 1 WHERE id = {second};
        UPDATE audit SET seq = 2 WHERE id = {first};""")
    code, report = verify(activity, env)
    assert code != 0
    assert any(p["problem"] in ("out_of_order", "altered") for p in report["problems"]), report


def test_a_chain_rewritten_with_the_published_algorithm_fails_its_signed_checkpoint(activity, tmp_path):
    """The attacker knows the format (it is documented) and can write the file, but cannot use
    the audit key: every link recomputed, the head fixed, and still the checkpoint disagrees."""
    victim = contoso_ids(activity)[0]

    def rewrite(db):
        db.execute("UPDATE audit SET actor = 'nobody' WHERE id = ?", (victim,))
        prev = bytes(32)
        for row in db.execute("SELECT * FROM audit WHERE chain = 'contoso' ORDER BY seq").fetchall():
            prev = link(prev, row["seq"], row)
            db.execute("UPDATE audit SET link = ? WHERE id = ?", (prev, row["id"]))
        db.execute("UPDATE audit_heads SET link = ? WHERE chain = 'contoso'", (prev,))

    env = tampered_copy(activity, tmp_path, fn=rewrite)
    code, report = verify(activity, env)
    assert code != 0
    kinds = {p["problem"] for p in report["problems"]}
    assert kinds == {"checkpoint_mismatch"}, report


def test_a_truncated_chain_is_found(activity, tmp_path):
    def truncate(db):
        (cp,) = db.execute("SELECT max(seq) FROM audit_checkpoints WHERE chain = 'contoso'").fetchone()
        db.execute("DELETE FROM audit WHERE chain = 'contoso' AND seq >= ?", (cp,))
        row = db.execute("SELECT seq, link FROM audit WHERE chain = 'contoso' ORDER BY seq DESC LIMIT 1").fetchone()
        db.execute("UPDATE audit_heads SET seq = ?, link = ? WHERE chain = 'contoso'", (row["seq"], row["link"]))

    env = tampered_copy(activity, tmp_path, fn=truncate)
    code, report = verify(activity, env)
    assert code != 0
    assert any(p["problem"] == "truncated" for p in report["problems"]), report


def test_the_log_refuses_edits_through_sql_and_audit_keys_stay_out_of_jwks(activity):
    db = sqlite3.connect(activity.data_dir / "keypost.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'x' WHERE id = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit_checkpoints")
    db.close()
    audit_kids = {k["kid"] for k in activity.cli("keys", "list", "--realm", "contoso", json=True) if k["purpose"] == "audit"}
    assert audit_kids, "every realm has an audit key"
    jwks = activity.discovery("contoso")
    published = {k["kid"] for k in requests.get(jwks["jwks_uri"], timeout=10).json()["keys"]}
    assert not (audit_kids & published)


def test_export_as_json_lines_and_ocsf(activity):
    searched = activity.cli("audit", "search", "--tenant", "contoso", "--limit", "100000", json=True)
    lines = activity.cli("audit", "export", "--tenant", "contoso").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r["id"] for r in searched]
    events = [json.loads(line) for line in activity.cli("audit", "export", "--tenant", "contoso", "--format", "ocsf").splitlines()]
    assert len(events) == len(searched)
    failed = [e for e in events if e["message"] == "SignInFailed"]
    assert failed and failed[0]["class_uid"] == 3002 and failed[0]["status_id"] == 2
    assert all(e["metadata"]["tenant_uid"] == "contoso" and e["metadata"]["product"]["name"] == "Keypost" for e in events)
    assert activity.cli("audit", "export", "--tenant", "contoso", "--until", "2000-01-01T00:00:00Z") == ""
    assert activity.run("audit", "export", "--format", "csv").returncode != 0


def test_retention_expires_a_prefix_behind_a_signed_tombstone(activity, world, tmp_path):
    """Runs last: it expires the records the tests above used."""
    time.sleep(1.1)  # so every record so far is strictly older than now
    out = activity.cli("audit", "expire", "--older-than", "0s")
    assert "contoso:" in out and "tombstone signed by" in out
    activity.tokens_for(world.alice)  # the chain goes on after the tombstone
    activity.cli("audit", "checkpoint")
    code, report = verify(activity)
    assert code == 0 and report["problems"] == [], report
    assert report["records"] >= 1

    # Removing records by hand, with or without a made-up tombstone, is not retention.
    def first_live(db):
        return db.execute("SELECT seq, link FROM audit WHERE chain = 'contoso' ORDER BY seq LIMIT 1").fetchone()

    def cut_without_tombstone(db):
        seq, _ = first_live(db)
        db.execute("DELETE FROM audit WHERE chain = 'contoso' AND seq = ?", (seq,))
    env = tampered_copy(activity, tmp_path / "a", fn=cut_without_tombstone)
    code, report = verify(activity, env)
    assert code != 0 and report["problems"][0]["problem"] == "missing", report

    def forged_tombstone(db):
        seq, link = first_live(db)
        db.execute("DELETE FROM audit WHERE chain = 'contoso' AND seq <= ?", (seq,))
        (kid,) = db.execute("SELECT kid FROM keys WHERE realm = 'contoso' AND purpose = 'audit'").fetchone()
        db.execute("INSERT INTO audit_tombstones VALUES ('contoso', ?, ?, 1, 1, ?, ?)", (seq, link, kid, b"\x00" * 64))
    env = tampered_copy(activity, tmp_path / "b", fn=forged_tombstone)
    code, report = verify(activity, env)
    assert code != 0 and {p["problem"] for p in report["problems"]} == {"bad_tombstone"}, report


def test_a_planted_audit_key_cannot_vouch_for_a_rewritten_chain(activity, tmp_path):
    """Someone who can write the database adds an audit key of their own, rewrites the chain and
    signs a fresh checkpoint with it. Only keys whose sealed private half opens under the
    key-encryption key vouch for the log, so the forgery is found."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    mallory = Ed25519PrivateKey.generate()
    x = base64.urlsafe_b64encode(mallory.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).rstrip(b"=").decode()

    def plant(db):
        db.execute("UPDATE audit SET actor = 'nobody' WHERE chain = 'contoso' AND seq = 1")
        prev = bytes(32)
        for row in db.execute("SELECT * FROM audit WHERE chain = 'contoso' ORDER BY seq").fetchall():
            prev = link(prev, row["seq"], row)
            db.execute("UPDATE audit SET link = ? WHERE id = ?", (prev, row["id"]))
        (seq,) = db.execute("SELECT max(seq) FROM audit WHERE chain = 'contoso'").fetchone()
        db.execute("UPDATE audit_heads SET link = ?, seq = ? WHERE chain = 'contoso'", (prev, seq))
        jwk = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "mallory", "use": "sig", "alg": "EdDSA"})
        db.execute("INSERT INTO keys(kid, realm, purpose, alg, public_jwk, sealed, origin, created_at, activates_at, expires_at) "
                   "VALUES ('mallory', 'contoso', 'audit', 'EdDSA', ?, x'00', 'generated', 1, 1, 9999999999)", (jwk,))
        db.execute("DROP TRIGGER audit_checkpoints_no_delete")
        db.execute("DELETE FROM audit_checkpoints WHERE chain = 'contoso'")
        t = int(time.time()) + 5
        zeros = bytes(32)
        message = f"keypost-audit-checkpoint-v2\ncontoso\n1\n{seq}\n{prev.hex()}\n{t}\n{zeros.hex()}".encode()
        db.execute("INSERT INTO audit_checkpoints(chain, seq, link, time, kid, signature, number, prev) "
                   "VALUES ('contoso', ?, ?, ?, 'mallory', ?, 1, ?)", (seq, prev, t, mallory.sign(message), zeros))

    env = tampered_copy(activity, tmp_path, fn=plant)
    code, report = verify(activity, env)
    assert code != 0
    assert "bad_signature" in {p["problem"] for p in report["problems"]}, report


def test_the_signer_will_not_checkpoint_a_chain_edited_since_its_last_checkpoint(activity, world, tmp_path):
    activity.tokens_for(world.alice)

    def edit(db):
        # A record the last checkpoint covers, then every link after it, as an attacker would.
        db.execute("UPDATE audit SET actor = 'nobody' WHERE chain = 'contoso' AND seq = (SELECT min(seq) FROM audit WHERE chain = 'contoso')")
        first = db.execute("SELECT min(seq) FROM audit WHERE chain = 'contoso'").fetchone()[0]
        prev = db.execute("SELECT link FROM audit_tombstones WHERE chain = 'contoso' ORDER BY through_seq DESC LIMIT 1").fetchone()
        prev = prev[0] if prev and first > 1 else bytes(32)
        for row in db.execute("SELECT * FROM audit WHERE chain = 'contoso' ORDER BY seq").fetchall():
            prev = link(prev, row["seq"], row)
            db.execute("UPDATE audit SET link = ? WHERE id = ?", (prev, row["id"]))
        db.execute("UPDATE audit_heads SET link = ? WHERE chain = 'contoso'", (prev,))

    env = tampered_copy(activity, tmp_path, fn=edit)
    p = activity.run("audit", "checkpoint", env=env)
    assert "checkpoint contoso" not in p.stdout, "a tampered chain was blessed"
    # (Records appended since the last checkpoint are not yet protected: a minute's window,
    # docs/design/003-audit-chain.md.)
    code, report = verify(activity, env)
    assert code != 0
