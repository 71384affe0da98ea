"""Sending as someone (RFC 8621 §6–7) and keeping within a quota (RFC 9425): identities a user
may add but never with another's address; submissions recorded with each recipient's outcome;
a full mailbox refuses delivery (552) without losing the sender's copy; quotas set per account
from the CLI and reported over JMAP. What recipients receive: never the Bcc; never a From or
Sender naming anyone but the sender (refused, and the refusal audited); and the answer for an
address without an account is the same wherever it is, so submissions cannot list accounts."""

import pytest
import requests

from conftest import HTTP_TIMEOUT_S
from jmap_client import Client, api, auth


@pytest.fixture(scope="module")
def users(keypost, world):
    keypost.create_user("frank@contoso.test", "frank-correct-horse-battery-6")
    keypost.create_user("gwen@contoso.test", "gwen-correct-horse-battery-7")
    def client(email, pw):
        return Client(keypost, keypost.password_grant("contoso", email, pw).json()["access_token"])
    return client("frank@contoso.test", "frank-correct-horse-battery-6"), client("gwen@contoso.test", "gwen-correct-horse-battery-7")


def draft(c, to, subject, sender="frank@contoso.test"):
    raw = f"From: Frank <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHi there.\r\n".encode()
    return c.import_email(raw, role="drafts", keywords=["$draft"])


def test_identities(keypost, users):
    frank, _ = users
    (primary,) = frank.one("Identity/get", {})["list"]
    assert primary["email"] == "frank@contoso.test" and primary["mayDelete"] is False
    state = frank.one("Identity/get", {"ids": []})["state"]
    out = frank.one("Identity/set", {"create": {
        "work": {"name": "Frank (Projects)", "email": "FRANK@contoso.test", "textSignature": "-- \nFrank",
                 "replyTo": [{"name": "Projects", "email": "projects@contoso.test"}]},
        "spoof": {"name": "CEO", "email": "ceo@contoso.test"},
        "bad": {"name": 7},
    }})
    work = out["created"]["work"]["id"]
    assert out["notCreated"]["spoof"]["type"] == "forbiddenFrom"
    assert out["notCreated"]["bad"]["type"] == "invalidProperties"
    out = frank.one("Identity/set", {"update": {work: {"htmlSignature": "<p>Frank</p>"}, primary["id"]: {"email": "x@contoso.test"}},
                                     "destroy": [primary["id"]]})
    assert out["updated"] == {work: None}
    assert out["notUpdated"][primary["id"]]["type"] == "invalidProperties", "the address is not editable"
    assert out["notDestroyed"][primary["id"]]["type"] == "forbidden"
    (w,) = frank.one("Identity/get", {"ids": [work]})["list"]
    assert w["email"] == "frank@contoso.test" and w["htmlSignature"] == "<p>Frank</p>"
    assert w["replyTo"] == [{"name": "Projects", "email": "projects@contoso.test"}]
    changes = frank.one("Identity/changes", {"sinceState": state})
    assert work in changes["created"]
    assert frank.one("Identity/set", {"destroy": [work]})["destroyed"] == [work]
    assert "SettingsChanged" in {r["operation"] for r in keypost.audit("SettingsChanged", realm="contoso")}


