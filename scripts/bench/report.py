"""The results of one run as markdown, written into docs/benchmarks.md between this benchmark's markers (the rest
of the page, e.g. the hand-written comparison with the designs before and the generation benchmarks, is left as
it is)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bench import target
from scripts.bench.clients import BEFORE_ROW, IN_WORKER
from scripts.bench.processes import STACK_PARTS, Peak
from scripts.bench.profiling import Frame
from scripts.bench.stats import Summary, mib, ms, ratio

BEGIN = "<!-- scripts.bench: begin (written by `python -m scripts.bench`; edits inside are overwritten) -->"
END = "<!-- scripts.bench: end -->"
NEW_PAGE = "# Benchmarks\n\n"
UNFINISHED = ("PENDING", "PROCESSING", "RETRY")
THREADS = 6  # thread names shown per profiled process

CpuUse = dict[str, float]  # process role → CPU seconds per task or request


@dataclass
class OverheadLevel:
    clients: int
    end_to_end: Summary
    bare: Summary
    tasks_per_s: float
    parts: dict[str, Summary]
    cpu: CpuUse


@dataclass
class CreateRun:
    api: str  # which API served the creates
    clients: int
    latency: Summary
    per_s: float
    cpu_per_request: float  # of that API's processes


@dataclass
class Outcome:
    """How a batch of created tasks ended, by the rows."""

    tasks: int
    counts: dict[str, int]  # status → rows

    @property
    def missing(self) -> int:
        return self.tasks - sum(self.counts.values())

    @property
    def left(self) -> int:
        """Not finished when the benchmark stopped waiting, or without a row at all: lost."""
        return sum(self.counts.get(status, 0) for status in UNFINISHED) + self.missing

    @property
    def failed(self) -> int:
        return self.counts.get("FAILURE", 0)

    @property
    def clean(self) -> bool:
        return self.left == 0 and self.failed == 0

    def __str__(self) -> str:
        counts = ", ".join(f"{status} {count}" for status, count in sorted(self.counts.items()))
        return counts + (f", no row {self.missing}" if self.missing else "")


@dataclass
class Drain:
    seconds: float
    outcome: Outcome
    cpu: CpuUse  # per task
    connections: float | None = None  # database connections opened per task (Postgres only)
    created_s: float | None = None  # when the tasks were created during the drain: how long that took

    @property
    def opened(self) -> str:
        return "–" if self.connections is None else f"{self.connections:.2f}"

    @property
    def per_s(self) -> float:
        return self.outcome.tasks / self.seconds


@dataclass
class TargetRun:
    creates: CreateRun  # (a), through the stack's API
    creates_outcome: Outcome
    drain: Drain  # (b)
    latency: Summary  # (c), the rows' created_at → completed_at
    seen: Summary  # (c), create sent → finished seen by the polling client
    latency_outcome: Outcome
    second_api: CreateRun | None = None  # (a) again through an API with another number of uvicorn workers
    queued: Summary | None = None  # (c), the rows' created_at → started_at (claimed by the consumer)


@dataclass
class ServiceRun:
    task_type: str
    api: Summary | None = None
    handle: Summary | None = None
    model: Summary | None = None
    skipped: str | None = None
    parts: dict[str, Summary] = field(default_factory=dict)  # of the runs through the API


@dataclass
class Profile:
    title: str
    frames: list[Frame]
    samples: int
    packages: list[tuple[str, float]]  # share of samples whose innermost frame is in each package
    threads: list[tuple[str, float]] = field(default_factory=list)  # the process's CPU seconds by OS thread name
    own: list[tuple[str, float]] = field(default_factory=list)  # innermost frames by share of the samples


@dataclass
class Results:
    date: str
    machine: str
    command: str
    near_zero: str
    setup: list[str] = field(default_factory=list)
    target: TargetRun | None = None
    overhead: list[OverheadLevel] = field(default_factory=list)
    creates: list[CreateRun] = field(default_factory=list)
    drain: Drain | None = None  # of tasks queued while the consumer was paused
    services: list[ServiceRun] = field(default_factory=list)
    memory: dict[str, Peak] = field(default_factory=dict)
    profiled: str = ""  # what ran while the profiles were recorded
    profiles: list[Profile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _p50_p99(summary: Summary | None) -> str:
    return f"{ms(summary.p50)} / {ms(summary.p99)}" if summary else "–"


def _figure(figure: target.Figure, value: float, shown: str) -> str:
    verdict = "**met**" if figure.meets(value) else "**missed**"
    return f"| {figure.name} | **{shown}** | {figure.goal} | {verdict} | {figure.seed} | {figure.before} |"


def target_figures(run: TargetRun) -> list[tuple[target.Figure, float, str]]:
    """Each figure of the method with its measured value and how it is shown."""
    return [(target.CREATES_PER_S, run.creates.per_s, f"{run.creates.per_s:.1f}"),
            (target.DRAIN_PER_S, run.drain.per_s, f"{run.drain.per_s:.1f}"),
            (target.LATENCY_MS, run.latency.p50 * 1000, ms(run.latency.p50))]


def _target(run: TargetRun) -> list[str]:
    drain = run.drain
    lines = ["### The target method\n",
             f"{target.METHOD}\n",
             "| figure | measured | target | | seed Django design | this project before the consumer change |",
             "|---|---|---|---|---|---|"]
    lines += [_figure(figure, value, shown) for figure, value, shown in target_figures(run)]
    lines += ["",
              f"- (a) {run.creates.latency.count} creates through {run.creates.api}: latency p50 / p99 "
              f"{_p50_p99(run.creates.latency)} ms, {ms(run.creates.cpu_per_request)} ms of the API's CPU per "
              f"request; the tasks of (a) ended {run.creates_outcome}."]
    if run.second_api:
        lines.append(f"- (a) again through {run.second_api.api}: **{run.second_api.per_s:.1f}** creates/s, latency "
                     f"p50 / p99 {_p50_p99(run.second_api.latency)} ms.")
    lines += [f"- (b) {drain.outcome.tasks} tasks in {drain.seconds:.1f} s (created in {drain.created_s:.1f} s, "
              f"{drain.outcome.tasks / drain.created_s:.0f} creates/s while the consumers worked); ended "
              f"{drain.outcome}: left unfinished or without a row **{drain.outcome.left}**, FAILURE "
              f"**{drain.outcome.failed}**; database connections opened per task: {drain.opened}.",
              f"- (c) {run.latency.count} tasks: created_at → completed_at p50 / p99 {_p50_p99(run.latency)} ms, of "
              f"which created_at → started_at (claimed) {_p50_p99(run.queued)} ms; create sent → SUCCESS seen by the "
              f"polling client p50 / p99 {_p50_p99(run.seen)} ms; ended {run.latency_outcome}."]
    return lines


def _overhead(levels: list[OverheadLevel], near_zero: str) -> list[str]:
    lines = [f"### Orchestration overhead\n\n{near_zero}\n",
             "| clients | tasks | end-to-end p50 / p99 (ms) | bare handle call p50 / p99 (ms) | overhead p50 / p99 "
             "(ms) | end-to-end / bare (p50) | tasks/s |", "|---|---|---|---|---|---|---|"]
    for level in levels:
        overhead = level.end_to_end.minus(level.bare)
        lines.append(f"| {level.clients} | {level.end_to_end.count} | {_p50_p99(level.end_to_end)} | "
                     f"{_p50_p99(level.bare)} | {_p50_p99(overhead)} | "
                     f"{ratio(level.end_to_end.p50, level.bare.p50)} | {level.tasks_per_s:.1f} |")
    lines += ["", "Where the end-to-end time goes, by the row's timestamps (p50 / p99, ms):", "",
              "| part | " + " | ".join(f"{level.clients} client{'s' * (level.clients > 1)}" for level in levels) + " |",
              "|---|" + "---|" * len(levels)]
    for part in levels[0].parts if levels else []:
        lines.append(f"| {part} | " + " | ".join(_p50_p99(level.parts[part]) for level in levels) + " |")
    return lines


def _cpu(columns: dict[str, CpuUse], floor_s: float = 0.0005) -> list[str]:
    """CPU per task by process role, one column per phase; roles under `floor_s` everywhere are left out."""
    roles = sorted({role for use in columns.values() for role in use}, key=lambda role: -max(
        use.get(role, 0.0) for use in columns.values()))
    lines = ["### CPU per task\n",
             "CPU time per task by process (ms; the machine has "
             f"{os.cpu_count()} cores, so tasks/s can be at most {os.cpu_count()} s / the total; the servers shared "
             "with other users count their work too):", "",
             "| process | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for role in roles:
        if max(use.get(role, 0.0) for use in columns.values()) >= floor_s:
            lines.append(f"| {role} | " + " | ".join(ms(use.get(role, 0.0)) for use in columns.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{ms(sum(use.values()))}**" for use in columns.values()) + " |")
    return lines


def _creates(runs: list[CreateRun]) -> list[str]:
    lines = ["### Create throughput by API workers\n",
             "`POST /api/v1/tasks/create/` with the near-zero job's 32x32 PNG (validated, stored, row inserted, "
             "queued); the style transfer consumer was paused, so only the API, the database and Redis work.\n",
             "| API | clients | requests | requests/s | latency p50 / p99 (ms) | CPU per request of the API's "
             "processes (ms) |", "|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.api} | {run.clients} | {run.latency.count} | {run.per_s:.0f} | "
                     f"{_p50_p99(run.latency)} | {ms(run.cpu_per_request)} |")
    return lines


def _drain(drain: Drain) -> list[str]:
    return ["### Consumer drain\n",
            f"{drain.outcome.tasks} near-zero tasks waiting on the queue (created while its consumer was paused) "
            "when the consumer takes messages again: the consumer side alone, from its resumption to the last "
            "SUCCESS.\n",
            "| tasks | time to all finished (s) | tasks/s | outcome | left unfinished or without a row | FAILURE | "
            "database connections opened per task |", "|---|---|---|---|---|---|---|",
            f"| {drain.outcome.tasks} | {drain.seconds:.1f} | {drain.per_s:.1f} | {drain.outcome} | "
            f"{drain.outcome.left} | {drain.outcome.failed} | {drain.opened} |"]


def _services(services: list[ServiceRun]) -> list[str]:
    lines = ["### Services at 512x512\n",
             "One client, one task at a time. *Plain model*: the model class of `deployments/` called in the "
             "benchmark's process (one thread, as the replicas run); *Serve handle*: the deployment(s) called by "
             "handle as the consumer does, nothing stored.\n",
             "| service | through the API p50 / p99 (ms) | Serve handle p50 (ms) | plain model p50 (ms) | "
             "API / model (p50) | API − model (p50, ms) | of which request → row built (p50, ms) | claimed → "
             "SUCCESS (p50, ms) |", "|---|---|---|---|---|---|---|---|"]
    for run in services:
        if run.skipped:
            lines.append(f"| {run.task_type} | skipped: {run.skipped} | | | | | | |")
            continue
        assert run.api and run.handle and run.model
        lines.append(f"| {run.task_type} | {_p50_p99(run.api)} | {ms(run.handle.p50)} | {ms(run.model.p50)} | "
                     f"{ratio(run.api.p50, run.model.p50)} | {ms(run.api.p50 - run.model.p50)} | "
                     f"{ms(run.parts[BEFORE_ROW].p50)} | {ms(run.parts[IN_WORKER].p50)} |")
    return lines


def _memory(memory: dict[str, Peak]) -> list[str]:
    lines = ["### Peak memory (RSS, MiB, sampled every 0.5 s over the whole run; shared pages count in each "
             "process)\n",
             "| process | processes | peak of one | peak of all together |", "|---|---|---|---|"]
    for role, peak in sorted(memory.items(), key=lambda item: -item[1].total):
        lines.append(f"| {role} | {peak.processes} | {mib(peak.single)} | {mib(peak.total)} |")
    return lines


def _profiles(scenario: str, profiles: list[Profile]) -> list[str]:
    lines = ["### Profiles (py-spy)\n", f"Recorded during {scenario}.\n"]
    for profile in profiles:
        packages = ", ".join(f"{name} {share:.0%}" for name, share in profile.packages)
        lines.append(f"**{profile.title}** ({profile.samples} samples). Innermost Python frame by package: "
                     f"{packages}.\n")
        if profile.threads:
            total = sum(seconds for _, seconds in profile.threads)
            shares = ", ".join(f"`{name}` {seconds / total:.0%}" for name, seconds in profile.threads[:THREADS])
            lines.append(f"Its CPU by OS thread ({total:.1f} s in all; Python threads carry the process's name, "
                         f"py-spy sees only those): {shares}.\n")
        lines += ["Frames by share of the samples on the stack (inclusive) and on top (own):\n",
                  "| frame | inclusive | own |", "|---|---|---|"]
        lines += [f"| `{frame.name}` | {frame.inclusive:.0%} | {frame.own:.0%} |" for frame in profile.frames]
        if profile.own:
            lines += ["", "Innermost frames (own): " + ", ".join(f"`{name}` {share:.0%}" for name, share in profile.own)
                      + "."]
        lines.append("")
    return lines


def _largest(cpu: CpuUse) -> str:
    role, most = max(cpu.items(), key=lambda item: item[1])
    return f"{role} ({ms(most)} ms)"


def summary_lines(results: Results) -> list[str]:
    """The run's headline facts, derived from its own figures."""
    lines = []
    if results.target:
        run = results.target
        figures = [f"{figure.name.split(' ', 1)[0]} {shown} {figure.unit} ({'met' if figure.meets(value) else 'missed'}"
                   f": target {figure.goal})" for figure, value, shown in target_figures(run)]
        lost = run.creates_outcome.left + run.drain.outcome.left + run.latency_outcome.left
        failed = run.creates_outcome.failed + run.drain.outcome.failed + run.latency_outcome.failed
        total = sum(run.drain.cpu.values())
        lines += [f"Target method: {'; '.join(figures)}. Lost {lost}, failed {failed}.",
                  f"CPU per task in the drain (b): {ms(total)} ms in all, so at most "
                  f"{(os.cpu_count() or 1) / total:.0f} tasks/s on this machine; the largest process: "
                  f"{_largest(run.drain.cpu)}."]
    for level in results.overhead:
        part, largest = max(level.parts.items(), key=lambda item: item[1].p50)
        lines.append(f"End to end (SSE) at {level.clients} client{'s' * (level.clients > 1)}: p50 "
                     f"{ms(level.end_to_end.p50)} ms against {ms(level.bare.p50)} ms for the bare handle call "
                     f"({ratio(level.end_to_end.p50, level.bare.p50)}); the largest part is *{part}* "
                     f"(p50 {ms(largest.p50)} ms).")
    if results.overhead:
        busiest = results.overhead[-1]
        total = sum(busiest.cpu.values())
        lines.append(f"CPU per task end to end at {busiest.clients} clients: {ms(total)} ms in all, so at most "
                     f"{(os.cpu_count() or 1) / total:.0f} tasks/s on this machine (measured "
                     f"{busiest.tasks_per_s:.1f}); the API takes {ms(busiest.cpu.get(STACK_PARTS['api'], 0.0))} ms "
                     f"of it; the largest process: {_largest(busiest.cpu)}.")
    half = len(results.creates) // 2  # the runs through one API, then the same client counts through the other
    for one, other in zip(results.creates[:half], results.creates[half:], strict=True):
        lines.append(f"Create at {one.clients} clients, consumers paused: {other.api} serves "
                     f"{ratio(other.per_s, one.per_s)} the requests/s of {one.api} ({other.per_s:.0f} against "
                     f"{one.per_s:.0f}).")
    if results.drain:
        drain = results.drain
        lines.append(f"Consumer drain: {drain.outcome.tasks} queued tasks at {drain.per_s:.0f} tasks/s; left "
                     f"{drain.outcome.left}, failed {drain.outcome.failed}.")
    return lines


