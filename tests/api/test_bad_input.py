"""Bad input everywhere a client can put it: each case gets its exact 4xx, a one-line message in the error JSON, no
traceback, and leaves no task row or stored file behind.

The app runs in-process on the real Postgres and Redis (no worker: a created task stays PENDING). Body limits are
driven with raw ASGI messages, because the test client sends every body whole and at once.
"""

import json
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi import UploadFile
from PIL import Image

from serve.app import create_app
from serve.uploads import max_request_body_bytes, read_image_as_png
from tasks.keys import create_key, revoke_key
from tests.helpers import png_bytes
from tests.raw_requests import asgi_request, socket_request

CREATE = "/api/v1/tasks/create/"


PNG = png_bytes(Image.new("RGB", (40, 40), (30, 90, 200)))
IMAGE = [("image", ("a.png", PNG, "image/png"))]
BR = {"task_type": "background_removal", "prompt": "cut out"}
GEN = {"task_type": "image_generation", "prompt": "a lighthouse"}
PRIVATE_WEBHOOKS_OFF = {"webhook_allow_private": False}
NON_PUBLIC = "webhook_url resolves to a non-public address"
BOUNDARY = "bound4ry"
MULTIPART = [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")]


def _form_bytes(*fields: tuple[str, str]) -> bytes:
    """Multipart text fields byte for byte (httpx would percent-escape a NUL in a field name)."""
    parts = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             for name, value in fields)
    return "".join(parts).encode()


def _upload_of(size: int) -> bytes:
    """A create form whose image part is `size` bytes long (and never ends: the body limits are under test)."""
    return _form_bytes(("task_type", "background_removal"), ("prompt", "p")) + \
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'.encode() + \
        b"\0" * size


@dataclass(frozen=True)
class Case:
    """One request and the refusal it must get. `{pending}`, `{cancelled}` and `{revoked}` in the path or a header
    are filled in from fixtures."""

    id: str
    status: int
    error: str  # how the one-line message starts
    data: dict[str, Any] | None = None
    files: list[tuple[str, Any]] | None = None
    method: str = "POST"
    path: str = CREATE
    headers: list[tuple[str, str]] = field(default_factory=list)
    content: bytes | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _private_webhook(case_id: str, url: str, error: str) -> Case:
    """A create whose webhook_url must be refused while private targets are not allowed."""
    return Case(case_id, 400, error, {**BR, "webhook_url": url}, IMAGE, settings=PRIVATE_WEBHOOKS_OFF)


def _params(text: str, form: dict[str, str] = BR) -> dict[str, str]:
    return {**form, "parameters": text}


