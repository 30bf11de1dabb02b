"""Aggregation strategies: properties every strategy keeps, and each one's own formula."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from mlmule_core.strategies import (
    HOUR,
    AggregationContext,
    AggregationResult,
    ModelState,
    Strategy,
    make_strategy,
    share_all,
)
from mlmule_core.weights import Weights, l2_distance

NOW = 1_700_000_000.0
DAY = 24 * HOUR
LAYOUT = {"body.0.weight": (3, 2), "body.0.bias": (3,), "head.weight": (2, 3), "head.bias": (2,)}
BODY = frozenset({"body.0.weight", "body.0.bias"})
HEAD = ("head.weight", "head.bias")

# Every configuration the property tests run: (test id, strategy name, options).
CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "fedavg": ("fedavg", {}),
    "fedavg-trim": ("fedavg", {"trim": 0.2}),
    "fedasync": ("fedasync", {}),
    "fedasync-constant": ("fedasync", {"staleness": "constant"}),
    "fedasync-hinge": ("fedasync", {"staleness": "hinge", "hinge_after": HOUR, "exponent": 1.0}),
    "fedasync-version": ("fedasync", {"clock": "version"}),
    "mlmule": ("mlmule", {}),
    "mlmule-nofilter": ("mlmule", {"freshness_filter": False}),
    "mlmule-clip": ("mlmule", {"clip_norm": 0.5}),
    "mlmule-adaptive-clip": ("mlmule", {"clip_multiple": 2.0, "clip_norm": 1.0}),
    "mlmule-trim-clip": ("mlmule", {"trim": 0.2, "clip_norm": 1.0}),
    "mlmule-gated": ("mlmule", {"gate": "all", "gate_epsilon": 0.0}),
}
# Configurations that weigh a state by how old it is (the others ignore time by design).
STALENESS_AWARE = {
    "fedasync",
    "fedasync-hinge",
    "fedasync-version",
    "mlmule",
    "mlmule-nofilter",
    "mlmule-clip",
    "mlmule-adaptive-clip",
    "mlmule-trim-clip",
    "mlmule-gated",
}
TRIMMED = {"fedavg-trim", "mlmule-trim-clip"}
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The properties every configuration keeps run once per configuration: fewer examples each.
EVERY_CONFIG = settings(PROPERTY, max_examples=20)


def build(config: str) -> Strategy:
    name, options = CONFIGS[config]
    return make_strategy(name, **options)


def context(shared: frozenset[str] | None = None) -> AggregationContext:
    """Everything shared unless told; a gate that always passes (its own tests are elsewhere)."""
    return AggregationContext(
        shared=share_all if shared is None else shared, evaluate=lambda _: 0.0
    )


def model_state(
    weights: Weights,
    *,
    age: float = 600.0,
    samples: int = 100,
    origin: str = "mule",
    version: int = 50,
    guest: bool = False,
) -> ModelState:
    return ModelState(
        weights=weights,
        created_at=NOW - age,
        data_time=NOW - age,
        samples=samples,
        version=version,
        origin=origin,
        guest=guest,
    )


def local_state(weights: Weights, samples: int = 100) -> ModelState:
    return model_state(weights, age=0.0, samples=samples, origin="space", version=50)


def weights_st(bound: float = 4.0) -> st.SearchStrategy[Weights]:
    element = st.floats(-bound, bound, width=32)
    parts = {name: arrays(np.float32, shape, elements=element) for name, shape in LAYOUT.items()}
    return st.fixed_dictionaries(parts).map(lambda drawn: {name: drawn[name] for name in LAYOUT})


def shifted(weights: Weights, direction: Weights, scale: float = 1.0) -> Weights:
    return {
        name: (value + np.float32(scale) * direction[name]).astype(np.float32)
        for name, value in weights.items()
    }


def random_weights(rng: np.random.Generator, scale: float = 1.0) -> Weights:
    return {
        name: (scale * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in LAYOUT.items()
    }


def merge(
    strategy: Strategy,
    local: ModelState,
    incoming: Sequence[ModelState],
    shared: frozenset[str] | None = None,
) -> AggregationResult:
    return strategy.aggregate(local, incoming, now=NOW, context=context(shared))


def assert_same_weights(a: Weights, b: Weights) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@st.composite
def incoming_st(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 5
) -> list[tuple[Weights, float, int, str, bool]]:
    """Incoming (weights, data age, samples, origin, guest); "space" is also the local origin.

    Hypothesis draws the metadata; the weights come from a drawn seed, which is much faster than
    drawing every array element and still varies them from example to example.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.floats(0.01, 4.0))
    metadata = st.tuples(
        st.floats(0.0, 40 * DAY),
        st.integers(0, 1000),
        st.sampled_from(["space", "a", "b"]),
        st.booleans(),
    )
    drawn = draw(st.lists(metadata, min_size=min_size, max_size=max_size))
    return [(random_weights(rng, scale), *entry) for entry in drawn]


