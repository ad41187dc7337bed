"""Small helpers shared by the tests: image bytes, alpha channels, waiting on a task, a full filesystem."""

import errno
import io
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
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


class FullDisk:
    """A tmpfs mounted over a directory and filled up to the last byte by one file, `filler`."""

    def __init__(self, directory: Path, size: str):
        self.directory, self.filler, self.mounted = directory, directory / "filler", False
        directory.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True,
                           capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            pytest.skip(f"cannot mount a tmpfs to fill up (needs root or CAP_SYS_ADMIN): {detail}")
        self.mounted = True
        try:
            self._fill()
        except BaseException:
            self.unmount()
            raise

    def _fill(self) -> None:
        descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # unbuffered: nothing is left to flush (and fail) on close
            while True:
                os.write(descriptor, bytes(64 * 1024))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(descriptor)

    def files(self) -> list[Path]:
        """Every file on it but the filler."""
        return sorted(path for path in self.directory.rglob("*") if path.is_file() and path != self.filler)

    def make_room(self, size: int | None = None) -> None:
        """Free `size` bytes (rounded to pages by tmpfs), or all of them."""
        if size is None:
            self.filler.unlink()
        else:
            os.truncate(self.filler, self.filler.stat().st_size - size)

    def unmount(self) -> None:
        """Gone, and what the directory held before shows again; lazily if a process still has a file open on it."""
        if not self.mounted:
            return
        if subprocess.run(["umount", str(self.directory)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(self.directory)], check=True, capture_output=True, timeout=30)
        self.mounted = False


@contextmanager
def full_disk(directory: Path, size: str = "1m") -> Iterator[FullDisk]:
    """A FullDisk over `directory` (made if absent) for the block, always unmounted after; skips the test where
    mounting is not allowed."""
    disk = FullDisk(directory, size)
    try:
        yield disk
    finally:
        disk.unmount()


def result_files(settings) -> set[str]:
    """The storage keys of every result file on the local storage."""
    media = settings.data_dir / "media"
    return {path.relative_to(media).as_posix() for path in (media / "tasks" / "output").rglob("*.png")}


def assert_one_result_file_each(settings, outputs_before: set[str], rows) -> None:
    """The one-result-file rule: each of `rows` has its result file, and no file written since `outputs_before` is
    an orphan (one no row names). Other tests' tasks may finish meanwhile on the shared stack: their files are
    allowed, as long as their rows name them."""
    import sqlalchemy as sa

    from tasks.db import session_scope
    from tasks.models import AITask

    new_files = result_files(settings) - outputs_before
    with session_scope() as session:
        named = set(session.exec(sa.select(AITask.result_image).where(AITask.result_image.in_(new_files)))
                    .scalars())
    assert {row.result_image for row in rows} <= new_files
    assert new_files == named, f"result files no row names: {sorted(new_files - named)}"


class TcpProxy:
    """A TCP forwarder to `127.0.0.1:target_port` that a test can take down (every connection cut, new ones
    refused) and bring back on the same port: a database that goes away and returns, for the processes that use it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._sockets: list = []
        self._listener = None

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def stop(self) -> None:
        for sock in [self._listener, *self._sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._sockets.clear()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass


def autoscaling_context(config, current_replicas: int, serve_requests: float = 0, app_name: str = "app",
                        deployment_name: str = "Model"):
    """The AutoscalingContext the Serve controller gives a policy each tick, for a deployment of `config`."""
    from ray.serve.config import AutoscalingContext

    return AutoscalingContext(
        deployment_id=None, deployment_name=deployment_name, app_name=app_name,
        current_num_replicas=current_replicas, target_num_replicas=current_replicas, running_replicas=[],
        total_num_requests=serve_requests, total_queued_requests=0, aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas, capacity_adjusted_max_replicas=config.max_replicas,
        policy_state={}, last_scale_up_time=None, last_scale_down_time=None, current_time=time.time(), config=config)
