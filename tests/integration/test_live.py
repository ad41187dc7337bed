"""The live experience on the real stack: SSE, queue position and ETA, signed webhooks, the CLI, the web page."""

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cli.client import ApiRefused, BackendAIClient
from cli.stack import _bin, free_port
from tasks.celery_app import celery_app
from tasks.webhooks import SIGNATURE_HEADER, webhook_secret
from tests.helpers import BACKGROUND_BOXES, PERSON_BOXES, alpha_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack):
    with BackendAIClient(stack.api_url) as api:
        yield api


def test_events_stream_rises_to_success_and_a_reconnect_gets_the_final_state(client, astronaut_png):
    task_id = client.create("background_removal", "live", image=astronaut_png)["task_id"]
    seen = list(client.events(task_id))
    progress = [status["progress"] for status in seen]
    assert progress == sorted(progress) and seen[-1]["status"] == "SUCCESS"
    assert seen[-1]["result_url"].endswith(f"/api/v1/tasks/{task_id}/result/")
    assert len(seen) >= 3  # snapshot, at least one change in between, the end
    again = list(client.events(task_id))
    assert [status["status"] for status in again] == ["SUCCESS"]


def test_waiting_tasks_show_their_queue_position_and_eta(client, astronaut_png):
    client.wait(client.create("background_removal", "warm", image=astronaut_png)["task_id"])  # one duration known
    assert celery_app.control.cancel_consumer("background_removal", reply=True, timeout=5)
    try:
        waiting = [client.create("background_removal", f"queued {n}", image=astronaut_png)["task_id"]
                   for n in range(3)]
        statuses = [client.status(task_id) for task_id in waiting]
    finally:
        assert celery_app.control.add_consumer("background_removal", reply=True, timeout=5)
    assert [status["queue_position"] for status in statuses] == [0, 1, 2]
    etas = [status["eta_seconds"] for status in statuses]
    assert all(eta > 0 for eta in etas) and etas == sorted(etas)
    assert etas[2] - etas[1] == pytest.approx(etas[1] - etas[0], rel=0.02)  # one typical duration per task ahead
    final = [client.wait(task_id) for task_id in waiting]
    assert [status["status"] for status in final] == ["SUCCESS"] * 3
    assert all(status["queue_position"] is None for status in final)


class _Receiver(BaseHTTPRequestHandler):
    deliveries: list[tuple[dict, bytes]] = []
    failures_left = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).deliveries.append((dict(self.headers), body))
        failing = type(self).failures_left > 0
        type(self).failures_left -= 1
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.deliveries, _Receiver.failures_left = [], 1  # the first delivery fails: it must be retried
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/backendai"
    server.shutdown()


def _verify(headers: dict, body: bytes) -> bool:
    fields = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER].split(","))
    expected = hmac.new(webhook_secret(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


def test_webhook_is_signed_retried_and_recorded(client, receiver, astronaut_png):
    from tasks.service import get_task

    task_id = client.create("background_removal", "hook", image=astronaut_png, webhook_url=receiver)["task_id"]
    assert client.wait(task_id)["status"] == "SUCCESS"
    deadline = time.monotonic() + 60
    while len(_Receiver.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_Receiver.deliveries) == 2, _Receiver.deliveries
    for headers, body in _Receiver.deliveries:
        assert _verify(headers, body)
        payload = json.loads(body)
        assert payload["task_id"] == task_id and payload["status"] == "SUCCESS"
        assert payload["result"]["image_url"].endswith(".png")
    forged = _Receiver.deliveries[0][1].replace(b"SUCCESS", b"FAILURE")
    assert not _verify(_Receiver.deliveries[0][0], forged)
    # The receiver sees a delivery before its sender records the attempt: wait for the second record.
    deadline = time.monotonic() + 30
    while len(attempts := get_task(uuid.UUID(task_id)).webhook_deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 204)]


def test_cli_submits_waits_saves_and_reports(stack, tmp_path, astronaut_png):
    image, output = tmp_path / "in.png", tmp_path / "out.png"
    image.write_bytes(astronaut_png)
    api = ["--api", stack.api_url]
    done = subprocess.run([_bin("backendai"), "submit", "background_removal", "--image", str(image),
                           "--param", "return_mask=false", "--wait", "-o", str(output), *api],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    alpha = alpha_of(output.read_bytes())
    assert all(alpha[box].mean() > 200 for box in PERSON_BOXES)
    assert all(alpha[box].mean() < 20 for box in BACKGROUND_BOXES)
    task_id = done.stdout.split()[1]
    status = subprocess.run([_bin("backendai"), "status", task_id, *api], capture_output=True, text=True)
    assert json.loads(status.stdout)["status"] == "SUCCESS"
    cancel = subprocess.run([_bin("backendai"), "cancel", task_id, *api], capture_output=True, text=True)
    assert cancel.returncode == 1 and "already completed" in cancel.stderr


def test_ctrl_c_on_the_cli_cancels_the_running_task(stack, client):
    """A long generation, interrupted: the CLI asks the server to cancel, the consumer stops the model."""
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "image_generation", "--prompt", "a slow one",
                                "--parameters", '{"width": 256, "height": 256, "num_inference_steps": 150, '
                                '"refine_prompt": false}', "--api", stack.api_url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    task_id = process.stdout.readline().split()[1]  # "task <id> queued"
    deadline = time.monotonic() + 60
    while client.status(task_id)["progress"] <= 10 and time.monotonic() < deadline:
        time.sleep(0.2)  # running: the model is denoising
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and f"cancelled task {task_id}" in stderr
    final = client.status(task_id)
    assert (final["status"], final["cancelled"], final["error_message"]) == ("FAILURE", True, "Cancelled by user")


def test_client_raises_the_apis_refusal(client):
    with pytest.raises(ApiRefused) as refused:
        client.create("background_removal", "no image")
    assert refused.value.status_code == 400 and "needs an image" in str(refused.value)
