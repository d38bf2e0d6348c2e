"""Paired timing ratios with a distribution-free confidence interval.

Pass times on a shared machine have a one-sided tail (other load only slows a pass down) and drift
over minutes, so a variant is compared with the base pass by pass, within the same round, and the
median ratio gets an order-statistic interval that assumes no distribution.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def median_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """The order statistics x_(k+1), x_(n-k) around the median, k the largest with coverage >= `level`.

    Coverage of that interval is 1 - 2 P(Bin(n, 1/2) <= k). Below n = 6 even (min, max) covers less
    than 95 %; the interval is then (min, max), and `Paired.n` says how few rounds it rests on.
    """
    x = sorted(values)
    n = len(x)
    if not n:
        raise ValueError("median_ci needs at least one value")
    k = 0
    while k + 1 < (n + 1) // 2 and 1 - 2 * sum(math.comb(n, i) for i in range(k + 2)) / 2**n >= level:
        k += 1
    return x[k], x[n - 1 - k]


@dataclass(frozen=True)
class Paired:
    """Median of per-round ratios variant / reference, with its 95 % interval."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, times: Sequence[float], reference: Sequence[float]) -> Paired:
        """Round i of `times` against round i of `reference` (the longer one's extra rounds are unpaired)."""
        ratios = [a / b for a, b in zip(times, reference, strict=False)]
        if not ratios:
            raise ValueError("no paired rounds to compare")
        low, high = median_ci(ratios)
        return cls(statistics.median(ratios), low, high, len(ratios))

    def above(self, bound: float) -> tuple[bool, bool]:
        """(median > bound, and whether the interval agrees: wholly above, or wholly at/below)."""
        holds = self.median > bound
        return holds, (self.low > bound) if holds else (self.high <= bound)

    def within(self, low: float, high: float) -> tuple[bool, bool]:
        """(median in [low, high], and whether the interval agrees: wholly inside, or wholly outside)."""
        holds = low <= self.median <= high
        return holds, (low <= self.low and self.high <= high) if holds else (self.high < low or self.low > high)

    def pct(self) -> str:
        return f"{100 * (self.median - 1):+.1f} % [{100 * (self.low - 1):+.1f}, {100 * (self.high - 1):+.1f}]"

    def ratio(self) -> str:
        return f"{self.median:.4f} [{self.low:.4f}, {self.high:.4f}]"
