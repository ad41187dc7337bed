"""`backendai up` with no configuration at all: SQLite, embedded Redis, a local Ray head, file storage.

Runs the real command in a subprocess, drives one job with `backendai run`, then stops it with Ctrl-C; and stops
it with tasks queued and starts it again on the same data folder: the queued tasks run.
"""

import io
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cli.stack import _bin, free_port
from tests.helpers import BACKGROUND_BOXES, PERSON_BOXES, alpha_of

pytestmark = pytest.mark.integration

CONFIG_NAMES = ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", "STORAGE_URL", "PUBLIC_MEDIA_URL")


def _env(tmp_path, settings) -> dict[str, str]:
    """No configuration: everything embedded, under a data folder of the test's own."""
    env = {name: value for name, value in os.environ.items() if name not in CONFIG_NAMES}
    env.update(DATA_DIR=str(tmp_path / "home"), MODELS_DIR=str(settings.models_dir), API_PORT=str(free_port()),
               RAY_HEAD_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()),
               EMBEDDED_REDIS_PORT=str(free_port()))
    return env


class _Up:
    """`backendai up` running in a subprocess, its output collected."""

    def __init__(self, env: dict[str, str]):
        self.api = f"http://127.0.0.1:{env['API_PORT']}"
        self.process = subprocess.Popen([_bin("backendai"), "up"], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")),
                         daemon=True).start()

    @property
    def said(self) -> str:
        return "".join(self.lines)

    def wait_until_up(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while "backendai is up" not in self.said:
            assert self.process.poll() is None, self.said
            assert time.monotonic() < deadline, self.said
            time.sleep(0.5)

    def stop(self) -> int:
        """Ctrl-C: a warm shutdown (running tasks finish, queued ones stay queued)."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(180)


def test_up_with_no_env_runs_a_job_end_to_end_and_stops_cleanly(tmp_path, astronaut_png, settings):
    env = _env(tmp_path, settings)
    up = _Up(env)
    try:
        up.wait_until_up()
        for embedded in ("database: SQLite file", "redis: embedded redis-server", "ray: local head",
                         "storage: files under"):
            assert embedded in up.said

        image = tmp_path / "astronaut.png"
        image.write_bytes(astronaut_png)
        output = tmp_path / "cutout.png"
        run = subprocess.run([_bin("backendai"), "run", "background_removal", "--image", str(image), "-o",
                              str(output), "--api", up.api, "--timeout", "120"],
                             env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(r"^SUCCESS +100% ", run.stdout, re.M), run.stdout
        alpha = alpha_of(output.read_bytes())
        assert all(alpha[box].mean() > 200 for box in PERSON_BOXES)
        assert all(alpha[box].mean() < 20 for box in BACKGROUND_BOXES)

        with sqlite3.connect(Path(env["DATA_DIR"]) / "backendai.db") as db:
            assert db.execute("SELECT status, progress FROM ai_tasks").fetchall() == [("SUCCESS", 100)]
    finally:
        exit_code = up.stop()
    assert exit_code == 0, up.said
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{up.api}/api/v1/health/", timeout=2)


def test_tasks_queued_when_the_stack_stops_run_after_it_starts_again(tmp_path, astronaut, settings):
    """Stopped right after 20 tasks were created, most still queued (one at a time, each a few seconds: the drain
    finishes only the running one); started again on the same data folder (the embedded Redis keeps its queue in
    an append-only file): every task ends SUCCESS."""
    # One consumer slot, and no room for `up` to add consumers as the replicas grow.
    env = {**_env(tmp_path, settings), "CONSUMER_CONCURRENCY": "1", "CONSUMER_MEMORY_CEILING_MB": "0"}
    picture = io.BytesIO()
    astronaut.resize((2048, 2048)).save(picture, format="PNG")
    up = _Up(env)
    try:
        up.wait_until_up()
        form = {"task_type": "background_removal", "prompt": "queued"}

        def create(_: int) -> str:
            return httpx.post(f"{up.api}/api/v1/tasks/create/", data=form, timeout=60,
                              files={"image": ("in.png", picture.getvalue())}).json()["task_id"]

        # All at once, so that the one slot cannot keep up with the creates on a busy box (one after another, all
        # 20 once finished before the stop).
        with ThreadPoolExecutor(8) as creators:
            task_ids = list(creators.map(create, range(20)))
    finally:
        assert up.stop() == 0, up.said
    with sqlite3.connect(Path(env["DATA_DIR"]) / "backendai.db") as db:
        unfinished = db.execute("SELECT count(*) FROM ai_tasks WHERE status != 'SUCCESS'").fetchone()[0]
    assert unfinished > 0, "every task finished before the stop: nothing was left queued to test"

    again = _Up(env)
    try:
        again.wait_until_up()
        deadline = time.monotonic() + 300
        while True:
            statuses = {task_id: httpx.get(f"{again.api}/api/v1/tasks/{task_id}/status/").json()["status"]
                        for task_id in task_ids}
            if set(statuses.values()) <= {"SUCCESS", "FAILURE"} or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        assert again.stop() == 0, again.said
    assert list(statuses.values()) == ["SUCCESS"] * len(task_ids), (unfinished, statuses)
