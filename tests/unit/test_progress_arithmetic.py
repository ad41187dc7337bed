"""How a task's progress bar is shared: the model's stretch of it, split between the stages by weight."""

import itertools

from tasks.processing import MODEL_PROGRESS_END, MODEL_PROGRESS_START, stage_spans
from tasks.registry import TASK_SPECS, Stage


def test_one_stage_has_the_whole_model_stretch():
    assert stage_spans((Stage("app", "Deployment"),)) == [(MODEL_PROGRESS_START, MODEL_PROGRESS_END)]


def test_stages_share_it_by_weight_and_meet_without_gaps():
    spans = stage_spans(TASK_SPECS["image_generation"].stages)  # refinement (1), then generation (3)
    assert spans == [(10, 30), (30, 90)]
    uneven = stage_spans((Stage("a", "A", weight=1), Stage("b", "B", weight=1), Stage("c", "C", weight=1)))
    assert uneven[0][0] == MODEL_PROGRESS_START and uneven[-1][1] == MODEL_PROGRESS_END
    assert all(previous[1] == following[0] for previous, following in itertools.pairwise(uneven))
