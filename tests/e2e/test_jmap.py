"""JMAP (RFC 8620/8621) over real HTTP with plain `requests`, following the RFCs' examples: the
session resource, mailboxes, query, get with result references, threads, blob download; the
errors of the protocol; and the gate in front of it all (THREAT-MODEL: forged tokens read no
mail, and every read is audited)."""

import mailbox
import time
from email.message import EmailMessage

import pytest
import requests

from conftest import CLI_CLIENT, HTTP_TIMEOUT_S, forge_access_token, new_ed25519_pem, rejections, unverified

from jmap_client import CORE, MAIL, SUBMISSION, VACATION, api, auth, session


def msg(n, subject, reply_to=None):
    m = EmailMessage()
    m["From"] = "Bob <bob@fabrikam.test>"
    m["To"] = "alice@contoso.test"
    m["Subject"] = subject
    m["Message-ID"] = f"<jmap-{n}@fabrikam.test>"
    m["Date"] = f"Mon, 23 Nov 2026 10:0{n}:00 +0000"
    if reply_to:
        m["In-Reply-To"] = f"<jmap-{reply_to}@fabrikam.test>"
    m.set_content(f"Body of message {n}.\n")
    return m


@pytest.fixture(scope="module")
def alice_mail(keypost, world, tmp_path_factory):
    d = tmp_path_factory.mktemp("jmap")
    mb = mailbox.mbox(d / "in.mbox", create=True)
    for m in (msg(1, "Project kickoff"), msg(2, "Re: Project kickoff", reply_to=1), msg(3, "Invoice")):
        mb.add(m)
    mb.flush()
    keypost.cli("mail", "import", world.alice.email, str(d / "in.mbox"))
    return (d / "in.mbox").read_bytes()


@pytest.fixture(scope="module")
def alice(keypost, world, alice_mail):
    token = keypost.tokens_for(world.alice)["access_token"]
    return token, unverified(token)[1]["sub"]


def test_session_resource(keypost, alice):
    token, sub = alice
    r = session(keypost, token)
    assert r.status_code == 200, r.text
    s = r.json()
    assert set(s["capabilities"]) >= {CORE, MAIL}
    assert s["capabilities"][CORE]["maxCallsInRequest"] >= 16
    assert list(s["accounts"]) == [sub], "a principal sees exactly its own account"
    assert s["primaryAccounts"][MAIL] == sub
    assert s["apiUrl"] == f"{keypost.url}/jmap/api"
    assert "{blobId}" in s["downloadUrl"]


