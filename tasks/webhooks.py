"""Webhooks: when a task finishes, POST its outcome to the URL given at create, signed, retried with backoff.

Signature: header `X-Backendai-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the
WEBHOOK_SECRET (generated once into DATA_DIR when unset). Receivers recompute it and reject old timestamps.

The target's host is resolved once per attempt, every address checked, and the request sent to the checked address:
a DNS answer that changes between a check and the connection (rebinding) cannot steer it inside.
"""

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import time
import uuid
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from kombu.exceptions import OperationalError as BrokerError

from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import AITask, TaskStatus, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Backendai-Signature"
MAX_ATTEMPTS = 5


class WebhookRefused(ValueError):
    """The URL may not be called (bad scheme, unresolvable, or a private address while those are not allowed)."""


def _sendable(url: str) -> httpx.URL:
    """The URL, if an HTTP client could send it: no spaces or control characters, a valid port and IPv6 literal,
    http(s) with a host."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise WebhookRefused("webhook_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise WebhookRefused(f"webhook_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhook_url must be an absolute http(s) URL")
    return parsed


def _checked_address(url: httpx.URL) -> str:
    """The address to send to: the host resolved once, every address it resolves to checked (unless private
    targets are allowed), the first one returned."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, url.port or 443, type=socket.SOCK_STREAM)]
    except (socket.gaierror, UnicodeError):
        # The host as sent (ASCII): decoding an invalid punycode label (xn--…) back to Unicode would raise.
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve") from None
    if not get_settings().webhook_allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global:
                raise WebhookRefused(f"webhook_url resolves to a non-public address ({ip}); refused")
    return addresses[0].split("%")[0]


def check_webhook_url(url: str) -> str:
    """Refuse URLs that would make this server call itself or its private network (SSRF), and URLs no HTTP client
    could send. At create, to answer 400 at once; `post_webhook` checks again the address it sends to."""
    parsed = _sendable(url)
    if not get_settings().webhook_allow_private:
        _checked_address(parsed)
    return url


def post_webhook(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST `body` to the address `url`'s host resolves to now, once checked: the URL names that address, the Host
    header the host, and TLS sends and verifies the certificate against the host name (httpx's sni_hostname)."""
    parsed = _sendable(url)
    pinned = parsed.copy_with(host=_checked_address(parsed))
    host = parsed.raw_host.decode("ascii")
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        return client.post(pinned, content=body, headers={**headers, "Host": parsed.netloc.decode("ascii")},
                           extensions={"sni_hostname": host})


@lru_cache
def webhook_secret() -> bytes:
    settings = get_settings()
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    path = settings.data_dir / "webhook_secret"
    if not path.exists():
        # Processes that start together all get here: each writes a candidate of its own and links it into place,
        # which succeeds for one of them only, so every process reads the same key.
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process won
        finally:
            candidate.unlink()
    return path.read_text().strip().encode()


def sign(body: bytes, timestamp: int, secret: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def payload(task: AITask) -> dict[str, Any]:
    """What the receiver gets: the status and, on success, the result as the result endpoint shows it."""
    settings = get_settings()
    body: dict[str, Any] = {"task_id": str(task.id), "task_type": task.task_type, "status": task.status,
                            "error_message": task.error_message,
                            "completed_at": task.completed_at.isoformat() if task.completed_at else None}
    if task.status == TaskStatus.SUCCESS and task.result_image:
        base = settings.public_media_url or f"{settings.effective_public_api_url.rstrip('/')}/media"
        stored = task.result_data or {}
        body["result"] = {"image_url": f"{base.rstrip('/')}/{task.result_image}",
                          "prompt_used": stored.get("prompt_used"), "processing_time": task.processing_time,
                          "metadata": stored.get("metadata", {})}
    return body


def _record(task_id: uuid.UUID, attempt: dict[str, Any]) -> None:
    with session_scope() as session:
        task = session.get(AITask, task_id)
        task.webhook_deliveries = [*(task.webhook_deliveries or []), attempt]
        session.add(task)
        session.commit()


@celery_app.task(bind=True, name="tasks.deliver_webhook", ignore_result=True, max_retries=MAX_ATTEMPTS - 1)
def deliver_webhook(self, task_id: str) -> None:
    with session_scope() as session:
        task = session.get(AITask, uuid.UUID(task_id))
    if task is None or not task.webhook_url:
        return
    body = json.dumps(payload(task)).encode()
    timestamp = int(time.time())
    attempt: dict[str, Any] = {"attempt": self.request.retries + 1, "at": utcnow().isoformat()}
    try:
        response = post_webhook(task.webhook_url, body, {
            "Content-Type": "application/json", SIGNATURE_HEADER: sign(body, timestamp, webhook_secret()),
            "User-Agent": "backendai-webhooks"})
        attempt["status_code"] = response.status_code
        delivered = 200 <= response.status_code < 300
    except (httpx.HTTPError, WebhookRefused) as exc:
        attempt["error"] = str(exc)[:300]
        delivered = False
    _record(task.id, attempt)
    if not delivered and self.request.retries + 1 < MAX_ATTEMPTS:
        raise self.retry(countdown=get_settings().retry_backoff_base_s * 2**self.request.retries)


def notify_finished(task_id: uuid.UUID) -> None:
    """Queue the webhook of a task that just finished, if it has one."""
    with session_scope() as session:
        url = session.exec(sa.select(AITask.webhook_url).where(AITask.id == task_id)).scalar_one_or_none()
    if not url:
        return
    try:
        celery_app.send_task("tasks.deliver_webhook", args=[str(task_id)], queue="cpu", ignore_result=True)
    except BrokerError as exc:  # the task's own state is already saved; only this notification is lost
        log.error("webhook of %s not queued: %s", task_id, exc)
