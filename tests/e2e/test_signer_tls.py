"""The signer run standalone (`keypost signer`) behind mutually authenticated TLS, and a
`keypost serve` that signs through it instead of starting its own.

Certificates come from an operator CA made here with `cryptography`. The signer signs for
`serve` (client certificate from the CA); a peer without a certificate, or with one from
another CA, is refused in the handshake and the refusal is audited; `serve` refuses a signer
whose certificate is not from its CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import (KEYPOST_BIN, Keypost, User, _Drain, free_loopback_port, signer_frame,
                      verify_access_token)

ALICE = User("alice@contoso.test", "alice-correct-horse-battery-1", "contoso")


class Pki:
    """An operator CA and the certificates it issues, written as PEM files into a directory."""

    def __init__(self, directory: Path, name: str):
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self._write(f"{name}-ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def issue(self, name: str, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_file = self._write(
            f"{name}.key",
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        )
        return cert_file, key_file


@pytest.fixture(scope="module")
def pki():
    d = Path(tempfile.mkdtemp(prefix="keypost-pki-"))
    ops, rogue = Pki(d, "operator"), Pki(d, "rogue")
    yield {
        "ca": ops.ca_file,
        "server": ops.issue("signer", server=True),
        "client": ops.issue("web", server=False),
        "rogue_ca": rogue.ca_file,
        "rogue_client": rogue.issue("intruder", server=False),
        "rogue_server": rogue.issue("fake-signer", server=True),
    }
    shutil.rmtree(d, ignore_errors=True)


def wait_for_port(port: int, proc: subprocess.Popen, logs: list[str], timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"keypost signer exited {proc.returncode}:\n" + "\n".join(logs))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("keypost signer did not listen:\n" + "\n".join(logs))


@pytest.fixture(scope="module")
def split(pki):
    """A standalone signer on 127.0.0.1:PORT with the server certificate, and a `serve` with
    the client certificate signing through it."""
    tmp = Path(tempfile.mkdtemp(prefix="keypost-e2e-split-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    port = free_loopback_port()
    address = f"127.0.0.1:{port}"
    server_cert, server_key = pki["server"]
    client_cert, client_key = pki["client"]
    signer_env = {**kp.env, "KEYPOST_SIGNER_ADDRESS": address,
                  "KEYPOST_SIGNER_CA_FILE": str(pki["ca"]),
                  "KEYPOST_SIGNER_CERT_FILE": str(server_cert),
                  "KEYPOST_SIGNER_KEY_FILE": str(server_key)}
    kp.env.update(KEYPOST_SIGNER_ADDRESS=address, KEYPOST_SIGNER_CA_FILE=str(pki["ca"]),
                  KEYPOST_SIGNER_CERT_FILE=str(client_cert),
                  KEYPOST_SIGNER_KEY_FILE=str(client_key))
    signer_logs: list[str] = []
    signer = subprocess.Popen([KEYPOST_BIN, "signer"], env=signer_env, cwd=tmp,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    _Drain(signer.stdout, signer_logs).start()
    try:
        wait_for_port(port, signer, signer_logs)
        kp.start()
        kp.cli("tenant", "create", "contoso", "--domain", "contoso.test")
        kp.create_user(ALICE.email, ALICE.password)
        yield {"kp": kp, "signer": signer, "port": port, "env": signer_env, "tmp": tmp}
    finally:
        kp.stop()
        signer.terminate()
        signer.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_serve_signs_through_the_standalone_signer(split):
    kp = split["kp"]
    serve_children = Path(f"/proc/{kp.proc.pid}/task/{kp.proc.pid}/children").read_text().split()
    assert serve_children == [], "serve started no signer of its own"
    token = kp.tokens_for(ALICE)["access_token"]
    verify_access_token(kp, "contoso", token)
    assert kp.userinfo("contoso", token).status_code == 200

    # The consumer realm, created by serve's first start, got its keys from the signer too.
    carol = User("carol@keypost.test", "carol-correct-horse-battery-3", "consumers")
    kp.create_user(carol.email, carol.password)
    verify_access_token(kp, "consumers", kp.tokens_for(carol)["access_token"])


def tls_client(pki, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


# The signer's answer to a ping: a one-byte body, 0x01 (crates/keys/src/wire.rs).
PONG = b"\x00\x00\x00\x01\x01"


def ask(pki, port: int, cert) -> bytes:
    """Connects as a TLS client (Python's ssl, not Keypost's code) and asks for a signature."""
    ctx = tls_client(pki, cert)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(signer_frame({"op": "ping"}))
            return s.recv(4096)


def test_only_clients_with_a_certificate_from_the_operator_ca_are_served(split, pki):
    port = split["port"]
    assert ask(pki, port, pki["client"]) == PONG

    for cert in (None, pki["rogue_client"]):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            answer = ask(pki, port, cert)
            # TLS 1.3 can report the refused client certificate only on the first read.
            if not answer:
                raise ConnectionError("closed without an answer")

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        refusals = [r for r in split["kp"].audit("SigningRefused")
                    if r["details"]["op"] == "connect"]
        if refusals:
            break
        time.sleep(0.2)
    # Audited at most once a second (anyone who can reach the port can cause them).
    assert refusals, "no SigningRefused record for the refused handshakes"
    assert all("client certificate" in r["details"]["reason"] for r in refusals)
    # And the listener still serves the rightful client.
    assert ask(pki, port, pki["client"]) == PONG


def test_serve_refuses_a_signer_whose_certificate_is_not_from_its_ca(split, pki, tmp_path):
    """A fake signer with a certificate from another CA: serve's TLS refuses it, so minting
    fails cleanly (503) instead of trusting whatever answers on the address."""
    port = free_loopback_port()
    env = {**split["env"],
           "KEYPOST_SIGNER_ADDRESS": f"127.0.0.1:{port}",
           "KEYPOST_SIGNER_CA_FILE": str(pki["rogue_ca"]),
           "KEYPOST_SIGNER_CERT_FILE": str(pki["rogue_server"][0]),
           "KEYPOST_SIGNER_KEY_FILE": str(pki["rogue_server"][1])}
    logs: list[str] = []
    fake = subprocess.Popen([KEYPOST_BIN, "signer"], env=env, cwd=split["tmp"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _Drain(fake.stdout, logs).start()
    other = Keypost(KEYPOST_BIN, tmp_path)
    try:
        wait_for_port(port, fake, logs)
        other.env.update({k: v for k, v in split["kp"].env.items() if k.startswith("KEYPOST_SIGNER_")})
        other.env["KEYPOST_SIGNER_ADDRESS"] = f"127.0.0.1:{port}"
        other.env["KEYPOST_DATA_DIR"] = str(split["kp"].data_dir)
        other.start()
        r = other.password_grant(ALICE.realm, ALICE.email, ALICE.password)
        assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
    finally:
        other.stop()
        fake.terminate()
        fake.wait(timeout=10)
