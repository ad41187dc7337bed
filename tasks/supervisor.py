"""What a consumer process does beside its running tasks: one supervisor thread for all of them.

A consumer is a Celery worker with the threads pool: many tasks in flight, one Ray driver (docs/architecture.md,
Consumers). The threads pool enforces no time limits and has no parent to hand back a dead process's messages, so
the supervisor does, every `poll_s`, for every running task at once:
- cancels: one query for the rows cancelled meanwhile, whose Serve requests are then cancelled;
- the silence watchdog and the time limits, counted from the request's first event (a request still waiting for
  a replica is not running: it has a bound of its own and is retried, not failed);
- leases: the timestamps of every message this process holds are renewed in kombu's `unacked_index`, so that only
  a dead consumer's messages pass the visibility timeout and are restored to their queue;
- the backlog report: what it holds for each deployment of its queues, for the autoscaling policy
  (tasks/autoscaling.py).
It never dies: a failing round is logged and the next one tries again.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import CANCELLED_MESSAGE, AITask, TaskStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stop:
    """Why the supervisor cancelled a request; `retry` when the task may run again later."""

    reason: str
    retry: bool = False
    cluster_gone: bool = False  # the connection the request went through was dropped (a Ray head restart)


CLUSTER_GONE = Stop("the model service restarted", retry=True, cluster_gone=True)


@dataclass
class RunningTask:
    """One task's Serve request as the supervisor sees it."""

    task_id: uuid.UUID
    queue: str = ""  # its task type's queue
    called_stage: int = -1  # index of the stage whose request it has made (the autoscaling report reads it)
    response: Any = None  # the current stage's streaming response; cancel() stops it
    generation: int | None = None  # the Ray connection (tasks/ray_client.py) the response belongs to
    call_started: float = field(default_factory=time.monotonic)
    running_since: float | None = None  # the first event of the job: a replica took it
    last_event: float | None = None  # the last event of the current stage
    stop: Stop | None = None
    abandoned: bool = False  # past the hard limit: its row is final, its thread may still be blocked

    def begin_stage(self, index: int, response: Any, generation: int) -> None:
        self.called_stage, self.response, self.generation, self.call_started, self.last_event = (
            index, response, generation, time.monotonic(), None)
        if self.stop is not None:  # cancelled between stages
            response.cancel()

    def saw_event(self) -> None:
        now = time.monotonic()
        self.last_event = now
        if self.running_since is None:
            self.running_since = now

    def cancel(self, stop: Stop) -> None:
        if self.stop is None:
            self.stop = stop
            if self.response is not None:
                self.response.cancel()


@dataclass(frozen=True)
class Limits:
    soft_s: float
    hard_s: float
    silence_s: float
    replica_wait_s: float

    @classmethod
    def from_settings(cls) -> "Limits":
        settings = get_settings()
        return cls(soft_s=settings.task_soft_time_limit_s, hard_s=settings.task_time_limit_s,
                   silence_s=settings.serve_event_timeout_s, replica_wait_s=settings.replica_wait_timeout_s)


def overdue(task: RunningTask, limits: Limits, now: float) -> Stop | None:
    """The limit a running task has passed, if any (pure: the supervisor acts on it)."""
    if task.running_since is None or task.last_event is None:  # waiting for a replica (this stage)
        if now - task.call_started > limits.replica_wait_s:
            return Stop(f"no replica took the request within {limits.replica_wait_s:.0f} s", retry=True)
        return None
    if now - task.running_since > limits.soft_s:
        return Stop("timed out")
    if now - task.last_event > limits.silence_s:
        return Stop(f"no progress from the model for {limits.silence_s:.0f} s")
    return None


