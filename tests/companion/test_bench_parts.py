"""The benchmark's parts: configuration, partitions, contacts, and the ML Mule exchanges it runs
through the product's protocol endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlmule_bench.__main__ import sweep_values, swept
from mlmule_bench.config import PRESETS, BenchConfig, BenchConfigError, load_config
from mlmule_bench.data import (
    DIGITS_KEY,
    RELAY_SPACE,
    Unit,
    build_task,
    build_world,
    dirichlet_partition,
    held_out_start,
)
from mlmule_bench.methods import (
    FedAvg,
    FedAvgFineTuned,
    Gossip,
    MLMule,
    MLMuleCarryMerge,
    MLMuleNoGate,
)
from mlmule_bench.mobility import (
    Meeting,
    Visit,
    exchange_places,
    meetings,
    relay_places,
    visits,
)
from mlmule_bench.peers import Budget, Exchanges, Peer
from mlmule_bench.results import (
    markdown_tables,
    markdown_targets,
    spread,
    summarise,
    target_checks,
    time_to_target,
)
from mlmule_bench.run import run_task
from mlmule_bench.simulate import Method, Simulation
from mlmule_bench.training import LocalExecutor
from mlmule_core.families import FamilySpec
from mlmule_core.knowledge import unpack_knowledge
from mlmule_core.protocol.wire import decode_chunk, decode_control, is_chunk
from mlmule_core.snapshot import payload_kind, verify_container
from mlmule_core.weights import Weights, weights_digest
from mlmule_world.residents import ELSEWHERE_CODE

TINY = PRESETS["tiny"]


def test_a_configuration_round_trips_through_json(tmp_path: Path) -> None:
    config = TINY.with_overrides(seeds=(3, 4), methods=("local", "mlmule"))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(config.to_json()))
    assert load_config(str(path)) == config
    assert load_config("default") == BenchConfig()
    with pytest.raises(BenchConfigError, match="unknown configuration keys"):
        BenchConfig.from_json({"homes": 3, "colour": "red"})
    with pytest.raises(BenchConfigError, match="unknown methods"):
        BenchConfig(methods=("fedprox",))
    with pytest.raises(BenchConfigError, match="neither a preset"):
        load_config(str(tmp_path / "missing.json"))


def test_the_dirichlet_partition_skews_labels_more_for_a_small_alpha() -> None:
    labels = np.repeat(np.arange(10), 100)

    def top_share(alpha: float) -> float:
        owner = dirichlet_partition(labels, 8, alpha, np.random.default_rng(0))
        assert owner.shape == labels.shape
        assert set(owner.tolist()) <= set(range(8))
        shares = []
        for part in range(8):
            counts = np.bincount(labels[owner == part], minlength=10)
            if counts.sum():
                shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    # uniform parts have ~0.1 of each class; a small alpha leaves a few dominant classes
    assert top_share(0.05) > 0.5
    assert top_share(100.0) < 0.2


def test_visits_respect_the_cooldown_and_meetings_are_co_locations() -> None:
    world = build_world(TINY, 0)
    data = build_task(TINY, world, "occupancy", 0)
    end = held_out_start(TINY, world)
    found = visits(TINY, world, data, end)
    assert found
    last: dict[tuple[str, str, str], float] = {}
    for visit in found:
        assert (visit.home, visit.space) in data.kind_of_room or visit.space == RELAY_SPACE
        assert visit.time < end
        pair = (visit.home, visit.space, visit.phone)
        if pair in last:
            assert visit.time - last[pair] >= TINY.exchange_cooldown_hours * 3600
        last[pair] = visit.time
    trajectories = world.trajectories()
    row = {world.person(p).phone_id: i for i, p in enumerate(trajectories.person_ids)}
    together = meetings(world, end)
    assert together
    for meeting in together:
        assert meeting.phone_a < meeting.phone_b
        step = int(np.searchsorted(trajectories.times, meeting.time))
        place = trajectories.place[:, step]
        assert place[row[meeting.phone_a]] == place[row[meeting.phone_b]] != ELSEWHERE_CODE


def test_the_budget_allows_one_round_per_period() -> None:
    budget = Budget(start=0.0, period=100.0)
    assert budget.available("space", "k", 10.0)
    budget.spend("space", "k", 10.0)
    assert not budget.available("space", "k", 99.0)
    assert budget.available("space", "other", 99.0)
    assert budget.available("space", "k", 100.0)


def test_time_to_target_and_spread() -> None:
    assert time_to_target([0, 24, 48], [0.2, 0.6, 0.9], 0.5) == 24
    assert time_to_target([0, 24], [0.2, 0.4], 0.5) is None
    summary = spread([1.0, 2.0, 6.0])
    assert summary["median"] == 2.0
    assert summary["mean"] == 3.0
    assert (summary["min"], summary["max"]) == (1.0, 6.0)


def test_ml_mule_exchanges_run_the_real_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message is a signed control message or a chunk of a transfer, every delivered
    snapshot is a verified container, the ledger counts every byte, and no raw sample moves."""
    wire: list[bytes] = []
    counted = Exchanges._count

    def spy(self: Exchanges, payload: bytes) -> None:
        wire.append(payload)
        counted(self, payload)

    monkeypatch.setattr(Exchanges, "_count", spy)
    world = build_world(TINY, 1)
    data = build_task(TINY, world, "occupancy", 1)
    end = held_out_start(TINY, world)
    simulation = Simulation(
        TINY,
        data,
        seed=1,
        start=world.start,
        end=end,
        homes=[home.home_id for home in world.homes],
        phones={person.phone_id: person.home_id for person in world.people},
        visits=visits(TINY, world, data, end),
        meetings=[],
        executor=LocalExecutor(),
    )
    delivered: list[bytes] = []
    for side in ("_space_delivered", "_mule_delivered"):
        original = getattr(Exchanges, side)

        def watch(self, home, space, mule, action, now, original=original):  # type: ignore[no-untyped-def]
            delivered.append(action.payload)
            return (yield from original(self, home, space, mule, action, now))

        monkeypatch.setattr(Exchanges, side, watch)
    result = simulation.run(MLMule)
    ledger = result.ledger
    assert ledger.raw_samples_moved == 0
    assert ledger.exchanges > 0
    assert delivered
    assert sum(len(payload) for payload in wire) == ledger.bytes_moved
    controls = [payload for payload in wire if not is_chunk(payload)]
    chunks = [payload for payload in wire if is_chunk(payload)]
    assert sum(map(len, chunks)) == ledger.chunk_bytes
    for payload in controls:
        decode_control(payload, 64 * 1024)  # well-formed (signatures are checked on receipt)
    assert all(decode_chunk(payload).total >= 1 for payload in chunks)
    trust = _AnySigner(simulation, result)
    kinds = set()
    for payload in delivered:
        kind = payload_kind(payload)
        kinds.add(kind)
        header = (
            unpack_knowledge(payload, trust=trust, expected_proxy=None)
            if kind == "knowledge"
            else verify_container(payload, trust=trust)
        )
        assert header.meta.context_key.startswith("occupancy/")
    assert kinds == {"weights", "knowledge"}  # the product's default exchanges both
    # back in the space its model came from, a phone offers that space's own snapshot, and
    # nothing moves unless the space has something newer
    weights = [payload for payload in delivered if payload_kind(payload) == "weights"]
    assert len(weights) < ledger.encounters / 2


