"""One measured comparison: a cell at one size beside torch.nn.LSTM in the same process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BenchResult"]


@dataclass
class BenchResult:
    """One cell at one size, paired with torch.nn.LSTM in the same process."""

    cell: str
    hidden: int
    seq: int
    batch: int
    input_size: int
    layers: int
    path: str
    ms: float
    ref_ms: float
    repeats: int
    first_call_s: float
    peak_mb: float | None = None
    ref_peak_mb: float | None = None
    reference_ms: float | None = None      # the reference loop (fast paths off), when measured
    derived_ms: float | None = None        # the derived path (cellsearch.fast.force_derived), when measured
    derived_first_s: float | None = None   # its first call in this process (trace + compile or cache load)
    floor_ms: float | None = None          # the cell's GEMMs alone (:class:`GemmFloor`), when measured
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.seq / (self.ms / 1e3)

    @property
    def ref_tokens_per_s(self) -> float:
        return self.batch * self.seq / (self.ref_ms / 1e3)

    @property
    def ratio(self) -> float:
        """Speed relative to torch.nn.LSTM (> 1: faster)."""
        return self.ref_ms / self.ms

    @property
    def reference_ratio(self) -> float | None:
        """Speed of the reference loop relative to torch.nn.LSTM (same pairing), if measured."""
        return self.ref_ms / self.reference_ms if self.reference_ms else None

    @property
    def derived_ratio(self) -> float | None:
        """Speed of the derived path relative to torch.nn.LSTM (same pairing), if measured."""
        return self.ref_ms / self.derived_ms if self.derived_ms else None

    @property
    def floor_ratio(self) -> float | None:
        """The cell's time over its GEMM floor (1: nothing but the GEMMs), if measured."""
        return self.ms / self.floor_ms if self.floor_ms else None

    @property
    def over_floor_us(self) -> float | None:
        """Microseconds per time step beyond the GEMM floor (pointwise work, dispatch, copies)."""
        return (self.ms - self.floor_ms) * 1e3 / self.seq if self.floor_ms else None

    @property
    def memory_ratio(self) -> float | None:
        if self.peak_mb is None or not self.ref_peak_mb:
            return None
        return self.peak_mb / self.ref_peak_mb
