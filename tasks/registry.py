"""Which task types this system serves: their queue, the Serve deployments (by name) that run them, their
parameters and their inputs.

A new task type is one file in deployments/, one register() call here (or in a module named in
BACKENDAI_EXTRA_TASK_TYPES) and its application in config/serve*.yaml: the database, the API's upload fields, the
CLI, the client and the web page all follow the registry (docs/architecture.md, Adding a task type).
"""

import importlib
import os
import string
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.catalogue import (
    BACKGROUND_MODELS,
    CLASSIC_ENHANCEMENT,
    ENHANCEMENT_MODELS,
    ENHANCEMENT_SCALES,
    MAX_IMAGE_PIXELS,
    MIN_STYLE_SIDE,
    SCHEDULERS,
    STYLE_IMAGE,
    STYLE_NAMES,
    TARGET_IMAGE,
)
from tasks.models import TaskType


class TaskParameters(BaseModel):
    """Base of every per-type parameter model: unknown keys are refused, so a typo is a clear 400."""

    model_config = ConfigDict(extra="forbid")

    def check_input_size(self, width: int, height: int) -> None:
        """Refuse (ValueError with a clear message) an input these parameters cannot process, e.g. an upscale
        whose output would exceed the pixel cap. The API calls it once the image is read."""

    def check_uploads(self, uploads: frozenset[str]) -> None:
        """Refuse (ValueError) parameters that contradict the extra uploads sent with them, so that the task never
        silently ignores half of what it was asked."""


# Which background models are installed is known only where the models are: an absent one fails the task at once,
# with a message naming the file.
BackgroundModel = Literal[BACKGROUND_MODELS]
ColourChannel = Annotated[int, Field(ge=0, le=255)]


class BackgroundRemovalParameters(TaskParameters):
    return_mask: bool = Field(default=False, description="Return the single-channel mask instead of the cut-out.")
    model: BackgroundModel | None = Field(
        default=None, description="u2netp; another rembg model (u2net, isnet-general-use, birefnet-general, …) when "
                                  "installed; mediapipe-selfie: people only. The deployment's default when unset.")
    alpha_matting: bool = Field(default=False, description="Refine soft edges (hair, fur) by alpha matting; slower.")
    bgcolor: tuple[ColourChannel, ColourChannel, ColourChannel, ColourChannel] | None = Field(
        default=None, description='Fill the background with a colour instead of transparency: "#rrggbb", '
                                  '"#rrggbbaa", [r, g, b] or [r, g, b, a].')

    @field_validator("bgcolor", mode="before")
    @classmethod
    def _rgba(cls, colour: object) -> object:
        if isinstance(colour, str):
            digits = colour.removeprefix("#")
            if len(digits) not in (6, 8) or any(digit not in string.hexdigits for digit in digits):
                raise ValueError(f'{colour!r} is not a colour: use "#rrggbb", "#rrggbbaa", [r, g, b] or [r, g, b, a]')
            colour = [int(digits[start:start + 2], 16) for start in range(0, len(digits), 2)]
        if isinstance(colour, list | tuple) and len(colour) == 3:
            colour = [*colour, 255]
        return colour

    @model_validator(mode="after")
    def _one_background(self) -> "BackgroundRemovalParameters":
        if self.return_mask and self.bgcolor is not None:
            raise ValueError("return_mask returns the mask alone, so bgcolor would be ignored: send one of them")
        return self


class FaceSwapParameters(TaskParameters):
    """`image` is the source (the face to put in), `target_image` the picture that receives it. Faces are counted
    from 0, left to right, in both."""

    blend_ratio: float = Field(default=0.8, ge=0, le=1, description="1 shows the swapped face fully, 0 leaves the "
                                                                    "target as it was.")
    source_face_index: int = Field(default=0, ge=0, description="Which face of the source image to use.")
    target_face_index: int = Field(default=0, ge=0, description="Which face of the target image to replace.")
    swap_all_faces: bool = Field(default=False, description="Replace every face of the target with the source face "
                                                            "(target_face_index is then ignored).")

    @model_validator(mode="after")
    def _one_target(self) -> "FaceSwapParameters":
        if self.swap_all_faces and self.target_face_index:
            raise ValueError("swap_all_faces replaces every face, so target_face_index would be ignored: send one "
                             "of them")
        return self


SchedulerName = Literal[tuple(SCHEDULERS)]