class _AnySigner:
    """Public keys of every home and phone of the run: who signs what travels."""

    def __init__(self, simulation: Simulation, result: object) -> None:
        from mlmule_bench.peers import seeded_identity  # noqa: PLC0415

        identities = [
            *(seeded_identity(simulation.seed, "mule", phone) for phone in simulation.phones),
            *(seeded_identity(simulation.seed, "space", home) for home in simulation.homes),
        ]
        self._keys = {identity.id: identity.public_key_bytes for identity in identities}

    def public_key_for(self, key_id: str) -> bytes:
        return self._keys[key_id]


# --- the fair benchmark: arrival times, the paper task, relay spaces, gossip, regressions ----


def _simulation(config: BenchConfig, task: str, seed: int) -> Simulation:
    world = build_world(config, seed)
    data = build_task(config, world, task, seed)
    end = held_out_start(config, world)
    return Simulation(
        config,
        data,
        seed=seed,
        start=world.start,
        end=end,
        homes=[home.home_id for home in world.homes],
        phones={person.phone_id: person.home_id for person in world.people},
        visits=visits(config, world, data, end),
        meetings=meetings(world, end, places=exchange_places(config, world, data)),
        executor=LocalExecutor(),
        relays=relay_places(config, world),
    )


def test_digits_arrive_over_the_learning_period_and_a_home_keeps_them() -> None:
    world = build_world(TINY, 0)
    data = build_task(TINY, world, "digits", 0)
    end = held_out_start(TINY, world)
    all_times = np.concatenate([unit.times for unit in data.units])
    assert all_times.min() >= world.start
    assert all_times.max() < end
    # spread over the period, not all at the start
    assert np.ptp(all_times) > 0.8 * (end - world.start)
    unit = data.units[0]
    assert np.all(np.diff(unit.times) >= 0)
    middle = world.start + (end - world.start) / 2
    x, y, newest = unit.window(middle, 3600.0)  # a short window: a home keeps its data set
    assert y.size == unit.samples_before(middle) > 0
    assert newest == unit.times[y.size - 1] < middle
    assert x.shape[0] == y.size


