"""The API's contract on bad input: a clear 4xx in the seed's error shape, and nothing stored half-way.

The app runs in-process on the real Postgres and Redis; no worker is needed for refusals.
"""

import io
import uuid

import pytest
import sqlalchemy as sa
from PIL import Image

from tests.raw_requests import asgi_request, socket_request

CREATE = "/api/v1/tasks/create/"


@pytest.fixture
def nothing_written(api_client, settings):
    """Asserts that the request under test left no row and no stored file behind."""
    from tasks.db import get_engine

    def snapshot() -> tuple[int, int]:
        with get_engine().connect() as connection:
            rows = connection.execute(sa.text("SELECT count(*) FROM ai_tasks")).scalar_one()
        files = sum(1 for path in (settings.data_dir / "media").rglob("*") if path.is_file())
        return rows, files

    before = snapshot()
    yield
    assert snapshot() == before


def _create(client, files=None, **form):
    return client.post(CREATE, data=form, files=files)


def _image(size=(64, 48), fmt="PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("form", "files", "status", "error"),
    [
        ({"task_type": "teleportation", "prompt": "x"}, None, 400, "Unknown task_type 'teleportation'"),
        ({"prompt": "x"}, None, 400, "Invalid input"),
        ({"task_type": "background_removal"}, {"image": ("a.png", _image())}, 400, "prompt is required"),
        ({"task_type": "background_removal", "prompt": "   "}, {"image": ("a.png", _image())}, 400,
         "prompt is required"),
        ({"task_type": "background_removal", "prompt": "x" * 5001}, {"image": ("a.png", _image())}, 400,
         "prompt is longer than 5000 characters"),
        ({"task_type": "background_removal", "prompt": "x", "parameters": "{not json"},
         {"image": ("a.png", _image())}, 400, "parameters must be a JSON object"),
        ({"task_type": "background_removal", "prompt": "x", "parameters": "[1, 2]"},
         {"image": ("a.png", _image())}, 400, "parameters must be a JSON object"),
        ({"task_type": "background_removal", "prompt": "x", "parameters": '{"return_mask": "perhaps"}'},
         {"image": ("a.png", _image())}, 400, "Invalid parameters for background_removal"),
        ({"task_type": "background_removal", "prompt": "x", "parameters": '{"retrun_mask": true}'},
         {"image": ("a.png", _image())}, 400, "Invalid parameters for background_removal"),
        ({"task_type": "background_removal", "prompt": "x"}, None, 400, "background_removal needs an image"),
        ({"task_type": "background_removal", "prompt": "x"}, {"image": ("photo.png", b"%PDF-1.4 not an image")},
         400, "Uploaded file is not a valid image"),
        ({"task_type": "background_removal", "prompt": "x"}, {"image": ("trunc.png", _image()[:60])}, 400,
         "Uploaded image could not be decoded"),
    ],
    ids=["unknown-type", "missing-type", "missing-prompt", "blank-prompt", "long-prompt", "params-not-json",
         "params-not-object", "params-wrong-type", "params-unknown-key", "missing-image", "not-an-image",
         "truncated-image"],
)
def test_bad_create_requests_are_refused_clearly(api_client, nothing_written, form, files, status, error):
    response = _create(api_client, files=files, **form)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(error)


def test_an_image_over_the_pixel_limit_is_refused(api_client, nothing_written, settings):
    side = int(settings.max_image_pixels**0.5) + 1
    response = _create(api_client, files={"image": ("big.png", _image((side, side)))},
                       task_type="background_removal", prompt="x")
    assert response.status_code == 400
    assert "pixels; the limit is" in response.json()["error"]


def test_an_upload_over_the_size_limit_is_413(api_client, nothing_written, settings):
    oversized = _image() + b"\0" * settings.max_upload_bytes
    response = _create(api_client, files={"image": ("a.png", oversized)}, task_type="background_removal",
                       prompt="x")
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


@pytest.mark.parametrize("path", ["status", "result"])
def test_unknown_and_malformed_ids_are_404(api_client, path):
    unknown = api_client.get(f"/api/v1/tasks/{uuid.uuid4()}/{path}/")
    malformed = api_client.get(f"/api/v1/tasks/not-a-uuid/{path}/")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Task not found"})
    assert malformed.status_code == 404 and "not a valid task id" in malformed.json()["error"]


