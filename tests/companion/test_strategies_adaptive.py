"""Adaptive parts of the strategies: freshness filter, saved state, validation gate, registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlmule_core.errors import (
    InvalidModelState,
    StrategyError,
    StrategyOptionError,
    StrategyStateError,
)
from mlmule_core.strategies import (
    DAY,
    HOUR,
    STRATEGIES,
    AggregationContext,
    MergingStrategy,
    ModelState,
    Staleness,
    Strategy,
    ValidationGated,
    make_strategy,
    merged_state,
    share_all,
    strategy_options,
)
from mlmule_core.weights import Weights, l2_distance
from test_strategies import NOW, assert_same_weights, local_state, model_state, random_weights

FILTER = {"filter_k": 3.0, "filter_floor": 6 * HOUR, "filter_ceiling": 30 * DAY}
PROPERTY = settings(max_examples=40, deadline=None)


def mlmule(**options: object) -> MergingStrategy:
    strategy = make_strategy("mlmule", **{**FILTER, **options})
    assert isinstance(strategy, MergingStrategy)
    return strategy


def encounter(strategy: Strategy, age: float, seed: int = 0) -> str:
    """One snapshot of the given data age arrives; returns the decision's reason."""
    rng = np.random.default_rng(seed)
    result = strategy.aggregate(
        local_state(random_weights(rng)),
        [model_state(random_weights(rng), age=age)],
        now=NOW,
        context=AggregationContext(shared=share_all),
    )
    return result.decisions[0].reason


def expected_tau(ages: list[float], window: int = 32) -> float:
    recent = ages[-window:]
    return min(30 * DAY, max(6 * HOUR, 3.0 * float(np.median(recent))))


# --- staleness functions --------------------------------------------------------------------


@PROPERTY
@given(
    younger=st.floats(0.0, 100 * DAY),
    extra=st.floats(1.0, 100 * DAY),
    half_life=st.floats(1.0, 10 * DAY),
    exponent=st.floats(0.01, 3.0),
)
def test_polynomial_staleness_starts_at_one_and_decreases(
    younger: float, extra: float, half_life: float, exponent: float
) -> None:
    staleness = Staleness("polynomial", half_life, exponent)
    assert staleness.weight(0.0) == 1.0
    assert 0.0 < staleness.weight(younger + extra) < staleness.weight(younger) <= 1.0


@PROPERTY
@given(age=st.floats(0.0, 100 * DAY), after=st.floats(0.0, 10 * DAY), a=st.floats(0.0, 3.0))
def test_hinge_staleness_is_fedasyncs_hinge_and_constant_is_one(
    age: float, after: float, a: float
) -> None:
    hinge = Staleness("hinge", HOUR, a, after)
    # Xie et al.: s(x) = 1 if x <= b else 1 / (a (x - b) + 1), with x in units of half_life.
    paper = 1.0 if age <= after else 1.0 / (a * (age - after) / HOUR + 1.0)
    assert hinge.weight(age) == pytest.approx(paper, rel=1e-12)
    assert Staleness("constant").weight(age) == 1.0


def test_future_data_counts_as_fresh_not_fresher() -> None:
    """A phone clock a little ahead must not earn a weight above one."""
    assert Staleness().weight(-3600.0) == 1.0


# --- the adaptive freshness filter ----------------------------------------------------------


@PROPERTY
@given(ages=st.lists(st.floats(0.0, 90 * DAY), min_size=1, max_size=80))
def test_tau_tracks_the_clamped_median_of_recently_seen_ages(ages: list[float]) -> None:
    strategy = mlmule()
    assert strategy.tau == 30 * DAY  # nothing seen yet: only the ceiling applies
    seen = []
    for age in ages:
        encounter(strategy, age)
        seen.append(NOW - (NOW - age))  # the age as the strategy computes it from data_time
        assert strategy.tau == pytest.approx(expected_tau(seen), rel=1e-12)
        assert 6 * HOUR <= strategy.tau <= 30 * DAY


