"""What a benchmark run simulates: the world, the tasks, the methods, the training budget.

A configuration is a frozen dataclass that round-trips through JSON (`--config file.json`); the
presets below are the ones the results in `bench/results/` come from. Every number that decides
a result is here, fixed before the run, including the accuracy targets of `time_to_target_hours`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mlmule_core.promotion import PromotionError, PromotionRule
from mlmule_core.train_numpy import TrainConfig

TASKS = ("occupancy", "phone_activity", "digits", "paper", "hapt")
FIXED_DATA_TASKS = frozenset({"occupancy", "digits", "paper"})  # the space holds the data
DATASET_TASKS = frozenset({"digits", "paper"})  # a data set dealt out to the homes over time
# tasks whose spaces are whole homes: a phone meets the space when it arrives at the home
HOME_SPACE_TASKS = frozenset({*DATASET_TASKS, "hapt"})
METHODS = (
    "local",
    "centralized",
    "fedavg",
    "fedavg_ft",
    "fedasync",
    "gossip",
    "mlmule",
    "mlmule_no_relay",
    "mlmule_carry_merge",
    "mlmule_no_filter",
    "mlmule_personal",
    "mlmule_no_gate",
    "mlmule_no_fine_tune",
    "mlmule_weights_only",
    "mlmule_knowledge_only",
)
MLMULE_METHODS = frozenset(name for name in METHODS if name.startswith("mlmule"))
# Server methods have a global model, scored as `final_global` beside the personalised score.
GLOBAL_METHODS = frozenset({"centralized", "fedavg", "fedavg_ft", "fedasync"})
MULE_CARRIES = ("answer", "merge")
BACKENDS = ("local", "ray")
HOUR = 3600.0
DAY = 24 * HOUR


class BenchConfigError(ValueError):
    """A configuration that cannot describe a run."""


@dataclass(frozen=True)
class Budget:
    """The training budget every method gets: the same rounds, epochs and data window.

    Each learner (a space in fixed-data mode, a phone in mobile-data mode, the server of the
    centralized upper bound) trains at most once per `period_hours`. A method chooses when in
    the period (ML Mule right after a merge, FedAsync at the learner's own slot); a learner
    that has not trained by the period's end trains then. A round is one warm-started run of
    the product's trainer on the learner's last `history_days` of labelled data.
    """

    period_hours: float = 24.0
    history_days: float = 10.0  # what the HA coordinator trains on (its recorder window)
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 3e-3
    patience: int = 3
    prox_mu: float = 0.01  # the coordinator's FedProx term for in-house training
    min_samples: int = 30  # fewer labelled samples than this: no round

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            max_epochs=self.epochs,
            patience=self.patience,
            prox_mu=self.prox_mu,
            seed=seed,
        )


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark: a world (or digits on the world's mobility), tasks, methods and seeds.

    Times: the world runs `days`; the last `test_days` are the held-out future every score is
    measured on, and no method trains on them. `room_kinds` are the kinds of room that are
    spaces (and so context keys). Encounters are the world's room entries; a space does not
    reopen an exchange with the same phone within `exchange_cooldown_hours`.

    What ML Mule does, fixed before the run (the sweeps vary these): `relays` makes the
    world's shared places (offices, gym, cafe, shop) relay spaces, which keep, merge and hand
    back the snapshots of the keys they relay; `mule_carries` is what a phone carries on in
    fixed-data mode, the last space's answer ("answer") or its own running merge of the
    answers ("merge"); `mlmule_options` are strategy options of every ML Mule method (the
    staleness rule, a guest's share, ...), on top of each ablation's own; `promotion` are
    options of the promotion rule (`tolerance`, `confidence`, `keep_equal_predictions`).
    """

    name: str = "default"
    homes: int = 20
    days: int = 60
    test_days: int = 7
    non_iid: float = 0.5
    visit_rate: float = 1.0
    group_size: int = 4
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # The room every household shares and guests sit in: where phones of several homes meet
    # the same kind of space. More kinds are more context keys and proportionally more time.
    room_kinds: tuple[str, ...] = ("living_room",)
    sample_minutes: int = 10
    budget: Budget = field(default_factory=Budget)
    fedavg_every_hours: float = 24.0
    eval_every_hours: float = 24.0
    exchange_cooldown_hours: float = 3.0
    digits_alpha: float = 0.5  # Dirichlet concentration of the label skew over spaces
    digits_test_fraction: float = 0.3
    digits_hidden: tuple[int, ...] = (32,)
    # A data set's samples arrive one by one over the learning period; a home trains once it
    # holds this many (a world room senses a sample every few minutes, a home gets a digit a day)
    dataset_min_samples: int = 10
    # paper: each affinity group sees this many digits, neighbouring groups overlapping
    paper_classes: int = 4
    relays: bool = True
    mule_carries: str = "answer"
    baseline_promotion: bool = False  # the product's promotion rule for the baselines too
    mlmule_options: Mapping[str, Any] = field(default_factory=dict)
    # options of the product's promotion rule (`PromotionRule`) wherever a method uses it
    promotion: Mapping[str, Any] = field(default_factory=dict)
    # a served model that scores this much lower than the one it replaced, on the next day's
    # ground truth, is a regression
    regression_tolerance: float = 0.02
    regression_min_samples: int = 10  # fewer next-day samples: the held-out future instead
    # Fixed before any run: the accuracy each task must reach for time_to_target_hours.
    targets: Mapping[str, float] = field(
        default_factory=lambda: {
            "occupancy": 0.9,
            "phone_activity": 0.5,
            "digits": 0.8,
            "paper": 0.9,
            "hapt": 0.8,
        }
    )

    def __post_init__(self) -> None:
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown:
            raise BenchConfigError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
        unknown = [method for method in self.methods if method not in METHODS]
        if unknown:
            raise BenchConfigError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if not self.seeds or not self.methods or not self.tasks:
            raise BenchConfigError("a run needs at least one task, method and seed")
        if not 0 < self.test_days < self.days:
            raise BenchConfigError("test_days must leave some days to learn in")
        if self.sample_minutes < 1 or self.exchange_cooldown_hours < 0:
            raise BenchConfigError("sample_minutes must be >= 1 and the cooldown >= 0")
        missing = [task for task in self.tasks if task not in self.targets]
        if missing:
            raise BenchConfigError(f"no target for {missing}")
        if self.mule_carries not in MULE_CARRIES:
            raise BenchConfigError(f"mule_carries is one of {list(MULE_CARRIES)}")
        if not 1 <= self.paper_classes <= 10 or self.dataset_min_samples < 1:
            raise BenchConfigError("paper_classes is 1..10 and dataset_min_samples >= 1")
        try:
            self.promotion_rule()
        except (TypeError, PromotionError) as err:
            raise BenchConfigError(f"promotion: {err}") from None

    def promotion_rule(self) -> PromotionRule:
        """The product's promotion rule with this run's `promotion` options."""
        return PromotionRule(**self.promotion)

    def min_samples(self, task: str) -> int:
        """The fewest labelled samples a round trains on."""
        return self.dataset_min_samples if task in DATASET_TASKS else self.budget.min_samples

    @property
    def learn_seconds(self) -> float:
        """How long the methods learn: everything before the held-out future."""
        return (self.days - self.test_days) * DAY

    def with_overrides(self, **changes: Any) -> BenchConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["targets"] = dict(self.targets)
        document["mlmule_options"] = dict(self.mlmule_options)
        document["promotion"] = dict(self.promotion)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> BenchConfig:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise BenchConfigError(f"unknown configuration keys {unknown}")
        values = dict(document)
        if "budget" in values:
            budget = values["budget"]
            budget_keys = {item.name for item in fields(Budget)}
            if not isinstance(budget, Mapping) or not set(budget) <= budget_keys:
                raise BenchConfigError(f"budget takes only {sorted(budget_keys)}")
            values["budget"] = Budget(**budget)
        for key in ("tasks", "methods", "seeds", "room_kinds", "digits_hidden"):
            if key in values:
                values[key] = tuple(values[key])
        for key in ("targets", "mlmule_options", "promotion"):
            if key in values:
                values[key] = dict(values[key])
        return cls(**values)


PRESETS: dict[str, BenchConfig] = {
    # The headline: 20 homes for 60 days, every method, five seeds.
    "default": BenchConfig(),
    # A few homes for a few days: what the tests run end to end.
    "tiny": BenchConfig(
        name="tiny",
        homes=4,
        days=6,
        test_days=2,
        group_size=2,
        visit_rate=6.0,
        seeds=(0,),
        room_kinds=("bedroom",),
        dataset_min_samples=5,
        sample_minutes=15,
        budget=Budget(epochs=2, history_days=3.0, min_samples=10),
        exchange_cooldown_hours=2.0,
    ),
    # The Flower cross-check: digits, FedAvg only, 20 daily rounds (Flower's engine is slow).
    "flower": BenchConfig(
        name="flower", days=27, tasks=("digits",), methods=("fedavg",), seeds=(0, 1, 2)
    ),
}


def load_config(source: str) -> BenchConfig:
    """A preset by name, or a JSON file (its keys override the default preset)."""
    if source in PRESETS:
        return PRESETS[source]
    path = Path(source)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise BenchConfigError(
            f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a readable file: {err}"
        ) from err
    except ValueError as err:
        raise BenchConfigError(f"{source} is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise BenchConfigError(f"{source} must hold a JSON object")
    return BenchConfig.from_json(document)
