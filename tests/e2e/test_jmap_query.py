"""Email/query beyond the basics (RFC 8621 §4.4): OR/NOT filters and every condition, every
sort, collapsed threads, anchors; queryChanges and Thread/changes kept exact while other
clients write; SearchSnippet/get. A client replaying queryChanges must always end with exactly
the list a fresh query returns."""

import threading

import pytest

from jmap_client import Client

DAVE = "dave@contoso.test"


def message(n, sender, subject, body="Hello.", reply_to=None, cc=None, attachment=False):
    lines = [f"From: {sender}", f"To: {DAVE}", f"Subject: {subject}", f"Message-ID: <q{n}@fabrikam.test>",
             f"Date: Mon, {n:02d} Nov 2026 10:00:00 +0000"]
    if cc:
        lines.append(f"Cc: {cc}")
    if reply_to:
        lines.append(f"In-Reply-To: <q{reply_to}@fabrikam.test>")
    if attachment:
        lines += ["MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', "", "--b",
                  "Content-Type: text/plain", "", body, "--b",
                  'Content-Type: application/pdf; name="plan.pdf"', "Content-Disposition: attachment; filename=plan.pdf",
                  "Content-Transfer-Encoding: base64", "", "JVBERi0xLjQ=", "--b--", ""]
    else:
        lines += ["", body, ""]
    return "\r\n".join(lines).encode()


@pytest.fixture(scope="module")
def dave(keypost, world):
    keypost.create_user(DAVE, "dave-correct-horse-battery-4")
    token = keypost.password_grant("contoso", DAVE, "dave-correct-horse-battery-4").json()["access_token"]
    c = Client(keypost, token)
    c.ids = {
        "budget": c.import_email(message(1, "Zed <zed@fabrikam.test>", "Budget review", "Q3 budget is attached below."),
                                 keywords=["$flagged"], received_at="2026-11-01T10:00:00Z"),
        "reply": c.import_email(message(2, "Amy <amy@fabrikam.test>", "Re: Budget review", "Looks fine to me.", reply_to=1),
                                keywords=["$seen"], received_at="2026-11-02T10:00:00Z"),
        "lunch": c.import_email(message(3, "Bob <bob@fabrikam.test>", "Lunch", "Noodles? " * 100, cc="Carol <carol@keypost.test>"),
                                received_at="2026-11-03T10:00:00Z"),
        "holiday": c.import_email(message(4, "Mia <mia@fabrikam.test>", "Holiday plans", "See the plan.", attachment=True),
                                  received_at="2026-11-04T10:00:00Z"),
    }
    return c


def names(c, ids):
    back = {v: k for k, v in c.ids.items()}
    return [back.get(i, i) for i in ids]


def query(c, **args):
    out = c.one("Email/query", args)
    assert "error" not in out, out
    return names(c, out["ids"])


def test_or_not_and_every_condition(dave):
    c = dave
    assert set(query(c, filter={"operator": "OR", "conditions": [{"subject": "lunch"}, {"subject": "holiday"}]})) == {"lunch", "holiday"}
    assert set(query(c, filter={"operator": "NOT", "conditions": [{"text": "budget"}]})) == {"lunch", "holiday"}
    nested = {"operator": "AND", "conditions": [
        {"inMailbox": c.mailbox("inbox")},
        {"operator": "OR", "conditions": [{"hasKeyword": "$flagged"}, {"hasAttachment": True}]},
    ]}
    assert set(query(c, filter=nested)) == {"budget", "holiday"}
    assert query(c, filter={"after": "2026-11-02T00:00:00Z", "before": "2026-11-03T00:00:00Z"}) == ["reply"]
    assert query(c, filter={"minSize": 700}) == ["lunch"]
    assert query(c, filter={"cc": "carol"}) == ["lunch"]
    assert query(c, filter={"notKeyword": "$seen", "from": "zed"}) == ["budget"]
    assert set(query(c, filter={"someInThreadHaveKeyword": "$seen"})) == {"budget", "reply"}
    assert query(c, filter={"allInThreadHaveKeyword": "$seen"}) == [], "the budget thread is half read"
    assert set(query(c, filter={"noneInThreadHaveKeyword": "$flagged"})) == {"lunch", "holiday"}
    assert query(c, filter={"inMailboxOtherThan": [c.mailbox("inbox")]}) == []

    assert c.one("Email/query", {"filter": {"header": ["X-Spam"]}})["error"] == "unsupportedFilter"
    assert c.one("Email/query", {"filter": {"operator": "XOR", "conditions": []}})["error"] == "unsupportedFilter"
    deep = {"text": "x"}
    for _ in range(12):
        deep = {"operator": "AND", "conditions": [deep]}
    assert c.one("Email/query", {"filter": deep})["error"] == "unsupportedFilter"
    assert c.one("Email/query", {"filter": {"before": "yesterday"}})["error"] == "invalidArguments"


