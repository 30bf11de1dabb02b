"""Champion and challenger: the one rule for every change to the model a host serves.

A host's own training, a merge of a snapshot a mule brought (fixed-data or mobile-data mode), an
import, and a phone's adopt, merge or training all produce a *challenger*. The model served now is
the *champion*. Both are scored on a held-out window of recent labelled data that the challenger
was not trained on: the latest `holdout_fraction` of the host's labelled samples, in time order
(`split_holdout`). The challenger is served only if it scores at least the champion's score minus
`tolerance`; otherwise the champion stays (`kept_current`).

When the window cannot decide (`undecided_no_window`: the host holds no labelled data for the
key; `undecided_small_window`: fewer than `min_samples` samples, or a single class, on which
balanced accuracy and macro-F1 say nothing about the other classes) the challenger is **served**.
Refusing would freeze every host without labels of its own for the key: a space in mobile-data
mode (the labels are on the phones, which judge their own contributions before sending them), a
phone adopting a space's model of room sensors it cannot read (the space judged it), and a new
space. The harm an undecided change can do is bounded elsewhere: a guest's share of a merge is
capped and its update clipped (`strategies.GuestBounds`), training early-stops on its own
validation split and starts from the snapshot as its first candidate, and the first decisive
window judges the next change.

`tolerance` (0.002 by default) is below the noise of a balanced accuracy over a day of minutes
(about 0.005), so an equally good merge is not refused for rounding, and far below what the
benchmark counts as a regression (0.02 on the next day); each promotion is judged afresh against
the model it replaces, so successive promotions cannot each lose the tolerance on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .errors import MlmuleError
from .weights import FloatArray, Weights

DEFAULT_TOLERANCE: Final = 0.002
DEFAULT_MIN_SAMPLES: Final = 60
DEFAULT_HOLDOUT_FRACTION: Final = 0.2


class PromotionError(MlmuleError):
    """A promotion rule or held-out window that cannot be used."""

    reason = "promotion"


class Change(StrEnum):
    """What produced a challenger."""

    TRAINING = "training"
    MERGE = "merge"
    ADOPT = "adopt"
    IMPORT = "import"


class Verdict(StrEnum):
    """Why the challenger was or was not served; stable, for logs, counters and entities."""

    PROMOTED = "promoted"
    KEPT_CURRENT = "kept_current"
    UNDECIDED_NO_WINDOW = "undecided_no_window"
    UNDECIDED_SMALL_WINDOW = "undecided_small_window"

    @property
    def served(self) -> bool:
        """Whether the challenger becomes the served model (see the module docs for undecided)."""
        return self is not Verdict.KEPT_CURRENT


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Recent labelled samples, time-ordered, that a challenger was not trained on."""

    x: FloatArray
    y: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise PromotionError("a held-out window needs [N, F] features and N labels")

    @classmethod
    def of(cls, x: npt.ArrayLike, y: npt.ArrayLike) -> HeldOut:
        return cls(np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))

    @property
    def samples(self) -> int:
        return int(self.y.shape[0])

    @property
    def classes(self) -> int:
        return int(np.unique(self.y).size)


def split_holdout(
    x: npt.ArrayLike, y: npt.ArrayLike, fraction: float = DEFAULT_HOLDOUT_FRACTION
) -> tuple[FloatArray, npt.NDArray[np.int64], HeldOut]:
    """Time-ordered samples split into what training may use and the latest `fraction`, held
    out for the promotion rule. With too few samples to spare any, nothing is held out."""
    features = np.ascontiguousarray(x, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)
    held = math.floor(labels.shape[0] * fraction)
    cut = labels.shape[0] - held
    return features[:cut], labels[:cut], HeldOut(features[cut:], labels[cut:])


@dataclass(frozen=True)
class PromotionDecision:
    """One judged change: what it was, both scores (None when undecided) and the verdict."""

    context_key: str
    change: Change
    verdict: Verdict
    current_score: float | None
    challenger_score: float | None
    samples: int  # in the held-out window
    at: float  # host time of the decision

    @property
    def served(self) -> bool:
        return self.verdict.served

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.change.value,
            "reason": self.verdict.value,
            "served": self.served,
            "current_score": _rounded(self.current_score),
            "challenger_score": _rounded(self.challenger_score),
            "samples": self.samples,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, context_key: str, raw: dict[str, Any]) -> PromotionDecision:
        return cls(
            context_key=context_key,
            change=Change(raw["change"]),
            verdict=Verdict(raw["reason"]),
            current_score=_optional_float(raw.get("current_score")),
            challenger_score=_optional_float(raw.get("challenger_score")),
            samples=int(raw["samples"]),
            at=float(raw["at"]),
        )

    def describe(self) -> str:
        """A log line's worth."""
        if self.current_score is None or self.challenger_score is None:
            return f"{self.context_key} {self.change}: {self.verdict} ({self.samples} held out)"
        return (
            f"{self.context_key} {self.change}: {self.verdict} (challenger "
            f"{self.challenger_score:.4f} vs current {self.current_score:.4f} on "
            f"{self.samples} held-out samples)"
        )


@dataclass(frozen=True)
class PromotionRule:
    """Serve a challenger unless it scores worse than the champion by more than `tolerance`."""

    tolerance: float = DEFAULT_TOLERANCE
    min_samples: int = DEFAULT_MIN_SAMPLES
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise PromotionError(f"tolerance must be a finite number >= 0, not {self.tolerance}")
        if self.min_samples < 1:
            raise PromotionError("min_samples must be at least 1")
        if not 0 < self.holdout_fraction < 1:
            raise PromotionError("holdout_fraction must be in (0, 1)")

    def decisive(self, window: HeldOut | None) -> bool:
        """Whether `window` can tell two models apart."""
        return window is not None and window.samples >= self.min_samples and window.classes >= 2

    def judge(
        self,
        score: Callable[[Weights, HeldOut], float],
        current: Weights,
        challenger: Weights,
        window: HeldOut | None,
        *,
        context_key: str,
        change: Change,
        at: float,
    ) -> PromotionDecision:
        """Score both models on `window` and decide. A non-finite challenger score loses."""
        samples = 0 if window is None else window.samples
        if window is None or not self.decisive(window):
            verdict = (
                Verdict.UNDECIDED_NO_WINDOW if samples == 0 else Verdict.UNDECIDED_SMALL_WINDOW
            )
            return PromotionDecision(context_key, change, verdict, None, None, samples, at)
        before = float(score(current, window))
        after = float(score(challenger, window))
        better = math.isfinite(after) and (
            not math.isfinite(before) or after >= before - self.tolerance
        )
        verdict = Verdict.PROMOTED if better else Verdict.KEPT_CURRENT
        return PromotionDecision(context_key, change, verdict, before, after, samples, at)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
