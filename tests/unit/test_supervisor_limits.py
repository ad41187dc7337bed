"""The supervisor's limits, counted from a request's first event: waiting for a replica is not running."""

from tasks.supervisor import Limits, RunningTask, overdue

LIMITS = Limits(soft_s=10, hard_s=20, silence_s=5, replica_wait_s=30)


def _task(started: float, first_event: float | None = None, last_event: float | None = None) -> RunningTask:
    task = RunningTask(task_id=None, call_started=started)
    task.running_since, task.last_event = first_event, last_event
    return task


def test_a_request_waiting_for_a_replica_is_retried_after_the_replica_wait_not_failed():
    assert overdue(_task(0), LIMITS, now=29) is None  # longer than the soft limit, but no replica yet
    stop = overdue(_task(0), LIMITS, now=31)
    assert stop is not None and stop.retry and "no replica" in stop.reason


def test_a_running_request_fails_at_the_soft_limit_or_after_a_silence():
    assert overdue(_task(0, first_event=100, last_event=104), LIMITS, now=104.5) is None
    timed_out = overdue(_task(0, first_event=100, last_event=109), LIMITS, now=111)
    assert timed_out is not None and (timed_out.reason, timed_out.retry) == ("timed out", False)
    silent = overdue(_task(0, first_event=100, last_event=101), LIMITS, now=107)
    assert silent is not None and "no progress" in silent.reason and not silent.retry