def test_list_query_read_thread_and_download(keypost, world, alice, alice_mail):
    token, account = alice
    r = api(keypost, token, [
        ["Mailbox/get", {"accountId": account, "ids": None}, "mb"],
        ["Email/query", {"accountId": account, "filter": None, "sort": [{"property": "receivedAt", "isAscending": False}],
                         "calculateTotal": True}, "q"],
        ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                       "properties": ["subject", "threadId", "blobId", "mailboxIds", "from", "preview"]}, "g"],
        ["Thread/get", {"accountId": account, "#ids": {"resultOf": "g", "name": "Email/get", "path": "/list/*/threadId"}}, "t"],
    ])
    assert r.status_code == 200, r.text
    (mb, q, g, t) = [x[1] for x in r.json()["methodResponses"]]
    roles = {m["role"]: m for m in mb["list"]}
    assert set(roles) == {"inbox", "drafts", "sent", "archive", "junk", "trash"}
    assert roles["inbox"]["totalEmails"] == 3 and roles["inbox"]["unreadEmails"] == 3
    assert q["total"] == 3 and len(q["ids"]) == 3
    subjects = {e["subject"]: e for e in g["list"]}
    assert set(subjects) == {"Project kickoff", "Re: Project kickoff", "Invoice"}
    assert subjects["Project kickoff"]["threadId"] == subjects["Re: Project kickoff"]["threadId"]
    assert subjects["Invoice"]["threadId"] != subjects["Project kickoff"]["threadId"]
    assert subjects["Invoice"]["from"] == [{"name": "Bob", "email": "bob@fabrikam.test"}]
    assert subjects["Invoice"]["preview"] == "Body of message 3."
    assert list(subjects["Invoice"]["mailboxIds"]) == [roles["inbox"]["id"]]
    threads = {th["id"]: th["emailIds"] for th in t["list"]}
    assert len(threads[subjects["Project kickoff"]["threadId"]]) == 2

    # Filter by mailbox.
    r = api(keypost, token, [["Email/query", {"accountId": account, "filter": {"inMailbox": roles["trash"]["id"]}}, "e"]])
    assert r.json()["methodResponses"][0][1]["ids"] == []

    # Download the raw message.
    s = session(keypost, token).json()
    e = subjects["Invoice"]
    url = s["downloadUrl"].format(accountId=account, blobId=e["blobId"], name="invoice.eml", type="message/rfc822")
    d = requests.get(url, headers=auth(token), timeout=HTTP_TIMEOUT_S)
    assert d.status_code == 200, d.text
    assert b"Subject: Invoice" in d.content and d.content in alice_mail

    # Every read is in the audit log with who, which token, which key, from where.
    reads = keypost.audit("MailItemsAccessed", realm="contoso")
    got = next(r for r in reads if r["details"]["operation"] == "Email/get")
    assert sorted(got["details"]["items"]) == sorted(x["id"] for x in g["list"])
    claims = unverified(token)
    assert got["jti"] == claims[1]["jti"] and got["kid"] == claims[0]["kid"]
    assert got["client_id"] == CLI_CLIENT and got["source_ip"] == "127.0.0.1"
    assert got["user_agent"] == "keypost-e2e-jmap/1" and got["actor"] == world.alice.email
    assert any(r["details"]["operation"] == "download" and r["details"]["items"] == [e["id"]] for r in reads)
    assert any(r["details"]["operation"] == "Email/query" for r in keypost.audit("MailboxQueried", realm="contoso"))


def test_protocol_errors(keypost, world, alice):
    token, account = alice
    def problem(r, kind, status=400):
        assert r.status_code == status, r.text
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.json()["type"] == f"urn:ietf:params:jmap:error:{kind}"
    problem(api(keypost, token, None, raw=b"{not json"), "notJSON")
    problem(api(keypost, token, None, raw={"using": [CORE]}), "notRequest")
    problem(api(keypost, token, None, raw={"using": [CORE], "methodCalls": [["Core/echo", [], "c"]]}), "notRequest")
    problem(api(keypost, token, [], using=[CORE, "urn:example:nope"]), "unknownCapability")
    r = api(keypost, token, [["Core/echo", {"x": 1}, str(i)] for i in range(1000)])
    problem(r, "limit")
    assert r.json()["limit"] == "maxCallsInRequest"
    big = api(keypost, token, None, raw=b"x" * (11 * 1024 * 1024))
    assert big.status_code == 413

    bob_account = unverified(keypost.tokens_for(world.bob)["access_token"])[1]["sub"]
    r = api(keypost, token, [
        ["Core/echo", {"hello": True}, "e"],
        ["Frobnicate/get", {"accountId": account}, "u"],
        ["Email/get", {"accountId": account, "ids": []}, "m"],
    ], using=[CORE])
    assert r.status_code == 200, r.text
    out = {x[2]: x for x in r.json()["methodResponses"]}
    assert out["e"][1] == {"hello": True}
    assert out["u"][1]["type"] == "unknownMethod"
    assert out["m"][1]["type"] == "unknownMethod", "mail methods need the mail capability in using"

    r = api(keypost, token, [
        ["Email/get", {"accountId": bob_account, "ids": []}, "other"],
        ["Email/get", {"accountId": account, "ids": ["nope", "../x", "e" * 200]}, "nf"],
        ["Email/get", {"accountId": account, "#ids": {"resultOf": "missing", "name": "Email/query", "path": "/ids"}}, "ref"],
        ["Email/query", {"accountId": account, "filter": {"header": ["X-Spam-Flag"]}}, "f"],
        ["Email/get", {"accountId": account, "ids": [], "properties": ["nonsense"]}, "p"],
    ])
    out = {x[2]: x for x in r.json()["methodResponses"]}
    assert out["other"][1]["type"] == "accountNotFound", "another tenant's account does not exist for alice"
    assert out["nf"][1]["notFound"] == ["nope", "../x", "e" * 200] and out["nf"][1]["list"] == []
    assert out["ref"][1]["type"] == "invalidResultReference"
    assert out["f"][1]["type"] == "unsupportedFilter"
    assert out["p"][1]["type"] == "invalidArguments"


