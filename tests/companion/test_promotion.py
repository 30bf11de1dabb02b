"""Champion and challenger: the promotion rule, on its own and in the host every peer shares.

A worse challenger is never served, a better one is, the decision is visible (logged, counted,
persisted, in `status`), a claimed sample count cannot buy a guest weight, and the host's lock
keeps concurrent changes from corrupting its store.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from mlmule_core import families
from mlmule_core.errors import MlmuleError
from mlmule_core.host import HostSettings, ModelHost, Outcome, saved_promotions
from mlmule_core.identity import Identity
from mlmule_core.onnx import OnnxModel
from mlmule_core.promotion import (
    Change,
    HeldOut,
    PromotionError,
    PromotionRule,
    Verdict,
    split_holdout,
)
from mlmule_core.train_numpy import TrainConfig
from mlmule_core.weights import Weights

from tests.support.hosts import KEY, NOW, data, occupancy_model, trust_of

TRAINING = TrainConfig(max_epochs=40, learning_rate=1e-2, seed=1)


def scored(value: float) -> Weights:
    """Weights that `by_value` scores as `value`."""
    return {"score": np.array([value], dtype=np.float32)}


def by_value(weights: Weights, _window: HeldOut) -> float:
    return float(weights["score"][0])


def window(n: int, classes: int = 2) -> HeldOut:
    return HeldOut.of(np.zeros((n, 3)), np.arange(n) % classes)


def judge(current: float, challenger: float, held: HeldOut | None) -> Verdict:
    rule = PromotionRule(tolerance=0.01, min_samples=50)
    return rule.judge(
        by_value,
        scored(current),
        scored(challenger),
        held,
        context_key=KEY,
        change=Change.MERGE,
        at=NOW,
    ).verdict


# ---- the rule


@pytest.mark.parametrize(
    ("current", "challenger", "verdict"),
    [
        (0.90, 0.95, Verdict.PROMOTED),  # better
        (0.90, 0.90, Verdict.PROMOTED),  # as good
        (0.90, 0.895, Verdict.PROMOTED),  # worse, within the tolerance
        (0.90, 0.88, Verdict.KEPT_CURRENT),  # worse beyond it
        (0.90, math.nan, Verdict.KEPT_CURRENT),  # a score that is no score loses
        (math.nan, 0.5, Verdict.PROMOTED),  # a current model that cannot be scored is replaced
    ],
)
def test_a_worse_challenger_is_kept_out_and_a_better_one_is_served(
    current: float, challenger: float, verdict: Verdict
) -> None:
    assert judge(current, challenger, window(200)) is verdict
    assert verdict.served == (verdict is Verdict.PROMOTED)


@pytest.mark.parametrize(
    ("held", "verdict"),
    [
        (None, Verdict.UNDECIDED_NO_WINDOW),
        (window(0), Verdict.UNDECIDED_NO_WINDOW),
        (window(49), Verdict.UNDECIDED_SMALL_WINDOW),
        (window(500, classes=1), Verdict.UNDECIDED_SMALL_WINDOW),  # one class says nothing
    ],
)
def test_a_window_too_small_to_decide_serves_the_challenger(
    held: HeldOut | None, verdict: Verdict
) -> None:
    # even a challenger that would score far worse: without a window there is no telling
    assert judge(0.9, 0.1, held) is verdict
    assert verdict.served


def test_the_window_is_the_latest_samples_in_time_order() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10) % 2
    train_x, train_y, held = split_holdout(x, y, 0.2)
    assert train_x.tolist() == x[:8].tolist()
    assert train_y.tolist() == y[:8].tolist()
    assert held.x.tolist() == x[8:].tolist()
    assert held.y.tolist() == y[8:].tolist()
    assert split_holdout(x[:4], y[:4], 0.2)[2].samples == 0  # too few to spare any


@pytest.mark.parametrize(
    "options", [{"tolerance": -0.1}, {"min_samples": 0}, {"holdout_fraction": 1.0}]
)
def test_a_rule_that_cannot_judge_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(PromotionError):
        PromotionRule(**options)  # type: ignore[arg-type]


# ---- in the host


def inverted(model: OnnxModel) -> OnnxModel:
    """`model` with its output layer negated: it calls occupied what the original calls empty."""
    spec, schema, weights = families.from_onnx(model)
    flipped = {n: -v if n.startswith("head.") else v for n, v in weights.items()}
    return families.build_onnx(spec, flipped, schema)


class Phones:
    """Phones paired with one home: each carries a model and offers it."""

    def __init__(self, root: Path, home: Identity) -> None:
        self.root = root
        self.home = home
        self.hosts: dict[str, ModelHost] = {}

    def carrying(self, name: str, model: OnnxModel, samples: int) -> bytes:
        """A snapshot of `model` signed by a new phone of this home."""
        host = ModelHost(
            self.root / name, Identity.generate(kind="mule", name=name), trust_of(self.home)
        )
        host.install(model, context_key=KEY, samples=samples, data_time=NOW, now=NOW)
        self.hosts[name] = host
        return host.export(KEY)

    def space(self, model: OnnxModel, **settings: object) -> ModelHost:
        """A space of this home serving `model` that trusts these phones."""
        space = ModelHost(
            self.root / f"space-{len(list(self.root.glob('space-*')))}",
            self.home,
            trust_of(*(host.identity for host in self.hosts.values())),
            HostSettings(**settings),  # type: ignore[arg-type]
        )
        space.install(model, context_key=KEY, samples=500, data_time=NOW, now=NOW)
        return space


@pytest.fixture
def phones(tmp_path: Path) -> Phones:
    return Phones(tmp_path, Identity.generate(kind="space", name="home"))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    """A model that learned the task (its training promoted over a random start)."""
    teacher = ModelHost(
        tmp_path_factory.mktemp("teacher"), Identity.generate(kind="space", name="t"), trust_of()
    )
    teacher.install(occupancy_model(0), context_key=KEY, samples=100, data_time=NOW, now=NOW)
    teacher.train(KEY, *data(2000, 1), config=TRAINING, data_time=NOW, now=NOW)
    assert teacher.decisions[KEY].verdict is Verdict.PROMOTED
    return teacher.slot(KEY).snapshot.model


def judged_space(phones: Phones, model: OnnxModel) -> ModelHost:
    """A space serving `model`, with 400 fresh labelled minutes to judge changes on."""
    space = phones.space(model)
    space.hold_out(KEY, HeldOut.of(*data(400, 9)))
    return space


def test_a_worse_merge_is_refused_and_a_better_one_served(phones: Phones, good: OnnxModel) -> None:
    # a phone claiming far more samples than the space: merged as claimed, it would take over
    worse = phones.carrying("worse", inverted(good), 50_000)
    better = phones.carrying("better", good, 500)
    space = judged_space(phones, occupancy_model(3))
    before = space.slot(KEY)

    refused = space.receive(worse, now=NOW + 60)
    assert (refused.accepted, refused.reason) == (False, "kept_current")
    assert space.slot(KEY).snapshot.sha256 == before.snapshot.sha256  # bit for bit
    decision = space.decisions[KEY]
    assert refused.decision == decision
    assert (decision.change, decision.verdict) == (Change.MERGE, Verdict.KEPT_CURRENT)
    assert decision.challenger_score is not None
    assert decision.current_score is not None
    assert decision.challenger_score < decision.current_score - 0.002

    merged = space.receive(better, now=NOW + 120)
    assert (merged.accepted, merged.reason) == (True, "merged")
    assert space.slot(KEY).version == before.version + 1
    assert merged.decision is not None
    assert merged.decision.verdict is Verdict.PROMOTED
    assert merged.decision.challenger_score is not None
    assert merged.decision.current_score is not None
    assert merged.decision.challenger_score > merged.decision.current_score
    assert dict(space.promotions) == {"kept_current": 1, "promoted": 1}
    assert space.rejections["kept_current"] == 1


def test_training_that_scores_worse_on_its_held_out_minutes_is_not_served(
    phones: Phones, good: OnnxModel
) -> None:
    space = judged_space(phones, good)
    before = space.slot(KEY)
    # a week of broken labels (inverted) before the latest, correct, minutes
    x, y = data(2000, 4)
    y[:1600] = 1 - y[:1600]
    job = space.start_training(KEY, x, y, config=TRAINING, data_time=NOW + 60)
    while not job.run(max_steps=50):
        pass
    job.commit(now=NOW + 60)
    assert job.decision is not None
    assert job.decision.verdict is Verdict.KEPT_CURRENT
    assert job.decision.samples == 400  # the latest 20%, which training never saw
    assert space.slot(KEY).snapshot.sha256 == before.snapshot.sha256
    assert space.counters["trained"] == 1
    # the next changes are judged on the minutes this run held out
    held = space.window(KEY)
    assert held is not None
    assert held.y.tolist() == y[1600:].tolist()


def test_the_decision_survives_a_restart_and_shows_in_status(
    phones: Phones, good: OnnxModel
) -> None:
    worse = phones.carrying("worse", inverted(good), 500)
    space = judged_space(phones, good)
    space.receive(worse, now=NOW + 60)
    decision = space.decisions[KEY].as_dict()
    assert space.status()["decisions"] == {KEY: decision}
    assert space.status()["promotions"] == {"kept_current": 1}
    # read-only, as `mlmule-companion status` reads it while the agent runs
    counts, decisions = saved_promotions(space.root)
    assert counts == {"kept_current": 1}
    assert decisions[KEY].as_dict() == decision
    reopened = ModelHost(space.root, phones.home, trust_of())
    assert reopened.decisions[KEY].as_dict() == decision
    assert reopened.promotions["kept_current"] == 1


def test_after_a_refusal_the_host_answers_with_its_current_model(
    phones: Phones, good: OnnxModel
) -> None:
    worse = phones.carrying("worse", inverted(good), 500)
    space = judged_space(phones, good)
    refused = space.receive(worse, now=NOW + 60)
    assert not refused.accepted
    answer = space.answer(refused)
    assert answer is not None
    assert answer.snapshot.sha256 == space.slot(KEY).snapshot.sha256
    # the phone takes the answer, and offers it back later: it needs nothing then
    phone = phones.hosts["worse"]
    assert phone.adopt(answer.container, now=NOW + 90).accepted
    back = space.receive(phone.export(KEY), now=NOW + 120)
    assert back.reason == "unchanged"
    assert space.answer(back) is None
    # a snapshot that names no key (it failed its signature) gets nothing either
    assert space.answer(Outcome(accepted=False, reason="bad_signature")) is None


# ---- guests cannot buy weight


def test_a_poisoned_guest_snapshot_moves_the_model_no_further_than_its_bound(
    phones: Phones,
) -> None:
    local = occupancy_model(3)
    spec, schema, weights = families.from_onnx(local)
    shared = families.shared_names(spec)
    # an honest guest: the same model after another home's training (a small update)
    rng = np.random.default_rng(4)
    update = {n: rng.normal(0.0, 0.02, weights[n].shape).astype(np.float32) for n in shared}
    honest_model = families.build_onnx(
        spec, {**weights, **{n: weights[n] + update[n] for n in shared}}, schema
    )
    scaled_model = families.build_onnx(
        spec, {**weights, **{n: weights[n] + 100 * update[n] for n in shared}}, schema
    )
    snapshots = {
        "honest": phones.carrying("honest", honest_model, 500),
        "count_x100": phones.carrying("count", honest_model, 50_000),
        "claims_1e6": phones.carrying("million", honest_model, 10**6),
        "update_x100": phones.carrying("scaled", scaled_model, 500),
    }
    local_norm = math.sqrt(sum(float(np.sum(weights[n].astype(np.float64) ** 2)) for n in shared))

    def moved(name: str, **options: object) -> tuple[Outcome, float]:
        # no labels here (a mobile-data space): only the guest bounds stand in the way
        space = phones.space(local, strategy_options=options)
        outcome = space.receive(snapshots[name], guest=True, now=NOW + 60)
        assert outcome.accepted
        assert outcome.decision is not None
        assert outcome.decision.verdict is Verdict.UNDECIDED_NO_WINDOW
        after = space.slot(KEY).weights
        return outcome, math.sqrt(
            sum(float(np.sum((after[n].astype(np.float64) - weights[n]) ** 2)) for n in shared)
        )

    honest_outcome, honest = moved("honest")
    assert honest_outcome.weight == pytest.approx(0.5, abs=0.01)
    for name in ("count_x100", "claims_1e6"):
        outcome, distance = moved(name)
        assert outcome.weight <= 0.5 + 1e-9
        # no further than an honest peer of the space's own standing
        assert distance <= honest * 1.01
        # without the bounds, the claim buys the whole model
        unbounded, unbounded_distance = moved(name, guest_share_max=None, guest_clip=None)
        assert unbounded.weight > 0.98
        assert unbounded_distance > 1.9 * honest
    outcome, distance = moved("update_x100")
    assert distance <= 0.5 * 0.5 * local_norm * (1 + 1e-6)  # share cap x clip bound
    _, unbounded_distance = moved("update_x100", guest_share_max=None, guest_clip=None)
    assert unbounded_distance > 10 * distance


# ---- one lock per host


def test_concurrent_merges_trainings_exports_and_rollbacks_leave_a_consistent_store(
    phones: Phones, good: OnnxModel
) -> None:
    offers = [phones.carrying(f"phone{i}", occupancy_model(10 + i), 300) for i in range(6)]
    # without a window the merges are all served: as many writes as possible race each other
    space = phones.space(good)
    errors: list[BaseException] = []
    x, y = data(300, 2)

    def run(work: list[Callable[[], object]]) -> None:
        for step in work:
            try:
                step()
            except MlmuleError as err:  # superseded training, nothing older to roll back to
                if err.reason not in {"superseded", "rollback"}:
                    errors.append(err)
            except BaseException as err:
                errors.append(err)

    def train() -> None:
        space.train(KEY, x, y, config=TrainConfig(max_epochs=2), data_time=NOW, now=NOW + 1)

    plans: list[list[Callable[[], object]]] = [
        [partial(space.receive, offer, now=NOW + 60) for offer in offers],
        [train] * 4,
        [partial(space.export, KEY, compression="fp16")] * 20,
        [partial(space.rollback, KEY)] * 3,
    ]
    threads = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    current = space.store.current(KEY)
    assert current is not None
    assert current.version == space.slot(KEY).version
    versions = [stored.version for stored in space.store.history(KEY)]
    assert versions == sorted(versions, reverse=True)
    assert len(set(versions)) == len(versions)
    reopened = ModelHost(space.root, phones.home, trust_of())
    assert reopened.slot(KEY).snapshot.sha256 == space.slot(KEY).snapshot.sha256
