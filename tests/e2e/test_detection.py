"""Detection (issue 4): each rule fires on a scenario made of real requests and stays quiet on a
benign one; alerts reach the tenant admin's Inbox; `keypost investigate` shows the blast radius.

Source addresses are varied by binding the client to other loopback addresses (127.0.0.0/8)."""

import base64
import json as jsonlib
import time

import pytest
import requests

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S, forge_access_token, new_ed25519_pem, session_from, unverified
from jmap_client import Client, api, auth

ADMIN = ("secops@contoso.test", "secops-correct-horse-battery-9")


def alerts(keypost, rule=None, realm="contoso"):
    found = keypost.cli("alerts", "list", "--realm", realm, json=True)
    return [a for a in found if rule is None or a["rule"] == rule]


def wait_for_alert(keypost, rule, predicate=lambda a: True, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [a for a in alerts(keypost, rule) if predicate(a)]
        if hits:
            return hits
        time.sleep(0.2)
    raise AssertionError(f"no {rule} alert within {timeout}s; alerts: {alerts(keypost)}")


def settle(keypost):
    """Lets the detector catch up with everything so far (it runs every 200 ms in serve)."""
    keypost.cli("alerts", "scan")


@pytest.fixture(scope="module")
def admin(keypost, world):
    keypost.create_user(ADMIN[0], ADMIN[1], "--admin")
    return Client(keypost, keypost.password_grant("contoso", *ADMIN).json()["access_token"])


@pytest.fixture(scope="module")
def reader(keypost, world):
    """A contoso user with mail and a history of reading it from 127.0.0.1 with keypost-cli."""
    email, pw = "reader@contoso.test", "reader-correct-horse-battery-8"
    keypost.create_user(email, pw)
    token = keypost.password_grant("contoso", email, pw).json()["access_token"]
    c = Client(keypost, token)
    c.email, c.password = email, pw
    c.ids = [c.import_email(f"From: x@fabrikam.test\r\nTo: {email}\r\nSubject: Note {n}\r\n\r\nBody {n}\r\n".encode())
             for n in range(30)]
    c.one("Email/get", {"ids": c.ids[:2], "properties": ["subject"]})
    return c


def read_from(keypost, source, token, ids):
    r = session_from(source).post(f"{keypost.url}/jmap/api", headers=auth(token), timeout=HTTP_TIMEOUT_S, json={
        "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
        "methodCalls": [["Email/get", {"accountId": unverified(token)[1]["sub"], "ids": ids, "properties": ["subject"]}, "g"]]})
    assert r.status_code == 200, r.text
    return r


def test_the_replay_is_refused_alerted_to_the_tenant_admin_and_investigated(keypost, world, admin, reader, tmp_path):
    """THREAT-MODEL, end to end: a consumer-realm key (imported: standing in for the stolen
    one) signs a token for an enterprise user. Refused; a critical alert in the tenant admin's
    Inbox within seconds; `keypost investigate --kid` shows the attempt and nothing read."""
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("consumers", pem)
    sub = reader.account
    forged = forge_access_token(keypost, key, kid, "contoso", sub, scope="openid email mail")
    r = api(keypost, forged, [["Email/query", {"accountId": sub}, "q"]])
    assert r.status_code == 401
    started = time.monotonic()
    (alert,) = wait_for_alert(keypost, "forged-token", lambda a: kid in a["details"]["kids"])
    assert alert["severity"] == "critical" and alert["status"] == "open"
    assert alert["details"]["reasons"] == ["KeyNotInRealm"] and alert["dedup_key"] == "127.0.0.1"

    deadline = time.monotonic() + 10
    while True:
        found = admin.one("Email/query", {"filter": {"subject": "critical alert"}})["ids"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found, "the alert is in the tenant admin's Inbox"
    (mail,) = admin.one("Email/get", {"ids": found[:1], "properties": ["subject", "from", "keywords", "mailboxIds",
                                                                       "bodyValues", "textBody"], "fetchTextBodyValues": True})["list"]
    assert kid in mail["subject"] and mail["keywords"].get("$flagged")
    assert list(mail["mailboxIds"]) == [admin.mailbox("inbox")]
    body = next(iter(mail["bodyValues"].values()))["value"]
    assert f"keypost investigate --kid='{kid}'" in body and "keypost investigate --ip='127.0.0.1'" in body
    assert time.monotonic() - started < 10

    # A second attempt with the same key is counted on the same alert, not mailed again.
    api(keypost, forge_access_token(keypost, key, kid, "contoso", sub, scope="openid email mail"), [["Email/query", {"accountId": sub}, "q"]])
    wait_for_alert(keypost, "forged-token", lambda a: kid in a["details"]["kids"] and a["count"] == 2)
    assert len(admin.one("Email/query", {"filter": {"subject": kid}})["ids"]) == 1

    radius = keypost.cli("investigate", "--kid", kid, json=True)
    assert radius["items_read"] == 0 and radius["reached"] == []
    assert [a["reason"] for a in radius["refused"]] == ["KeyNotInRealm", "KeyNotInRealm"]
    assert set(radius["tenants"]) == {"consumers", "contoso"}, "the key lives in consumers; it was tried on contoso"
    raised = keypost.audit("AlertRaised", realm="contoso")
    assert ADMIN[0] in raised[-1]["details"]["delivered_to"] or any(ADMIN[0] in r["details"]["delivered_to"] for r in raised)

    revoked = keypost.cli("keys", "revoke", kid, json=True)
    assert revoked["blast_radius"]["items_read"] == 0, "revocation reports the blast radius"


def test_forged_tokens_with_made_up_kids_from_one_source_are_one_alert_and_one_mail(keypost, world, admin, reader, tmp_path):
    """Issue 17, findings 6 and 12: twenty forged tokens from one address, each with a
    made-up kid (the first full of newlines, a fake header and shell metacharacters), are one
    critical alert that counts them, and one mail, in which the kid is shown escaped and never
    offered as a command."""
    key, _ = new_ed25519_pem(tmp_path)
    source = "127.0.5.1"
    evil = "x\n\nSubject: y'; rm -rf / #"
    kids = [evil] + [f"made-up-{n}-{time.time_ns()}" for n in range(19)]
    for kid in kids:
        token = forge_access_token(keypost, key, kid, "contoso", reader.account, scope="openid mail")
        r = session_from(source).post(f"{keypost.url}/jmap/api", headers=auth(token), timeout=HTTP_TIMEOUT_S,
                                      json={"using": ["urn:ietf:params:jmap:core"], "methodCalls": []})
        assert r.status_code == 401
    settle(keypost)
    (alert,) = [a for a in alerts(keypost, "forged-token") if a["dedup_key"] == source]
    assert alert["count"] == 20 and alert["details"]["reasons"] == ["UnknownKid"]
    assert alert["details"]["kids"] == kids, "all twenty, in order (the list keeps the first 20)"

    deadline = time.monotonic() + 10
    while True:
        found = admin.one("Email/query", {"filter": {"subject": source}})["ids"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(found) == 1, "one mail for the twenty"
    (mail,) = admin.one("Email/get", {"ids": found, "properties": ["subject", "bodyValues", "textBody"],
                                      "fetchTextBodyValues": True})["list"]
    body = next(iter(mail["bodyValues"].values()))["value"]
    escaped = r"x\n\nSubject: y'; rm -rf / #"
    assert escaped in mail["subject"] and "\n" not in mail["subject"]
    assert f"kids: {escaped}, made-up-0-" in body, body
    assert "\nSubject: y" not in body and "--kid='x" not in body, body
    assert "(a --kid value holds characters shown escaped above" in body, body
    assert f"keypost investigate --ip='{source}'" in body


def test_a_crafted_token_raises_out_of_policy_and_an_expired_one_does_not(keypost, reader):
    sub = reader.account
    header = '{"alg":"none","typ":"at+jwt","kid":"x"}'

    def b64(s):
        return base64.urlsafe_b64encode(s.encode()).rstrip(b"=").decode()

    none_token = b64(header) + "." + b64(jsonlib.dumps({"sub": sub, "iss": keypost.issuer("contoso")})) + ".AAAA"
    before = len(alerts(keypost, "token-out-of-policy"))
    assert api(keypost, none_token, [["Email/query", {"accountId": sub}, "q"]]).status_code == 401
    wait_for_alert(keypost, "token-out-of-policy", lambda a: "AlgorithmNotAllowed" in a["details"]["reasons"])
    # Benign: a garbled token is refused (Malformed) but is not a crafted token.
    assert api(keypost, "not-a-token", [["Email/query", {"accountId": sub}, "q"]]).status_code == 401
    settle(keypost)
    assert len(alerts(keypost, "token-out-of-policy")) == before + 1


def test_new_client_and_new_network(keypost, world, reader):
    c = reader
    settle(keypost)
    # Benign: the same client from the same network.
    read_from(keypost, "127.0.0.1", c.token, c.ids[:1])
    read_from(keypost, "127.0.0.42", c.token, c.ids[:1])
    settle(keypost)
    assert not alerts(keypost, "new-client") and not alerts(keypost, "new-network")
    # Another network.
    read_from(keypost, "127.9.8.7", c.token, c.ids[:1])
    (a,) = wait_for_alert(keypost, "new-network")
    assert a["details"]["source_ip"] == "127.9.8.7" and a["details"]["actor"] == c.email
    # Another client.
    keypost.create_client("contoso", "mallory-tool", "--first-party", "--grant", "password")
    token = keypost.password_grant("contoso", c.email, c.password, client_id="mallory-tool").json()["access_token"]
    read_from(keypost, "127.0.0.1", token, c.ids[:1])
    (a,) = wait_for_alert(keypost, "new-client")
    assert a["details"]["client_id"] == "mallory-tool"


def test_mail_volume_above_the_users_baseline(keypost, reader, world):
    keypost.cli("alerts", "set-rule", "contoso", "mail-volume", "--threshold", "50")
    c = reader
    c.one("Email/get", {"ids": c.ids[:20], "properties": ["subject"]})
    settle(keypost)
    assert not alerts(keypost, "mail-volume"), "under the threshold"
    c.one("Email/get", {"ids": c.ids, "properties": ["subject"]})
    (a,) = wait_for_alert(keypost, "mail-volume")
    assert a["details"]["items_last_hour"] > 50 and a["severity"] == "high"


def test_password_spraying_from_one_source(keypost):
    def fail(source, user):
        session_from(source).post(keypost.endpoint("contoso", "token_endpoint"), timeout=HTTP_TIMEOUT_S, data={
            "grant_type": "password", "username": user, "password": "Summer2026!", "client_id": CLI_CLIENT})
    for n in range(3):
        fail("127.0.3.1", f"user{n}@contoso.test")
    settle(keypost)
    assert not alerts(keypost, "password-spray"), "three accounts are not a spray"
    for n in range(10):
        fail("127.0.3.2", f"user{n}@contoso.test")
    (a,) = wait_for_alert(keypost, "password-spray")
    assert a["dedup_key"] == "127.0.3.2" and a["details"]["accounts"] >= 10


def test_credential_stuffing_on_one_account(keypost, reader):
    def fail(source):
        session_from(source).post(keypost.endpoint("contoso", "token_endpoint"), timeout=HTTP_TIMEOUT_S, data={
            "grant_type": "password", "username": "victim@contoso.test", "password": "wrong", "client_id": CLI_CLIENT})
    for n in range(2):
        fail(f"127.0.4.{n + 1}")
    settle(keypost)
    assert not alerts(keypost, "credential-stuffing")
    for n in range(2, 12):
        fail(f"127.0.4.{n + 1}")
    (a,) = wait_for_alert(keypost, "credential-stuffing")
    assert a["dedup_key"] == "victim@contoso.test"


def test_rules_can_be_turned_off_per_tenant_and_alerts_have_a_lifecycle(keypost, reader):
    keypost.cli("alerts", "set-rule", "contoso", "new-network", "--disable")
    read_from(keypost, "127.77.0.1", reader.token, reader.ids[:1])
    settle(keypost)
    assert not [a for a in alerts(keypost, "new-network") if a["details"]["source_ip"] == "127.77.0.1"]
    rules = {r["rule"]: r for r in keypost.cli("alerts", "rules", "--realm", "contoso", json=True)}
    assert rules["new-network"]["enabled"] is False and rules["mail-volume"]["threshold"] == 50
    (a, *_) = alerts(keypost, "forged-token")
    keypost.cli("alerts", "ack", str(a["id"]))
    keypost.cli("alerts", "resolve", str(a["id"]))
    assert keypost.cli("alerts", "show", str(a["id"]), json=True)["status"] == "resolved"
    assert keypost.audit("AlertUpdated", realm="contoso")[-1]["details"]["status"] == "resolved"


def admin_token(keypost, realm, user, password, resource=True, scope="openid audit"):
    data = {"grant_type": "password", "username": user, "password": password, "client_id": CLI_CLIENT, "scope": scope}
    if resource:
        data["resource"] = f"{keypost.url}/admin"
    return requests.post(keypost.endpoint(realm, "token_endpoint"), data=data, timeout=HTTP_TIMEOUT_S)


def test_the_admin_api_pages_a_tenants_own_log_and_alerts(keypost, world, admin, reader):
    r = admin_token(keypost, "contoso", *ADMIN)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert unverified(token)[1]["aud"] == [f"{keypost.url}/admin"]
    get = lambda path, **params: requests.get(f"{keypost.url}{path}", params=params, timeout=HTTP_TIMEOUT_S,
                                             headers={"Authorization": f"Bearer {token}"})
    first = get("/admin/audit", limit=5).json()
    assert len(first["records"]) == 5 and first["next"] == first["records"][-1]["id"]
    second = get("/admin/audit", limit=5, after=first["next"]).json()
    assert second["records"][0]["id"] > first["next"]
    everything = get("/admin/audit", limit=1000, operation="TokenRejected").json()["records"]
    assert everything and {r["realm"] for r in everything} == {"contoso"}, "a tenant admin sees only their tenant"
    assert get("/admin/audit", tenant="fabrikam").status_code == 403
    assert get("/admin/audit", since="yesterday").status_code == 400
    assert {a["realm"] for a in get("/admin/alerts").json()["alerts"]} == {"contoso"}

    # The admin API is never in a token's default audience, and the audit scope is for admins.
    default = keypost.password_grant("contoso", *ADMIN).json()["access_token"]
    r = requests.get(f"{keypost.url}/admin/audit", headers={"Authorization": f"Bearer {default}"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    refused = admin_token(keypost, "contoso", reader.email, reader.password)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"
    no_scope = admin_token(keypost, "contoso", *ADMIN, scope="openid").json()["access_token"]
    r = requests.get(f"{keypost.url}/admin/audit", headers={"Authorization": f"Bearer {no_scope}"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 403 and "insufficient_scope" in r.headers["WWW-Authenticate"]
    assert requests.get(f"{keypost.url}/admin/audit", timeout=HTTP_TIMEOUT_S).status_code == 401


def test_a_provider_admin_reads_every_tenant(keypost, world):
    boss = ("boss@keypost.test", "boss-correct-horse-battery-11")
    keypost.create_user(*boss, "--admin")
    token = admin_token(keypost, "consumers", *boss).json()["access_token"]
    get = lambda **params: requests.get(f"{keypost.url}/admin/audit", params={"limit": 1000, **params}, timeout=HTTP_TIMEOUT_S,
                                        headers={"Authorization": f"Bearer {token}"}).json()["records"]
    assert {"contoso", "fabrikam"} <= {r["realm"] for r in get()}
    assert {r["realm"] for r in get(tenant="fabrikam")} == {"fabrikam"}