def test_submissions_are_recorded_per_recipient(keypost, users):
    frank, gwen = users
    identity = frank.one("Identity/get", {})["list"][0]["id"]
    email = draft(frank, "gwen@contoso.test, Bob <bob@fabrikam.test>", "Kickoff agenda")
    state = frank.one("EmailSubmission/get", {"ids": []})["state"]
    resp = frank.call(["EmailSubmission/set", {
        "create": {"s": {"identityId": identity, "emailId": email}},
        "onSuccessUpdateEmail": {"#s": {f"mailboxIds/{frank.mailbox('drafts')}": None,
                                        f"mailboxIds/{frank.mailbox('sent')}": True, "keywords/$draft": None}},
    }, "x"])
    out = resp["x"]
    assert out["created"], out["notCreated"]
    assert resp["x/Email/set"]["updated"] == {email: None}, "the implicit Email/set of RFC 8621 §7.5"
    sid = out["created"]["s"]["id"]
    (sub,) = frank.one("EmailSubmission/get", {"ids": [sid]})["list"]
    assert sub["emailId"] == email and sub["identityId"] == identity and sub["undoStatus"] == "final"
    assert sorted(r["email"] for r in sub["envelope"]["rcptTo"]) == ["bob@fabrikam.test", "gwen@contoso.test"]
    assert sub["deliveryStatus"]["gwen@contoso.test"]["delivered"] == "yes"
    assert sub["deliveryStatus"]["gwen@contoso.test"]["smtpReply"].startswith("250")
    (sent,) = frank.one("Email/get", {"ids": [email], "properties": ["mailboxIds", "keywords"]})["list"]
    assert sent["mailboxIds"] == {frank.mailbox("sent"): True} and "$draft" not in sent["keywords"]
    got = gwen.one("Email/query", {"filter": {"subject": "kickoff agenda"}})["ids"]
    assert len(got) == 1

    assert frank.one("EmailSubmission/changes", {"sinceState": state})["created"] == [sid]
    assert frank.one("EmailSubmission/query", {"filter": {"emailIds": [email]}})["ids"] == [sid]
    assert frank.one("EmailSubmission/query", {"filter": {"emailIds": ["Mnothing"]}})["ids"] == []
    out = frank.one("EmailSubmission/set", {"update": {sid: {"undoStatus": "canceled"}}})
    assert out["notUpdated"][sid]["type"] == "cannotUnsend"
    assert frank.one("EmailSubmission/set", {"destroy": [sid]})["destroyed"] == [sid]
    assert frank.one("EmailSubmission/get", {"ids": [sid]})["notFound"] == [sid]

    bad = frank.one("EmailSubmission/set", {"create": {
        "a": {"identityId": "Inope", "emailId": email},
        "b": {"identityId": identity, "emailId": email, "envelope": {"mailFrom": {"email": "ceo@contoso.test"},
                                                                      "rcptTo": [{"email": "gwen@contoso.test"}]}},
    }})
    assert bad["notCreated"]["a"]["type"] == "invalidProperties"
    assert bad["notCreated"]["b"]["type"] == "forbiddenMailFrom"