# --- properties of every strategy -----------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@EVERY_CONFIG
@given(
    weights=weights_st(),
    copies=st.lists(st.tuples(st.floats(0.0, 40 * DAY), st.integers(1, 1000)), max_size=5),
)
def test_merging_identical_models_is_the_identity(
    config: str, weights: Weights, copies: list[tuple[float, int]]
) -> None:
    incoming = [model_state(weights, age=age, samples=n) for age, n in copies]
    result = merge(build(config), local_state(weights), incoming)
    assert_same_weights(result.weights, weights)


@pytest.mark.parametrize("config", list(CONFIGS))
@EVERY_CONFIG
@given(local_weights=weights_st(), drawn=incoming_st(), local_samples=st.integers(0, 1000))
def test_mixing_is_a_distribution_and_the_merge_stays_in_the_hull(
    config: str,
    local_weights: Weights,
    drawn: list[tuple[Weights, float, int, str, bool]],
    local_samples: int,
) -> None:
    local = local_state(local_weights, samples=local_samples)
    incoming = [
        model_state(w, age=age, samples=n, origin=origin, guest=guest)
        for w, age, n, origin, guest in drawn
    ]
    result = merge(build(config), local, incoming)

    assert len(result.decisions) == len(incoming)
    assert all(0.0 <= share <= 1.0 for share in result.mixing.values())
    assert sum(result.mixing.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= d.weight <= 1.0 for d in result.decisions)
    assert all(d.weight == 0.0 for d in result.decisions if not d.accepted)
    accepted = [s for s, d in zip(incoming, result.decisions, strict=True) if d.accepted]
    for name, value in result.weights.items():
        stacked = np.stack([local.weights[name]] + [s.weights[name] for s in accepted])
        assert np.all(value >= stacked.min(axis=0) - 1e-5)
        assert np.all(value <= stacked.max(axis=0) + 1e-5)
    if config not in TRIMMED:
        # A linear merge is exactly the mixture its decisions report.
        local_share = 1.0 - sum(d.weight for d in result.decisions)
        for name, value in result.weights.items():
            mixture = local_share * local.weights[name].astype(np.float64)
            for state, decision in zip(incoming, result.decisions, strict=True):
                mixture += decision.weight * state.weights[name]
            np.testing.assert_allclose(value, mixture, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("config", list(CONFIGS))
@EVERY_CONFIG
@given(
    local_weights=weights_st(),
    direction=weights_st(),
    fresh_age=st.floats(0.0, 2 * HOUR),
    extra_age=st.floats(2 * HOUR, 20 * DAY),
    lag=st.integers(1, 5),
)
def test_a_stale_snapshot_moves_the_model_less_than_a_fresh_one(
    *,
    config: str,
    local_weights: Weights,
    direction: Weights,
    fresh_age: float,
    extra_age: float,
    lag: int,
) -> None:
    assume(l2_distance(direction, {n: np.zeros_like(v) for n, v in direction.items()}) > 0.1)
    local = local_state(local_weights)
    moved = shifted(local_weights, direction)
    fresh = model_state(moved, age=fresh_age, version=local.version)
    # Older data, and for the version clock an older version: stale on every clock.
    stale = model_state(moved, age=fresh_age + extra_age, version=local.version - lag)
    fresh_move = l2_distance(merge(build(config), local, [fresh]).weights, local_weights)
    stale_move = l2_distance(merge(build(config), local, [stale]).weights, local_weights)
    assert fresh_move > 0
    if config in STALENESS_AWARE:
        assert stale_move < fresh_move
    else:
        assert stale_move == pytest.approx(fresh_move, rel=1e-6)


@pytest.mark.parametrize("config", list(CONFIGS))
@EVERY_CONFIG
@given(local_weights=weights_st(), drawn=incoming_st(min_size=1))
def test_personal_parameters_never_change(
    config: str, local_weights: Weights, drawn: list[tuple[Weights, float, int, str, bool]]
) -> None:
    incoming = [model_state(w, age=age, samples=n + 1) for w, age, n, _, _ in drawn]
    result = merge(build(config), local_state(local_weights), incoming, shared=BODY)
    for name in HEAD:
        np.testing.assert_array_equal(result.weights[name], local_weights[name])


def nan_at(weights: Weights, name: str, position: int, value: float) -> Weights:
    broken = {n: v.copy() for n, v in weights.items()}
    broken[name].reshape(-1)[position % broken[name].size] = value
    return broken


def reshaped(weights: Weights) -> Weights:
    broken = dict(weights)
    broken["body.0.bias"] = np.zeros(4, dtype=np.float32)
    return broken


def reordered(weights: Weights) -> Weights:
    return dict(reversed(weights.items()))


def renamed(weights: Weights) -> Weights:
    return {("body.1.bias" if n == "body.0.bias" else n): v for n, v in weights.items()}


def missing(weights: Weights) -> Weights:
    return {n: v for n, v in weights.items() if n != "head.bias"}


BREAKAGES: dict[str, tuple[str, Callable[[Weights, int], Weights]]] = {
    "nan": ("poisoned", lambda w, i: nan_at(w, "body.0.weight", i, float("nan"))),
    "inf-in-head": ("poisoned", lambda w, i: nan_at(w, "head.weight", i, float("-inf"))),
    "shape": ("incompatible", lambda w, _: reshaped(w)),
    "order": ("incompatible", lambda w, _: reordered(w)),
    "name": ("incompatible", lambda w, _: renamed(w)),
    "missing": ("incompatible", lambda w, _: missing(w)),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("breakage", list(BREAKAGES))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), position=st.integers(0, 99))
