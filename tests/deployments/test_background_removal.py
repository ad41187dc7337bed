"""The plain background-removal model, called directly (no Ray): judged on where the alpha lands."""

import io

import numpy as np
import pytest
from PIL import Image

from deployments.background_removal import BackgroundRemover
from deployments.catalogue import BACKGROUND_MODELS, MEDIAPIPE_SELFIE
from deployments.events import InvalidInput
from tests.helpers import BACKGROUND_BOXES, PERSON_BOXES, alpha_of, assert_names_files_in_models_dir


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
    with pytest.raises(FileNotFoundError, match="backendai models fetch") as missing:
        BackgroundRemover(tmp_path, "u2netp")
    assert_names_files_in_models_dir(missing.value, tmp_path, "rembg/u2netp.onnx")
    assert missing.value.__notes__ == [f"full paths: {tmp_path / 'rembg' / 'u2netp.onnx'}"]  # for the operator


# -- model choice, person-only segmentation, alpha matting, background colour -----------------------------------


def _mask(remover: BackgroundRemover, image_bytes: bytes, model: str) -> np.ndarray:
    _, result = _run(remover, image_bytes, return_mask=True, model=model)
    mask = Image.open(io.BytesIO(result["image"]))
    assert mask.mode == "L" and result["metadata"]["model"] == model
    return np.asarray(mask) > 127


def test_rembg_and_mediapipe_person_masks_agree_on_the_astronaut(remover, astronaut_png):
    rembg_mask = _mask(remover, astronaut_png, "u2netp")
    person_mask = _mask(remover, astronaut_png, MEDIAPIPE_SELFIE)
    iou = (rembg_mask & person_mask).sum() / (rembg_mask | person_mask).sum()
    assert iou >= 0.8, iou
    for box in PERSON_BOXES:
        assert person_mask[box].mean() > 0.9, box
    for box in BACKGROUND_BOXES:
        assert person_mask[box].mean() < 0.05, box


def test_bgcolor_fills_the_background_and_keeps_the_person(remover, astronaut, astronaut_png):
    _, result = _run(remover, astronaut_png, bgcolor=[0, 255, 0, 255])
    output = np.asarray(Image.open(io.BytesIO(result["image"])))
    assert output.shape == (512, 512, 4) and (output[..., 3] == 255).all()
    for box in BACKGROUND_BOXES:
        assert np.abs(output[box][..., :3].astype(int) - (0, 255, 0)).mean() < 15, box
    face = PERSON_BOXES[0]
    assert np.abs(output[face][..., :3].astype(int) - np.asarray(astronaut)[face]).mean() < 5


def test_alpha_matting_softens_the_edge_of_the_same_cutout(remover, astronaut_png):
    _, plain = _run(remover, astronaut_png)
    _, matted = _run(remover, astronaut_png, alpha_matting=True)
    plain_alpha, matted_alpha = alpha_of(plain["image"]), alpha_of(matted["image"])
    assert np.mean((plain_alpha > 127) == (matted_alpha > 127)) > 0.95
    for box in PERSON_BOXES:
        assert matted_alpha[box].mean() > 200, box
    for box in BACKGROUND_BOXES:
        assert matted_alpha[box].mean() < 20, box
    assert not np.array_equal(plain_alpha, matted_alpha) and matted["metadata"]["alpha_matting"] is True


def test_a_model_that_is_not_installed_is_invalid_input_naming_its_file(settings, tmp_path, astronaut_png):
    (tmp_path / "rembg").mkdir()
    (tmp_path / "rembg" / "u2netp.onnx").symlink_to(settings.models_dir / "rembg" / "u2netp.onnx")
    with pytest.raises(InvalidInput, match="'isnet-general-use' is not installed .*isnet-general-use.onnx"):
        list(BackgroundRemover(tmp_path, "u2netp").run(astronaut_png, {"model": "isnet-general-use"}))


def test_every_model_the_api_accepts_is_a_rembg_model_or_the_person_segmenter():
    from rembg.sessions import sessions_class

    rembg_models = {session.name() for session in sessions_class}
    assert set(BACKGROUND_MODELS) - rembg_models == {MEDIAPIPE_SELFIE}


# -- the deployment's user_config: switching the default model in place -----------------------------------------


@pytest.fixture
def deployment(settings, tmp_path, monkeypatch):
    """The Serve deployment's own class (no Ray), on a models folder that holds only u2netp."""
    from deployments.background_removal import BackgroundRemoval

    (tmp_path / "rembg").mkdir()
    (tmp_path / "rembg" / "u2netp.onnx").symlink_to(settings.models_dir / "rembg" / "u2netp.onnx")
    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    return BackgroundRemoval.func_or_class(model="u2netp")


def test_user_config_switches_the_default_model_and_back(deployment, astronaut_png):
    deployment.reconfigure({"model": MEDIAPIPE_SELFIE})
    _, result = _run(deployment.remover, astronaut_png)
    assert result["metadata"]["model"] == MEDIAPIPE_SELFIE
    _, named = _run(deployment.remover, astronaut_png, model="u2netp")  # a request's own choice still wins
    assert named["metadata"]["model"] == "u2netp"
    deployment.reconfigure({})  # no model: back to the one the replica started with
    assert deployment.remover.model == "u2netp"


def test_a_request_already_running_finishes_on_the_model_it_started_with(deployment, astronaut_png):
    running = deployment.remover.run(astronaut_png, {})
    next(running)  # started: decoding
    deployment.reconfigure({"model": MEDIAPIPE_SELFIE})
    *_, final = running
    assert final["result"]["metadata"]["model"] == "u2netp"


def test_each_result_records_the_model_version_its_request_started_on(deployment, astronaut_png):
    """A rollout of a `version` label in user_config, mid-request: the running request finishes and says it ran
    on the old version; the next one says the new."""
    _, before = _run(deployment.remover, astronaut_png)
    assert before["metadata"]["model_version"] == "u2netp"
    running = deployment.remover.run(astronaut_png, {})
    next(running)
    deployment.reconfigure({"model": "u2netp", "version": "2026-12-04"})
    *_, final = running
    assert final["result"]["metadata"]["model_version"] == "u2netp"
    _, after = _run(deployment.remover, astronaut_png)
    assert after["metadata"]["model_version"] == "u2netp@2026-12-04"
    _, named = _run(deployment.remover, astronaut_png, model=MEDIAPIPE_SELFIE)  # the model that ran, this rollout
    assert named["metadata"]["model_version"] == f"{MEDIAPIPE_SELFIE}@2026-12-04"


def test_an_unchanged_user_config_loads_nothing(deployment, tmp_path):
    (tmp_path / "rembg" / "u2netp.onnx").unlink()  # a reload would now fail
    deployment.reconfigure({"model": "u2netp"})
    assert deployment.remover.model == "u2netp"


def test_a_user_config_naming_a_missing_model_fails_and_keeps_the_current_one(deployment):
    with pytest.raises(FileNotFoundError, match=r"isnet-general-use\.onnx is missing"):
        deployment.reconfigure({"model": "isnet-general-use"})
    assert deployment.remover.model == "u2netp"
    with pytest.raises(ValueError, match="takes only `model` and `version`, not modle"):
        deployment.reconfigure({"modle": MEDIAPIPE_SELFIE})
