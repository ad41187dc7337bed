"""Upload checks: judged by content, never by name; size, pixel and format limits; EXIF orientation applied."""

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

import anyio
from fastapi import UploadFile
from PIL import Image, ImageOps, UnidentifiedImageError

from serve.errors import ApiError
from tasks.config import Settings
from tasks.registry import TASK_SPECS

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
# The text fields of a create request (prompt, parameters, webhook_url, task_type) with form encoding around them:
# percent-encoding triples a 5000-character prompt of 4-byte characters to 60 KB.
FORM_FIELDS_ALLOWANCE_BYTES = 256 * 1024
FORM_PART_MAX_BYTES = 64 * 1024  # one text field, as sent (encoded)


def max_request_body_bytes(settings: Settings) -> int:
    """The largest body worth reading: as many images as any task type takes, each at the per-image limit, and
    the text fields. Anything larger is refused before it is read (serve/limits.py)."""
    images = 1 + max(len(spec.extra_images) for spec in TASK_SPECS.values())
    return images * settings.max_upload_bytes + FORM_FIELDS_ALLOWANCE_BYTES


@dataclass(frozen=True)
class UploadedImage:
    png: bytes
    width: int
    height: int


async def read_image_as_png(upload: UploadFile, settings: Settings) -> UploadedImage:
    """Return the upload re-encoded as PNG (upright, first frame), or raise a 4xx ApiError.

    Decoded from the spooled upload itself (a temporary file past 1 MB): the raw bytes are never also held whole in
    memory, so a burst of large uploads costs their decoded pixels, not twice their size.
    """
    # CPU work and file reads: off the loop, in threads of their own, at most UPLOAD_DECODE_CONCURRENCY at once.
    # The others wait their turn on their spooled files (disk past 1 MB), not holding their pixels in memory.
    return await anyio.to_thread.run_sync(_decode_as_png, upload.file, settings,
                                          limiter=decode_limiter(settings.upload_decode_concurrency))


@lru_cache
def decode_limiter(concurrency: int) -> anyio.CapacityLimiter:
    """The process's bound on decodes at once: a burst of N large uploads costs `concurrency` decodes at its peak,
    not N (50 uploads of 15 MB at once: from 117 MB at rest to 1.1-1.5 GB unbounded, 288 MB at 4)."""
    return anyio.CapacityLimiter(concurrency)


def _decode_as_png(file: BinaryIO, settings: Settings) -> UploadedImage:
    size = file.seek(0, io.SEEK_END)
    if size > settings.max_upload_bytes:
        raise ApiError(413, f"Image is larger than {settings.max_upload_bytes // (1024 * 1024)} MB")
    if not size:
        raise ApiError(400, "Image file is empty")
    file.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)
            if image.format not in ACCEPTED_FORMATS:
                accepted = ", ".join(ACCEPTED_FORMATS)
                raise ApiError(400, f"Unsupported image format {image.format}; use one of {accepted}")
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise ApiError(400, f"Image is {width}x{height} = {width * height} pixels; the limit is "
                                    f"{settings.max_image_pixels}")
            image.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(400, f"Image declares too many pixels (limit {settings.max_image_pixels}); "
                            "refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ApiError(400, "Uploaded file is not a valid image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, f"Uploaded image could not be decoded: {exc}") from None
    image = ImageOps.exif_transpose(image)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # internal copy: speed over a few percent of size
    return UploadedImage(buffer.getvalue(), *image.size)
