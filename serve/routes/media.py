"""Result images by URL, read from the configured storage (used when no public media URL is set)."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from serve.errors import ApiError
from tasks.storage import get_storage

router = APIRouter(tags=["media"])

SERVED_PREFIX = "tasks/output/"


@router.get("/media/{key:path}", name="get_media", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {}})
async def get_media(key: str) -> Response:
    """A stored result image."""
    storage = get_storage()
    if not key.startswith(SERVED_PREFIX) or not await run_in_threadpool(storage.exists, key):
        raise ApiError(404, "File not found")
    data = await run_in_threadpool(storage.get, key)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
