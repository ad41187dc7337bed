"""Retention: a periodic job (celery beat) deletes the inputs and results of tasks finished long ago."""

import logging
from datetime import timedelta

import sqlalchemy as sa

from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import FINISHED_STATUSES, AITask, utcnow
from tasks.storage import get_storage

log = logging.getLogger(__name__)


def expire_finished_before(cutoff) -> int:
    """Delete the files of tasks finished before `cutoff` and mark them expired; returns how many."""
    storage = get_storage()
    with session_scope() as session:
        tasks = session.exec(
            sa.select(AITask).where(AITask.status.in_(FINISHED_STATUSES), AITask.completed_at < cutoff,
                                    AITask.expired_at.is_(None)).limit(1000)
        ).scalars().all()
        for task in tasks:
            for key in (task.input_image, task.result_image, *(task.extra_inputs or {}).values()):
                if key:
                    storage.delete(key)
            task.expired_at = utcnow()
            session.add(task)
        session.commit()
    return len(tasks)


@celery_app.task(name="tasks.expire_old_tasks", ignore_result=True)
def expire_old_tasks() -> int:
    count = expire_finished_before(utcnow() - timedelta(seconds=get_settings().result_ttl_s))
    log.info("expired the files of %d tasks", count)
    return count
