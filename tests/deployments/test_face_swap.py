"""The plain face-swap model, called directly (no Ray).

Landmark backend: the source is the astronaut with a dark mark on her cheek, the target a mirrored, scaled,
rotated, recoloured view of her on another background (tests/face_images.py). A right swap puts a face whose
landmarks sit where the target's were, carries the mark to the same landmark, and leaves everything outside the
face untouched. insightface backend: the same glue runs on stand-in ONNX models (tests/insightface_standins.py).
"""

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from deployments.events import InvalidInput
from deployments.face_swap import FaceSwapper
from tests.face_images import (
    MARKED_LANDMARK,
    composite_target,
    face_hull_mask,
    luminance_at,
    marked_source,
    no_face,
    two_face_target,
)
from tests.helpers import assert_names_files_in_models_dir, png_bytes
from tests.insightface_standins import FACE_SIZE, swapped_colour, write_standins


def _png(rgb: np.ndarray) -> bytes:
    return png_bytes(Image.fromarray(rgb))


def _swap(swapper: FaceSwapper, source: np.ndarray, target: np.ndarray, **parameters) -> tuple[np.ndarray, dict]:
    *progress, final = swapper.run(_png(source), parameters, {"target_image": _png(target)})
    assert [event["progress"] for event in progress] == sorted(event["progress"] for event in progress)
    result = final["result"]
    return np.asarray(Image.open(io.BytesIO(result["image"])).convert("RGB")), result["metadata"]


@pytest.fixture(scope="module")
def landmark_swapper(settings) -> FaceSwapper:
    return FaceSwapper(settings.models_dir, "landmarks")


@pytest.fixture(scope="module")
def find_faces(landmark_swapper):
    return landmark_swapper.backend.find_faces


@pytest.fixture(scope="module")
def source(find_faces) -> np.ndarray:
    return marked_source(find_faces(data.astronaut())[0])


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return composite_target()


@pytest.fixture(scope="module")
def target_face(find_faces, target) -> np.ndarray:
    (face,) = find_faces(target)
    return face


def test_swapped_face_takes_the_targets_place_and_carries_the_source_features(
        landmark_swapper, find_faces, source, target, target_face):
    swapped, metadata = _swap(landmark_swapper, source, target, blend_ratio=1.0)
    assert swapped.shape == target.shape

    (result_face,) = find_faces(swapped)
    error = np.linalg.norm(result_face - target_face, axis=1)
    assert error.mean() < 2 and error.max() < 5, (error.mean(), error.max())

    mark = target_face[MARKED_LANDMARK]
    assert luminance_at(target, mark) - luminance_at(swapped, mark) > 120  # the source's mark, in its place
    change = np.abs(swapped.astype(int) - target)
    assert change[face_hull_mask(target_face, target.shape)].mean() > 10
    assert change[~face_hull_mask(target_face, target.shape, grow=1)].max() == 0
    assert metadata["backend"] == "landmarks" and metadata["faces_swapped"] == 1
    assert metadata["model_version"] == metadata["model"]  # no user_config, so no rollout label


def test_blend_ratio_mixes_target_and_swap_and_zero_leaves_the_target(landmark_swapper, source, target, target_face):
    full, _ = _swap(landmark_swapper, source, target, blend_ratio=1.0)
    half, _ = _swap(landmark_swapper, source, target, blend_ratio=0.5)
    unchanged, _ = _swap(landmark_swapper, source, target, blend_ratio=0.0)
    assert np.array_equal(unchanged, target)
    mark = target_face[MARKED_LANDMARK]
    midway = (luminance_at(full, mark) + luminance_at(target, mark)) / 2
    assert abs(luminance_at(half, mark) - midway) < 3


def test_face_indexes_count_left_to_right_and_swap_all_takes_every_face(landmark_swapper, find_faces, source):
    target = two_face_target()
    left, right = find_faces(target)
    assert left[:, 0].mean() < target.shape[1] / 2 < right[:, 0].mean()

    def changed_faces(swapped: np.ndarray) -> list[bool]:
        return [bool((swapped != target)[face_hull_mask(face, target.shape)].any()) for face in (left, right)]

    right_only, _ = _swap(landmark_swapper, source, target, blend_ratio=1.0, target_face_index=1)
    assert changed_faces(right_only) == [False, True]
    both, metadata = _swap(landmark_swapper, source, target, blend_ratio=1.0, swap_all_faces=True)
    assert changed_faces(both) == [True, True] and metadata["faces_swapped"] == 2
    with pytest.raises(InvalidInput, match="target_face_index is 2 but the target image has 2 faces"):
        _swap(landmark_swapper, source, target, target_face_index=2)