CREATE_CASES = [
    # parameters: what Python's json module crashes on, bends or silently drops
    Case("params-5000-deep-arrays", 400, "parameters is nested deeper than 10 levels",
         _params("[" * 5000 + "]" * 5000), IMAGE),
    Case("params-3000-deep-objects", 400, "parameters is nested deeper than 10 levels",
         _params('{"":' * 3000 + "1" + "}" * 3000), IMAGE),
    Case("params-5000-digit-integer", 400, "parameters has a number longer than 40 characters",
         _params('{"seed": ' + "9" * 5000 + "}", GEN)),
    Case("params-5000-digit-float", 400, "parameters has a number longer than 40 characters",
         _params('{"guidance_scale": 0.' + "1" * 5000 + "}", GEN)),
    Case("params-NaN", 400, "parameters contains NaN", _params('{"guidance_scale": NaN}', GEN)),
    Case("params-Infinity", 400, "parameters contains Infinity", _params('{"guidance_scale": Infinity}', GEN)),
    Case("params-minus-Infinity", 400, "parameters contains -Infinity", _params('{"guidance_scale": -Infinity}', GEN)),
    Case("params-overflowing-float", 400, "parameters has the number 1e400", _params('{"guidance_scale": 1e400}', GEN)),
    Case("params-duplicate-key", 400, "parameters has the key 'return_mask' twice",
         _params('{"return_mask": true, "return_mask": false}'), IMAGE),
    Case("params-escaped-NUL", 400, "parameters contains a NUL character",
         _params('{"negative_prompt": "blur\\u0000"}', GEN)),
    Case("params-escaped-NUL-in-key", 400, "parameters contains a NUL character", _params('{"\\u0000": 1}', GEN)),
    Case("params-lone-surrogate", 400, "parameters contains a lone surrogate",
         _params('{"negative_prompt": "\\ud800"}', GEN)),
    Case("params-over-16k-characters", 400, "parameters is longer than 16384 characters",
         _params(json.dumps({"negative_prompt": "x" * 20000}), GEN)),
    Case("params-over-64k-field", 400, "Field exceeded maximum size of 64KB", _params(" " * 70000, GEN)),
    Case("params-trailing-garbage", 400, "parameters must be a JSON object", _params('{"seed": 1} {"seed": 2}', GEN)),
    # each field once: FastAPI would keep one of two values without a word
    Case("two-task-types", 400, "Each form field may be sent once; repeated: task_type",
         {**GEN, "task_type": ["image_generation", "background_removal"]}),
    Case("two-prompts", 400, "Each form field may be sent once; repeated: prompt", {**GEN, "prompt": ["a", "b"]}),
    Case("two-parameters", 400, "Each form field may be sent once; repeated: parameters",
         {**GEN, "parameters": ["{}", '{"seed": 1}']}),
    Case("two-webhook-urls", 400, "Each form field may be sent once; repeated: webhook_url",
         {**GEN, "webhook_url": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]}),
    Case("two-images", 400, "Each form field may be sent once; repeated: image", BR, IMAGE + IMAGE),
    Case("two-target-images", 400, "Each form field may be sent once; repeated: target_image",
         {"task_type": "face_swap", "prompt": "swap"}, IMAGE + [("target_image", ("t.png", PNG))] * 2),
    Case("too-many-files", 400, "Too many files", BR, [(f"file{index}", ("f.png", PNG)) for index in range(9)]),
    Case("too-many-fields", 400, "Too many fields", {**BR, **{f"field{index}": "x" for index in range(16)}}, IMAGE),
    # NUL anywhere in text: Postgres cannot store it
    Case("prompt-only-NUL", 400, "NUL characters are not allowed", {**BR, "prompt": "\x00"}, IMAGE),
    Case("prompt-whitespace-and-NUL", 400, "NUL characters are not allowed", {**BR, "prompt": " \x00\t\x00 "}, IMAGE),
    Case("prompt-NUL-inside", 400, "NUL characters are not allowed", {**BR, "prompt": "cut\x00out"}, IMAGE),
    Case("task-type-NUL", 400, "NUL characters are not allowed", {**BR, "task_type": "background_removal\x00"}, IMAGE),
    Case("parameters-raw-NUL", 400, "NUL characters are not allowed", _params('{"return_mask": true}\x00'), IMAGE),
    Case("webhook-NUL", 400, "NUL characters are not allowed", {**BR, "webhook_url": "http://127.0.0.1/\x00"}, IMAGE),
    Case("field-name-NUL", 400, "NUL characters are not allowed", headers=MULTIPART,
         content=_form_bytes(*GEN.items(), ("x\x00", "1")) + f"--{BOUNDARY}--\r\n".encode()),
    Case("idempotency-key-NUL", 400, "NUL characters are not allowed in headers", BR, IMAGE,
         headers=[("Idempotency-Key", "order\x001")]),
    Case("idempotency-key-twice", 400, "Header idempotency-key may be sent once", BR, IMAGE,
         headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]),
    # prompts that say nothing
    Case("prompt-empty", 400, "prompt is required", {**BR, "prompt": ""}, IMAGE),
    Case("prompt-unicode-spaces", 400, "prompt is required", {**BR, "prompt": "\u3000\u2003 \n\u00a0"}, IMAGE),
    Case("prompt-zero-width", 400, "prompt is required", {**BR, "prompt": "\u200b\ufeff\u200d"}, IMAGE),
    Case("prompt-5001-emoji", 400, "prompt is longer than 5000 characters", {**BR, "prompt": "\U0001f600" * 5001},
         IMAGE),
    Case("prompt-over-64k-part", 400, "Part exceeded maximum size of 64KB", {**BR, "prompt": "x" * 70000}, IMAGE),
    # bodies that are not forms
    Case("multipart-without-boundary", 400, "Missing boundary in multipart", content=b"task_type=x",
         headers=[("Content-Type", "multipart/form-data")]),
    Case("json-body", 400, "Invalid input", content=json.dumps(BR).encode(),
         headers=[("Content-Type", "application/json")]),
    # webhook_url: a URL no client could send, or one that would make this server call its own network
    Case("webhook-ftp", 400, "webhook_url must be an absolute http(s) URL", {**BR, "webhook_url": "ftp://x.org/"},
         IMAGE),
    Case("webhook-javascript", 400, "webhook_url must be an absolute http(s) URL",
         {**BR, "webhook_url": "javascript:alert(1)"}, IMAGE),
    Case("webhook-relative", 400, "webhook_url must be an absolute http(s) URL", {**BR, "webhook_url": "/hook"}, IMAGE),
    Case("webhook-broken-ipv6", 400, "webhook_url is not a valid URL", {**BR, "webhook_url": "http://[::1/x"}, IMAGE),
    Case("webhook-port-out-of-range", 400, "webhook_url is not a valid URL: Port out of range",
         {**BR, "webhook_url": "http://example.com:99999/"}, IMAGE),
    Case("webhook-space", 400, "webhook_url must not contain spaces or control characters",
         {**BR, "webhook_url": "http://exa mple.com/"}, IMAGE),
    Case("webhook-header-injection", 400, "webhook_url must not contain spaces or control characters",
         {**BR, "webhook_url": "http://example.com/\r\nX-Injected: 1"}, IMAGE),
    Case("webhook-over-2000-characters", 400, "Invalid input",
         {**BR, "webhook_url": "http://example.com/" + "a" * 2000}, IMAGE),
    Case("webhook-label-too-long", 400, "webhook_url host", {**BR, "webhook_url": f"http://{'a' * 64}.com/"}, IMAGE,
         settings=PRIVATE_WEBHOOKS_OFF),
    _private_webhook("webhook-loopback", "http://127.0.0.1:9/hook", f"{NON_PUBLIC} (127.0.0.1)"),
    _private_webhook("webhook-localhost", "http://localhost/hook", NON_PUBLIC),
    _private_webhook("webhook-cloud-metadata", "http://169.254.169.254/latest/meta-data/",
                     f"{NON_PUBLIC} (169.254.169.254)"),
    _private_webhook("webhook-ipv4-mapped-loopback", "http://[::ffff:127.0.0.1]/", NON_PUBLIC),
    _private_webhook("webhook-unspecified-address", "http://0.0.0.0/", f"{NON_PUBLIC} (0.0.0.0)"),
    _private_webhook("webhook-private-range", "http://user:pw@10.1.2.3/", f"{NON_PUBLIC} (10.1.2.3)"),
    _private_webhook("webhook-invalid-punycode", "http://xn--a.com/", "webhook_url host 'xn--a.com' does not resolve"),
    _private_webhook("webhook-decimal-loopback", "http://2130706433/", f"{NON_PUBLIC} (127.0.0.1)"),
    _private_webhook("webhook-hex-loopback", "http://0x7f.1/", f"{NON_PUBLIC} (127.0.0.1)"),
    # a field of the wrong kind: a file where text is expected, text where a file is
    Case("prompt-as-a-file", 400, "Invalid input: prompt: must be a text field, not a file", BR,
         IMAGE + [("prompt", ("p.txt", b"cut out", "text/plain"))]),
    Case("parameters-as-a-file", 400, "Invalid input: parameters: must be a text field, not a file", GEN,
         [("parameters", ("p.json", b"{}", "application/json"))]),
    Case("image-as-text", 400, "Invalid input: image: must be a file upload, not a text field",
         {**BR, "image": "not-a-file"}),
    Case("target-image-as-text", 400, "Invalid input: target_image: must be a file upload, not a text field",
         {"task_type": "face_swap", "prompt": "swap", "target_image": "x"}, IMAGE),
    Case("multipart-part-without-name", 400, 'The Content-Disposition header field "name" must be provided',
         headers=MULTIPART, content=f'--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nv\r\n'
                                    f'--{BOUNDARY}--\r\n'.encode()),
    Case("idempotency-key-over-200", 400, "Invalid input: idempotency-key: String should have at most 200",
         GEN, headers=[("Idempotency-Key", "k" * 201)]),
]