def test_every_sort(dave):
    c = dave
    by = lambda prop, asc=True, **kw: query(c, sort=[{"property": prop, "isAscending": asc, **kw}])
    assert by("receivedAt") == ["budget", "reply", "lunch", "holiday"]
    assert by("receivedAt", False) == ["holiday", "lunch", "reply", "budget"]
    assert by("sentAt") == ["budget", "reply", "lunch", "holiday"]
    assert by("from") == ["reply", "lunch", "holiday", "budget"], "Amy, Bob, Mia, Zed"
    assert by("subject")[:2] in (["budget", "reply"], ["reply", "budget"]), "Re: is not part of the subject"
    assert by("subject")[2:] == ["holiday", "lunch"]
    assert by("size", False)[0] == "lunch"
    assert by("hasKeyword", False, keyword="$flagged")[0] == "budget"
    two = query(c, sort=[{"property": "hasKeyword", "keyword": "$seen", "isAscending": False},
                         {"property": "receivedAt", "isAscending": True}])
    assert two == ["reply", "budget", "lunch", "holiday"]
    assert c.one("Email/query", {"sort": [{"property": "color"}]})["error"] == "unsupportedSort"
    assert c.one("Email/query", {"sort": [{"property": "hasKeyword"}]})["error"] == "invalidArguments"
    options = c.session["accounts"][c.account]["accountCapabilities"]["urn:ietf:params:jmap:mail"]["emailQuerySortOptions"]
    assert {"receivedAt", "from", "subject", "size", "hasKeyword"} <= set(options)


def test_collapse_threads_anchor_and_windows(dave):
    c = dave
    out = c.one("Email/query", {"collapseThreads": True, "calculateTotal": True, "sort": [{"property": "receivedAt"}]})
    assert names(c, out["ids"]) == ["budget", "lunch", "holiday"], "the reply shares the budget thread"
    assert out["total"] == 3
    asc = [{"property": "receivedAt"}]
    out = c.one("Email/query", {"sort": asc, "anchor": c.ids["lunch"], "anchorOffset": -1, "limit": 2})
    assert names(c, out["ids"]) == ["reply", "lunch"] and out["position"] == 1
    out = c.one("Email/query", {"sort": asc, "position": -1})
    assert names(c, out["ids"]) == ["holiday"] and out["position"] == 3
    assert c.one("Email/query", {"anchor": "Mnot-a-result"})["error"] == "anchorNotFound"


def replay(old_ids, changes):
    """The client side of RFC 8620 §5.6: drop removed ids, insert added ones in index order."""
    removed = set(changes["removed"])
    ids = [i for i in old_ids if i not in removed]
    for a in sorted(changes["added"], key=lambda a: a["index"]):
        ids.insert(a["index"], a["id"])
    return ids


QUERIES = [
    {"filter": {"inMailbox": "INBOX"}, "sort": [{"property": "receivedAt", "isAscending": False}]},
    {"sort": [{"property": "subject"}], "collapseThreads": True},
    {"filter": {"notKeyword": "$seen"}, "sort": [{"property": "someInThreadHaveKeyword", "keyword": "$flagged"}]},
]


def resolved(c, q):
    q = dict(q)
    if q.get("filter", {}).get("inMailbox") == "INBOX":
        q["filter"] = {"inMailbox": c.mailbox("inbox")}
    return q


def test_query_changes_replay_to_the_fresh_result(dave):
    c = dave
    for q in QUERIES:
        q = resolved(c, q)
        before = c.one("Email/query", q)
        new_id = c.import_email(message(20, "Ann <ann@fabrikam.test>", "Re: Budget review", "Me too", reply_to=1))
        c.one("Email/set", {"update": {c.ids["lunch"]: {"keywords/$seen": True}}})
        c.one("Email/set", {"update": {c.ids["lunch"]: {"keywords/$seen": None}}})
        c.one("Email/set", {"destroy": [new_id]})
        c.import_email(message(21, "Eve <eve@fabrikam.test>", "Another", "x"))
        changes = c.one("Email/queryChanges", {**q, "sinceQueryState": before["queryState"], "calculateTotal": True})
        after = c.one("Email/query", q)
        assert changes["newQueryState"] == after["queryState"]
        assert replay(before["ids"], changes) == after["ids"], q
        assert changes["total"] == len(after["ids"])
    tight = c.one("Email/queryChanges", {"sinceQueryState": "0", "maxChanges": 1})
    assert tight["error"] == "tooManyChanges"
    assert c.one("Email/queryChanges", {"sinceQueryState": "garbage"})["error"] == "cannotCalculateChanges"


