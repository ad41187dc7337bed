"""One Ray connection per consumer process, shared by its threads, and the handles to the model deployments."""

import logging
import os
import sys
import threading
from contextlib import contextmanager
from functools import lru_cache

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from tasks.config import get_settings

log = logging.getLogger(__name__)

_lock = threading.RLock()
_generation = 0  # bumped by every disconnect: a failure seen on an older connection must not drop a newer one


@contextmanager
def _real_stdio():
    # Celery replaces stdout/stderr with proxies that have no fileno(); ray.init() needs the real ones.
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def connect() -> int:
    """Connect this process to the cluster (once); returns the connection's generation."""
    with _lock:
        if not ray.is_initialized():
            settings = get_settings()
            os.environ["RAY_AUTH_MODE"] = settings.ray_auth_mode
            with _real_stdio():
                ray.init(address=settings.effective_ray_address, namespace="backendai", log_to_driver=False,
                         logging_level=logging.WARNING)
            log.info("connected to Ray at %s", settings.effective_ray_address)
        return _generation


def disconnect(generation: int | None = None) -> None:
    """Drop the connection and cached handles so the next call reconnects (e.g. after a Ray restart); with a
    `generation`, only if that connection is still the current one."""
    global _generation
    with _lock:
        if generation is not None and generation != _generation:
            return
        _generation += 1
        _handle.cache_clear()
        if ray.is_initialized():
            ray.shutdown()


def get_handle(app_name: str, deployment_name: str) -> tuple[DeploymentHandle, int]:
    """The deployment's streaming handle and the generation of the connection it belongs to."""
    with _lock:
        generation = connect()
        return _handle(app_name, deployment_name), generation


@lru_cache
def _handle(app_name: str, deployment_name: str) -> DeploymentHandle:
    # Built once per deployment: `options()` makes a new handle each call, and every call through a new handle
    # pays its set-up again.
    return serve.get_deployment_handle(deployment_name, app_name=app_name).options(stream=True)
