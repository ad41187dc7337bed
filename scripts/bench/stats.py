"""Percentiles and their rendering: every figure of the report is a Summary of seconds."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Summary":
        if not samples:
            raise ValueError("no samples")
        values = np.asarray(samples, dtype=float)
        return cls(len(values), float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                   float(values.mean()))

    def minus(self, other: "Summary") -> "Summary":
        """The difference of the percentiles (the samples are not paired: the runs are separate)."""
        return Summary(min(self.count, other.count), self.p50 - other.p50, self.p99 - other.p99,
                       self.mean - other.mean)


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.1f}x" if denominator > 0 else "n/a"


def mib(size_bytes: float) -> str:
    return f"{size_bytes / 2**20:.0f}"
