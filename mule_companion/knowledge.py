"""What the phone does with knowledge: verify and cache what homes send, offer its own, and
build the data it distils from (issue 13; `mlmule_core.knowledge` holds the core of it).

- **Receiving.** A knowledge snapshot passes the same checks as a model (a paired home's
  signature, limits, age, replay) plus the proxy set of its context key, and goes into the
  phone's `KnowledgeCache` (`knowledge.json`), keyed by its contributor.
- **Offering.** Per home, the phone offers one knowledge snapshot per context key: the
  freshness- and score-weighted ensemble of its cache (its own model's knowledge included,
  as contributor "this phone"), *without* that home's own contribution, which would only echo
  back. This is how the phone carries what it received: distilled into one snapshot, signed by
  the phone, so a home needs to trust only the phone.
- **Distilling** (mobile-data mode, where the phone has the labels): the phone trains its model
  on the minutes it sensed in the space plus a soft term towards the cache's ensemble on the
  proxy set (`distillation`, the host's `Distillation`); the promotion rule judges the result
  on the latest real minutes as a distillation. Not with DP-SGD: its accountant clips and
  counts per labelled sample and has no share for the proxy term.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from mlmule_core.errors import FamilyError
from mlmule_core.features import FeatureSchema
from mlmule_core.host import DISTILL_WEIGHT, ModelSlot
from mlmule_core.identity import Identity, Verifier
from mlmule_core.knowledge import (
    KnowledgeCache,
    KnowledgeSnapshot,
    ProxySet,
    proxy_id,
    proxy_set,
    unpack_knowledge,
)
from mlmule_core.knowledge_offers import Combiner, SealedKnowledge, own_entry
from mlmule_core.snapshot import ReplayGuard, SnapshotLimits
from mlmule_core.starter import load_starter, starter_index
from mlmule_core.train_numpy import Distillation

_LOGGER = logging.getLogger(__name__)


@cache
def starter_schemas() -> Mapping[str, FeatureSchema]:
    """Each context key's schema, whose proxy set its knowledge is computed on: its starter's."""
    return {key: load_starter(key).schema for key in starter_index()}


@cache
def expected_proxies() -> Mapping[str, str]:
    """The proxy set every context key's knowledge must be computed on: its starter's schema's."""
    return {key: proxy_id(schema) for key, schema in starter_schemas().items()}


class PhoneKnowledge:
    """The phone's knowledge cache, and the knowledge it offers (thread-safe by its caller's
    lock: the agent holds its host lock around every call)."""

    def __init__(
        self,
        path: Path,
        identity: Identity,
        trust: Verifier,
        *,
        max_entries: int,
        limits: SnapshotLimits,
        replay: ReplayGuard,
        max_age: float | None,
        schemas: Mapping[str, FeatureSchema] | None = None,
    ) -> None:
        """`schemas`: the keys the phone exchanges knowledge of, with the schema of each one's
        proxy set (default: the starters', `starter_schemas`)."""
        self.cache = KnowledgeCache(path, max_entries=max_entries)
        self._schemas = starter_schemas() if schemas is None else dict(schemas)
        self._proxies = (
            expected_proxies()
            if schemas is None
            else {key: proxy_id(schema) for key, schema in self._schemas.items()}
        )
        self._identity = identity
        self._trust = trust
        self._limits = limits
        self._replay = replay
        self._max_age = max_age
        self._combiner = Combiner(identity, limits=limits)

    def receive(self, container: bytes, *, now: float) -> tuple[KnowledgeSnapshot, bool]:
        """Verify a knowledge snapshot and cache it; raises the `SnapshotError` that refuses it.
        Returns it and whether the cache changed (False: it held this contributor's as new)."""
        snapshot = unpack_knowledge(
            container,
            trust=self._trust,
            expected_proxy=self._proxies,
            limits=self._limits,
            now=now,
            max_age=self._max_age,
        )
        replay_key = snapshot.replay_key
        self._replay.check(snapshot.origin, replay_key, snapshot.meta.version)
        changed = self.cache.add(snapshot.contributor, snapshot.knowledge, received_at=now)
        # recorded once cached: a crash before must not make the home's next try a replay
        self._replay.record(snapshot.origin, replay_key, snapshot.meta.version)
        return snapshot, changed

    def learn_own(self, slot: ModelSlot) -> bool:
        """Put the knowledge of the model the phone holds into its cache, as its own (its
        predictions are computed only when the cache holds none as recent)."""
        entries = self.cache.entries(slot.context_key)
        mine = next((e for e in entries if e.contributor == self._identity.id), None)
        if mine is not None and mine.knowledge.trained_at >= slot.meta.last_trained:
            return False
        own = own_entry(
            slot,
            self._identity.id,
            received_at=slot.meta.created_at,
            proxy=self._proxy_set(slot.context_key),
        )
        return self.cache.add(own.contributor, own.knowledge, received_at=own.received_at)

    def offer_for(self, home_id: str, context_key: str, *, now: float) -> SealedKnowledge | None:
        """The phone's knowledge of `context_key` for `home_id`: its cache combined, without
        that home's contribution; None when nothing else is known. Sealed again only when what
        it is made of changed, so a home fetches it once."""
        current = self.cache.entries(context_key, proxy_id=self._proxies.get(context_key))
        entries = [e for e in current if e.contributor != home_id]
        return self._combiner.seal((home_id, context_key), entries, now=now)

    def distillation(
        self, context_key: str, *, now: float, exclude: frozenset[str]
    ) -> tuple[Distillation, int] | None:
        """The distillation term towards the ensemble of the cache without `exclude` (the
        phone's own model: distilling towards itself adds nothing) on the key's proxy set, and
        how many contributors it holds; None when no one else's knowledge is cached."""
        current = self.cache.entries(context_key, proxy_id=self._proxies.get(context_key))
        contributors = [e for e in current if e.contributor not in exclude]
        ensemble = self.cache.ensemble(context_key, now=now, exclude=exclude)
        if ensemble is None or not contributors:
            return None
        proxy = self._proxy_set(context_key)
        return Distillation(proxy.x, ensemble, DISTILL_WEIGHT), len(contributors)

    def _proxy_set(self, context_key: str) -> ProxySet:
        schema = self._schemas.get(context_key)
        if schema is None:
            raise FamilyError(f"no proxy set is known for {context_key!r}", reason="no_starter")
        return proxy_set(schema)
