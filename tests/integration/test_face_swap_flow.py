"""Face swap through the real chain (API → Postgres → Celery gpu queue → Serve FaceSwap, landmark backend): `image`
is the source face, `target_image` the picture that receives it."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from deployments.face_swap import LandmarkSwap
from tests.face_images import MARKED_LANDMARK, composite_target, face_hull_mask, luminance_at, marked_source, no_face
from tests.helpers import png_bytes, wait_for

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"


@pytest.fixture(scope="module")
def landmarks() -> LandmarkSwap:
    """The measuring instrument: finds the faces (FaceMesh landmarks) in the inputs and the result."""
    return LandmarkSwap()


@pytest.fixture(scope="module")
def source_png(landmarks) -> bytes:
    return png_bytes(Image.fromarray(marked_source(landmarks.find_faces(data.astronaut())[0])))


def _create(http, source: bytes, target: bytes | None, **parameters):
    files = {"image": ("source.png", source, "image/png")}
    if target is not None:
        files["target_image"] = ("target.png", target, "image/png")
    return http.post(CREATE, data={"task_type": "face_swap", "prompt": "swap the face",
                                   "parameters": json.dumps(parameters)}, files=files)


def test_face_swap_puts_the_source_face_on_the_target(http, landmarks, source_png):
    target = composite_target()
    (target_face,) = landmarks.find_faces(target)
    created = _create(http, source_png, png_bytes(Image.fromarray(target)), blend_ratio=1.0)
    assert created.status_code == 201, created.text
    task_id = created.json()["task_id"]

    status = wait_for(http, task_id, {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    result = http.get(f"/api/v1/tasks/{task_id}/result/").json()
    assert result["result"]["metadata"]["backend"] == "landmarks"
    swapped = np.asarray(Image.open(io.BytesIO(http.get(result["image_url"]).content)).convert("RGB"))

    (result_face,) = landmarks.find_faces(swapped)
    assert np.linalg.norm(result_face - target_face, axis=1).mean() < 2
    mark = target_face[MARKED_LANDMARK]
    assert luminance_at(target, mark) - luminance_at(swapped, mark) > 120
    assert np.array_equal(swapped[~face_hull_mask(target_face, target.shape, grow=1)],
                          target[~face_hull_mask(target_face, target.shape, grow=1)])


@pytest.mark.parametrize("missing", ["source", "target"])
def test_an_image_without_a_face_fails_at_once_with_the_message(http, source_png, missing):
    nobody = png_bytes(Image.fromarray(no_face()))
    source, target = (nobody, source_png) if missing == "source" else (source_png, nobody)
    task_id = _create(http, source, target).json()["task_id"]
    status = wait_for(http, task_id, {"SUCCESS", "FAILURE"})
    assert status["status"] == "FAILURE" and status["error"] == f"no face found in the {missing} image"
    assert status["retry_count"] == 0


def test_the_target_image_and_sane_parameters_are_required(http, source_png):
    no_target = _create(http, source_png, None)
    assert no_target.status_code == 400 and no_target.json()["error"] == "face_swap needs target_image"
    too_much = _create(http, source_png, source_png, blend_ratio=1.5)
    assert too_much.status_code == 400 and too_much.json()["error"] == "Invalid parameters for face_swap"
