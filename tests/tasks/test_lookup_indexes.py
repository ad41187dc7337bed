"""The planner serves the hot lookups from their indexes (Postgres, the queries the code runs): a result image's
task on every `/media/…` view (sequential scans off), and, over a table of many finished tasks (filled and analysed
in a transaction that is rolled back), the ETA's recent durations on every status poll of a waiting task and a
metrics scrape. On a near-empty table the planner may pick any index: its statistics say every plan costs the same."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from serve.metrics import finished_since, unfinished_counts
from tasks.db import get_engine
from tasks.service import recent_successes, task_by_result

pytestmark = pytest.mark.postgres  # EXPLAIN, generate_series

# A month of finished tasks, one a minute, as the table of a server that has run for a while holds them.
FILL = sa.text("""
    INSERT INTO ai_tasks (id, task_type, status, prompt, parameters, progress, retry_count, max_retries,
                          worker_losses, created_at, updated_at, completed_at, processing_time)
    SELECT gen_random_uuid(), (ARRAY['background_removal', 'style_transfer', 'face_swap'])[1 + n % 3],
           CASE WHEN n % 10 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END, 'indexes', '{}', 100, 0, 3, 0,
           now() - n * interval '1 minute', now() - n * interval '1 minute', now() - n * interval '1 minute', 1.0
    FROM generate_series(1, 40000) AS n""")


def explain(connection: sa.Connection, statement: sa.Select) -> str:
    sql = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return "\n".join(connection.execute(sa.text(f"EXPLAIN {sql}")).scalars())


def plan_without_seqscan(statement: sa.Select) -> str:
    with get_engine().begin() as connection:
        connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
        return explain(connection, statement)


def test_a_result_image_is_looked_up_by_its_index(database):
    plan = plan_without_seqscan(task_by_result("tasks/output/ab/cd.png"))
    assert "ix_ai_tasks_result_image" in plan and "Seq Scan" not in plan, plan


def plans_over_a_full_table(*statements: sa.Select) -> list[str]:
    with get_engine().connect() as connection, connection.begin() as transaction:
        connection.execute(FILL)
        connection.execute(sa.text("ANALYZE ai_tasks"))
        plans = [explain(connection, statement) for statement in statements]
        transaction.rollback()
    return plans


def test_the_eta_reads_recent_durations_in_index_order(database):
    [plan] = plans_over_a_full_table(recent_successes("style_transfer", 20))
    assert "Index Scan Backward using ix_ai_tasks_type_status_completed_at" in plan and "Sort" not in plan, plan


def test_a_scrape_reads_the_backlog_and_the_last_hour_by_index(database):
    unfinished, finished = plans_over_a_full_table(unfinished_counts(),
                                                   finished_since(datetime.now(UTC) - timedelta(hours=1)))
    assert "Seq Scan" not in unfinished and "Index Cond: ((status)" in unfinished, unfinished
    index_conditions = [line for line in finished.splitlines() if "Index Cond" in line]
    assert "Seq Scan" not in finished and any("completed_at >=" in line for line in index_conditions), finished
