"""The issuance ledger does not grow for ever: `keypost sessions prune` (which `serve` also runs
every few minutes) deletes the rows of tokens minted longer ago than the longest lifetime plus
the retention, once they have expired. Anything that may still be valid stays, and a revoked
family stays revoked however long ago."""

import secrets
import sqlite3
import time

DAY = 86_400


def old_jti(seconds_ago: int) -> str:
    """A jti as Keypost mints them, minted `seconds_ago`: 12 hex digits of milliseconds first."""
    ms = int((time.time() - seconds_ago) * 1000)
    return f"{ms:012x}" + secrets.token_urlsafe(10)


def ledger_row(jti: str, minted: int, expires: int):
    return (jti, "contoso", "access", "nobody", "keypost-cli", None, None, None, "mail", "[]",
            minted, expires, b"\x00" * 32, None, None)


def test_prune_deletes_only_what_no_token_needs(keypost, world):
    live = keypost.tokens_for(world.alice)
    now = int(time.time())
    long_ago = 400 * DAY
    expired, still_valid = old_jti(long_ago), old_jti(long_ago)
    db_path = keypost.data_dir / "keypost.db"
    with sqlite3.connect(db_path, timeout=10) as db:
        db.executemany(
            "INSERT INTO ledger(jti, realm, kind, subject, client_id, kid, session_id, family_id, "
            "scope, audience, issued_at, expires_at, token_hash, revoked_at, used_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [ledger_row(expired, now - long_ago, now - long_ago + 600),
             # Minted as long ago, but (a lifetime configured longer back then) still valid.
             ledger_row(still_valid, now - long_ago, now + DAY)],
        )
        db.execute("INSERT INTO revoked_families(family_id, revoked_at) VALUES (?, ?)",
                   ("family-long-ago", now - long_ago))

    out = keypost.cli("sessions", "prune", json=True)
    # 0 only if `serve`'s own pass (every five minutes) got there first.
    assert out["ledger_rows_pruned"] in (0, 1), out

    with sqlite3.connect(db_path, timeout=10) as db:
        kept = {j for (j,) in db.execute("SELECT jti FROM ledger WHERE jti IN (?, ?)", (expired, still_valid))}
        families = {f for (f,) in db.execute("SELECT family_id FROM revoked_families")}
    assert kept == {still_valid}
    assert "family-long-ago" in families
    # Nothing live was touched: the fresh token validates and refreshes.
    assert keypost.userinfo("contoso", live["access_token"]).status_code == 200
    assert keypost.refresh("contoso", live["refresh_token"]).status_code == 200
    assert keypost.cli("sessions", "prune", json=True) == {"ledger_rows_pruned": 0}
