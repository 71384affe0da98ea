"""What one JMAP request may make the server do (RFC 8620 §2, §3.6.1, §3.7): a request of a few
kilobytes whose result references copy earlier responses again and again is answered in a few
kilobytes, not tens of megabytes; Email/parse reads each blob it is given once. And what an
account's uploads may take (RFC 8620 §6.1): they count against its quota, and the oldest make
room for new ones, their files removed from disk."""

import pytest
import requests

from conftest import HTTP_TIMEOUT_S
from jmap_client import CORE, Client, api, auth


@pytest.fixture(scope="module")
def hana(keypost, world):
    keypost.create_user("hana@contoso.test", "hana-correct-horse-battery-8")
    token = keypost.password_grant("contoso", "hana@contoso.test", "hana-correct-horse-battery-8").json()["access_token"]
    return Client(keypost, token)


def ref(of, path):
    return {"resultOf": of, "name": "Core/echo", "path": path}


def test_session_advertises_the_concurrency_limits(hana):
    core = hana.session["capabilities"][CORE]
    assert core["maxConcurrentRequests"] == 8
    assert core["maxConcurrentUpload"] == 4


def test_echoes_that_copy_whole_responses_stay_small(keypost, hana):
    # Each echo names the previous response twice: unbounded, the answer doubles per call
    # (these 15 calls of 3 KB were answered with 33 MB; 32 would exhaust the server's memory).
    calls = [["Core/echo", {"seed": "x" * 1000}, "c0"]]
    for i in range(1, 15):
        calls.append(["Core/echo", {"#a": ref(f"c{i - 1}", ""), "#b": ref(f"c{i - 1}", "")}, f"c{i}"])
    r = api(keypost, hana.token, calls, using=[CORE])
    assert r.status_code == 200, r.text[:500]
    assert len(r.content) < 64 * 1024, len(r.content)
    out = r.json()["methodResponses"]
    assert len(out) == 15
    assert out[1][0] == "error" and out[1][1]["type"] == "invalidResultReference"


def test_references_into_the_result_copy_a_bounded_amount(keypost, hana):
    # "/" is the member named "": 64 KB that each later call names 40 times (80 MB unbounded).
    calls = [["Core/echo", {"": {"blob": "x" * 65536}}, "c0"]]
    for i in range(1, 32):
        calls.append(["Core/echo", {f"#k{k}": ref("c0", "/") for k in range(40)}, f"c{i}"])
    r = api(keypost, hana.token, calls, using=[CORE])
    assert r.status_code == 200, r.text[:500]
    assert len(r.content) < 256 * 1024, len(r.content)
    out = r.json()["methodResponses"]
    assert all(x[0] == "error" and x[1]["type"] == "invalidResultReference" for x in out[1:]), out[1]

    # References still do what they are for.
    r = api(keypost, hana.token, [
        ["Core/echo", {"": {"k": "v"}, "ids": ["a", "b"]}, "c0"],
        ["Core/echo", {"#whole": ref("c0", "/"), "#ids": ref("c0", "/ids")}, "c1"],
    ], using=[CORE])
    assert r.json()["methodResponses"][1] == ["Core/echo", {"whole": {"k": "v"}, "ids": ["a", "b"]}, "c1"]


def test_email_parse_reads_each_blob_once(hana):
    raw = b"From: bob@fabrikam.test\r\nTo: hana@contoso.test\r\nSubject: parse me\r\n\r\n" + b"y" * 100_000 + b"\r\n"
    blob = hana.upload(raw)
    missing = "0" * 64
    out = hana.one("Email/parse", {"blobIds": [blob] * 250 + [missing] * 250, "properties": ["subject"]})
    assert list(out["parsed"]) == [blob] and out["parsed"][blob]["subject"] == "parse me"
    assert out["notFound"] == [missing], "each id is answered once"


def test_uploads_count_against_the_quota(keypost, world):
    keypost.create_user("ines@contoso.test", "ines-correct-horse-battery-9")
    token = keypost.password_grant("contoso", "ines@contoso.test", "ines-correct-horse-battery-9").json()["access_token"]
    ines = Client(keypost, token)
    keypost.cli("mail", "quota", "ines@contoso.test", "300KB")
    message = lambda n: (f"From: bob@fabrikam.test\r\nTo: ines@contoso.test\r\nSubject: upload {n}\r\n\r\n".encode()
                         + str(n).encode() * 200_000 + b"\r\n")
    first = ines.upload(message(1))
    second = ines.upload(message(2))
    out = ines.one("Email/parse", {"blobIds": [first, second], "properties": ["subject"]})
    assert out["notFound"] == [first], "the oldest upload made room for the new one (RFC 8620 §6.1)"
    assert out["parsed"][second]["subject"] == "upload 2"
    blob_file = lambda b: keypost.data_dir / "blobs" / b[:2] / b[2:]
    assert not blob_file(first).exists() and blob_file(second).exists()

    # Imported, the second upload is mail and takes room of its own: a third does not fit.
    imported = ines.one("Email/import", {"emails": {"e": {"blobId": second, "mailboxIds": {ines.mailbox("inbox"): True}}}})
    assert imported["created"], imported
    url = ines.session["uploadUrl"].format(accountId=ines.account)
    r = requests.post(url, data=message(3), headers={**auth(token), "Content-Type": "message/rfc822"},
                      timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 507, r.text
    assert r.json()["type"] == "urn:ietf:params:jmap:error:overQuota"
    assert blob_file(second).exists(), "the imported message keeps its file"
