"""Reading a message the way mail clients do (RFC 8621 §4.1–4.9): header fields in each parsed
form, the convenience properties, the MIME tree, attachments downloaded by part blob id, an
attached message opened with Email/parse and imported from its part; Email/copy between
accounts (there is never a second account to copy from)."""

from email.message import EmailMessage

import pytest

from jmap_client import Client

ERIN = "erin@contoso.test"


def forwarded():
    inner = EmailMessage()
    inner["From"] = "Frank <frank@fabrikam.test>"
    inner["To"] = ERIN
    inner["Subject"] = "Original plan"
    inner["Message-ID"] = "<inner@fabrikam.test>"
    inner.set_content("The original plan, attached as a message.\n")
    outer = EmailMessage()
    outer["From"] = "Gina <gina@fabrikam.test>"
    outer["Sender"] = "Assistant <assistant@fabrikam.test>"
    outer["Reply-To"] = "Team <team@fabrikam.test>"
    outer["To"] = f"Erin <{ERIN}>"
    outer["Bcc"] = "audit@fabrikam.test"
    outer["Subject"] = "=?utf-8?q?Fwd=3A_Pl=C3=A4n?="
    outer["Message-ID"] = "<outer@fabrikam.test>"
    outer["In-Reply-To"] = "<earlier@fabrikam.test>"
    outer["References"] = "<first@fabrikam.test> <earlier@fabrikam.test>"
    outer["Date"] = "Tue, 24 Nov 2026 09:30:00 +0100"
    outer["List-Post"] = "<mailto:team@fabrikam.test>"
    outer["X-Ticket"] = "first"
    outer["X-Ticket"] = "second"
    outer.set_content("See the attached plan.\n")
    outer.add_attachment(inner)
    outer.add_attachment(b"\x00\x01binary-bytes\xff", maintype="application", subtype="octet-stream", filename="data.bin")
    return outer.as_bytes()


@pytest.fixture(scope="module")
def erin(keypost, world):
    keypost.create_user(ERIN, "erin-correct-horse-battery-5")
    token = keypost.password_grant("contoso", ERIN, "erin-correct-horse-battery-5").json()["access_token"]
    c = Client(keypost, token)
    c.email = c.import_email(forwarded())
    return c


def get(c, *props, **args):
    (e,) = c.one("Email/get", {"ids": [c.email], "properties": list(props), **args})["list"]
    return e


def test_convenience_properties_and_header_forms(erin):
    e = get(erin, "messageId", "inReplyTo", "references", "sender", "replyTo", "bcc", "subject", "sentAt",
            "header:Subject", "header:subject:asText", "header:X-Ticket:all", "header:X-Ticket",
            "header:From:asAddresses", "header:To:asGroupedAddresses", "header:References:asMessageIds",
            "header:Date:asDate", "header:List-Post:asURLs", "header:X-Missing")
    assert e["messageId"] == ["outer@fabrikam.test"]
    assert e["inReplyTo"] == ["earlier@fabrikam.test"]
    assert e["references"] == ["first@fabrikam.test", "earlier@fabrikam.test"]
    assert e["sender"] == [{"name": "Assistant", "email": "assistant@fabrikam.test"}]
    assert e["replyTo"] == [{"name": "Team", "email": "team@fabrikam.test"}]
    assert e["bcc"] == [{"name": None, "email": "audit@fabrikam.test"}]
    assert e["subject"] == "Fwd: Plän"
    assert e["sentAt"] == "2026-11-24T08:30:00Z"
    assert e["header:Subject"].startswith(" ") and "=?utf-8?q?" in e["header:Subject"], "Raw: the octets after the colon"
    assert e["header:subject:asText"] == "Fwd: Plän"
    assert e["header:X-Ticket:all"] == [" first", " second"]
    assert e["header:X-Ticket"] == " second", "without :all, the last instance"
    assert e["header:From:asAddresses"] == [{"name": "Gina", "email": "gina@fabrikam.test"}]
    assert e["header:To:asGroupedAddresses"] == [{"name": None, "addresses": [{"name": "Erin", "email": ERIN}]}]
    assert e["header:References:asMessageIds"] == ["first@fabrikam.test", "earlier@fabrikam.test"]
    assert e["header:Date:asDate"] == "2026-11-24T08:30:00Z"
    assert e["header:List-Post:asURLs"] == ["mailto:team@fabrikam.test"]
    assert e["header:X-Missing"] is None
    headers = get(erin, "headers")["headers"]
    assert {"name": "X-Ticket", "value": " first"} in headers
    assert erin.one("Email/get", {"ids": [erin.email], "properties": ["header:X:asNothing"]})["error"] == "invalidArguments"


