"""Summary statistics of per-seed results: mean and a Student-t confidence interval.

For n finite values x_1 … x_n with mean x̄ and sample standard deviation s (ddof = 1), the two-sided
confidence interval at level c is

    x̄ ± t_{(1 + c)/2, n − 1} · s / √n

with t_{q, ν} the q-quantile of Student's t distribution with ν degrees of freedom (scipy.stats.t, which
scikit-learn, a dependency of cellsearch, already installs). With one value the half-width is NaN (no
spread can be estimated); non-finite values (diverged runs) are left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["CI", "mean_ci", "t_quantile"]


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t distribution with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, df))


@dataclass(frozen=True)
class CI:
    """Mean ± half-width of a confidence interval over ``n`` finite values (``dropped`` non-finite)."""

    mean: float
    half: float
    n: int
    std: float
    confidence: float = 0.95
    dropped: int = 0

    @property
    def low(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half

    @property
    def high(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half

    def format(self, digits: int = 3, percent: bool = False) -> str:
        """``"0.123 ± 0.004"`` (``percent`` multiplies by 100); notes diverged runs and n < 2."""
        if self.n == 0:
            text = "—"
        else:
            scale = 100.0 if percent else 1.0
            mean, half = self.mean * scale, self.half * scale
            text = f"{_num(mean, digits)} ± {_num(half, digits)}" if math.isfinite(half) else _num(mean, digits)
        if self.dropped:
            text += f" ({self.dropped} diverged)"
        return text


def _num(value: float, digits: int) -> str:
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}f}"


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> CI:
    """Mean and Student-t confidence interval of the finite ``values`` (see the module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    finite = data[np.isfinite(data)]
    n, dropped = int(finite.size), int(data.size - finite.size)
    if n == 0:
        return CI(math.nan, math.nan, 0, math.nan, confidence, dropped)
    mean = float(finite.mean())
    if n == 1:
        return CI(mean, math.nan, 1, math.nan, confidence, dropped)
    std = float(finite.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return CI(mean, half, n, std, confidence, dropped)
