"""TLS end to end: ``ota serve --tls-cert/--tls-key`` and an agent that trusts a private CA (``--ca-cert``).

The certificates are made here with ``cryptography``: a CA, and a server certificate it signs for
127.0.0.1.  The server is the real ``ota serve`` in a subprocess (uvicorn with ``ssl_certfile``); the
clients are httpx and the real ``ota agent``.  A client without the CA must fail the handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.process import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "models" / "zoo"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server-key.pem): a private CA and a certificate for 127.0.0.1 it signed."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("ota test CA")).issuer_name(_name("ota test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key_pem.chmod(0o600)
    return ca_pem, cert_pem, key_pem


def _trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTA_") and k != "DATABASE_URL"}


@dataclass
class TlsServer:
    url: str
    ca: Path
    data_dir: Path
    admin_token: str
    enrollment_token: str


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    port, data, log = free_port(), tmp_path / "data", tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--data-dir",
                                 str(data), "--tls-cert", str(cert), "--tls-key", str(key), "--log-level", "warning",
                                 "--codecs", "lossless"], cwd=ROOT, env=_clean_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 60, log=lambda: log.read_text(errors="replace"), name="ota serve over TLS",
                   verify=_trust(ca))
        yield TlsServer(url, ca, data, (data / "admin-token").read_text().strip(),
                        (data / "enrollment-token").read_text().strip())
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_ota_serve_speaks_tls_that_a_client_with_the_ca_trusts_and_one_without_refuses(tls_server: TlsServer) -> None:
    r = httpx.get(f"{tls_server.url}/healthz", verify=_trust(tls_server.ca))
    assert r.status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.url}/healthz")  # the system's CAs do not know this one
    plain = tls_server.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/healthz")  # no plain-http fallback on the TLS port


def test_the_dashboard_cookie_is_secure_over_https(tls_server: TlsServer) -> None:
    with httpx.Client(base_url=tls_server.url, verify=_trust(tls_server.ca)) as browser:
        r = browser.post("/dashboard/login", data={"token": tls_server.admin_token})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def _agent(tls_server: TlsServer, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    token = state.parent / "enroll-token"
    token.write_text(tls_server.enrollment_token)
    return subprocess.run([sys.executable, "-m", "cli.main", "agent", "--server", tls_server.url, "--device-id",
                           state.name, "--state-dir", str(state), "--enroll-token-file", str(token), "--once", "-q",
                           "--root-key", str(tls_server.data_dir / "root.pub"),
                           *extra], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=180)


def test_the_agent_installs_over_https_when_given_the_ca_and_refuses_without_it(tls_server: TlsServer,
                                                                              tmp_path: Path) -> None:
    with httpx.Client(base_url=tls_server.url, verify=_trust(tls_server.ca),
                      headers={"Authorization": f"Bearer {tls_server.admin_token}"}, timeout=120) as admin:
        r = admin.post("/api/v1/lines/road-signs/versions",
                       files={"file": ("v1.onnx", (ZOO / "v1.onnx").read_bytes())})
        assert r.status_code == 201, r.text
        assert admin.post("/api/v1/rollouts", json={"line": "road-signs", "version": 1}).status_code == 201

    refused = _agent(tls_server, tmp_path / "no-ca-car")
    assert refused.returncode == 1
    assert "certificate" in refused.stderr.lower() and "--ca-cert" in refused.stderr

    done = _agent(tls_server, tmp_path / "ca-car", "--ca-cert", str(tls_server.ca))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running v1" in done.stdout


def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cli.main", "agent", "--server", "https://127.0.0.1:9", "--device-id",
                           "c", "--state-dir", str(tmp_path / "s"), "--ca-cert", str(tmp_path / "absent.pem"), "--once"],
                          cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "absent.pem" in done.stderr and "CA" in done.stderr


def test_operator_commands_reach_an_https_registry_with_the_ca(tls_server: TlsServer, tmp_path: Path) -> None:
    token = tmp_path / "admin-token"
    token.write_text(tls_server.admin_token)
    base = [sys.executable, "-m", "cli.main", "devices", "list", "--server", tls_server.url, "--token-file", str(token)]
    refused = subprocess.run(base, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--ca-cert" in refused.stderr
    done = subprocess.run([*base, "--ca-cert", str(tls_server.ca)], cwd=ROOT, env=_clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no devices" in done.stdout
