"""Pluggable aggregation: how a space or a mule merges incoming model states into its own.

One interface, `Strategy.aggregate(local, incoming, now=, context=)`, serves the benchmark
simulator, the Home Assistant space and the mule, so all three swap strategies by name
(`make_strategy`). The shape follows Flower's server strategies: a base class with one
aggregation entry point, robust variants as options, and a wrapper (`ValidationGated`).

Every merging strategy runs the same pipeline (`MergingStrategy`):

1. **Screen** each incoming state. Another layout (names, order, shapes) is rejected
   `incompatible`, non-finite weights `poisoned`, zero training samples `empty`. A rejected state
   is never merged and leaves no trace in the adaptive state.
2. **Admit.** ML Mule's adaptive freshness filter rejects a state whose age exceeds `tau`
   (`stale`). `tau` is `k` times the median of the recent ages this strategy has seen, clamped to
   `[floor, ceiling]`; with no history it is the ceiling.
3. **Shares.** The strategy gives each admitted state `i` a share `g_i` of the result, with
   `sum g_i <= 1`; the local model keeps the rest. The merge is
   `local + sum_i g_i * (w_i - local)`, computed in float64 over the shared parameters only.
   Every other parameter (a personal head, the frozen input normalisation, the calibration) is
   copied from the local model unchanged.
4. **Robust options** (`Robustness`, available to every strategy). The update `w_i - local` is
   clipped to an L2 bound: fixed, or a multiple of the median of recent update norms. With three
   or more admitted states, the weighted sum becomes a coordinate-wise trimmed mean.
5. **Guest bounds** (on by default). Sample counts are self-reported, so a guest (another home's
   mule) cannot buy weight by claiming more: its share is capped at `guest_share_max`, and its
   update is clipped to `guest_clip` times the L2 norm of the local model's shared parameters.

`Decision.weight` is each incoming state's share of the result. `mixing` sums these shares per
origin; the local model's origin takes the rest. Both describe the shared parameters. For a
trimmed mean, whose shares vary per coordinate, each share is averaged over the shared
coordinates.

**Ages.** Staleness is measured from training: a state's age is `now - trained_at`, the time
since it was last trained (a merge counts from its newest contributor's training; see
`merged_state`), or `now - data_time` for a state whose snapshot predates `trained_at`. A time in
the future (a phone clock running ahead) counts as age 0. The age of the newest data point is
the wrong measure: a model trained today on a fixed data set (the benchmark's digits, whose
samples all carry the world's start time) or on a home's quiet week looks weeks old, its share
collapses, and the filter ends up refusing everything (on the benchmark's digits task, ML Mule
scored 0.600 with data ages and 0.767 with training ages, on a patched simulator). The hard cap
on data age stays outside the strategies, before any of them sees a state: the host's
`max_age_seconds` (90 days by default), which `snapshot.unpack` enforces on `data_time`.

**Defaults, calibrated on the benchmark** (`bench/mlmule_bench`, 5 seeds, ML Mule's other
defaults but the guest gate; `bench/results/learning_sweep_mlmule_options_half_life*.json`).
`half_life` is `MLMULE_HALF_LIFE`, 3 days, with `exponent` 1: a model trained a day before it
arrives keeps three quarters of a fresh one's pull, one trained three days before half. Swept
over 6 hours, 1, 3 and 10 days: digits 0.660, 0.739, 0.780 and 0.763 macro-F1; paper 0.940,
0.943, 0.940; phone activity 0.475, 0.475, 0.479; hapt 0.251, 0.241, 0.260; occupancy 0.983
throughout (10 days on digits only). Six hours dated from when ages were taken from the data;
counted from training, a model a mule brings a day after its training kept a fifth of a fresh
one's pull, and homes learned little from each other. The longer half-life costs next-day
regressions where merges now move models more (digits 78 -> 111 per run, paper 74 -> 113): each
is judged by the promotion rule all the same. The freshness filter (`k` 3, floor 6 hours,
ceiling 30 days) refuses only models far older than the ones this space usually sees. Against no
filter (`mlmule_no_filter`, 3-day half-life) the benchmark ends within 0.002 on every task, with
more next-day regressions on four tasks of five: it is kept as a guard against snapshots far
older than usual, not for accuracy (bench/results/README.md, "Ablations").

Strategies keep adaptive state: the recent ages for the freshness filter, and the recent
update norms for adaptive clipping. `state_dict()` returns it as a JSON-able dict (the space
persists it) and `load_state_dict()` restores it. Updates are deterministic: the ages and norms of
one call are appended in the order of `incoming`. Use one instance per (space, context key). An
instance is not thread-safe.
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, Final, TypeGuard

import numpy as np
import numpy.typing as npt

from .errors import (
    InvalidModelState,
    MlmuleError,
    StrategyError,
    StrategyOptionError,
    StrategyStateError,
)
from .weights import Weights, all_finite, copy_weights, same_layout

HOUR: Final = 3600.0
DAY: Final = 24 * HOUR

STATE_FORMAT: Final = 1
# Adaptive clipping trusts the median of recent update norms only once it has seen this many.
ADAPTIVE_CLIP_MIN_HISTORY: Final = 3

STALENESS_KINDS: Final = ("polynomial", "constant", "hinge")
FEDASYNC_CLOCKS: Final = ("time", "version")
GATE_SCOPES: Final = ("guests", "all")
# ML Mule's freshness half-life, calibrated on the benchmark (module docs, "Defaults")
MLMULE_HALF_LIFE: Final = 3 * DAY
# FedAsync's staleness scale on the "time" clock: the benchmark's `fedasync` runs with it
FEDASYNC_HALF_LIFE: Final = 6 * HOUR

Float64Array = npt.NDArray[np.float64]


class Reason(StrEnum):
    """Why an incoming state was merged or not; stable, for logs, counters and the "why"."""

    ACCEPTED = "accepted"
    CLIPPED = "clipped"  # accepted, with its update scaled down to the clip bound
    INCOMPATIBLE = "incompatible"
    POISONED = "poisoned"
    EMPTY = "empty"
    STALE = "stale"
    VALIDATION_DROP = "validation_drop"


# --- the interface --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelState:
    """A model plus the snapshot metadata that freshness-aware merging needs."""

    weights: Weights
    created_at: float  # epoch seconds
    data_time: float  # epoch seconds of the newest training data behind it
    samples: int  # training samples behind it
    version: int
    origin: str  # identity that produced this version
    lineage: tuple[str, ...] = ()  # who merged what, most recent last
    guest: bool = False  # came from a guest mule (another home)
    # epoch seconds of its last training; None (a snapshot that predates the field): data_time
    trained_at: float | None = None

    def __post_init__(self) -> None:
        _check_weights_container(self.weights)
        for label, value in (
            ("created_at", self.created_at),
            ("data_time", self.data_time),
            ("trained_at", self.last_trained),
        ):
            if not _is_finite_real(value):
                raise InvalidModelState(f"{label} must be a finite time, got {value!r}")
        for label, value in (("samples", self.samples), ("version", self.version)):
            if not _is_int(value) or int(value) < 0:
                raise InvalidModelState(f"{label} must be a non-negative integer, got {value!r}")
        _check_text("origin", self.origin)
        _check_lineage(self.lineage)
        _check_flag("guest", self.guest, error=InvalidModelState)

    @property
    def last_trained(self) -> float:
        """When it was last trained, as far as its snapshot tells."""
        return self.data_time if self.trained_at is None else self.trained_at

    def age(self, now: float) -> float:
        """Its staleness in seconds: the time since its last training, never negative."""
        return max(0.0, float(now) - float(self.last_trained))


@dataclass(frozen=True)
class Decision:
    """What happened to one incoming state; `weight` is its share of the merged model."""

    accepted: bool
    reason: str
    weight: float


@dataclass(frozen=True, eq=False)
class AggregationResult:
    weights: Weights
    decisions: tuple[Decision, ...]  # one per incoming state, in the same order
    mixing: Mapping[str, float]  # origin -> share of the result, the local origin included

    @property
    def changed(self) -> bool:
        """True when at least one incoming state was merged."""
        return any(decision.accepted for decision in self.decisions)


def share_all(name: str) -> bool:
    """A `shared` selector for models without personal parameters."""
    del name
    return True


@dataclass
class AggregationContext:
    """What the caller knows about the model being merged into."""

    # Which parameter names are merged; a personal head and frozen normalisation never are.
    shared: Callable[[str], bool] | AbstractSet[str]
    # Held-out score on the space's recent data, higher is better (for `ValidationGated`).
    evaluate: Callable[[Weights], float] | None = None

    def is_shared(self, name: str) -> bool:
        if isinstance(self.shared, AbstractSet):
            return name in self.shared
        return bool(self.shared(name))


class Strategy(ABC):
    """Merges incoming model states into the local one. Subclasses: `MergingStrategy`, gates."""

    name: str

    @abstractmethod
    def aggregate(
        self,
        local: ModelState,
        incoming: Sequence[ModelState],
        *,
        now: float,
        context: AggregationContext,
    ) -> AggregationResult:
        """Merge `incoming` into `local` and update the adaptive state."""

    @abstractmethod
    def state_dict(self) -> dict[str, object]:
        """The adaptive state as a JSON-able dict."""

    @abstractmethod
    def load_state_dict(self, state: object) -> None:
        """Restore what `state_dict` returned; raises `StrategyStateError` if malformed."""

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """The configuration as a JSON-able dict, for logs and benchmark results."""


# --- building blocks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Staleness:
    """How much an update of a given age still counts, in (0, 1] (Xie et al. 2019, FedAsync).

    - polynomial: `(1 + age / half_life) ** -exponent` (with exponent 1 the weight halves at
      `half_life`);
    - constant: 1;
    - hinge: 1 up to `hinge_after`, then `1 / (1 + exponent * (age - hinge_after) / half_life)`.

    Ages are in the unit of the clock that measures them: seconds, or versions for FedAsync's
    version clock.
    """

    kind: str = "polynomial"
    half_life: float = 6 * HOUR
    exponent: float = 0.5
    hinge_after: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("staleness", self.kind, STALENESS_KINDS)
        _check_real("half_life", self.half_life, low=0.0, low_open=True)
        _check_real("exponent", self.exponent, low=0.0)
        _check_real("hinge_after", self.hinge_after, low=0.0)

    def weight(self, age: float) -> float:
        age = max(0.0, float(age))
        if self.kind == "constant":
            return 1.0
        if self.kind == "hinge":
            if age <= self.hinge_after:
                return 1.0
            return 1.0 / (1.0 + self.exponent * (age - self.hinge_after) / self.half_life)
        return float((1.0 + age / self.half_life) ** -self.exponent)


@dataclass(frozen=True)
class RecentValues:
    """The last `window` observations, oldest first: explicit adaptive state."""

    window: int
    values: tuple[float, ...] = ()

    def observe(self, new: Iterable[float]) -> RecentValues:
        return RecentValues(self.window, (*self.values, *new)[-self.window :])

    def median(self) -> float | None:
        return float(np.median(self.values)) if self.values else None

    def to_list(self) -> list[float]:
        return list(self.values)

    def load(self, raw: object, label: str) -> RecentValues:
        """The same window holding `raw` (a JSON list of non-negative numbers)."""
        if not isinstance(raw, list) or not all(
            _is_finite_real(value) and float(value) >= 0 for value in raw
        ):
            raise StrategyStateError(f"{label} must be a list of non-negative finite numbers")
        return RecentValues(self.window, tuple(float(value) for value in raw)[-self.window :])


@dataclass(frozen=True)
class FreshnessFilter:
    """ML Mule's adaptive model-freshness filter (ours: the paper names it but gives no formula).

    A state is rejected when its data age exceeds `tau = clamp(k * median(recent ages), floor,
    ceiling)`. The recent ages are those of every screened state seen, accepted or not, so
    that a rarely visited space, which only ever sees old snapshots, raises its `tau` instead of
    starving, while a busy space keeps a low `tau` and ignores laggards.
    """

    k: float = 3.0
    floor: float = 6 * HOUR
    ceiling: float = 30 * DAY
    window: int = 32

    def __post_init__(self) -> None:
        _check_real("filter_k", self.k, low=0.0, low_open=True)
        _check_real("filter_floor", self.floor, low=0.0)
        _check_real("filter_ceiling", self.ceiling, low=float(self.floor))
        _check_int("filter_window", self.window, low=1)

    def tau(self, recent: RecentValues) -> float:
        median = recent.median()
        if median is None:
            return float(self.ceiling)
        return float(min(self.ceiling, max(self.floor, self.k * median)))


@dataclass(frozen=True)
class Robustness:
    """Robust merging options, for any strategy.

    - `clip_norm`: bound on the L2 norm of each update `w_in - w_local` (shared parameters).
    - `clip_multiple`: adaptive bound, this multiple of the median of the last `clip_window`
      non-zero update norms (the raw norms, since a median shrugs off a minority of outliers).
      It applies once `ADAPTIVE_CLIP_MIN_HISTORY` norms have been seen; until then `clip_norm`
      applies if given, and nothing otherwise.
    - `trim`: fraction of the admitted states cut from each end of each coordinate before the
      weighted mean, `ceil(trim * m)` of `m` states, at most `(m - 1) // 2`. So with three or
      more pending, any `trim > 0` cuts at least the two extremes. Below three, it cuts nothing.
    - `guest_share_max`: the largest share a guest state may get, whatever sample count it
      claims (None: no cap). 0.5 is a fresh guest's share under ML Mule's and FedAvg's rules
      when it claims as many samples as the local model: an honest peer of equal standing.
    - `guest_clip`: a guest's update is clipped to this multiple of the L2 norm of the local
      model's shared parameters (None: no clip). Relative to the model, it needs no history and
      holds from a guest's first visit. 0.5 stays above the updates honest peers of one room
      kind make (about 0.1 to 0.3 of the model's norm on the starters) and stops a scaled one.
    """

    clip_norm: float | None = None
    clip_multiple: float | None = None
    clip_window: int = 32
    trim: float = 0.0
    guest_share_max: float | None = 0.5
    guest_clip: float | None = 0.5

    def __post_init__(self) -> None:
        if self.clip_norm is not None:
            _check_real("clip_norm", self.clip_norm, low=0.0, low_open=True)
        if self.clip_multiple is not None:
            _check_real("clip_multiple", self.clip_multiple, low=0.0, low_open=True)
        _check_int("clip_window", self.clip_window, low=ADAPTIVE_CLIP_MIN_HISTORY)
        _check_real("trim", self.trim, low=0.0, high=0.5, high_open=True)
        if self.guest_share_max is not None:
            _check_real("guest_share_max", self.guest_share_max, low=0.0, high=1.0)
        if self.guest_clip is not None:
            _check_real("guest_clip", self.guest_clip, low=0.0, low_open=True)

    def clip_bound(self, recent_norms: RecentValues) -> float | None:
        median = recent_norms.median()
        if (
            self.clip_multiple is not None
            and median is not None
            and len(recent_norms.values) >= ADAPTIVE_CLIP_MIN_HISTORY
        ):
            return float(self.clip_multiple * median)
        return None if self.clip_norm is None else float(self.clip_norm)

    def guest_clip_bound(self, local: Weights, shared: Sequence[str]) -> float | None:
        if self.guest_clip is None:
            return None
        total = sum(float(np.sum(np.square(local[name], dtype=np.float64))) for name in shared)
        return float(self.guest_clip * math.sqrt(total))

    def trim_count(self, pending: int) -> int:
        if self.trim == 0 or pending < 3:
            return 0
        return min(math.ceil(self.trim * pending), (pending - 1) // 2)


# --- the merging pipeline -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Plan:
    """The outcome of screening one call, before anything is merged or remembered."""

    local: ModelState
    incoming: tuple[ModelState, ...]
    now: float
    shared: tuple[str, ...]
    rejected: Mapping[int, Reason]
    admitted: tuple[int, ...]
    update_norms: Mapping[int, float]  # per admitted index, over the shared parameters
    clip_bound: float | None
    seen_ages: tuple[float, ...]  # ages of the states that passed screening


class MergingStrategy(Strategy):
    """The shared pipeline (module docs); subclasses define each admitted state's share."""

    def __init__(
        self,
        *,
        name: str,
        options: Mapping[str, object],
        robust: Robustness | None,
        freshness: FreshnessFilter | None = None,
    ) -> None:
        self.name = name
        self.robust = Robustness() if robust is None else robust
        self.freshness = freshness
        self._options = dict(options)
        self._ages = RecentValues(freshness.window if freshness is not None else 1)
        self._norms = RecentValues(self.robust.clip_window)

    @abstractmethod
    def _shares(self, local: ModelState, admitted: Sequence[ModelState], now: float) -> list[float]:
        """Each admitted state's share of the result, in [0, 1], summing to at most 1."""

    @property
    def tau(self) -> float | None:
        """The freshness filter's current age limit in seconds (None without a filter)."""
        return None if self.freshness is None else self.freshness.tau(self._ages)

    def aggregate(
        self,
        local: ModelState,
        incoming: Sequence[ModelState],
        *,
        now: float,
        context: AggregationContext,
    ) -> AggregationResult:
        plan = self._plan(local, incoming, now=now, context=context)
        self._commit(plan)
        return self._combine(plan, plan.admitted)

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {"format": STATE_FORMAT, "strategy": self.name}
        if self.freshness is not None:
            state["ages"] = self._ages.to_list()
        if self.robust.clip_multiple is not None:
            state["update_norms"] = self._norms.to_list()
        return state

    def load_state_dict(self, state: object) -> None:
        """Restore adaptive state. Parts this configuration does not use are ignored and parts
        it needs but the dict lacks start empty, so toggling an option keeps state loadable."""
        if not isinstance(state, Mapping):
            raise StrategyStateError("strategy state must be a mapping")
        unknown = set(state) - {"format", "strategy", "ages", "update_norms"}
        if unknown:
            raise StrategyStateError(f"unknown strategy state keys {sorted(unknown)}")
        if state.get("format") != STATE_FORMAT:
            raise StrategyStateError(f"unsupported strategy state format {state.get('format')!r}")
        if state.get("strategy") != self.name:
            raise StrategyStateError(
                f"state of strategy {state.get('strategy')!r} cannot load into {self.name!r}"
            )
        ages = self._ages.load(state.get("ages", []), "ages")
        norms = self._norms.load(state.get("update_norms", []), "update_norms")
        self._ages, self._norms = ages, norms

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"name": self.name, **self._options}
        described.update(asdict(self.robust))
        if self.freshness is not None:
            described["filter"] = asdict(self.freshness)
        return described

    # The gate wrapper drives these three steps itself, to merge a subset without re-screening.

    def _plan(
        self,
        local: ModelState,
        incoming: Sequence[ModelState],
        *,
        now: float,
        context: AggregationContext,
    ) -> _Plan:
        if not _is_finite_real(now):
            raise StrategyError(f"now must be a finite time, got {now!r}", reason="bad_time")
        if not all_finite(local.weights):
            raise InvalidModelState("the local model holds non-finite weights")
        shared = tuple(name for name in local.weights if context.is_shared(name))
        tau = self.tau
        age_limit = math.inf if tau is None else tau
        rejected: dict[int, Reason] = {}
        admitted: list[int] = []
        seen_ages: list[float] = []
        for index, state in enumerate(incoming):
            reason = _screen(local, state)
            if reason is None:
                age = state.age(float(now))
                seen_ages.append(age)
                if age > age_limit:
                    reason = Reason.STALE
            if reason is None:
                admitted.append(index)
            else:
                rejected[index] = reason
        update_norms = {
            index: _update_norm(local.weights, incoming[index].weights, shared)
            for index in admitted
        }
        return _Plan(
            local=local,
            incoming=tuple(incoming),
            now=float(now),
            shared=shared,
            rejected=rejected,
            admitted=tuple(admitted),
            update_norms=update_norms,
            clip_bound=self.robust.clip_bound(self._norms),
            seen_ages=tuple(seen_ages),
        )

    def _commit(self, plan: _Plan) -> None:
        if self.freshness is not None:
            self._ages = self._ages.observe(plan.seen_ages)
        if self.robust.clip_multiple is not None:
            # A zero update says nothing about typical update sizes and would pin the bound at 0.
            self._norms = self._norms.observe(
                norm for _, norm in sorted(plan.update_norms.items()) if norm > 0
            )

    def _combine(
        self, plan: _Plan, chosen: Sequence[int], dropped: Reason = Reason.VALIDATION_DROP
    ) -> AggregationResult:
        """Merge the admitted states in `chosen`; admitted states left out get `dropped`."""
        local = plan.local
        merged = copy_weights(local.weights)
        states = [plan.incoming[index] for index in chosen]
        shares = np.asarray(self._shares(local, states, plan.now), dtype=np.float64)
        guests = np.array([state.guest for state in states], dtype=bool)
        if self.robust.guest_share_max is not None and guests.any():
            shares = np.where(guests, np.minimum(shares, self.robust.guest_share_max), shares)
        guest_bound = self.robust.guest_clip_bound(local.weights, plan.shared)
        clip = np.array(
            [
                min(
                    _clip_factor(plan.update_norms[index], plan.clip_bound),
                    _clip_factor(plan.update_norms[index], guest_bound)
                    if plan.incoming[index].guest
                    else 1.0,
                )
                for index in chosen
            ],
            dtype=np.float64,
        )
        trim = self.robust.trim_count(len(chosen))
        coordinates = sum(local.weights[name].size for name in plan.shared)
        contribution = np.zeros(len(chosen), dtype=np.float64)
        if chosen and coordinates:
            for name in plan.shared:
                base = local.weights[name].astype(np.float64)
                per_state = (len(chosen),) + (1,) * base.ndim
                deltas = np.stack([state.weights[name] - base for state in states])
                deltas *= clip.reshape(per_state)
                if trim:
                    coefficients = _trimmed_coefficients(deltas, shares, trim)
                else:
                    coefficients = np.broadcast_to(shares.reshape(per_state), deltas.shape)
                merged[name] = (base + np.sum(coefficients * deltas, axis=0)).astype(np.float32)
                contribution += coefficients.reshape(len(chosen), -1).sum(axis=1)
            # A trimmed mean's shares vary per coordinate: average them. The clipped model is
            # (1 - c) local + c w_in, so w_in's own share is scaled by c.
            effective = clip * (contribution / coordinates if trim else shares)
        else:
            effective = contribution
        share_of = {
            index: float(np.clip(effective[position], 0.0, 1.0))
            for position, index in enumerate(chosen)
        }
        clipped = {index for position, index in enumerate(chosen) if clip[position] < 1.0}
        decisions = []
        for index in range(len(plan.incoming)):
            if index in share_of:
                reason = Reason.CLIPPED if index in clipped else Reason.ACCEPTED
                decisions.append(Decision(accepted=True, reason=reason, weight=share_of[index]))
            else:
                reason = plan.rejected.get(index, dropped)
                decisions.append(Decision(accepted=False, reason=reason, weight=0.0))
        return AggregationResult(
            weights=merged,
            decisions=tuple(decisions),
            mixing=_mixing(local, plan.incoming, decisions),
        )


