"""cli/client.py's promises to a script: typed errors for each kind of failure, 429/503 retried as Retry-After
says, event streams that reconnect until the task finishes, total-wait timeouts, and `run` in one call.

Failure modes are played by an httpx.MockTransport (they are hard to provoke on demand); the happy path runs against
the real API under uvicorn with a stand-in consumer (tests/api/test_cli.py has it)."""

import json
import time
import uuid

import httpx
import pytest

from cli.client import ApiRefused, ApiTimeout, ApiUnreachable, BackendAIClient, TaskFailed
from cli.stack import free_port

TASK_ID = str(uuid.uuid4())


def _status(status: str, progress: int = 0, **extra) -> dict:
    return {"task_id": TASK_ID, "status": status, "progress": progress, "message": None, "error_message": None,
            **extra}


def _sse(*statuses: dict) -> bytes:
    return b"".join(f"id: {n}\nevent: status\ndata: {json.dumps(s)}\n\n".encode() for n, s in enumerate(statuses))


def _client(handler, **options) -> BackendAIClient:
    return BackendAIClient("http://api.test", transport=httpx.MockTransport(handler), **options)


def test_429_and_503_are_retried_after_retry_after(monkeypatch):
    pauses, answers = [], iter([
        httpx.Response(429, json={"error": "Rate limit reached; retry in 2 s"}, headers={"Retry-After": "2"}),
        httpx.Response(503, json={"error": "The task queue is unavailable"}, headers={"Retry-After": "5"}),
        httpx.Response(200, json=_status("PENDING")),
    ])
    monkeypatch.setattr(time, "sleep", pauses.append)
    with _client(lambda request: next(answers)) as client:
        assert client.status(TASK_ID)["status"] == "PENDING"
    assert pauses == [2.0, 5.0]


def test_retries_are_bounded_and_then_refused(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda _: None)
    calls = []

    def busy(request):
        calls.append(request)
        return httpx.Response(503, json={"error": "The database is unavailable"}, headers={"Retry-After": "1"})

    with _client(busy, retries=2) as client, pytest.raises(ApiRefused) as refused:
        client.status(TASK_ID)
    assert refused.value.status_code == 503 and len(calls) == 3


def test_other_refusals_are_not_retried():
    calls = []

    def refuse(request):
        calls.append(request)
        return httpx.Response(400, json={"error": "background_removal needs an image",
                                         "details": {"image": "No file was submitted."}})

    with _client(refuse) as client, pytest.raises(ApiRefused) as refused:
        client.create("background_removal", "x")
    assert len(calls) == 1 and refused.value.body["details"] == {"image": "No file was submitted."}


def test_nothing_listening_is_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    with BackendAIClient(url) as client, pytest.raises(ApiUnreachable) as unreachable:
        client.status(TASK_ID)
    assert unreachable.value.base_url == url and f"cannot reach the API at {url}" in str(unreachable.value)


def test_the_event_stream_reconnects_until_the_task_finishes(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda _: None)
    connections = []

    def dropping_stream():
        yield _sse(_status("PROCESSING", 40))
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def events(request):
        connections.append(request)
        if len(connections) == 1:
            return httpx.Response(200, stream=_Stream(dropping_stream()), headers={"content-type": "text/event-stream"})
        if len(connections) == 2:
            return httpx.Response(503, json={"error": "restarting"}, headers={"Retry-After": "1"})
        return httpx.Response(200, content=_sse(_status("PROCESSING", 80), _status("SUCCESS", 100)),
                              headers={"content-type": "text/event-stream"})

    with _client(events) as client:
        seen = [status["progress"] for status in client.events(TASK_ID, timeout_s=30)]
    assert seen == [40, 80, 100] and len(connections) == 3


class _Stream(httpx.SyncByteStream):
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        yield from self.chunks


def test_wait_is_bounded_in_total():
    def never_done(request):
        return httpx.Response(200, content=_sse(_status("PENDING")), headers={"content-type": "text/event-stream"})

    started = time.monotonic()
    with _client(never_done) as client, pytest.raises(ApiTimeout) as timed_out:
        client.wait(TASK_ID, timeout_s=1.5)
    assert 1.0 <= time.monotonic() - started < 5
    assert timed_out.value.task_id == TASK_ID and timed_out.value.last_status["status"] == "PENDING"


def test_run_raises_task_failed_and_tells_a_cancel():
    def api(request):
        if request.url.path == "/api/v1/task-types/":
            return httpx.Response(200, json=[{"task_type": "background_removal", "prompt": "unused"}])
        if request.url.path == "/api/v1/tasks/create/":
            assert b'name="prompt"\r\n\r\nbackground removal' in request.read()  # filled in: the type ignores it
            return httpx.Response(201, json={"task_id": TASK_ID, "status": "PENDING"})
        return httpx.Response(200, content=_sse(_status("FAILURE", error_message="Cancelled by user", cancelled=True)),
                              headers={"content-type": "text/event-stream"})

    with _client(api) as client, pytest.raises(TaskFailed) as failed:
        client.run("background_removal", image=b"png bytes")
    assert failed.value.cancelled and str(failed.value) == f"task {TASK_ID} was cancelled: Cancelled by user"


def test_a_type_that_needs_a_prompt_is_sent_none():
    def api(request):
        if request.url.path == "/api/v1/task-types/":
            return httpx.Response(200, json=[{"task_type": "image_generation", "prompt": "required"}])
        assert b'name="prompt"' not in request.read()
        return httpx.Response(400, json={"error": "prompt is required"})

    with _client(api) as client, pytest.raises(ApiRefused, match="prompt is required"):
        client.create("image_generation")


def test_run_returns_the_image_and_its_metadata(uvicorn_api):
    import io
    import os

    from PIL import Image

    from tests.api.test_cli import _finish_next

    url = uvicorn_api(DATA_DIR=os.environ["DATA_DIR"])
    marker = f"client {uuid.uuid4()}"
    consumer = _finish_next(marker, metadata={"model": "stand-in", "size": [48, 48]})
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48)).save(buffer, format="PNG")
    with BackendAIClient(url) as client:
        finished = client.run("background_removal", image=buffer.getvalue(), prompt=marker, timeout_s=30)
    consumer.join(10)
    assert finished.metadata == {"model": "stand-in", "size": [48, 48]}
    assert Image.open(io.BytesIO(finished.image)).getpixel((0, 0)) == (250, 0, 0)
    assert finished.status["status"] == "SUCCESS" and finished.result["prompt"] == marker
