"""The wire protocol between a model deployment and its caller, as plain dicts (picklable, no imports needed
on the caller's side).

A deployment's streaming method `process(image, parameters, prompt, extra_images)` yields zero or more
progress events, then exactly one result:
    {"progress": 0..100, "message": str}                      work done inside the model call
    {"result": {"image": <PNG bytes>, "metadata": {...}}}     the final output
A stage that prepares another (e.g. prompt refinement) returns no image but may return `prompt` and
`parameters` for the next stage: {"result": {"prompt": str, "parameters": {...}, "metadata": {...}}}.
A deployment signals bad input (permanent: no retry) by raising `InvalidInput`. That type, not any ValueError,
is what tasks/processing.py fails a task on at once (Ray re-raises a replica's exception as a RayTaskError that is
also an instance of its class); any other failure may pass and is retried, a bounded number of times.
"""

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from PIL import Image


class InvalidInput(Exception):
    """The input can never succeed (not an image, no face, bad parameter): fail at once, do not retry. Not a
    ValueError on purpose: a ValueError from a bug in a model must not pass for the user's mistake."""


def progress_event(progress: int, message: str) -> dict[str, Any]:
    return {"progress": max(0, min(100, int(progress))), "message": message}


def model_version(model: str, label: str = "") -> str:
    """What served a result, as its metadata's `model_version` records it: the model's name (its weights) and,
    where the operator set one in the deployment's user_config, its `version` label (`u2netp@2026-12-04`): the
    label tells apart rollouts that keep the model's name, so each result says which rollout served it."""
    return f"{model}@{label}" if label else model


def result_event(image: Image.Image, metadata: dict[str, Any], version_label: str = "") -> dict[str, Any]:
    """The final event; `metadata` must name its `model`, from which (and the deployment's `version_label`, read
    when the request started) every result records its `model_version`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    metadata = {**metadata, "model_version": model_version(metadata["model"], version_label)}
    return {"result": {"image": buffer.getvalue(), "metadata": metadata}}


def open_image(data: bytes | None) -> Image.Image:
    if not data:
        raise InvalidInput("this task needs an input image")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # Pillow raises many types for undecodable data
        raise InvalidInput(f"the input is not a readable image: {exc}") from exc
    return image


def user_config_choice(config: dict[str, Any], key: str, default: str, deployment: str) -> tuple[str, str]:
    """The settings a deployment's user_config holds: a model name (`key`) and an optional `version` label for
    `model_version`; any other key is an operator's typo."""
    unknown = set(config) - {key, "version"}
    if unknown:
        raise ValueError(f"{deployment}'s user_config takes only `{key}` and `version`, "
                         f"not {', '.join(sorted(unknown))}")
    return config.get(key, default), str(config.get("version", ""))


def paced(events: Iterator[dict[str, Any]], min_interval_s: float = 0.25) -> Iterator[dict[str, Any]]:
    """The first event at once (the caller learns a replica took the request), the result, and in between a
    progress event at most every `min_interval_s`: each streamed item costs the replica and the caller a Ray object,
    which for a millisecond job is most of its cost. Closing this closes `events` (a cancel stops the model)."""
    last = None
    with contextlib.closing(events):
        for event in events:
            now = time.monotonic()
            if last is None or "result" in event or now - last >= min_interval_s:
                last = now
                yield event


_END = object()


async def stream_in_thread(events: Iterator[dict[str, Any]],
                           lock: contextlib.AbstractContextManager | None = None) -> AsyncIterator[dict[str, Any]]:
    """A model's sync generator, stepped in a worker thread, as the async stream a deployment returns.

    Serve runs a *sync* generator method to its end in a thread even after the caller cancels, so a cancelled
    job kept computing and a replica ran more jobs than its max_ongoing_requests. Here a cancel stops the model at
    its next event (between tiles, steps, faces), and this stream ends only once the thread has stopped, so the
    request's slot is not freed before its work. `lock` serializes models that are not reentrant.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def drive() -> None:
        with lock or contextlib.nullcontext(), contextlib.closing(events):
            for event in events:
                loop.call_soon_threadsafe(queue.put_nowait, event)
                if stop.is_set():
                    return  # closing() throws GeneratorExit into the model where it yielded

    done = loop.run_in_executor(None, drive)
    done.add_done_callback(lambda _: queue.put_nowait(_END))
    try:
        while (event := await queue.get()) is not _END:
            yield event
        await done  # the model's own exception, if it raised
    finally:
        stop.set()
        if not done.done():
            await asyncio.wait([done])
