"""The process's one Redis client (pub/sub, metrics, rate limits, leases): short timeouts so a Redis outage
answers quickly instead of hanging a request."""

from functools import lru_cache

import redis

from tasks.config import get_settings


@lru_cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().effective_redis_url, socket_timeout=2, socket_connect_timeout=2)
