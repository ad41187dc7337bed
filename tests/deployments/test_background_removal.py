"""The plain background-removal model, called directly (no Ray): judged on where the alpha lands."""

import io

import numpy as np
import pytest
from PIL import Image

from deployments.background_removal import BackgroundRemover
from deployments.events import InvalidInput
from tests.helpers import BACKGROUND_BOXES, PERSON_BOXES, alpha_of


@pytest.fixture(scope="module")
def remover(settings) -> BackgroundRemover:
    return BackgroundRemover(settings.models_dir, "u2netp")


def _run(remover: BackgroundRemover, image_bytes: bytes, **parameters) -> tuple[list[dict], dict]:
    events = list(remover.run(image_bytes, parameters))
    *progress, final = events
    return progress, final["result"]


def test_cutout_is_opaque_on_the_person_and_transparent_in_the_background(remover, astronaut_png):
    progress, result = _run(remover, astronaut_png)
    alpha = alpha_of(result["image"])
    assert alpha.shape == (512, 512)
    for box in PERSON_BOXES:
        assert alpha[box].mean() > 200, box
    for box in BACKGROUND_BOXES:
        assert alpha[box].mean() < 20, box
    assert [event["progress"] for event in progress] == sorted(event["progress"] for event in progress)
    assert result["metadata"]["model"] == "u2netp"


def test_return_mask_gives_a_single_channel_mask_matching_the_cutout(remover, astronaut_png):
    _, cutout = _run(remover, astronaut_png)
    _, mask_result = _run(remover, astronaut_png, return_mask=True)
    mask = Image.open(io.BytesIO(mask_result["image"]))
    assert mask.mode == "L" and mask.size == (512, 512)
    agreement = np.mean((np.asarray(mask) > 127) == (alpha_of(cutout["image"]) > 127))
    assert agreement > 0.97


def test_bytes_that_are_not_an_image_are_invalid_input(remover):
    with pytest.raises(InvalidInput, match="not a readable image"):
        list(remover.run(b"definitely not a png", {}))


def test_missing_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="backendai models fetch"):
        BackgroundRemover(tmp_path, "u2netp")
