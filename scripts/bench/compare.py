"""`--vs-peer PATH`: the target method's three figures for the seed's Django + Celery design (a runnable copy at
PATH) and for this project, measured back to back in one run by the same clients, and their ratios. Only pure
logic here (the figures, the ratios, where the peer's Python comes from, the printed lines); the runs are in
scripts/bench/run.py and scripts/bench/peer.py."""

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.bench import target
from scripts.bench.report import Outcome

PEER_REQUIREMENTS = "requirements.txt"
PEER_MARKERS = ("manage.py", PEER_REQUIREMENTS)  # what makes a folder the peer
PEER_OWN_VENV = ".venv"  # where the peer's README creates its venv
PEER_VENVS = Path("~/.cache/backendai/peer-venvs").expanduser()  # else made here, outside the peer's folder
# The targets, as ratios of this project's figure to the seed design's in the same run.
RATIO_TARGETS = {"creates": (1.5, True), "drain": (1.5, True), "latency": (1.0, False)}
CPU_TARGET_MS = 10.0  # CPU per task in the drain, every process of the stack together


@dataclass
class Figures:
    """One design's figures by the target method, with the load average before and after its run."""

    design: str
    creates_per_s: float
    drain_per_s: float
    latency_p50_ms: float
    lost: int  # tasks of the run left unfinished or without a row
    failed: int
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)  # in the drain, by process role
    load: tuple[str, str] = ("", "")

    @property
    def cpu_total_ms(self) -> float:
        return sum(self.cpu_ms_per_task.values())

    @classmethod
    def of(cls, design: str, creates_per_s: float, drain_s: float, latency_p50_s: float, outcomes: list[Outcome],
           cpu_s_per_task: dict[str, float], load: tuple[str, str]) -> "Figures":
        drained = outcomes[1].tasks
        return cls(design, creates_per_s, drained / drain_s, latency_p50_s * 1000,
                   sum(found.left for found in outcomes), sum(found.failed for found in outcomes),
                   {role: seconds * 1000 for role, seconds in sorted(cpu_s_per_task.items(), key=lambda kv: -kv[1])},
                   load)


def ratios(project: Figures, peer: Figures) -> dict[str, float]:
    """This project's figure over the seed design's: above 1 is better for the rates, below 1 for the latency."""
    return {"creates": project.creates_per_s / peer.creates_per_s, "drain": project.drain_per_s / peer.drain_per_s,
            "latency": project.latency_p50_ms / peer.latency_p50_ms}


def verdicts(found: dict[str, float], project: Figures) -> dict[str, bool]:
    """Which targets the run met: the three ratios, nothing lost or failed, and the CPU per task."""
    met = {name: (found[name] >= goal if higher else found[name] <= goal)
           for name, (goal, higher) in RATIO_TARGETS.items()}
    met["nothing lost"] = project.lost == 0 and project.failed == 0
    met["cpu per task"] = project.cpu_total_ms <= CPU_TARGET_MS
    return met


def peer_folder(path: str | None) -> tuple[Path | None, str | None]:
    """The peer's folder, or None and why it is not measured (no path given, absent, not the peer)."""
    if not path:
        return None, None
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        return None, f"the peer folder {path} is absent: measuring this project alone"
    missing = [name for name in PEER_MARKERS if not (folder / name).is_file()]
    if missing:
        return None, f"{path} is not the seed design's runnable copy (no {', '.join(missing)}): measuring this " \
                     "project alone"
    return folder, None


def peer_venv(folder: Path, cache: Path) -> Path:
    """Where the peer's venv is made when none is given: outside the peer's folder (it may be read-only), one per
    requirements file, so that a changed file gets a venv of its own."""
    digest = hashlib.sha256((folder / PEER_REQUIREMENTS).read_bytes()).hexdigest()[:12]
    return cache / f"{folder.name}-{digest}"


def peer_python(folder: Path, given: str | None, cache: Path) -> tuple[Path, bool]:
    """The peer's Python: `--peer-python`, else the venv the peer's README makes in its folder, else a venv in
    `cache`; and whether that one still has to be made."""
    if given:
        return Path(given), False
    for venv in (folder / PEER_OWN_VENV, peer_venv(folder, cache)):
        if (venv / "bin" / "python").exists():
            return venv / "bin" / "python", False
    return peer_venv(folder, cache) / "bin" / "python", True


def lines(project: Figures, peer: Figures | None) -> list[str]:
    """The side-by-side figures and, with the peer measured, the ratios against their targets."""
    designs = [figures for figures in (peer, project) if figures]
    out = [f"{'':32}" + "".join(f"{figures.design:>26}" for figures in designs)]
    for label, key, unit in (("(a) creates/s", "creates_per_s", ""), ("(b) drain, tasks/s", "drain_per_s", ""),
                             ("(c) created → completed p50", "latency_p50_ms", " ms"),
                             ("CPU per task in (b)", "cpu_total_ms", " ms")):
        out.append(f"{label:32}" + "".join(f"{getattr(figures, key):>23.1f}{unit:3}" for figures in designs))
    out.append(f"{'lost / failed':32}" + "".join(f"{f'{figures.lost} / {figures.failed}':>26}" for figures in designs))
    for label, moment in (("load average before", 0), ("load average after", 1)):
        out.append(f"{label:32}" + "".join(f"{figures.load[moment]:>26}" for figures in designs))
    if peer:
        found = ratios(project, peer)
        met = verdicts(found, project)
        for name, (goal, higher) in RATIO_TARGETS.items():
            out.append(f"ratio {name}: {found[name]:.2f}x (target {'≥' if higher else '≤'} {goal:g}x): "
                       f"{'met' if met[name] else 'missed'}")
    return out


def summary(project: Figures, peer: Figures | None, note: str | None, date: str) -> dict:
    """The run as one JSON document (the command's last line)."""
    found = ratios(project, peer) if peer else None
    return {"date": date, "method": target.METHOD, "project": asdict(project), "peer": asdict(peer) if peer else None,
            "ratios": found, "met": verdicts(found, project) if found else None, "note": note}
