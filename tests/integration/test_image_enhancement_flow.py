"""Image enhancement through the real chain: API → Postgres → Celery gpu queue → Serve ImageEnhancement
(Real-ESRGAN on ncnn) → stored result; an output over the pixel cap is refused before anything is queued."""

import io
import json

import pytest
from PIL import Image

from tests.deployments.test_image_enhancement import ORIGINAL_SIDE, bicubic, shrunk, ssim
from tests.helpers import png_bytes, wait_for

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"


def _create(http, image: Image.Image, **parameters):
    return http.post(CREATE, data={"task_type": "image_enhancement", "prompt": "enhance",
                                   "parameters": json.dumps(parameters)},
                     files={"image": ("low.png", png_bytes(image), "image/png")})


def _enhanced(http, image: Image.Image, **parameters) -> tuple[Image.Image, dict]:
    created = _create(http, image, **parameters)
    assert created.status_code == 201, created.text
    status = wait_for(http, created.json()["task_id"], {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    result = http.get(status["result_url"]).json()
    return Image.open(io.BytesIO(http.get(result["image_url"]).content)), result["result"]["metadata"]


@pytest.fixture(scope="module")
def original(astronaut) -> Image.Image:
    return astronaut.resize((ORIGINAL_SIDE, ORIGINAL_SIDE), Image.LANCZOS)


@pytest.mark.parametrize("model", [None, "classic"])
def test_enhancement_through_the_chain_beats_bicubic(http, original, model):
    low = shrunk(original, 2)
    enhanced, metadata = _enhanced(http, low, scale=2, **({"model": model} if model else {}))
    assert enhanced.size == original.size
    assert ssim(original, enhanced) > ssim(original, bicubic(low, 2))
    assert metadata["model"] == (model or "realesr-animevideov3") and metadata["scale"] == 2


def test_output_over_the_pixel_cap_is_refused_with_400(http):
    refused = _create(http, Image.new("RGB", (1100, 1100), "gray"), scale=4)
    assert refused.status_code == 400
    body = refused.json()
    assert "4x enhancement of 1100x1100 would be 4400x4400" in body["error"] and "limit" in body["error"]


def test_unsupported_scale_is_refused_with_400(http, original):
    assert _create(http, shrunk(original, 2), scale=3).status_code == 400
