"""The backend interface: how a search runs its trials, behind one small abstract base.

A backend (:class:`~cellsearch.search.optuna_backend.OptunaBackend`, :class:`~cellsearch.search.ray_backend.
RayBackend`) decides where and when trials train. Everything a trial records and means for the budget is
backend-neutral and shared: the study in its storage (:mod:`.studies`), the trial lifecycle
(:class:`~cellsearch.search.trials.TrialBook`) and the budget's rules (:mod:`.ledger`). Both backends use
Optuna's storage and samplers, so a study run with one can be continued with the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..config import StudyConfig
    from .studies import StudyResult

__all__ = ["Backend"]


class Backend(ABC):
    """Runs a validated study's remaining budget and returns its :class:`~cellsearch.search.studies.StudyResult`."""

    #: the name a study file gives it (``search.backend``)
    name: ClassVar[str]

    @abstractmethod
    def run(self, config: StudyConfig, storage_url: str | None = None, display: Any = None,
            force_continue: bool = False) -> StudyResult:
        """Create or continue ``config``'s study (in ``storage_url`` or its own) and run what is left of
        its budget; ``force_continue`` continues a study whose training settings or model size changed."""
