"""A task type that only the tests know: its registry entry. Any process started with
BACKENDAI_EXTRA_TASK_TYPES=tests.throwaway_task_type serves it; its deployment is tests/throwaway_deployment.py
(tests/integration/test_throwaway_task_type.py)."""

from pydantic import Field

from tasks.registry import IMAGE, Stage, TaskParameters, TaskSpec, Upload, register


class OverlayParameters(TaskParameters):
    opacity: float = Field(default=0.5, ge=0, le=1, description="How much of the overlay shows.")


SPEC = register(TaskSpec(
    task_type="throwaway_overlay",
    stages=(Stage("throwaway_overlay", "ThrowawayOverlay"),),
    parameters=OverlayParameters,
    uploads=(Upload(IMAGE, "the picture underneath"), Upload("overlay_image", "the picture laid over it")),
))
