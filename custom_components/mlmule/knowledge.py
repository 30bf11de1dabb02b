"""What a space or relay space does with knowledge (issue 13), around the host's knowledge path
(`core/host.py`: `receive_knowledge`, `knowledge_snapshot`, `relayed_knowledge`,
`start_distillation`; the cache is the host's, `<space folder>/knowledge.json`).

- **Offering.** A space offers its own model's knowledge. A relay has no labels and learns
  nothing itself: it hands back the freshest knowledge a phone brought it (re-signed by the
  relay's home, the contributor first in its lineage), its own model's while it keeps none.
  What is offered is sealed once per model version or cached contribution: sealing again would
  give receivers a second container of the same version, which they refuse as a replay.
- **Counting.** The host counts every refusal with the weight snapshots' (`Snapshots
  rejected`); the knowledge snapshots' are counted here too, by reason, and kept in
  `knowledge_state.json` so that the counts survive restarts.

Every method runs in an executor.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass

from .const import LOGGER
from .core.host import ModelHost
from .core.protocol import PayloadKind, SnapshotInfo
from .core.snapshot import inspect
from .core.storage import atomic_write_text

STATE_FILE = "knowledge_state.json"


@dataclass(frozen=True)
class Sealed:
    """A knowledge snapshot this home signed, and how an offer names it."""

    info: SnapshotInfo
    container: bytes


def offer_info(container: bytes) -> SnapshotInfo:
    """How an offer names a knowledge container this home sealed (its header, not verified
    again: the host checked it as it sealed it)."""
    header = inspect(container)["header"]
    assert isinstance(header, dict)
    version, data_time = header["version"], header["data_time"]
    assert isinstance(version, int)
    assert isinstance(data_time, int | float)
    return SnapshotInfo(
        context_key=str(header["context_key"]),
        version=version,
        sha256=hashlib.sha256(container).hexdigest(),
        size=len(container),
        arch=str(header["arch_hash"]),
        data_time=int(data_time),
        kind=PayloadKind.KNOWLEDGE,
    )


class SpaceKnowledge:
    """The knowledge offers and refusal counts of one space or relay space."""

    def __init__(self, host: ModelHost, *, relay: bool) -> None:
        self.host = host
        self.relay = relay
        self.rejections: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sealed: dict[str, tuple[object, Sealed]] = {}
        self._load_state()

    def offer(self, context_key: str, *, now: float) -> Sealed:
        """This home's knowledge of `context_key` to offer."""
        with self._lock:
            relayed = self.relay and any(
                e.contributor != self.host.identity.id
                for e in self.host.knowledge.entries(context_key)
            )
            if relayed:
                freshest = max(
                    self.host.knowledge.entries(context_key),
                    key=lambda e: (e.knowledge.trained_at, e.contributor),
                )
                token: object = ("relayed", freshest.contributor, freshest.version)
            else:
                token = ("own", self.host.slot(context_key).version)
            held = self._sealed.get(context_key)
            if held is not None and held[0] == token:
                return held[1]
            if relayed:
                others = [
                    e.contributor
                    for e in self.host.knowledge.entries(context_key)
                    if e.contributor != self.host.identity.id
                ]
                containers = self.host.relayed_knowledge(context_key, now=now)
                container = containers[others.index(freshest.contributor)]
            else:
                container = self.host.knowledge_snapshot(context_key, now=now)
            sealed = Sealed(offer_info(container), container)
            self._sealed[context_key] = (token, sealed)
            return sealed

    def count_refusal(self, reason: str) -> None:
        with self._lock:
            self.rejections[reason] += 1
            atomic_write_text(
                self.host.root / STATE_FILE, json.dumps({"rejections": dict(self.rejections)})
            )

    def _load_state(self) -> None:
        path = self.host.root / STATE_FILE
        try:
            document = json.loads(path.read_text())
            self.rejections.update({str(k): int(v) for k, v in document["rejections"].items()})
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            # counters are conveniences: a damaged file must not keep the space from loading
            LOGGER.warning("%s is unreadable (%s); counting knowledge afresh", path, err)
