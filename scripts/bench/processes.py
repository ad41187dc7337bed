"""The stack's processes by role (API, consumers, replicas, Ray head, Redis, Postgres, …): their peak resident memory,
sampled in the background, and the CPU time they use."""

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psutil

# Ray renames its worker processes; a replica's title is "ray::ServeReplica:<app>:<deployment>[.<method>]".
REPLICA_TITLE = re.compile(r"^ray::ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[^.\s]+)")
SERVE_CONTROLLER = "Serve controller"
RAY_SYSTEM = "Ray head: gcs, raylet, dashboard, idle workers"
STACK_PARTS = {
    "api": "API (uvicorn)",
    "second-api": "second API (uvicorn, the benchmark's)",
    "housekeeping": "housekeeping (Celery, cpu queue)",
    "beat": "Celery beat",
    "redis": "Redis (embedded redis-server)",
}
CONSUMER = "consumer-"
POSTGRES_OURS = "Postgres: backends of the benchmark's database"
POSTGRES_SERVER = "Postgres: server processes and exited backends (shared with other users of the server)"
REDIS_SERVER = "Redis server at REDIS_URL (shared with other users of the server)"
BENCHMARK = "benchmark clients and Ray driver (this process)"
# A client backend's title names its client: "postgres: [<cluster>: ]<user> <database> <host>(<port>) <state>".
POSTGRES_CLIENT = re.compile(r" (?P<database>\S+) (?:\S+\(\d+\)|\[local\])(?: |$)")

Roles = dict[str, list[psutil.Process]]


def stack_role(name: str) -> str:
    """The role of a process the Stack (or the benchmark) started, by its name in `Stack.processes`."""
    if name.startswith(CONSUMER):
        return f"consumer {name.removeprefix(CONSUMER)} (Celery threads pool, Ray driver)"
    return STACK_PARTS.get(name, name)


def ray_role(title: str) -> str:
    replica = REPLICA_TITLE.match(title)
    if replica:
        return f"replica {replica['app']}:{replica['deployment']}"
    return SERVE_CONTROLLER if title.startswith("ray::ServeController") else RAY_SYSTEM


def postgres_role(title: str, database: str) -> str | None:
    """Backends of `database` are ours; other databases' backends are not; the postmaster and its helpers are the
    server (the postmaster's reaped children are every database's exited backends)."""
    client = POSTGRES_CLIENT.search(title)
    if client is None:
        return POSTGRES_SERVER
    return POSTGRES_OURS if client["database"] == database else None


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class StackProcesses:
    """This machine's processes that serve the benchmark's stack, by role: the named roots (the Stack's children and
    the benchmark's own) with their descendants, and, when they run here, the Postgres backends of the benchmark's
    database, the Postgres server and the Redis server."""

    def __init__(self, roots: Callable[[], dict[str, int]], database: str | None = None,
                 redis_port: int | None = None):
        self.roots, self.database, self.redis_port = roots, database, redis_port

    def __call__(self) -> Roles:
        found: Roles = {}
        for name, pid in self.roots().items():
            for process in _tree(pid):
                try:
                    role = ray_role(" ".join(process.cmdline())) if name == "ray-head" else stack_role(name)
                except psutil.Error:
                    continue
                found.setdefault(role, []).append(process)
        if self.database or self.redis_port:
            for process in psutil.process_iter(["name", "cmdline"]):
                title = " ".join(process.info["cmdline"] or []).strip()  # Redis pads its title with empty args
                role = self._server_role(process.info["name"] or "", title)
                if role:
                    found.setdefault(role, []).append(process)
        return found

    def _server_role(self, name: str, title: str) -> str | None:
        if self.database and name == "postgres":
            return postgres_role(title, self.database)
        if self.redis_port and name == "redis-server" and title.endswith(f":{self.redis_port}"):
            return REDIS_SERVER
        return None


@dataclass
class Peak:
    processes: int = 0  # most processes of this role alive at once
    single: int = 0  # largest RSS of one of them
    total: int = 0  # largest sum over them at one instant


class PeakRss:
    """Samples every `interval_s` until stopped; `peaks` maps each role to its Peak (bytes)."""

    def __init__(self, roles: Callable[[], Roles], interval_s: float = 0.5):
        self.roles, self.interval_s = roles, interval_s
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
        for role, processes in self.roles().items():
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


def cpu_seconds(roles: Roles) -> dict[str, float]:
    """CPU time used so far by each role, counting the finished children its processes reaped (Ray's exited
    workers, Postgres's exited backends), and by this process."""
    totals: dict[str, float] = {}
    for role, processes in roles.items():
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

    def __init__(self, roles: Callable[[], Roles]):
        self.roles = roles
        self._before: dict[str, float] = {}

    def start(self) -> "CpuMeter":
        self._before = cpu_seconds(self.roles())
        return self

    def stop(self) -> dict[str, float]:
        after = cpu_seconds(self.roles())
        return {role: max(0.0, used - self._before.get(role, 0.0)) for role, used in after.items()}