def test_broken_states_are_rejected_and_leave_no_trace(
    config: str, breakage: str, seed: int, position: int
) -> None:
    reason, breaker = BREAKAGES[breakage]
    rng = np.random.default_rng(seed)
    local_weights, good_weights = random_weights(rng), random_weights(rng)
    local = local_state(local_weights)
    bad = model_state(breaker(good_weights, position), origin="bad")
    good = model_state(good_weights, origin="good")

    alone = merge(build(config), local, [bad])
    assert_same_weights(alone.weights, local_weights)
    assert alone.decisions[0].reason == reason
    assert not alone.decisions[0].accepted
    assert dict(alone.mixing) == {"space": 1.0}

    # Next to a good state, the broken one changes nothing: not the merge, not the state.
    with_bad, without_bad = build(config), build(config)
    mixed = merge(with_bad, local, [bad, good])
    clean = merge(without_bad, local, [good])
    assert_same_weights(mixed.weights, clean.weights)
    assert mixed.decisions[1] == clean.decisions[0]
    assert with_bad.state_dict() == without_bad.state_dict()


@pytest.mark.parametrize("config", list(CONFIGS))
@settings(max_examples=15, deadline=None)
@given(local_weights=weights_st(), samples=st.integers(0, 1000))
def test_states_trained_on_nothing_are_not_merged(
    config: str, local_weights: Weights, samples: int
) -> None:
    empty = model_state(shifted(local_weights, local_weights), samples=0)
    result = merge(build(config), local_state(local_weights, samples), [empty])
    assert result.decisions[0].reason == "empty"
    assert_same_weights(result.weights, local_weights)


# --- robust variants ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedasync", "mlmule"])
@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    clip_norm=st.floats(0.05, 2.0),
    update_scale=st.floats(0.01, 1.0),
)
def test_norm_clipping_bounds_a_poisoned_update(
    name: str, seed: int, clip_norm: float, update_scale: float
) -> None:
    rng = np.random.default_rng(seed)
    local = local_state(random_weights(rng))
    update = random_weights(rng, update_scale)
    poisoned = model_state(shifted(local.weights, update, 100.0))
    clipped = merge(make_strategy(name, clip_norm=clip_norm), local, [poisoned])
    unclipped = merge(make_strategy(name), local, [poisoned])
    moved = l2_distance(clipped.weights, local.weights)
    assert moved <= clip_norm * (1 + 1e-5) + 1e-5
    assert moved <= l2_distance(unclipped.weights, local.weights) + 1e-5
    assert clipped.decisions[0].reason == "clipped"


