"""Webhook signatures a receiver can check, and the URLs refused before any request is made."""

import hashlib
import hmac
import re

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
