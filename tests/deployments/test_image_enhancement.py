"""The plain enhancement model, called directly (no Ray): the astronaut, shrunk by the scale factor, comes back
closer to the original than a bicubic upscale.

Real-ESRGAN is trained to undo real camera degradations (noise, blur, compression), not to minimise pixel error:
on a perfectly clean bicubic shrink a bicubic upscale keeps the higher PSNR/SSIM (x2: 0.922 against 0.890), the
usual perception-distortion trade-off. So the low-res input here carries mild sensor noise (σ = 5 grey levels),
as real photos do, and the judge is SSIM; on the clean shrink the test checks what the network does restore: the
original's sharpness.
"""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from deployments.events import InvalidInput
from deployments.image_enhancement import Enhancer
from tests.helpers import assert_names_files_in_models_dir, png_bytes

ORIGINAL_SIDE = 256


@pytest.fixture(scope="module")
def enhancer(settings) -> Enhancer:
    return Enhancer(settings.models_dir, "realesr-animevideov3", tile_size=256, device="cpu", threads=1)


@pytest.fixture(scope="module")
def original(astronaut) -> Image.Image:
    return astronaut.resize((ORIGINAL_SIDE, ORIGINAL_SIDE), Image.LANCZOS)


def shrunk(original: Image.Image, scale: int, noise: float = 5.0) -> Image.Image:
    """The original shrunk by `scale` (bicubic), with Gaussian sensor noise of `noise` grey levels."""
    small = np.asarray(original.resize((ORIGINAL_SIDE // scale,) * 2, Image.BICUBIC), dtype=np.float64)
    noisy = small + np.random.default_rng(0).normal(0, noise, small.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def enhance(enhancer: Enhancer, image: Image.Image, **parameters) -> tuple[Image.Image, dict, list[dict]]:
    *progress, final = enhancer.run(png_bytes(image), parameters)
    return Image.open(io.BytesIO(final["result"]["image"])), final["result"]["metadata"], progress


def ssim(a: Image.Image, b: Image.Image) -> float:
    return structural_similarity(np.asarray(a), np.asarray(b), channel_axis=2, data_range=255)


def sharpness(image: Image.Image) -> float:
    """Mean gradient magnitude of the grey image."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.hypot(cv2.Sobel(grey, cv2.CV_64F, 1, 0), cv2.Sobel(grey, cv2.CV_64F, 0, 1)).mean())


def bicubic(image: Image.Image, scale: int) -> Image.Image:
    return image.resize((image.width * scale, image.height * scale), Image.BICUBIC)


@pytest.mark.parametrize(("model", "scale", "margin"), [
    ("realesr-animevideov3", 2, 0.02),  # measured SSIM 0.881 against bicubic's 0.838
    ("realesr-animevideov3", 4, 0.01),  # 0.724 against 0.693
    ("realesrgan-x4plus", 4, 0.005),    # 0.711 against 0.693
    ("classic", 2, 0.005),              # 0.854 against 0.838
])
def test_enhanced_shrunk_astronaut_is_closer_to_the_original_than_bicubic(enhancer, original, model, scale, margin):
    low = shrunk(original, scale)
    enhanced, metadata, progress = enhance(enhancer, low, scale=scale, model=model)
    assert enhanced.size == (low.width * scale, low.height * scale) == original.size
    assert ssim(original, enhanced) > ssim(original, bicubic(low, scale)) + margin
    assert metadata["model"] == model and metadata["scale"] == scale and metadata["device"] == "cpu"
    assert [event["progress"] for event in progress] == sorted(event["progress"] for event in progress)


def test_realesrgan_restores_the_sharpness_a_bicubic_upscale_loses(enhancer, original):
    low = shrunk(original, 2, noise=0)
    enhanced, *_ = enhance(enhancer, low, scale=2)
    assert abs(sharpness(enhanced) / sharpness(original) - 1) < 0.1  # measured 1.01
    assert sharpness(bicubic(low, 2)) / sharpness(original) < 0.9  # measured 0.85


def test_tiles_do_not_show(enhancer, original):
    """Each tile sees a margin of context: 32-pixel tiles give (nearly) the single-window result."""
    low = shrunk(original, 2)
    whole, *_ = enhance(enhancer, low, scale=2, tile_size=1024)
    tiled, _, progress = enhance(enhancer, low, scale=2, tile_size=32)
    difference = np.abs(np.asarray(whole, dtype=np.float64) - np.asarray(tiled, dtype=np.float64))
    assert difference.mean() < 0.1 and difference.max() <= 2  # measured 0.0004 and 1
    assert sum(event["message"].startswith("Upscaling tile") for event in progress) == 16


def test_transparency_is_kept(enhancer, original):
    low = shrunk(original, 2).convert("RGBA")
    pixels = np.asarray(low).copy()
    pixels[:, : low.width // 2, 3] = 0
    enhanced, *_ = enhance(enhancer, Image.fromarray(pixels), scale=2)
    alpha = np.asarray(enhanced)[..., 3]
    assert enhanced.mode == "RGBA" and alpha[:, :120].max() == 0 and alpha[:, 136:].min() == 255


def test_classic_mode_needs_no_weights(tmp_path: Path, original):
    weightless = Enhancer(tmp_path, "classic", device="cpu")
    low = shrunk(original, 2)
    enhanced, metadata, _ = enhance(weightless, low, scale=2, local_contrast=True)
    assert enhanced.size == original.size and metadata["model"] == "classic"
    with pytest.raises(InvalidInput, match="not installed") as not_installed:
        enhance(weightless, low, model="realesrgan-x4plus")
    assert_names_files_in_models_dir(not_installed.value, tmp_path, "realesrgan/REALESRGAN_X4PLUS_UP4X.param")


def test_output_over_the_pixel_cap_is_invalid_input(settings, original):
    capped = Enhancer(settings.models_dir, "classic", max_output_pixels=100 * 100, device="cpu")
    with pytest.raises(InvalidInput, match="output pixel limit"):
        enhance(capped, shrunk(original, 2), scale=2)


def test_missing_weights_name_the_fetch_command(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="backendai models fetch") as missing:
        Enhancer(tmp_path, "realesrgan-x4plus", device="cpu")
    assert_names_files_in_models_dir(missing.value, tmp_path, "realesrgan/REALESRGAN_X4PLUS_UP4X.bin")


# -- the deployment's user_config: switching the default model in place -----------------------------------------


@pytest.fixture
def deployment(settings, tmp_path: Path, monkeypatch):
    """The Serve deployment's own class (no Ray: no GPU assigned), on a models folder holding only animevideov3."""
    import ray

    from deployments.image_enhancement import REALESRGAN_SUBDIR, ImageEnhancement

    (tmp_path / REALESRGAN_SUBDIR).mkdir()
    for weights in (settings.models_dir / REALESRGAN_SUBDIR).glob("REALESRGAN_ANIMAVIDEOV3_*"):
        (tmp_path / REALESRGAN_SUBDIR / weights.name).symlink_to(weights)
    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(ray, "get_gpu_ids", list)
    return ImageEnhancement.func_or_class(model="realesr-animevideov3", tile_size=64, device="cpu",
                                           threads=1)


def test_user_config_switches_the_default_model_and_back(deployment, original):
    low = shrunk(original, 2)
    deployment.reconfigure({"model": "classic"})
    _, metadata, _ = enhance(deployment.enhancer, low)
    assert metadata["model"] == "classic" and metadata["tile_size"] is None
    running = deployment.enhancer.run(png_bytes(low), {})
    next(running)  # started on classic: a reconfigure now does not change it
    deployment.reconfigure({})  # no model: back to the one the replica started with
    *_, final = running
    assert final["result"]["metadata"]["model"] == "classic"
    _, metadata, _ = enhance(deployment.enhancer, low)
    assert metadata["model"] == "realesr-animevideov3" and metadata["tile_size"] == 64
    deployment.reconfigure({"version": "v2"})
    _, metadata, _ = enhance(deployment.enhancer, low)
    assert metadata["model_version"] == "realesr-animevideov3@v2"


def test_an_unchanged_user_config_loads_nothing(deployment, tmp_path: Path):
    for weights in (tmp_path / "realesrgan").iterdir():
        weights.unlink()  # a reload would now fail
    deployment.reconfigure({"model": "realesr-animevideov3"})
    assert deployment.enhancer.model == "realesr-animevideov3"


def test_a_user_config_naming_a_missing_or_unknown_model_fails_and_keeps_the_current_one(deployment):
    with pytest.raises(FileNotFoundError, match="REALESRGAN_X4PLUS_UP4X.param.* missing"):
        deployment.reconfigure({"model": "realesrgan-x4plus"})
    with pytest.raises(ValueError, match="model must be one of"):
        deployment.reconfigure({"model": "esrgan"})
    with pytest.raises(ValueError, match="takes only `model` and `version`, not default_model"):
        deployment.reconfigure({"default_model": "classic"})
    assert deployment.enhancer.model == "realesr-animevideov3"
