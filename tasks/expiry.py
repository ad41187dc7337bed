"""Retention: a periodic job (celery beat) deletes the inputs and results of tasks finished long ago."""

import logging
import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import FINISHED_STATUSES, AITask, utcnow
from tasks.storage import get_storage

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
# One run stops starting batches after this long, well inside EXPIRY_INTERVAL_S; the next run goes on.
RUN_BUDGET_S = 300.0


def _mark_batch(cutoff: datetime, size: int) -> list[list[str]]:
    """Mark up to `size` tasks finished before `cutoff` expired and commit; returns each one's file keys. Only rows
    this UPDATE changed come back, so two runs at once never share a row."""
    due = (sa.select(AITask.id).where(AITask.completed_at < cutoff, AITask.expired_at.is_(None),
                                      AITask.status.in_(FINISHED_STATUSES))
           .order_by(AITask.completed_at).limit(size))
    statement = (sa.update(AITask).where(AITask.id.in_(due.scalar_subquery()), AITask.expired_at.is_(None))
                 .values(expired_at=utcnow())
                 .returning(AITask.input_image, AITask.result_image, AITask.extra_inputs))
    with session_scope() as session:
        marked = session.execute(statement, execution_options={"synchronize_session": False}).all()
        session.commit()
    return [[key for key in (input_image, result_image, *(extra or {}).values()) if key]
            for input_image, result_image, extra in marked]


def expire_finished_before(cutoff: datetime, budget_s: float = RUN_BUDGET_S, batch_size: int = BATCH_SIZE) -> int:
    """Expire tasks finished before `cutoff` a batch at a time until none is left or `budget_s` has passed;
    returns how many. Each batch's mark is committed before its files are deleted, outside any transaction: a
    file that fails to delete is logged and left behind, and its task still says expired (410)."""
    storage = get_storage()
    deadline = time.monotonic() + budget_s
    expired = 0
    while True:
        batch = _mark_batch(cutoff, batch_size)
        for key in (key for keys in batch for key in keys):
            try:
                storage.delete(key)
            except Exception as exc:  # the storage is the operator's (a bucket, a disk): any error may come
                log.warning("expiry: %s not deleted: %s", key, exc)
        expired += len(batch)
        if len(batch) < batch_size or time.monotonic() >= deadline:
            return expired


@celery_app.task(name="tasks.expire_old_tasks", ignore_result=True)
def expire_old_tasks() -> int:
    count = expire_finished_before(utcnow() - timedelta(seconds=get_settings().result_ttl_s))
    log.info("expired the files of %d tasks", count)
    return count
