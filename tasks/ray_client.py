"""One Ray connection per consumer process, shared by its threads, and the handles to the model deployments.

A connection also watches its cluster: when the head restarts, the driver stays attached to the dead cluster (its
calls wait for a replica forever; docs/architecture.md, measured facts). A watcher thread asks the GCS at the same
address for its cluster id every `CLUSTER_CHECK_S`; a different id means the cluster was replaced, and the
connection is dropped: the calls still waiting on it are cancelled (by the callbacks given to `on_disconnect`) and
the next call connects to the new cluster.
"""

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache

import ray
from ray import serve
from ray.serve import context as serve_context
from ray.serve.handle import DeploymentHandle

from tasks.config import get_settings

log = logging.getLogger(__name__)

CLUSTER_CHECK_S = 5.0

_lock = threading.RLock()
_generation = 0  # bumped by every disconnect: a failure seen on an older connection must not drop a newer one
_cluster: tuple[str, str] | None = None  # (GCS address, cluster id) of the current connection
_on_disconnect: list[Callable[[int], None]] = []
_watcher: threading.Thread | None = None


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
    global _cluster
    with _lock:
        if not ray.is_initialized():
            settings = get_settings()
            os.environ["RAY_AUTH_MODE"] = settings.ray_auth_mode
            with _real_stdio():
                ray.init(address=settings.effective_ray_address, namespace="backendai", log_to_driver=False,
                         logging_level=logging.WARNING)
            log.info("connected to Ray at %s", settings.effective_ray_address)
        if _cluster is None:
            _cluster = ray.get_runtime_context().gcs_address, _connected_cluster_id()
            _ensure_watcher()
        return _generation


def is_current(generation: int) -> bool:
    return generation == _generation


def on_disconnect(callback: Callable[[int], None]) -> None:
    """Call `callback(generation)` whenever that connection is dropped, before Ray is shut down: its pending
    responses can still be cancelled then, and never end by themselves once the cluster is gone."""
    _on_disconnect.append(callback)


def disconnect(generation: int | None = None) -> None:
    """Drop the connection and cached handles so the next call reconnects (e.g. after a Ray restart); with a
    `generation`, only if that connection is still the current one."""
    global _generation, _cluster
    with _lock:
        if generation is not None and generation != _generation:
            return
        dropped, _generation, _cluster = _generation, _generation + 1, None
        _handle.cache_clear()
        for callback in _on_disconnect:
            try:
                callback(dropped)
            except Exception:
                log.exception("disconnect callback failed")
        if ray.is_initialized():
            ray.shutdown()
        # Serve keeps its controller client across ray.shutdown() and trusts it again when the new session's job id
        # equals the old one, which is common after a head restart (ids count from 1 per cluster): handles made
        # then route to the dead cluster's replicas. Forget it, so the next handle finds the live controller.
        serve_context._disconnect()


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


def _connected_cluster_id() -> str:
    return ray._private.worker.global_worker.node.cluster_id.hex()


def cluster_id_at(gcs_address: str) -> str:
    """The id of the cluster whose GCS answers at `gcs_address` now: a fresh client each time (one made for the
    old cluster would be refused by the new one). Blocks while no GCS answers there."""
    from ray._raylet import GcsClient

    return GcsClient(address=gcs_address).cluster_id.hex()


def _ensure_watcher() -> None:
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(target=_watch, daemon=True, name="ray-cluster-watch")
        _watcher.start()


def _watch() -> None:
    while True:
        time.sleep(CLUSTER_CHECK_S)
        with _lock:
            generation, cluster = _generation, _cluster
        if cluster is None:
            continue
        address, cluster_id = cluster
        try:
            now = cluster_id_at(address)
        except Exception as exc:  # no GCS there (yet): the head may be restarting; ask again
            log.debug("Ray GCS at %s did not answer: %s", address, exc)
            continue
        if now != cluster_id:
            log.warning("the Ray cluster at %s was replaced (its head restarted): reconnecting", address)
            disconnect(generation)
