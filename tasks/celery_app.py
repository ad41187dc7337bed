"""The Celery app with the seed's settings; workers connect to Ray once per worker process."""

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from tasks.config import get_settings


def create_celery() -> Celery:
    settings = get_settings()
    app = Celery("backendai", broker=settings.effective_redis_url, backend=settings.effective_redis_url,
                 include=["tasks.processing", "tasks.expiry", "tasks.webhooks"])
    longest_retry_countdown = settings.retry_backoff_base_s * 2**settings.max_retries
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        result_expires=settings.result_expires_s,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        # Unacked messages (running, or waiting for a retry countdown) come back after this long; it must exceed
        # the hard time limit plus the longest countdown, or Redis hands a healthy task to a second worker.
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s
            or int(max(3600, 2 * (settings.task_time_limit_s + longest_retry_countdown)))
        },
        # The API must answer quickly when Redis is down rather than retry publishing for minutes.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                   "interval_max": 0.5},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        beat_schedule={
            "expire-old-tasks": {"task": "tasks.expire_old_tasks", "schedule": float(settings.expiry_interval_s),
                                 "options": {"queue": "cpu"}},
        },
    )
    return app


celery_app = create_celery()


@worker_process_init.connect
def _connect_to_ray(**_) -> None:
    # After the fork, never before: a connection made in the parent makes tasks hang (ARCHITECTURE.md).
    from tasks import ray_client

    ray_client.connect()


@worker_process_shutdown.connect
def _disconnect_from_ray(**_) -> None:
    from tasks import ray_client

    ray_client.disconnect()
