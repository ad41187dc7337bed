"""Background removal with rembg (U^2-Net family) on ONNX Runtime.

`BackgroundRemover` is the plain model (load once, run per image; usable without Ray);
`BackgroundRemoval` is the thin Serve deployment around it.
"""

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from ray import serve

from deployments.events import open_image, progress_event, result_event

# rembg looks for `<name>.onnx` in this folder (its U2NET_HOME); `backendai models fetch` puts u2netp there.
REMBG_SUBDIR = "rembg"


class BackgroundRemover:
    def __init__(self, models_dir: str | Path, model: str = "u2netp"):
        model_home = Path(models_dir) / REMBG_SUBDIR
        weights = model_home / f"{model}.onnx"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: run `backendai models fetch`")
        # rembg resolves weights through this variable; pointing it at a folder that holds them means it
        # never tries to download.
        os.environ["U2NET_HOME"] = str(model_home)
        from rembg import new_session

        self.model = model
        self.session = new_session(model)

    def run(self, image_bytes: bytes | None, parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from rembg import remove

        started = time.perf_counter()
        yield progress_event(10, "Decoding image")
        image = open_image(image_bytes).convert("RGB")
        yield progress_event(30, "Removing background")
        return_mask = bool(parameters.get("return_mask", False))
        output: Image.Image = remove(image, session=self.session, only_mask=return_mask)
        if return_mask and output.mode != "L":
            output = output.convert("L")
        yield progress_event(90, "Encoding result")
        yield result_event(output, {
            "model": self.model,
            "mode": "mask" if return_mask else "cutout",
            "size": list(image.size),
            "inference_time": round(time.perf_counter() - started, 4),
        })


@serve.deployment(ray_actor_options={"num_cpus": 1})
class BackgroundRemoval:
    def __init__(self, model: str = "u2netp"):
        self.remover = BackgroundRemover(os.environ["MODELS_DIR"], model)

    def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                extra_images: dict[str, bytes] | None = None) -> Iterator[dict]:
        yield from self.remover.run(image, parameters)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml."""
    return BackgroundRemoval.bind(**args)
