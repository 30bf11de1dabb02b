"""The knowledge a peer offers the peers it meets (issue 13), around the host's knowledge path.

- **A space with labels for a key** offers its own model's knowledge
  (`ModelHost.knowledge_snapshot`), sealed once per model version: sealing again would give
  receivers a second container of the same version, which they refuse as a replay.
- **A peer without labels for a key** (a relay space, a space in mobile-data mode, a phone
  carrying between spaces) learns nothing itself from knowledge: it passes on what it knows,
  combined into one snapshot (`knowledge.combined_knowledge`, MoMoDistill's model over
  models): the knowledge it cached and its own model's (unless that model has learnt nothing
  yet, a starter), without the receiver's own contribution, which would only echo back. With
  nothing else to offer it offers its own model's knowledge, so that a phone, which offers
  knowledge only to a space that offered some, brings it its own. It signs the result itself,
  so a receiver needs to trust only the peer in front of it (`Combiner`).

Home Assistant's spaces (`custom_components/mlmule/knowledge.py`), the phone
(`mule_companion/knowledge.py`) and the benchmark offer through this module.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .host import ModelHost, ModelSlot
from .identity import Identity
from .knowledge import (
    CacheEntry,
    ProxySet,
    combined_knowledge,
    knowledge_of,
    seal_knowledge,
)
from .protocol import PayloadKind, SnapshotInfo
from .snapshot import DEFAULT_LIMITS, SnapshotLimits, inspect


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


class Combiner:
    """Seals combined knowledge under one identity, each version strictly newer than any it
    sealed before, across restarts too (wall seconds)."""

    def __init__(
        self, identity: Identity, *, limits: SnapshotLimits = DEFAULT_LIMITS, source: str = ""
    ) -> None:
        self.identity = identity
        self._limits = limits
        self._source = source  # which of the identity's hosts seals (a space of a home)

        self._version = 0
        # offer name -> what it was made of, and the offer
        self._sealed: dict[Hashable, tuple[object, SealedKnowledge | None]] = {}

    def seal(
        self, name: Hashable, entries: Sequence[CacheEntry], *, now: float
    ) -> SealedKnowledge | None:
        """`entries` combined (descriptive fields from this peer's own entry, if one is among
        them) and signed, as the offer `name` (a receiver, a key); None without entries. Sealed
        again only when what it is made of changed, so a receiver fetches it once."""
        made_of = tuple((e.contributor, e.version, e.knowledge.trained_at) for e in entries)
        held = self._sealed.get(name)
        if held is None or held[0] != made_of:
            held = self._sealed[name] = (made_of, self._seal(entries, now))
        return held[1]

    def _seal(self, entries: Sequence[CacheEntry], now: float) -> SealedKnowledge | None:
        knowledge = combined_knowledge(entries, now=now, prefer=self.identity.id)
        if knowledge is None:
            return None
        self._version = max(self._version + 1, int(now))
        container = seal_knowledge(
            knowledge,
            self.identity,
            version=self._version,
            created_at=now,
            limits=self._limits,
            source=self._source,
        )
        return SealedKnowledge.of(container)


def own_entry(
    slot: ModelSlot, contributor: str, *, received_at: float, proxy: ProxySet | None = None
) -> CacheEntry:
    """The knowledge of the model in `slot` (on `proxy`, default its schema's proxy set), as a
    cache entry of `contributor`, unscored."""
    meta = slot.meta
    knowledge = knowledge_of(
        slot.spec,
        slot.weights,
        slot.schema,
        slot.context_key,
        samples=meta.samples,
        score=None,
        trained_at=meta.last_trained,
        data_time=meta.data_time,
        proxy=proxy,
    )
    return CacheEntry(contributor, knowledge, received_at, slot.version)


class KnowledgeOffers:
    """The knowledge offers of one space or relay space (thread-safe)."""

    def __init__(self, host: ModelHost, *, relay: bool) -> None:
        self.host = host
        self.relay = relay
        self._lock = threading.Lock()
        self._combiner = Combiner(
            host.identity, limits=host.settings.limits, source=host.settings.source
        )
        # context key -> its model's knowledge, as an entry and as its own offer
        self._own: dict[str, CacheEntry] = {}
        self._own_sealed: dict[str, tuple[int, SealedKnowledge]] = {}

    def offer(
        self, context_key: str, *, now: float, receiver: str | None = None, labelled: bool = True
    ) -> SealedKnowledge:
        """This home's knowledge of `context_key` for `receiver` (a mule id; None: anyone).
        `labelled`: the space learns the key from labels of its own (fixed-data mode)."""
        host = self.host
        with self._lock, host.lock:
            slot = host.slot(context_key)
            if labelled and not self.relay:
                held = self._own_sealed.get(context_key)
                if held is None or held[0] != slot.version:
                    sealed = SealedKnowledge.of(host.knowledge_snapshot(context_key, now=now))
                    held = self._own_sealed[context_key] = (slot.version, sealed)
                return held[1]
            own = self._own.get(context_key)
            if own is None or own.version != slot.version:
                own = own_entry(slot, host.identity.id, received_at=now)
                self._own[context_key] = own
            others = [
                entry
                for entry in host.knowledge.entries(
                    context_key, proxy_id=host.expected_proxy().get(context_key)
                )
                if entry.contributor not in {host.identity.id, receiver}
            ]
            chosen = [*others, own] if own.knowledge.samples or not others else others
            combined = self._combiner.seal((context_key, receiver), chosen, now=now)
            assert combined is not None  # never empty
            return combined
