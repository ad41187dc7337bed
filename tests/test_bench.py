"""The benchmark's own logic, without a stack: process roles, profile parsing, the target figures and the page it
writes (scripts/bench)."""

from pathlib import Path
from types import SimpleNamespace

from scripts.bench import compare, target
from scripts.bench.processes import (
    BENCHMARK,
    POSTGRES,
    RAY_SYSTEM,
    SERVE_CONTROLLER,
    STACK_PARTS,
    CpuMeter,
    postgres_role,
    ray_role,
    stack_role,
)
from scripts.bench.profiling import below, own_by_package, parse_raw, thread_group, top_frames, top_own
from scripts.bench.report import BEGIN, END, CreateRun, Drain, Outcome, Results, TargetRun, render, write_section
from scripts.bench.stats import Summary

RAW = """\
process 10:"celery worker";process 11:"celery worker";thread (11): MainThread;main (celery/bin.py:1);\
process_ai_task (/repo/tasks/processing.py:5);_update (/repo/tasks/state_writes.py:9);do_execute \
(/x/site-packages/sqlalchemy/engine/default.py:3) 6
process 10:"celery worker";process 11:"celery worker";thread (11): MainThread;main (celery/bin.py:1);\
process_ai_task (/repo/tasks/processing.py:5);__next__ (/x/site-packages/ray/serve/handle.py:7) 3
process 10:"celery worker";process 11:"celery worker";thread (11): MainThread;main (celery/bin.py:1);\
_recv (/x/site-packages/billiard/connection.py:2) 1
thread (12) 2
"""


def test_worker_profile_is_cut_at_the_task_and_ranked_by_share():
    stacks = parse_raw(RAW)
    assert [stack.pid for stack in stacks[:3]] == [11, 11, 11] and stacks[0].thread == "MainThread"
    in_task = below(stacks, "process_ai_task")
    frames, samples = top_frames(in_task)
    assert samples == 9
    assert [(frame.name, round(frame.inclusive, 2)) for frame in frames] == [
        ("do_execute (sqlalchemy/engine/default.py)", 0.67), ("__next__ (ray/serve/handle.py)", 0.33)]
    assert own_by_package(stacks)[:2] == [("sqlalchemy", 0.5), ("ray", 0.25)]
    assert top_own(in_task)[0] == ("do_execute (sqlalchemy/engine/default.py)", 6 / 9)


def test_the_page_keeps_other_sections_and_replaces_only_its_block(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nIntro.\n\n## Image generation\n\nTheir table.\n")
    write_section(page, "## Orchestration\n\nfirst\n")
    write_section(page, "## Orchestration\n\nsecond\n")
    text = page.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and "first" not in text
    assert text.index("Intro.") < text.index("second") < text.index("## Image generation\n\nTheir table.\n")


def test_processes_are_named_by_role_for_the_new_stack():
    assert stack_role("consumer-style_transfer").startswith("consumer style_transfer")
    assert stack_role("api") == STACK_PARTS["api"] and stack_role("housekeeping") == STACK_PARTS["housekeeping"]
    assert ray_role("ray::ServeReplica:style_transfer:StyleTransfer.handle_request") == (
        "replica style_transfer:StyleTransfer")
    assert ray_role("ray::ServeController") == SERVE_CONTROLLER and ray_role("raylet --x") == RAY_SYSTEM


def test_postgres_counts_the_benchmarks_backends_and_the_server_not_other_databases():
    ours = "backendai_bench_0123456789"
    assert postgres_role(f"postgres: 15/main: postgres {ours} 127.0.0.1(5432) idle", ours) == POSTGRES
    assert postgres_role(f"postgres: postgres {ours} [local] UPDATE", ours) == POSTGRES
    assert postgres_role("postgres: 15/main: postgres postgres 127.0.0.1(34848) idle", ours) is None
    assert postgres_role("postgres: 15/main: walwriter", ours) == POSTGRES
    assert postgres_role("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", ours) == POSTGRES


class FakeProcess:
    def __init__(self, pid: int, parent: int, own: float, reaped: float = 0.0):
        self.pid, self.parent, self.own, self.reaped = pid, parent, own, reaped

    def cpu_times(self) -> SimpleNamespace:
        return SimpleNamespace(user=self.own, system=0.0, children_user=self.reaped, children_system=0.0)

    def ppid(self) -> int:
        return self.parent


def test_a_backend_that_ends_during_a_phase_counts_through_the_postmaster_for_that_phase_only():
    postmaster, backend = FakeProcess(1, 0, own=1.0, reaped=10.0), FakeProcess(2, 1, own=5.0)
    roles = {POSTGRES: [postmaster, backend]}
    meter = CpuMeter(lambda: roles).start()
    postmaster.reaped += 5.0 + 3.0  # the backend used 3 s more, then ended and was reaped
    roles = {POSTGRES: [postmaster, FakeProcess(3, 1, own=2.0)]}  # and a new one started
    used = meter.stop()
    assert used[POSTGRES] == 5.0 and BENCHMARK in used


def test_thread_names_group_a_pools_threads():
    assert [thread_group(name) for name in ("worker.io3", "grpc_global_tim", "ThreadPool-12", "42")] == [
        "worker.io", "grpc_global_tim", "ThreadPool", "42"]


def test_an_outcome_counts_unfinished_and_missing_rows_as_lost():
    outcome = Outcome(10, {"SUCCESS": 6, "PENDING": 1, "RETRY": 1, "FAILURE": 1})
    assert (outcome.missing, outcome.left, outcome.failed, outcome.clean) == (1, 3, 1, False)
    assert Outcome(2, {"SUCCESS": 2}).clean and "no row" not in str(Outcome(2, {"SUCCESS": 2}))


def _target_run(creates_per_s: float, drain_s: float, latency_s: float) -> TargetRun:
    def steady(seconds: float) -> Summary:
        return Summary.of([seconds] * 3)

    done = Outcome(1000, {"SUCCESS": 1000})
    return TargetRun(CreateRun("the stack's API", 8, steady(0.05), creates_per_s, 0.004), done,
                     Drain(drain_s, done, {"API (uvicorn)": 0.01}, created_s=drain_s / 2), steady(latency_s),
                     steady(latency_s + 0.03), Outcome(200, {"SUCCESS": 200}), queued=steady(0.004))


def test_the_target_figures_are_judged_against_their_targets_with_the_old_designs_beside():
    section = render(Results("today", "2 cores", "python -m scripts.bench --only target", "near-zero",
                             target=_target_run(150.0, 1000 / 55, 0.0185)))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if line.startswith("| (")}
    assert "**met**" in rows["(a) creates/s, 500 POSTs from 8 clients, consumers live"]
    assert "**55.0**" in rows[target.DRAIN_PER_S.name] and "**missed**" in rows[target.DRAIN_PER_S.name]
    assert "**18.5**" in rows[target.LATENCY_MS.name] and "**met**" in rows[target.LATENCY_MS.name]
    assert "57.0–62.5" in rows[target.DRAIN_PER_S.name] and "| 26.6 |" in rows[target.DRAIN_PER_S.name]
    assert "Lost 0, failed 0" in section and "target drain (b)" in section and "(claimed) 4.0 / 4.0 ms" in section


