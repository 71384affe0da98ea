"""Refresh-token rotation and reuse detection (THREAT-MODEL step 5): replaying a rotated refresh
token revokes the whole family — every refresh and access token descended from the same grant."""

from conftest import unverified


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
