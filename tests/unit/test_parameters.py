"""Per-type parameter validation: what the API refuses before anything is stored, named in the catalogue."""

import pytest
from pydantic import ValidationError

from deployments.catalogue import ENHANCEMENT_MODELS, MAX_IMAGE_PIXELS, MIN_STYLE_SIDE, SCHEDULERS, STYLE_NAMES
from tasks.registry import (
    BackgroundRemovalParameters,
    ImageEnhancementParameters,
    ImageGenerationParameters,
    StyleTransferParameters,
)


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ImageGenerationParameters.model_validate({"widht": 512})


def test_generation_takes_the_catalogues_schedulers_and_sizes_in_steps_of_eight():
    for name in SCHEDULERS:
        assert ImageGenerationParameters(scheduler=name).scheduler == name
    with pytest.raises(ValidationError):
        ImageGenerationParameters(scheduler="karras")
    with pytest.raises(ValidationError, match="multiple of 8"):
        ImageGenerationParameters(width=500)


def test_background_colours_in_every_accepted_spelling():
    for spelling in ("#ff000080", [255, 0, 0, 128]):
        assert BackgroundRemovalParameters(bgcolor=spelling).bgcolor == (255, 0, 0, 128)
    assert BackgroundRemovalParameters(bgcolor="#00ff00").bgcolor == (0, 255, 0, 255)
    with pytest.raises(ValidationError, match="is not a colour"):
        BackgroundRemovalParameters(bgcolor="green")


def test_styles_are_the_catalogues_and_tiny_images_are_refused():
    assert StyleTransferParameters(style=STYLE_NAMES[-1]).style == STYLE_NAMES[-1]
    with pytest.raises(ValidationError, match="unknown style"):
        StyleTransferParameters(style=f"style-{len(STYLE_NAMES)}")
    StyleTransferParameters().check_input_size(MIN_STYLE_SIDE, 200)
    with pytest.raises(ValueError, match=f"at least {MIN_STYLE_SIDE} pixels"):
        StyleTransferParameters().check_input_size(MIN_STYLE_SIDE - 1, 200)


def test_an_enhancement_may_not_make_more_pixels_than_an_input_may_have():
    assert {ImageEnhancementParameters(model=model).model for model in ENHANCEMENT_MODELS} == set(ENHANCEMENT_MODELS)
    side = int(MAX_IMAGE_PIXELS**0.5)
    ImageEnhancementParameters(scale=4).check_input_size(side // 4, side // 4)
    with pytest.raises(ValueError, match=r"4x enhancement of 1025x1024 .* over the 16.8 M-pixel limit"):
        ImageEnhancementParameters(scale=4).check_input_size(side // 4 + 1, side // 4)
    with pytest.raises(ValidationError):
        ImageEnhancementParameters(scale=3)
