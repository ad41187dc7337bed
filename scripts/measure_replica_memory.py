"""Does a model replica give memory back after a run of large jobs? A model's resident memory (RSS) at rest after
loading it, at its peak during a few large jobs and some seconds after them, once as is and once with glibc's
mmap threshold fixed at 1 MiB first (`return_large_buffers_to_the_system`, as the API does), in one run.

    flock /tmp/backendai-integration.lock python -m scripts.measure_replica_memory          # 4 x 1024² x4 enhance
    flock /tmp/backendai-integration.lock python -m scripts.measure_replica_memory --json   # the figures as JSON

Each measurement is a fresh process holding the plain model class (`Enhancer`, `BackgroundRemover`; no Ray), on
the CPU, from MODELS_DIR. The jobs are submitted at once and run as a replica runs them: each request's generator
stepped by `stream_in_thread` in its own worker thread, behind the deployment's lock where it has one (enhancement:
one job at a time). Inputs are noisy PNGs (noise does not compress). Issue #14 saw an idle ImageEnhancement replica
hold 14 GB after 6 cancelled x4plus jobs. Figures and method: docs/benchmarks.md, Memory after model jobs.
Needs the `test` extra (psutil).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

MB = 2**20
DEPLOYMENTS = ("enhancement", "background_removal")
VARIANTS = ("as_is", "mmap_threshold")


def log(line: str) -> None:
    print(f"[replica-memory] {line}", file=sys.stderr, flush=True)


def rss() -> int:
    return psutil.Process().memory_info().rss


@dataclass
class Run:
    deployment: str
    variant: str
    jobs: int
    input_side: int
    parameters: dict
    seconds: float
    rest_mb: float
    peak_mb: float
    after_mb: float


@dataclass
class Result:
    runs: list[Run]
    after_s: float
    machine: str
    command: str


def model_and_lock(deployment: str, args: argparse.Namespace):
    """The plain model, its per-request parameters and the lock its deployment holds around a job (or None)."""
    from tasks.config import get_settings

    models_dir = Path(os.environ.get("MODELS_DIR") or get_settings().models_dir)
    if deployment == "enhancement":
        from deployments.image_enhancement import Enhancer

        model = Enhancer(models_dir, args.enhancement_model, device="cpu")
        return model, {"scale": args.scale, "model": args.enhancement_model}, threading.Lock()
    from deployments.background_removal import BackgroundRemover

    return BackgroundRemover(models_dir, "u2netp"), {}, None  # BackgroundRemoval runs its jobs side by side


def child(args: argparse.Namespace) -> Run:
    """One measurement, in this (fresh) process: print it as JSON."""
    if args.variant == "mmap_threshold":
        from deployments.memory import return_large_buffers_to_the_system

        if not return_large_buffers_to_the_system():
            raise SystemExit("mallopt is not available here (not glibc?)")
    from deployments.events import paced, stream_in_thread
    from scripts.measure_upload_memory import noisy_png

    model, parameters, lock = model_and_lock(args.deployment, args)
    small, _ = noisy_png(0.05, seed=1)
    list(model.run(small, parameters))  # a warm-up: lazy imports and the first inference's one-off allocations
    body, side = noisy_png(args.side**2 * 3 / MB)

    async def one() -> None:
        async for event in stream_in_thread(paced(model.run(body, parameters)), lock):
            if "result" in event:
                return

    async def all_jobs() -> None:
        await asyncio.gather(*(one() for _ in range(args.jobs)))

    time.sleep(args.rest_s)
    rest = rss()
    peak, stop = [rest], threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    asyncio.run(all_jobs())  # the loop's executor threads stay alive until it closes, as a replica's do for good
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], rss())
    time.sleep(args.after)
    return Run(args.deployment, args.variant, args.jobs, side, parameters, round(seconds, 1), round(rest / MB),
               round(peak[0] / MB), round(rss() / MB))


def measure(args: argparse.Namespace) -> Result:
    runs = []
    for deployment in args.deployments:
        for variant in VARIANTS:
            command = [sys.executable, "-m", "scripts.measure_replica_memory", "--child", deployment, "--variant",
                       variant, *args.passed]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            run = Run(**json.loads(done.stdout))
            log(f"{deployment}, {variant}: {run.jobs} jobs in {run.seconds} s; rest {run.rest_mb:.0f} MB, "
                f"peak {run.peak_mb:.0f} MB, {args.after:g} s after {run.after_mb:.0f} MB")
            runs.append(run)
    return Result(runs, args.after, machine(),
                  " ".join(["python -m scripts.measure_replica_memory", *sys.argv[1:]]))


def machine() -> str:
    from scripts.bench import environment

    return environment.machine()


def table(result: Result) -> str:
    lines = ["| model | variant | jobs | input | took (s) | at rest MB | peak MB (x rest) | "
             f"{result.after_s:g} s after, MB (x rest) |", "|---|---|---|---|---|---|---|---|"]
    for run in result.runs:
        lines.append(f"| {run.deployment} {json.dumps(run.parameters)} | {run.variant} | {run.jobs} | "
                     f"{run.input_side}² | {run.seconds} | {run.rest_mb:.0f} | {run.peak_mb:.0f} "
                     f"({run.peak_mb / run.rest_mb:.1f}x) | {run.after_mb:.0f} ({run.after_mb / run.rest_mb:.1f}x) |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.measure_replica_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", nargs="+", choices=DEPLOYMENTS, default=list(DEPLOYMENTS))
    parser.add_argument("--jobs", type=int, default=4, help="jobs submitted at once")
    parser.add_argument("--side", type=int, default=1024, help="side of each (square, noisy) input image")
    parser.add_argument("--enhancement-model", default="realesr-animevideov3")
    parser.add_argument("--scale", type=int, default=4, help="enhancement scale")
    parser.add_argument("--after", type=float, default=5.0, help="seconds after the last job to read the RSS")
    parser.add_argument("--rest-s", type=float, default=2.0, help="settle time before the at-rest reading")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--child", choices=DEPLOYMENTS, dest="deployment", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, default="as_is", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.passed = ["--jobs", str(args.jobs), "--side", str(args.side), "--enhancement-model",
                   args.enhancement_model, "--scale", str(args.scale), "--after", str(args.after),
                   "--rest-s", str(args.rest_s)]
    return args


def main() -> int:
    args = parse_args()
    if args.deployment:
        print(json.dumps(asdict(child(args))))
        return 0
    result = measure(args)
    print(json.dumps(asdict(result), indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