def test_query_changes_stay_exact_under_concurrent_writers(keypost, dave):
    c = dave
    writers = [Client(keypost, c.token) for _ in range(3)]
    stop = threading.Event()
    errors = []

    def write(w, n):
        i = 0
        while not stop.is_set() and i < 15:
            try:
                eid = w.import_email(message(30 + n, "W <w@fabrikam.test>", f"Writer {n} #{i}", "busy"))
                if i % 2 == 0:
                    w.one("Email/set", {"update": {eid: {"keywords/$seen": True}}})
                if i % 3 == 0:
                    w.one("Email/set", {"destroy": [eid]})
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return
            i += 1

    q = {"sort": [{"property": "receivedAt", "isAscending": False}], "filter": {"notKeyword": "$seen"}}
    cached = c.one("Email/query", q)
    threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    syncs = 0
    while any(t.is_alive() for t in threads) or syncs < 3:
        changes = c.one("Email/queryChanges", {**q, "sinceQueryState": cached["queryState"]})
        assert "error" not in changes, changes
        cached = {"ids": replay(cached["ids"], changes), "queryState": changes["newQueryState"]}
        syncs += 1
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    changes = c.one("Email/queryChanges", {**q, "sinceQueryState": cached["queryState"]})
    final = replay(cached["ids"], changes)
    fresh = c.one("Email/query", q)["ids"]
    assert final == fresh
    assert len(fresh) > 4, "the writers left unread mail behind"


def test_thread_changes(dave):
    c = dave
    state = c.one("Thread/get", {"ids": []})["state"]
    reply = c.import_email(message(40, "Zed <zed@fabrikam.test>", "Re: Lunch", "Yes", reply_to=3))
    fresh = c.import_email(message(41, "Zed <zed@fabrikam.test>", "Brand new topic", "Hi"))
    threads = {e["id"]: e["threadId"] for e in c.one("Email/get", {"ids": [reply, fresh, c.ids["lunch"]], "properties": ["threadId"]})["list"]}
    assert threads[reply] == threads[c.ids["lunch"]]
    out = c.one("Thread/changes", {"sinceState": state})
    assert out["updated"] == [threads[reply]]
    assert out["created"] == [threads[fresh]]
    state = out["newState"]
    c.one("Email/set", {"destroy": [fresh]})
    c.one("Email/set", {"update": {reply: {"keywords/$flagged": True}}})
    out = c.one("Thread/changes", {"sinceState": state})
    assert out["destroyed"] == [threads[fresh]] and out["updated"] == [] and out["created"] == []


def test_search_snippets(keypost, dave):
    c = dave
    out = c.one("SearchSnippet/get", {"filter": {"text": "budget"}, "emailIds": [c.ids["budget"], c.ids["lunch"], "Mnope"]})
    snippets = {s["emailId"]: s for s in out["list"]}
    assert snippets[c.ids["budget"]]["subject"] == "<mark>Budget</mark> review"
    assert "<mark>budget</mark>" in snippets[c.ids["budget"]]["preview"]
    assert snippets[c.ids["lunch"]]["subject"] is None and snippets[c.ids["lunch"]]["preview"] is None
    assert out["notFound"] == ["Mnope"]
    last = keypost.audit("MailItemsAccessed", realm="contoso")[-1]
    assert last["details"]["operation"] == "SearchSnippet/get"


def test_mailbox_query_changes(dave):
    c = dave
    q = {"sort": [{"property": "name"}]}
    before = c.one("Mailbox/query", q)
    assert before["canCalculateChanges"] is True
    created = c.one("Mailbox/set", {"create": {"n": {"name": "Aardvarks"}}})["created"]["n"]["id"]
    changes = c.one("Mailbox/queryChanges", {**q, "sinceQueryState": before["queryState"]})
    after = c.one("Mailbox/query", q)
    assert replay(before["ids"], changes) == after["ids"]
    assert after["ids"][0] == created
