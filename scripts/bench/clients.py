"""Load through the REST API with the project's own client: concurrent clients, each on its own connection."""

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cli.client import FINISHED, BackendAIClient
from scripts.bench.jobs import Job

T = TypeVar("T")

# The parts of a task's end-to-end time (Finished.segments), in order.
BEFORE_ROW = "request → row built (HTTP, validation, input stored)"
QUEUED = "row built → claimed by a consumer (INSERT, enqueue, 201, Redis, Celery)"
IN_WORKER = "claimed → SUCCESS (Serve call, result stored, row writes)"
NOTIFIED = "SUCCESS → seen by the client (pub/sub, SSE)"


class BenchError(RuntimeError):
    pass


def in_parallel(clients: int, count: int, work: Callable[[], T]) -> tuple[list[T], float]:
    """`count` calls of `work` shared out to `clients` threads, each calling again as soon as it has its answer;
    returns the answers and the wall time."""
    tickets = itertools.count()  # next() on it is atomic under the GIL

    def client() -> list[T]:
        answers = []
        while next(tickets) < count:
            answers.append(work())
        return answers

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        batches = [future.result() for future in [pool.submit(client) for _ in range(clients)]]
    return [answer for batch in batches for answer in batch], time.perf_counter() - started


class ApiClients:
    """One BackendAIClient (one keep-alive connection) per thread, as separate users would have."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self._local = threading.local()
        self._opened: list[BackendAIClient] = []
        self._lock = threading.Lock()

    def get(self) -> BackendAIClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = BackendAIClient(self.base_url, timeout_s=120)
            with self._lock:
                self._opened.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._opened:
                client.http.close()
            self._opened.clear()
        self._local = threading.local()

    def create(self, job: Job) -> str:
        task = self.get().create(job.task_type, job.prompt, image=job.image, parameters=job.parameters,
                                 **job.extra_images)
        return task["task_id"]

    def timed_create(self, job: Job) -> tuple[float, str]:
        started = time.perf_counter()
        task_id = self.create(job)
        return time.perf_counter() - started, task_id

    def poll_until_finished(self, job: Job, every_s: float, timeout_s: float = 120) -> "Finished":
        """Create, then ask for the status every `every_s` until the task finishes or `timeout_s` passes (the
        target method's client; the rows tell which tasks did not finish)."""
        submitted = time.time()
        task_id = self.create(job)
        while (status := self.get().status(task_id))["status"] not in FINISHED and time.time() - submitted < timeout_s:
            time.sleep(every_s)
        return Finished(submitted, time.time(), status)

    def run_to_success(self, job: Job) -> "Finished":
        """Create, then follow the SSE stream until the task finishes; SUCCESS or BenchError."""
        submitted = time.time()
        task_id = self.create(job)
        final = self.get().wait(task_id, timeout_s=300)
        seen = time.time()
        if final["status"] != "SUCCESS":
            raise BenchError(f"{job.task_type} task {task_id} ended {final['status']}: {final.get('error_message')}")
        return Finished(submitted, seen, final)


def _instant(stamp: str) -> float:
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Finished:
    """One task seen from the client (wall-clock instants) and from its row (created, started, completed)."""

    submitted: float
    seen: float
    status: dict[str, Any]

    @property
    def end_to_end(self) -> float:
        return self.seen - self.submitted

    def segments(self) -> dict[str, float]:
        """Where the end-to-end time went, by the row's own timestamps (every process shares this machine's clock);
        the parts add up to `end_to_end`."""
        row_created = _instant(self.status["created_at"])
        started = _instant(self.status["started_at"])
        completed = _instant(self.status["completed_at"])
        return {BEFORE_ROW: row_created - self.submitted, QUEUED: started - row_created,
                IN_WORKER: completed - started, NOTIFIED: self.seen - completed}