class FedAvg(MergingStrategy):
    """Sample-weighted mean of the local model and the admitted incoming ones (McMahan et al.)."""

    def __init__(self, *, robust: Robustness | None = None) -> None:
        super().__init__(name="fedavg", options={}, robust=robust)

    def _shares(self, local: ModelState, admitted: Sequence[ModelState], now: float) -> list[float]:
        total = local.samples + sum(state.samples for state in admitted)
        return [state.samples / total for state in admitted]


class FedAsync(MergingStrategy):
    """FedAsync (Xie et al. 2019): `w <- (1 - alpha s) w + alpha s w_new` per incoming state.

    The staleness `s` is measured on `clock`: "time" uses the age since training (module docs)
    in seconds; "version" uses `local.version - incoming.version`, the paper's staleness when the
    incoming state reports the server version it started from (default `half_life` 1 then,
    which gives the paper's `(1 + staleness) ** -a`). Several pending states are applied one
    after another, oldest first, as if they had arrived in that order. Sample counts are not
    used.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.6,
        staleness: str = "polynomial",
        exponent: float = 0.5,
        half_life: float | None = None,
        hinge_after: float = 0.0,
        clock: str = "time",
        robust: Robustness | None = None,
    ) -> None:
        _check_real("alpha", alpha, low=0.0, high=1.0, low_open=True)
        _check_choice("clock", clock, FEDASYNC_CLOCKS)
        if half_life is None:
            half_life = FEDASYNC_HALF_LIFE if clock == "time" else 1.0
        self.alpha = float(alpha)
        self.clock = clock
        self.staleness = Staleness(staleness, half_life, exponent, hinge_after)
        options = {"alpha": self.alpha, "clock": clock, **asdict(self.staleness)}
        super().__init__(name="fedasync", options=options, robust=robust)

    def _age(self, local: ModelState, state: ModelState, now: float) -> float:
        if self.clock == "version":
            return float(max(0, local.version - state.version))
        return state.age(now)

    def _shares(self, local: ModelState, admitted: Sequence[ModelState], now: float) -> list[float]:
        ages = [self._age(local, state, now) for state in admitted]
        betas = [self.alpha * self.staleness.weight(age) for age in ages]
        oldest_first = sorted(range(len(admitted)), key=lambda index: (-ages[index], index))
        # Applied in sequence, state i keeps beta_i times what every later step leaves of it.
        shares = [0.0] * len(admitted)
        remaining = 1.0
        for index in reversed(oldest_first):
            shares[index] = betas[index] * remaining
            remaining *= 1.0 - betas[index]
        return shares


class MLMule(MergingStrategy):
    """ML Mule's freshness-aware merge (ours: the paper names it but gives no formula).

    One incoming state: `alpha = alpha_max * n_in / (n_in + n_local)`, and
    `w <- (1 - alpha s(age)) w + alpha s(age) w_in`, where `age` is the time since the snapshot
    was last trained (module docs). A model trained on more data pulls harder; a stale one
    pulls less. Several pending states in one call get sample shares of the whole batch,
    each discounted by its own staleness:
    `g_i = alpha_max * s(age_i) * n_i / (n_local + sum_j n_j)`. The result does not depend on
    the order in which the states arrived, unlike a sequential merge. The freshness filter runs
    first; `freshness_filter=False` is the ablation "ML Mule without the filter".

    Defaults: `alpha_max` 1 makes a fresh merge the pairwise sample-weighted mean (FedAvg between
    the two), so staleness and the filter are exactly what sets ML Mule apart. `exponent` 1
    makes `half_life` what its name says: the age at which a snapshot counts half. Why these
    values: module docs.
    """

    def __init__(
        self,
        *,
        alpha_max: float = 1.0,
        staleness: str = "polynomial",
        exponent: float = 1.0,
        half_life: float = MLMULE_HALF_LIFE,
        hinge_after: float = 0.0,
        freshness_filter: bool = True,
        filter_k: float = 3.0,
        filter_floor: float = 6 * HOUR,
        filter_ceiling: float = 30 * DAY,
        filter_window: int = 32,
        robust: Robustness | None = None,
    ) -> None:
        _check_real("alpha_max", alpha_max, low=0.0, high=1.0, low_open=True)
        _check_flag("freshness_filter", freshness_filter)
        self.alpha_max = float(alpha_max)
        self.staleness = Staleness(staleness, half_life, exponent, hinge_after)
        # Built even when disabled, so that its options are validated all the same.
        freshness = FreshnessFilter(filter_k, filter_floor, filter_ceiling, filter_window)
        options = {
            "alpha_max": self.alpha_max,
            "freshness_filter": freshness_filter,
            **asdict(self.staleness),
        }
        super().__init__(
            name="mlmule",
            options=options,
            robust=robust,
            freshness=freshness if freshness_filter else None,
        )

    def _shares(self, local: ModelState, admitted: Sequence[ModelState], now: float) -> list[float]:
        total = local.samples + sum(state.samples for state in admitted)
        return [
            self.alpha_max * self.staleness.weight(state.age(now)) * state.samples / total
            for state in admitted
        ]


class ValidationGated(Strategy):
    """Keep a merge only if it does not lower the held-out evaluation by more than `epsilon`.

    The gate covers guest states (`scope="guests"`, other homes' mules) or all of them
    (`scope="all"`). If `evaluate(merged) < evaluate(local) - epsilon`, every gated state is
    rejected `validation_drop`, and the result merges only the ungated ones (so with nothing
    ungated it is the local model unchanged). The gated states are judged together, by one
    evaluation of the joint merge. Without an evaluation (`context.evaluate` is None, or the
    local score is not finite: the labels are elsewhere, as in mobile-data mode) the merge is
    kept: the guest bounds limit what it can do, and the host's promotion rule
    (`core/promotion.py`) judges it where labels exist.
    """

    def __init__(
        self, inner: MergingStrategy, *, epsilon: float = 0.01, scope: str = "guests"
    ) -> None:
        _check_real("gate_epsilon", epsilon, low=0.0)
        _check_choice("gate", scope, GATE_SCOPES)
        self.inner = inner
        self.epsilon = float(epsilon)
        self.scope = scope
        self.name = f"{inner.name}+gated"

    def aggregate(
        self,
        local: ModelState,
        incoming: Sequence[ModelState],
        *,
        now: float,
        context: AggregationContext,
    ) -> AggregationResult:
        plan = self.inner._plan(local, incoming, now=now, context=context)
        self.inner._commit(plan)
        merged = self.inner._combine(plan, plan.admitted)
        gated = {index for index in plan.admitted if self.scope == "all" or incoming[index].guest}
        if not gated:
            return merged
        verdict = self._verdict(local.weights, merged.weights, context.evaluate)
        if verdict is None:
            return merged
        ungated = [index for index in plan.admitted if index not in gated]
        return self.inner._combine(plan, ungated, dropped=verdict)

    def _verdict(
        self,
        local: Weights,
        merged: Weights,
        evaluate: Callable[[Weights], float] | None,
    ) -> Reason | None:
        """None to keep the merge, else why the gated states are dropped."""
        if evaluate is None:
            return None
        before = float(evaluate(local))
        if not math.isfinite(before):
            return None
        after = float(evaluate(merged))
        # A non-finite score of the merge fails the comparison, and so drops it.
        return None if after >= before - self.epsilon else Reason.VALIDATION_DROP

    def state_dict(self) -> dict[str, object]:
        return self.inner.state_dict()

    def load_state_dict(self, state: object) -> None:
        self.inner.load_state_dict(state)

    def describe(self) -> dict[str, object]:
        return {
            **self.inner.describe(),
            "name": self.name,
            "gate": self.scope,
            "gate_epsilon": self.epsilon,
        }


# --- registry -------------------------------------------------------------------------------

_BUILDERS: Final[Mapping[str, type[FedAvg | FedAsync | MLMule]]] = {
    "fedavg": FedAvg,
    "fedasync": FedAsync,
    "mlmule": MLMule,
}
STRATEGIES: Final = tuple(_BUILDERS)
ROBUST_OPTIONS: Final = tuple(option.name for option in fields(Robustness))
GATE_OPTIONS: Final = ("gate", "gate_epsilon")


def strategy_options(name: str) -> tuple[str, ...]:
    """Every option `make_strategy(name, ...)` accepts."""
    builder = _builder(name)
    own = tuple(option for option in inspect.signature(builder).parameters if option != "robust")
    return own + ROBUST_OPTIONS + GATE_OPTIONS


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build a strategy by name with validated options.

    Options are the strategy's own (see its class), the `Robustness` fields, and `gate`
    ("guests" or "all", wrapping it in `ValidationGated`) with `gate_epsilon`.
    """
    accepted = strategy_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise StrategyOptionError(
            f"unknown option(s) {unknown} for strategy {name!r}; it accepts {list(accepted)}"
        )
    robust = Robustness(**{key: options[key] for key in ROBUST_OPTIONS if key in options})
    own = {
        key: value
        for key, value in options.items()
        if key not in ROBUST_OPTIONS and key not in GATE_OPTIONS
    }
    strategy = _builder(name)(robust=robust, **own)
    scope = options.get("gate")
    if scope is None:
        if "gate_epsilon" in options:
            raise StrategyOptionError("gate_epsilon needs gate='guests' or gate='all'")
        return strategy
    gate: dict[str, Any] = {"scope": scope}
    if "gate_epsilon" in options:
        gate["epsilon"] = options["gate_epsilon"]
    return ValidationGated(strategy, **gate)


def _builder(name: str) -> type[FedAvg | FedAsync | MLMule]:
    builder = _BUILDERS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise StrategyOptionError(f"unknown strategy {name!r}; choose one of {list(STRATEGIES)}")
    return builder


# --- the next version -----------------------------------------------------------------------


def merged_state(
    local: ModelState,
    incoming: Sequence[ModelState],
    result: AggregationResult,
    *,
    now: float,
    origin: str | None = None,
    lineage_limit: int = 32,
) -> ModelState:
    """The metadata of the model `result` produced, so that every caller versions alike.

    Unchanged (nothing accepted): `local` itself. Otherwise a new version by `origin` (default
    the local origin) created at `now`, whose data time is the newest among the local model and
    the states that got a share, as is its training time (the newest training it holds), and
    whose sample count is the largest among them and the local model. Counts are evidence, not a
    census: peers that meet again hold models with a shared ancestry, so adding counts at each
    merge would count the same samples over and over (two peers re-merging each other's models
    grow without bound, and the inflated side then drowns every newcomer's share). The largest
    count never grows by merging alone. The lineage appends the merged origins, keeping the last
    `lineage_limit` entries.
    """
    if len(result.decisions) != len(incoming):
        raise StrategyError("result does not belong to these incoming states")
    _check_int("lineage_limit", lineage_limit, low=1)
    if not result.changed:
        return local
    merged = [
        (state, decision.weight)
        for state, decision in zip(incoming, result.decisions, strict=True)
        if decision.accepted and decision.weight > 0
    ]
    data_time = max([local.data_time, *(state.data_time for state, _ in merged)])
    trained_at = max([local.last_trained, *(state.last_trained for state, _ in merged)])
    samples = max([local.samples, *(state.samples for state, _ in merged)])
    lineage = (*local.lineage, *(state.origin for state, _ in merged))
    return ModelState(
        weights=result.weights,
        created_at=now,
        data_time=data_time,
        samples=samples,
        version=local.version + 1,
        origin=local.origin if origin is None else origin,
        lineage=lineage[-lineage_limit:],
        guest=False,
        trained_at=trained_at,
    )


# --- helpers --------------------------------------------------------------------------------


def _screen(local: ModelState, state: ModelState) -> Reason | None:
    if not same_layout(local.weights, state.weights):
        return Reason.INCOMPATIBLE
    if not all_finite(state.weights):
        return Reason.POISONED
    if state.samples == 0:
        return Reason.EMPTY
    return None


def _update_norm(local: Weights, incoming: Weights, names: Sequence[str]) -> float:
    total = 0.0
    for name in names:
        delta = incoming[name].astype(np.float64) - local[name]
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


def _clip_factor(norm: float, bound: float | None) -> float:
    if bound is None or norm <= bound:
        return 1.0
    return bound / norm


def _trimmed_coefficients(deltas: Float64Array, shares: Float64Array, trim: int) -> Float64Array:
    """Per-coordinate coefficients of a weighted trimmed mean of `deltas` (axis 0 = states).

    At each coordinate the `trim` lowest and highest values are cut; the kept states' shares are
    rescaled so that together they still carry the whole batch's share.
    """
    pending = deltas.shape[0]
    order = np.argsort(deltas, axis=0, kind="stable")
    kept = np.zeros(deltas.shape, dtype=bool)
    np.put_along_axis(kept, order[trim : pending - trim], values=True, axis=0)
    weights = np.where(kept, shares.reshape((pending,) + (1,) * (deltas.ndim - 1)), 0.0)
    kept_total = weights.sum(axis=0)
    scale = np.divide(shares.sum(), kept_total, out=np.zeros_like(kept_total), where=kept_total > 0)
    coefficients: Float64Array = weights * scale
    return coefficients


def _mixing(
    local: ModelState, incoming: Sequence[ModelState], decisions: Sequence[Decision]
) -> dict[str, float]:
    merged = sum(decision.weight for decision in decisions)
    mixing = {local.origin: max(0.0, 1.0 - merged)}
    for state, decision in zip(incoming, decisions, strict=True):
        if decision.accepted:
            # rounding must not lift an origin that holds everything above 1
            mixing[state.origin] = min(1.0, mixing.get(state.origin, 0.0) + decision.weight)
    return mixing


# bool is a number to Python but never a meaningful time, count or option value here.
def _is_finite_real(value: object) -> TypeGuard[numbers.Real]:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value))


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _check_real(
    label: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if not _is_finite_real(value):
        raise StrategyOptionError(f"{label} must be a finite number, got {value!r}")
    number = float(value)
    if (
        number < low
        or number > high
        or (low_open and number == low)
        or (high_open and number == high)
    ):
        opening = "(" if low_open else "["
        closing = ")" if high_open else "]"
        raise StrategyOptionError(
            f"{label} must be in {opening}{low}, {high}{closing}, got {number}"
        )


def _check_int(label: str, value: object, *, low: int) -> None:
    if not _is_int(value) or int(value) < low:
        raise StrategyOptionError(f"{label} must be an integer >= {low}, got {value!r}")


def _check_choice(label: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise StrategyOptionError(f"{label} must be one of {list(choices)}, got {value!r}")


def _check_flag(
    label: str, value: object, *, error: type[MlmuleError] = StrategyOptionError
) -> None:
    if not isinstance(value, bool):
        raise error(f"{label} must be true or false, got {value!r}")


def _check_text(label: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidModelState(f"{label} must be a non-empty string, got {value!r}")


def _check_lineage(lineage: object) -> None:
    if not isinstance(lineage, tuple) or not all(isinstance(entry, str) for entry in lineage):
        raise InvalidModelState("lineage must be a tuple of strings")


def _check_weights_container(weights: object) -> None:
    if not isinstance(weights, dict) or not all(
        isinstance(name, str) and isinstance(value, np.ndarray) and value.dtype == np.float32
        for name, value in weights.items()
    ):
        raise InvalidModelState("weights must be a dict of parameter name -> float32 array")