def test_the_paper_task_gives_each_group_a_subset_of_digits_shared_with_its_neighbours() -> None:
    config = TINY.with_overrides(homes=6, group_size=2)
    world = build_world(config, 0)
    data = build_task(config, world, "paper", 0)
    group = {home.home_id: home.group for home in world.homes}
    seen: dict[int, set[int]] = {}
    for unit in data.units:
        labels = {*unit.y.tolist(), *unit.y_test.tolist()}
        expected = {(2 * group[unit.home] + j) % 10 for j in range(config.paper_classes)}
        assert labels == expected, unit.home
        assert unit.y.size >= 40  # enough to learn from alone
        seen.setdefault(group[unit.home], set()).update(labels)
    assert seen[0] & seen[1]
    assert seen[0] != seen[1]


def test_relay_visits_and_gossip_meetings_are_where_ml_mule_can_exchange() -> None:
    world = build_world(TINY, 0)
    data = build_task(TINY, world, "digits", 0)
    end = held_out_start(TINY, world)
    with_relays = visits(TINY, world, data, end)
    relay_visits = [visit for visit in with_relays if visit.space == RELAY_SPACE]
    assert relay_visits
    assert {visit.home for visit in relay_visits} <= set(world.shared_places)
    no_relays = TINY.with_overrides(relays=False)
    assert all(visit.space != RELAY_SPACE for visit in visits(no_relays, world, data, end))
    places = exchange_places(no_relays, world, data)
    assert places == {home.home_id for home in world.homes}
    restricted = meetings(world, end, places=places)
    assert restricted
    assert {meeting.place for meeting in restricted} <= places
    assert len(restricted) < len(meetings(world, end))


def test_relay_spaces_keep_merge_and_hand_back_snapshots(tmp_path: Path) -> None:
    simulation = _simulation(TINY, "digits", 0)
    method = MLMule(simulation, tmp_path)
    result = simulation._run(method)
    relays = {name: peer for name, peer in method.spaces.items() if peer.home in simulation.relays}
    assert relays
    holding = [peer for peer in relays.values() if peer.host.has(DIGITS_KEY)]
    assert holding  # a relay starts empty and takes the first model a phone brings
    counters = {
        name: sum(peer.host.counters[name] for peer in relays.values())
        for name in ("adopted", "merged")
    }
    assert counters["adopted"] >= 1
    assert counters["merged"] >= 1
    assert result.ledger.raw_samples_moved == 0
    # a relay has no labels: it never trains
    assert sum(peer.host.counters["trained"] for peer in relays.values()) == 0


def test_gossip_is_store_and_forward(tmp_path: Path) -> None:
    """Two phones that meet average what they carry; a home learns it only when its phone
    comes home."""
    simulation = _simulation(TINY, "digits", 0)
    gossip = Gossip(simulation, tmp_path)
    phone_home = simulation.phones
    phone_a = next(iter(phone_home))
    phone_b = next(phone for phone, home in phone_home.items() if home != phone_home[phone_a])
    home_a, home_b = phone_home[phone_a], phone_home[phone_b]
    space_a, space_b = gossip.learners[f"{home_a}/home"], gossip.learners[f"{home_b}/home"]
    now = simulation.start + 3600.0
    # the two homes learn different models
    for space, unit in ((space_a, home_a), (space_b, home_b)):
        data = next(u for u in simulation.data.units if u.home == unit)
        space.host.train(DIGITS_KEY, data.x, data.y, data_time=now, now=now)
    gossip.on_visits([Visit(now, phone_a, home_a, "home"), Visit(now, phone_b, home_b, "home")])

    def digest(peer: Peer) -> str:
        return weights_digest(peer.host.slot(DIGITS_KEY).weights)

    assert digest(gossip.phones[phone_a]) == digest(space_a)
    before_a, before_b = digest(space_a), digest(space_b)
    gossip.on_meeting(Meeting(now + 60, *sorted((phone_a, phone_b)), home_b))
    assert digest(gossip.phones[phone_a]) == digest(gossip.phones[phone_b]) != before_a
    assert (digest(space_a), digest(space_b)) == (before_a, before_b)  # not yet at home
    gossip.on_visits([Visit(now + 120, phone_a, home_a, "home")])
    assert digest(space_a) != before_a
    assert digest(space_b) == before_b
    assert simulation.ledger.transfers == 2 + 2 + 2  # two copies, two meetings' halves, home


