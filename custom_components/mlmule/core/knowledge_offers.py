"""The knowledge a space or a relay space offers the phones it meets (issue 13), around the
host's knowledge path (`ModelHost.knowledge_snapshot`, `ModelHost.relayed_knowledge`).

A space offers its own model's knowledge. A relay has no labels and learns nothing itself: it
hands back the freshest knowledge a phone brought it (re-signed by the relay's home, the
contributor first in its lineage), its own model's while it keeps none. What is offered is
sealed once per model version or cached contribution: sealing again would give receivers a
second container of the same version, which they refuse as a replay.

Home Assistant's spaces (`custom_components/mlmule/knowledge.py`) and the benchmark's both
offer through `KnowledgeOffers`.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from .host import ModelHost
from .protocol import PayloadKind, SnapshotInfo
from .snapshot import inspect


@dataclass(frozen=True)
class SealedKnowledge:
    """A knowledge snapshot a peer signed, and how an offer names it."""

    info: SnapshotInfo
    container: bytes

    @classmethod
    def of(cls, container: bytes) -> SealedKnowledge:
        """`container`, a knowledge snapshot this peer has just sealed (its header is not
        verified again: sealing checked it)."""
        header = inspect(container)["header"]
        assert isinstance(header, dict)
        version, data_time = header["version"], header["data_time"]
        assert isinstance(version, int)
        assert isinstance(data_time, int | float)
        info = SnapshotInfo(
            context_key=str(header["context_key"]),
            version=version,
            sha256=hashlib.sha256(container).hexdigest(),
            size=len(container),
            arch=str(header["arch_hash"]),
            data_time=int(data_time),
            kind=PayloadKind.KNOWLEDGE,
        )
        return cls(info, container)


class KnowledgeOffers:
    """The knowledge offers of one space or relay space (thread-safe)."""

    def __init__(self, host: ModelHost, *, relay: bool) -> None:
        self.host = host
        self.relay = relay
        self._lock = threading.Lock()
        self._sealed: dict[str, tuple[object, SealedKnowledge]] = {}

    def offer(self, context_key: str, *, now: float) -> SealedKnowledge:
        """This home's knowledge of `context_key` to offer."""
        host = self.host
        with self._lock, host.lock:
            proxy_id = host.expected_proxy().get(context_key)
            relayed = [
                entry
                for entry in host.knowledge.entries(context_key, proxy_id=proxy_id)
                if entry.contributor != host.identity.id
            ]
            token: object = ("own", host.slot(context_key).version)
            freshest = None
            if self.relay and relayed:
                freshest = max(relayed, key=lambda e: (e.knowledge.trained_at, e.contributor))
                token = ("relayed", freshest.contributor, freshest.version)
            held = self._sealed.get(context_key)
            if held is not None and held[0] == token:
                return held[1]
            if freshest is None:
                container = host.knowledge_snapshot(context_key, now=now)
            else:
                # relayed_knowledge re-signs the same entries, in the same order
                containers = host.relayed_knowledge(context_key, now=now)
                container = containers[relayed.index(freshest)]
            sealed = SealedKnowledge.of(container)
            self._sealed[context_key] = (token, sealed)
            return sealed
