"""API keys: created by the CLI, stored as SHA-256 digests, checked per request; per-key rate limits in Redis."""

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import APIKey, utcnow
from tasks.redis_client import redis_client

KEY_PREFIX = "bai_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, rate_limit_per_minute: int | None = None) -> tuple[str, APIKey]:
    """Return the new key (shown once; only its digest is kept) and its record."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = APIKey(name=name, key_hash=_digest(key), prefix=key[:12], rate_limit_per_minute=rate_limit_per_minute)
    with session_scope() as session:
        session.add(record)
        session.commit()
    return key, record


def find_key(key: str) -> APIKey | None:
    """The live record of a presented key, or None (unknown or revoked)."""
    with session_scope() as session:
        return session.exec(
            sa.select(APIKey).where(APIKey.key_hash == _digest(key), APIKey.revoked_at.is_(None))
        ).scalar_one_or_none()


def list_keys() -> list[APIKey]:
    with session_scope() as session:
        return list(session.exec(sa.select(APIKey).order_by(APIKey.created_at)).scalars())


def revoke_key(prefix: str) -> bool:
    with session_scope() as session:
        changed = session.exec(
            sa.update(APIKey).where(APIKey.prefix == prefix, APIKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        ).rowcount
        session.commit()
    return changed == 1


@dataclass(frozen=True)
class RateLimited:
    retry_after_s: int


def take_request_slot(identity: str, limit_per_minute: int | None = None) -> RateLimited | None:
    """Count a request against `identity`'s fixed one-minute window; RateLimited once the limit is reached."""
    limit = get_settings().rate_limit_per_minute if limit_per_minute is None else limit_per_minute
    if limit <= 0:
        return None
    window = int(time.time() // 60)
    counter = f"backendai:rate:{identity}:{window}"
    with redis_client().pipeline() as pipe:
        count, _ = pipe.incr(counter).expire(counter, 120).execute()
    if count > limit:
        return RateLimited(retry_after_s=60 - int(time.time()) % 60 or 1)
    return None
