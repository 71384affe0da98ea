"""`keypost keys revoke KID` takes effect at once in the running server."""

from conftest import rejections, unverified, verify_access_token


def test_revoked_signing_key_kills_its_tokens_at_once(keypost, world):
    token = keypost.tokens_for(world.alice)["access_token"]
    kid = unverified(token)[0]["kid"]
    assert keypost.userinfo("contoso", token).status_code == 200

    keypost.cli("keys", "revoke", kid)

    r = keypost.userinfo("contoso", token)
    assert r.status_code == 401, f"token signed by a revoked key still accepted: {r.text}"
    assert world.alice.email not in r.text
    (record, *_) = rejections(keypost, "KeyRevoked", kid)
    assert record["realm"] == "contoso"


def test_sign_in_after_revocation_uses_a_new_key(keypost, world):
    old = unverified(keypost.tokens_for(world.alice)["access_token"])[0]["kid"]
    keypost.cli("keys", "revoke", old)

    token = keypost.tokens_for(world.alice)["access_token"]
    new = unverified(token)[0]["kid"]
    assert new != old
    verify_access_token(keypost, "contoso", token)
    assert keypost.userinfo("contoso", token).status_code == 200


def test_keys_list_shows_the_key_as_revoked(keypost, world):
    kid = unverified(keypost.tokens_for(world.alice)["access_token"])[0]["kid"]
    keypost.cli("keys", "revoke", kid)
    listed = {k["kid"]: k for k in keypost.cli("keys", "list", "--realm", "contoso", json=True)}
    assert kid in listed, listed
    entry = listed[kid]
    assert entry.get("revoked_at"), entry
    assert entry.get("state", "revoked") == "revoked", entry
