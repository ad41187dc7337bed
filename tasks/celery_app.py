"""The Celery app. Consumers are workers with the threads pool: many tasks in flight per process, one Ray driver
(docs/architecture.md, Consumers)."""

import math
import os
import time

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from tasks.config import get_settings

# Housekeeping (expiry, webhooks, the reaper) runs here; each task type has a queue of its own (tasks/registry.py).
HOUSEKEEPING_QUEUE = "cpu"


def create_celery() -> Celery:
    settings = get_settings()
    app = Celery("backendai", broker=settings.effective_redis_url, backend=settings.effective_redis_url,
                 include=["tasks.processing", "tasks.expiry", "tasks.webhooks", "tasks.reaper"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        # The row is the result: nothing reads Celery's result store, so no task writes to it.
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.consumer_concurrency,
        task_default_queue=HOUSEKEEPING_QUEUE,
        task_create_missing_queues=True,
        # Consumers renew the lease of every message they hold (tasks/supervisor.py), so only a dead consumer's
        # messages pass the visibility timeout; a sweep every 5 s puts them back on their queue.
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s,
                                  "unacked_restore_interval": 5, "unacked_restore_throttle": 1},
        # The API must answer quickly when Redis is down rather than retry publishing for minutes.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                   "interval_max": 0.5},
        broker_connection_retry_on_startup=True,
        # No task events: nothing here reads them, and they cost every task a few Redis writes. Flower shows
        # workers and queues without them; `celery control enable_events` turns them on for a while.
        worker_send_task_events=False,
        beat_schedule={
            "expire-old-tasks": {"task": "tasks.expire_old_tasks", "schedule": float(settings.expiry_interval_s),
                                 "options": {"queue": HOUSEKEEPING_QUEUE}},
            "reap-lost-tasks": {"task": "tasks.reap_lost_tasks", "schedule": float(settings.reap_interval_s),
                                "options": {"queue": HOUSEKEEPING_QUEUE}},
        },
    )
    return app


celery_app = create_celery()


@worker_ready.connect
def _watch_held_messages(sender, **_) -> None:
    """From the supervisor thread: renew the lease of every message this consumer holds unacked, and report what it
    holds for each deployment of its queues to the autoscaling policy (tasks/autoscaling.py)."""
    qos = sender.task_consumer.channel.qos
    if not hasattr(qos, "unacked_index_key"):  # not Redis: the broker hands back a dead consumer's messages
        return
    from tasks.redis_client import redis_client
    from tasks.supervisor import supervisor

    def held() -> list[str]:
        return list(qos._delivered.copy())  # delivered, not yet acked: running, prefetched, retry countdowns

    def renew(tags: list[str]) -> None:
        now = time.time()
        redis_client().zadd(qos.unacked_index_key, dict.fromkeys(tags, now), xx=True)

    supervisor.hold_leases(held, renew, every_s=qos.visibility_timeout / 4)
    served = [queue.name for queue in sender.task_consumer.queues]
    if stages := _stages_by_queue(served):
        supervisor.report_backlog(_backlog_reporter(qos, stages, f"{sender.hostname}:{os.getpid()}"))


def _stages_by_queue(queues: list[str]) -> dict[str, list[str]]:
    """The deployments (tasks/autoscaling.py's keys), in call order, that each model queue's tasks call."""
    from tasks.autoscaling import deployment_key
    from tasks.registry import TASK_SPECS

    return {str(spec.queue): [deployment_key(stage.app_name, stage.deployment_name) for stage in spec.stages]
            for spec in TASK_SPECS.values() if spec.queue in queues}


def _backlog_reporter(qos, stages: dict[str, list[str]], consumer: str):
    """`report(running tasks)`: one field of each queue's held-report hash, rewritten every supervisor round."""
    from tasks.autoscaling import REPORT_TTL_S, encode_report, held_key, held_per_stage
    from tasks.redis_client import redis_client

    def report(running) -> None:
        # An acked message stays in _delivered (tagged in _dirty) until the channel next polls the queue, which an
        # idle consumer does not do: counting it would hold replicas up after the backlog is gone.
        acked = set(qos._dirty)
        delivered = [message for tag, message in qos._delivered.copy().items() if tag not in acked]
        now = time.time()
        with redis_client().pipeline(transaction=False) as pipe:
            for queue, deployments in stages.items():
                reserved = sum(message.delivery_info.get("routing_key") == queue for message in delivered)
                called = [task.called_stage for task in running if task.queue == queue]
                pipe.hset(held_key(queue), consumer, encode_report(held_per_stage(deployments, reserved, called), now))
                pipe.expire(held_key(queue), math.ceil(REPORT_TTL_S) * 6)  # the whole hash, once every consumer is gone
            pipe.execute()

    return report


@worker_shutdown.connect
def _disconnect_from_ray(**_) -> None:
    from tasks import ray_client

    ray_client.disconnect()