def test_default_properties_follow_the_rfc(erin):
    (e,) = erin.one("Email/get", {"ids": [erin.email]})["list"]
    for prop in ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId",
                 "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject", "sentAt",
                 "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody", "attachments"):
        assert prop in e, prop
    assert "headers" not in e and "bodyStructure" not in e


def test_body_structure_and_part_download(erin):
    e = get(erin, "bodyStructure", "attachments", bodyProperties=["partId", "blobId", "type", "name", "size", "subParts", "headers"])
    root = e["bodyStructure"]
    assert root["type"] == "multipart/mixed" and root["partId"] is None and root["blobId"] is None
    types = [p["type"] for p in root["subParts"]]
    assert types == ["text/plain", "message/rfc822", "application/octet-stream"]
    assert any(h["name"] == "Content-Type" for h in root["subParts"][0]["headers"])
    binary = next(p for p in e["attachments"] if p["name"] == "data.bin")
    r = erin.download(binary["blobId"], "data.bin")
    assert r.status_code == 200 and r.content == b"\x00\x01binary-bytes\xff", "decoded from base64"
    assert binary["size"] == len(r.content)
    other = binary["blobId"].split("p")[0] + "p99"
    assert erin.download(other).status_code == 404


def test_parse_an_attached_message_and_import_it(keypost, erin):
    attached = next(p for p in get(erin, "attachments")["attachments"] if p["type"] == "message/rfc822")
    out = erin.one("Email/parse", {"blobIds": [attached["blobId"], "0" * 64, "nonsense"],
                                  "fetchTextBodyValues": True})
    parsed = out["parsed"][attached["blobId"]]
    assert parsed["subject"] == "Original plan"
    assert parsed["from"] == [{"name": "Frank", "email": "frank@fabrikam.test"}]
    assert parsed["messageId"] == ["inner@fabrikam.test"]
    assert "id" not in parsed and "mailboxIds" not in parsed, "a parsed blob is not a stored email"
    (text,) = parsed["textBody"]
    assert parsed["bodyValues"][text["partId"]]["value"].startswith("The original plan")
    assert sorted(out["notFound"]) == sorted(["0" * 64, "nonsense"])
    last = keypost.audit("MailItemsAccessed", realm="contoso")[-1]
    assert last["details"]["operation"] == "Email/parse" and last["details"]["items"] == [erin.email]

    created = erin.one("Email/import", {"emails": {"x": {"blobId": attached["blobId"], "mailboxIds": {erin.mailbox("archive"): True}}}})
    (imported,) = erin.one("Email/get", {"ids": [created["created"]["x"]["id"]], "properties": ["subject"]})["list"]
    assert imported["subject"] == "Original plan"


def test_parse_an_upload_and_refuse_what_is_not_mail(erin):
    raw = b"Subject: uploaded\r\nFrom: a@b.test\r\n\r\nbody\r\n"
    blob = erin.upload(raw)
    junk = erin.upload(b"\x00\x01\x02", content_type="application/octet-stream")
    out = erin.one("Email/parse", {"blobIds": [blob, junk], "properties": ["subject", "size", "blobId"]})
    assert out["parsed"][blob] == {"subject": "uploaded", "size": len(raw), "blobId": blob}
    assert out["notParsable"] == [junk]
    assert erin.one("Email/parse", {})["error"] == "invalidArguments"


def test_parse_cannot_read_another_accounts_blob(keypost, world, erin):
    bob = Client(keypost, keypost.tokens_for(world.bob)["access_token"])
    (e,) = erin.one("Email/get", {"ids": [erin.email], "properties": ["blobId"]})["list"]
    out = bob.one("Email/parse", {"blobIds": [e["blobId"]]})
    assert out["notFound"] == [e["blobId"]] and out["parsed"] is None
    assert bob.download(e["blobId"]).status_code == 404


def test_copy_needs_a_second_account(erin):
    assert erin.one("Email/copy", {"fromAccountId": "Aother", "create": {}})["error"] == "fromAccountNotFound"
    assert erin.one("Email/copy", {"fromAccountId": erin.account, "create": {}})["error"] == "invalidArguments"
