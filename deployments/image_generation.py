"""Text-to-image with a diffusers Stable Diffusion pipeline: per-step progress, seeds that reproduce, cancel that
reaches the denoising loop, and concurrent compatible requests merged into one pipeline call.

`ImageGenerator` is the plain model (one pipeline call per batch; usable without Ray). `GenerationQueue` merges
concurrent requests and streams each caller its own events (asyncio; still no Ray). `ImageGeneration` is the thin
Serve deployment around both.
"""

import asyncio
import contextlib
import contextvars
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from ray import serve

from deployments.events import InvalidInput, progress_event, result_event

log = logging.getLogger("ray.serve")  # Serve writes this logger to the replica's log file

MAX_SEED = 2**32 - 1
StepCallback = Callable[[int, int], None]  # (steps done, steps in this call)


@dataclass(frozen=True)
class GenerationRequest:
    """One image to make. Defaults are the v1 task API's (512x512, 30 steps, guidance 7.5)."""

    prompt: str
    seed: int
    width: int = 512
    height: int = 512
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    scheduler: str | None = None  # None: the model's own

    @classmethod
    def from_parameters(cls, prompt: str, parameters: dict[str, Any]) -> "GenerationRequest":
        """The request a task's parameters describe (validated by the API); a missing seed is drawn here."""
        given = {name: parameters[name] for name in ("width", "height", "num_inference_steps", "guidance_scale",
                                                     "negative_prompt", "scheduler")
                 if parameters.get(name) is not None}
        seed = parameters.get("seed")
        return cls(prompt=prompt, seed=secrets.randbelow(MAX_SEED + 1) if seed is None else int(seed), **given)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share a pipeline call; prompts, negative prompts and seeds may differ."""
        return self.width, self.height, self.num_inference_steps, self.guidance_scale, self.scheduler


class ImageGenerator:
    """A text-to-image pipeline loaded once; `generate` runs one pipeline call for a batch of requests."""

    def __init__(self, models_dir: str | Path, model: str, device: str = "auto", dtype: str = "auto",
                 variant: str | None = None, compile_unet: bool = False):
        # Imported here: torch and diffusers load in the replica, not wherever Serve imports this module.
        from diffusers import StableDiffusionPipeline

        from deployments.diffusion import SCHEDULERS, is_random_weights, load_pipeline

        self.model = model
        self.pipe = load_pipeline(StableDiffusionPipeline, Path(models_dir), model, device, dtype, variant,
                                  compile_unet)
        self.random_weights = is_random_weights(Path(models_dir), model)
        self._scheduler_classes = SCHEDULERS
        self._schedulers: dict[str | None, Any] = {None: self.pipe.scheduler}

    def scheduler_name(self, name: str | None) -> str:
        """The request's scheduler name; for the model's own, its name in our list (or its class name)."""
        if name is not None:
            return name
        own = type(self._schedulers[None])
        return next((known for known, cls in self._scheduler_classes.items() if cls is own), own.__name__)

    def _scheduler(self, name: str | None) -> Any:
        if name not in self._schedulers:
            if name not in self._scheduler_classes:
                raise InvalidInput(f"unknown scheduler {name!r}; choose one of: {', '.join(self._scheduler_classes)}")
            self._schedulers[name] = self._scheduler_classes[name].from_config(self._schedulers[None].config)
        return self._schedulers[name]

    def generate(self, requests: Sequence[GenerationRequest],
                 on_step: StepCallback | None = None) -> list[Image.Image | None]:
        """One pipeline call making one image per request (their batch keys must be equal), each from its own seed;
        None where the model's safety checker (if it has one) withheld the image.

        `on_step(done, total)` runs after every denoising step; an exception it raises stops the call there.
        Not thread-safe: the pipeline's scheduler is set per call, so calls must not overlap.
        """
        import torch

        if len({request.batch_key for request in requests}) != 1:
            raise ValueError("a pipeline call needs requests with the same size, steps, guidance and scheduler")
        first = requests[0]
        self.pipe.scheduler = self._scheduler(first.scheduler)

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, pipe.num_timesteps)  # PNDM takes one step more than asked
            return tensors

        output = self.pipe(
            prompt=[request.prompt for request in requests],
            negative_prompt=[request.negative_prompt for request in requests],
            width=first.width, height=first.height, num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            # CPU generators: a seed gives the same starting noise on any device and in any batch.
            generator=[torch.Generator().manual_seed(request.seed) for request in requests],
            callback_on_step_end=step_end,
        )
        withheld = output.nsfw_content_detected or [False] * len(requests)
        return [None if flagged else image for image, flagged in zip(output.images, withheld, strict=True)]

    def metadata(self, request: GenerationRequest) -> dict[str, Any]:
        """What the result records about how its image was made (the v1 result's metadata, and more)."""
        return {
            "model": self.model,
            "random_weights": self.random_weights,
            "seed": request.seed,
            "steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            "scheduler": self.scheduler_name(request.scheduler),
            "size": [request.width, request.height],
            "negative_prompt": request.negative_prompt,
            "device": str(self.pipe.device),
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
        }


class _EveryCallerLeft(Exception):
    """Raised from the step callback to stop a pipeline call nobody waits for any more."""


@dataclass(eq=False)
class _Caller:
    request: GenerationRequest
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    gone: bool = False  # the caller stopped listening (cancelled): send it nothing more


class GenerationQueue:
    """Merges concurrent compatible requests into one pipeline call and streams each caller its own events.

    One pipeline call runs at a time. Each takes the oldest waiting request plus the waiting requests with the
    same batch key (up to `max_batch_size`), after giving concurrent callers `batch_wait_s` to arrive. A call
    stops at its next step once all its callers are gone, so a cancelled generation frees the replica at once.
    """

    def __init__(self, generator: ImageGenerator, max_batch_size: int = 4, batch_wait_s: float = 0.05):
        self.generator = generator
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.pipeline_calls = 0
        self._waiting: list[_Caller] = []
        self._arrival = asyncio.Event()
        self._runner: asyncio.Task | None = None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[dict[str, Any]]:
        """Progress events for `request`, then its result; closing or cancelling this stream withdraws it."""
        caller = _Caller(request)
        self._waiting.append(caller)
        self._arrival.set()
        if self._runner is None:
            # A fresh context: the runner serves every caller, so it must not carry the first one's request id.
            self._runner = asyncio.get_running_loop().create_task(self._run_forever(), context=contextvars.Context())
        try:
            yield progress_event(0, "Waiting for the model")
            while True:
                event = await caller.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if "result" in event:
                    return
        finally:
            caller.gone = True

    async def _run_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    def _compatible(self, key: tuple) -> list[_Caller]:
        return [caller for caller in self._waiting if not caller.gone and caller.request.batch_key == key]

    async def _next_batch(self) -> list[_Caller]:
        while not any(not caller.gone for caller in self._waiting):
            self._waiting.clear()
            self._arrival.clear()
            await self._arrival.wait()
        key = next(caller for caller in self._waiting if not caller.gone).request.batch_key
        deadline = asyncio.get_running_loop().time() + self.batch_wait_s
        while len(self._compatible(key)) < self.max_batch_size:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), left)
        batch = self._compatible(key)[: self.max_batch_size]
        self._waiting = [caller for caller in self._waiting if caller not in batch and not caller.gone]
        return batch

    async def _run(self, batch: list[_Caller]) -> None:
        loop = asyncio.get_running_loop()
        self.pipeline_calls += 1
        call_id = f"{os.getpid()}-{self.pipeline_calls}-{uuid.uuid4().hex[:6]}"
        first = batch[0].request
        started = time.perf_counter()

        def on_step(done: int, total: int) -> None:  # runs in the pipeline's thread
            if all(caller.gone for caller in batch):
                raise _EveryCallerLeft(f"step {done}/{total}")
            # One message for all steps: the worker writes the row on a new message, throttled otherwise.
            event = progress_event(100 * done // total, "Decoding image" if done == total else "Generating image")
            for caller in batch:
                if not caller.gone:
                    loop.call_soon_threadsafe(caller.events.put_nowait, event)

        def generate_and_encode() -> list[dict[str, Any] | Exception]:
            images = self.generator.generate([caller.request for caller in batch], on_step)
            return [InvalidInput("the model's safety checker withheld this image") if image is None else
                    result_event(image, {**self.generator.metadata(caller.request), "batch_size": len(batch),
                                         "pipeline_call": call_id})
                    for caller, image in zip(batch, images, strict=True)]

        try:
            outcomes: list[Any] = await asyncio.to_thread(generate_and_encode)
        except _EveryCallerLeft as stop:
            log.info("pipeline call %s stopped at %s: every caller cancelled", call_id, stop)
            return
        except Exception as exc:  # the callers' failure (bad input, out of memory): each of them raises it
            log.warning("pipeline call %s failed: %s", call_id, exc)
            outcomes = [exc] * len(batch)
        else:
            log.info("pipeline call %s: batch of %d, %dx%d, %d steps, %.2f s", call_id, len(batch), first.width,
                     first.height, first.num_inference_steps, time.perf_counter() - started)
        for caller, outcome in zip(batch, outcomes, strict=True):
            caller.events.put_nowait(outcome)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
class ImageGeneration:
    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", variant: str | None = None,
                 compile_unet: bool = False, max_batch_size: int = 4, batch_wait_timeout_s: float = 0.05):
        generator = ImageGenerator(os.environ["MODELS_DIR"], model, device, dtype, variant, compile_unet)
        self.queue = GenerationQueue(generator, max_batch_size, batch_wait_timeout_s)

    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        # Serve cancels this generator when the caller cancels the request: the queue then withdraws it.
        async for event in self.queue.stream(GenerationRequest.from_parameters(prompt, parameters)):
            yield event


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml."""
    return ImageGeneration.bind(**args)
