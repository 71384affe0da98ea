"""RFC 7009 token revocation by the public `keypost-cli` client."""

import requests

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S


def revoke(keypost, token, hint=None):
    data = {"token": token, "client_id": CLI_CLIENT}
    if hint:
        data["token_type_hint"] = hint
    return requests.post(
        keypost.endpoint("contoso", "revocation_endpoint"), data=data, timeout=HTTP_TIMEOUT_S
    )


def test_revoked_refresh_token_can_no_longer_refresh(keypost, world):
    tokens = keypost.tokens_for(world.alice)
    r = revoke(keypost, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    again = keypost.refresh("contoso", tokens["refresh_token"])
    assert again.status_code == 400, again.text
    assert again.json()["error"] == "invalid_grant"


def test_revoked_access_token_is_refused_at_userinfo(keypost, world):
    tokens = keypost.tokens_for(world.alice)
    assert keypost.userinfo("contoso", tokens["access_token"]).status_code == 200
    r = revoke(keypost, tokens["access_token"], hint="access_token")
    assert r.status_code == 200, r.text
    after = keypost.userinfo("contoso", tokens["access_token"])
    assert after.status_code == 401, after.text


def test_revoking_an_unknown_token_still_answers_200(keypost, world):
    r = revoke(keypost, "no-such-token")
    assert r.status_code == 200, r.text  # RFC 7009 §2.2