class _Worsening(Method):
    """Serves the starting model, then, from `at`, weights that predict one class."""

    name = "worsening"

    def __init__(self, sim: Simulation, root: Path, at: float) -> None:
        super().__init__(sim, root)
        self.at = at
        self.now = sim.start
        architecture = sim.data.architectures[DIGITS_KEY]
        self.good = (architecture.spec, architecture.initial)
        broken = {
            name: np.zeros_like(value)
            for name, value in architecture.initial.items()
            if not name.startswith(("input.", "calib."))  # normalisation, calibration stay
        }
        self.bad = (architecture.spec, {**architecture.initial, **broken})

    def on_hour(self, now: float) -> None:
        self.now = now

    def model_for(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        return self.bad if self.now >= self.at else self.good


def test_a_served_model_that_scores_lower_the_next_day_is_a_regression(tmp_path: Path) -> None:
    simulation = _simulation(TINY, "digits", 0)
    trained = {}
    architecture = simulation.data.architectures[DIGITS_KEY]
    pooled = np.concatenate([unit.x for unit in simulation.data.units])
    labels = np.concatenate([unit.y for unit in simulation.data.units])
    from mlmule_core.train_numpy import train  # noqa: PLC0415

    trained, _ = train(architecture.spec, architecture.initial, pooled, labels)
    method = _Worsening(simulation, tmp_path, at=simulation.start + 30 * 3600.0)
    method.good = (architecture.spec, trained)
    result = simulation._run(method)
    units = len(simulation.data.units)
    # one change per unit, each judged against the next day's truth: all worse
    assert result.model_changes == units
    assert result.regressions == units
    assert result.global_scores == []


def test_fedavg_ft_shares_fedavg_s_global_model_and_serves_its_fine_tune(tmp_path: Path) -> None:
    simulation = _simulation(TINY, "digits", 0)
    plain = simulation.run(FedAvg)
    tuned = simulation.run(FedAvgFineTuned)
    assert plain.global_scores == tuned.global_scores
    assert plain.final_global is not None
    assert tuned.scores != tuned.global_scores  # a client serves its own fine-tune


def test_ablations_whose_knob_acts_only_where_spaces_train_reuse_ml_mule_s_mobile_runs(
    tmp_path: Path,
) -> None:
    """Carrying a running merge and the guest gate act only in fixed-data mode: on a
    mobile-data task their runs would be ML Mule's step for step (checked here by running
    them), so a benchmark run reuses ML Mule's and says so."""
    mobile = _simulation(TINY, "phone_activity", 0)
    fixed = _simulation(TINY, "digits", 0)
    plain = mobile.run(MLMule)
    assert MLMule.same_run_as(mobile.data) is None
    for ablation in (MLMuleCarryMerge, MLMuleNoGate):
        assert ablation.same_run_as(mobile.data) == MLMule.name
        really = mobile.run(ablation)
        assert (really.scores, really.final_units) == (plain.scores, plain.final_units)
        assert really.ledger.as_dict() == plain.ledger.as_dict()
        assert ablation.same_run_as(fixed.data) is None

    methods = ["mlmule", "mlmule_carry_merge", "mlmule_no_gate"]
    task_run = run_task(TINY, "phone_activity", 0, LocalExecutor(), methods=methods)
    mine, *reused = task_run.runs
    assert mine.wall_seconds > 0
    for run in reused:
        assert run.details["same_run_as"] == "mlmule"
        assert (run.scores, run.wall_seconds) == (mine.scores, 0.0)
    document = summarise(
        TINY.with_overrides(seeds=(0,), tasks=("phone_activity",), methods=tuple(methods)),
        [task_run.to_json()],
        backend="local",
        wall_seconds=1.0,
    )
    assert document["per_method"]["mlmule_no_gate"]["phone_activity"]["same_run_as"] == "mlmule"
    assert document["per_method"]["mlmule"]["phone_activity"]["same_run_as"] is None
    assert "| mlmule_no_gate (= mlmule) |" in markdown_tables(document)


def test_a_sweep_reads_its_values_and_changes_one_setting() -> None:
    key, values = sweep_values("relays=true,false")
    assert (key, values) == ("relays", [True, False])
    assert swept(TINY, key, False).relays is False
    key, values = sweep_values("mlmule_options.staleness=polynomial,constant")
    assert values == ["polynomial", "constant"]
    assert swept(TINY, key, "constant").mlmule_options == {"staleness": "constant"}
    with pytest.raises(BenchConfigError):
        sweep_values("relays")
    with pytest.raises(BenchConfigError, match="mule_carries"):
        swept(TINY, "mule_carries", "everything")
    key, values = sweep_values("promotion.keep_equal_predictions=false,true")
    assert values == [False, True]
    loose = swept(TINY, key, False)
    assert loose.promotion == {"keep_equal_predictions": False}
    assert loose.promotion_rule().keep_equal_predictions is False
    with pytest.raises(BenchConfigError, match="promotion"):
        swept(TINY, "promotion.confidence", -1)
    with pytest.raises(BenchConfigError, match="promotion"):
        swept(TINY, "promotion.patience", 3)


def test_the_promotion_options_reach_every_ml_mule_host() -> None:
    simulation = _simulation(TINY, "digits", 0)
    strict = simulation.run(MLMule).details["promotions"]
    # served unless a challenger scores more than 1.0 lower: never kept out
    anything = TINY.with_overrides(promotion={"tolerance": 1.0, "keep_equal_predictions": False})
    loose = _simulation(anything, "digits", 0).run(MLMule).details["promotions"]
    assert strict.get("kept_current", 0) > 0
    assert loose.get("kept_current", 0) == 0
    assert loose.get("promoted", 0) > strict.get("promoted", 0)


def _entry(finals: list[float], megabytes: float = 1.0, regressions: int = 0) -> dict[str, object]:
    return {
        "final": spread(finals),
        "final_global": None,
        "regressions": spread([float(regressions)] * len(finals)),
        "bytes_moved": spread([megabytes * 1e6] * len(finals)),
        "time_to_target_hours": {"median": None},
    }


def test_the_issue_targets_are_judged_on_medians_and_the_seed_spread() -> None:
    document = {
        "seeds": [0, 1, 2],
        "tasks": {"occupancy": {}, "digits": {}},
        "per_method": {
            # occupancy: 0.004 below FedAvg (allowed 0.005), ranges apart from local's, fewer
            # bytes than gossip, no regression; digits: 0.02 below FedAvg (allowed 0.01),
            # ranges overlapping local's, more bytes than gossip, regressions
            "mlmule": {
                "occupancy": _entry([0.95, 0.96, 0.97], megabytes=2.0),
                "digits": _entry([0.70, 0.80, 0.90], megabytes=9.0, regressions=3),
            },
            "fedavg": {"occupancy": _entry([0.964]), "digits": _entry([0.82])},
            "local": {"occupancy": _entry([0.90, 0.94]), "digits": _entry([0.6, 0.75])},
            "gossip": {"occupancy": _entry([0.9], megabytes=5.0), "digits": _entry([0.9], 8.0)},
        },
    }
    met = {target: ok for target, _, ok in target_checks(document)}
    assert met == {
        "occupancy: regressions 0": True,
        "digits: regressions 0": False,
        "occupancy: at least FedAvg's final - 0.005": True,
        "digits: at least FedAvg's final - 0.01": False,
        "occupancy: above local beyond the seed spread": True,
        "digits: above local beyond the seed spread": False,
        "occupancy: fewer bytes than gossip": True,
        "digits: fewer bytes than gossip": False,
    }
    table = markdown_targets(document)
    assert "| digits: fewer bytes than gossip | 9.0 MB vs 8.0 MB | **no** |" in table