def test_no_token_no_mail(keypost):
    r = requests.get(f"{keypost.url}/.well-known/jmap", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.post(f"{keypost.url}/jmap/api", json={"using": [CORE], "methodCalls": []}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401


def test_forged_token_from_a_consumer_key_reads_nothing(keypost, world, alice, tmp_path):
    token, account = alice
    key, pem = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("consumers", pem)
    forged = forge_access_token(keypost, key, kid, "contoso", account, scope="openid email mail")
    for r in (
        session(keypost, forged),
        api(keypost, forged, [["Email/query", {"accountId": account}, "q"]]),
    ):
        assert r.status_code == 401, r.text
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert "Project kickoff" not in r.text and account not in r.text
    (record, *_) = rejections(keypost, "KeyNotInRealm", kid)
    assert record["details"]["audience"] == keypost.mail_audience


def test_tokens_without_a_mailbox_or_the_mail_scope_are_refused(keypost, world, alice):
    out = keypost.create_client("contoso", "jmap-backend", "--confidential", "--grant", "client_credentials",
                                "--scope", "mail")
    cc = requests.post(keypost.endpoint("contoso", "token_endpoint"), auth=("jmap-backend", out["client_secret"]),
                       data={"grant_type": "client_credentials", "scope": "mail"}, timeout=HTTP_TIMEOUT_S).json()
    assert session(keypost, cc["access_token"]).status_code == 403, "a client acting for itself has no mailbox"

    r = keypost.password_grant("contoso", world.alice.email, world.alice.password, scope="openid email")
    no_mail = r.json()["access_token"]
    s = session(keypost, no_mail)
    assert s.status_code == 403 and 'error="insufficient_scope"' in s.headers["WWW-Authenticate"]


def test_set_keywords_move_destroy_and_changes(keypost, world, alice):
    token, account = alice
    def call(*calls):
        r = api(keypost, token, list(calls))
        assert r.status_code == 200, r.text
        return {x[2]: x[1] for x in r.json()["methodResponses"]}

    out = call(
        ["Mailbox/get", {"accountId": account, "ids": None, "properties": ["role", "unreadEmails", "totalEmails"]}, "mb"],
        ["Email/query", {"accountId": account}, "q"],
        ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                       "properties": ["subject", "keywords", "mailboxIds"]}, "g"],
    )
    boxes = {m["role"]: m for m in out["mb"]["list"]}
    inbox, archive, trash = boxes["inbox"]["id"], boxes["archive"]["id"], boxes["trash"]["id"]
    emails = {e["subject"]: e["id"] for e in out["g"]["list"]}
    start = out["q"]["queryState"]
    unread_before = boxes["inbox"]["unreadEmails"]

    invoice, kickoff = emails["Invoice"], emails["Project kickoff"]
    out = call(["Email/set", {"accountId": account, "ifInState": start, "update": {
        invoice: {"keywords/$seen": True, "keywords/$Flagged": True},
        kickoff: {"mailboxIds": {archive: True}},
    }}, "s"])
    assert set(out["s"]["updated"]) == {invoice, kickoff}, out
    assert out["s"]["oldState"] == start and out["s"]["newState"] != start

    out = call(
        ["Email/get", {"accountId": account, "ids": [invoice, kickoff], "properties": ["keywords", "mailboxIds"]}, "g"],
        ["Mailbox/get", {"accountId": account, "ids": [inbox, archive], "properties": ["unreadEmails", "totalEmails"]}, "mb"],
    )
    got = {e["id"]: e for e in out["g"]["list"]}
    assert got[invoice]["keywords"] == {"$seen": True, "$flagged": True}, "keywords are lowercase"
    assert got[kickoff]["mailboxIds"] == {archive: True}
    counts = {m["id"]: m for m in out["mb"]["list"]}
    assert counts[inbox]["unreadEmails"] == unread_before - 2  # one read, one moved out
    assert counts[archive]["totalEmails"] >= 1

    out = call(["Email/set", {"accountId": account, "destroy": [invoice, "nope"], "update": {
        kickoff: {"mailboxIds": {}},
        emails["Re: Project kickoff"]: {"mailboxIds/no-such-box": True},
        "missing": {"keywords/$seen": True},
        kickoff + "x": {"subject": "rewritten"},
    }}, "s"])
    s = out["s"]
    assert s["destroyed"] == [invoice]
    assert s["notDestroyed"]["nope"]["type"] == "notFound"
    assert s["notUpdated"][kickoff]["type"] == "invalidProperties"
    assert s["notUpdated"][emails["Re: Project kickoff"]]["type"] == "invalidProperties"
    assert s["notUpdated"]["missing"]["type"] == "notFound"

    stale = call(["Email/set", {"accountId": account, "ifInState": start, "update": {}}, "x"])["x"]
    assert stale["type"] == "stateMismatch"

    out = call(
        ["Email/changes", {"accountId": account, "sinceState": start}, "c"],
        ["Mailbox/changes", {"accountId": account, "sinceState": start}, "mc"],
        ["Email/changes", {"accountId": account, "sinceState": "999999"}, "future"],
        ["Email/changes", {"accountId": account, "sinceState": "garbage"}, "bad"],
        ["Email/queryChanges", {"accountId": account, "sinceQueryState": start}, "qc"],
    )
    assert set(out["qc"]["removed"]) >= {invoice, kickoff}
    assert invoice not in [a["id"] for a in out["qc"]["added"]], "a destroyed email is not re-added"
    assert out["c"]["destroyed"] == [invoice] and kickoff in out["c"]["updated"] and out["c"]["created"] == []
    assert set(out["mc"]["updated"]) >= {inbox, archive}
    assert out["future"]["type"] == "cannotCalculateChanges" and out["bad"]["type"] == "cannotCalculateChanges"
    gone = call(["Email/get", {"accountId": account, "ids": [invoice]}, "g"])["g"]
    assert gone["notFound"] == [invoice]

    updates = keypost.audit("MailItemsUpdated", realm="contoso")
    assert any(invoice in r["details"]["destroyed"] for r in updates)