@settings(max_examples=20, deadline=None)
@given(
    busy_ages=st.lists(st.floats(60.0, HOUR), min_size=8, max_size=40),
    laggard=st.floats(18 * HOUR, 29 * DAY),
)
def test_a_busy_space_ignores_laggards_unless_the_filter_is_off(
    busy_ages: list[float], laggard: float
) -> None:
    strategy = mlmule()
    for age in busy_ages:
        assert encounter(strategy, age) == "accepted"
    assert strategy.tau == 6 * HOUR  # 3 x a median under an hour, raised to the floor
    assert encounter(strategy, laggard) == "stale"
    unfiltered = mlmule(freshness_filter=False)
    for age in busy_ages:
        encounter(unfiltered, age)
    assert encounter(unfiltered, laggard) == "accepted"
    assert unfiltered.tau is None


@settings(max_examples=20, deadline=None)
@given(visits=st.lists(st.floats(3 * DAY, 8.9 * DAY), min_size=1, max_size=20))
def test_a_rarely_visited_space_is_not_starved(visits: list[float]) -> None:
    """Only old snapshots ever reach it; while their ages stay within a factor k of each other,
    every one of them is merged."""
    strategy = mlmule()
    for age in visits:
        assert encounter(strategy, age) == "accepted"


def test_a_space_whose_visitors_thin_out_recovers_within_half_a_window() -> None:
    window = 16
    strategy = mlmule(filter_window=window)
    for _ in range(window):
        encounter(strategy, 20 * 60.0)
    outcomes = [encounter(strategy, 3 * DAY) for _ in range(window)]
    # The median needs a majority of old ages; until then they are stale, afterwards merged.
    first_accepted = outcomes.index("accepted")
    assert first_accepted == window // 2
    assert set(outcomes[:first_accepted]) == {"stale"}
    assert set(outcomes[first_accepted:]) == {"accepted"}


def test_the_filter_clamps_to_its_floor_and_ceiling() -> None:
    strategy = mlmule()
    for _ in range(5):
        encounter(strategy, 60 * DAY)
    assert strategy.tau == 30 * DAY
    assert encounter(strategy, 31 * DAY) == "stale"
    assert encounter(strategy, 29 * DAY) == "accepted"


# --- persisted state ------------------------------------------------------------------------


@PROPERTY
@given(
    ages=st.lists(st.floats(0.0, 60 * DAY), max_size=40),
    probe=st.floats(0.0, 40 * DAY),
)
def test_filter_state_round_trips_through_json(ages: list[float], probe: float) -> None:
    original = mlmule(clip_multiple=2.0)
    for index, age in enumerate(ages):
        encounter(original, age, seed=index)
    restored = mlmule(clip_multiple=2.0)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    assert restored.tau == original.tau
    assert encounter(restored, probe) == encounter(original, probe)
    assert restored.state_dict() == original.state_dict()


def test_adaptive_clip_state_round_trips_and_sets_the_bound() -> None:
    original = make_strategy("fedavg", clip_multiple=1.5)
    for seed in range(4):
        encounter(original, 600.0, seed=seed)
    state = json.loads(json.dumps(original.state_dict()))
    assert len(state["update_norms"]) == 4
    restored = make_strategy("fedavg", clip_multiple=1.5)
    restored.load_state_dict(state)
    rng = np.random.default_rng(99)
    local = local_state(random_weights(rng))
    far = model_state({n: v + 100 for n, v in local.weights.items()})
    context = AggregationContext(shared=share_all)
    moved = [
        l2_distance(s.aggregate(local, [far], now=NOW, context=context).weights, local.weights)
        for s in (original, restored)
    ]
    bound = 1.5 * float(np.median(state["update_norms"]))
    assert moved[0] == moved[1]
    assert moved[0] <= bound * (1 + 1e-6)


