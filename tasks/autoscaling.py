"""Backlog autoscaling: a model deployment's replicas follow the work queued and held for it, not only the requests
that happen to be in flight (docs/scaling.md).

Use it per deployment in config/serve*.yaml (and the RayService's serveConfigV2), Ray Serve's class-based policy:

    autoscaling_config:
      min_replicas: 0
      max_replicas: 8
      target_ongoing_requests: 4
      upscale_delay_s: 0           # the backlog is counted, not sampled: act on it at once
      downscale_delay_s: 300
      policy:
        policy_function: tasks.autoscaling:BacklogPolicy
        policy_kwargs:
          queue: image_generation  # required: the Celery queue (task type) whose tasks call this deployment
          poll_interval_s: 0.5     # optional (0.5): how often Redis is read; at most MAX_POLL_INTERVAL_S
          redis_url_env: REDIS_URL # optional (REDIS_URL): the variable, in the Serve controller's environment (the
                                   # head's), that holds the Redis URL; a URL itself never goes in the YAML

A deployment's backlog is
    LLEN(queue)                           tasks queued, claimed by no consumer yet
  + held, heading its way                 tasks a consumer holds that have not called it yet: prefetched, waiting
                                          for a thread, or at an earlier stage (generation counts the tasks still
                                          at prompt refinement), and retries waiting for their countdown
  + requests in flight at it              the consumers' own count, current to the last report; Serve's
                                          count (averaged over look_back_period_s) only while Redis cannot be read
and the policy asks for backlog / target_ongoing_requests replicas, within min_replicas..max_replicas; Serve then
applies upscale_delay_s / downscale_delay_s. A consumer holds only CONSUMER_CONCURRENCY tasks, so counting the queue
is what lets replicas grow past consumers x concurrency / target_ongoing_requests.

Consumers report what they hold (tasks/supervisor.py, every supervisor round): one field per consumer process in the
hash HELD_KEY_PREFIX + queue, whose value is `encode_report`'s JSON, stamped with the time; a report older than
REPORT_TTL_S (the consumer died or hangs) is ignored and removed. Reading a deployment's backlog is one round trip
(LLEN + HGETALL of a few small fields), made by a worker thread every poll_interval_s: the controller's event loop
never waits on Redis. If Redis cannot be read for READING_TTL_S the policy falls back to Serve's own requests, as
Serve's default policy would, and logs it.

This module is imported (and pickled by value) by the Serve controller: it imports only the standard library, redis
and Serve's config types.
"""

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
from ray.serve._private.constants import SERVE_LOGGER_NAME
from ray.serve.config import AutoscalingContext

log = logging.getLogger(SERVE_LOGGER_NAME)  # the controller's log (`serve` logs on the head)

HELD_KEY_PREFIX = "backendai:held:"
# A consumer's report is rewritten every supervisor round (0.25 s); one this old belongs to a consumer that is gone.
REPORT_TTL_S = 10.0
# A backlog must raise the target within 2 s of appearing: a poll, a control-loop tick and Redis's answer fit in it.
MAX_POLL_INTERVAL_S = 0.5
# The last good reading is used this long while Redis does not answer; then Serve's own requests alone.
READING_TTL_S = 5.0
REDIS_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Held:
    """A deployment's share of the tasks that consumers hold."""

    heading: int = 0  # not yet called it: prefetched, waiting for a thread, or at an earlier stage
    in_flight: int = 0  # its request is at the deployment now

    def __add__(self, other: "Held") -> "Held":
        return Held(self.heading + other.heading, self.in_flight + other.in_flight)


@dataclass(frozen=True)
class Reading:
    """One poll of Redis for one deployment."""

    queued: int
    held: Held
    at: float  # time.monotonic() of the poll


def held_key(queue: str) -> str:
    return HELD_KEY_PREFIX + queue


def deployment_key(app_name: str, deployment_name: str) -> str:
    """How a report names a deployment (Serve's own pair, as the policy's context gives it)."""
    return f"{app_name}/{deployment_name}"


def held_per_stage(stages: Sequence[str], reserved: int, called_stages: Sequence[int]) -> dict[str, Held]:
    """What one consumer holds for each stage of one queue's task type (pure).

    `stages`: the deployment keys in the order a task calls them; `reserved`: the messages of the queue the consumer
    holds unacked (running, prefetched, waiting for a retry countdown); `called_stages`: for each running task, the
    index of the stage it has called (-1 before its first call). A task is heading for every stage after the one it
    has called, and in flight at that one.
    """
    held = {}
    for index, stage in enumerate(stages):
        at_or_past = sum(1 for called in called_stages if called >= index)
        in_flight = sum(1 for called in called_stages if called == index)
        held[stage] = Held(heading=max(0, reserved - at_or_past), in_flight=in_flight)
    return held


def encode_report(held: Mapping[str, Held], now: float) -> str:
    """A consumer's report for one queue: {"at": unix time, "held": {deployment: [heading, in_flight]}}."""
    return json.dumps({"at": now, "held": {stage: [share.heading, share.in_flight] for stage, share in held.items()}})


