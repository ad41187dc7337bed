"""`backendai` as a user and a script meet it: the real CLI in a subprocess against the real API under uvicorn (real
Postgres, Redis and storage). A stand-in consumer in this process finishes tasks through tasks.state_writes, as a real
one would; tests/integration/test_live.py runs the CLI against the whole stack."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from PIL import Image

from cli.stack import free_port
from tasks import state_writes
from tasks.service import get_task
from tasks.storage import get_storage


def _png(colour=(20, 90, 200), size=(48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def api(uvicorn_api, tmp_path) -> str:
    return uvicorn_api(DATA_DIR=os.environ["DATA_DIR"])  # the stand-in consumer stores where the API reads


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    path.write_bytes(_png())
    return path


def backendai(api: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args, "--api", api], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BACKENDAI_API_KEY": ""})


def _finish_next(marker: str, fail: str | None = None, metadata: dict | None = None) -> threading.Thread:
    """A consumer for the task whose prompt is `marker`: claims it, reports progress, then ends it."""
    from tasks.db import session_scope
    from tasks.models import AITask

    def consume() -> None:
        import sqlalchemy as sa

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with session_scope() as session:
                task = session.exec(sa.select(AITask).where(AITask.prompt == marker)).scalar_one_or_none()
            if task is not None:
                break
            time.sleep(0.05)
        state_writes.claim(task.id, f"cli-{task.id}", worker="test:1")
        for done in (30, 60):
            state_writes.ProgressWriter(task.id, min_interval_s=0).update(done, f"step {done}")
            time.sleep(0.1)
        if fail:
            state_writes.fail(task.id, fail)
        else:
            state_writes.succeed(task.id, get_storage().put("output", _png((250, 0, 0))),
                             {"prompt_used": marker, "metadata": metadata or {"model": "stand-in"}}, 0.3)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


def test_run_saves_the_result_with_plain_progress_lines(api, image, tmp_path):
    marker, output = f"cli {uuid.uuid4()}", tmp_path / "out.png"
    consumer = _finish_next(marker)
    done = backendai(api, "run", "background_removal", "--image", str(image), "--prompt", marker, "-o", str(output))
    consumer.join(10)
    assert done.returncode == 0, done.stderr
    assert output.read_bytes() == _png((250, 0, 0))
    lines = done.stdout.splitlines()
    assert lines[0].startswith("task ") and lines[0].endswith(" queued")
    assert "\r" not in done.stdout  # not a terminal: one line per change, no redraws
    assert any("60% step 60" in line for line in lines) and lines[-1].startswith(f"saved {output}")
    assert done.stderr == ""


def test_json_output_is_one_document(api, image, tmp_path):
    marker, output = f"cli {uuid.uuid4()}", tmp_path / "out.png"
    consumer = _finish_next(marker, metadata={"model": "tiny", "random_weights": True})
    done = backendai(api, "run", "background_removal", "--image", str(image), "--prompt", marker, "-o", str(output),
                     "--json")
    consumer.join(10)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["output"], document["status"]["status"]) == (str(output), "SUCCESS")
    assert document["result"]["result"]["metadata"]["random_weights"] is True
    assert "random weights" in done.stderr  # said once, on stderr, so the JSON stays clean


def test_a_failed_task_exits_1_everywhere(api, image):
    marker = f"cli {uuid.uuid4()}"
    consumer = _finish_next(marker, fail="ValueError: no face found in image")
    done = backendai(api, "run", "background_removal", "--image", str(image), "--prompt", marker)
    consumer.join(10)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("failed: ValueError: no face found in image")
    task_id = done.stdout.split()[1]
    status = backendai(api, "status", task_id)
    assert status.returncode == 1 and json.loads(status.stdout)["status"] == "FAILURE"
    watched = backendai(api, "watch", task_id)
    assert watched.returncode == 1 and "no face found" in watched.stderr


@pytest.mark.parametrize(("args", "error"), [
    (["--image", "missing.png"], "--image missing.png: no such file"),
    (["--image", "{image}", "--parameters", "{nope"], "--parameters is not valid JSON"),
    (["--image", "{image}", "--parameters", "[1]"], "--parameters must be a JSON object"),
    (["--image", "{image}", "--param", "scale"], "--param expects KEY=VALUE, got 'scale'"),
    (["--image", "{image}", "-o", "{image}"], "exists; pass --force to overwrite it"),
    (["--image", "{image}", "-o", "{tmp}"], "is a directory"),
    (["--image", "{image}", "-o", "{tmp}/no/such/folder/out.png"], "does not exist"),
], ids=["missing-image", "bad-json", "not-an-object", "param-without-value", "would-overwrite", "output-is-a-folder",
        "output-folder-missing"])
def test_usage_errors_are_one_line_exit_2_and_send_nothing(api, image, tmp_path, args, error):
    from cli.client import BackendAIClient

    with BackendAIClient(api) as client:
        before = client.list_tasks(limit=1)["tasks"]
        args = [arg.replace("{image}", str(image)).replace("{tmp}", str(tmp_path)) for arg in args]
        done = backendai(api, "run", "background_removal", *args)
        assert client.list_tasks(limit=1)["tasks"] == before  # nothing was queued
    assert done.returncode == 2 and error in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_an_api_that_is_not_running_is_named(image):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["run", "background_removal", "--image", str(image)], ["list"], ["status", str(uuid.uuid4())]):
        done = backendai(url, *args)
        assert done.returncode == 3, done.stderr
        assert done.stderr.strip() == f"backendai: cannot reach the API at {url}; is `backendai up` running? " \
                                      f"(or pass --api URL)"


def test_timeout_bounds_the_whole_wait(api, image):
    started = time.monotonic()
    done = backendai(api, "run", "background_removal", "--image", str(image), "--timeout", "2")
    assert done.returncode == 124 and 2 <= time.monotonic() - started < 15
    task_id = done.stdout.split()[1]
    assert done.stderr.strip() == f"backendai: timed out after 2 s; task {task_id} keeps going " \
                                  f"(backendai watch {task_id})"


def test_ctrl_c_cancels_the_task(api, image, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "background_removal", "--image",
                                str(image), "--api", api], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    task_id = process.stdout.readline().split()[1]  # "task <id> queued": from then on Ctrl-C cancels it
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.strip() == f"backendai: interrupted: cancelled task {task_id}"
    task = get_task(uuid.UUID(task_id))
    assert (task.status, task.error_message) == ("FAILURE", "Cancelled by user")


def test_result_list_delete_types_and_styles(api, image, tmp_path):
    marker = f"cli {uuid.uuid4()}"
    consumer = _finish_next(marker)
    task_id = json.loads(backendai(api, "submit", "background_removal", "--image", str(image), "--prompt", marker,
                                   "--json").stdout)["task_id"]
    consumer.join(10)
    output = tmp_path / "again.png"
    assert backendai(api, "result", task_id, "-o", str(output)).returncode == 0 and output.exists()
    refused = backendai(api, "result", task_id, "-o", str(output))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert backendai(api, "result", task_id, "-o", str(output), "--force").returncode == 0

    listed = backendai(api, "list", "--status", "SUCCESS", "--limit", "100")
    assert any(line.startswith(task_id) and "SUCCESS" in line for line in listed.stdout.splitlines())
    assert task_id in {task["task_id"] for task in json.loads(backendai(api, "list", "--json", "--limit", "100")
                                                                .stdout)["tasks"]}
    assert backendai(api, "delete", task_id).returncode == 0
    gone = backendai(api, "result", task_id, "-o", str(tmp_path / "gone.png"))
    assert gone.returncode == 1 and "deleted by its owner" in gone.stderr

    types = json.loads(backendai(api, "types", "--json").stdout)
    assert {entry["task_type"]: entry["prompt"] for entry in types}["image_generation"] == "required"
    styles = backendai(api, "styles")
    assert styles.returncode == 0 and styles.stdout.startswith("style-0")
