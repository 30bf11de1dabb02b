"""Champion and challenger: the promotion rule, on its own and in the host every peer shares.

A worse challenger is never served, a better one is, the decision is visible (logged, counted,
persisted, in `status`), a claimed sample count cannot buy a guest weight, and the host's lock
keeps concurrent changes from corrupting its store.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from mlmule_core import families
from mlmule_core.errors import MlmuleError
from mlmule_core.host import (
    HostSettings,
    ModelHost,
    Outcome,
    TrainingJob,
    saved_promotions,
)
from mlmule_core.identity import Identity
from mlmule_core.metrics import balanced_accuracy
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
from mlmule_core.weights import Weights, weights_digest

from tests.support.hosts import KEY, NOW, data, occupancy_model, trust_of

TRAINING = TrainConfig(max_epochs=40, learning_rate=1e-2, seed=1)


def labels(n: int, classes: int = 2) -> npt.NDArray[np.int64]:
    return np.arange(n, dtype=np.int64) % classes


def window(n: int, classes: int = 2) -> HeldOut:
    return HeldOut.of(np.zeros((n, 3)), labels(n, classes))


def predicting(truth: npt.NDArray[np.int64], wrong: Sequence[int]) -> Weights:
    """Weights that `predictions` reads as `truth` with the samples `wrong` mispredicted."""
    predicted = truth.copy()
    predicted[list(wrong)] = 1 - predicted[list(wrong)]
    return {"predictions": predicted.astype(np.float32)}


def predictions(weights: Weights, _window: HeldOut) -> npt.NDArray[np.int64]:
    return weights["predictions"].astype(np.int64)


def judge(
    current: Weights,
    challenger: Weights,
    held: HeldOut | None,
    change: Change = Change.MERGE,
    metric: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], float] = balanced_accuracy,
) -> Verdict:
    return (
        PromotionRule()
        .judge(
            predictions, metric, current, challenger, held, context_key=KEY, change=change, at=NOW
        )
        .verdict
    )


# ---- the rule

TRUTH = labels(200)


@pytest.mark.parametrize(
    ("current", "challenger", "change", "verdict"),
    [
        # better by 20 of 200 samples, with no new mistake: far beyond the noise
        (range(40), range(20), Change.MERGE, Verdict.PROMOTED),
        # one more sample right, and others wrong instead: a gain within its own noise
        (range(40), range(30, 69), Change.MERGE, Verdict.KEPT_CURRENT),
        # worse
        (range(20), range(40), Change.MERGE, Verdict.KEPT_CURRENT),
        (range(20), range(40), Change.TRAINING, Verdict.KEPT_CURRENT),
        # as good, on other samples: nothing shows it is better
        (range(20), range(100, 120), Change.TRAINING, Verdict.KEPT_CURRENT),
        # exactly the same predictions: training is served, a merge can only differ unseen
        (range(20), range(20), Change.TRAINING, Verdict.PROMOTED),
        (range(20), range(20), Change.MERGE, Verdict.KEPT_CURRENT),
        (range(20), range(20), Change.ADOPT, Verdict.KEPT_CURRENT),
    ],
)
def test_a_challenger_is_served_only_when_the_window_shows_it_no_worse(
    current: range, challenger: range, change: Change, verdict: Verdict
) -> None:
    held = HeldOut.of(np.zeros((200, 3)), TRUTH)
    assert judge(predicting(TRUTH, current), predicting(TRUTH, challenger), held, change) is verdict
    assert verdict.served == (verdict is Verdict.PROMOTED)


@pytest.mark.parametrize("change", [Change.MERGE, Change.ADOPT, Change.IMPORT])
def test_a_rule_may_serve_a_change_that_predicts_the_window_as_the_champion_does(
    change: Change,
) -> None:
    held = HeldOut.of(np.zeros((200, 3)), TRUTH)
    same = predicting(TRUTH, range(20))
    worse = predicting(TRUTH, range(21))
    rule = PromotionRule(confidence=0.0, keep_equal_predictions=False)
    decide = partial(
        rule.judge, predictions, balanced_accuracy, context_key=KEY, change=change, at=NOW
    )
    assert decide(same, same, held).verdict is Verdict.PROMOTED
    assert decide(same, worse, held).verdict is Verdict.KEPT_CURRENT


def test_how_much_better_depends_on_how_much_the_window_shows() -> None:
    truth = labels(10)
    held = HeldOut.of(np.zeros((10, 3)), truth)
    # on ten samples: two fixed and one broken is a gain of one within its noise; three fixed
    # and none broken is not
    assert judge(predicting(truth, range(6)), predicting(truth, [2, 3, 4, 5, 6]), held) is (
        Verdict.KEPT_CURRENT
    )
    assert judge(predicting(truth, range(6)), predicting(truth, range(3)), held) is (
        Verdict.PROMOTED
    )
    # on two hundred: the same counts decide the same way, whatever the gain in score
    assert judge(
        predicting(TRUTH, range(60)), predicting(TRUTH, [*range(58), 60]), window(200)
    ) is (Verdict.KEPT_CURRENT)
    assert judge(predicting(TRUTH, range(60)), predicting(TRUTH, range(57)), window(200)) is (
        Verdict.PROMOTED
    )


def test_a_score_that_is_no_score_loses() -> None:
    def unscorable(truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64]) -> float:
        return math.nan if predicted[0] != truth[0] else balanced_accuracy(truth, predicted)

    held = window(200)
    broken, fine = predicting(TRUTH, [0]), predicting(TRUTH, range(1, 30))
    assert judge(fine, broken, held, metric=unscorable) is Verdict.KEPT_CURRENT
    assert judge(broken, fine, held, metric=unscorable) is Verdict.PROMOTED


@pytest.mark.parametrize(
    ("held", "verdict"),
    [
        (None, Verdict.UNDECIDED_NO_WINDOW),
        (window(0), Verdict.UNDECIDED_NO_WINDOW),
        (window(500, classes=1), Verdict.UNDECIDED_SMALL_WINDOW),  # one class says nothing
    ],
)
def test_a_window_that_cannot_decide_serves_only_where_there_are_no_labels(
    held: HeldOut | None, verdict: Verdict
) -> None:
    # even a challenger that gets every sample wrong: without labels there is no telling; with
    # labels of one class only, the host keeps what it has
    n = 0 if held is None else held.samples
    truth = labels(n, held.classes if held is not None and n else 2)
    assert judge(predicting(truth, []), predicting(truth, range(n)), held) is verdict
    assert verdict.served == (verdict is Verdict.UNDECIDED_NO_WINDOW)


def test_the_paired_error_counts_only_the_samples_the_models_disagree_on() -> None:
    held = window(100)
    same = TRUTH[:100]
    assert held.paired_error(same, same) == 0.0
    # 4 disagreements, each weighing 1 / (2 classes x 50 samples)
    flipped = same.copy()
    flipped[:4] = 1 - flipped[:4]
    assert held.paired_error(same, flipped) == pytest.approx(math.sqrt(4) / 100)


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
    "options", [{"tolerance": -0.1}, {"confidence": -1.0}, {"holdout_fraction": 1.0}]
)
def test_a_rule_that_cannot_judge_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(PromotionError):
        PromotionRule(**options)


# ---- in the host


def inverted(model: OnnxModel, scale: float = 1.0) -> OnnxModel:
    """`model` with its output layer negated (and multiplied by `scale`): it calls occupied
    what the original calls empty."""
    spec, schema, weights = families.from_onnx(model)
    flipped = {n: -scale * v if n.startswith("head.") else v for n, v in weights.items()}
    return families.build_onnx(spec, flipped, schema)


def nudged(model: OnnxModel) -> OnnxModel:
    """`model` moved by 1e-6: another digest, the same predictions on every labelled sample."""
    spec, schema, weights = families.from_onnx(model)
    shared = families.shared_names(spec)
    return families.build_onnx(
        spec, {n: v + np.float32(1e-6) if n in shared else v for n, v in weights.items()}, schema
    )


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


def test_training_is_judged_on_its_window_and_a_merge_on_every_labelled_sample(
    phones: Phones, good: OnnxModel
) -> None:
    better = phones.carrying("better", good, 500)
    space = phones.space(occupancy_model(3))
    x, y = data(500, 5)
    space.train(KEY, x, y, config=TRAINING, data_time=NOW + 60, now=NOW + 60)
    assert space.decisions[KEY].samples == 100  # training: the latest fifth, never trained on
    window = space.window(KEY)
    labelled = space.window(KEY, Change.MERGE)
    assert window is not None
    assert labelled is not None
    assert window.y.tolist() == y[400:].tolist()
    assert labelled.y.tolist() == y.tolist()
    merged = space.receive(better, now=NOW + 120)
    assert merged.decision is not None
    assert merged.decision.samples == 500  # a merge: all of them


def test_a_merge_that_changes_no_prediction_the_host_can_check_is_kept_out(
    phones: Phones, good: OnnxModel
) -> None:
    offered = phones.carrying("nudged", nudged(good), 500)
    space = judged_space(phones, good)
    before = space.slot(KEY)
    outcome = space.receive(offered, now=NOW + 60)
    assert (outcome.accepted, outcome.reason) == (False, "kept_current")
    assert outcome.decision is not None
    assert outcome.decision.challenger_score == outcome.decision.current_score
    assert space.slot(KEY).snapshot.sha256 == before.snapshot.sha256


def fine_tuning_space(phones: Phones, model: OnnxModel) -> ModelHost:
    """A space serving `model` that also fine-tunes the merges the rule refuses (the default)."""
    space = phones.space(model)
    assert space.settings.promotion.fine_tune_refused
    space.hold_out(KEY, HeldOut.of(*data(400, 9)))
    return space


def trained(
    space: ModelHost, seed: int, config: TrainConfig = TRAINING
) -> tuple[TrainingJob, list[Weights]]:
    """Space's training on 500 fresh minutes, run but not committed, and what each run learned."""
    job = space.start_training(KEY, *data(500, seed), config=config, data_time=NOW + 90)
    while not job.run(max_steps=50):  # bounded chunks, one run after the other
        pass
    return job, [trainer.result()[0] for trainer in job.trainers]


