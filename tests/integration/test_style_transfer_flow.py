"""Style transfer through the real chain: API → Postgres → Celery gpu queue → Serve StyleTransfer (ONNX networks)
→ stored result; plus the style catalogue the API lists."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.deployments.test_style_transfer import SIDE, colour_change, mean_colour, structure
from tests.helpers import png_bytes, wait_for

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"


@pytest.fixture(scope="module")
def photo(astronaut) -> Image.Image:
    return astronaut.resize((SIDE, SIDE), Image.LANCZOS)


def _stylized(http, photo: Image.Image, style_image: Image.Image | None = None,
              **parameters) -> tuple[Image.Image, dict]:
    files = {"image": ("photo.png", png_bytes(photo), "image/png")}
    if style_image is not None:
        files["style_image"] = ("style.png", png_bytes(style_image), "image/png")
    created = http.post(CREATE, data={"task_type": "style_transfer", "prompt": "restyle it",
                                      "parameters": json.dumps(parameters)}, files=files)
    assert created.status_code == 201, created.text
    status = wait_for(http, created.json()["task_id"], {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    result = http.get(status["result_url"]).json()
    return Image.open(io.BytesIO(http.get(result["image_url"]).content)), result["result"]["metadata"]


def test_the_api_lists_the_named_styles(http):
    listed = http.get("/api/v1/styles/")
    assert listed.status_code == 200
    body = listed.json()
    names = [style["name"] for style in body["styles"]]
    assert len(names) == 26 and names[0] == "style-0" and names[-1] == "style-25"
    assert body["style_image"] is True


def test_named_style_through_the_chain(http, photo):
    stylized, metadata = _stylized(http, photo, style="style-12")
    assert stylized.size == photo.size
    assert 0.2 < structure(photo, stylized) < 0.75 and colour_change(photo, stylized) > 15
    assert metadata["model"] == "multistyle26" and metadata["style"] == "style-12"


def test_style_image_through_the_chain(http, photo):
    style_image = Image.fromarray(data.immunohistochemistry()).resize((SIDE, SIDE), Image.LANCZOS)
    stylized, metadata = _stylized(http, photo, style_image)
    assert stylized.size == photo.size and metadata["mode"] == "style_image"
    before = np.abs(mean_colour(photo) - mean_colour(style_image)).sum()
    assert np.abs(mean_colour(stylized) - mean_colour(style_image)).sum() < 0.5 * before
    assert structure(photo, stylized) > 0.4


def test_unknown_style_is_refused_before_queueing(http, photo):
    refused = http.post(CREATE, data={"task_type": "style_transfer", "prompt": "restyle it",
                                      "parameters": json.dumps({"style": "van-gogh"})},
                        files={"image": ("photo.png", png_bytes(photo), "image/png")})
    assert refused.status_code == 400
    assert "unknown style 'van-gogh'" in json.dumps(refused.json())
