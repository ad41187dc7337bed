"""Upload checks: judged by content, never by name; size, pixel and format limits; EXIF orientation applied."""

import io
import warnings
from dataclasses import dataclass

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageOps, UnidentifiedImageError

from serve.errors import ApiError
from tasks.config import Settings

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass(frozen=True)
class UploadedImage:
    png: bytes
    width: int
    height: int


async def read_image_as_png(upload: UploadFile, settings: Settings) -> UploadedImage:
    """Return the upload re-encoded as PNG (upright, first frame), or raise a 4xx ApiError."""
    data = await upload.read(settings.max_upload_bytes + 1)
    return await run_in_threadpool(_decode_as_png, data, settings)  # decoding is CPU work: off the event loop


def _decode_as_png(data: bytes, settings: Settings) -> UploadedImage:
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"Image is larger than {settings.max_upload_bytes // (1024 * 1024)} MB")
    if not data:
        raise ApiError(400, "Image file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
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