def test_cancel_of_an_unknown_task_is_404(api_client):
    assert api_client.post(f"/api/v1/tasks/{uuid.uuid4()}/cancel/").status_code == 404


# Targets as sent on the wire (an HTTP client would resolve the `..` away): each must reach the media route's guard
# ("File not found") or StaticFiles' ("Not Found") and be refused there.
TRAVERSAL_TARGETS = [
    ("/media/tasks/input/x.png", "File not found"),
    ("/media/../../etc/passwd", "File not found"),
    ("/media/tasks/output/../../x", "File not found"),
    ("/media/tasks/output/..%2F..%2Finput%2Fx.png", "File not found"),
    ("/media/tasks/output/%2e%2e/%2e%2e/pyproject.toml", "File not found"),
    ("/media/tasks/output/..\\..\\x.png", "File not found"),
    ("/media/tasks/output//etc/passwd", "File not found"),
    ("/static/../../pyproject.toml", "Not Found"),
    ("/static/%2e%2e/%2e%2e/pyproject.toml", "Not Found"),
]


@pytest.mark.parametrize(("target", "error"), TRAVERSAL_TARGETS)
def test_media_outside_results_is_not_served(api_client, target, error):
    response = asgi_request(api_client.app, "GET", target)
    assert (response.status, response.json()) == (404, {"error": error})


def test_a_result_is_served_only_once_its_task_succeeded(api_client):
    """The claim names the result file before the model runs; until SUCCESS that name serves nothing, even when a
    run has written the file."""
    from tasks import state_writes
    from tasks.storage import get_storage

    task_id = uuid.UUID(_create(api_client, {"image": ("a.png", _image())}, task_type="background_removal",
                                prompt="p").json()["task_id"])
    claimed = state_writes.claim(task_id, f"media-{task_id}", worker="test:1")
    get_storage().write(claimed.result_image, _image())
    assert api_client.get(f"/media/{claimed.result_image}").status_code == 404
    assert state_writes.succeed(task_id, claimed.result_image, {"metadata": {}}, processing_time=0.1)
    assert api_client.get(f"/media/{claimed.result_image}").content == _image()


def test_traversal_targets_arrive_unchanged_over_a_real_socket(uvicorn_api):
    """uvicorn hands the `..` on as sent, so the guards above are what stands between a client and the disk."""
    url = uvicorn_api()
    answers = {target: socket_request(url, "GET", target) for target, _ in TRAVERSAL_TARGETS}
    assert {target: (answer.status, answer.json()) for target, answer in answers.items()} == \
        {target: (404, {"error": error}) for target, error in TRAVERSAL_TARGETS}


def test_exif_orientation_is_applied_to_the_stored_input(api_client, settings):
    """A JPEG whose EXIF says 'rotate 90°' is stored upright (as a PNG under a generated name)."""
    from tasks.service import get_task
    from tasks.storage import get_storage

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    response = _create(api_client, files={"image": ("../../evil name.jpg", _image((80, 40), "JPEG", exif=exif))},
                       task_type="background_removal", prompt="x")
    assert response.status_code == 201, response.text
    task = get_task(uuid.UUID(response.json()["task_id"]))
    stored = Image.open(io.BytesIO(get_storage().get(task.input_image)))
    assert (stored.format, stored.size) == ("PNG", (40, 80))
    assert "evil" not in task.input_image and task.input_image.startswith("tasks/input/")
    assert api_client.post(f"/api/v1/tasks/{task.id}/cancel/").status_code == 200


def test_an_extra_image_the_type_does_not_take_is_refused(api_client, nothing_written):
    response = _create(api_client, files={"image": ("a.png", _image()), "style_image": ("s.png", _image())},
                       task_type="background_removal", prompt="x")
    assert response.status_code == 400
    assert response.json()["error"] == "background_removal does not take style_image"