def test_state_of_a_disabled_part_is_ignored_and_a_missing_part_starts_empty() -> None:
    with_filter = mlmule()
    encounter(with_filter, HOUR)
    without_filter = mlmule(freshness_filter=False)
    without_filter.load_state_dict(with_filter.state_dict())
    assert without_filter.state_dict() == {"format": 1, "strategy": "mlmule"}
    fresh = mlmule()
    fresh.load_state_dict({"format": 1, "strategy": "mlmule"})
    assert fresh.tau == 30 * DAY


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"strategy": "mlmule", "ages": []},
        {"format": 2, "strategy": "mlmule", "ages": []},
        {"format": 1, "strategy": "fedavg"},
        {"format": 1, "strategy": "mlmule", "ages": [1.0], "colour": "blue"},
        {"format": 1, "strategy": "mlmule", "ages": [-1.0]},
        {"format": 1, "strategy": "mlmule", "ages": [float("nan")]},
        {"format": 1, "strategy": "mlmule", "ages": ["1"]},
        {"format": 1, "strategy": "mlmule", "ages": [True]},
        {"format": 1, "strategy": "mlmule", "ages": 5},
        {"format": 1, "strategy": "mlmule", "update_norms": {"a": 1}},
    ],
)
def test_malformed_state_is_refused_and_changes_nothing(state: object) -> None:
    strategy = mlmule(clip_multiple=2.0)
    encounter(strategy, 2 * HOUR)
    before = strategy.state_dict()
    with pytest.raises(StrategyStateError) as caught:
        strategy.load_state_dict(state)
    assert caught.value.reason == "strategy_state"
    assert strategy.state_dict() == before


def test_a_long_persisted_history_keeps_only_the_window() -> None:
    strategy = mlmule(filter_window=4)
    strategy.load_state_dict({"format": 1, "strategy": "mlmule", "ages": list(range(10))})
    assert strategy.state_dict()["ages"] == [6.0, 7.0, 8.0, 9.0]


# --- the validation gate --------------------------------------------------------------------


def distance_score(target: Weights) -> AggregationContext:
    """Higher is better: minus the distance to a target model."""
    return AggregationContext(
        shared=share_all, evaluate=lambda weights: -l2_distance(weights, target)
    )


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), epsilon=st.floats(0.0, 1.0), guest=st.booleans())
def test_the_gate_keeps_a_merge_exactly_when_the_score_drops_by_at_most_epsilon(
    seed: int, epsilon: float, guest: bool
) -> None:
    rng = np.random.default_rng(seed)
    local = local_state(random_weights(rng))
    incoming = model_state(random_weights(rng), guest=guest)
    target = random_weights(rng)
    context = distance_score(target)
    ungated = make_strategy("mlmule").aggregate(local, [incoming], now=NOW, context=context)
    gate = make_strategy("mlmule", gate="guests", gate_epsilon=epsilon)
    result = gate.aggregate(local, [incoming], now=NOW, context=context)

    assert context.evaluate is not None
    keeps = context.evaluate(ungated.weights) >= context.evaluate(local.weights) - epsilon
    if keeps or not guest:  # only guests are gated by default
        assert_same_weights(result.weights, ungated.weights)
        assert result.decisions == ungated.decisions
    else:
        assert_same_weights(result.weights, local.weights)
        assert result.decisions[0].reason == "validation_drop"
        assert not result.decisions[0].accepted
        assert dict(result.mixing) == {"space": 1.0}


def test_the_gate_drops_only_the_guests_of_a_mixed_batch() -> None:
    rng = np.random.default_rng(7)
    target = random_weights(rng)
    local = local_state(random_weights(rng))
    helpful = model_state(target, origin="resident")
    harmful = model_state({n: v + 50 for n, v in target.items()}, origin="visitor", guest=True)
    context = distance_score(target)
    # without the guest clip, which would shrink the harmful update before the gate sees it
    gated = make_strategy("mlmule", gate="guests", guest_clip=None)
    result = gated.aggregate(local, [harmful, helpful], now=NOW, context=context)
    resident_only = make_strategy("mlmule").aggregate(local, [helpful], now=NOW, context=context)
    assert [d.reason for d in result.decisions] == ["validation_drop", "accepted"]
    assert_same_weights(result.weights, resident_only.weights)
    assert result.decisions[1] == resident_only.decisions[0]

    # With scope "all" the harmful pair is judged together and the resident goes with it.
    everything = make_strategy("mlmule", gate="all", guest_clip=None)
    joint = everything.aggregate(local, [harmful, helpful], now=NOW, context=context)
    assert [d.reason for d in joint.decisions] == ["validation_drop", "validation_drop"]
    assert_same_weights(joint.weights, local.weights)


