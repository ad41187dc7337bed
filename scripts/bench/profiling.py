"""py-spy profiles of a running process (tree), reduced to the frames that take the most of its samples, and the
process's CPU by OS thread (what py-spy cannot see: threads without Python frames)."""

import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

# A raw (collapsed) py-spy line: `[process <pid>:"<cmd>";…]thread (<tid>): <name>;<frame>;…;<frame> <count>`,
# each frame `<function> (<file>:<line>)`; with --subprocesses a child's stacks start with its parents' processes.
PROCESS_ROOT = re.compile(r'^process (\d+):')
THREAD_ROOT = re.compile(r"^thread \(\w+\)(?:: ?(.*))?$")  # a thread without a name has no ": <name>"
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):\d+\)$")
TRIVIAL_SHARE = 0.97  # frames on (nearly) every sample say nothing: the thread's entry points
THREAD_ENTRY = re.compile(r"^Thread\.(run|_bootstrap\w*) \(threading\.py\)$")  # on every sample of a thread


def py_spy() -> str | None:
    return shutil.which("py-spy")


@dataclass(frozen=True)
class Frame:
    name: str  # function (module path)
    inclusive: float  # share of the samples with this frame on the stack
    own: float  # share of the samples with this frame on top


def short_path(path: str) -> str:
    """`sqlalchemy/engine/base.py` rather than the full site-packages path."""
    for marker in ("site-packages/", "dist-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            return path.split("/", 1)[1] if marker == "lib/python3" and "/" in path else path
    parts = Path(path).parts
    return "/".join(parts[-2:])


@dataclass(frozen=True)
class Sample:
    pid: int | None
    thread: str
    frames: tuple[str, ...]
    count: int


def parse_raw(text: str) -> list[Sample]:
    stacks = []
    for line in text.splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        parts = body.split(";")
        pid = None
        while parts and (process := PROCESS_ROOT.match(parts[0])):  # with --subprocesses: parent;child;…
            pid, parts = int(process[1]), parts[1:]
        thread = THREAD_ROOT.match(parts[0]) if parts else None
        if thread:
            parts = parts[1:]
        frames = []
        for part in parts:
            frame = FRAME.match(part)
            frames.append(f"{frame['function']} ({short_path(frame['file'])})" if frame else part)
        stacks.append(Sample(pid, (thread[1] or "") if thread else "", tuple(frames), int(count)))
    return stacks


def top_frames(stacks: list[Sample], limit: int = 12) -> tuple[list[Frame], int]:
    """The frames with the largest inclusive share, leaving out entry points on (nearly) every sample and, of a
    call chain without branches (frames on exactly the same samples), all but the innermost frame."""
    total = sum(stack.count for stack in stacks)
    if not total:
        return [], 0
    samples: dict[str, set[int]] = {}
    depth: dict[str, int] = {}
    own: Counter[str] = Counter()
    for number, stack in enumerate(stacks):
        for index, frame in enumerate(stack.frames):
            samples.setdefault(frame, set()).add(number)
            depth[frame] = max(depth.get(frame, 0), index)
        if stack.frames:
            own[stack.frames[-1]] += stack.count
    innermost: dict[frozenset[int], str] = {}
    for frame, members in samples.items():
        key = frozenset(members)
        if key not in innermost or depth[frame] > depth[innermost[key]]:
            innermost[key] = frame
    shares = [(sum(stacks[number].count for number in members) / total, frame)
              for members, frame in innermost.items()]
    ranked = sorted((share, frame) for share, frame in shares
                    if share < TRIVIAL_SHARE and not THREAD_ENTRY.match(frame))[::-1][:limit]
    return [Frame(frame, share, own[frame] / total) for share, frame in ranked], total


def top_own(stacks: list[Sample], limit: int = 8) -> list[tuple[str, float]]:
    """The innermost frames with the largest share of the samples: where the time is spent, under the wrappers
    (middleware, executors) that lead the inclusive ranking."""
    total = sum(stack.count for stack in stacks)
    own: Counter[str] = Counter()
    for stack in stacks:
        if stack.frames:
            own[stack.frames[-1]] += stack.count
    return [(frame, count / total) for frame, count in own.most_common(limit)] if total else []


def below(stacks: list[Sample], function: str) -> list[Sample]:
    """The samples inside `function`, cut to start there (what called it is the same on every sample)."""
    inside = []
    for stack in stacks:
        start = next((index for index, frame in enumerate(stack.frames) if frame.startswith(f"{function} (")), None)
        if start is not None:
            inside.append(replace(stack, frames=stack.frames[start:]))
    return inside


def package(frame: str) -> str:
    """`sqlalchemy` for `Connection.execute (sqlalchemy/engine/base.py)`, `threading` for the stdlib module."""
    path = frame.rsplit(" (", 1)[-1].rstrip(")")
    return path.split("/", 1)[0].removesuffix(".py")


def own_by_package(stacks: list[Sample], limit: int = 6) -> list[tuple[str, float]]:
    """Share of the samples whose innermost Python frame lies in each package (time in C code, e.g. sqlite3 or a
    socket read, counts for the Python frame that called it)."""
    total = sum(stack.count for stack in stacks)
    owners: Counter[str] = Counter()
    for stack in stacks:
        owners[package(stack.frames[-1]) if stack.frames else "(no Python frame)"] += stack.count
    return [(name, count / total) for name, count in owners.most_common(limit)] if total else []


class Recording:
    """`py-spy record` of `pid` (and its children) into a raw file, from `start()` until `stop()`: with `gil`, only
    the thread holding the GIL (the Python code that runs: waits and GIL contention left out), with `idle` every
    thread, waiting or not (wall clock)."""

    def __init__(self, pid: int, output: Path, idle: bool = False, gil: bool = False, subprocesses: bool = False,
                 rate: int = 100):
        self.output, self.rate = output, rate
        self.command = [py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                        "--output", str(output), "--nonblocking", "--threads", "--full-filenames"]
        self.command += ["--idle"] if idle else []
        self.command += ["--gil"] if gil else []
        self.command += ["--subprocesses"] if subprocesses else []
        self.process: subprocess.Popen | None = None

    def start(self) -> "Recording":
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def stop(self) -> list[Sample]:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        _, errors = self.process.communicate(timeout=60)
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {errors.strip()[-500:]}")
        return parse_raw(self.output.read_text())

    def busy(self, samples: int, seconds: float) -> float:
        """With `gil`: the share of `seconds` during which some thread of the process held the GIL."""
        return samples / (seconds * self.rate)


def thread_group(name: str) -> str:
    """`grpc_global_tim` for itself, `worker.io` for `worker.io3`: threads of one pool together."""
    return re.sub(r"[-_.:]?\d+$", "", name) or name


class ThreadCpu:
    """CPU seconds of one process's OS threads between `start()` and `stop()`, by thread name. Python 3.11 names no
    OS thread, so every Python thread carries the process's name; Ray's and gRPC's C++ threads have their own."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self._before: dict[int, float] = {}

    def _read(self) -> dict[int, tuple[str, float]]:
        threads = {}
        for thread in self.process.threads():
            try:
                name = Path(f"/proc/{self.process.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:  # ended meanwhile
                continue
            threads[thread.id] = (thread_group(name), thread.user_time + thread.system_time)
        return threads

    def start(self) -> "ThreadCpu":
        self._before = {tid: used for tid, (_, used) in self._read().items()}
        return self

    def stop(self) -> list[tuple[str, float]]:
        """(thread name, CPU seconds), largest first."""
        groups: Counter[str] = Counter()
        for tid, (name, used) in self._read().items():
            groups[name] += used - self._before.get(tid, 0.0)
        return [(name, seconds) for name, seconds in groups.most_common() if seconds > 0]
