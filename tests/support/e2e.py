"""Shared steps of the end-to-end tests: a phone process, homes on brokers, encounters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from mlmule_core import families
from mlmule_core.identity import Identity
from mlmule_core.protocol import Completed, Mode, ProtocolConfig
from mlmule_core.snapshot import unpack
from mlmule_core.starter import load_starter
from mlmule_core.weights import Weights

from tests.support.broker import Broker
from tests.support.companion_process import CompanionProcess
from tests.support.phone_log import recent_world, room_training_data
from tests.support.space_peer import SpacePeer

BEDROOM = "occupancy/bedroom"
KITCHEN = "phone_activity/kitchen"
KITCHEN_SPACE = "01JKITCHENSPACE"  # HA names a space by its subentry id
FAST = ProtocolConfig(retry_after=1.0, max_retries=20)
PHONE_PROTOCOL = {"retry_after": 1.0, "max_retries": 20}
PHONE_NETWORK = {"reconnect_min_delay": 1, "reconnect_max_delay": 2}
PHONE_SEED = 7  # the phone's training repeats exactly, DP noise included: no outcome is luck


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[CompanionProcess]:
    """A phone's data directory; its agent is killed if a test leaves it running."""
    companion = CompanionProcess(tmp_path / "phone")
    yield companion
    if companion.process is not None:
        companion.kill()


def new_phone(
    companion: CompanionProcess, *, training: dict[str, object] | None = None, **settings: object
) -> str:
    """Set the phone up with fast protocol timers and seeded training (plus `training`, and
    other config.yaml sections in `settings`); returns its pairing code."""
    code = companion.init("phone")
    seeded = {"seed": PHONE_SEED, **(training or {})}
    companion.configure(
        **{"protocol": PHONE_PROTOCOL, "network": PHONE_NETWORK, **settings, "training": seeded}
    )
    return code


def new_home(root: Path, broker: Broker, name: str) -> SpacePeer:
    return SpacePeer(root / name, broker.host, broker.port, name=name, config=FAST)


def bedroom_data(home: SpacePeer) -> None:
    world, _ = recent_world()
    schema = load_starter(BEDROOM).schema
    home.serve("bedroom", BEDROOM, Mode.FIXED, room_training_data(world, "bedroom", schema))


def carried(phone: CompanionProcess, context_key: str) -> dict[str, object]:
    [model] = [m for m in phone.status()["models"] if m["context_key"] == context_key]
    return model


def encounter(home: SpacePeer, space: str, mule: str, done: Callable[[], bool]) -> None:
    """Presence sees the phone in `space` until `done()`; then it leaves."""
    home.open(space, mule)
    home.wait_for(done)
    home.close(space)


def sessions(phone: CompanionProcess, home: SpacePeer) -> int:
    """Encounters with `home` that the running phone has seen end."""
    homes = phone.activity().get("homes", {})
    return int(homes.get(home.identity.id, {}).get("sessions", 0))


def answers_taken(home: SpacePeer) -> int:
    return sum(1 for e in home.events if isinstance(e, Completed) and e.accepted)


def exported_weights(phone: CompanionProcess, context_key: str, path: Path) -> Weights:
    """The weights of the model the phone carries, through `snapshot export`."""
    phone.cli("snapshot", "export", context_key, "-o", str(path))
    identity = Identity.load_or_create(phone.data_dir / "identity.pem", kind="mule", name="phone")
    snapshot = unpack(path.read_bytes(), trust=identity, expected_arch=None)
    return families.from_onnx(snapshot.model)[2]


def same_weights(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)
