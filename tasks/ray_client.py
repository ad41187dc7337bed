"""One Ray connection per Celery worker process, and the handles to the model deployments."""

import logging
import os
import sys
from contextlib import contextmanager
from functools import lru_cache

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from tasks.config import get_settings

log = logging.getLogger(__name__)


@contextmanager
def _real_stdio():
    # Celery replaces stdout/stderr with proxies that have no fileno(); ray.init() needs the real ones.
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def connect() -> None:
    if ray.is_initialized():
        return
    settings = get_settings()
    os.environ["RAY_AUTH_MODE"] = settings.ray_auth_mode
    with _real_stdio():
        ray.init(address=settings.effective_ray_address, namespace="backendai", log_to_driver=False,
                 logging_level=logging.WARNING)
    log.info("connected to Ray at %s", settings.effective_ray_address)


def disconnect() -> None:
    """Drop the connection and cached handles; the next call reconnects (e.g. after a Ray restart)."""
    get_handle.cache_clear()
    if ray.is_initialized():
        ray.shutdown()


@lru_cache
def get_handle(app_name: str, deployment_name: str) -> DeploymentHandle:
    connect()
    return serve.get_deployment_handle(deployment_name, app_name=app_name)
