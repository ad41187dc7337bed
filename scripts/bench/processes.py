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
# One role: a backend that ends (a pool's overflow connection closed) is counted through the postmaster, its parent.
POSTGRES = "Postgres: the benchmark database's backends and the server (ended backends of any database count)"
REDIS_SERVER = "Redis server at REDIS_URL (shared with other users of the server)"
BENCHMARK = "benchmark clients and Ray driver (this process)"
# The Stack's watcher runs in the process that runs the Stack: `backendai up`'s, here the benchmark's.
WATCHER = "the Stack's watcher thread (cli/stack.py, in the process running the Stack)"
WATCH_THREAD = "stack-watch"  # its name in cli/stack.py
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
    """The postmaster, its helpers (WAL writer, checkpointer, …) and the backends of `database`; not the backends of
    other databases."""
    client = POSTGRES_CLIENT.search(title)
    return POSTGRES if client is None or client["database"] == database else None


def _title(process: psutil.Process) -> str:
    return " ".join(process.cmdline()).strip()  # Redis pads its title with empty arguments


class StackProcesses:
    """This machine's processes that serve the benchmark's stack, by role: the named roots (the Stack's children and
    the benchmark's own) with their descendants, and, when they run here, the Postgres backends of the benchmark's
    database with the Postgres server, and the Redis server. One pass over the process table per call: the
    benchmark shares the machine it measures."""

    def __init__(self, roots: Callable[[], dict[str, int]], database: str | None = None,
                 redis_port: int | None = None):
        self.roots, self.database, self.redis_port = roots, database, redis_port

    def __call__(self) -> Roles:
        table = {process.pid: process for process in psutil.process_iter(["ppid", "name"])}
        children: dict[int, list[int]] = {}
        for pid, process in table.items():
            children.setdefault(process.info["ppid"], []).append(pid)
        found: Roles = {}
        for name, root in self.roots().items():
            pending = [root]
            while pending:
                pid = pending.pop()
                pending += children.get(pid, [])
                try:
                    role = ray_role(_title(table[pid])) if name == "ray-head" else stack_role(name)
                except (KeyError, psutil.Error):  # not in the table, or gone since
                    continue
                found.setdefault(role, []).append(table[pid])
        for process in table.values():
            try:
                role = self._server_role(process)
            except psutil.Error:
                continue
            if role:
                found.setdefault(role, []).append(process)
        return found

    def _server_role(self, process: psutil.Process) -> str | None:
        name = process.info["name"]
        if self.database and name == "postgres":
            return postgres_role(_title(process), self.database)
        if self.redis_port and name == "redis-server" and _title(process).endswith(f":{self.redis_port}"):
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


@dataclass(frozen=True)
class Used:
    role: str
    parent: int
    seconds: float  # its own CPU time and that of the children it reaped


def cpu_used(roles: Roles) -> dict[int, Used]:
    """CPU time used so far by each process of each role, counting the children it reaped (Ray's exited workers,
    Postgres's exited backends)."""
    used = {}
    for role, processes in roles.items():
        for process in processes:
            try:
                times, parent = process.cpu_times(), process.ppid()
            except psutil.Error:
                continue
            used[process.pid] = Used(role, parent, times.user + times.system + times.children_user
                                     + times.children_system)
    return used


def own_cpu() -> dict[str, float]:
    """This process's CPU seconds so far: the Stack's watcher thread apart from the rest (threads that ended, the
    clients', count in the rest through the process's total)."""
    process = psutil.Process()
    times = process.cpu_times()
    watcher = next((thread.native_id for thread in threading.enumerate() if thread.name == WATCH_THREAD), None)
    watching = sum(thread.user_time + thread.system_time for thread in process.threads() if thread.id == watcher)
    return {BENCHMARK: times.user + times.system - watching, WATCHER: watching}


class CpuMeter:
    """CPU seconds each role used between `start()` and `stop()`, and this process's. A process that ended meanwhile
    is counted through its parent, which reaped it: what it had used before `start()` is taken off the parent's
    role (so Postgres's backends and server count as one role, and a replica that ended counts for the Ray head)."""

    def __init__(self, roles: Callable[[], Roles]):
        self.roles = roles
        self._before: dict[int, Used] = {}
        self._own: dict[str, float] = {}

    def start(self) -> "CpuMeter":
        self._before, self._own = cpu_used(self.roles()), own_cpu()
        return self

    def stop(self) -> dict[str, float]:
        after = cpu_used(self.roles())
        totals = {role: seconds - self._own.get(role, 0.0) for role, seconds in own_cpu().items()}
        for pid, now in after.items():
            before = self._before.get(pid)
            totals[now.role] = totals.get(now.role, 0.0) + now.seconds - (before.seconds if before else 0.0)
        for pid, ended in self._before.items():
            if pid not in after and ended.parent in after:
                role = after[ended.parent].role
                totals[role] = totals.get(role, 0.0) - ended.seconds
        return {role: max(0.0, seconds) for role, seconds in totals.items()}
