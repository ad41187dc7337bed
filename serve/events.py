"""Live task status as Server-Sent Events: Redis pub/sub from the worker, checked against the row."""

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from tasks.config import get_settings
from tasks.models import FINISHED_STATUSES, AITask
from tasks.service import get_task
from tasks.state_writes import CHANNEL_PREFIX

RECHECK_S = 5.0  # re-read the row this often: a pub/sub message lost (Redis restart) never stalls a stream
KEEPALIVE_S = 15.0


def sse(event_id: int, data: dict[str, Any], event: str = "status") -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def live_status(task_id: uuid.UUID, request: Request,
                      render: Callable[[AITask], dict[str, Any]]) -> AsyncIterator[str]:
    """A snapshot first, then one event per change, ending with the finished state."""
    client = aioredis.Redis.from_url(get_settings().effective_redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{CHANNEL_PREFIX}{task_id}")  # before the snapshot, so no change falls between
    event_id = 0

    def read() -> tuple[AITask, dict[str, Any]]:
        current = get_task(task_id)
        return current, render(current)  # rendering queries too (queue position): off the event loop as well

    try:
        task, last = await run_in_threadpool(read)
        yield sse(event_id, last)
        last_read = last_sent = time.monotonic()
        while task.status not in FINISHED_STATUSES and not await request.is_disconnected():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            now = time.monotonic()
            if message is None and now - last_read < RECHECK_S:
                if now - last_sent > KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last_sent = now
                continue
            (task, current), last_read = await run_in_threadpool(read), now
            if current != last:
                event_id += 1
                yield sse(event_id, current)
                last, last_sent = current, now
    finally:
        await pubsub.aclose()
        await client.aclose()


async def wait_until_finished(task_id: uuid.UUID, timeout_s: float) -> AITask | None:
    """The finished task once its channel says it finished (the row is re-read then, and every RECHECK_S in case a
    message was lost), or None after `timeout_s`."""
    client = aioredis.Redis.from_url(get_settings().effective_redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{CHANNEL_PREFIX}{task_id}")  # before the first read, so no change falls between
    deadline = time.monotonic() + timeout_s
    try:
        task = await run_in_threadpool(get_task, task_id)
        while task is not None and task.status not in FINISHED_STATUSES:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, RECHECK_S))
            if message is None or json.loads(message["data"]).get("status") in FINISHED_STATUSES:
                task = await run_in_threadpool(get_task, task_id)
        return task
    finally:
        await pubsub.aclose()
        await client.aclose()