def render(results: Results) -> str:
    lines = ["## Orchestration", "",
             f"Run on {results.date}: `{results.command}`", "",
             f"- Machine: {results.machine}", *(f"- {line}" for line in results.setup), "",
             "### Summary", "", *(f"- {line}" for line in summary_lines(results)), ""]
    lines += (_target(results.target) + [""]) if results.target else []
    lines += (_overhead(results.overhead, results.near_zero) + [""]) if results.overhead else []
    lines += (_creates(results.creates) + [""]) if results.creates else []
    lines += (_drain(results.drain) + [""]) if results.drain else []
    columns = {"target drain (b)": results.target.drain.cpu} if results.target else {}
    columns |= {f"end to end, {level.clients} client{'s' * (level.clients > 1)}": level.cpu
                for level in results.overhead}
    columns |= {"consumer drain": results.drain.cpu} if results.drain else {}
    lines += (_cpu(columns) + [""]) if columns else []
    lines += (_services(results.services) + [""]) if results.services else []
    lines += (_memory(results.memory) + [""]) if results.memory else []
    lines += _profiles(results.profiled, results.profiles) if results.profiles else []
    lines += [f"- {note}" for note in results.notes]
    return "\n".join(lines).rstrip() + "\n"


def write_section(page: Path, section: str) -> None:
    """Replace this benchmark's block of `page`, or add it before the page's first section (a new page gets a
    short header that points to both benchmarks)."""
    block = f"{BEGIN}\n{section}{END}\n"
    text = page.read_text() if page.exists() else NEW_PAGE
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].removeprefix("\n")
    elif "\n## " in text:
        head, rest = text.split("\n## ", 1)
        text = f"{head}\n{block}\n## {rest}"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