def raw_message(sender, to, subject):
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@contoso.test>\r\n\r\nHello from JMAP.\r\n"
    ).encode()


def test_upload_import_and_send_to_another_keypost_account(keypost, world, alice):
    token, account = alice
    s = session(keypost, token).json()
    def call(*calls, tok=token):
        r = api(keypost, tok, list(calls))
        assert r.status_code == 200, r.text
        return r.json()["methodResponses"]

    (ident,) = call(["Identity/get", {"accountId": account}, "i"])[0][1]["list"]
    assert ident["email"] == world.alice.email
    boxes = {m["role"]: m["id"] for m in call(["Mailbox/get", {"accountId": account}, "m"])[0][1]["list"]}

    up = requests.post(s["uploadUrl"].format(accountId=account), data=raw_message(world.alice.email, world.bob.email, "Quarterly numbers"),
                       headers={**auth(token), "Content-Type": "message/rfc822"}, timeout=HTTP_TIMEOUT_S)
    assert up.status_code == 201, up.text
    blob = up.json()["blobId"]

    imported = call(["Email/import", {"accountId": account, "emails": {
        "draft": {"blobId": blob, "mailboxIds": {boxes["drafts"]: True}, "keywords": {"$draft": True, "$seen": True}},
        "bad": {"blobId": "0" * 64, "mailboxIds": {boxes["drafts"]: True}},
    }}, "imp"])[0][1]
    draft = imported["created"]["draft"]["id"]
    assert imported["notCreated"]["bad"]["type"] == "blobNotFound"

    responses = call(["EmailSubmission/set", {
        "accountId": account,
        "create": {"s1": {"identityId": ident["id"], "emailId": draft}},
        "onSuccessUpdateEmail": {"#s1": {f"mailboxIds/{boxes['drafts']}": None, f"mailboxIds/{boxes['sent']}": True, "keywords/$draft": None}},
    }, "send"])
    assert [r[0] for r in responses] == ["EmailSubmission/set", "Email/set"], responses
    assert "s1" in responses[0][1]["created"]
    assert responses[1][1]["updated"] == {draft: None}
    moved = call(["Email/get", {"accountId": account, "ids": [draft], "properties": ["mailboxIds", "keywords"]}, "g"])[0][1]["list"][0]
    assert moved["mailboxIds"] == {boxes["sent"]: True} and moved["keywords"] == {"$seen": True}

    # Bob, in another tenant, finds it in his Inbox with his own token.
    bob_token = keypost.tokens_for(world.bob)["access_token"]
    bob_account = unverified(bob_token)[1]["sub"]
    found = call(
        ["Email/query", {"accountId": bob_account}, "q"],
        ["Email/get", {"accountId": bob_account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}, "properties": ["subject", "from"]}, "g"],
        tok=bob_token,
    )[1][1]["list"]
    assert any(e["subject"] == "Quarterly numbers" and e["from"][0]["email"] == world.alice.email for e in found)

    sent = keypost.audit("MailSent", realm="contoso")
    assert sent and sent[-1]["details"]["recipients"] == [world.bob.email] and sent[-1]["details"]["items"] == [draft]
    assert keypost.audit("MailDelivered", realm="fabrikam")[-1]["target"] == world.bob.email


