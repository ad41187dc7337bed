"""The stream a deployment returns: a cancel stops the model at its next event, and the stream ends only once
the model has stopped (no work outlives its request)."""

import asyncio
import inspect
import threading
import time

import pytest
from PIL import Image

from deployments.events import (
    InvalidInput,
    model_version,
    paced,
    progress_event,
    result_event,
    stream_in_thread,
    user_config_choice,
)


def slow_model(steps: int, log: list[str], step_s: float = 0.05):
    try:
        for step in range(steps):
            time.sleep(step_s)
            log.append(f"step {step}")
            yield progress_event(step, f"step {step}")
        yield {"result": {"steps": steps}}
    except GeneratorExit:
        log.append("closed")
        raise


def test_the_stream_passes_every_event_then_the_result():
    log: list[str] = []

    async def consume():
        return [event async for event in stream_in_thread(slow_model(3, log, 0))]

    events = asyncio.run(consume())
    assert [event.get("message") for event in events[:-1]] == ["step 0", "step 1", "step 2"]
    assert events[-1] == {"result": {"steps": 3}}


def test_a_cancel_stops_the_model_at_its_next_event_before_the_stream_ends():
    log: list[str] = []
    model = slow_model(1000, log)

    async def consume(seen: asyncio.Event):
        async for event in stream_in_thread(model):
            if event["progress"] == 2:
                seen.set()

    async def cancel_after_three_steps():
        seen = asyncio.Event()
        task = asyncio.create_task(consume(seen))
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return list(log)  # what the model had done when the stream ended

    at_end = asyncio.run(cancel_after_three_steps())
    assert at_end[-1] == "closed" and len(at_end) <= 6  # stopped within a step or two, not 1000
    assert inspect.getgeneratorstate(model) == inspect.GEN_CLOSED  # nothing can run after the stream ended


def test_the_models_error_reaches_the_caller():
    def failing():
        yield progress_event(0, "start")
        raise ValueError("no face")

    async def consume():
        return [event async for event in stream_in_thread(failing())]

    with pytest.raises(ValueError, match="no face"):
        asyncio.run(consume())


def test_a_lock_serializes_requests_to_a_model_that_is_not_reentrant():
    lock = threading.Lock()
    running, overlap = [0], [0]

    def counted():
        running[0] += 1
        overlap[0] = max(overlap[0], running[0])
        time.sleep(0.05)
        running[0] -= 1
        yield {"result": {}}

    async def four_at_once():
        async def one():
            return [event async for event in stream_in_thread(counted(), lock)]
        await asyncio.gather(*(one() for _ in range(4)))

    asyncio.run(four_at_once())
    assert overlap[0] == 1


def test_paced_keeps_the_first_event_and_the_result_and_thins_the_rest():
    events = [progress_event(step, "x") for step in range(100)] + [{"result": {}}]
    kept = list(paced((event for event in events), min_interval_s=60))
    assert kept == [events[0], events[-1]]


def test_bad_input_is_told_from_a_bug_by_its_type_across_ray():
    """Ray re-raises a replica's exception as a RayTaskError that is also of its class: InvalidInput stays one (the
    task fails at once, tasks/processing.py), while a ValueError from a bug does not pass for it (it is retried)."""
    from ray.exceptions import RayTaskError

    bad_input = RayTaskError("process", "Traceback", InvalidInput("no face found")).as_instanceof_cause()
    bug = RayTaskError("process", "Traceback", ValueError("operands could not be broadcast")).as_instanceof_cause()
    assert isinstance(bad_input, InvalidInput) and not isinstance(bug, InvalidInput)


def test_a_result_records_the_model_version_from_its_model_and_the_rollout_label():
    image = Image.new("RGB", (2, 2))
    assert result_event(image, {"model": "u2netp"})["result"]["metadata"]["model_version"] == "u2netp"
    labelled = result_event(image, {"model": "u2netp"}, "2026-12-04")["result"]["metadata"]
    assert labelled == {"model": "u2netp", "model_version": "u2netp@2026-12-04"} == {
        "model": "u2netp", "model_version": model_version("u2netp", "2026-12-04")}


def test_a_user_config_holds_a_model_and_a_version_label_and_nothing_else():
    assert user_config_choice({}, "model", "u2netp", "BackgroundRemoval") == ("u2netp", "")
    assert user_config_choice({"version": 3}, "model", "u2netp", "BackgroundRemoval") == ("u2netp", "3")
    with pytest.raises(ValueError, match="takes only `model` and `version`, not versoin"):
        user_config_choice({"versoin": "2"}, "model", "u2netp", "BackgroundRemoval")
