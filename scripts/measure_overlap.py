"""Do 4 concurrent requests to one replica overlap or serialize? Measured on each deployment class itself (no Ray):
the same `process` stream a replica runs, 4 requests one after another against 4 at once.

    MODELS_DIR=~/.cache/backendai/models OMP_NUM_THREADS=1 python -m scripts.measure_overlap

Prints a Markdown table: the speed-up of 4 concurrent requests over 4 sequential ones (1.0x = they serialize; up to
the core count when they overlap) and the most requests seen running inside the model at once.
"""

import asyncio
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from deployments.background_removal import BackgroundRemoval
from deployments.face_swap import FaceSwap
from deployments.image_enhancement import ImageEnhancement
from deployments.style_transfer import StyleTransfer

CONCURRENT = 4


def _png(size: int) -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def services() -> dict[str, tuple[Callable[[], Any], dict[str, Any]]]:
    """Each service's deployment as the local config builds it, and a request of a size worth timing."""
    face = _png(256)
    return {
        "background_removal": (lambda: BackgroundRemoval.func_or_class(model="u2netp"),
                               {"image": _png(256), "parameters": {}}),
        "style_transfer": (lambda: StyleTransfer.func_or_class(backend="onnx", default_style="style-0", device="cpu",
                                                               max_side=1024, threads=1),
                           {"image": _png(256), "parameters": {"style": "style-0"}}),
        "face_swap": (lambda: FaceSwap.func_or_class(backend="landmarks"),
                      {"image": face, "parameters": {}, "extra_images": {"target_image": face}}),
        "image_enhancement": (lambda: ImageEnhancement.func_or_class(tile_size=128, device="cpu", threads=1),
                              {"image": _png(96), "parameters": {"scale": 2}}),
    }


async def _one(deployment: Any, request: dict[str, Any], running: list[int]) -> None:
    first = True
    async for event in deployment.process(**request):
        if first:
            running[0] += 1
            running[1] = max(running[1], running[0])
            first = False
        if "result" in event:
            running[0] -= 1


async def _measure(deployment: Any, request: dict[str, Any]) -> tuple[float, float, int]:
    await _one(deployment, request, [0, 0])  # warm-up
    started = time.perf_counter()
    for _ in range(CONCURRENT):
        await _one(deployment, request, [0, 0])
    sequential = time.perf_counter() - started
    running = [0, 0]
    started = time.perf_counter()
    await asyncio.gather(*(_one(deployment, request, running) for _ in range(CONCURRENT)))
    return sequential, time.perf_counter() - started, running[1]


def main() -> None:
    os.environ.setdefault("MODELS_DIR", str(Path("~/.cache/backendai/models").expanduser()))
    print(f"| service | {CONCURRENT} one after another (s) | {CONCURRENT} at once (s) | speed-up | most at once |")
    print("|---|---|---|---|---|")
    for name, (build, request) in services().items():
        sequential, concurrent, most = asyncio.run(_measure(build(), request))
        print(f"| {name} | {sequential:.2f} | {concurrent:.2f} | {sequential / concurrent:.2f}x | {most} |",
              flush=True)


if __name__ == "__main__":
    main()