def test_submission_refuses_spoofed_senders_and_records_unreachable_recipients(keypost, world, alice):
    token, account = alice
    s = session(keypost, token).json()
    def call(*calls):
        return api(keypost, token, list(calls)).json()["methodResponses"]
    ident = call(["Identity/get", {"accountId": account}, "i"])[0][1]["list"][0]["id"]
    drafts = [m["id"] for m in call(["Mailbox/get", {"accountId": account}, "m"])[0][1]["list"] if m["role"] == "drafts"][0]
    ids = {}
    for name, sender, to in (("spoof", "ceo@contoso.test", world.bob.email), ("remote", world.alice.email, "someone@example.org")):
        blob = requests.post(s["uploadUrl"].format(accountId=account), data=raw_message(sender, to, f"test {name}"),
                             headers=auth(token), timeout=HTTP_TIMEOUT_S).json()["blobId"]
        out = call(["Email/import", {"accountId": account, "emails": {"x": {"blobId": blob, "mailboxIds": {drafts: True}}}}, "i"])
        ids[name] = out[0][1]["created"]["x"]["id"]
    out = call(["EmailSubmission/set", {"accountId": account, "create": {
        "a": {"identityId": ident, "emailId": ids["spoof"]},
        "b": {"identityId": ident, "emailId": ids["remote"]},
        "c": {"identityId": "someone-else", "emailId": ids["remote"]},
    }}, "s"])[0][1]
    assert out["notCreated"]["a"]["type"] == "forbiddenFrom"
    assert out["notCreated"]["c"]["type"] == "invalidProperties"
    # Not refused: recorded as not delivered (outbound SMTP does not exist yet).
    sid = out["created"]["b"]["id"]
    (sub,) = call(["EmailSubmission/get", {"accountId": account, "ids": [sid]}, "g"])[0][1]["list"]
    assert sub["deliveryStatus"]["someone@example.org"]["delivered"] == "no"
    assert [r["details"]["reason"] for r in keypost.audit("MailSubmissionRefused", realm="contoso")[-2:]] == \
        ["ForbiddenFrom", "UnknownIdentity"]


