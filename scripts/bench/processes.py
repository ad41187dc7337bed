"""The stack's processes by role (API, proxy, replicas, workers, …): their peak resident memory, sampled in the
background, and the CPU time they use."""

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psutil

# Ray renames its worker processes; a replica's title is "ray::ServeReplica:<app>:<deployment>[.<method>]".
REPLICA_TITLE = re.compile(r"^ray::ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[^.\s]+)")
RAY_ACTORS = {"ray::ProxyActor": "Serve HTTP proxy", "ray::ServeController": "Serve controller"}
STACK_PARTS = {
    "redis": "Redis (embedded redis-server)",
    "worker-gpu": "Celery worker, gpu queue (main + pool processes)",
    "worker-cpu": "Celery worker, cpu queue (main + pool processes)",
    "beat": "Celery beat",
    "uvicorn": "API under plain uvicorn",
}
RAY_SYSTEM = "Ray head: gcs, raylet, dashboard, idle workers"
API_REPLICA = "API replica"


def is_serve_ingress(role: str) -> bool:
    """The processes that serve HTTP when the API runs under Ray Serve: the proxy and the API replica."""
    return role.startswith(API_REPLICA) or role == RAY_ACTORS["ray::ProxyActor"]


def ray_role(process: psutil.Process) -> str:
    title = " ".join(process.cmdline())
    replica = REPLICA_TITLE.match(title)
    if replica:
        if replica["app"] == "api":
            return f"{API_REPLICA} (Serve ingress {replica['deployment']})"
        return f"replica {replica['app']}:{replica['deployment']}"
    return next((role for prefix, role in RAY_ACTORS.items() if title.startswith(prefix)), RAY_SYSTEM)


def processes_by_role(roots: dict[str, int]) -> dict[str, list[psutil.Process]]:
    """Each named root process (the stack's children, by their Stack name) with its descendants, by role."""
    found: dict[str, list[psutil.Process]] = {}
    for name, pid in roots.items():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                role = ray_role(process) if name == "ray-head" else STACK_PARTS.get(name, name)
            except psutil.Error:
                continue
            found.setdefault(role, []).append(process)
    return found


@dataclass
class Peak:
    processes: int = 0  # most processes of this role alive at once
    single: int = 0  # largest RSS of one of them
    total: int = 0  # largest sum over them at one instant


class PeakRss:
    """Samples every `interval_s` until stopped; `peaks` maps each role to its Peak (bytes)."""

    def __init__(self, roots: Callable[[], dict[str, int]], interval_s: float = 0.5):
        self.roots, self.interval_s = roots, interval_s
        self.peaks: dict[str, Peak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-rss")

    def start(self) -> "PeakRss":
        self._thread.start()
        return self

    def stop(self) -> dict[str, Peak]:
        self._stop.set()
        self._thread.join(10)
        return self.peaks

    def sample(self) -> None:
        for role, processes in processes_by_role(self.roots()).items():
            sizes = []
            for process in processes:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:
                    continue
            peak = self.peaks.setdefault(role, Peak())
            peak.processes = max(peak.processes, len(sizes))
            peak.single = max([peak.single, *sizes])
            peak.total = max(peak.total, sum(sizes))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


BENCHMARK = "benchmark clients and Ray driver (this process)"


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU time used so far by each role, counting the finished children its processes reaped (Celery's recycled
    pool processes, Ray's exited workers), and by this process."""
    totals: dict[str, float] = {}
    for role, processes in processes_by_role(roots).items():
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system + times.children_user + times.children_system
            totals[role] = totals.get(role, 0.0) + used
    own = psutil.Process().cpu_times()
    totals[BENCHMARK] = own.user + own.system
    return totals


class CpuMeter:
    """CPU seconds each role used between `start()` and `stop()`."""

    def __init__(self, roots: Callable[[], dict[str, int]]):
        self.roots = roots
        self._before: dict[str, float] = {}

    def start(self) -> "CpuMeter":
        self._before = cpu_seconds(self.roots())
        return self

    def stop(self) -> dict[str, float]:
        after = cpu_seconds(self.roots())
        return {role: max(0.0, used - self._before.get(role, 0.0)) for role, used in after.items()}