def summed_reports(reports: Mapping[bytes | str, bytes | str], deployment: str, now: float) -> tuple[Held, list]:
    """The deployment's share summed over the consumers' live reports, and the fields of stale or unreadable ones
    (pure)."""
    total, stale = Held(), []
    for field, raw in reports.items():
        try:
            report = json.loads(raw)
            fresh = now - float(report["at"]) <= REPORT_TTL_S
            heading, in_flight = report["held"].get(deployment, (0, 0))
        except (ValueError, KeyError, TypeError):
            fresh = False
        if not fresh:
            stale.append(field)
            continue
        total += Held(int(heading), int(in_flight))
    return total, stale


def backlog(queued: int, held: Held) -> int:
    """Work queued and held for a deployment, plus its requests in flight as the consumers count them (pure).

    Not Serve's count: the consumers are the deployments' only callers (no HTTP proxy), and Serve's figure is an
    average over look_back_period_s, so it lags: after a backlog ended it still held generation's in-flight count
    up long enough to raise its target from 1 to 2 and launch a GPU node for nothing (docs/scaling.md).
    """
    return queued + held.heading + held.in_flight


def desired_replicas(work: float, target_ongoing_requests: float, lower: int, upper: int) -> float:
    """Replicas that give each `target_ongoing_requests` of `work`, within lower..upper (pure)."""
    return min(max(work / target_ongoing_requests, lower), upper)


def read_backlog(client: redis.Redis, queue: str, deployment: str) -> Reading:
    """One round trip: the queue's length and the consumers' reports; stale reports are removed."""
    with client.pipeline(transaction=False) as pipe:
        queued, reports = pipe.llen(queue).hgetall(held_key(queue)).execute()
    held, stale = summed_reports(reports, deployment, time.time())
    if stale:
        client.hdel(held_key(queue), *stale)
    return Reading(queued=int(queued), held=held, at=time.monotonic())


class BacklogPolicy:
    """Serve's class-based autoscaling policy (one instance per deployment, made by the controller from
    `policy_kwargs`; called every control-loop tick with the deployment's AutoscalingContext)."""

    def __init__(self, queue: str, poll_interval_s: float = MAX_POLL_INTERVAL_S, redis_url_env: str = "REDIS_URL"):
        if not queue:
            raise ValueError("BacklogPolicy needs policy_kwargs.queue: the Celery queue whose tasks call this "
                             "deployment")
        if not 0 < poll_interval_s <= MAX_POLL_INTERVAL_S:
            raise ValueError(f"poll_interval_s must be in (0, {MAX_POLL_INTERVAL_S}] s so that a backlog raises "
                             f"the target within 2 s; got {poll_interval_s}")
        self.queue, self.poll_interval_s, self.redis_url_env = queue, poll_interval_s, redis_url_env
        # Its one thread ends once the policy is dropped (a redeploy makes a new one).
        self._poller = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"backlog-{queue}")
        self._client: redis.Redis | None = None
        self._polling: Future | None = None
        self._last_poll = -math.inf
        self._reading: Reading | None = None
        self._failing = False
        self._logged_replicas: int | None = None

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        deployment = deployment_key(ctx.app_name, ctx.deployment_name)
        self._collect()
        self._poll(deployment)
        reading = self._reading
        if reading is not None and time.monotonic() - reading.at > READING_TTL_S:
            reading = None
        serve_requests = ctx.total_num_requests
        if reading is None:  # no Redis (yet): Serve's own requests, as its default policy
            work, state = serve_requests, {"backlog": None}
        else:
            work = backlog(reading.queued, reading.held)
            state = {"backlog": work, "queued": reading.queued, "heading": reading.held.heading,
                     "in_flight": reading.held.in_flight}
        replicas = desired_replicas(work, ctx.config.get_target_ongoing_requests(),
                                    ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas)
        if math.ceil(replicas) != self._logged_replicas:
            self._logged_replicas = math.ceil(replicas)
            log.info("%s: backlog %s -> %d replicas wanted", deployment, state, self._logged_replicas)
        return replicas, state

    def _poll(self, deployment: str) -> None:
        """Start a poll in the worker thread when one is due and none runs; never waits for it."""
        now = time.monotonic()
        if self._polling is not None or now - self._last_poll < self.poll_interval_s:
            return
        client = self._redis()
        if client is None:
            return
        self._last_poll = now
        self._polling = self._poller.submit(read_backlog, client, self.queue, deployment)

    def _collect(self) -> None:
        """Take the finished poll's reading (or log its failure once per outage)."""
        if self._polling is None or not self._polling.done():
            return
        polling, self._polling = self._polling, None
        try:
            self._reading = polling.result()
        except Exception as exc:  # Redis away or refusing: the next poll tries again
            if not self._failing:
                log.warning("backlog of queue %r unreadable (%s); replicas follow Serve's requests until Redis "
                            "answers", self.queue, exc)
            self._failing = True
            return
        if self._failing:
            log.info("backlog of queue %r readable again", self.queue)
        self._failing = False

    def _redis(self) -> redis.Redis | None:
        if self._client is None:
            url = os.environ.get(self.redis_url_env)
            if not url:
                if not self._failing:
                    log.warning("%s is not set in the Serve controller's environment: the backlog of queue %r "
                                "is not read; replicas follow Serve's requests", self.redis_url_env, self.queue)
                self._failing = True
                return None
            # Made here but connected in the poll thread: from_url only parses.
            self._client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                                socket_connect_timeout=REDIS_TIMEOUT_S)
        return self._client
