"""Response (issue 4): `keypost sessions revoke --user | --tenant | --client` cuts off every
session and token in scope at once, refused from the next request on, and audited."""


def userinfo_ok(keypost, realm, token):
    return keypost.userinfo(realm, token).status_code == 200


def test_revoke_one_user_a_client_and_a_tenant(keypost, world):
    alice = keypost.tokens_for(world.alice)
    bob = keypost.tokens_for(world.bob)
    carol = keypost.tokens_for(world.carol)
    keypost.create_client("contoso", "sync-tool", "--first-party", "--grant", "password")
    tool = keypost.password_grant("contoso", world.alice.email, world.alice.password, client_id="sync-tool").json()
    assert all(userinfo_ok(keypost, r, t["access_token"]) for r, t in
               [("contoso", alice), ("fabrikam", bob), ("consumers", carol), ("contoso", tool)])

    out = keypost.cli("sessions", "revoke", "--client", "contoso/sync-tool", json=True)
    assert out["tokens"] >= 1 and out["sessions"] == 0
    assert not userinfo_ok(keypost, "contoso", tool["access_token"])
    assert userinfo_ok(keypost, "contoso", alice["access_token"]), "other clients' tokens live on"

    out = keypost.cli("sessions", "revoke", "--user", world.alice.email, json=True)
    assert out["tokens"] >= 2
    assert not userinfo_ok(keypost, "contoso", alice["access_token"])
    assert keypost.refresh("contoso", alice["refresh_token"]).status_code == 400, "refresh tokens too"
    assert userinfo_ok(keypost, "fabrikam", bob["access_token"])

    keypost.cli("sessions", "revoke", "--tenant", "fabrikam")
    assert not userinfo_ok(keypost, "fabrikam", bob["access_token"])
    assert userinfo_ok(keypost, "consumers", carol["access_token"]), "other tenants are untouched"
    # A new sign-in works again.
    assert userinfo_ok(keypost, "fabrikam", keypost.tokens_for(world.bob)["access_token"])

    records = keypost.audit("SessionsRevoked")
    assert [r["target"] for r in records] == ["client contoso/sync-tool", f"account {world.alice.email}", "tenant fabrikam"]
    assert keypost.run("sessions", "revoke", "--user", world.alice.email, "--tenant", "fabrikam").returncode != 0