@pytest.mark.parametrize("name", ["fedavg", "mlmule"])
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), normal_updates=st.integers(3, 8), multiple=st.floats(1, 4))
def test_adaptive_clipping_bounds_a_poisoned_update_by_a_multiple_of_the_median(
    name: str, seed: int, normal_updates: int, multiple: float
) -> None:
    rng = np.random.default_rng(seed)
    local = local_state(random_weights(rng))
    strategy = make_strategy(name, clip_multiple=multiple)
    norms = []
    for _ in range(normal_updates):
        update = random_weights(rng, 0.1)
        norms.append(l2_distance(update, {n: np.zeros_like(v) for n, v in update.items()}))
        merge(strategy, local, [model_state(shifted(local.weights, update))])
    assert strategy.state_dict()["update_norms"] == pytest.approx(norms, rel=1e-4)

    poisoned = model_state(shifted(local.weights, random_weights(rng, 0.1), 100.0))
    moved = l2_distance(merge(strategy, local, [poisoned]).weights, local.weights)
    assert moved <= multiple * float(np.median(norms)) * (1 + 1e-5) + 1e-5


@pytest.mark.parametrize("name", ["fedavg", "fedasync", "mlmule"])
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), normal=st.integers(2, 5), outlier_at=st.integers(0, 5))
def test_trimmed_mean_ignores_one_outlier_among_three_or_more(
    name: str, seed: int, normal: int, outlier_at: int
) -> None:
    rng = np.random.default_rng(seed)
    local = local_state(random_weights(rng))
    normals = [
        model_state(shifted(local.weights, random_weights(rng, 0.1)), origin=f"n{i}")
        for i in range(normal)
    ]
    outlier = model_state(shifted(local.weights, random_weights(rng, 0.1), 100.0), origin="x")
    incoming = [*normals]
    incoming.insert(outlier_at % (normal + 1), outlier)

    def within_normals(weights: Weights) -> bool:
        for n, value in weights.items():
            stacked = np.stack([local.weights[n]] + [s.weights[n] for s in normals])
            if np.any(value < stacked.min(axis=0) - 1e-5) or np.any(
                value > stacked.max(axis=0) + 1e-5
            ):
                return False
        return True

    trimmed = merge(make_strategy(name, trim=0.2), local, incoming)
    assert within_normals(trimmed.weights)
    assert sum(trimmed.mixing.values()) == pytest.approx(1.0)
    if name != "fedasync":
        # Sanity check of the setup: untrimmed, the outlier's share (at least 1/7 here) drags the
        # merge outside. FedAsync may shrink a first-applied outlier to almost nothing.
        assert not within_normals(merge(make_strategy(name), local, incoming).weights)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), pending=st.integers(3, 9), trim=st.floats(0.01, 0.45))
