"""Prometheus metrics at `GET /metrics`: the API's requests, and the job system's state read when scraped.

Request counts and latencies belong to the process that answers (one ingress replica). Queue depth, tasks by
status and task durations are read from Redis and the `ai_tasks` table at scrape time, so every replica answers
the same numbers: the row, not a replica's memory, is the source of truth. A scrape reads a bounded set of rows:
the unfinished tasks, and those finished within METRICS_WINDOW_S, each through an index. Serve's own metrics
(replicas, deployments, proxies) stay on each Ray node's metrics port.
"""

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

import redis
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasks.config import get_settings
from tasks.db import get_engine
from tasks.models import CANCELLED_MESSAGE, FINISHED_STATUSES, UNFINISHED_STATUSES, AITask, TaskStatus, utcnow
from tasks.redis_client import redis_client
from tasks.registry import TASK_SPECS

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
# Requests that match no route (404s of arbitrary paths) share one label value instead of one series per path.
UNMATCHED_ROUTE = "<unmatched>"
# From a quick background removal (~0.3 s) to the default hard time limit (600 s).
TASK_DURATION_BUCKETS_S = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUES = sorted({spec.queue for spec in TASK_SPECS.values()})

HTTP_REQUESTS = Counter("backendai_http_requests", "HTTP requests answered by this API process.",
                        ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram("backendai_http_request_duration_seconds",
                         "Seconds until the response started (status sent), in this API process.",
                         ["method", "route"], registry=REGISTRY)


class RequestMetricsMiddleware:
    """Counts each HTTP request by route template (`/api/v1/tasks/{task_id}/status/`) and status, and times it
    until its response starts, so that a live event stream or a large download does not read as a slow answer.

    A plain ASGI middleware: it sees the status the client got, and an exception that escapes the app as a 500.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, answered = 500, None

        async def send_recording_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], time.perf_counter()
            await send(message)

        root_path = scope.get("root_path", "")
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = _route_template(scope, root_path)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe((answered or time.perf_counter()) - started)


def _route_template(scope: Scope, root_path_before: str) -> str:
    """The router leaves the matched route in the scope it shares with this middleware; a mounted app (static
    files) leaves only its prefix, added to the root path."""
    if route := getattr(scope.get("route"), "path", None):
        return route
    if (root_path := scope.get("root_path", "")) != root_path_before:
        return f"{root_path.removeprefix(root_path_before)}/{{path}}"
    return UNMATCHED_ROUTE


def _queue_metrics() -> Iterator[Metric]:
    depth = GaugeMetricFamily("backendai_queue_depth", "Celery messages waiting in each queue (a Redis list).",
                              labels=["queue"])
    with redis_client().pipeline(transaction=False) as pipeline:
        for queue in QUEUES:
            pipeline.llen(queue)
        lengths = pipeline.execute()
    for queue, length in zip(QUEUES, lengths, strict=True):
        depth.add_metric([queue], length)
    yield depth


def unfinished_counts() -> sa.Select:
    """Unfinished tasks by type and status: as many rows as the backlog, read through the status index."""
    return (sa.select(AITask.task_type, AITask.status, sa.func.count())
            .where(AITask.status.in_(UNFINISHED_STATUSES)).group_by(AITask.task_type, AITask.status))


def finished_since(since: datetime) -> sa.Select:
    """Tasks of the registered types finished since `since`, by type and status, with their cancels and the
    successes' duration histogram: one range of the (task_type, status, completed_at) index per type and status."""
    duration = AITask.processing_time
    succeeded = AITask.status == TaskStatus.SUCCESS
    at_most = [sa.func.sum(sa.case((sa.and_(succeeded, duration <= bound), 1), else_=0))
               for bound in TASK_DURATION_BUCKETS_S]
    cancelled = sa.func.sum(sa.case((AITask.error_message == CANCELLED_MESSAGE, 1), else_=0))
    timed = sa.func.sum(sa.case((sa.and_(succeeded, duration.is_not(None)), 1), else_=0))
    return (sa.select(AITask.task_type, AITask.status, sa.func.count(), cancelled, timed,
                      sa.func.sum(sa.case((succeeded, duration), else_=None)), *at_most)
            .where(AITask.task_type.in_(list(TASK_SPECS)), AITask.status.in_(FINISHED_STATUSES),
                   AITask.completed_at >= since)
            .group_by(AITask.task_type, AITask.status))


def _task_metrics() -> Iterator[Metric]:
    """Two bounded queries (unfinished tasks; tasks finished within METRICS_WINDOW_S) instead of a scan of every
    task ever run. Every type and status is reported, zero included, so that a series exists before its first
    task."""
    window_s = get_settings().metrics_window_s
    with get_engine().connect() as connection:
        unfinished = connection.execute(unfinished_counts()).all()
        finished = connection.execute(finished_since(utcnow() - timedelta(seconds=window_s))).all()

    tasks = GaugeMetricFamily("backendai_tasks", f"Tasks by type and status: every unfinished one, and those that "
                              f"finished in the last {window_s} s (METRICS_WINDOW_S).", labels=["task_type", "status"])
    by_type_and_status = {(str(task_type), str(status)): count for task_type, status, count in unfinished}
    by_type_and_status.update({(str(task_type), str(status)): count for task_type, status, count, *_ in finished})
    for task_type in TASK_SPECS:
        for status in TaskStatus:
            tasks.add_metric([task_type, status], by_type_and_status.get((task_type, status), 0))
    yield tasks

    # Cancels are FAILURE rows in the v1 contract; failures proper are backendai_tasks{status="FAILURE"} minus these.
    cancels = GaugeMetricFamily("backendai_tasks_cancelled", f"Tasks cancelled by their owner in the last {window_s} "
                                f"s, by type (counted in backendai_tasks as FAILURE too).", labels=["task_type"])
    cancelled_by_type = {str(task_type): count for task_type, status, _, count, *_ in finished
                         if status == TaskStatus.FAILURE}
    for task_type in TASK_SPECS:
        cancels.add_metric([task_type], cancelled_by_type.get(task_type, 0) or 0)
    yield cancels

    histogram = HistogramMetricFamily("backendai_task_processing_seconds", f"Start-to-completion seconds of the "
                                      f"tasks that succeeded in the last {window_s} s (their processing_time).",
                                      labels=["task_type"])
    by_type = {str(task_type): (count, total, bucket_counts) for task_type, status, _, _, count, total, *bucket_counts
               in finished if status == TaskStatus.SUCCESS}
    for task_type in TASK_SPECS:
        count, total, bucket_counts = by_type.get(task_type, (0, 0.0, [0] * len(TASK_DURATION_BUCKETS_S)))
        buckets = [(floatToGoString(bound), int(at)) for bound, at in zip(TASK_DURATION_BUCKETS_S, bucket_counts,
                                                                          strict=True)]
        histogram.add_metric([task_type], [*buckets, ("+Inf", count)], float(total or 0))
    yield histogram


class JobStateCollector(Collector):
    """The job system's state, evaluated at each scrape. A source that does not answer is reported as down
    (`backendai_metrics_source_up 0`) and its metrics are left out; the scrape itself still succeeds."""

    SOURCES: tuple[tuple[str, Callable[[], Iterable[Metric]]], ...] = (
        ("redis", _queue_metrics), ("database", _task_metrics))

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("backendai_metrics_source_up", "1 when the source answered this scrape, else 0.",
                               labels=["source"])
        for source, read in self.SOURCES:
            try:
                metrics = list(read())
            except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
                log.warning("metrics: %s unavailable: %s", source, exc)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from metrics
        yield up


REGISTRY.register(JobStateCollector())

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text format (a plain def: FastAPI runs it in a thread, as it waits on Redis and the database)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI) -> None:
    app.add_middleware(RequestMetricsMiddleware)
    app.include_router(router)
