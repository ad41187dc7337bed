"""Which task types this system serves: their queue, their Serve deployment (by name) and their parameters.

A new task type is one file in deployments/, one entry here and one entry in config/serve*.yaml.
"""

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from tasks.models import TaskType


class TaskParameters(BaseModel):
    """Base of every per-type parameter model: unknown keys are refused, so a typo is a clear 400."""

    model_config = ConfigDict(extra="forbid")


class BackgroundRemovalParameters(TaskParameters):
    return_mask: bool = Field(default=False, description="Return the single-channel mask instead of the cut-out.")


@dataclass(frozen=True)
class TaskSpec:
    task_type: TaskType
    queue: str  # Celery queue: "gpu" or "cpu", as the seed routes
    app_name: str  # Serve application holding the deployment
    deployment_name: str  # called through serve.get_deployment_handle(deployment_name, app_name)
    parameters: type[TaskParameters]
    requires_image: bool


TASK_SPECS: dict[TaskType, TaskSpec] = {
    spec.task_type: spec
    for spec in (
        TaskSpec(
            task_type=TaskType.BACKGROUND_REMOVAL,
            queue="cpu",
            app_name="background_removal",
            deployment_name="BackgroundRemoval",
            parameters=BackgroundRemovalParameters,
            requires_image=True,
        ),
    )
}

QUEUES = ("gpu", "cpu")