TASK = "/api/v1/tasks"
TASK_CASES = [
    Case("status-unknown", 404, "Task not found", method="GET",
         path=f"{TASK}/5b0d6f0e-8a4f-4f5e-9a53-3f1a8e4f7a11/status/"),
    Case("status-malformed", 404, "Task not found: 'abc' is not a valid task id", method="GET",
         path=f"{TASK}/abc/status/"),
    Case("status-NUL-id", 400, "NUL characters are not allowed in the URL", method="GET", path=f"{TASK}/%00/status/"),
    Case("status-NUL-query", 400, "NUL characters are not allowed in the URL", method="GET",
         path=f"{TASK}/{{pending}}/status/?x=%00"),
    Case("status-POST", 405, "Method Not Allowed", path=f"{TASK}/{{pending}}/status/"),
    Case("result-pending", 400, "Task not completed. Status: PENDING", method="GET",
         path=f"{TASK}/{{pending}}/result/"),
    Case("result-cancelled", 400, "Task not completed. Status: FAILURE", method="GET",
         path=f"{TASK}/{{cancelled}}/result/"),
    Case("result-malformed", 404, "Task not found: '1' is not a valid task id", method="GET", path=f"{TASK}/1/result/"),
    Case("result-NUL-id", 400, "NUL characters are not allowed in the URL", method="GET", path=f"{TASK}/%00/result/"),
    Case("cancel-twice", 400, "Task already completed. Status: FAILURE", path=f"{TASK}/{{cancelled}}/cancel/"),
    Case("cancel-unknown", 404, "Task not found", path=f"{TASK}/5b0d6f0e-8a4f-4f5e-9a53-3f1a8e4f7a11/cancel/"),
    Case("cancel-GET", 405, "Method Not Allowed", method="GET", path=f"{TASK}/{{pending}}/cancel/"),
    Case("cancel-NUL-id", 400, "NUL characters are not allowed in the URL", path=f"{TASK}/%00/cancel/"),
    Case("create-GET", 405, "Method Not Allowed", method="GET"),
    Case("list-limit-twice", 400, "Query parameter limit may be sent once", method="GET",
         path=f"{TASK}/?limit=1&limit=2"),
    Case("list-limit-5000-digits", 400, "Invalid input: limit:", method="GET", path=f"{TASK}/?limit={'9' * 5000}"),
    Case("list-status-lowercase", 400, "Invalid input: status:", method="GET", path=f"{TASK}/?status=success"),
    Case("list-cursor-garbage", 400, "Invalid cursor", method="GET", path=f"{TASK}/?cursor=%25%25%25"),
    Case("status-10000-character-id", 404, "Task not found", method="GET", path=f"{TASK}/{'a' * 10000}/status/"),
    Case("events-malformed", 404, "Task not found: 'abc' is not a valid task id", method="GET",
         path=f"{TASK}/abc/events/"),
    Case("delete-malformed", 404, "Task not found: 'abc' is not a valid task id", method="DELETE", path=f"{TASK}/abc/"),
    Case("style-thumbnail-traversal", 404, "Not Found", method="GET",
         path="/api/v1/styles/..%2F..%2Fetc%2Fpasswd/thumbnail.jpg"),
    Case("style-thumbnail-unknown", 404, "Unknown style 'nope'", method="GET",
         path="/api/v1/styles/nope/thumbnail.jpg"),
]