def test_a_refused_fine_tuned_merge_leaves_the_plain_training_to_be_judged(
    phones: Phones, good: OnnxModel
) -> None:
    # so sure of its wrong answers that a short run cannot turn it round
    worse = phones.carrying("worse", inverted(good, scale=1000), 50_000)
    space = fine_tuning_space(phones, occupancy_model(3))
    served = space.slot(KEY)
    assert space.receive(worse, now=NOW + 60).reason == "kept_current"
    assert space.slot(KEY).snapshot.sha256 == served.snapshot.sha256  # still not served

    # too short a run to undo the inverted merge, long enough to learn from the untrained start
    job, (plain, tuned) = trained(space, 5, TrainConfig(max_epochs=3, learning_rate=1e-2, seed=1))
    job.commit(now=NOW + 90)
    # the fine-tuned merge is judged first, and refused; then the plain run is served
    assert dict(space.promotions) == {"kept_current": 2, "promoted": 1}
    assert job.decision is not None
    assert (job.decision.change, job.decision.verdict) == (Change.TRAINING, Verdict.PROMOTED)
    assert weights_digest(space.slot(KEY).weights) == weights_digest(plain)
    assert weights_digest(plain) != weights_digest(tuned)  # the two runs did differ
    assert space.counters["fine_tuned_merges"] == 0
    assert phones.hosts["worse"].identity.id not in space.slot(KEY).state().lineage
    # the merge is handed out once: the next training runs from the served model alone
    assert len(trained(space, 6)[0].trainers) == 1