def test_trimmed_fedavg_matches_scipy_trim_mean(seed: int, pending: int, trim: float) -> None:
    rng = np.random.default_rng(seed)
    local = local_state(random_weights(rng), samples=50)
    incoming = [
        model_state(random_weights(rng), samples=50, origin=f"m{i}") for i in range(pending)
    ]
    strategy = make_strategy("fedavg", trim=trim)
    cut = min(int(np.ceil(trim * pending)), (pending - 1) // 2)
    result = merge(strategy, local, incoming)
    for name, value in result.weights.items():
        deltas = np.stack([s.weights[name] - local.weights[name] for s in incoming])
        # Equal samples: the incoming states together hold pending / (pending + 1) of the merge.
        expected = local.weights[name] + pending / (pending + 1) * scipy.stats.trim_mean(
            deltas.astype(np.float64), (cut + 0.5) / pending, axis=0
        )
        np.testing.assert_allclose(value, expected, atol=1e-5, err_msg=name)


# --- each strategy's own formula ------------------------------------------------------------


@PROPERTY
@given(local_weights=weights_st(), drawn=incoming_st(min_size=1), local_samples=st.integers(1, 999))
def test_fedavg_is_the_sample_weighted_mean(
    local_weights: Weights, drawn: list[tuple[Weights, float, int, str, bool]], local_samples: int
) -> None:
    local = local_state(local_weights, local_samples)
    incoming = [model_state(w, age=age, samples=n + 1) for w, age, n, _, _ in drawn]
    result = merge(make_strategy("fedavg"), local, incoming)
    models = [local, *incoming]
    for name, value in result.weights.items():
        expected = np.average(
            np.stack([m.weights[name].astype(np.float64) for m in models]),
            axis=0,
            weights=[m.samples for m in models],
        )
        np.testing.assert_allclose(value, expected, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("clock", ["time", "version"])
@PROPERTY
@given(
    local_weights=weights_st(),
    incoming_weights=weights_st(),
    age=st.floats(0.0, 10 * DAY),
    lag=st.integers(0, 20),
    alpha=st.floats(0.05, 1.0),
    exponent=st.floats(0.0, 2.0),
)
def test_fedasync_single_update_is_the_papers_formula(
    *,
    clock: str,
    local_weights: Weights,
    incoming_weights: Weights,
    age: float,
    lag: int,
    alpha: float,
    exponent: float,
) -> None:
    local = local_state(local_weights)
    state = model_state(incoming_weights, age=age, version=local.version - lag)
    strategy = make_strategy("fedasync", alpha=alpha, exponent=exponent, clock=clock)
    result = merge(strategy, local, [state])
    # Xie et al.: s(t - tau) = (t - tau + 1) ** -a on versions; ours scales time by half_life.
    staleness = (
        (1 + lag) ** -exponent if clock == "version" else (1 + age / (6 * HOUR)) ** -exponent
    )
    mix = alpha * staleness
    assert result.decisions[0].weight == pytest.approx(mix, rel=1e-9)
    for name, value in result.weights.items():
        expected = (1 - mix) * local_weights[name].astype(np.float64) + mix * incoming_weights[name]
        np.testing.assert_allclose(value, expected, atol=1e-5, err_msg=name)


@PROPERTY
@given(
    local_weights=weights_st(),
    drawn=st.lists(st.tuples(weights_st(), st.floats(0.0, 10 * DAY)), min_size=2, max_size=4),
)
def test_fedasync_merges_pending_states_as_if_they_arrived_oldest_first(
    local_weights: Weights, drawn: list[tuple[Weights, float]]
) -> None:
    incoming = [model_state(w, age=age, origin=f"m{i}") for i, (w, age) in enumerate(drawn)]
    batched = merge(make_strategy("fedasync"), local_state(local_weights), incoming)
    current = local_state(local_weights)
    for state in sorted(incoming, key=lambda s: s.data_time):
        step = merge(make_strategy("fedasync"), current, [state])
        current = local_state(step.weights)
    for name, value in batched.weights.items():
        np.testing.assert_allclose(value, current.weights[name], atol=1e-5, err_msg=name)


@PROPERTY
@given(
    local_weights=weights_st(),
    incoming_weights=weights_st(),
    age=st.floats(0.0, 5 * HOUR),
    n_local=st.integers(0, 1000),
    n_in=st.integers(1, 1000),
    alpha_max=st.floats(0.05, 1.0),
)
def test_mlmule_single_merge_is_the_documented_formula(
    *,
    local_weights: Weights,
    incoming_weights: Weights,
    age: float,
    n_local: int,
    n_in: int,
    alpha_max: float,
) -> None:
    local = local_state(local_weights, n_local)
    state = model_state(incoming_weights, age=age, samples=n_in)
    result = merge(make_strategy("mlmule", alpha_max=alpha_max), local, [state])
    # alpha = alpha_max * n_in / (n_in + n_local); staleness (1 + age / 3 days) ** -1.
    mix = alpha_max * n_in / (n_in + n_local) / (1 + (NOW - state.data_time) / (3 * DAY))
    assert result.decisions[0].weight == pytest.approx(mix, rel=1e-9)
    for name, value in result.weights.items():
        expected = (1 - mix) * local_weights[name].astype(np.float64) + mix * incoming_weights[name]
        np.testing.assert_allclose(value, expected, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", ["fedavg", "mlmule"])
@PROPERTY
@given(
    local_weights=weights_st(),
    drawn=incoming_st(min_size=2),
    shuffler=st.randoms(use_true_random=False),
)
def test_batch_merges_do_not_depend_on_arrival_order(
    name: str,
    local_weights: Weights,
    drawn: list[tuple[Weights, float, int, str, bool]],
    shuffler: random.Random,
) -> None:
    incoming = [model_state(w, age=age, samples=n + 1) for w, age, n, _, _ in drawn]
    permutation = list(range(len(incoming)))
    shuffler.shuffle(permutation)
    local = local_state(local_weights)
    forward = merge(make_strategy(name), local, incoming)
    shuffled = merge(make_strategy(name), local, [incoming[i] for i in permutation])
    for n, value in forward.weights.items():
        np.testing.assert_allclose(value, shuffled.weights[n], atol=1e-6, err_msg=n)
    for position, index in enumerate(permutation):
        assert shuffled.decisions[position].reason == forward.decisions[index].reason
        assert shuffled.decisions[position].weight == pytest.approx(forward.decisions[index].weight)
