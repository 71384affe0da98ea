"""`keypost keys import` binds an operator's key to one realm and makes it that realm's active
access-token signing key, at once, however recently the previous key was created."""

import hashlib
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import b64url, unverified, verify_access_token


def rfc7638_kid(key: Ed25519PrivateKey) -> str:
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url(x)}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


def write_pem(key: Ed25519PrivateKey, path):
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_each_imported_key_signs_the_next_token(keypost, world, tmp_path):
    # Back to back, so several keys share a creation second with each other and with the
    # key generated when the tenant was created.
    for i in range(4):
        key = Ed25519PrivateKey.generate()
        kid = keypost.import_key("contoso", write_pem(key, tmp_path / f"k{i}.pem"))
        token = keypost.tokens_for(world.alice)["access_token"]
        assert unverified(token)[0]["kid"] == kid, f"import #{i + 1} did not become the active key"
        verify_access_token(keypost, "contoso", token)


def test_imported_kid_is_its_rfc7638_thumbprint(keypost, world, tmp_path):
    key = Ed25519PrivateKey.generate()
    kid = keypost.import_key("fabrikam", write_pem(key, tmp_path / "key.pem"))
    assert kid == rfc7638_kid(key)


def test_revoke_accepts_a_kid_that_starts_with_a_hyphen(keypost, world, tmp_path):
    # A base64url kid starts with '-' one time in 64; an operator pasting it must not be told
    # it is an unknown option while revoking a compromised key.
    key = Ed25519PrivateKey.generate()
    while not rfc7638_kid(key).startswith("-"):
        key = Ed25519PrivateKey.generate()
    kid = keypost.import_key("consumers", write_pem(key, tmp_path / "key.pem"))
    assert kid.startswith("-"), kid

    keypost.cli("keys", "revoke", kid)

    listed = {k["kid"]: k for k in keypost.cli("keys", "list", "--realm", "consumers", json=True)}
    assert listed[kid].get("revoked_at"), listed[kid]
