"""Refresh-token rotation and reuse detection (THREAT-MODEL step 5): replaying a rotated refresh
token revokes the whole family — every refresh and access token descended from the same grant."""

import sqlite3
import threading
import time

import requests
from conftest import User, unverified


def test_refresh_rotates_the_refresh_token(keypost, world):
    first = keypost.tokens_for(world.alice)
    r = keypost.refresh("contoso", first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] and second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert unverified(second["access_token"])[1]["sub"] == unverified(first["access_token"])[1]["sub"]
    assert keypost.userinfo("contoso", second["access_token"]).status_code == 200


def test_reusing_a_rotated_refresh_token_revokes_the_family(keypost, world):
    first = keypost.tokens_for(world.alice)
    r = keypost.refresh("contoso", first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert keypost.userinfo("contoso", second["access_token"]).status_code == 200

    replay = keypost.refresh("contoso", first["refresh_token"])
    assert replay.status_code == 400, replay.text
    assert replay.json()["error"] == "invalid_grant"
    assert "access_token" not in replay.json()

    descendant = keypost.refresh("contoso", second["refresh_token"])
    assert descendant.status_code == 400, descendant.text
    assert descendant.json()["error"] == "invalid_grant"

    for token in (first["access_token"], second["access_token"]):
        r = keypost.userinfo("contoso", token)
        assert r.status_code == 401, f"family access token still accepted: {r.text}"



def test_refused_refresh_tokens_are_audited_with_their_reason(keypost, world):
    first = keypost.tokens_for(world.alice)
    # A refresh token of another realm, presented to contoso.
    foreign = keypost.tokens_for(world.bob)["refresh_token"]
    assert keypost.refresh("contoso", foreign).status_code == 400
    # A made-up one.
    assert keypost.refresh("contoso", "kpr1.nope." + "A" * 43).status_code == 400
    # A replay.
    assert keypost.refresh("contoso", first["refresh_token"]).status_code == 200
    assert keypost.refresh("contoso", first["refresh_token"]).status_code == 400

    records = keypost.cli("audit", "search", "--realm", "contoso", "--operation", "TokenRejected", json=True)
    reasons = {r["details"]["reason"] for r in records if r["details"].get("token_type") == "refresh_token"}
    assert {"TenantMismatch", "NotIssued", "RefreshTokenReused"} <= reasons, reasons


def test_concurrent_uses_of_one_refresh_token_issue_once_and_kill_the_family(keypost, world):
    """A stolen refresh token raced against its owner: whichever way the race goes (the second
    use seen when the grant reads the ledger, or only when its write finds the token consumed),
    exactly one use gets tokens, the others get invalid_grant, and the family dies."""
    import concurrent.futures

    first = keypost.tokens_for(world.alice)
    token_url = keypost.endpoint("contoso", "token_endpoint")
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "keypost-cli"}
    # Connections opened beforehand, so the eight uses leave together.
    sessions = [requests.Session() for _ in range(8)]
    for s in sessions:
        s.get(f"{keypost.url}/healthz", timeout=10)
    start = threading.Barrier(8)

    def use(session):
        start.wait()
        return session.post(token_url, data=form, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(use, sessions))
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 400]
    # Exactly one rotation commits; each other use is refused, either by the grant's read of
    # the ledger or by its own write finding the token consumed.
    assert len(ok) == 1 and len(refused) == 7, [a.text for a in answers]
    assert all(a.json()["error"] == "invalid_grant" for a in refused)
    # The winner's tokens belong to the revoked family too.
    for a in ok:
        assert keypost.userinfo("contoso", a.json()["access_token"]).status_code == 401
        assert keypost.refresh("contoso", a.json()["refresh_token"]).status_code == 400
    # Every refused use is audited: as a reuse, or — once a reuse has revoked the family — as
    # a revoked token.
    jti = first["refresh_token"].split(".")[1]
    rejected = keypost.cli("audit", "search", "--realm", "contoso", "--operation", "TokenRejected", "--jti", jti, json=True)
    reasons = [r["details"]["reason"] for r in rejected]
    assert len(reasons) == 7 and set(reasons) <= {"RefreshTokenReused", "TokenRevoked"}, reasons
    reused = keypost.cli("audit", "search", "--realm", "contoso", "--operation", "RefreshTokenReused", "--jti", jti, json=True)
    assert len(reused) == reasons.count("RefreshTokenReused") >= 1, (reused, reasons)


def refused_reasons(keypost, refresh_token: str) -> list[str]:
    jti = refresh_token.split(".")[1]
    records = keypost.cli("audit", "search", "--realm", "contoso", "--operation", "TokenRejected", "--jti", jti, json=True)
    return [r["details"]["reason"] for r in records]