def test_full_text_search(keypost, world, alice):
    """Runs after the tests above: "Invoice" was destroyed, "Project kickoff" moved to Archive."""
    token, account = alice
    def query(flt):
        r = api(keypost, token, [
            ["Email/query", {"accountId": account, "filter": flt, "calculateTotal": True}, "q"],
            ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                           "properties": ["subject"]}, "g"],
        ])
        assert r.status_code == 200, r.text
        (q, g) = r.json()["methodResponses"]
        assert q[0] == "Email/query", q
        return sorted(e["subject"] for e in g[1]["list"])

    assert query({"text": "kickoff"}) == ["Project kickoff", "Re: Project kickoff"]
    assert query({"subject": "quarterly"}) == ["Quarterly numbers"]
    assert query({"body": "message 2"}) == ["Re: Project kickoff"]
    assert query({"from": "bob@fabrikam.test", "text": "kickoff"}) == ["Project kickoff", "Re: Project kickoff"]
    assert query({"text": "invoice"}) == [], "destroyed mail is gone from the index"
    archive = [m["id"] for m in api(keypost, token, [["Mailbox/get", {"accountId": account}, "m"]]).json()["methodResponses"][0][1]["list"] if m["role"] == "archive"][0]
    assert query({"operator": "AND", "conditions": [{"inMailbox": archive}, {"text": "kickoff"}]}) == ["Project kickoff"]
    assert query({"hasKeyword": "$seen", "text": "quarterly"}) == ["Quarterly numbers"]
    # Words are words, never FTS syntax: no error, no injection.
    for hostile in ['kickoff OR invoice', '"', 'subject:invoice', 'NEAR(a b)', '*', "') --"]:
        query({"text": hostile})
    assert query({"text": "kickoff OR invoice"}) == [], "OR is just another word that must appear"


def test_mailbox_create_rename_nest_and_destroy(keypost, world):
    token = keypost.tokens_for(world.carol)["access_token"]
    account = unverified(token)[1]["sub"]
    def call(*calls):
        r = api(keypost, token, list(calls))
        assert r.status_code == 200, r.text
        return {x[2]: x[1] for x in r.json()["methodResponses"]}

    out = call(["Mailbox/set", {"accountId": account, "create": {
        "p": {"name": "Projects"},
        "dup": {"name": "Inbox"},
        "bad": {"name": ""},
        "role": {"name": "Other", "role": "inbox"},
    }}, "s"])["s"]
    projects = out["created"]["p"]["id"]
    assert set(out["notCreated"]) == {"dup", "bad", "role"}
    out = call(["Mailbox/set", {"accountId": account, "create": {"c": {"name": "Keypost", "parentId": projects}}}, "s"])["s"]
    child = out["created"]["c"]["id"]

    out = call(
        ["Mailbox/set", {"accountId": account, "update": {child: {"name": "Keypost 2026"}, projects: {"parentId": child}}}, "s"],
        ["Mailbox/query", {"accountId": account, "filter": {"parentId": projects}}, "q"],
    )
    assert out["s"]["updated"] == {child: None}
    assert out["s"]["notUpdated"][projects]["type"] == "invalidProperties", "no cycles"
    assert out["q"]["ids"] == [child]

    inbox = call(["Mailbox/query", {"accountId": account, "filter": {"role": "inbox"}}, "q"])["q"]["ids"][0]
    out = call(["Mailbox/set", {"accountId": account, "destroy": [projects, inbox]}, "s"])["s"]
    assert out["notDestroyed"][projects]["type"] == "mailboxHasChild"
    assert out["notDestroyed"][inbox]["type"] == "forbidden"
    out = call(["Mailbox/set", {"accountId": account, "destroy": [child]}, "s"], ["Mailbox/set", {"accountId": account, "destroy": [projects]}, "t"])
    assert out["s"]["destroyed"] == [child] and out["t"]["destroyed"] == [projects]