MEDIA_CASES = [
    Case("media-NUL", 400, "NUL characters are not allowed in the URL", method="GET", path="/media/tasks/output/%00"),
    Case("media-unknown-result", 404, "File not found", method="GET", path="/media/tasks/output/2026/01/01/none.png"),
    Case("media-an-input", 404, "File not found", method="GET", path="/media/tasks/input/2026/01/01/x.png"),
    Case("media-empty-name", 404, "File not found", method="GET", path="/media/tasks/output/"),
    Case("media-dot-segment", 404, "File not found", method="GET", path="/media/tasks/output/./x.png"),
    Case("media-very-long-key", 404, "File not found", method="GET", path="/media/tasks/output/" + "k" * 5000),
    Case("media-PUT", 405, "Method Not Allowed", method="PUT", path="/media/tasks/output/x.png"),
]

UNKNOWN_KEY = "bai_" + "0" * 43
KEY_CASES = [
    Case("key-unknown-x-api-key", 401, "Invalid or revoked API key", method="GET", path=f"{TASK}/{{pending}}/status/",
         headers=[("X-API-Key", UNKNOWN_KEY)]),
    Case("key-unknown-bearer", 401, "Invalid or revoked API key", BR, IMAGE,
         headers=[("Authorization", f"Bearer {UNKNOWN_KEY}")]),
    Case("key-revoked", 401, "Invalid or revoked API key", BR, IMAGE, headers=[("X-API-Key", "{revoked}")]),
    Case("key-blank-x-api-key", 401, "Invalid or revoked API key", BR, IMAGE, headers=[("X-API-Key", "  ")]),
    Case("key-bearer-without-key", 401, "Invalid or revoked API key", BR, IMAGE, headers=[("Authorization", "Bearer")]),
    Case("key-bearer-blank", 401, "Invalid or revoked API key", method="GET", path=f"{TASK}/{{pending}}/status/",
         headers=[("Authorization", "bearer    ")]),
    Case("key-10000-characters", 401, "Invalid or revoked API key", method="POST", path=f"{TASK}/{{pending}}/cancel/",
         headers=[("X-API-Key", "k" * 10000)]),
    Case("key-NUL", 400, "NUL characters are not allowed in headers", BR, IMAGE, headers=[("X-API-Key", "bai_\x00")]),
    Case("key-twice", 400, "Header x-api-key may be sent once", method="GET", path=f"{TASK}/{{pending}}/status/",
         headers=[("X-API-Key", UNKNOWN_KEY), ("X-API-Key", "{revoked}")]),
    Case("authorization-twice", 400, "Header authorization may be sent once", BR, IMAGE,
         headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")]),
    Case("key-required-but-absent", 401, "An API key is required", BR, IMAGE, settings={"api_keys_required": True}),
    Case("key-required-basic-auth-is-not-a-key", 401, "An API key is required", method="GET",
         path=f"{TASK}/{{pending}}/status/", headers=[("Authorization", "Basic dXNlcjpwdw==")],
         settings={"api_keys_required": True}),
    Case("media-unknown-key", 404, "File not found", method="GET", path="/media/tasks/output/x.png",
         headers=[("X-API-Key", UNKNOWN_KEY)]),
]

CASES = CREATE_CASES + TASK_CASES + MEDIA_CASES + KEY_CASES


@pytest.fixture(scope="module")
def existing(api_client) -> Iterator[dict[str, str]]:
    """A task left PENDING (no worker runs), a cancelled one and a revoked key, for the cases that need them."""
    def create() -> str:
        response = api_client.post(CREATE, data=BR, files=IMAGE)
        assert response.status_code == 201, response.text
        return response.json()["task_id"]

    pending, cancelled = create(), create()
    assert api_client.post(f"{TASK}/{cancelled}/cancel/").status_code == 200
    revoked, record = create_key("revoked")
    revoke_key(record.prefix)
    yield {"pending": pending, "cancelled": cancelled, "revoked": revoked}
    api_client.post(f"{TASK}/{pending}/cancel/")


@pytest.fixture
def nothing_written(existing, settings):
    """Asserts that the request under test left no task row and no stored file behind."""
    from tasks.db import get_engine

    def snapshot() -> tuple[int, int]:
        with get_engine().connect() as connection:
            rows = connection.execute(sa.text("SELECT count(*) FROM ai_tasks")).scalar_one()
        return rows, sum(1 for path in (settings.data_dir / "media").rglob("*") if path.is_file())

    before = snapshot()
    yield
    assert snapshot() == before


def assert_refused(status: int, text: str, expected_status: int, error: str) -> None:
    """The exact status; the error JSON with a one-line message starting as expected; no trace of a traceback."""
    assert status == expected_status, text
    body = json.loads(text)
    assert isinstance(body, dict) and set(body) <= {"error", "details"}, body
    assert body["error"].startswith(error) and "\n" not in body["error"], body
    assert "Traceback" not in text and 'File "' not in text


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_clearly(api_client, existing, nothing_written, settings, monkeypatch, case):
    for name, value in case.settings.items():
        monkeypatch.setattr(settings, name, value)
    headers = [(name, value.format(**existing)) for name, value in case.headers]
    response = api_client.request(case.method, case.path.format(**existing), data=case.data, files=case.files,
                                  headers=headers, content=case.content)
    assert_refused(response.status_code, response.text, case.status, case.error)


def test_a_declared_body_over_the_limit_is_413_before_a_byte_is_read(api_client, nothing_written):
    response = asgi_request(api_client.app, "POST", CREATE, [*MULTIPART, ("Content-Length", str(10**12))],
                            chunks=[b"never read"])
    assert_refused(response.status, response.body.decode(), 413, "Request body is larger than")
    assert response.chunks_read == 0
    assert response.headers["connection"] == "close"


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(database, redis_client, nothing_written, settings,
                                                                    monkeypatch):
    """No Content-Length (chunked): counted as it arrives; the app answers as soon as it passes the limit (the rest is
    only read to be thrown away, so that the client can read the answer)."""
    monkeypatch.setattr(settings, "max_upload_bytes", 1024 * 1024)
    limit, chunk = max_request_body_bytes(settings), 64 * 1024
    body = _upload_of(limit + 20 * chunk)
    chunks = [body[start:start + chunk] for start in range(0, len(body), chunk)]
    response = asgi_request(create_app(), "POST", CREATE, MULTIPART, chunks=chunks)
    assert_refused(response.status, response.body.decode(), 413, "Request body is larger than")
    assert response.chunks_read_when_answered == limit // chunk + 1 < len(chunks)
    assert response.chunks_read == len(chunks)


def test_a_body_that_arrives_too_slowly_is_408(database, redis_client, nothing_written, settings, monkeypatch):
    """A client trickling its body (slowloris) is cut off at the deadline, however steadily it sends."""
    monkeypatch.setattr(settings, "request_body_timeout_s", 0.5)
    body = _upload_of(5000)
    chunks = [body[start:start + 100] for start in range(0, len(body), 100)]
    response = asgi_request(create_app(), "POST", CREATE, MULTIPART, chunks=chunks, chunk_delay_s=0.1)
    assert_refused(response.status, response.body.decode(), 408, "Request body took longer than 0.5 s to arrive")
    assert 1 <= response.chunks_read < len(chunks) // 2  # cut off long before the end, even on a busy machine


@pytest.mark.parametrize("files", [IMAGE, None], ids=["multipart", "urlencoded"])
def test_the_longest_prompt_fits_the_form_limits(api_client, files):
    """5000 four-byte characters, percent-encoded in a urlencoded form: 60 KB, inside the 64 KB part limit."""
    response = api_client.post(CREATE, data={**(BR if files else GEN), "prompt": "\U0001f600" * 5000}, files=files)
    assert response.status_code == 201, response.text
    api_client.post(f"{TASK}/{response.json()['task_id']}/cancel/")


def test_body_limits_hold_over_a_real_socket(uvicorn_api):
    """Under uvicorn: a declared oversize body is answered before it is sent, a chunked one once it passes the limit
    (the client sees the 413 while still sending), and a trickled one at the deadline."""
    url = uvicorn_api(MAX_UPLOAD_BYTES="65536", REQUEST_BODY_TIMEOUT_S="1")
    started = time.monotonic()
    declared = socket_request(url, "POST", CREATE, [*MULTIPART, ("Content-Length", str(10**10))], body=[b"x" * 1024],
                              pause_s=3)  # the client waits for an early answer before sending, and gets it
    assert_refused(declared.status, declared.body.decode(), 413, "Request body is larger than 0.38 MB")
    assert time.monotonic() - started < 5

    body = _upload_of(1024 * 1024)
    streamed = socket_request(url, "POST", CREATE, [*MULTIPART, ("Transfer-Encoding", "chunked")],
                              body=[body[start:start + 16384] for start in range(0, len(body), 16384)],
                              pause_s=0.01)
    assert_refused(streamed.status, streamed.body.decode(), 413, "Request body is larger than 0.38 MB")

    started = time.monotonic()
    body = _upload_of(5000)
    trickled = socket_request(url, "POST", CREATE, [*MULTIPART, ("Content-Length", str(len(body)))],
                              body=[body[start:start + 100] for start in range(0, len(body), 100)], pause_s=0.2)
    assert_refused(trickled.status, trickled.body.decode(), 408, "Request body took longer than 1 s to arrive")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_60_mb_upload_gets_a_readable_413_at_a_plain_client(uvicorn_api, chunked):
    """http.client (as urllib, requests) sends the whole body before it reads: the server reads and throws away the
    rest of a refused body, so the client reads the 413 instead of "connection reset by peer"."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(uvicorn_api())
    body = _upload_of(60 * 2**20)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        headers = dict(MULTIPART)
        if chunked:
            connection.request("POST", CREATE, body=iter([body[start:start + 2**20]
                                                          for start in range(0, len(body), 2**20)]),
                               headers=headers, encode_chunked=True)
        else:
            connection.request("POST", CREATE, body=body, headers=headers)
        response = connection.getresponse()
        assert_refused(response.status, response.read().decode(), 413, "Request body is larger than 40.25 MB")
    finally:
        connection.close()


def test_a_60_mb_upload_through_urllib_reads_the_413(uvicorn_api):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(uvicorn_api() + CREATE, data=_upload_of(60 * 2**20), method="POST",
                                     headers=dict(MULTIPART))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=120)
    assert_refused(refused.value.code, refused.value.read().decode(), 413, "Request body is larger than 40.25 MB")


def test_a_prefer_wait_of_thousands_of_digits_is_the_cap_not_a_crash():
    """Python refuses to turn more than 4300 digits into an int; `Prefer: wait=<5000 digits>` is simply the cap."""
    from serve.routes.tasks import MAX_PREFER_WAIT_S, _prefer_wait_s

    assert _prefer_wait_s("wait=" + "9" * 5000) == MAX_PREFER_WAIT_S
    assert _prefer_wait_s("wait=" + "0" * 5000 + "7") == 7
    assert _prefer_wait_s("respond-async, wait=30") == 30


def test_an_upload_is_decoded_without_a_second_whole_copy(settings):
    """The image is read from its spooled file as it is decoded: Python memory peaks at about the PNG it becomes,
    not at that plus the whole upload (reading it into bytes first measured 2.1x)."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8))
    data = png_bytes(noise)
    spooled = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    spooled.write(data)
    upload = UploadFile(spooled, size=len(data), filename="noise.png")

    async def decode_traced() -> tuple[Any, int]:
        tracemalloc.start()
        try:
            decoded = await read_image_as_png(upload, settings)
            return decoded, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    decoded, peak = anyio.run(decode_traced)
    assert (decoded.width, decoded.height) == (1200, 1200)
    assert peak < 1.5 * len(data)
