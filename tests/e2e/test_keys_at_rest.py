"""Private keys are sealed at rest: the data directory never holds a private key in the clear,
in any encoding, in any file (database, WAL, journal, logs)."""

import base64

from cryptography.hazmat.primitives import serialization

from conftest import new_ed25519_pem, unverified


def test_imported_private_key_never_appears_in_the_data_dir(keypost, world, tmp_path):
    key, pem_path = new_ed25519_pem(tmp_path)
    kid = keypost.import_key("contoso", pem_path)

    # Make the server use the key: it signs Alice's token with it.
    token = keypost.tokens_for(world.alice)["access_token"]
    assert unverified(token)[0]["kid"] == kid
    assert keypost.userinfo("contoso", token).status_code == 200

    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = pem_path.read_bytes()
    pem_body = b"".join(pem.strip().splitlines()[1:-1])
    forbidden = {
        "raw 32-byte private key": raw,
        "PKCS#8 PEM text": pem,
        "PKCS#8 PEM base64 body": pem_body,
        "PKCS#8 DER": der,
        "JWK d (base64url)": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "base64 of the raw key": base64.b64encode(raw).rstrip(b"="),
        "hex of the raw key": raw.hex().encode(),
        "HEX of the raw key": raw.hex().upper().encode(),
    }

    files = [p for p in keypost.data_dir.rglob("*") if p.is_file()]
    assert files, "the data directory is empty"
    for path in files:
        content = path.read_bytes()
        for what, needle in forbidden.items():
            assert needle not in content, f"{what} found in {path.relative_to(keypost.data_dir)}"


def test_a_copy_of_the_data_dir_does_not_carry_the_key_encryption_key(keypost, world):
    # Backups of the data directory must be useless without the KEK, so the KEK lives beside
    # the directory by default (`{data_dir}.kek`), never inside it.
    kek = keypost.data_dir.parent / (keypost.data_dir.name + ".kek")
    assert kek.is_file(), "the key-encryption key was not created beside the data directory"
    assert kek.stat().st_mode & 0o077 == 0, "the key-encryption key is readable by others"
    secret = kek.read_bytes().strip()
    for path in (p for p in keypost.data_dir.rglob("*") if p.is_file()):
        assert secret not in path.read_bytes(), f"KEK found in {path.relative_to(keypost.data_dir)}"
        assert path.name != "kek", f"a KEK file is inside the data directory: {path}"
