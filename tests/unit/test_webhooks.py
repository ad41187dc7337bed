"""Webhook signatures a receiver can check, the URLs refused before any request is made, the address a delivery
connects to, and the secret every process shares."""

import hashlib
import hmac
import http.server
import ipaddress
import multiprocessing
import re
import secrets
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tasks import webhooks
from tasks.config import Settings


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body():
    body, secret = b'{"status": "SUCCESS"}', b"key"
    signature = webhooks.sign(body, 1_700_000_000, secret)
    timestamp, digest = (part.split("=", 1)[1] for part in signature.split(","))
    expected = hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert timestamp == "1700000000" and hmac.compare_digest(digest, expected)
    assert webhooks.sign(body + b" ", 1_700_000_000, secret) != signature


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.com/hook", "absolute http(s) URL"),
    ("/relative/hook", "absolute http(s) URL"),
    ("http://exa mple.com/", "spaces or control characters"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://127.0.0.1:8000/hook", "non-public address"),
    ("http://10.1.2.3/hook", "non-public address"),
    ("http://[::1]/hook", "non-public address"),
])
def test_urls_that_no_client_could_send_or_that_point_inside_are_refused(monkeypatch, url, reason):
    monkeypatch.setattr(webhooks, "get_settings", lambda: Settings(_env_file=None, webhook_allow_private=False))
    with pytest.raises(webhooks.WebhookRefused, match=re.escape(reason)):
        webhooks.check_webhook_url(url)


def test_private_targets_pass_when_allowed(monkeypatch):
    monkeypatch.setattr(webhooks, "get_settings", lambda: Settings(_env_file=None, webhook_allow_private=True))
    assert webhooks.check_webhook_url("http://127.0.0.1:8000/hook") == "http://127.0.0.1:8000/hook"


PUBLIC = "93.184.215.14"


def _resolver(monkeypatch, *answers: str) -> list[str]:
    """socket.getaddrinfo answering each look-up of a name with the next of `answers` (a DNS that rebinds), and an
    IP literal with itself; returns the names asked."""
    asked: list[str] = []
    remaining = iter(answers)

    def getaddrinfo(host, port, *args, **kwargs):
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            asked.append(host)
            address = next(remaining)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(("answers", "connected"), [
    ((PUBLIC, "127.0.0.1"), [(PUBLIC, 80)]),  # public when checked, loopback after: the checked one is used
    (("127.0.0.1", PUBLIC), []),  # loopback when checked: refused, nothing connected
])
def test_the_address_checked_is_the_address_connected_to(monkeypatch, answers, connected):
    monkeypatch.setattr(webhooks, "get_settings", lambda: Settings(_env_file=None, webhook_allow_private=False))
    asked = _resolver(monkeypatch, *answers)
    attempts: list[tuple[str, int]] = []

    def create_connection(address, *args, **kwargs):
        attempts.append(address)
        raise ConnectionRefusedError("no network in the unit tier")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(httpx.ConnectError if connected else webhooks.WebhookRefused):
        webhooks.post_webhook("http://hooks.example/hook", b"{}", {})
    assert attempts == connected and asked == ["hooks.example"]


def _certificates(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A CA (its certificate file, for SSL_CERT_FILE) and a server certificate + key for `name` signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        now = datetime.now(UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_file, server_file = tmp_path / "ca.pem", tmp_path / "server.pem"
    pem = serialization.Encoding.PEM
    ca_file.write_bytes(certificate("test CA", ca_key, "test CA", ca_key, True).public_bytes(pem))
    server_file.write_bytes(
        certificate(name, server_key, "test CA", ca_key, False).public_bytes(pem)
        + server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return ca_file, server_file


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(monkeypatch, tmp_path):
    monkeypatch.setattr(webhooks, "get_settings", lambda: Settings(_env_file=None, webhook_allow_private=True))
    ca_file, server_file = _certificates(tmp_path, "hooks.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    seen: dict[str, str | None] = {}

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["host"] = self.headers["Host"]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_file)
    context.sni_callback = lambda connection, name, _: seen.update(sni=name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        _resolver(monkeypatch, "127.0.0.1", "127.0.0.1")
        assert webhooks.post_webhook(f"https://hooks.example:{port}/hook", b"{}", {}).status_code == 204
        assert seen == {"sni": "hooks.example", "host": f"hooks.example:{port}"}
        with pytest.raises(httpx.ConnectError, match="certificate"):  # the same address under another name
            webhooks.post_webhook(f"https://elsewhere.example:{port}/hook", b"{}", {})
    finally:
        server.shutdown()
        server.server_close()


def _secret_in_a_new_process(data_dir: str, start, secrets_seen) -> None:
    """One pool process's first webhook_secret(); the secret is slow to make, so every process is inside the
    creation at once."""
    settings = Settings(_env_file=None, data_dir=Path(data_dir), webhook_secret=None)
    webhooks.get_settings = lambda: settings
    webhooks.webhook_secret.cache_clear()
    token_hex = secrets.token_hex

    def slow_token_hex(nbytes: int) -> str:
        time.sleep(0.2)
        return token_hex(nbytes)

    secrets.token_hex = slow_token_hex
    start.wait()
    secrets_seen.put(webhooks.webhook_secret())


def test_processes_that_create_the_secret_at_once_all_get_the_same_one(tmp_path):
    context = multiprocessing.get_context("fork")
    start, secrets_seen = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_secret_in_a_new_process, args=(str(tmp_path), start, secrets_seen))
                 for _ in range(4)]
    for process in processes:
        process.start()
    seen = [secrets_seen.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(10)
    assert len(set(seen)) == 1 and len(seen[0]) == 64
    assert (tmp_path / "webhook_secret").read_bytes().strip() == seen[0]
    assert [path.name for path in tmp_path.iterdir()] == ["webhook_secret"]  # no candidate left behind
    assert (tmp_path / "webhook_secret").stat().st_mode & 0o777 == 0o600