def _bomb_png() -> bytes:
    """A 1-bit PNG that declares 30000x30000 pixels in a few kilobytes (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BR = {"task_type": "background_removal", "prompt": "x"}


@pytest.mark.parametrize(
    ("form", "files", "headers", "status", "error"),
    [
        (BR, {"image": ("bomb.png", _bomb_png())}, {}, 400, "Image declares too many pixels"),
        (BR, {"image": ("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (50 * 1024 * 1024))}, {}, 413,
         "Request body is larger than"),
        (BR, {"image": ("empty.png", b"")}, {}, 400, "Image file is empty"),
        (BR, {"image": ("pic.png", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/png")}, {}, 400,
         "Uploaded file is not a valid image"),
        (BR, {"image": ("pic.jpg", b"GIF89a not really")}, {}, 400, "Uploaded file is not a valid image"),
        (BR, {"image": ("a.ico", _image((16, 16), "ICO"))}, {}, 400, "Unsupported image format ICO"),
        ({**BR, "image": "not-a-file"}, None, {}, 400, "Invalid input"),
        ({**BR, "parameters": "null"}, {"image": ("a.png", _image())}, {}, 400, "parameters must be a JSON object"),
        ({**BR, "parameters": '"return_mask"'}, {"image": ("a.png", _image())}, {}, 400,
         "parameters must be a JSON object"),
        ({**BR, "parameters": "42"}, {"image": ("a.png", _image())}, {}, 400, "parameters must be a JSON object"),
        ({**BR, "parameters": '{"return_mask": {"nested": 1}}'}, {"image": ("a.png", _image())}, {}, 400,
         "Invalid parameters"),
        ({**BR, "parameters": "{" * 10000}, {"image": ("a.png", _image())}, {}, 400,
         "parameters is nested deeper than"),
        ({**BR, "task_type": ""}, {"image": ("a.png", _image())}, {}, 400, "Invalid input"),
        ({**BR, "task_type": "BACKGROUND_REMOVAL"}, {"image": ("a.png", _image())}, {}, 400, "Unknown task_type"),
        ({**BR, "task_type": "background_removal "}, {"image": ("a.png", _image())}, {}, 400, "Unknown task_type"),
        ({**BR, "task_type": "../../etc/passwd"}, {"image": ("a.png", _image())}, {}, 400, "Unknown task_type"),
        ({**BR, "prompt": "\n\t "}, {"image": ("a.png", _image())}, {}, 400, "prompt is required"),
        (BR, {"image": ("a.png", _image())}, {"Idempotency-Key": "k" * 201}, 400, "Invalid input"),
        (BR, {"image": ("a.png", _image()), "target_image": ("t.png", _image())}, {}, 400,
         "background_removal does not take target_image"),
    ],
    ids=["decompression-bomb", "50MB-upload", "zero-byte-file", "svg-named-png", "fake-gif", "ico-format",
         "image-as-text-field", "params-null", "params-string", "params-number", "params-nested-wrong-type",
         "params-deep-garbage", "empty-type", "type-wrong-case", "type-trailing-space", "type-path-traversal",
         "whitespace-prompt", "idempotency-key-too-long", "unexpected-target-image"],
)
def test_corpus_of_bad_requests(api_client, nothing_written, form, files, headers, status, error):
    response = api_client.post(CREATE, data=form, files=files, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(error), response.json()


@pytest.mark.parametrize(("task_id", "error"), [
    ("1", "Task not found: '1' is not a valid task id"),
    ("00000000-0000-0000-0000", "Task not found: '00000000-0000-0000-0000' is not a valid task id"),
    ("x" * 500, f"Task not found: {'x' * 500!r} is not a valid task id"),
    ("550e8400-e29b-41d4-a716-44665544000g", "Task not found: '550e8400-e29b-41d4-a716-44665544000g' is not a valid "
                                             "task id"),
    ("..", "Task not found: '..' is not a valid task id"),  # sent raw, so the id really is '..'
    ("%2e%2e", "Task not found: '..' is not a valid task id"),
    ("../../etc/passwd", "Not Found"),  # an id with slashes matches no route
    ("..%2F..%2Fetc%2Fpasswd", "Not Found"),  # decoded to slashes before routing: no route either
])
def test_bad_task_ids_are_404_everywhere(api_client, task_id, error):
    for method, path in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        response = asgi_request(api_client.app, method, f"/api/v1/tasks/{task_id}/{path}/")
        assert (response.status, response.json()) == (404, {"error": error}), (method, path)