def test_a_refresh_token_rotated_by_another_node_is_a_reuse_here_too(keypost, world):
    """A node remembers the refresh tokens it minted, so a refresh reads nothing from the
    database. Another node's use of such a token is not in that memory: the rotation's durable
    write, which requires the token unused, must still refuse the second use and revoke the
    family."""
    first = keypost.tokens_for(world.alice)
    r = keypost.refresh("contoso", first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()  # minted by this node, and remembered by it
    # Another node (sharing the database) rotates `second`.
    with sqlite3.connect(keypost.data_dir / "keypost.db", timeout=10) as db:
        n = db.execute(
            "UPDATE ledger SET used_at = ? WHERE jti = ? AND used_at IS NULL",
            (int(time.time()), second["refresh_token"].split(".")[1]),
        ).rowcount
    assert n == 1

    replay = keypost.refresh("contoso", second["refresh_token"])
    assert replay.status_code == 400, replay.text
    assert replay.json()["error"] == "invalid_grant"
    assert keypost.userinfo("contoso", second["access_token"]).status_code == 401, "the family is revoked"
    assert refused_reasons(keypost, second["refresh_token"]) == ["RefreshTokenReused"]


def test_a_remembered_refresh_still_sees_an_account_disabled_by_another_process(keypost, world):
    """What the token endpoint remembers of a chain (its session and account) holds only until
    the revocation generation moves: disabling the account from the CLI (another process) must
    stop the very next refresh."""
    dave = User("dave@contoso.test", "dave-correct-horse-battery-1", "contoso")
    keypost.create_user(dave.email, dave.password)
    token = keypost.tokens_for(dave)["refresh_token"]
    for _ in range(3):  # the first refresh reads the session and account; the next ones need not
        r = keypost.refresh("contoso", token)
        assert r.status_code == 200, r.text
        token = r.json()["refresh_token"]

    keypost.cli("user", "disable", dave.email)
    r = keypost.refresh("contoso", token)
    assert r.status_code == 400, r.text
    assert refused_reasons(keypost, token) == ["AccountDisabled"]


def test_a_refresh_that_drops_offline_access_stays_in_the_family(keypost, world):
    """A refresh may narrow its scope and so get no new refresh token; the access token it gets
    still belongs to the family, and a reuse that revokes the family revokes it too."""
    first = keypost.tokens_for(world.alice)
    r = requests.post(
        keypost.endpoint("contoso", "token_endpoint"),
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
              "client_id": "keypost-cli", "scope": "openid mail"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    narrowed = r.json()
    assert "refresh_token" not in narrowed
    assert keypost.userinfo("contoso", narrowed["access_token"]).status_code == 200

    assert keypost.refresh("contoso", first["refresh_token"]).status_code == 400  # a reuse
    assert keypost.userinfo("contoso", narrowed["access_token"]).status_code == 401


def test_a_refresh_racing_a_revocation_elsewhere_gets_nothing(keypost, world):
    """Another node revokes the family while this one still remembers the token (it would learn
    of the revocation up to 25 ms later): the rotation's write, not the read, refuses it — the
    client is told invalid_grant, audited as TokenRevoked, nothing new lives, and the family's
    access token is refused from then on."""
    first = keypost.tokens_for(world.alice)
    r = keypost.refresh("contoso", first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    db_path = keypost.data_dir / "keypost.db"
    with sqlite3.connect(db_path, timeout=10) as db:
        (family,) = db.execute(
            "SELECT family_id FROM ledger WHERE jti = ?", (second["refresh_token"].split(".")[1],)
        ).fetchone()
        db.execute("INSERT INTO revoked_families(family_id, revoked_at) VALUES (?, ?)", (family, int(time.time())))
    count_rows = "SELECT COUNT(*) FROM ledger WHERE family_id = ?"
    with sqlite3.connect(db_path, timeout=10) as db:
        (before,) = db.execute(count_rows, (family,)).fetchone()

    r = keypost.refresh("contoso", second["refresh_token"])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    # The refused rotation proves the revocation: this node's validations see it at once, not
    # up to 25 ms later (store::GENERATIONS_STALE_AFTER) as another process's change otherwise.
    assert keypost.userinfo("contoso", second["access_token"]).status_code == 401
    assert refused_reasons(keypost, second["refresh_token"]) == ["TokenRevoked"]
    with sqlite3.connect(db_path, timeout=10) as db:
        (after,) = db.execute(count_rows, (family,)).fetchone()
    assert after == before, "the refused refresh issued nothing"
