"""Result images by URL, read from the configured storage (used when no public media URL is set).

A result URL is a capability: its name is 192 random bits, so a browser's <img src> works without a key. A
request that does present a key sees only that key's files.
"""

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from serve.deps import presented_key
from serve.errors import ApiError
from tasks import keys
from tasks.models import TaskStatus
from tasks.service import get_task_by_result
from tasks.storage import RESULTS, get_storage

router = APIRouter(tags=["media"])

SERVED_PREFIX = f"{RESULTS}/"


@router.get("/media/{key:path}", name="get_media", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {}, 410: {}})
async def get_media(
    key: str,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """A stored result image."""
    task = await run_in_threadpool(get_task_by_result, key) if _is_result_key(key) else None
    if task is None or task.status != TaskStatus.SUCCESS:  # a running task's result is named before it is written
        raise ApiError(404, "File not found")
    presented = presented_key(authorization, x_api_key)
    if presented is not None:
        caller = await run_in_threadpool(keys.find_key, presented)
        if caller is None or caller.id != task.api_key_id:
            raise ApiError(404, "File not found")
    if task.expired_at is not None:
        raise ApiError(410, "File expired and was deleted")
    data = await run_in_threadpool(get_storage().get, key)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def _is_result_key(key: str) -> bool:
    """A name the storage could have generated for a result: under tasks/output/, no '..', '.' or empty segment and
    no backslash. Anything else is refused before it reaches the database or the storage."""
    return key.startswith(SERVED_PREFIX) and "\\" not in key and not {"", ".", ".."} & set(key.split("/"))