def test_quota_limits_delivery_and_import(keypost, users):
    frank, gwen = users
    r = gwen.call(["Quota/get", {}, "q"])["q"]
    (q,) = r["list"]
    assert q["resourceType"] == "octets" and q["hardLimit"] == 10 << 30 and q["used"] > 0
    keypost.cli("mail", "quota", "gwen@contoso.test", "1KB")
    (q,) = gwen.one("Quota/get", {})["list"]
    assert q["hardLimit"] == 1000
    used = q["used"]
    identity = frank.one("Identity/get", {})["list"][0]["id"]
    big = f"From: frank@contoso.test\r\nTo: gwen@contoso.test\r\nSubject: Big\r\n\r\n{'x' * 2000}\r\n".encode()
    email = frank.import_email(big, role="drafts")
    out = frank.one("EmailSubmission/set", {"create": {"s": {"identityId": identity, "emailId": email}}})
    (sub,) = frank.one("EmailSubmission/get", {"ids": [out["created"]["s"]["id"]]})["list"]
    status = sub["deliveryStatus"]["gwen@contoso.test"]
    assert status["delivered"] == "no" and status["smtpReply"].startswith("552"), status
    assert gwen.one("Quota/get", {})["list"][0]["used"] == used, "nothing was stored"

    # Uploads count against the quota too (RFC 8620 §6.1).
    url = gwen.session["uploadUrl"].format(accountId=gwen.account)
    r = requests.post(url, data=big, headers={**auth(gwen.token), "Content-Type": "message/rfc822"},
                      timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 507 and r.json()["type"] == "urn:ietf:params:jmap:error:overQuota", r.text
    # Uploaded while it fitted, the message is refused when it is imported into a full account.
    keypost.cli("mail", "quota", "gwen@contoso.test", "1MB")
    blob = gwen.upload(big)
    keypost.cli("mail", "quota", "gwen@contoso.test", "1KB")
    out = gwen.one("Email/import", {"emails": {"i": {"blobId": blob, "mailboxIds": {gwen.mailbox("inbox"): True}}}})
    assert out["notCreated"]["i"]["type"] == "overQuota"

    report = keypost.cli("mail", "quota", "gwen@contoso.test", "unlimited", json=True)
    assert report["limit"] is None
    assert gwen.one("Quota/get", {})["list"] == [], "an unlimited account has no quota object"
    keypost.cli("mail", "quota", "gwen@contoso.test", "default")
    assert gwen.one("Quota/query", {"filter": {"type": "Mail"}})["ids"] == ["mail"]
    # Without the quota capability in "using", Quota methods do not exist.
    raw = api(keypost, gwen.token, [["Quota/get", {"accountId": gwen.account}, "q"]], using=["urn:ietf:params:jmap:core"])
    assert raw.json()["methodResponses"][0][1]["type"] == "unknownMethod"


def test_compose_a_draft_and_send_it_in_one_request(users):
    frank, gwen = users
    identity = frank.one("Identity/get", {})["list"][0]["id"]
    pdf = frank.upload(b"%PDF-1.4 agenda", content_type="application/pdf")
    out = frank.call(
        ["Mailbox/set", {"create": {"box": {"name": "Outbox drafts"}}}, "m"],
        ["Email/set", {"create": {"d": {
            "mailboxIds": {"#box": True}, "keywords": {"$draft": True},
            "from": [{"name": "Frank", "email": "frank@contoso.test"}],
            "to": [{"name": "Gwen", "email": "gwen@contoso.test"}],
            "subject": "Agenda für Montag",
            "header:X-Priority": "1",
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "htmlBody": [{"partId": "h", "type": "text/html"}],
            "bodyValues": {"t": {"value": "See the agenda.\n"}, "h": {"value": "<p>See the <b>agenda</b>.</p>"}},
            "attachments": [{"blobId": pdf, "type": "application/pdf", "name": "agenda.pdf"}],
        }}}, "e"],
        ["EmailSubmission/set", {"create": {"s": {"identityId": identity, "emailId": "#d"}}}, "s"],
    )
    box = out["m"]["created"]["box"]["id"]
    created = out["e"]["created"]["d"]
    assert out["s"]["created"]["s"]["id"], out["s"]
    (draft,) = frank.one("Email/get", {"ids": [created["id"]], "fetchAllBodyValues": True,
                                       "properties": ["mailboxIds", "keywords", "subject", "attachments", "bodyValues",
                                                      "textBody", "header:X-Priority:asText", "messageId"]})["list"]
    assert draft["mailboxIds"] == {box: True} and draft["keywords"] == {"$draft": True}
    assert draft["subject"] == "Agenda für Montag"
    assert draft["header:X-Priority:asText"] == "1"
    assert draft["messageId"][0].endswith("@contoso.test")
    assert [a["name"] for a in draft["attachments"]] == ["agenda.pdf"]
    assert draft["bodyValues"][draft["textBody"][0]["partId"]]["value"].strip() == "See the agenda."

    (received,) = gwen.one("Email/query", {"filter": {"subject": "agenda montag"}})["ids"]
    (mail,) = gwen.one("Email/get", {"ids": [received], "properties": ["from", "attachments", "hasAttachment"]})["list"]
    assert mail["from"] == [{"name": "Frank", "email": "frank@contoso.test"}] and mail["hasAttachment"] is True
    assert gwen.download(mail["attachments"][0]["blobId"]).content == b"%PDF-1.4 agenda"


def test_draft_errors(users):
    frank, _ = users
    drafts = frank.mailbox("drafts")
    out = frank.one("Email/set", {"create": {
        "nobox": {"subject": "x"},
        "rawfrom": {"mailboxIds": {drafts: True}, "header:From": "ceo@contoso.test"},
        "inject": {"mailboxIds": {drafts: True}, "subject": "hi\r\nBcc: everyone@contoso.test"},
        "mixed": {"mailboxIds": {drafts: True}, "bodyStructure": {"type": "text/plain", "partId": "1"},
                  "textBody": [{"partId": "1", "type": "text/plain"}], "bodyValues": {"1": {"value": "x"}}},
        "badtree": {"mailboxIds": {drafts: True}, "bodyStructure": {"type": "text/plain", "subParts": []}},
        "noblob": {"mailboxIds": {drafts: True}, "attachments": [{"blobId": "0" * 64, "type": "text/plain"}]},
        "novalue": {"mailboxIds": {drafts: True}, "textBody": [{"partId": "t", "type": "text/plain"}]},
        "server": {"mailboxIds": {drafts: True}, "id": "Mx"},
        "ok": {"mailboxIds": {drafts: True}},
    }})
    errors = {k: v["type"] for k, v in out["notCreated"].items()}
    assert errors == {"nobox": "invalidProperties", "rawfrom": "invalidProperties", "inject": "invalidProperties",
                      "mixed": "invalidProperties", "badtree": "invalidProperties", "noblob": "blobNotFound", "novalue": "invalidProperties",
                      "server": "invalidProperties"}
    assert out["notCreated"]["noblob"]["notFound"] == ["0" * 64]
    assert list(out["created"]) == ["ok"]


def test_compose_with_a_body_structure(users):
    """RFC 8621 §4.6: the body may be given as a MIME tree instead."""
    frank, _ = users
    logo = frank.upload(b"\x89PNG fake", content_type="image/png")
    out = frank.one("Email/set", {"create": {"tree": {
        "mailboxIds": {frank.mailbox("drafts"): True}, "subject": "Tree",
        "from": [{"email": "frank@contoso.test"}],
        "bodyStructure": {"type": "multipart/mixed", "subParts": [
            {"type": "multipart/alternative", "subParts": [
                {"type": "text/plain", "partId": "t"},
                {"type": "text/html", "partId": "h"},
            ]},
            {"type": "image/png", "blobId": logo, "disposition": "inline", "cid": "logo@x", "name": "logo.png"},
        ]},
        "bodyValues": {"t": {"value": "plain words"}, "h": {"value": "<p>html <img src=cid:logo@x></p>"}},
    }}})
    assert out["created"], out["notCreated"]
    created = out["created"]["tree"]["id"]
    (e,) = frank.one("Email/get", {"ids": [created], "properties": ["bodyStructure", "textBody", "htmlBody", "bodyValues"],
                                   "fetchAllBodyValues": True, "bodyProperties": ["type", "partId", "cid", "subParts", "blobId"]})["list"]
    assert e["bodyStructure"]["type"] == "multipart/mixed"
    assert [p["type"] for p in e["bodyStructure"]["subParts"]] == ["multipart/alternative", "image/png"]
    assert e["bodyStructure"]["subParts"][1]["cid"] == "logo@x"
    assert e["bodyValues"][e["textBody"][0]["partId"]]["value"].strip() == "plain words"
    assert frank.download(e["bodyStructure"]["subParts"][1]["blobId"]).content == b"\x89PNG fake"


def test_bcc_recipients_are_invisible_to_every_recipient(keypost, world, users):
    """RFC 5322 §3.6.3: the Bcc field stays in the sender's copy only."""
    frank, gwen = users
    bob = Client(keypost, keypost.tokens_for(world.bob)["access_token"])
    identity = frank.one("Identity/get", {})["list"][0]["id"]
    out = frank.call(
        ["Email/set", {"create": {"d": {
            "mailboxIds": {frank.mailbox("drafts"): True}, "keywords": {"$draft": True},
            "from": [{"name": "Frank", "email": "frank@contoso.test"}],
            "to": [{"name": "Gwen", "email": "gwen@contoso.test"}],
            "bcc": [{"name": "Bob", "email": world.bob.email}],
            "subject": "Surprise party for Gwen",
            "textBody": [{"partId": "t", "type": "text/plain"}], "bodyValues": {"t": {"value": "Saturday."}},
        }}}, "e"],
        ["EmailSubmission/set", {"create": {"s": {"identityId": identity, "emailId": "#d"}}}, "s"],
    )
    assert out["s"]["created"], out["s"]
    sent = out["e"]["created"]["d"]["id"]
    for who in (gwen, bob):
        (got,) = who.one("Email/query", {"filter": {"subject": "surprise party"}})["ids"]
        (mail,) = who.one("Email/get", {"ids": [got], "properties": ["bcc", "blobId", "header:Bcc"]})["list"]
        assert mail["bcc"] is None and mail["header:Bcc"] is None, mail
        raw = who.download(mail["blobId"]).content
        assert b"Surprise party" in raw
        assert b"bcc" not in raw.lower() and world.bob.email.encode() not in raw, raw
    (mine,) = frank.one("Email/get", {"ids": [sent], "properties": ["bcc"]})["list"]
    assert mine["bcc"] == [{"name": "Bob", "email": world.bob.email}], "the sender's copy keeps it"


def test_a_foreign_address_anywhere_in_from_or_sender_is_refused_and_audited(keypost, users):
    frank, gwen = users
    identity = frank.one("Identity/get", {})["list"][0]["id"]
    drafts = {}
    for name, originator in (
        ("ceo-first", '"Contoso CEO" <ceo@contoso.test>, Frank <frank@contoso.test>'),
        ("sender", "Frank <frank@contoso.test>\r\nSender: ceo@contoso.test"),
        ("second-field", "frank@contoso.test\r\nFROM: ceo@contoso.test"),
    ):
        raw = f"From: {originator}\r\nTo: gwen@contoso.test\r\nSubject: Urgent wire {name}\r\n\r\nPay today.\r\n"
        drafts[name] = frank.import_email(raw.encode(), role="drafts", keywords=["$draft"])
    out = frank.one("EmailSubmission/set", {"create": {
        name: {"identityId": identity, "emailId": email} for name, email in drafts.items()}})
    assert out["created"] is None, out["created"]
    assert {k: v["type"] for k, v in out["notCreated"].items()} == dict.fromkeys(drafts, "forbiddenFrom")
    assert gwen.one("Email/query", {"filter": {"subject": "urgent wire"}})["ids"] == [], "nothing was delivered"

    refused = {r["details"]["items"][0]: r for r in keypost.audit("MailSubmissionRefused", realm="contoso")
               if r["details"].get("items")}
    for email in drafts.values():
        r = refused[email]
        assert r["result"] == "failure" and r["actor"] == "frank@contoso.test" and r["jti"], r
        assert r["details"]["reason"] == "ForbiddenFrom" and r["details"]["addresses"] == ["ceo@contoso.test"], r
    assert not [r for r in keypost.audit("MailSent", realm="contoso") if r["details"]["items"][0] in drafts.values()]


def test_recipients_without_an_account_are_answered_alike(keypost, users):
    """Until outbound SMTP exists no address outside Keypost's accounts can be reached: a
    missing account in a Keypost domain, a disabled one and a remote address all get the same
    outcome, and the submission is never refused for them (which would list them)."""
    frank, gwen = users
    keypost.create_user("ivy@contoso.test", "ivy-correct-horse-battery-8")
    keypost.cli("user", "disable", "ivy@contoso.test")
    identity = frank.one("Identity/get", {})["list"][0]["id"]
    nobody = ["ivy@contoso.test", "nobody@contoso.test", "nobody@fabrikam.test", "someone@example.org"]
    email = draft(frank, ", ".join(["gwen@contoso.test", *nobody]), "Offsite dates")
    out = frank.one("EmailSubmission/set", {"create": {"s": {"identityId": identity, "emailId": email}}})
    assert out["notCreated"] is None and "s" in (out["created"] or {}), out
    (sub,) = frank.one("EmailSubmission/get", {"ids": [out["created"]["s"]["id"]]})["list"]
    status = sub["deliveryStatus"]
    assert status["gwen@contoso.test"]["delivered"] == "yes"
    remote = status["someone@example.org"]
    assert remote["delivered"] == "no" and remote["smtpReply"].startswith("5"), remote
    assert {a: status[a] for a in nobody} == dict.fromkeys(nobody, remote)
    assert len(gwen.one("Email/query", {"filter": {"subject": "offsite dates"}})["ids"]) == 1
    (rec,) = [r for r in keypost.audit("MailSent", realm="contoso") if r["details"]["items"] == [email]]
    assert rec["details"]["undelivered"] == nobody
