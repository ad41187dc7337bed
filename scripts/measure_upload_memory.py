"""Does the API give memory back after a burst of large uploads? The API process's resident memory (RSS, its
uvicorn workers included) at rest, at its peak during a burst of concurrent large uploads, and some seconds after
the burst, in one run.

    flock /tmp/backendai-integration.lock python -m scripts.measure_upload_memory          # 50 x ~15 MB
    flock /tmp/backendai-integration.lock python -m scripts.measure_upload_memory --json   # the figures as JSON

The API is the one `Stack.start_api` launches (uvicorn, the same command and environment as `backendai up`), alone:
no Ray, no consumers. It runs on what scripts/bench isolates, a throwaway Postgres database and a locked Redis db
when DATABASE_URL / REDIS_URL name servers, and its own temp DATA_DIR. Each upload is a noisy PNG (incompressible,
so it stays ~15 MB on the wire and is ~15 MB of pixels decoded) sent as a `background_removal` create: no consumer
reads that queue here, so the tasks stay PENDING and the figures are the upload path's alone (streaming limits,
decode, re-encode, storage write, row and message). Issue #14 saw 221 MB → 3.8 GB, 1.2 GB still held after, on the
earlier design (the API as a Ray Serve ingress). Figures and method: docs/benchmarks.md, Memory after upload
bursts. Needs the `test` extra (psutil).
"""

import argparse
import io
import json
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
import psutil
from PIL import Image

from scripts.bench import environment

MB = 2**20
TASK_TYPE = "background_removal"  # one image, no size rule; nothing consumes its queue in this run
FORM = {"task_type": TASK_TYPE, "prompt": "memory"}  # the v1 API wants a prompt even where the type ignores it


def log(line: str) -> None:
    print(f"[upload-memory] {line}", file=sys.stderr, flush=True)


def noisy_png(megabytes: float, seed: int = 0) -> tuple[bytes, int]:
    """A square RGB PNG of random pixels of about `megabytes` MiB (noise does not compress), and its side."""
    side = int((megabytes * MB / 3) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), side


def tree_rss(pid: int) -> int:
    """RSS of a process and its descendants (uvicorn's workers under `--workers N`), in bytes."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class PeakSampler:
    """Samples `tree_rss(pid)` every `interval_s` in a thread until stopped; keeps the largest."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-peak")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, tree_rss(self.pid))


@dataclass
class Burst:
    seconds: float
    peak_mb: float
    statuses: dict[str, int]
    after_mb: dict[str, float] = field(default_factory=dict)  # settle time (s) → RSS


@dataclass
class Result:
    uploads: int
    upload_mb: float
    side: int
    api_workers: int
    rest_mb: float
    bursts: list[Burst]
    machine: str
    command: str


def upload_burst(url: str, body: bytes, uploads: int) -> tuple[float, Counter]:
    """`uploads` creates at once, each from its own thread and connection; their status codes."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(uploads)

    def one() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            start.wait()
            try:
                code = str(client.post("/api/v1/tasks/create/", data=FORM,
                                       files={"image": ("noise.png", body, "image/png")}).status_code)
            except httpx.HTTPError as failed:
                code = type(failed).__name__
        with lock:
            statuses[code] += 1

    threads = [threading.Thread(target=one) for _ in range(uploads)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, statuses


def measure(args: argparse.Namespace) -> Result:
    from cli.stack import Stack  # reads the settings: only after `environment.isolate`
    from tasks.config import get_settings
    from tasks.db import migrate

    settings = get_settings()
    body, side = noisy_png(args.size_mb)
    if len(body) > settings.max_upload_bytes:
        raise SystemExit(f"the picture is {len(body) / MB:.1f} MB, over MAX_UPLOAD_BYTES "
                         f"({settings.max_upload_bytes / MB:.0f} MB): ask for a smaller --size-mb")
    log(f"{args.uploads} uploads of {len(body) / MB:.1f} MB ({side}x{side} noise) per burst, {args.bursts} "
        f"burst(s); data dir {settings.data_dir}")
    stack = Stack(settings, echo=log)
    migrate(settings.effective_database_url)
    try:
        stack.start_api()
        pid = stack.processes["api"].pid
        small, _ = noisy_png(0.05)
        warm = httpx.post(f"{stack.api_url}/api/v1/tasks/create/", data=FORM,
                          files={"image": ("small.png", small, "image/png")}, timeout=60)
        warm.raise_for_status()  # a warm-up: the create path's imports and connections, as at rest in service
        time.sleep(args.rest_s)
        rest = tree_rss(pid)
        log(f"at rest: {rest / MB:.0f} MB")
        bursts = []
        for number in range(1, args.bursts + 1):
            with PeakSampler(pid) as sampler:
                seconds, statuses = upload_burst(stack.api_url, body, args.uploads)
            burst = Burst(round(seconds, 1), round(sampler.peak / MB), dict(sorted(statuses.items())))
            log(f"burst {number}: {seconds:.1f} s, statuses {burst.statuses}, peak {burst.peak_mb:.0f} MB")
            ended = time.monotonic()
            for settle in sorted(args.after):
                time.sleep(max(0.0, ended + settle - time.monotonic()))
                burst.after_mb[f"{settle:g}"] = round(tree_rss(pid) / MB)
                log(f"  {settle:g} s after: {burst.after_mb[f'{settle:g}']:.0f} MB")
            bursts.append(burst)
    finally:
        stack.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)
    return Result(args.uploads, round(len(body) / MB, 1), side, settings.api_workers, round(rest / MB), bursts,
                  environment.machine(), " ".join(["python -m scripts.measure_upload_memory", *sys.argv[1:]]))


def table(result: Result) -> str:
    settles = list(result.bursts[0].after_mb) if result.bursts else []
    lines = [f"{result.uploads} concurrent uploads of {result.upload_mb} MB ({result.side}x{result.side} noisy "
             f"PNG), API under uvicorn with {result.api_workers} worker(s); at rest {result.rest_mb:.0f} MB.", "",
             "| burst | took (s) | statuses | peak MB (x rest) | "
             + " | ".join(f"{settle} s after, MB (x rest)" for settle in settles) + " |",
             "|---|---|---|---|" + "---|" * len(settles)]
    for number, burst in enumerate(result.bursts, 1):
        after = " | ".join(f"{mb:.0f} ({mb / result.rest_mb:.1f}x)" for mb in burst.after_mb.values())
        statuses = ", ".join(f"{count}x {code}" for code, count in burst.statuses.items())
        lines.append(f"| {number} | {burst.seconds} | {statuses} | {burst.peak_mb:.0f} "
                     f"({burst.peak_mb / result.rest_mb:.1f}x) | {after} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.measure_upload_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=50, help="concurrent uploads per burst")
    parser.add_argument("--size-mb", type=float, default=15.0, help="size of each uploaded PNG (MiB)")
    parser.add_argument("--bursts", type=int, default=1, help="bursts one after another (does a second one reuse "
                                                              "what the first left, or add to it?)")
    parser.add_argument("--after", type=float, nargs="+", default=[5.0, 30.0], metavar="S",
                        help="seconds after a burst's last answer at which to read the RSS")
    parser.add_argument("--rest-s", type=float, default=2.0, help="settle time before the at-rest reading")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    isolation = environment.isolate()  # before anything reads the settings
    # A SIGTERM (a timeout around the run) unwinds like Ctrl-C: the API is stopped and the isolation released.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = measure(args)
    finally:
        isolation.release()
    print(json.dumps(asdict(result), indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
