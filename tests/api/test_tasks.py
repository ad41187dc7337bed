"""The API's contract on bad input: a clear 4xx in the seed's error shape, and nothing stored half-way.

The app runs in-process on the real Postgres and Redis; no worker is needed for refusals.
"""

import io
import json
import uuid

import pytest
import sqlalchemy as sa
from PIL import Image

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


def test_a_task_type_without_a_deployment_is_refused(api_client, nothing_written):
    response = _create(api_client, task_type="image_generation", prompt="beautiful sunset",
                       parameters=json.dumps({"width": 512, "height": 512}))
    assert response.status_code == 400
    assert "not served by this deployment" in response.json()["error"]


@pytest.mark.parametrize("path", ["status", "result"])
def test_unknown_and_malformed_ids_are_404(api_client, path):
    unknown = api_client.get(f"/api/v1/tasks/{uuid.uuid4()}/{path}/")
    malformed = api_client.get(f"/api/v1/tasks/not-a-uuid/{path}/")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Task not found"})
    assert malformed.status_code == 404 and "not a valid task id" in malformed.json()["error"]


def test_cancel_of_an_unknown_task_is_404(api_client):
    assert api_client.post(f"/api/v1/tasks/{uuid.uuid4()}/cancel/").status_code == 404


def test_media_outside_results_is_not_served(api_client):
    for key in ("tasks/input/x.png", "../../etc/passwd", "tasks/output/../../x"):
        assert api_client.get(f"/media/{key}").status_code == 404


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
