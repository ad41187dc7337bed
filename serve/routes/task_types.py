"""What this deployment serves: task types with their uploads and parameter schemas (drives the web page)."""

from fastapi import APIRouter

from serve.schemas import TaskTypeOut, UploadOut
from tasks.registry import TASK_SPECS

router = APIRouter(prefix="/api/v1/task-types", tags=["tasks"])


@router.get("/", response_model=list[TaskTypeOut])
def list_task_types() -> list[TaskTypeOut]:
    """Each served task type: its queue, whether the prompt matters, the uploads it takes and the JSON schema of its
    parameters."""
    return [
        TaskTypeOut(task_type=spec.task_type, prompt=spec.prompt, queue=spec.queue,
                    requires_image=spec.requires_image, extra_images=list(spec.extra_images),
                    required_extra_images=list(spec.required_extra_images),
                    uploads=[UploadOut(name=upload.name, description=upload.description, required=upload.required)
                             for upload in spec.uploads],
                    parameters_schema=spec.parameters.model_json_schema())
        for spec in TASK_SPECS.values()
    ]
