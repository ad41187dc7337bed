"""A sample picture and the style picker's thumbnails, for the web page.

The sample is drawn here (a small landscape), so nothing is downloaded and no test-only package is needed at run
time. The thumbnails are that picture in each built-in style, rendered once by the style network itself (from
MODELS_DIR, in this process: 26 renders of a small picture take well under a second) and cached in DATA_DIR.
Where the API runs without the style weights there are no thumbnails and the page shows the style names alone.
"""

import io
import threading
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw

from deployments.catalogue import STYLE_NAMES
from tasks.config import get_settings

THUMBNAIL_SIDE = 96
_rendering = threading.Lock()


class ThumbnailsUnavailable(Exception):
    """The style network's weights are not where this API runs."""


@lru_cache(maxsize=4)
def sample_png(width: int = 384, height: int = 288) -> bytes:
    """A landscape with sky, sun, hills, a lake and a house: flat areas, edges and colours for a model to work on."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.62)
    for y in range(horizon):  # sky: deep blue to a warm haze
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(40 + 200 * t), int(90 + 120 * t), int(200 - 40 * t)))
    sun = (int(width * 0.72), int(height * 0.25), int(height * 0.09))
    draw.ellipse([sun[0] - sun[2], sun[1] - sun[2], sun[0] + sun[2], sun[1] + sun[2]], fill=(255, 214, 90))
    draw.polygon([(0, horizon), (width * 0.3, height * 0.34), (width * 0.62, horizon)], fill=(70, 110, 90))
    draw.polygon([(width * 0.35, horizon), (width * 0.7, height * 0.42), (width, horizon)], fill=(50, 90, 75))
    for y in range(horizon, height):  # lake: the sky's colours, darker and reversed
        t = (y - horizon) / (height - horizon)
        draw.line([(0, y), (width, y)], fill=(int(30 + 60 * t), int(70 + 50 * t), int(120 + 40 * t)))
    house_x, house_y, side = int(width * 0.14), horizon - int(height * 0.16), int(height * 0.16)
    draw.rectangle([house_x, house_y, house_x + side, horizon], fill=(200, 70, 50))
    draw.polygon([(house_x - 6, house_y), (house_x + side // 2, house_y - side * 0.6), (house_x + side + 6, house_y)],
                 fill=(110, 40, 35))
    draw.rectangle([house_x + side * 0.4, horizon - side * 0.45, house_x + side * 0.62, horizon], fill=(60, 35, 25))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail_dir() -> Path:
    return get_settings().data_dir / "style-thumbnails"


def style_thumbnail(style: str) -> Path:
    """The JPEG thumbnail of a built-in style; all of them are rendered on the first request."""
    path = _thumbnail_dir() / f"{style}.jpg"
    if not path.is_file():
        with _rendering:
            if not path.is_file():
                _render_all()
    return path


def _render_all() -> None:
    try:
        from deployments.style_transfer import OnnxStyles

        styles = OnnxStyles(get_settings().models_dir, device="cpu", threads=1)
    except FileNotFoundError as exc:
        raise ThumbnailsUnavailable(str(exc)) from None
    picture = Image.open(io.BytesIO(sample_png())).resize((THUMBNAIL_SIDE * 4 // 3, THUMBNAIL_SIDE), Image.LANCZOS)
    folder = _thumbnail_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(STYLE_NAMES):
        partial = folder / f"{name}.jpg.partial"
        styles.builtin(picture, index).save(partial, format="JPEG", quality=85)
        partial.replace(folder / f"{name}.jpg")  # a half-written thumbnail is never served
