"""The reaper: a task whose row is not final but whose Celery message is nowhere in Redis would wait forever.

That happens when a process dies between the INSERT and the publish, when a retry's publish is lost, or when
Redis loses data. A live consumer always holds its running and waiting messages (acks late, leases renewed), and a
dead consumer's come back to their queue (docs/architecture.md, Consumers), so "not in any queue and not held"
means lost. The reaper (celery beat, every REAP_INTERVAL_S; `backendai reap` on demand) gives each such row a new
message id and publishes it again: PENDING/RETRY rows as they were, PROCESSING rows as a retry (or FAILURE when
their retries are spent). Each row is switched by a compare-and-swap on its message id, so several reapers at once
re-publish a row once, and a late original message finds its id replaced and is skipped by the claim.
"""

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from kombu.transport.redis import Channel

from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import AITask, TaskStatus, utcnow
from tasks.redis_client import redis_client
from tasks.registry import TASK_SPECS
from tasks.state_writes import publish
from tasks.webhooks import notify_finished

log = logging.getLogger(__name__)

# A queue longer than this is not scanned (its rows wait for the next run): a scan reads every message.
MAX_SCANNED_MESSAGES = 50_000
_MESSAGE_ID = re.compile(rb'"id": ?"([0-9a-f-]{36})"')
LOST_CONSUMER = "its consumer was lost"


@dataclass
class ReapReport:
    republished: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    skipped_queues: list[str] = field(default_factory=list)  # too long to scan this time


def _held_and_queued_ids(queues: set[str], report: ReapReport) -> set[str]:
    """Every Celery message id in these queues and in the unacked set (a queue too long to scan is reported)."""
    client = redis_client()
    ids = set(_MESSAGE_ID.findall(b"".join(client.hvals(Channel.unacked_key))))
    for queue in queues:
        if client.llen(queue) > MAX_SCANNED_MESSAGES:
            report.skipped_queues.append(queue)
            continue
        ids.update(_MESSAGE_ID.findall(b"".join(client.lrange(queue, 0, -1))))
    return {found.decode() for found in ids}


def reap(grace_s: float | None = None) -> ReapReport:
    """Re-publish every non-final task untouched for `grace_s` whose message is lost (see the module's doc)."""
    settings = get_settings()
    grace_s = settings.reap_grace_s if grace_s is None else grace_s
    cutoff = utcnow() - timedelta(seconds=grace_s)
    waiting = (TaskStatus.PENDING, TaskStatus.RETRY, TaskStatus.PROCESSING)
    with session_scope() as session:
        candidates = session.exec(sa.select(AITask).where(
            AITask.status.in_(waiting), AITask.updated_at < cutoff)).scalars().all()
    report = ReapReport()
    if not candidates:
        return report
    present = _held_and_queued_ids({TASK_SPECS[task.task_type].queue for task in candidates}, report)
    for task in candidates:
        queue = TASK_SPECS[task.task_type].queue
        if task.celery_task_id in present or queue in report.skipped_queues:
            continue
        _republish(task, queue, report)
    if report.republished or report.failed:
        log.warning("reaper: re-published %d lost tasks, failed %d", len(report.republished), len(report.failed))
    return report


def _republish(task: AITask, queue: str, report: ReapReport) -> None:
    new_id = str(uuid.uuid4())
    values: dict = {"celery_task_id": new_id, "updated_at": utcnow()}
    if task.status == TaskStatus.PROCESSING:
        if task.retry_count >= task.max_retries:
            values.update(status=TaskStatus.FAILURE, error_message=LOST_CONSUMER, message=LOST_CONSUMER,
                          completed_at=utcnow())
        else:
            values.update(status=TaskStatus.RETRY, retry_count=task.retry_count + 1, error_message=LOST_CONSUMER,
                          message=f"Retrying ({task.retry_count + 1}) after: {LOST_CONSUMER}")
    with session_scope() as session:
        swapped = session.exec(sa.update(AITask).where(
            AITask.id == task.id, AITask.status == task.status, AITask.celery_task_id == task.celery_task_id,
        ).values(**values)).rowcount == 1  # type: ignore[call-overload]
        session.commit()
    if not swapped:  # it moved meanwhile (claimed, finished, another reaper)
        return
    if values.get("status") == TaskStatus.FAILURE:
        publish(task.id, status=TaskStatus.FAILURE, progress=task.progress, message=LOST_CONSUMER)
        notify_finished(task.id)
        report.failed.append(task.id)
        return
    celery_app.send_task("tasks.process_ai_task", args=[str(task.id)], task_id=new_id, queue=queue)
    report.republished.append(task.id)


@celery_app.task(name="tasks.reap_lost_tasks", ignore_result=True)
def reap_lost_tasks() -> dict[str, int]:
    report = reap()
    return {"republished": len(report.republished), "failed": len(report.failed)}