def _figures(design: str, creates: float, drain: float, latency_ms: float, cpu_ms: float = 9.0) -> compare.Figures:
    return compare.Figures(design, creates, drain, latency_ms, 0, 0, {"API (uvicorn)": cpu_ms}, ("0.1", "0.2"))


def test_the_ratios_put_this_project_over_the_seed_design_and_judge_each_against_its_target():
    peer, project = _figures("seed", 100.0, 60.0, 20.0), _figures("backendai", 160.0, 84.0, 20.0)
    found = compare.ratios(project, peer)
    assert found == {"creates": 1.6, "drain": 1.4, "latency": 1.0}
    assert compare.verdicts(found, project) == {"creates": True, "drain": False, "latency": True,
                                                "nothing lost": True, "cpu per task": True}
    heavy = _figures("backendai", 160.0, 84.0, 20.0, cpu_ms=10.5)
    assert not compare.verdicts(found, heavy)["cpu per task"]
    assert "ratio drain: 1.40x (target ≥ 1.5x): missed" in compare.lines(project, peer)


def test_figures_of_a_run_count_lost_and_failed_tasks_of_every_phase():
    outcomes = [Outcome(508, {"SUCCESS": 508}), Outcome(1000, {"SUCCESS": 998, "PENDING": 1}),
                Outcome(200, {"SUCCESS": 199, "FAILURE": 1})]
    figures = compare.Figures.of("backendai", 150.0, 10.0, 0.016, outcomes, {"a": 0.001, "b": 0.004}, ("1", "2"))
    assert (figures.drain_per_s, figures.latency_p50_ms, figures.lost, figures.failed) == (100.0, 16.0, 2, 1)
    assert list(figures.cpu_ms_per_task) == ["b", "a"] and figures.cpu_total_ms == 5.0


def test_without_the_peer_folder_the_project_is_measured_alone_and_said_so(tmp_path):
    assert compare.peer_folder(None) == (None, None)
    folder, note = compare.peer_folder(str(tmp_path / "absent"))
    assert folder is None and "absent" in note and "alone" in note
    folder, note = compare.peer_folder(str(tmp_path))
    assert folder is None and "manage.py" in note
    project = _figures("backendai", 150.0, 90.0, 15.0)
    summary = compare.summary(project, None, note, "2026-12-04")
    assert summary["peer"] is None and summary["ratios"] is None and summary["project"]["creates_per_s"] == 150.0
    assert not any(line.startswith("ratio") for line in compare.lines(project, None))


def test_the_peers_python_is_the_one_given_else_its_own_venv_else_one_made_outside_its_folder(tmp_path):
    peer, cache = tmp_path / "seed-django", tmp_path / "cache"
    peer.mkdir()
    for name in compare.PEER_MARKERS:
        (peer / name).write_text("Django==5.1.4\n")
    assert compare.peer_folder(str(peer)) == (peer, None)
    assert compare.peer_python(peer, "/opt/py", cache) == (Path("/opt/py"), False)
    made, missing = compare.peer_python(peer, None, cache)
    assert missing and made.is_relative_to(cache) and made.name == "python"
    (peer / compare.PEER_OWN_VENV / "bin").mkdir(parents=True)
    (peer / compare.PEER_OWN_VENV / "bin" / "python").touch()
    assert compare.peer_python(peer, None, cache) == (peer / compare.PEER_OWN_VENV / "bin" / "python", False)
    (peer / compare.PEER_REQUIREMENTS).write_text("Django==5.2\n")
    assert compare.peer_venv(peer, cache) != made.parent.parent  # another requirements file, another venv
