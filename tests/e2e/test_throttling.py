"""Password guessing against one account is throttled, and the throttling is audited.

A dedicated account takes the guesses so no other test is affected."""

import pytest
import requests

REALM = "contoso"
THROTTLED = "throttled@contoso.test"
PASSWORD = "throttled-correct-horse-battery-9"
WRONG_GUESSES = 6


def is_throttled(r: requests.Response) -> bool:
    if r.status_code == 429:
        return True
    if r.status_code != 400:
        return False
    body = r.json()
    return body.get("error") == "invalid_grant" and "too many" in body.get(
        "error_description", ""
    ).lower()


@pytest.fixture(scope="module")
def after_guessing(keypost, world):
    """Six wrong passwords for the dedicated account, then the right one: its response."""
    keypost.create_user(THROTTLED, PASSWORD)
    first = keypost.password_grant(REALM, THROTTLED, PASSWORD)
    assert first.status_code == 200, f"the account cannot sign in to begin with: {first.text}"
    for i in range(WRONG_GUESSES):
        r = keypost.password_grant(REALM, THROTTLED, f"wrong-guess-{i}")
        assert r.status_code in (400, 429), r.text
        assert "access_token" not in r.text
    return keypost.password_grant(REALM, THROTTLED, PASSWORD)


def test_after_six_wrong_passwords_even_the_right_one_is_refused(after_guessing):
    r = after_guessing
    assert "access_token" not in r.text, "right password accepted while throttled"
    assert is_throttled(r), f"not a throttling answer: {r.status_code} {r.text}"


def test_throttling_is_audited(keypost, after_guessing):
    records = keypost.audit(operation="SignInThrottled")
    assert records, "no SignInThrottled audit record"
    assert all(rec["operation"] == "SignInThrottled" for rec in records), records
    assert any(rec.get("realm") == REALM for rec in records), records


def test_throttling_one_account_leaves_others_alone(keypost, world, after_guessing):
    r = keypost.password_grant(REALM, world.alice.email, world.alice.password)
    assert r.status_code == 200, r.text