@pytest.mark.parametrize(
    "evaluate", [None, lambda _: float("nan")], ids=["no-evaluator", "nan-score"]
)
def test_guests_without_a_usable_evaluation_are_merged_within_their_bounds(
    evaluate: object,
) -> None:
    """The labels are elsewhere (mobile-data mode): the gate keeps the merge, which the guest
    bounds limit and the host's promotion rule judges where labels exist."""
    rng = np.random.default_rng(3)
    local = local_state(random_weights(rng))
    guest = model_state(random_weights(rng), guest=True)
    resident = model_state(random_weights(rng), origin="resident")
    context = AggregationContext(shared=share_all, evaluate=evaluate)
    result = make_strategy("fedavg", gate="guests").aggregate(
        local, [guest, resident], now=NOW, context=context
    )
    ungated = make_strategy("fedavg").aggregate(local, [guest, resident], now=NOW, context=context)
    assert all(d.accepted for d in result.decisions)
    assert_same_weights(result.weights, ungated.weights)


def test_a_gated_strategy_records_ages_once_and_shares_its_state() -> None:
    gated = make_strategy("mlmule", gate="all")
    assert isinstance(gated, ValidationGated)
    assert gated.name == "mlmule+gated"
    encounter(gated, 2 * HOUR)
    state = gated.state_dict()
    assert state["ages"] == [pytest.approx(2 * HOUR)]
    plain = mlmule()
    plain.load_state_dict(state)
    assert plain.tau == gated.inner.tau


# --- registry and validation ----------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_registered_strategy_builds_merges_and_describes_itself(name: str) -> None:
    strategy = make_strategy(name)
    assert strategy.name == name
    assert encounter(strategy, HOUR) == "accepted"
    described = json.loads(json.dumps(strategy.describe()))
    assert described["name"] == name
    assert set(strategy_options(name)) >= {"clip_norm", "clip_multiple", "trim", "gate"}


def test_describe_reports_the_options_in_force() -> None:
    described = make_strategy("mlmule", alpha_max=0.5, trim=0.25, gate="guests").describe()
    assert described["name"] == "mlmule+gated"
    assert described["alpha_max"] == 0.5
    assert described["trim"] == 0.25
    assert described["gate"] == "guests"
    assert described["filter"] == {
        "k": 3.0,
        "floor": 6 * HOUR,
        "ceiling": 30 * DAY,
        "window": 32,
    }


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("gossip", {}),
        ("fedavg", {"alpha": 0.5}),
        ("fedavg", {"trim": 0.5}),
        ("fedavg", {"trim": -0.1}),
        ("fedavg", {"clip_norm": 0}),
        ("fedavg", {"clip_norm": True}),
        ("fedavg", {"clip_multiple": float("inf")}),
        ("fedavg", {"clip_window": 2}),
        ("fedavg", {"gate": "guest"}),
        ("fedavg", {"gate_epsilon": 0.1}),
        ("fedavg", {"gate": "all", "gate_epsilon": -0.1}),
        ("fedasync", {"alpha": 0}),
        ("fedasync", {"alpha": "0.5"}),
        ("fedasync", {"clock": "wall"}),
        ("fedasync", {"exponent": math.nan}),
        ("fedasync", {"half_life": 0}),
        ("mlmule", {"alpha_max": 1.5}),
        ("mlmule", {"staleness": "exponential"}),
        ("mlmule", {"hinge_after": -1}),
        ("mlmule", {"freshness_filter": 1}),
        ("mlmule", {"filter_k": 0}),
        ("mlmule", {"filter_floor": 10 * DAY, "filter_ceiling": DAY}),
        ("mlmule", {"filter_window": 0}),
        ("mlmule", {"filter_window": 2.5}),
    ],
)
def test_bad_names_and_options_are_refused_clearly(name: str, options: dict[str, object]) -> None:
    with pytest.raises(StrategyOptionError) as caught:
        make_strategy(name, **options)
    assert caught.value.reason == "strategy_option"
    assert str(caught.value)


# --- model states and the next version ------------------------------------------------------


def good_fields() -> dict[str, object]:
    return {
        "weights": {"w": np.zeros(2, dtype=np.float32)},
        "created_at": NOW,
        "data_time": NOW,
        "samples": 1,
        "version": 0,
        "origin": "space",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("weights", {"w": np.zeros(2, dtype=np.float64)}),
        ("weights", {"w": [0.0, 0.0]}),
        ("weights", [("w", np.zeros(2, dtype=np.float32))]),
        ("created_at", float("inf")),
        ("data_time", float("nan")),
        ("data_time", "yesterday"),
        ("samples", -1),
        ("samples", 1.5),
        ("samples", True),
        ("version", -3),
        ("origin", ""),
        ("origin", None),
        ("lineage", ["a"]),
        ("guest", "yes"),
    ],
)
def test_model_states_with_unusable_metadata_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidModelState) as caught:
        ModelState(**{**good_fields(), field: value})
    assert caught.value.reason == "model_state"


