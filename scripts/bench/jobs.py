"""The inputs the benchmark sends: one near-zero-cost job and one 512x512 job per service."""

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tasks.registry import MIN_STYLE_SIDE

SERVICE_SIZE = 512
GENERATION_STEPS = 4  # the tiny random-weight model at 512x512; the seed's 30 steps only multiply the model time
NEAR_ZERO_DESCRIPTION = (
    f"The near-zero-cost job: `style_transfer` with a named style on a {MIN_STYLE_SIDE}x{MIN_STYLE_SIDE} image "
    "(~1-2 ms in the model). *Bare handle call*: the same call through a Serve handle from the benchmark's process "
    "(Ray only). *End-to-end*: create → SUCCESS seen on the task's SSE stream, each client sending its next task "
    "when it sees its last one finish.")


@dataclass(frozen=True)
class Job:
    task_type: str
    prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None
    extra_images: dict[str, bytes] = field(default_factory=dict)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _astronaut(size: int) -> np.ndarray:
    """skimage's astronaut: a real 512x512 photo with a face, shipped offline."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS))


def near_zero_job() -> Job:
    """The cheapest real work we serve: a named style on the smallest image style transfer accepts (~1-2 ms of
    model time), on a deployment with one replica, so the autoscaler never changes the picture mid-run."""
    return Job("style_transfer", "benchmark", {"style": "style-0"}, _png(_astronaut(MIN_STYLE_SIDE)))


def service_jobs() -> list[Job]:
    photo = _astronaut(SERVICE_SIZE)
    png = _png(photo)
    return [
        Job("background_removal", "remove the background", {}, png),
        Job("face_swap", "swap the face", {}, png, {"target_image": _png(np.ascontiguousarray(photo[:, ::-1]))}),
        Job("style_transfer", "stylize", {"style": "style-0"}, png),
        Job("image_enhancement", "upscale", {"scale": 2}, png),
        Job("image_generation", "a lighthouse at dusk",
            {"width": SERVICE_SIZE, "height": SERVICE_SIZE, "num_inference_steps": GENERATION_STEPS, "seed": 1}),
    ]
