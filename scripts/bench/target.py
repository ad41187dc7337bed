"""The project's target: an external method, reproduced exactly, with the figures it must reach and those the
designs before this one reached with it on the same 2-core machine with Postgres and Redis."""

from dataclasses import dataclass

CLIENTS = 8
CREATES = 500
DRAIN = 1000
POLL_S = 0.05
METHOD = (
    "8 client threads over HTTP, each with its own connection; the job is the near-zero one (`style_transfer` "
    "`style-0` on a 32x32 PNG). (a) creates/s: 500 POSTs shared out to the 8 clients, the consumers live (they run "
    "the tasks meanwhile). (b) drain: 1000 tasks created by the 8 clients, from the first create to the last "
    "SUCCESS (the rows' completed_at); nothing lost: no row left PENDING/PROCESSING/RETRY or missing, none FAILURE. "
    "(c) latency: one client creates tasks one after another, polling each one's status every 50 ms until it "
    "finishes; the figure is the p50 of the rows' completed_at − created_at.")


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    target: float
    higher_is_better: bool
    seed: str  # the seed's Django design (the range over its runs)
    before: str  # this project before the consumer change

    def meets(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target

    @property
    def goal(self) -> str:
        return f"{'≥' if self.higher_is_better else '≤'} {self.target:g}"


CREATES_PER_S = Figure("(a) creates/s, 500 POSTs from 8 clients, consumers live", "creates/s", 140, True,
                       "93.7–95.4", "45.8")
DRAIN_PER_S = Figure("(b) drain, tasks/s: 1000 tasks from 8 clients, first create → last SUCCESS", "tasks/s", 60,
                     True, "57.0–62.5", "26.6")
LATENCY_MS = Figure("(c) created_at → completed_at p50 (ms), 1 client polling status every 50 ms", "ms", 20, False,
                    "18.5–18.7", "40.8")