class Supervisor:
    def __init__(self, poll_s: float = 0.25):
        self.poll_s = poll_s
        self.limits = Limits.from_settings()
        self._tasks: dict[uuid.UUID, RunningTask] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._held_messages: Callable[[], list[str]] | None = None
        self._renew_lease: Callable[[list[str]], None] | None = None
        self._lease_every_s = 0.0
        self._last_lease = 0.0
        self._report_backlog: Callable[[list[RunningTask]], None] | None = None
        self._report_failing = False

    @contextmanager
    def track(self, task_id: uuid.UUID, queue: str = "") -> Iterator[RunningTask]:
        task = RunningTask(task_id, queue)
        with self._lock:
            self._tasks[task_id] = task
        self._ensure_running()
        try:
            yield task
        finally:
            with self._lock:
                self._tasks.pop(task_id, None)

    def hold_leases(self, held_messages: Callable[[], list[str]], renew: Callable[[list[str]], None],
                    every_s: float) -> None:
        """Renew, every `every_s`, the lease of each message `held_messages()` names."""
        self._held_messages, self._renew_lease, self._lease_every_s = held_messages, renew, every_s
        self._ensure_running()

    def report_backlog(self, report: Callable[[list[RunningTask]], None]) -> None:
        """Call `report(running tasks)` every round: it publishes what this consumer holds (tasks/autoscaling.py)."""
        self._report_backlog = report
        self._ensure_running()

    def connection_dropped(self, generation: int) -> None:
        """Cancel the requests made through a dropped Ray connection: once their cluster is gone they would wait
        for a replica that never comes."""
        with self._lock:
            tasks = [task for task in self._tasks.values() if task.generation == generation]
        for task in tasks:
            task.cancel(CLUSTER_GONE)

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="consumer-supervisor")
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.poll_s)
            for step in (self._check_tasks, self._renew_leases, self._report):
                try:
                    step()
                except Exception:  # a dropped connection, Redis away: the next round tries again
                    log.exception("supervisor round failed (%s); retrying", step.__name__)

    def _check_tasks(self) -> None:
        with self._lock:
            tasks = {task.task_id: task for task in self._tasks.values() if not task.abandoned}
        if not tasks:
            return
        now = time.monotonic()
        for task in tasks.values():
            if task.stop is None and (stop := overdue(task, self.limits, now)):
                log.warning("task %s: %s", task.task_id, stop.reason)
                task.cancel(stop)
            elif task.running_since is not None and now - task.running_since > self.limits.hard_s:
                self._abandon(task)
        for task_id in cancelled([task.task_id for task in tasks.values() if task.stop is None]):
            tasks[task_id].cancel(Stop(CANCELLED_MESSAGE))

    def _abandon(self, task: RunningTask) -> None:
        """Past the hard limit the request did not end on cancel: the row ends FAILURE without it."""
        from tasks import state_writes
        from tasks.webhooks import notify_finished

        task.abandoned = True
        log.error("task %s: still blocked past the hard time limit; marked failed", task.task_id)
        if state_writes.fail(task.task_id, "timed out", only_if=(TaskStatus.PROCESSING,)):
            notify_finished(task.task_id)

    def _report(self) -> None:
        """Every round; a failure (Redis away) is logged once until a report gets through again."""
        if self._report_backlog is None:
            return
        with self._lock:
            tasks = list(self._tasks.values())
        try:
            self._report_backlog(tasks)
        except Exception as exc:
            if not self._report_failing:
                log.warning("backlog report failed (%s); retrying every round", exc)
            self._report_failing = True
            return
        self._report_failing = False

    def _renew_leases(self) -> None:
        if self._renew_lease is None or time.monotonic() - self._last_lease < self._lease_every_s:
            return
        assert self._held_messages is not None
        tags = self._held_messages()
        if tags:
            self._renew_lease(tags)
        self._last_lease = time.monotonic()


def cancelled(task_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Which of these tasks' rows are FAILURE (cancelled, or failed by someone else) now: one query."""
    if not task_ids:
        return []
    with session_scope() as session:
        return list(session.exec(sa.select(AITask.id).where(
            AITask.id.in_(task_ids), AITask.status == TaskStatus.FAILURE)).scalars())


supervisor = Supervisor()