@pytest.mark.parametrize("image", ["source", "target"])
def test_an_image_without_a_face_is_invalid_input(landmark_swapper, source, target, image):
    images = {"source": source, "target": target, image: no_face()}
    with pytest.raises(InvalidInput, match=f"no face found in the {image} image"):
        _swap(landmark_swapper, images["source"], images["target"])


def test_the_target_image_is_required(landmark_swapper, source):
    with pytest.raises(InvalidInput, match="needs a target_image"):
        list(landmark_swapper.run(_png(source), {}, {}))


# -- insightface backend, on stand-in models --------------------------------------------------------------------

RED, BLUE, LIGHT_GREY = (255, 64, 64), (64, 64, 255), (225, 225, 225)
FACE_CENTRES = ((160, 320), (480, 320))  # (x, y): on the stride-32 grid the stand-in detector scores


def _squares(colours: tuple[tuple[int, int, int], ...], background: int = 20) -> np.ndarray:
    """A 640x640 image with one 128x128 'face' per colour, left to right at FACE_CENTRES."""
    image = np.full((640, 640, 3), background, np.uint8)
    for (x, y), colour in zip(FACE_CENTRES, colours, strict=False):
        image[y - FACE_SIZE // 2:y + FACE_SIZE // 2, x - FACE_SIZE // 2:x + FACE_SIZE // 2] = colour
    return image


def _face_box(index: int, margin: int = 0) -> tuple[slice, slice]:
    x, y = FACE_CENTRES[index]
    reach = FACE_SIZE // 2 + margin
    return slice(y - reach, y + reach), slice(x - reach, x + reach)


@pytest.fixture(scope="module")
def insightface_swapper(tmp_path_factory) -> FaceSwapper:
    models_dir = tmp_path_factory.mktemp("models")
    write_standins(models_dir)
    return FaceSwapper(models_dir, "insightface", detection_size=640)


@pytest.mark.parametrize(("source_face_index", "source_colour"), [(0, RED), (1, BLUE)])
def test_insightface_path_swaps_the_chosen_face_with_the_chosen_identity(
        insightface_swapper, source_face_index, source_colour):
    source, target = _squares((RED, BLUE)), _squares((LIGHT_GREY, LIGHT_GREY))
    swapped, metadata = _swap(insightface_swapper, source, target, blend_ratio=1.0,
                              source_face_index=source_face_index, target_face_index=1)
    centre = swapped[_face_box(1, margin=-32)].reshape(-1, 3)
    assert np.abs(centre - swapped_colour(source_colour)).max() <= 2
    outside = np.ones(target.shape[:2], bool)
    outside[_face_box(1, margin=2)] = False
    assert np.array_equal(swapped[outside], target[outside])  # the left face and the background untouched
    assert metadata["backend"] == "insightface" and metadata["model"] == "buffalo_l+inswapper_128"


def test_insightface_path_swaps_all_faces_and_blends(insightface_swapper):
    source, target = _squares((RED,)), _squares((LIGHT_GREY, LIGHT_GREY))
    both, metadata = _swap(insightface_swapper, source, target, blend_ratio=1.0, swap_all_faces=True)
    for index in range(2):
        assert np.abs(both[_face_box(index, margin=-32)] - swapped_colour(RED)).max() <= 2
    unchanged, _ = _swap(insightface_swapper, source, target, blend_ratio=0.0, swap_all_faces=True)
    assert np.array_equal(unchanged, target) and metadata["faces_swapped"] == 2


def test_insightface_path_without_a_source_face_is_invalid_input(insightface_swapper):
    with pytest.raises(InvalidInput, match="no face found in the source image"):
        _swap(insightface_swapper, _squares(()), _squares((LIGHT_GREY,)))


def test_insightface_models_are_never_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded") as missing:
        FaceSwapper(tmp_path, "insightface")
    assert_names_files_in_models_dir(missing.value, tmp_path, "insightface/models/buffalo_l",
                                     "insightface/inswapper_128.onnx")