def test_a_non_finite_local_model_or_clock_stops_the_merge() -> None:
    rng = np.random.default_rng(1)
    good = random_weights(rng)
    broken = {**good, "head.bias": np.array([np.nan, 0], dtype=np.float32)}
    strategy = make_strategy("mlmule")
    context = AggregationContext(shared=share_all)
    with pytest.raises(InvalidModelState):
        strategy.aggregate(local_state(broken), [], now=NOW, context=context)
    with pytest.raises(StrategyError) as caught:
        strategy.aggregate(local_state(good), [], now=math.nan, context=context)
    assert caught.value.reason == "bad_time"


def test_merged_state_versions_the_result() -> None:
    rng = np.random.default_rng(5)
    local = ModelState(
        weights=random_weights(rng),
        created_at=NOW - DAY,
        data_time=NOW - DAY,
        samples=100,
        version=7,
        origin="space",
        lineage=("x", "y"),
    )
    fresh = model_state(random_weights(rng), age=HOUR, samples=300, origin="phone")
    stale = model_state(random_weights(rng), age=90 * DAY, samples=50, origin="old")
    strategy = make_strategy("mlmule")
    context = AggregationContext(shared=share_all)
    result = strategy.aggregate(local, [fresh, stale], now=NOW, context=context)
    assert [d.reason for d in result.decisions] == ["accepted", "stale"]

    merged = merged_state(local, [fresh, stale], result, now=NOW, origin="space2", lineage_limit=2)
    assert merged.weights is result.weights
    assert merged.version == 8
    assert merged.created_at == NOW
    assert merged.data_time == fresh.data_time
    assert merged.samples == 300  # the largest count behind it: merging adds no evidence
    assert merged.lineage == ("y", "phone")
    assert merged.origin == "space2"
    assert not merged.guest

    nothing = strategy.aggregate(local, [stale], now=NOW, context=context)
    assert merged_state(local, [stale], nothing, now=NOW) is local
    with pytest.raises(StrategyError):
        merged_state(local, [], result, now=NOW)


def test_zero_updates_do_not_pin_the_adaptive_clip_bound_at_zero() -> None:
    rng = np.random.default_rng(11)
    local = local_state(random_weights(rng))
    strategy = make_strategy("mlmule", clip_multiple=2.0)
    context = AggregationContext(shared=share_all)
    for _ in range(5):  # mules bringing back the very model the space holds
        strategy.aggregate(local, [model_state(local.weights)], now=NOW, context=context)
    assert strategy.state_dict()["update_norms"] == []
    update = model_state({n: v + 0.1 for n, v in local.weights.items()})
    result = strategy.aggregate(local, [update], now=NOW, context=context)
    assert l2_distance(result.weights, local.weights) > 0


def test_peers_that_keep_merging_each_other_do_not_inflate_their_sample_counts() -> None:
    # The benchmark's finding: with counts added at every merge, a space and a phone that
    # exchange at every visit multiplied their counts by ~1.5 per exchange, passed what a
    # snapshot header holds within days, and drowned every newcomer's share on the way.
    rng = np.random.default_rng(5)
    strategy = make_strategy("mlmule")
    context = AggregationContext(shared=share_all)
    space = model_state(random_weights(rng), age=HOUR, samples=1440, origin="space")
    phone = model_state(random_weights(rng), age=HOUR, samples=600, origin="phone")
    for visit in range(200):
        now = NOW + visit * HOUR
        result = strategy.aggregate(space, [phone], now=now, context=context)
        space = merged_state(space, [phone], result, now=now)
        result = strategy.aggregate(phone, [space], now=now, context=context)
        phone = merged_state(phone, [space], result, now=now)
    assert space.samples == phone.samples == 1440
    newcomer = model_state(random_weights(rng), age=HOUR, samples=1440, origin="guest")
    shared = strategy.aggregate(space, [newcomer], now=NOW, context=context)
    assert shared.decisions[0].weight > 0.2
