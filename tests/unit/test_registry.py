"""The registry: every built-in type is served on its own queue, and a new type is one register() call."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.models import TaskType
from tasks.registry import IMAGE, TASK_SPECS, Stage, TaskParameters, TaskSpec, Upload, register, upload_fields

ROOT = Path(__file__).resolve().parents[2]


def test_every_built_in_type_is_served_on_a_queue_of_its_own():
    assert set(TASK_SPECS) == set(TaskType)
    for spec in TASK_SPECS.values():
        assert spec.queue == spec.task_type and spec.stages
        assert set(spec.required_extra_images) <= set(spec.extra_images)
        assert all(upload.description for upload in spec.uploads)


def test_uploads_say_what_each_picture_is_for_in_each_type():
    fields = upload_fields()
    assert list(fields)[0] == IMAGE
    assert fields["target_image"] == "face_swap: the picture that receives the face"
    assert TASK_SPECS["face_swap"].required_extra_images == ("target_image",)
    assert TASK_SPECS["style_transfer"].extra_images == ("style_image",)
    assert not TASK_SPECS["style_transfer"].required_extra_images
    assert not TASK_SPECS["image_generation"].requires_image


def test_a_type_may_be_registered_once(monkeypatch):
    monkeypatch.setattr("tasks.registry.TASK_SPECS", dict(TASK_SPECS))
    spec = TaskSpec("echo", (Stage("echo", "Echo"),), TaskParameters, (Upload(IMAGE, "anything"),
                                                                         Upload("mask", "where", required=False)))
    assert register(spec) is spec
    assert upload_fields()["mask"] == "echo: where"
    with pytest.raises(ValueError, match="'echo' is already registered"):
        register(spec)


def test_modules_named_in_the_environment_register_their_types_on_import():
    """What the API, the consumers and `up` see when started with BACKENDAI_EXTRA_TASK_TYPES."""
    listed = subprocess.run(
        [sys.executable, "-c", "import json; from tasks.registry import TASK_SPECS, upload_fields; "
                               "print(json.dumps([list(TASK_SPECS), list(upload_fields())]))"],
        env={"PATH": "", "PYTHONPATH": str(ROOT), "BACKENDAI_EXTRA_TASK_TYPES": "tests.throwaway_task_type"},
        cwd=ROOT, capture_output=True, text=True, check=True)
    types, uploads = json.loads(listed.stdout)
    assert types == [*TASK_SPECS, "throwaway_overlay"]
    assert uploads[-1] == "overlay_image"
