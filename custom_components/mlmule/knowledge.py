"""What a space or relay space does with knowledge (issue 13), around the host's knowledge path
(`core/host.py`: `receive_knowledge`, `start_distillation`; the cache is the host's,
`<space folder>/knowledge.json`).

- **Offering.** `core/knowledge_offers.py`: a space offers its own model's knowledge for the
  keys it learns from labels; for the others (a relay's keys, the phones' activity model it
  hosts) what phones brought it, combined, without the receiving phone's own share.
- **Counting.** The host counts every refusal with the weight snapshots' (`Snapshots
  rejected`); the knowledge snapshots' are counted here too, by reason, and kept in
  `knowledge_state.json` so that the counts survive restarts.

Every method runs in an executor.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

from .const import LOGGER
from .core.host import ModelHost
from .core.knowledge_offers import KnowledgeOffers
from .core.storage import atomic_write_text

STATE_FILE = "knowledge_state.json"


class SpaceKnowledge(KnowledgeOffers):
    """The knowledge offers and refusal counts of one space or relay space."""

    def __init__(self, host: ModelHost, *, relay: bool) -> None:
        super().__init__(host, relay=relay)
        self.rejections: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._load_state()

    def count_refusal(self, reason: str) -> None:
        with self._count_lock:
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
