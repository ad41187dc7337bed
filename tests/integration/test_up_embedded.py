"""`backendai up` with no configuration at all: SQLite, embedded Redis, a local Ray head, file storage.

Runs the real command in a subprocess, drives one job with `backendai run`, then stops it with Ctrl-C.
"""

import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve.stack import _bin, free_port
from tests.helpers import BACKGROUND_BOXES, PERSON_BOXES, alpha_of

pytestmark = pytest.mark.integration

CONFIG_NAMES = ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", "STORAGE_URL", "PUBLIC_MEDIA_URL")


def test_up_with_no_env_runs_a_job_end_to_end_and_stops_cleanly(tmp_path, astronaut_png, settings):
    api_port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in CONFIG_NAMES}
    env.update(DATA_DIR=str(tmp_path / "home"), MODELS_DIR=str(settings.models_dir), API_PORT=str(api_port),
               RAY_HEAD_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()),
               EMBEDDED_REDIS_PORT=str(free_port()))
    up = subprocess.Popen([_bin("backendai"), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("backendai is up" in line for line in lines):
            assert up.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        said = "".join(lines)
        for embedded in ("database: SQLite file", "redis: embedded redis-server", "ray: local head",
                         "storage: files under"):
            assert embedded in said

        image = tmp_path / "astronaut.png"
        image.write_bytes(astronaut_png)
        output = tmp_path / "cutout.png"
        run = subprocess.run([_bin("backendai"), "run", "background_removal", "--image", str(image), "-o",
                              str(output), "--api", f"http://127.0.0.1:{api_port}", "--timeout", "120"],
                             env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(r"^SUCCESS +100% ", run.stdout, re.M), run.stdout
        alpha = alpha_of(output.read_bytes())
        assert all(alpha[box].mean() > 200 for box in PERSON_BOXES)
        assert all(alpha[box].mean() < 20 for box in BACKGROUND_BOXES)

        with sqlite3.connect(Path(env["DATA_DIR"]) / "backendai.db") as db:
            assert db.execute("SELECT status, progress FROM ai_tasks").fetchall() == [("SUCCESS", 100)]
    finally:
        up.send_signal(signal.SIGINT)
        exit_code = up.wait(120)
    assert exit_code == 0, "".join(lines)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health/", timeout=2)
