"""A small JMAP client over `requests`, written from RFC 8620/8621 (not from Keypost's code), for
the JMAP e2e tests: session, method calls with result references, upload, download, import."""

import requests

from conftest import HTTP_TIMEOUT_S, unverified

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
QUOTA = "urn:ietf:params:jmap:quota"
USING = (CORE, MAIL, SUBMISSION, VACATION, QUOTA)


def auth(token):
    return {"Authorization": f"Bearer {token}", "User-Agent": "keypost-e2e-jmap/1"}


def session(keypost, token):
    return requests.get(f"{keypost.url}/.well-known/jmap", headers=auth(token), timeout=HTTP_TIMEOUT_S)


def api(keypost, token, calls, using=USING, raw=None):
    body = raw if raw is not None else {"using": list(using), "methodCalls": calls}
    kwargs = {"data": body} if isinstance(body, (bytes, str)) else {"json": body}
    return requests.post(f"{keypost.url}/jmap/api", headers=auth(token), timeout=HTTP_TIMEOUT_S, **kwargs)


class Client:
    """One signed-in user's JMAP session."""

    def __init__(self, keypost, token):
        self.keypost = keypost
        self.token = token
        self.account = unverified(token)[1]["sub"]
        self.session = session(keypost, token).json()

    def call(self, *calls):
        """Runs method calls (accountId filled in); returns {call id: arguments}. A method-level
        error comes back as {"error": type, ...} under its call id; an implicit response (an
        Email/set after EmailSubmission/set) under "{call id}/{method}"."""
        calls = [[name, {"accountId": self.account, **args}, cid] for name, args, cid in calls]
        r = api(self.keypost, self.token, calls)
        assert r.status_code == 200, r.text
        out = {}
        for name, args, cid in r.json()["methodResponses"]:
            out[cid if cid not in out else f"{cid}/{name}"] = (
                args if name != "error" else {"error": args["type"], **args})
        return out

    def one(self, name, args):
        return self.call([name, args, "x"])["x"]

    def mailbox(self, role):
        return self.one("Mailbox/query", {"filter": {"role": role}})["ids"][0]

    def upload(self, data, content_type="message/rfc822"):
        url = self.session["uploadUrl"].format(accountId=self.account)
        r = requests.post(url, data=data, headers={**auth(self.token), "Content-Type": content_type},
                          timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 201, r.text
        return r.json()["blobId"]

    def download(self, blob, name="blob", media_type="application/octet-stream"):
        url = self.session["downloadUrl"].format(accountId=self.account, blobId=blob, name=name, type=media_type)
        return requests.get(url, headers=auth(self.token), timeout=HTTP_TIMEOUT_S)

    def import_email(self, raw, role="inbox", keywords=(), received_at=None):
        spec = {"blobId": self.upload(raw), "mailboxIds": {self.mailbox(role): True},
                "keywords": {k: True for k in keywords}}
        if received_at:
            spec["receivedAt"] = received_at
        out = self.one("Email/import", {"emails": {"e": spec}})
        assert out["created"], out
        return out["created"]["e"]["id"]
