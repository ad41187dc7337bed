"""The web page: plain HTML/JS/CSS from serve/web, no build step."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from serve.samples import sample_png

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/sample.png")
def sample() -> Response:
    """A picture to try the page with, for someone who has none at hand."""
    return Response(sample_png(), media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})
