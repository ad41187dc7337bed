"""Which task types this system serves: their queue, the Serve deployments (by name) that run them, their
parameters and their inputs.

A new task type is one file in deployments/, one entry here and one entry in config/serve*.yaml.
"""

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from tasks.models import TaskType


class TaskParameters(BaseModel):
    """Base of every per-type parameter model: unknown keys are refused, so a typo is a clear 400."""

    model_config = ConfigDict(extra="forbid")

    def check_input_size(self, width: int, height: int) -> None:
        """Refuse (ValueError with a clear message) an input these parameters cannot process, e.g. an upscale
        whose output would exceed the pixel cap. The API calls it once the image is read."""


class BackgroundRemovalParameters(TaskParameters):
    return_mask: bool = Field(default=False, description="Return the single-channel mask instead of the cut-out.")


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
class TaskSpec:
    task_type: TaskType
    queue: str  # Celery queue: "gpu" or "cpu", as the seed routes
    stages: tuple[Stage, ...]
    parameters: type[TaskParameters]
    requires_image: bool
    extra_images: tuple[str, ...] = ()  # further upload fields this type accepts: "target_image", "style_image"
    required_extra_images: tuple[str, ...] = ()


TASK_SPECS: dict[TaskType, TaskSpec] = {
    spec.task_type: spec
    for spec in (
        TaskSpec(
            task_type=TaskType.BACKGROUND_REMOVAL,
            queue="cpu",
            stages=(Stage("background_removal", "BackgroundRemoval"),),
            parameters=BackgroundRemovalParameters,
            requires_image=True,
        ),
    )
}