def test_reading_bodies_and_attachments(keypost, world, alice):
    token, account = alice
    m = EmailMessage()
    m["From"] = "Bob <bob@fabrikam.test>"
    m["To"] = world.alice.email
    m["Subject"] = "Contract"
    m.set_content("Please find the contract attached.\nRégards, Bob\n")
    m.add_alternative("<p>Please find the <b>contract</b> attached.</p>", subtype="html")
    m.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="contract.pdf")
    s = session(keypost, token).json()
    blob = requests.post(s["uploadUrl"].format(accountId=account), data=m.as_bytes(), headers=auth(token), timeout=HTTP_TIMEOUT_S).json()["blobId"]
    inbox = api(keypost, token, [["Mailbox/query", {"accountId": account, "filter": {"role": "inbox"}}, "q"]]).json()["methodResponses"][0][1]["ids"][0]
    imported = api(keypost, token, [
        ["Email/import", {"accountId": account, "emails": {"c": {"blobId": blob, "mailboxIds": {inbox: True}}}}, "i"],
    ]).json()["methodResponses"][0][1]
    email_id = imported["created"]["c"]["id"]
    r = api(keypost, token, [
        ["Email/get", {"accountId": account, "ids": [email_id],
                       "properties": ["textBody", "htmlBody", "attachments", "bodyValues", "hasAttachment"],
                       "fetchTextBodyValues": True, "maxBodyValueBytes": 20}, "g"],
    ])
    assert r.status_code == 200, r.text
    (email,) = r.json()["methodResponses"][0][1]["list"]
    assert email["hasAttachment"] is True
    assert [p["type"] for p in email["textBody"]] == ["text/plain"]
    assert [p["type"] for p in email["htmlBody"]] == ["text/html"]
    assert [(p["name"], p["type"]) for p in email["attachments"]] == [("contract.pdf", "application/pdf")]
    text_part = email["textBody"][0]["partId"]
    value = email["bodyValues"][text_part]
    assert value["value"] == "Please find the cont" and value["isTruncated"] is True
    assert email["htmlBody"][0]["partId"] not in email["bodyValues"], "only text values were asked for"
    assert "textBody" in keypost.audit("MailItemsAccessed", realm="contoso")[-1]["details"]["properties"]