def test_a_fine_tuned_merge_that_wins_carries_the_merge_into_what_is_served(
    phones: Phones,
) -> None:
    # the served (untrained) model, nudged: kept out as predicting every labelled minute alike
    untrained = occupancy_model(3)
    offered = phones.carrying("nudged", nudged(untrained), 50_000)
    space = fine_tuning_space(phones, untrained)
    served = space.slot(KEY).state()
    assert space.receive(offered, now=NOW + 60).reason == "kept_current"

    job, (_, tuned) = trained(space, 5)
    job.commit(now=NOW + 90)
    assert job.decision is not None
    assert job.decision.served
    assert dict(space.promotions) == {"kept_current": 1, "promoted": 1}  # judged first
    assert space.counters["fine_tuned_merges"] == 1
    assert weights_digest(space.slot(KEY).weights) == weights_digest(tuned)
    now_served = space.slot(KEY).state()
    assert now_served.lineage[-2:] == (phones.hosts["nudged"].identity.id, space.identity.id)
    assert now_served.samples == 50_000
    assert now_served.version == served.version + 1


def test_a_refused_merge_is_forgotten_once_another_model_is_served(
    phones: Phones, good: OnnxModel
) -> None:
    worse = phones.carrying("worse", inverted(good), 50_000)
    better = phones.carrying("better", good, 500)
    space = fine_tuning_space(phones, occupancy_model(3))
    assert space.receive(worse, now=NOW + 60).reason == "kept_current"
    assert space.receive(better, now=NOW + 120).reason == "merged"
    assert space.take_refused_merge(KEY) is None


def test_without_fine_tuning_a_refused_merge_leaves_nothing_behind(
    phones: Phones, good: OnnxModel
) -> None:
    worse = phones.carrying("worse", inverted(good), 50_000)
    space = phones.space(occupancy_model(3), promotion=PromotionRule(fine_tune_refused=False))
    space.hold_out(KEY, HeldOut.of(*data(400, 9)))
    assert space.receive(worse, now=NOW + 60).reason == "kept_current"
    assert space.take_refused_merge(KEY) is None
    assert len(trained(space, 5)[0].trainers) == 1


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
