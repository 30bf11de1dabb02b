"""What a space or relay space does with knowledge (issue 13), on the core's `core/knowledge.py`.

- **Receiving.** A phone's knowledge snapshot passes the checks of a model snapshot (a paired
  signer, the hub's size limit, replay, age) plus the proxy set of its context key, and goes
  into the space's `KnowledgeCache` (`<space folder>/knowledge.json`), keyed by its
  contributor. A refusal changes nothing and is counted by reason (`knowledge_state.json`).
- **Offering.** A space offers its own model's knowledge (its predictions on the key's proxy
  set). A relay has no labels and learns nothing itself: it hands back the freshness- and
  score-weighted ensemble of the knowledge it keeps (its own model's when it keeps none), so
  what one phone brought reaches the next, signed by the relay's home.
- **Distilling** (spaces only): the space's labelled samples of its last training with the
  proxy set in front, labelled by the cache's ensemble; the host's training job runs it in
  bounded chunks and the promotion rule judges the result on the latest real samples (the
  proxy rows come first, so the held-out window is real samples only).

Every method runs in an executor, under the host's lock.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .const import LOGGER
from .core.errors import SnapshotError
from .core.host import ModelHost, TrainingJob
from .core.knowledge import (
    KnowledgeCache,
    knowledge_of,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from .core.promotion import Change
from .core.protocol import PayloadKind, SnapshotInfo
from .core.storage import atomic_write_text
from .core.train_numpy import TrainConfig

CACHE_FILE = "knowledge.json"
STATE_FILE = "knowledge_state.json"
# knowledge versions count apart from the same signer's model versions (as on the phone)
REPLAY_SUFFIX = "#knowledge"
DISTIL_CONFIG = TrainConfig(max_epochs=10, prox_mu=0.01, max_seconds=60.0)


@dataclass(frozen=True)
class KnowledgeOutcome:
    """What became of one knowledge snapshot."""

    accepted: bool
    reason: str  # "cached", "not_newer", or the refusal's reason
    context_key: str | None = None
    contributor: str | None = None
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.reason == "cached"


@dataclass(frozen=True)
class Sealed:
    """A knowledge snapshot this home signed, and how an offer names it."""

    info: SnapshotInfo
    container: bytes


class SpaceKnowledge:
    """The knowledge cache of one space or relay space, beside its model host."""

    def __init__(self, host: ModelHost, *, relay: bool) -> None:
        self.host = host
        self.relay = relay
        self.cache = KnowledgeCache(host.root / CACHE_FILE)
        self.rejections: Counter[str] = Counter()
        self.cached = 0
        self._version = 0
        self._sealed: dict[str, tuple[object, Sealed]] = {}
        self._load_state()

    def expected_proxies(self) -> dict[str, str]:
        """The proxy set each served key's knowledge must be computed on."""
        return {key: proxy_set(self.host.slot(key).schema).id for key in self.host.context_keys()}

    def receive(self, container: bytes, *, now: float) -> KnowledgeOutcome:
        """Verify a knowledge snapshot and cache it; a refusal is counted, never raised."""
        with self.host.lock:
            try:
                snapshot = unpack_knowledge(
                    container,
                    trust=self.host.trust,
                    expected_proxy=self.expected_proxies(),
                    limits=self.host.settings.limits,
                    now=now,
                    max_age=self.host.settings.max_age_seconds,
                )
                replay_key = snapshot.meta.context_key + REPLAY_SUFFIX
                self.host.replay_guard.check(snapshot.origin, replay_key, snapshot.meta.version)
            except SnapshotError as err:
                self.rejections[err.reason] += 1
                self._save_state()
                return KnowledgeOutcome(False, err.reason, detail=str(err))
            key = snapshot.meta.context_key
            changed = self.cache.add(snapshot.contributor, snapshot.knowledge, received_at=now)
            # recorded once cached: a crash before must not make the phone's next try a replay
            self.host.replay_guard.record(snapshot.origin, replay_key, snapshot.meta.version)
            self.cached += changed
            self._save_state()
            return KnowledgeOutcome(
                True,
                "cached" if changed else "not_newer",
                context_key=key,
                contributor=snapshot.contributor,
                detail=f"{len(self.cache.entries(key))} contributors",
            )

    def offer(self, context_key: str, *, now: float, score: float | None) -> Sealed:
        """This home's knowledge of `context_key` to offer (sealed again only when the model
        or, for a relay, the cache changed)."""
        with self.host.lock:
            slot = self.host.slot(context_key)
            entries = self.cache.entries(context_key) if self.relay else []
            token = (slot.version, tuple((e.contributor, e.knowledge.trained_at) for e in entries))
            held = self._sealed.get(context_key)
            if held is not None and held[0] == token:
                return held[1]
            meta = slot.meta
            knowledge = knowledge_of(
                slot.spec,
                slot.weights,
                slot.schema,
                context_key,
                samples=meta.samples,
                score=score,
                trained_at=meta.last_trained,
                data_time=meta.data_time,
            )
            ensemble = self.cache.ensemble(context_key, now=now) if entries else None
            if ensemble is not None and ensemble.shape == knowledge.probabilities.shape:
                newest = max(entries, key=lambda e: e.knowledge.trained_at).knowledge
                knowledge = replace(
                    knowledge,
                    probabilities=ensemble,
                    samples=max(e.knowledge.samples for e in entries),
                    trained_at=newest.trained_at,
                    data_time=newest.newest_data,
                )
            # strictly newer than anything sealed before, across restarts too (wall seconds)
            self._version = max(self._version + 1, int(now))
            container = seal_knowledge(
                knowledge,
                self.host.identity,
                version=self._version,
                created_at=now,
                limits=self.host.settings.limits,
            )
            sealed = Sealed(
                SnapshotInfo(
                    context_key=context_key,
                    version=self._version,
                    sha256=hashlib.sha256(container).hexdigest(),
                    size=len(container),
                    arch=knowledge.family,
                    data_time=int(knowledge.newest_data),
                    kind=PayloadKind.KNOWLEDGE,
                ),
                container,
            )
            self._sealed[context_key] = (token, sealed)
            return sealed

    def start_distillation(self, context_key: str, *, now: float) -> TrainingJob | None:
        """A chunked training job of `context_key` towards the cache's ensemble, on the labelled
        samples of the space's last training; None when the cache holds nothing for the key or
        the space has not trained since it started (nothing to judge the result by)."""
        with self.host.lock:
            labelled = self.host.window(context_key, Change.MERGE)
            ensemble = self.cache.ensemble(context_key, now=now)
            if self.relay or labelled is None or ensemble is None:
                return None
            slot = self.host.slot(context_key)
            proxy = proxy_set(slot.schema)
            if ensemble.shape[1] == 1:
                targets = (ensemble[:, 0] >= 0.5).astype(np.int64)
            else:
                targets = np.argmax(ensemble, axis=1).astype(np.int64)
            x = np.concatenate([proxy.x.astype(np.float32), labelled.x])
            y = np.concatenate([targets, labelled.y])
            return self.host.start_training(
                context_key, x, y, config=DISTIL_CONFIG, data_time=slot.meta.data_time
            )

    def status(self) -> dict[str, Any]:
        """For diagnostics: the cache (no probabilities) and the counters."""
        with self.host.lock:
            return {
                "cache": self.cache.as_dict(),
                "cached": self.cached,
                "rejections": dict(self.rejections),
            }

    def _save_state(self) -> None:
        document = {"cached": self.cached, "rejections": dict(self.rejections)}
        atomic_write_text(self.host.root / STATE_FILE, json.dumps(document, sort_keys=True))

    def _load_state(self) -> None:
        path: Path = self.host.root / STATE_FILE
        try:
            document = json.loads(path.read_text())
            self.cached = int(document["cached"])
            self.rejections.update({str(k): int(v) for k, v in document["rejections"].items()})
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            # counters are conveniences: a damaged file must not keep the space from loading
            LOGGER.warning("%s is unreadable (%s); counting knowledge afresh", path, err)
