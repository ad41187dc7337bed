"""The benchmark's own stack environment and a description of the machine it runs on.

`isolate` must run before anything calls `tasks.config.get_settings()`: every process of the stack reads its
settings from the environment, as the test fixtures do (tests/conftest.py).
"""

import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path

import psutil

from serve.stack import free_port

# The limiter stays on (its Redis round trip is part of every request) but never refuses the benchmark's clients.
UNLIMITED_RATE = str(10**9)


def isolate() -> Path:
    """A fresh DATA_DIR and free ports; the embedded SQLite and Redis unless DATABASE_URL / REDIS_URL are set."""
    data_dir = Path(tempfile.gettempdir()) / f"backendai-bench-{uuid.uuid4().hex[:8]}"  # made when the stack starts
    os.environ.update(
        DATA_DIR=str(data_dir),
        API_PORT=str(free_port()),
        RAY_HEAD_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        EMBEDDED_REDIS_PORT=str(free_port()),
        RATE_LIMIT_PER_MINUTE=UNLIMITED_RATE,
        # Empty, not unset, so that a developer's .env cannot point the benchmark at a shared cluster or bucket.
        RAY_ADDRESS="",
        STORAGE_URL="",
        OMP_NUM_THREADS="1",  # the bare model calls run with one thread, as the replicas do
    )
    return data_dir


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    memory_gib = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} cores ({cpu_model()}), {memory_gib:.0f} GiB RAM, no GPU used; "
            f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}")


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())
