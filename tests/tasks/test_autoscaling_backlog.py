"""The backlog policy against the real Redis (tasks/autoscaling.py): a consumer's report of the messages it holds,
as Celery's Redis transport hands them out, and the queue's length become a scale-up decision; the controller's tick
never waits for Redis."""

import math
import socket
import time
import uuid

import pytest

from tasks.autoscaling import (
    REPORT_TTL_S,
    BacklogPolicy,
    Held,
    encode_report,
    held_key,
    read_backlog,
)
from tasks.celery_app import _backlog_reporter, celery_app
from tasks.supervisor import RunningTask
from tests.helpers import autoscaling_context
from tests.unit.test_autoscaling import GENERATION, REFINEMENT, policy_config


@pytest.fixture
def queue(redis_client):
    """A queue of this test alone; its list and report hash are removed after it."""
    name = f"backlog-test-{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(name, held_key(name))


def publish(queue: str, count: int) -> None:
    """As the API enqueues a task (tasks/service.py)."""
    for _ in range(count):
        celery_app.send_task("tasks.process_ai_task", args=[str(uuid.uuid4())], queue=queue, ignore_result=True)


def decide(policy: BacklogPolicy, config, current: int, until, serve_requests: float = 0, timeout_s: float = 20):
    """Call the policy as the controller's loop does (every 0.1 s) until `until(replicas)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        replicas, state = policy(autoscaling_context(config, current, serve_requests, *GENERATION.split("/")))
        if until(replicas):
            return replicas, state
        assert time.monotonic() < deadline, f"no decision in {timeout_s} s: {replicas}, {state}"
        time.sleep(0.1)


def test_a_consumers_report_of_the_messages_it_holds_is_read_per_stage(redis_client, queue):
    publish(queue, 5)
    with celery_app.connection_for_read() as connection:
        channel = connection.default_channel
        held = [channel.basic_get(queue, no_ack=False) for _ in range(3)]  # reserved, as a worker's prefetch
        try:
            report = _backlog_reporter(channel.qos, {queue: [REFINEMENT, GENERATION]}, "consumer-test")
            report([RunningTask(uuid.uuid4(), queue, called_stage=0), RunningTask(uuid.uuid4(), "other-queue")])
            client = redis_client
            assert read_backlog(client, queue, REFINEMENT).held == Held(heading=2, in_flight=1)
            generation = read_backlog(client, queue, GENERATION)
            assert (generation.queued, generation.held) == (2, Held(heading=3, in_flight=0))
        finally:
            for message in held:
                message.ack()


def test_a_dead_consumers_report_is_ignored_and_removed(redis_client, queue):
    redis_client.hset(held_key(queue), mapping={
        "live": encode_report({GENERATION: Held(3, 2)}, time.time()),
        "dead": encode_report({GENERATION: Held(50, 50)}, time.time() - REPORT_TTL_S - 5)})
    assert read_backlog(redis_client, queue, GENERATION).held == Held(3, 2)
    assert redis_client.hkeys(held_key(queue)) == [b"live"]


def test_a_backlog_raises_the_target_past_what_the_requests_in_flight_ask(redis_client, queue, settings,
                                                                          monkeypatch):
    monkeypatch.setenv("REDIS_URL", settings.effective_redis_url)
    config = policy_config(queue=queue)
    policy = BacklogPolicy(**config.policy.policy_kwargs)
    # Before the backlog: 8 requests in flight at target 4 ask for 2 replicas.
    assert decide(policy, config, current=2, serve_requests=8, until=lambda replicas: replicas == 2)[0] == 2
    redis_client.hset(held_key(queue), "consumer", encode_report({GENERATION: Held(heading=4, in_flight=8)},
                                                                 time.time()))
    publish(queue, 12)
    replicas, state = decide(policy, config, current=2, serve_requests=8,
                             until=lambda replicas: math.ceil(replicas) >= 6)
    assert math.ceil(replicas) == 6 and state["backlog"] == 12 + 4 + 8, state  # (queued + heading + in flight) / 4


@pytest.fixture
def silent_redis():
    """A port that accepts connections and never answers: a Redis that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


def test_the_controller_tick_never_waits_for_a_hanging_redis(silent_redis, monkeypatch):
    monkeypatch.setenv("REDIS_URL", silent_redis)
    config = policy_config(queue="hanging")
    policy = BacklogPolicy(**config.policy.policy_kwargs)
    replicas, state = policy(autoscaling_context(config, current_replicas=1, serve_requests=12))
    # The call returned while its poll still waits on Redis; meanwhile replicas follow Serve's requests.
    assert policy._polling is not None and not policy._polling.done()
    assert (replicas, state) == (3, {"backlog": None})
    policy._polling.exception(timeout=30)  # the poll ends by the client's own timeout, not by hanging forever
