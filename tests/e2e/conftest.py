"""End-to-end fixtures: a real `keypost serve` on a free loopback port, its CLI, and a populated world.

Every test module gets its own server in its own temporary data directory (module-scoped fixture),
so tests that import or revoke signing keys cannot disturb tests in other modules.

The binary is `$KEYPOST_BIN` (scripts/test sets it after `cargo build -p keypost`).
"""

from __future__ import annotations

import base64
import hashlib
import json as jsonlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt  # PyJWT
import pytest
import requests
from requests.adapters import HTTPAdapter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HEALTH_TIMEOUT_S = 30
CLI_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 30

CONSUMER_DOMAIN = "keypost.test"
CLI_CLIENT = "keypost-cli"
DEFAULT_SCOPE = "openid email offline_access mail"


def _default_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/keypost/target")
    return os.path.join(target, "debug", "keypost")


KEYPOST_BIN = os.environ.get("KEYPOST_BIN") or _default_bin()


class CliError(AssertionError):
    """A `keypost` CLI invocation exited non-zero."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Drain(threading.Thread):
    """Reads a pipe line by line into a list, so the server never blocks on a full pipe."""

    def __init__(self, pipe, lines: list[str]):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines = lines

    def run(self):
        for raw in iter(self.pipe.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
        self.pipe.close()


class Keypost:
    """One running server plus helpers to talk to it over HTTP and through its CLI."""

    def __init__(self, binary: str, tmp: Path):
        self.binary = binary
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPOST_")}
        env.update(
            KEYPOST_DATA_DIR=str(self.data_dir),
            KEYPOST_PUBLIC_URL=self.url,
            KEYPOST_LISTEN_HTTP=f"127.0.0.1:{self.port}",
            KEYPOST_CONSUMER_DOMAIN=CONSUMER_DOMAIN,
        )
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.admin_email: str | None = None
        self.admin_password: str | None = None
        self._discovery: dict[str, dict] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "serve"],
            env=self.env,
            cwd=self.tmp,  # so no ./keypost.toml or ./keypost-data of the caller is picked up
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _Drain(self.proc.stdout, self.stdout).start()
        _Drain(self.proc.stderr, self.stderr).start()
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        last = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the drains catch the last lines
                raise RuntimeError(
                    f"keypost serve exited early with {self.proc.returncode}\n{self.logs()}"
                )
            try:
                r = requests.get(f"{self.url}/healthz", timeout=2)
                if r.status_code == 200:
                    break
                last = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                last = repr(e)
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"keypost serve not healthy after {HEALTH_TIMEOUT_S}s ({last})\n{self.logs()}"
                )
            time.sleep(0.1)
        # The first-start lines are printed before or around the listener coming up; give the
        # drain a moment to see them.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self._parse_first_start()
            if self.admin_email and self.admin_password:
                break
            time.sleep(0.05)

    def _parse_first_start(self):
        for line in list(self.stdout):
            m = re.search(r"provider admin:\s*(\S+)", line)
            if m:
                self.admin_email = m.group(1)
            m = re.search(r"one-time password:\s*(\S+)", line)
            if m:
                self.admin_password = m.group(1)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def logs(self, tail: int = 80) -> str:
        out = "\n".join(self.stdout[-tail:])
        err = "\n".join(self.stderr[-tail:])
        return f"--- keypost stdout (tail) ---\n{out}\n--- keypost stderr (tail) ---\n{err}"

    # ---- CLI -------------------------------------------------------------------------------

    def run(self, *args: str, input: str | None = None, env: dict | None = None):
        """Runs the CLI with the server's environment; returns the CompletedProcess, never raises."""
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(
            [self.binary, *args],
            env=env or self.env,
            cwd=self.tmp,
            **stdin,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    def cli(self, *args: str, input: str | None = None, json: bool = False):
        """Runs `keypost ARGS [--json]`; returns stdout (parsed JSON with json=True)."""
        argv = [*args, "--json"] if json else list(args)
        p = self.run(*argv, input=input)
        if p.returncode != 0:
            raise CliError(
                f"keypost {' '.join(argv)} exited {p.returncode}\n"
                f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
            )
        if json:
            try:
                return jsonlib.loads(p.stdout)
            except ValueError as e:
                raise CliError(f"keypost {' '.join(argv)} printed non-JSON: {p.stdout!r}") from e
        return p.stdout

    def audit(self, operation: str | None = None, realm: str | None = None) -> list[dict]:
        args = ["audit", "search"]
        if realm:
            args += ["--realm", realm]
        if operation:
            args += ["--operation", operation]
        records = self.cli(*args, json=True)
        assert isinstance(records, list), f"audit search --json is not an array: {records!r}"
        return records

    def import_key(self, realm: str, pem_path: Path) -> str:
        out = self.cli("keys", "import", "--realm", realm, "--file", str(pem_path), json=True)
        assert isinstance(out, dict) and out.get("kid"), f"keys import --json gave {out!r}"
        return out["kid"]

    def create_client(self, realm: str, client_id: str, *flags: str) -> dict:
        out = self.cli("client", "create", realm, client_id, *flags, json=True)
        assert isinstance(out, dict), f"client create --json gave {out!r}"
        return out

    def create_user(self, email: str, password: str, *flags: str):
        self.cli("user", "create", email, *flags, input=password + "\n")

    # ---- HTTP ------------------------------------------------------------------------------

    def issuer(self, realm: str) -> str:
        return f"{self.url}/realms/{realm}"

    @property
    def mail_audience(self) -> str:
        return f"{self.url}/mail"

    @property
    def userinfo_audience(self) -> str:
        return f"{self.url}/userinfo"

    def discovery(self, realm: str) -> dict:
        if realm not in self._discovery:
            r = requests.get(
                f"{self.issuer(realm)}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT_S
            )
            assert r.status_code == 200, f"discovery for {realm}: {r.status_code} {r.text}"
            self._discovery[realm] = r.json()
        return self._discovery[realm]

    def endpoint(self, realm: str, name: str) -> str:
        doc = self.discovery(realm)
        assert name in doc, f"discovery of {realm} lacks {name}: {doc}"
        return doc[name]

    def password_grant(
        self,
        realm: str,
        username: str,
        password: str,
        scope: str = DEFAULT_SCOPE,
        client_id: str = CLI_CLIENT,
    ) -> requests.Response:
        return requests.post(
            self.endpoint(realm, "token_endpoint"),
            data={
                "grant_type": "password",
                "username": username,
                "password": password,
                "client_id": client_id,
                "scope": scope,
            },
            timeout=HTTP_TIMEOUT_S,
        )

    def tokens_for(self, user: "User", scope: str = DEFAULT_SCOPE) -> dict:
        r = self.password_grant(user.realm, user.email, user.password, scope=scope)
        assert r.status_code == 200, f"password grant for {user.email}: {r.status_code} {r.text}"
        return r.json()

    def refresh(self, realm: str, refresh_token: str, client_id: str = CLI_CLIENT):
        return requests.post(
            self.endpoint(realm, "token_endpoint"),
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": client_id,
            },
            timeout=HTTP_TIMEOUT_S,
        )

    def userinfo(self, realm: str, access_token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {access_token}"} if access_token is not None else {}
        return requests.get(
            self.endpoint(realm, "userinfo_endpoint"), headers=headers, timeout=HTTP_TIMEOUT_S
        )


@dataclass(frozen=True)
class User:
    email: str
    password: str
    realm: str


@dataclass(frozen=True)
class World:
    alice: User  # contoso tenant
    bob: User  # fabrikam tenant
    carol: User  # consumer realm


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keypost(request):
    if not (os.path.isfile(KEYPOST_BIN) and os.access(KEYPOST_BIN, os.X_OK)):
        pytest.fail(f"KEYPOST_BIN={KEYPOST_BIN!r} is not an executable (run scripts/test)")
    tmp = Path(tempfile.mkdtemp(prefix="keypost-e2e-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    kp.start()
    request.node._keypost = kp  # for the failure report hook below
    try:
        yield kp
    finally:
        kp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def world(keypost: Keypost) -> World:
    keypost.cli("tenant", "create", "contoso", "--domain", "contoso.test", "--name", "Contoso")
    keypost.cli("tenant", "create", "fabrikam", "--domain", "fabrikam.test", "--name", "Fabrikam")
    w = World(
        alice=User("alice@contoso.test", "alice-correct-horse-battery-1", "contoso"),
        bob=User("bob@fabrikam.test", "bob-correct-horse-battery-2", "fabrikam"),
        carol=User(f"carol@{CONSUMER_DOMAIN}", "carol-correct-horse-battery-3", "consumers"),
    )
    for u in (w.alice, w.bob, w.carol):
        keypost.create_user(u.email, u.password)
    return w


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the server's log tail to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        module = item.getparent(pytest.Module)
        kp = getattr(module, "_keypost", None)
        if kp is not None:
            report.sections.append(("keypost server", kp.logs(40)))


# ---- helpers shared by the test modules ------------------------------------------------------


class _FormParser(HTMLParser):
    """Collects every <form> with its method, action and input fields."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._form: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {
                "method": a.get("method", "get").lower(),
                "action": a.get("action", ""),
                "inputs": [],
            }
            self.forms.append(self._form)
        elif tag in ("input", "button") and self._form is not None:
            self._form["inputs"].append(a)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def parse_forms(html: str) -> list[dict]:
    p = _FormParser()
    p.feed(html)
    return p.forms


def login_form(html: str) -> dict:
    """The page's POST form that asks for username and password."""
    for form in parse_forms(html):
        names = {i.get("name") for i in form["inputs"]}
        if form["method"] == "post" and {"username", "password"} <= names:
            return form
    raise AssertionError(f"no <form method=post> with username and password fields in:\n{html}")


def submit_login(
    session: requests.Session, page: requests.Response, username: str, password: str
) -> requests.Response:
    """Posts the login form found on `page`: every hidden input back, plus the credentials.

    Redirects are not followed: the caller inspects the 303 to the client's redirect URI.
    """
    assert page.status_code == 200, f"authorize: {page.status_code} {page.text}"
    assert "text/html" in page.headers.get("Content-Type", ""), page.headers
    form = login_form(page.text)
    data = {
        i["name"]: i.get("value", "")
        for i in form["inputs"]
        if i.get("type", "").lower() == "hidden" and i.get("name")
    }
    data["username"] = username
    data["password"] = password
    action = urljoin(page.url, form["action"] or page.url)
    return session.post(action, data=data, allow_redirects=False, timeout=HTTP_TIMEOUT_S)


def query_of(url: str) -> dict[str, str]:
    """The query parameters of a URL, one value each."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def www_authenticate(r: requests.Response) -> str:
    return r.headers.get("WWW-Authenticate", "")


# ---- token helpers ---------------------------------------------------------------------------

ACCESS_TOKEN_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "tid"]


def jwks_client(kp: Keypost, realm: str) -> jwt.PyJWKClient:
    """A JWKS client that knows nothing but the realm's discovery document's `jwks_uri`."""
    return jwt.PyJWKClient(kp.discovery(realm)["jwks_uri"], cache_keys=False, cache_jwk_set=False)


def verify_access_token(kp: Keypost, realm: str, token: str) -> dict:
    """Verifies an access token the way an independent resource server would: PyJWT, the realm's
    discovery and JWKS only, EdDSA only, the mail audience, the discovered issuer."""
    signing_key = jwks_client(kp, realm).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        algorithms=["EdDSA"],
        audience=kp.mail_audience,
        issuer=kp.discovery(realm)["issuer"],
        options={"require": ACCESS_TOKEN_CLAIMS},
    )


def verify_id_token(kp: Keypost, realm: str, token: str, client_id: str) -> dict:
    signing_key = jwks_client(kp, realm).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience=client_id,
        issuer=kp.discovery(realm)["issuer"],
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )


class FromAddress(HTTPAdapter):
    """Connects from a given local address: any of 127.0.0.0/8 stands for another client."""

    def __init__(self, source):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(source: str) -> requests.Session:
    """A requests session whose connections come from `source` (a loopback address)."""
    s = requests.Session()
    s.mount("http://", FromAddress(source))
    return s


def new_ed25519_pem(directory: Path, name: str = "key.pem") -> tuple[Ed25519PrivateKey, Path]:
    """An attacker's (or an operator's) Ed25519 key, written as PKCS#8 PEM."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / name
    path.write_bytes(pem)
    return key, path


def forge_access_token(
    kp: Keypost, key: Ed25519PrivateKey, kid: str, realm: str, sub: str, **overrides
) -> str:
    """A well-formed RFC 9068 access token for `sub` in `realm`, signed with `key` outside
    Keypost. Every claim is what Keypost itself would write; only the signer is not Keypost."""
    now = int(time.time())
    claims = {
        "iss": kp.issuer(realm),
        "sub": sub,
        "aud": [kp.mail_audience, kp.userinfo_audience],
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": str(uuid.uuid4()),
        "client_id": CLI_CLIENT,
        "scope": "openid email",
        "tid": realm,
    }
    claims.update(overrides)
    return jwt.encode(
        claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt", "alg": "EdDSA"}
    )


def unverified(token: str) -> tuple[dict, dict]:
    """Header and claims of a token without checking anything (for tokens the test itself got
    from Keypost, or to inspect what it forged)."""
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def rejections(kp: Keypost, reason: str, kid: str, timeout: float = 5.0) -> list[dict]:
    """`TokenRejected` audit records with `details.reason == reason` for the presented `kid`;
    fails (listing what the log holds) if none appears within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        records = kp.audit(operation="TokenRejected")
        hits = [
            r
            for r in records
            if (r.get("details") or {}).get("reason") == reason and r.get("kid") == kid
        ]
        if hits:
            return hits
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no TokenRejected record with reason {reason} and kid {kid}; "
                f"TokenRejected records: {jsonlib.dumps(records, indent=1)}"
            )
        time.sleep(0.2)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a code verifier (RFC 7636 §4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def random_state() -> str:
    return secrets.token_urlsafe(16)


# ---- The signer protocol, written from its specification (crates/keys/src/wire.rs) -----------

_SIGNER_OPS = {"jws": (1, ("realm", "purpose", "alg", "typ"), "payload"),
               "raw": (2, ("realm", "purpose", "alg"), "message"),
               "ping": (3, (), None)}
_SIGNER_ERRORS = {2: "refused", 3: "no_active_key", 4: "failed"}


def signer_frame(request: dict) -> bytes:
    """One request frame: length:u32be, an operation byte, u8-length-prefixed strings, the rest."""
    op, fields, rest = _SIGNER_OPS[request["op"]]
    body = bytes([op])
    for name in fields:
        value = request[name].encode()
        body += bytes([len(value)]) + value
    if rest:
        body += request[rest].encode()
    return len(body).to_bytes(4, "big") + body


def signer_answer(sock: socket.socket) -> dict:
    """Reads one answer frame and returns it as a dict: kid/alg/header/signature, pong, or
    error/detail."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the signer closed the connection without answering"
            data += chunk
        return data

    body = exactly(int.from_bytes(exactly(4), "big"))
    kind, rest = body[0], body[1:]
    if kind == 0:
        kid_len = rest[0]
        kid, rest = rest[1:1 + kid_len].decode(), rest[1 + kid_len:]
        alg_len = rest[0]
        alg, rest = rest[1:1 + alg_len].decode(), rest[1 + alg_len:]
        header_len = int.from_bytes(rest[:2], "big")
        header, signature = rest[2:2 + header_len].decode(), rest[2 + header_len:]
        return {"kid": kid, "alg": alg, "header": header, "signature": signature}
    if kind == 1:
        assert not rest
        return {"pong": True}
    return {"error": _SIGNER_ERRORS[kind], "detail": rest.decode()}
