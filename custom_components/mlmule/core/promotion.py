"""Champion and challenger: the one rule for every change to the model a host serves.

A host's own training, a merge of a snapshot a mule brought (fixed-data or mobile-data mode), an
import, and a phone's adopt, merge or training all produce a *challenger*. The model served now is
the *champion*. Both predict the host's labelled samples that the challenger was not trained on:

- training is judged on its *window*, the latest `holdout_fraction` of its samples in time order
  (`split_holdout`), which it never trains on;
- a merge, an adopt or an import on every labelled sample of the host's last training
  (`ModelHost.hold_out`). The challenger was not trained on them; the champion was, on most of
  them, which only favours keeping it. A small home's window is a handful of samples (a fifth of
  sixty digits) and, measured in the benchmark, says next to nothing about the next day.

The challenger is served only if its gain in the task's score (balanced accuracy or macro-F1)
is at least `confidence` standard errors of that gain, less `tolerance`
(`HeldOut.paired_error`, from the samples on which the two disagree). A tiny window therefore
lets through only a challenger that is clearly better on it, a large one any that is not worse
beyond the noise. A merge, an adopt or an import that predicts every labelled sample exactly as
the champion does is kept out too: it can differ only where the host cannot see, and such
changes were the benchmark's commonest regressions (its next-day score dropped by more than 0.02
about one time in six). Training that changes no held-out prediction is served: it learned the
host's own newest data.

A merge the rule refuses is not thrown away (`fine_tune_refused`, the default). A merge is judged
on the host's own samples, which the champion was trained on and the guests' models were not:
it often loses there even when it carries what the host has yet to see (other homes' classes,
other hours). The host's next training therefore runs twice, from the served model and from the
refused merge, on the same samples; the fine-tuned merge is judged first, as training, on the
window neither run trained on, and the plain run only if it is refused. A merge thus enters
once the host's own data has adapted it and it scores no worse, and the host never loses a
training to it. The merge is fine-tuned once, and forgotten when another model is served or
the host restarts (a candidate, kept in memory only: nothing served depends on it).

`undecided_no_window`: the host holds no labelled data for the key, and the challenger is
**served**. Refusing would freeze every host without labels of its own for the key: a space in
mobile-data mode (the labels are on the phones, which judge their contributions before sending
them), a relay space, and a phone adopting a space's model of room sensors it cannot read (the
space judged it). The harm such a change can do is bounded elsewhere: a guest's share of a merge
is capped and its update clipped (`strategies.GuestBounds`), and the host that does hold labels
judges the model before serving it. `undecided_small_window`: the labels are of one class only,
on which no score says anything about the others; the host has labels, so the champion stays.

Defaults (`tolerance` 0, `confidence` 1) were chosen with the benchmark (`bench/mlmule_bench`):
stricter ones cost most of the learning of homes with a few dozen samples, looser ones let
through changes that the next day showed to be worse. Fine-tuning refused merges raised the
benchmark's ML Mule from 0.606 to 0.660 macro-F1 on digits and from 0.922 to 0.940 on the
paper's conditions, level elsewhere, at about twice the next-day regressions on those two tasks
(bench/results/README.md). Keeping out equal predictions (`keep_equal_predictions`) cost 0.07
on digits under the rule without fine-tuning; serving them tripled its regressions.
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

Labels = npt.NDArray[np.int64]

DEFAULT_TOLERANCE: Final = 0.0
DEFAULT_CONFIDENCE: Final = 1.0  # standard errors of the gain
DEFAULT_HOLDOUT_FRACTION: Final = 0.2
ROUNDING: Final = 1e-9  # a gain of exactly its standard error is one, whatever the float sums


class PromotionError(MlmuleError):
    """A promotion rule or held-out window that cannot be used."""

    reason = "promotion"


class Change(StrEnum):
    """What produced a challenger."""

    TRAINING = "training"
    MERGE = "merge"
    ADOPT = "adopt"
    IMPORT = "import"
    # training on the host's labelled data towards the knowledge cache's ensemble (knowledge.py),
    # judged like training on the held-out window it did not train on
    DISTILL = "distill"


class Verdict(StrEnum):
    """Why the challenger was or was not served; stable, for logs, counters and entities."""

    PROMOTED = "promoted"
    KEPT_CURRENT = "kept_current"
    UNDECIDED_NO_WINDOW = "undecided_no_window"
    UNDECIDED_SMALL_WINDOW = "undecided_small_window"

    @property
    def served(self) -> bool:
        """Whether the challenger becomes the served model (see the module docs for undecided)."""
        return self in {Verdict.PROMOTED, Verdict.UNDECIDED_NO_WINDOW}


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Recent labelled samples, time-ordered, that a challenger was not trained on."""

    x: FloatArray
    y: Labels

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

    def paired_error(self, first: Labels, second: Labels) -> float:
        """The standard error of the gain from predictions `first` to `second`: from their
        paired per-sample differences, each sample weighted by 1 / (classes x its class's
        samples) as in balanced accuracy (for macro-F1, an approximation)."""
        _, inverse, counts = np.unique(self.y, return_inverse=True, return_counts=True)
        weights = 1.0 / (counts.size * counts[inverse].astype(np.float64))
        gain = (second == self.y).astype(np.float64) - (first == self.y).astype(np.float64)
        return math.sqrt(float(np.sum((weights * gain) ** 2)))


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
    """Serve a challenger whose gain over the champion is at least `confidence` standard
    errors, less `tolerance` (see the module docs). `keep_equal_predictions`: a merge, adopt
    or import that predicts the window exactly as the champion does is kept out.
    `fine_tune_refused`: the next training also fine-tunes the latest refused merge."""

    tolerance: float = DEFAULT_TOLERANCE
    confidence: float = DEFAULT_CONFIDENCE
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    keep_equal_predictions: bool = True
    fine_tune_refused: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise PromotionError(f"tolerance must be a finite number >= 0, not {self.tolerance}")
        if not (math.isfinite(self.confidence) and self.confidence >= 0):
            raise PromotionError(f"confidence must be a finite number >= 0, not {self.confidence}")
        if not 0 < self.holdout_fraction < 1:
            raise PromotionError("holdout_fraction must be in (0, 1)")

    def decisive(self, window: HeldOut | None) -> bool:
        """Whether `window` can tell two models apart: labels of at least two classes."""
        return window is not None and window.classes >= 2

    def judge(
        self,
        predict: Callable[[Weights, HeldOut], Labels],
        metric: Callable[[Labels, Labels], float],
        current: Weights,
        challenger: Weights,
        window: HeldOut | None,
        *,
        context_key: str,
        change: Change,
        at: float,
    ) -> PromotionDecision:
        """Score both models' predictions on `window` with `metric` (the task's score) and
        decide. A non-finite challenger score loses; a non-finite current one is replaced."""
        if window is None or not self.decisive(window):
            samples = 0 if window is None else window.samples
            verdict = (
                Verdict.UNDECIDED_NO_WINDOW if samples == 0 else Verdict.UNDECIDED_SMALL_WINDOW
            )
            return PromotionDecision(context_key, change, verdict, None, None, samples, at)
        kept = predict(current, window)
        offered = predict(challenger, window)
        before = float(metric(window.y, kept))
        after = float(metric(window.y, offered))
        if not math.isfinite(after):
            better = False
        elif not math.isfinite(before):
            better = True
        elif (
            self.keep_equal_predictions
            and change is not Change.TRAINING
            and np.array_equal(kept, offered)
        ):
            better = False  # it differs only where the host cannot see
        else:
            bound = after - before - self.confidence * window.paired_error(kept, offered)
            better = bound >= -self.tolerance - ROUNDING
        verdict = Verdict.PROMOTED if better else Verdict.KEPT_CURRENT
        return PromotionDecision(context_key, change, verdict, before, after, window.samples, at)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
