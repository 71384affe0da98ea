"""A key-encryption key handed over in KEYPOST_KEK reaches the signer process and nothing else:
`serve` and the signer both take it out of their own environment at start (it would otherwise
sit in /proc/PID/environ and in everything they start), and the signer still gets it."""

import base64
import os
import secrets
import tempfile
import shutil
from pathlib import Path

import pytest

from conftest import KEYPOST_BIN, Keypost


def environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.fixture(scope="module")
def served():
    tmp = Path(tempfile.mkdtemp(prefix="keypost-e2e-kek-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    kp.env["KEYPOST_KEK"] = base64.b64encode(secrets.token_bytes(32)).decode()
    kp.start()
    try:
        yield kp
    finally:
        kp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_kek_is_in_no_process_environment_and_still_signs(served):
    assert served.proc is not None
    assert b"KEYPOST_KEK" not in environ(served.proc.pid), "serve kept the KEK in its environment"
    signers = children(served.proc.pid)
    assert signers, "serve started its signer"
    for pid in signers:
        assert b"KEYPOST_KEK" not in environ(pid), "the signer kept the KEK in its environment"
    assert not served.data_dir.with_name(served.data_dir.name + ".kek").exists(), \
        "no KEK file: the signer used the one it was given"
    # The signer has it: the provider admin's first start keys exist and a token is issued.
    served.cli("tenant", "create", "contoso", "--domain", "contoso.test")
    served.create_user("kek@contoso.test", "kek-correct-horse-battery-1")
    r = served.password_grant("contoso", "kek@contoso.test", "kek-correct-horse-battery-1")
    assert r.status_code == 200, r.text
