"""The benchmark's parts: configuration, partitions, contacts, and the ML Mule exchanges it runs
through the product's protocol endpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark package is not installed

from mlmule_bench.config import PRESETS, BenchConfig, BenchConfigError, load_config  # noqa: E402
from mlmule_bench.data import build_task, build_world, dirichlet_partition, held_out_start  # noqa: E402
from mlmule_bench.methods import MLMule  # noqa: E402
from mlmule_bench.mobility import meetings, visits  # noqa: E402
from mlmule_bench.peers import Budget, Exchanges  # noqa: E402
from mlmule_bench.results import spread, time_to_target  # noqa: E402
from mlmule_bench.simulate import Simulation  # noqa: E402
from mlmule_bench.training import LocalExecutor  # noqa: E402
from mlmule_core.protocol.wire import decode_chunk, decode_control, is_chunk  # noqa: E402
from mlmule_core.snapshot import verify_container  # noqa: E402
from mlmule_core.world.residents import ELSEWHERE_CODE  # noqa: E402

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
        assert (visit.home, visit.space) in data.kind_of_room
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
    for payload in delivered:
        header = verify_container(payload, trust=_AnySigner(simulation, result))
        assert header.meta.context_key.startswith("occupancy/")
    # back in the space its model came from, a phone offers that space's own snapshot, and
    # nothing moves unless the space has something newer
    assert ledger.transfers < ledger.encounters / 2


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
