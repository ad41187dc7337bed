"""Small helpers shared by the tests: image bytes, alpha channels, waiting on a task."""

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Regions of skimage's astronaut (512x512, rows then columns): her face and suit, and the plain background.
PERSON_BOXES = ((slice(100, 160), slice(200, 260)), (slice(250, 330), slice(150, 260)))
BACKGROUND_BOXES = ((slice(0, 40), slice(0, 40)), (slice(0, 40), slice(-40, None)), (slice(0, 60), slice(380, 512)))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def alpha_of(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGBA", image.mode
    return np.asarray(image)[..., 3]


def wait_for(client, task_id: str, statuses: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/tasks/{task_id}/status/")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not reach {statuses} in {timeout_s} s: {body}")


def published_events(pubsub, task_id: str, timeout_s: float = 10) -> list[dict]:
    """The task's live events from a `psubscribe("backendai:task:*")` pub/sub, up to its final status."""
    events, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            event = json.loads(message["data"])
            if event["task_id"] == task_id:
                events.append(event)
                if event.get("status") in ("SUCCESS", "FAILURE"):
                    break
    return events


def assert_names_files_in_models_dir(error: BaseException, models_dir: Path, *files: str) -> None:
    """An error a user may read names model files relative to MODELS_DIR and no server path."""
    message = str(error)
    assert str(models_dir) not in message, message
    assert all(f"MODELS_DIR/{name}" in message for name in files), message


def create_background_removal(client, png: bytes, prompt: str = "test") -> str:
    """POST a background removal through the API; returns its task id."""
    response = client.post("/api/v1/tasks/create/", data={"prompt": prompt, "task_type": "background_removal"},
                           files={"image": ("in.png", png)})
    assert response.status_code == 201, response.text
    return response.json()["task_id"]


def task_row(task_id: str):
    """The task's row, read straight from the database."""
    import uuid

    from tasks.db import session_scope
    from tasks.models import AITask

    with session_scope() as session:
        return session.get(AITask, uuid.UUID(task_id))
