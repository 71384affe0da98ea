"""Key custody (issue 5, first part): a process holding private keys never leaves them in a
core dump. `keypost serve` marks itself non-dumpable and sets its core limit to zero before it
loads a key, so even a crash with core dumps enabled writes nothing (THREAT-MODEL step 2: the
key that left the signing system is believed to have left in a crash dump).

A control run first shows that this machine does write core dumps, so the absence of one is
proof, not luck."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import KEYPOST_BIN, Keypost


@pytest.fixture()
def cores_enabled():
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def cores_in(directory: Path):
    return [p for p in directory.iterdir() if p.name.startswith("core")]


def test_a_crash_with_core_dumps_enabled_leaves_no_dump(cores_enabled):
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
