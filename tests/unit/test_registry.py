"""Every task type of the seed is served, each by deployments named in both Serve configs."""

from tasks.models import TaskType
from tasks.registry import TASK_SPECS


def test_every_seed_task_type_has_a_spec_on_a_seed_queue():
    assert set(TASK_SPECS) == set(TaskType)
    for spec in TASK_SPECS.values():
        assert spec.queue == spec.task_type.value and spec.stages
        assert set(spec.required_extra_images) <= set(spec.extra_images)