def test_vacation_response_replies_once_per_sender(keypost, world, alice):
    token, account = alice
    bob_token = keypost.tokens_for(world.bob)["access_token"]
    bob = unverified(bob_token)[1]["sub"]
    r = api(keypost, bob_token, [
        ["VacationResponse/set", {"accountId": bob, "update": {"singleton": {
            "isEnabled": True, "subject": "Out of office", "textBody": "Back on Monday.", "toDate": "2099-01-01T00:00:00Z"}}}, "v"],
        ["VacationResponse/get", {"accountId": bob}, "g"],
        ["VacationResponse/set", {"accountId": bob, "create": {"x": {}}, "update": {"other": {}}}, "bad"],
    ])
    out = {x[2]: x[1] for x in r.json()["methodResponses"]}
    assert out["v"]["updated"] == {"singleton": None}
    assert out["g"]["list"][0]["isEnabled"] is True and out["g"]["list"][0]["toDate"] == "2099-01-01T00:00:00Z"
    assert out["bad"]["notCreated"]["x"]["type"] == "singleton" and out["bad"]["notUpdated"]["other"]["type"] == "notFound"

    s = session(keypost, token).json()
    def call(*calls):
        return api(keypost, token, list(calls)).json()["methodResponses"]
    ident = call(["Identity/get", {"accountId": account}, "i"])[0][1]["list"][0]["id"]
    drafts = call(["Mailbox/query", {"accountId": account, "filter": {"role": "drafts"}}, "q"])[0][1]["ids"][0]
    for n in (1, 2):
        blob = requests.post(s["uploadUrl"].format(accountId=account), headers=auth(token), timeout=HTTP_TIMEOUT_S,
                             data=raw_message(world.alice.email, world.bob.email, f"Are you there {n}")).json()["blobId"]
        email = call(["Email/import", {"accountId": account, "emails": {"d": {"blobId": blob, "mailboxIds": {drafts: True}}}}, "i"])[0][1]["created"]["d"]["id"]
        sent = call(["EmailSubmission/set", {"accountId": account, "create": {"s": {"identityId": ident, "emailId": email}}}, "s"])[0][1]
        assert "s" in sent["created"], sent

    replies = call(
        ["Email/query", {"accountId": account, "filter": {"subject": "office"}}, "q"],
        ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                       "properties": ["subject", "from", "blobId"]}, "g"],
    )[1][1]["list"]
    assert len(replies) == 1, "one reply per sender per period, however many messages"
    assert replies[0]["subject"] == "Out of office" and replies[0]["from"][0]["email"] == world.bob.email
    raw = requests.get(s["downloadUrl"].format(accountId=account, blobId=replies[0]["blobId"], name="r.eml", type="message/rfc822"),
                       headers=auth(token), timeout=HTTP_TIMEOUT_S).content
    assert b"Auto-Submitted: auto-replied" in raw and b"Back on Monday." in raw


def test_eventsource_pushes_a_state_change(keypost, world, alice):
    import json
    import threading
    token, account = alice
    s = session(keypost, token).json()
    url = s["eventSourceUrl"].format(types="*", closeafter="state", ping="0")
    ids = api(keypost, token, [["Email/query", {"accountId": account}, "q"]]).json()["methodResponses"][0][1]["ids"]

    def change_something():
        time.sleep(0.5)
        api(keypost, token, [["Email/set", {"accountId": account, "update": {ids[0]: {"keywords/$flagged": True}}}, "s"]])

    threading.Thread(target=change_something, daemon=True).start()
    with requests.get(url, headers=auth(token), stream=True, timeout=15) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        body = r.raw.read().decode()  # closeafter=state: the server ends the stream after one event
    assert "event: state" in body, body
    data = json.loads(next(line[len("data:"):] for line in body.splitlines() if line.startswith("data:")))
    assert data["@type"] == "StateChange" and account in data["changed"]
    assert requests.get(url, timeout=5).status_code == 401, "no token, no stream"


def test_eventsource_ends_when_its_token_is_revoked(keypost, world):
    import threading
    token = keypost.tokens_for(world.alice)["access_token"]
    s = session(keypost, token).json()
    url = s["eventSourceUrl"].format(types="*", closeafter="no", ping="0")

    def revoke():
        time.sleep(0.5)
        requests.post(keypost.endpoint("contoso", "revocation_endpoint"),
                      data={"token": token, "client_id": CLI_CLIENT}, timeout=HTTP_TIMEOUT_S)

    threading.Thread(target=revoke, daemon=True).start()
    started = time.monotonic()
    with requests.get(url, headers=auth(token), stream=True, timeout=20) as r:
        assert r.status_code == 200
        r.raw.read()  # returns when the server ends the stream
    assert time.monotonic() - started < 10, "a revoked token keeps no stream open"
    assert any(x["details"]["reason"] == "TokenRevoked" for x in keypost.audit("TokenRejected", realm="contoso"))
