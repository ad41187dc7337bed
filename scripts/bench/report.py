"""The results of one run as markdown, written into docs/benchmarks.md between this benchmark's markers (the rest
of the page, e.g. the generation benchmarks' section, is left as it is)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bench.clients import BEFORE_ROW, IN_WORKER
from scripts.bench.processes import Peak, is_serve_ingress
from scripts.bench.profiling import Frame
from scripts.bench.stats import Summary, mib, ms, ratio

BEGIN = "<!-- scripts.bench: begin (written by `python -m scripts.bench`; edits inside are overwritten) -->"
END = "<!-- scripts.bench: end -->"
NEW_PAGE = "# Benchmarks\n\n"


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
class IngressRun:
    ingress: str
    clients: int
    latency: Summary
    per_s: float
    cpu_per_request: float  # the processes that serve HTTP


@dataclass
class Drain:
    tasks: int
    seconds: float
    outcome: dict[str, int]  # status → tasks
    cpu: CpuUse

    @property
    def lost(self) -> int:
        return self.outcome.get("PENDING", 0)

    @property
    def stuck(self) -> int:
        return self.outcome.get("PROCESSING", 0) + self.outcome.get("RETRY", 0)


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


@dataclass
class Results:
    date: str
    machine: str
    command: str
    near_zero: str
    setup: list[str] = field(default_factory=list)
    overhead: list[OverheadLevel] = field(default_factory=list)
    ingress: list[IngressRun] = field(default_factory=list)
    drain: Drain | None = None
    services: list[ServiceRun] = field(default_factory=list)
    memory: dict[str, Peak] = field(default_factory=dict)
    profiles: list[Profile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _p50_p99(summary: Summary | None) -> str:
    return f"{ms(summary.p50)} / {ms(summary.p99)}" if summary else "–"


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
    lines = ["CPU time per task by process (ms; the machine has "
             f"{os.cpu_count()} cores, so tasks/s can be at most {os.cpu_count()} s / the total):", "",
             "| process | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for role in roles:
        if max(use.get(role, 0.0) for use in columns.values()) >= floor_s:
            lines.append(f"| {role} | " + " | ".join(ms(use.get(role, 0.0)) for use in columns.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{ms(sum(use.values()))}**" for use in columns.values()) + " |")
    return lines


def _ingress(runs: list[IngressRun]) -> list[str]:
    lines = ["### Create throughput\n",
             "`POST /api/v1/tasks/create/` with the near-zero job's 32x32 PNG (validated, stored, row inserted, "
             "queued); the workers were paused, so only the ingress, the database and Redis work.\n",
             "| ingress | clients | requests | requests/s | latency p50 / p99 (ms) | CPU per request of the "
             "HTTP processes (ms) |", "|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.ingress} | {run.clients} | {run.latency.count} | {run.per_s:.0f} | "
                     f"{_p50_p99(run.latency)} | {ms(run.cpu_per_request)} |")
    return lines


def _drain(drain: Drain) -> list[str]:
    outcome = ", ".join(f"{status} {count}" for status, count in sorted(drain.outcome.items()))
    return ["### Drain\n",
            f"{drain.tasks} near-zero tasks waiting on the queue when the workers start consuming.\n",
            "| tasks | time to all finished (s) | tasks/s | outcome | lost (PENDING) | stuck (PROCESSING/RETRY) |",
            "|---|---|---|---|---|---|",
            f"| {drain.tasks} | {drain.seconds:.1f} | {drain.tasks / drain.seconds:.1f} | {outcome} | "
            f"{drain.lost} | {drain.stuck} |"]


def _services(services: list[ServiceRun]) -> list[str]:
    lines = ["### Services at 512x512\n",
             "One client, one task at a time. *Plain model*: the model class of `deployments/` called in the "
             "benchmark's process (one thread, as the replicas run); *Serve handle*: the deployment(s) called by "
             "handle as the worker does, nothing stored.\n",
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
    lines = ["### Peak memory (RSS, MiB, sampled every 0.5 s over the whole run)\n",
             "| process | processes | peak of one | peak of all together |", "|---|---|---|---|"]
    for role, peak in sorted(memory.items(), key=lambda item: -item[1].total):
        lines.append(f"| {role} | {peak.processes} | {mib(peak.single)} | {mib(peak.total)} |")
    return lines


def _profiles(profiles: list[Profile]) -> list[str]:
    lines = ["### Profiles (py-spy)\n"]
    for profile in profiles:
        packages = ", ".join(f"{name} {share:.0%}" for name, share in profile.packages)
        lines += [f"**{profile.title}** ({profile.samples} samples). Innermost Python frame by package: {packages}. "
                  "Frames by share of the samples on the stack (inclusive) and on top (own):\n",
                  "| frame | inclusive | own |", "|---|---|---|"]
        lines += [f"| `{frame.name}` | {frame.inclusive:.0%} | {frame.own:.0%} |" for frame in profile.frames]
        lines.append("")
    return lines


def _summary(results: Results) -> list[str]:
    """The run's headline facts, derived from its own figures."""
    lines = []
    for level in results.overhead:
        part, largest = max(level.parts.items(), key=lambda item: item[1].p50)
        lines.append(f"End to end at {level.clients} client{'s' * (level.clients > 1)}: p50 "
                     f"{ms(level.end_to_end.p50)} ms against {ms(level.bare.p50)} ms for the bare handle call "
                     f"({ratio(level.end_to_end.p50, level.bare.p50)}); the largest part is *{part}* "
                     f"(p50 {ms(largest.p50)} ms).")
    if results.overhead:
        busiest = results.overhead[-1]
        total = sum(busiest.cpu.values())
        ingress = sum(seconds for role, seconds in busiest.cpu.items() if is_serve_ingress(role))
        role, most = max(busiest.cpu.items(), key=lambda item: item[1])
        lines.append(f"CPU per task end to end at {busiest.clients} clients: {ms(total)} ms in all, so at most "
                     f"{(os.cpu_count() or 1) / total:.0f} tasks/s on this machine (measured "
                     f"{busiest.tasks_per_s:.1f}); the Serve ingress (HTTP proxy + API replica) takes "
                     f"{ms(ingress)} ms of it ({ingress / total:.0%}); the largest single process: {role} "
                     f"({ms(most)} ms).")
    by_key = {(run.ingress, run.clients): run for run in results.ingress}
    for clients in sorted({run.clients for run in results.ingress}):
        serve, plain = by_key.get(("Ray Serve", clients)), by_key.get(("plain uvicorn", clients))
        if serve and plain:
            lines.append(f"Create at {clients} clients: the Serve ingress spends "
                         f"{ratio(serve.cpu_per_request, plain.cpu_per_request)} the CPU per request of plain "
                         f"uvicorn ({ms(serve.cpu_per_request)} against {ms(plain.cpu_per_request)} ms); plain uvicorn "
                         f"serves {ratio(plain.per_s, serve.per_s)} its requests/s.")
    if results.drain:
        drain = results.drain
        lines.append(f"Drain: {drain.tasks} tasks at {drain.tasks / drain.seconds:.0f} tasks/s; lost {drain.lost}, "
                     f"stuck {drain.stuck}, failed {drain.outcome.get('FAILURE', 0)}.")
    return ["### Summary", "", *(f"- {line}" for line in lines)]


def render(results: Results) -> str:
    lines = ["## Orchestration", "",
             f"Run on {results.date}: `{results.command}`", "",
             f"- Machine: {results.machine}", *(f"- {line}" for line in results.setup), ""]
    lines += _summary(results) + [""]
    lines += _overhead(results.overhead, results.near_zero) + [""]
    lines += (_ingress(results.ingress) + [""]) if results.ingress else []
    lines += (_drain(results.drain) + [""]) if results.drain else []
    columns = {f"end to end, {level.clients} client{'s' * (level.clients > 1)}": level.cpu
               for level in results.overhead}
    columns |= {"drain": results.drain.cpu} if results.drain else {}
    lines += _cpu(columns) + [""]
    lines += (_services(results.services) + [""]) if results.services else []
    lines += (_memory(results.memory) + [""]) if results.memory else []
    lines += _profiles(results.profiles) if results.profiles else []
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
