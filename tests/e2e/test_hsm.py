"""Keys held in a PKCS#11 token (SoftHSM2): a tenant's tokens are signed inside the HSM.

The server is configured with `[hsm]` for the `contoso` realm only. Tokens minted there verify
with PyJWT from the realm's JWKS and open the mailbox; the private key is an HSM object that an
independent PKCS#11 client (PyKCS11) cannot read out; the data directory has nothing sealed
for it; rotating makes the next key in the token, and revoking destroys the key there.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import PyKCS11
import pytest

from conftest import KEYPOST_BIN, Keypost, User, unverified, verify_access_token
from jmap_client import session as jmap_session

PIN = "2468"
TOKEN_LABEL = "keypost"
MODULES = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"]
MODULE = next((m for m in MODULES if os.path.exists(m)), None)

if MODULE is None:
    if os.environ.get("KEYPOST_REQUIRE_SOFTHSM"):
        raise RuntimeError("SoftHSM2 is required (KEYPOST_REQUIRE_SOFTHSM) but not installed")
    pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)", allow_module_level=True)

ALICE = User("alice@contoso.test", "alice-correct-horse-battery-1", "contoso")
CAROL = User("carol@keypost.test", "carol-correct-horse-battery-3", "consumers")


@pytest.fixture(scope="module")
def softhsm_conf():
    """A token of our own in a fresh directory; the system's SoftHSM tokens are never touched."""
    d = Path(tempfile.mkdtemp(prefix="keypost-softhsm-"))
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\n")
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL,
         "--so-pin", "13579", "--pin", PIN],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        check=True,
        capture_output=True,
    )
    # PyKCS11 loads SoftHSM into this process, which reads SOFTHSM2_CONF at load time.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    yield conf
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def keypost(softhsm_conf):
    tmp = Path(tempfile.mkdtemp(prefix="keypost-e2e-hsm-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    kp.env.update(
        SOFTHSM2_CONF=str(softhsm_conf),
        KEYPOST_HSM_MODULE=MODULE,
        KEYPOST_HSM_TOKEN=TOKEN_LABEL,
        KEYPOST_HSM_PIN=PIN,
        KEYPOST_HSM_REALMS="contoso",
    )
    kp.start()
    try:
        kp.cli("tenant", "create", "contoso", "--domain", "contoso.test")
        for u in (ALICE, CAROL):
            kp.create_user(u.email, u.password)
        yield kp
    finally:
        kp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pkcs11(softhsm_conf):
    """An independent PKCS#11 client logged in to the same token."""
    lib = PyKCS11.PyKCS11Lib()
    lib.load(MODULE)
    (slot,) = [
        s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == TOKEN_LABEL
    ]
    session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    session.login(PIN)
    yield session
    session.logout()
    session.closeSession()


def private_keys(session, kid: str) -> list:
    return session.findObjects(
        [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, kid.encode())]
    )


def key_row(kp: Keypost, kid: str) -> tuple[str, int]:
    with sqlite3.connect(kp.data_dir / "keypost.db") as db:
        (row,) = db.execute("SELECT origin, length(sealed) FROM keys WHERE kid = ?", (kid,))
    return row


def test_tokens_of_the_hsm_realm_are_signed_in_the_token_and_verify(keypost):
    token = keypost.tokens_for(ALICE)["access_token"]
    kid = unverified(token)[0]["kid"]
    claims = verify_access_token(keypost, "contoso", token)  # PyJWT, from discovery + JWKS
    assert claims["sub"] and claims["iss"] == keypost.issuer("contoso")

    listed = {k["kid"]: k for k in keypost.cli("keys", "list", "--realm", "contoso", json=True)}
    assert listed[kid]["origin"] == "hsm", listed[kid]
    assert key_row(keypost, kid) == ("hsm", 0), "nothing sealed in the data directory"

    r = jmap_session(keypost, token)
    assert r.status_code == 200, r.text
    assert ALICE.email in r.text


def test_other_realms_keep_sealed_software_keys(keypost):
    token = keypost.tokens_for(CAROL)["access_token"]
    kid = unverified(token)[0]["kid"]
    verify_access_token(keypost, "consumers", token)
    origin, sealed_len = key_row(keypost, kid)
    assert origin == "generated" and sealed_len > 0


def test_the_private_key_cannot_be_read_out_of_the_token(keypost, pkcs11):
    kid = unverified(keypost.tokens_for(ALICE)["access_token"])[0]["kid"]
    (obj,) = private_keys(pkcs11, kid)
    sensitive, extractable = pkcs11.getAttributeValue(
        obj, [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE]
    )
    assert sensitive is True and extractable is False

    # C_GetAttributeValue on CKA_VALUE itself, at the PKCS#11 level: refused.
    template = PyKCS11.LowLevel.ckattrlist(1)
    template[0].SetType(PyKCS11.CKA_VALUE)
    rv = pkcs11.lib.C_GetAttributeValue(pkcs11.session, obj, template)
    assert rv == PyKCS11.CKR_ATTRIBUTE_SENSITIVE, PyKCS11.CKR[rv]


def test_rotation_makes_the_next_key_in_the_token(keypost, pkcs11):
    old = unverified(keypost.tokens_for(ALICE)["access_token"])[0]["kid"]
    keypost.cli("keys", "rotate", "--realm", "contoso")
    token = keypost.tokens_for(ALICE)["access_token"]
    new = unverified(token)[0]["kid"]
    assert new != old
    assert key_row(keypost, new) == ("hsm", 0)
    assert len(private_keys(pkcs11, new)) == 1
    verify_access_token(keypost, "contoso", token)


def test_revoking_destroys_the_key_in_the_token(keypost, pkcs11):
    token = keypost.tokens_for(ALICE)["access_token"]
    kid = unverified(token)[0]["kid"]
    assert len(private_keys(pkcs11, kid)) == 1

    keypost.cli("keys", "revoke", kid)

    assert private_keys(pkcs11, kid) == [], "revoked key still in the HSM"
    assert keypost.userinfo("contoso", token).status_code == 401
    fresh = keypost.tokens_for(ALICE)["access_token"]
    assert unverified(fresh)[0]["kid"] != kid
    verify_access_token(keypost, "contoso", fresh)
