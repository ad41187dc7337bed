"""A burst of uploads is decoded at most UPLOAD_DECODE_CONCURRENCY at a time per API process: the rest wait their
turn and then succeed, none is refused. What bounds the API's memory in a burst (docs/benchmarks.md, Memory after
upload bursts); the memory itself is measured by scripts/measure_upload_memory.py, not here.

The app runs in-process on the real Postgres and Redis (no worker: the created tasks stay PENDING). The decode
function is wrapped, not replaced: each decode counts itself in, waits at a gate the test opens, then runs.
"""

import threading
import time

from PIL import Image

from serve import uploads
from tests.helpers import png_bytes

CREATE = "/api/v1/tasks/create/"
BR = {"task_type": "background_removal", "prompt": "cut out"}
PNG = png_bytes(Image.new("RGB", (64, 64), (30, 90, 200)))
WAIT_S = 60  # only a guard against a hang; nothing is timed


def test_no_more_uploads_are_decoded_at_once_than_the_bound(api_client, settings, monkeypatch):
    bound, requests = 2, 7
    monkeypatch.setattr(settings, "upload_decode_concurrency", bound)
    decode = uploads._decode_as_png
    changed = threading.Condition()
    gate = threading.Semaphore(0)
    counts = {"inside": 0, "most": 0, "entered": 0}

    def counted_decode(*args, **kwargs):
        with changed:
            counts["inside"] += 1
            counts["entered"] += 1
            counts["most"] = max(counts["most"], counts["inside"])
            changed.notify_all()
        try:
            assert gate.acquire(timeout=WAIT_S)
            return decode(*args, **kwargs)
        finally:
            with changed:
                counts["inside"] -= 1
                changed.notify_all()

    monkeypatch.setattr(uploads, "_decode_as_png", counted_decode)
    answers: list = []

    def create() -> None:
        answers.append(api_client.post(CREATE, data=BR, files={"image": ("a.png", PNG, "image/png")}))

    clients = [threading.Thread(target=create) for _ in range(requests)]
    for client in clients:
        client.start()
    limiter = uploads.decode_limiter(bound)
    try:
        # Every request is accounted for, decoding (held at the gate) or queued for its turn, before any decode
        # may finish: without the bound all of them would be inside by now.
        deadline = time.monotonic() + WAIT_S
        with changed:
            while counts["entered"] + limiter.statistics().tasks_waiting < requests:
                assert time.monotonic() < deadline, (counts, limiter.statistics())
                changed.wait(0.05)  # the queue at the limiter changes without a notification: looked at again
            assert counts["most"] == bound, counts
    finally:
        for _ in range(requests):
            gate.release()
        for client in clients:
            client.join(WAIT_S)
    assert [answer.status_code for answer in answers] == [201] * requests, [answer.text for answer in answers]
    assert counts == {"inside": 0, "most": bound, "entered": requests}
    for answer in answers:
        api_client.post(f"/api/v1/tasks/{answer.json()['task_id']}/cancel/")