class ImageGenerationParameters(TaskParameters):
    """The v1 task API's width/height/steps/guidance (same defaults), plus seed, negative prompt, scheduler and
    refinement."""

    width: int = Field(default=512, ge=64, le=1024, multiple_of=8, description="Pixels; a multiple of 8.")
    height: int = Field(default=512, ge=64, le=1024, multiple_of=8, description="Pixels; a multiple of 8.")
    num_inference_steps: int = Field(default=30, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(default=7.5, ge=0, le=30, description="Classifier-free guidance; <= 1 turns it off.")
    negative_prompt: str = Field(default="", max_length=1000, description="What the image should not show.")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1,
                             description="Same seed, same image; drawn (and reported in the metadata) when absent.")
    scheduler: SchedulerName | None = Field(default=None, description="Denoising scheduler; the model's own if unset.")
    refine_prompt: bool = Field(default=True, description="Refine the prompt first; false uses it as given.")



class StyleTransferParameters(TaskParameters):
    """A named style, or (with a `style_image` upload) the style of any picture; on an img2img deployment, a
    repaint guided by the prompt."""

    style: str | None = Field(default=None, description="A style from GET /api/v1/styles/; the deployment's "
                                                        "default when unset. Leave unset with a style_image.")
    strength: float = Field(default=1.0, ge=0, le=1, description="0 keeps the photo, 1 is the full style: a blend "
                            "for a named style, a mix of style vectors for a style_image, the denoising strength "
                            "for img2img.")
    preserve_color: bool = Field(default=False, description="Keep the photo's colours; take light and texture "
                                                            "from the style.")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="img2img only: same seed, same image.")

    @field_validator("style")
    @classmethod
    def _known_style(cls, style: str | None) -> str | None:
        if style is not None and style not in STYLE_NAMES:
            raise ValueError(f"unknown style {style!r}: GET /api/v1/styles/ lists them ({STYLE_NAMES[0]} … "
                             f"{STYLE_NAMES[-1]})")
        return style

    def check_uploads(self, uploads: frozenset[str]) -> None:
        if self.style is not None and STYLE_IMAGE in uploads:
            raise ValueError("give either parameters.style (a named style) or a style_image upload, not both")

    def check_input_size(self, width: int, height: int) -> None:
        if min(width, height) < MIN_STYLE_SIDE:
            raise ValueError(f"style transfer needs at least {MIN_STYLE_SIDE} pixels on each side, got "
                             f"{width}x{height}")


EnhancementModel = Literal[ENHANCEMENT_MODELS]


class ImageEnhancementParameters(TaskParameters):
    scale: Literal[ENHANCEMENT_SCALES] = Field(default=2, description="Upscaling factor.")
    model: EnhancementModel | None = Field(
        default=None, description="realesrgan-x4plus: best quality; realesr-animevideov3: far faster; classic: no "
                                  "weights (denoise, Lanczos, unsharp mask). The deployment's default when unset.")
    tile_size: int | None = Field(default=None, ge=32, le=1024, description="Input pixels per tile side: memory "
                                  "grows with its square. The deployment's default when unset.")
    local_contrast: bool = Field(default=False, description="CLAHE on the result's lightness: more detail in flat "
                                                            "or hazy areas.")

    @model_validator(mode="after")
    def _tiles_need_a_network(self) -> "ImageEnhancementParameters":
        if self.model == CLASSIC_ENHANCEMENT and self.tile_size is not None:
            raise ValueError("the classic model works on the whole image, so tile_size would be ignored: send one "
                             "of them")
        return self

    def check_input_size(self, width: int, height: int) -> None:
        out_width, out_height = width * self.scale, height * self.scale
        if out_width * out_height > MAX_IMAGE_PIXELS:
            raise ValueError(f"a {self.scale}x enhancement of {width}x{height} would be {out_width}x{out_height} "
                             f"({out_width * out_height / 1e6:.1f} M pixels), over the "
                             f"{MAX_IMAGE_PIXELS / 1e6:.1f} M-pixel limit: send a smaller image or a lower scale")


@dataclass(frozen=True)
class Stage:
    """One call of a job: `serve.get_deployment_handle(deployment_name, app_name)`, streaming `process`.

    Every stage but the last returns no image: its result may carry `prompt` and `parameters` that replace or
    extend what the next stage receives (e.g. prompt refinement before generation).
    """

    app_name: str
    deployment_name: str
    weight: int = 1  # share of the job's progress bar


@dataclass(frozen=True)
class Upload:
    """An image field of the create form. `image` is the task's main input; any other reaches the deployments in
    `extra_images` under its name."""

    name: str
    description: str  # what the picture is for, as a phrase: the API docs, the CLI's --help and the web page show it
    required: bool = True


