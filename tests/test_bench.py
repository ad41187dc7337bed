"""The benchmark's own logic, without a stack: profile parsing and the page it writes (scripts/bench)."""

from scripts.bench.profiling import below, own_by_package, parse_raw, top_frames
from scripts.bench.report import BEGIN, END, write_section

RAW = """\
process 10:"celery worker";process 11:"celery worker";thread (11): MainThread;main (celery/bin.py:1);\
process_ai_task (/repo/tasks/processing.py:5);_update (/repo/tasks/progress.py:9);do_execute \
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


def test_the_page_keeps_other_sections_and_replaces_only_its_block(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nIntro.\n\n## Image generation\n\nTheir table.\n")
    write_section(page, "## Orchestration\n\nfirst\n")
    write_section(page, "## Orchestration\n\nsecond\n")
    text = page.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and "first" not in text
    assert text.index("Intro.") < text.index("second") < text.index("## Image generation\n\nTheir table.\n")
