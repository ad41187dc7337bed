"""Readiness: can this API reach its database and its queue?"""

import redis
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from serve.errors import ApiError
from tasks.db import get_engine
from tasks.redis_client import redis_client

router = APIRouter(prefix="/api/v1", tags=["health"])


def _check() -> dict[str, str]:
    with get_engine().connect() as connection:
        connection.execute(sa.text("SELECT 1"))
    redis_client().ping()
    return {"status": "ok", "database": "ok", "queue": "ok"}


@router.get("/health/")
async def health() -> dict[str, str]:
    """200 when the database and Redis answer; 503 otherwise."""
    try:
        return await run_in_threadpool(_check)
    except (sa.exc.SQLAlchemyError, redis.RedisError) as exc:
        raise ApiError(503, f"not ready: {type(exc).__name__}", headers={"Retry-After": "5"}) from None