IMAGE = "image"


PromptUse = Literal["required", "optional", "unused"]


@dataclass(frozen=True)
class TaskSpec:
    """A task type: everything the API, the consumers, the CLI and the web page need to know of it."""

    task_type: str
    stages: tuple[Stage, ...]
    parameters: type[TaskParameters]
    uploads: tuple[Upload, ...] = ()  # `image` when the type takes one, then any further images
    # What the prompt is to this type: "required" (its only input), "optional" (it steers some deployments, e.g.
    # img2img style transfer) or "unused". The API's v1 form still requires some text: clients fill one in.
    prompt: PromptUse = "unused"

    @property
    def queue(self) -> str:
        """Its own Celery queue: one type's backlog never delays another's, and each deployment's backlog is the
        length of one Redis list (docs/architecture.md, Consumers)."""
        return self.task_type

    @property
    def requires_image(self) -> bool:
        return any(upload.name == IMAGE and upload.required for upload in self.uploads)

    @property
    def extra_images(self) -> tuple[str, ...]:
        return tuple(upload.name for upload in self.uploads if upload.name != IMAGE)

    @property
    def required_extra_images(self) -> tuple[str, ...]:
        return tuple(upload.name for upload in self.uploads if upload.name != IMAGE and upload.required)


TASK_SPECS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Serve `spec`'s task type: the API accepts it and its uploads, `up` starts a consumer for its queue, the CLI and
    the web page offer it. Registering a name twice is refused: two modules would be claiming one type."""
    if spec.task_type in TASK_SPECS:
        raise ValueError(f"task type {spec.task_type!r} is already registered")
    TASK_SPECS[spec.task_type] = spec
    return spec


def upload_fields() -> dict[str, str]:
    """Every upload field a registered type takes (`image` first), with what it is for in each type that takes it:
    the create route's form fields and the CLI's options."""
    fields: dict[str, list[str]] = {IMAGE: []}
    for spec in TASK_SPECS.values():
        for upload in spec.uploads:
            fields.setdefault(upload.name, []).append(f"{spec.task_type}: {upload.description}")
    return {name: "; ".join(descriptions) for name, descriptions in fields.items()}


register(TaskSpec(
    task_type=TaskType.BACKGROUND_REMOVAL,
    stages=(Stage("background_removal", "BackgroundRemoval"),),
    parameters=BackgroundRemovalParameters,
    uploads=(Upload(IMAGE, "the picture to cut out"),),
))
register(TaskSpec(
    task_type=TaskType.FACE_SWAP,
    stages=(Stage("face_swap", "FaceSwap"),),
    parameters=FaceSwapParameters,
    uploads=(Upload(IMAGE, "the source face, the face to put in"),
             Upload(TARGET_IMAGE, "the picture that receives the face")),
))
register(TaskSpec(
    task_type=TaskType.IMAGE_GENERATION,
    stages=(Stage("prompt_refinement", "PromptRefinement", weight=1),
            Stage("image_generation", "ImageGeneration", weight=3)),
    parameters=ImageGenerationParameters,
    prompt="required",
))
register(TaskSpec(
    task_type=TaskType.STYLE_TRANSFER,
    stages=(Stage("style_transfer", "StyleTransfer"),),
    parameters=StyleTransferParameters,
    uploads=(Upload(IMAGE, "the photo to restyle"),
             Upload(STYLE_IMAGE, "a picture whose style to apply, instead of a named style", required=False)),
    prompt="optional",  # an img2img deployment repaints guided by it
))
register(TaskSpec(
    task_type=TaskType.IMAGE_ENHANCEMENT,
    stages=(Stage("image_enhancement", "ImageEnhancement"),),
    parameters=ImageEnhancementParameters,
    uploads=(Upload(IMAGE, "the picture to upscale"),),
))

# Task types defined outside this file: the modules named in BACKENDAI_EXTRA_TASK_TYPES (comma-separated), each
# calling register(). Imported here, when the registry is first read, so that every process (the API, each
# consumer, `up`) started with that variable serves the same types (docs/architecture.md, Adding a task type).
EXTRA_TASK_TYPES_VARIABLE = "BACKENDAI_EXTRA_TASK_TYPES"
for _module in filter(None, (name.strip() for name in os.environ.get(EXTRA_TASK_TYPES_VARIABLE, "").split(","))):
    importlib.import_module(_module)
