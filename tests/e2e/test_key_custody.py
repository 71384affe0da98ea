"""Key custody (issue 5, first part): a process holding private keys never leaves them in a
core dump. `keypost serve` marks itself non-dumpable and sets its core limit to zero before it
loads a key, so even a crash with core dumps enabled writes nothing (THREAT-MODEL step 2: the
key that left the signing system is believed to have left in a crash dump).

A control run first shows that this machine does write core dumps, so the absence of one is
proof, not luck."""

import base64
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from conftest import (KEYPOST_BIN, Keypost, jwks_client, new_ed25519_pem, signer_answer,
                      signer_frame)


@pytest.fixture()
def cores_enabled():
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def cores_in(directory: Path):
    return [p for p in directory.iterdir() if p.name.startswith("core")]


def test_crashes_with_core_dumps_enabled_leave_no_dump(cores_enabled):
    if cores_enabled == 0:
        pytest.skip("the hard core-size limit is 0 here: no process can dump")
    control = Path(tempfile.mkdtemp(prefix="keypost-core-control-"))
    try:
        subprocess.run([sys.executable, "-c", "import os; os.abort()"], cwd=control, check=False)
        if not cores_in(control):
            pytest.skip(f"this kernel writes no core file to the working directory "
                        f"(core_pattern {Path('/proc/sys/kernel/core_pattern').read_text().strip()!r})")
    finally:
        shutil.rmtree(control, ignore_errors=True)

    tmp = Path(tempfile.mkdtemp(prefix="keypost-core-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    kp.start()
    try:
        pid = kp.proc.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        core_line = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core_line.split()[4:6] == ["0", "0"], core_line
        # A key is loaded and in use: mint a token, then crash.
        kp.cli("tenant", "create", "contoso", "--domain", "contoso.test")
        kp.create_user("kim@contoso.test", "kim-correct-horse-battery-13")
        assert kp.password_grant("contoso", "kim@contoso.test", "kim-correct-horse-battery-13").status_code == 200
        # The signer, which holds the unsealed keys, first.
        os.kill(signer_pid(pid), signal.SIGABRT)
        time.sleep(1.0)
        assert cores_in(tmp) == [], "the signer's crash left a core dump"
        os.kill(pid, signal.SIGABRT)
        kp.proc.wait(timeout=10)
        assert kp.proc.returncode == -signal.SIGABRT
        time.sleep(0.5)
        assert cores_in(tmp) == [], "the crash left a core dump"
    finally:
        kp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_each_realm_publishes_its_key_history(keypost, world):
    keypost.tokens_for(world.alice)
    before = {k["kid"] for k in keypost.cli("keys", "list", "--realm", "contoso", json=True)}
    keypost.cli("keys", "rotate", "--realm", "contoso")
    old_access = [k for k in keypost.cli("keys", "list", "--realm", "contoso", json=True)
                  if k["kid"] in before and k["purpose"] == "access-token"][0]
    keypost.cli("keys", "revoke", old_access["kid"])
    history = requests.get(f"{keypost.url}/realms/contoso/key-history", timeout=10).json()
    assert history["realm"] == "contoso"
    keys = {k["kid"]: k for k in history["keys"]}
    assert before <= set(keys), "every key ever, not only the live ones"
    revoked = keys[old_access["kid"]]
    assert revoked["state"] == "revoked" and revoked["revoked_at"] and revoked["retired_at"]
    assert {k["purpose"] for k in keys.values()} >= {"access-token", "id-token", "audit"}
    for k in keys.values():
        assert k["public_jwk"]["kid"] == k["kid"] and "d" not in k["public_jwk"], "public halves only"
    assert all(k["realm"] == "contoso" for k in keys.values())
    assert requests.get(f"{keypost.url}/realms/nope/key-history", timeout=10).status_code == 404


def signer_pid(serve_pid: int, timeout: float = 10.0) -> int:
    """The signer child of a `keypost serve`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == serve_pid and b"signer" in cmdline:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no signer child of {serve_pid}")


def memory_contains(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of the process holds `needle` (read as root from /proc)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if "r" not in perms:
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            if needle in chunk:
                found = True
                break
    return found


def test_the_web_process_holds_no_private_key_and_the_signer_is_locked_down(keypost, world, tmp_path):
    key, pem = new_ed25519_pem(tmp_path)
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    kid = keypost.import_key("fabrikam", pem)
    token = keypost.tokens_for(world.bob)["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == kid, "signed with the imported key"

    serve = keypost.proc.pid
    assert memory_contains(serve, keypost.url.encode()), "the scan sees this process's memory"
    assert not memory_contains(serve, seed), "a private key is in the web-facing process"

    signer = signer_pid(serve)
    socket_path = keypost.data_dir / "signer" / "signer.sock"
    assert (socket_path.stat().st_mode & 0o777) == 0o600
    assert (socket_path.parent.stat().st_mode & 0o777) == 0o700
    limits = Path(f"/proc/{signer}/limits").read_text()
    assert next(l for l in limits.splitlines() if l.startswith("Max core file size")).split()[4:6] == ["0", "0"]


def test_minting_fails_cleanly_while_the_signer_is_down_then_recovers(keypost, world):
    assert keypost.password_grant(world.alice.realm, world.alice.email, world.alice.password).status_code == 200
    os.kill(signer_pid(keypost.proc.pid), signal.SIGKILL)
    r = keypost.password_grant(world.alice.realm, world.alice.email, world.alice.password)
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = keypost.password_grant(world.alice.realm, world.alice.email, world.alice.password)
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200, "the signer was restarted"
    assert keypost.userinfo(world.alice.realm, r.json()["access_token"]).status_code == 200


def test_the_signer_locks_its_memory_without_pinning_what_it_only_reserves(keypost, world):
    """Key pages never reach swap (mlockall), while address space the allocator merely reserves
    is not filled with locked pages (MCL_ONFAULT: with plain MCL_FUTURE the signer held its
    allocator's reserve resident — 107 MB in a debug build here, against 25 MB)."""
    assert keypost.password_grant(world.alice.realm, world.alice.email, world.alice.password).status_code == 200
    status = Path(f"/proc/{signer_pid(keypost.proc.pid)}/status").read_text()
    kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines())
          if k in ("VmLck", "VmRSS", "VmSize")}
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if os.geteuid() != 0 and soft != resource.RLIM_INFINITY and soft < kb["VmSize"] * 1024:
        # Not allowed here: the signer must say so rather than pretend.
        assert "signer memory not locked" in keypost.logs(tail=100_000)
        pytest.skip("RLIMIT_MEMLOCK below the signer's address space: MCL_ONFAULT not exercised")
    assert kb["VmLck"] > 0, status
    assert kb["VmRSS"] < 64 * 1024, f"the signer holds {kb['VmRSS']} kB resident"


def test_a_restarted_signer_is_the_build_serve_runs_even_after_an_upgrade(tmp_path):
    """A package upgrade replaces the binary while serve runs. The signer serve restarts must
    still be serve's own build: their protocol carries no version."""
    binary = tmp_path / "keypost"
    shutil.copy2(KEYPOST_BIN, binary)
    kp = Keypost(str(binary), tmp_path)
    kp.start()
    try:
        kp.cli("tenant", "create", "contoso", "--domain", "contoso.test")
        kp.create_user("uma@contoso.test", "uma-correct-horse-battery-14")
        assert kp.password_grant("contoso", "uma@contoso.test", "uma-correct-horse-battery-14").status_code == 200
        # The upgrade: another program renamed over the path serve was started from.
        other = tmp_path / "keypost.new"
        other.write_text("#!/bin/sh\nexit 3\n")
        other.chmod(0o755)
        os.replace(other, binary)
        kp.binary = KEYPOST_BIN  # for the CLI from here on
        os.kill(signer_pid(kp.proc.pid), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = kp.password_grant("contoso", "uma@contoso.test", "uma-correct-horse-battery-14")
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200, "the signer came back as serve's own build"
    finally:
        kp.stop()


def signer_request(keypost, request: dict) -> dict:
    """One request on the signer's socket, as any process that can reach it would send it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(keypost.data_dir / "signer" / "signer.sock"))
        s.sendall(signer_frame(request))
        return signer_answer(s)


def test_the_signer_refuses_what_the_web_process_must_not_ask_and_audits_it(keypost, world):
    payload = base64.urlsafe_b64encode(b'{"sub":"x"}').rstrip(b"=").decode()
    now = int(time.time())

    def realm_token(**overrides) -> str:
        claims = {"iss": keypost.issuer("contoso"), "sub": "x", "tid": "contoso",
                  "aud": [keypost.mail_audience], "iat": now, "nbf": now, "exp": now + 300,
                  "jti": "j-custody", "client_id": "keypost-cli", "scope": "mail", **overrides}
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    def jws(p: str) -> dict:
        return {"op": "jws", "realm": "contoso", "purpose": "access-token", "alg": "EdDSA",
                "typ": "at+jwt", "payload": p}

    # Only the realm's own tokens are signed (a compromised web process can ask, not choose).
    for reason, p in {
        "payload is not the realm's token": payload,
        "payload is not the realm's token ": realm_token(iss=keypost.issuer("fabrikam")),
        "payload is not the realm's token  ": realm_token(tid="fabrikam"),
        "token audience is not the realm's": realm_token(aud=["https://elsewhere.example/api"]),
        "token lifetime exceeds the realm's policy": realm_token(exp=now + 365 * 86400),
    }.items():
        answer = signer_request(keypost, jws(p))
        assert answer == {"error": "refused", "detail": reason.strip()}, (reason, answer)
    payload = realm_token()
    asks = {
        # Checkpoints are signed with the audit key inside the signer only.
        "key is for another purpose": {"op": "jws", "realm": "contoso", "purpose": "audit",
                                       "alg": "EdDSA", "typ": "at+jwt", "payload": payload},
        "raw signing is not offered over the socket": {
            "op": "raw", "realm": "contoso", "purpose": "access-token", "alg": "EdDSA",
            "message": payload},
        "unknown realm": {"op": "jws", "realm": "../contoso", "purpose": "access-token",
                          "alg": "EdDSA", "typ": "at+jwt", "payload": payload},
    }
    for reason, request in asks.items():
        answer = signer_request(keypost, request)
        assert answer == {"error": "refused", "detail": reason}, answer
    # A legitimate request on the same socket is signed.
    ok = signer_request(keypost, {"op": "jws", "realm": "contoso", "purpose": "access-token",
                                  "alg": "EdDSA", "typ": "at+jwt", "payload": payload})
    # Signed by the realm's published key, over the header it wrote, a dot and our payload.
    key = jwks_client(keypost, "contoso").get_signing_key(ok["kid"]).key
    signature = base64.urlsafe_b64encode(ok["signature"]).rstrip(b"=").decode()
    token = f'{ok["header"]}.{payload}.{signature}'
    assert jwt.api_jws.decode_complete(token, key, algorithms=["EdDSA"])["payload"] == \
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))

    records = keypost.audit("SigningRefused")
    reasons = {r["details"]["reason"] for r in records}
    assert set(asks) | {"payload is not the realm's token", "token audience is not the realm's",
                        "token lifetime exceeds the realm's policy"} <= reasons, records
    audit_ask = next(r for r in records if r["details"]["reason"] == "key is for another purpose")
    assert audit_ask["realm"] == "contoso" and audit_ask["result"] == "failure"
    assert audit_ask["details"]["purpose"] == "audit"

    # And they raise critical alerts: the tenant's for its realm, the provider's for none.
    keypost.cli("alerts", "scan")
    found = keypost.cli("alerts", "list", json=True)
    signer_alerts = {(a["realm"], a["dedup_key"]) for a in found if a["rule"] == "signer-refused"}
    assert ("contoso", "key is for another purpose") in signer_alerts, found
    assert (None, "unknown realm") in signer_alerts, found
    assert all(a["severity"] == "critical" for a in found if a["rule"] == "signer-refused")
