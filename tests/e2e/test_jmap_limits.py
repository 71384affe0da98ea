"""What one JMAP request may make the server do (RFC 8620 §2, §3.6.1, §3.7): a request of a few
kilobytes whose result references copy earlier responses again and again is answered in a few
kilobytes, not tens of megabytes; Email/parse reads each blob it is given once."""

import pytest

from jmap_client import CORE, Client, api


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
