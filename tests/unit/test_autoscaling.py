"""The backlog policy's arithmetic (tasks/autoscaling.py): what counts as a deployment's backlog and how many
replicas it asks for. Pure functions; no Redis."""

import json

import pytest
from ray.serve.config import AutoscalingConfig

from tasks.autoscaling import (
    REPORT_TTL_S,
    BacklogPolicy,
    Held,
    backlog,
    desired_replicas,
    encode_report,
    held_per_stage,
    summed_reports,
)
from tests.helpers import autoscaling_context

REFINEMENT, GENERATION = "prompt_refinement/PromptRefinement", "image_generation/ImageGeneration"


def policy_config(**kwargs) -> AutoscalingConfig:
    return AutoscalingConfig(min_replicas=0, max_replicas=8, target_ongoing_requests=4, upscale_delay_s=0,
                             policy={"policy_function": "tasks.autoscaling:BacklogPolicy", "policy_kwargs": kwargs})


def test_generation_counts_the_tasks_still_at_refinement_as_heading_its_way():
    # 6 held: 2 prefetched (no call yet), 3 at refinement, 1 at generation.
    held = held_per_stage([REFINEMENT, GENERATION], reserved=6, called_stages=[-1, -1, 0, 0, 0, 1])
    assert held[REFINEMENT] == Held(heading=2, in_flight=3)  # the generating one has left refinement
    assert held[GENERATION] == Held(heading=5, in_flight=1)


def test_a_held_message_not_yet_running_heads_for_every_stage():
    # Reserved but not tracked: prefetched, or a retry waiting for its countdown.
    held = held_per_stage([REFINEMENT, GENERATION], reserved=4, called_stages=[])
    assert held == {REFINEMENT: Held(4, 0), GENERATION: Held(4, 0)}


def test_reports_are_summed_over_consumers_and_stale_or_unreadable_ones_are_dropped():
    now = 1000.0
    reports = {
        b"consumer-a": encode_report({GENERATION: Held(5, 1), REFINEMENT: Held(2, 3)}, now - 1),
        b"consumer-b": encode_report({GENERATION: Held(2, 4)}, now),
        b"dead": encode_report({GENERATION: Held(100, 100)}, now - REPORT_TTL_S - 1),
        b"garbled": b"{not json",
        b"other-shape": json.dumps({"at": now}),
    }
    held, stale = summed_reports(reports, GENERATION, now)
    assert held == Held(heading=7, in_flight=5)
    assert sorted(stale) == [b"dead", b"garbled", b"other-shape"]
    assert summed_reports(reports, "absent/Deployment", now)[0] == Held()


def test_the_backlog_is_queued_plus_heading_plus_in_flight():
    assert backlog(queued=100, held=Held(heading=12, in_flight=4)) == 116
    assert backlog(queued=0, held=Held(heading=0, in_flight=0)) == 0


def test_replicas_wanted_are_the_backlog_over_the_target_within_the_bounds():
    assert desired_replicas(10, target_ongoing_requests=4, lower=0, upper=8) == 2.5
    assert desired_replicas(1000, target_ongoing_requests=4, lower=0, upper=8) == 8
    assert desired_replicas(0, target_ongoing_requests=4, lower=1, upper=8) == 1


def test_a_backlog_past_the_old_consumer_bound_asks_for_more_replicas():
    # One consumer of 16 threads at target 4 could show Serve at most 16 requests: 4 replicas. The queue behind it
    # is counted too.
    consumer_bound = 16 / 4
    work = backlog(queued=84, held=Held(heading=0, in_flight=16))
    assert desired_replicas(work, 4, lower=0, upper=32) == 25 > consumer_bound


def test_the_policy_refuses_a_poll_interval_too_slow_for_a_two_second_decision_and_a_missing_queue():
    with pytest.raises(ValueError, match="poll_interval_s"):
        BacklogPolicy(queue="q", poll_interval_s=2)
    with pytest.raises(ValueError, match="queue"):
        BacklogPolicy(queue="")


def test_without_a_redis_url_the_policy_follows_serves_requests(monkeypatch):
    monkeypatch.delenv("BACKLOG_TEST_REDIS_URL", raising=False)
    config = policy_config(queue="q", redis_url_env="BACKLOG_TEST_REDIS_URL")
    policy = BacklogPolicy(**config.policy.policy_kwargs)
    replicas, state = policy(autoscaling_context(config, current_replicas=1, serve_requests=12))
    assert (replicas, state) == (3, {"backlog": None})


def test_the_policy_survives_serves_pickling_and_takes_its_kwargs_from_the_config():
    # What the controller does with a YAML `policy:` (ray/serve/_private/autoscaling_state.py): unpickle the class
    # (pickled by value) and instantiate it once with policy_kwargs.
    config = policy_config(queue="image_generation", poll_interval_s=0.25)
    policy_class = config.policy.get_policy()
    policy = policy_class(**config.policy.policy_kwargs)
    assert (policy.queue, policy.poll_interval_s, policy.redis_url_env) == ("image_generation", 0.25, "REDIS_URL")
