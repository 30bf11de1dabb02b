"""What the companion did and holds, for `status`: the activity ledger, and the store read-only.

`activity.json` is the ledger: per home, the exchanges, snapshots and bytes moved; per context
key, the training runs and the differential-privacy budget spent; and the running agent's own
state (its pid, which homes it is connected to). The agent rewrites it atomically; anyone may
read it at any time, as `status` does while the agent runs.

The store is read without opening it for writing (`ModelHost` tidies the store when it opens,
which only the process holding the agent lock may do): the index names each key's current file,
and each file's header is verified against the phone's own key.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from mlmule_core.errors import MlmuleError
from mlmule_core.identity import Verifier
from mlmule_core.snapshot import verify_container
from mlmule_core.storage import atomic_write_text
from mlmule_core.train_numpy import TrainReport

from .errors import CompanionError

_LOGGER = logging.getLogger(__name__)

ACTIVITY_VERSION: Final = 1
KEPT_EVENTS: Final = 50
STORE_DIR: Final = "snapshots"  # where ModelHost keeps its SnapshotStore under its root


@dataclass
class HomeActivity:
    """Cumulative counters of one home, over every run of the agent."""

    bytes_sent: int = 0
    bytes_received: int = 0
    sessions: int = 0  # encounters that ended
    received: int = 0  # snapshots taken from the home
    sent: int = 0  # snapshots the home took from the phone
    refused: int = 0  # snapshots refused, either way
    failed: int = 0  # transfers or sessions that failed
    knowledge_received: int = 0  # knowledge snapshots taken from the home (into the cache)
    knowledge_sent: int = 0  # knowledge snapshots the home took from the phone
    knowledge_refused: int = 0  # knowledge snapshots refused, either way
    connections: int = 0
    last_connected: float | None = None
    last_exchange: float | None = None


@dataclass
class PrivacySpent:
    """DP-SGD budget spent on one context key, summed over runs (basic composition: an upper
    bound on the privacy loss of everything the phone sent for that key)."""

    epsilon: float = 0.0
    delta: float = 0.0
    runs: int = 0


@dataclass
class TrainingRecord:
    runs: int = 0
    samples: int = 0
    seconds: float = 0.0
    last: float | None = None
    last_stop: str = ""
    last_val_macro_f1: float | None = None


@dataclass
class DistillationRecord:
    """The phone's distillations of one context key towards its knowledge cache."""

    runs: int = 0
    served: int = 0  # runs the promotion rule served
    last: float | None = None
    last_samples: int = 0  # labelled minutes of the last run
    last_contributors: int = 0  # cache entries in the ensemble it distilled towards
    last_seconds: float = 0.0
    last_decision: dict[str, Any] | None = None  # the promotion rule's (`as_dict`)


@dataclass
class AgentState:
    pid: int | None = None
    started_at: float | None = None
    updated_at: float | None = None
    running: bool = False
    connected: dict[str, bool] = field(default_factory=dict)
    status_line: str = ""


def _dataclass_from(cls: Any, raw: Any) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names}) if isinstance(raw, dict) else cls()


class ActivityLedger:
    """The ledger in memory, saved atomically on `save()`; safe to use from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.homes: dict[str, HomeActivity] = {}
        self.privacy: dict[str, PrivacySpent] = {}
        self.training: dict[str, TrainingRecord] = {}
        self.distillation: dict[str, DistillationRecord] = {}
        self.events: list[dict[str, Any]] = []
        self.agent = AgentState()
        self._load()

    def _load(self) -> None:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            # the ledger only counts; a damaged one must not stop the phone from exchanging
            _LOGGER.warning("%s is unreadable (%s); starting a new ledger", self.path, err)
            return
        if not isinstance(document, dict) or document.get("version") != ACTIVITY_VERSION:
            return
        self.homes = {
            k: _dataclass_from(HomeActivity, v) for k, v in document.get("homes", {}).items()
        }
        self.privacy = {
            k: _dataclass_from(PrivacySpent, v) for k, v in document.get("privacy", {}).items()
        }
        self.training = {
            k: _dataclass_from(TrainingRecord, v) for k, v in document.get("training", {}).items()
        }
        self.distillation = {
            k: _dataclass_from(DistillationRecord, v)
            for k, v in document.get("distillation", {}).items()
        }
        events = document.get("events", [])
        self.events = [e for e in events if isinstance(e, dict)][-KEPT_EVENTS:]
        self.agent = _dataclass_from(AgentState, document.get("agent", {}))

    def home(self, home_id: str) -> HomeActivity:
        with self._lock:
            return self.homes.setdefault(home_id, HomeActivity())

    def count(self, home_id: str, counter: str) -> None:
        """Add one to a counter of `home_id` (e.g. "sessions")."""
        with self._lock:
            activity = self.home(home_id)
            setattr(activity, counter, getattr(activity, counter) + 1)

    def update_home(self, home_id: str, **values: float | None) -> bool:
        """Set fields of `home_id`; returns whether any changed."""
        with self._lock:
            activity = self.home(home_id)
            changed = any(getattr(activity, name) != value for name, value in values.items())
            for name, value in values.items():
                setattr(activity, name, value)
            return changed

    def note(
        self,
        home_id: str,
        event: str,
        *,
        space: str = "",
        context_key: str = "",
        detail: str = "",
        now: float | None = None,
    ) -> None:
        """Remember one thing that happened in an exchange (the last few are kept)."""
        with self._lock:
            self.events = [
                *self.events[-(KEPT_EVENTS - 1) :],
                {
                    "time": time.time() if now is None else now,
                    "home": home_id,
                    "space": space,
                    "context_key": context_key,
                    "event": event,
                    "detail": detail,
                },
            ]

    def spend(self, context_key: str, epsilon: float, delta: float) -> None:
        """Record privacy spent, and save at once: the budget is written before the model that
        spent it can leave the phone."""
        with self._lock:
            spent = self.privacy.setdefault(context_key, PrivacySpent())
            spent.epsilon += epsilon
            spent.delta += delta
            spent.runs += 1
            self.save()

    def trained(self, context_key: str, report: TrainReport, now: float) -> None:
        with self._lock:
            record = self.training.setdefault(context_key, TrainingRecord())
            record.runs += 1
            record.samples += report.samples
            record.seconds += report.seconds
            record.last = now
            record.last_stop = report.stop_reason
            record.last_val_macro_f1 = report.val_macro_f1

    def distilled(
        self,
        context_key: str,
        *,
        samples: int,
        contributors: int,
        seconds: float,
        decision: dict[str, Any] | None,
        served: bool,
        now: float,
    ) -> None:
        with self._lock:
            record = self.distillation.setdefault(context_key, DistillationRecord())
            record.runs += 1
            record.served += int(served)
            record.last = now
            record.last_samples = samples
            record.last_contributors = contributors
            record.last_seconds = seconds
            record.last_decision = decision

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": ACTIVITY_VERSION,
                "homes": {k: asdict(v) for k, v in sorted(self.homes.items())},
                "privacy": {k: asdict(v) for k, v in sorted(self.privacy.items())},
                "training": {k: asdict(v) for k, v in sorted(self.training.items())},
                "distillation": {k: asdict(v) for k, v in sorted(self.distillation.items())},
                "events": list(self.events),
                "agent": asdict(self.agent),
            }

    def save(self) -> None:
        with self._lock:
            atomic_write_text(self.path, json.dumps(self.to_json(), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# The store, read-only


@dataclass(frozen=True)
class CarriedModel:
    """The current model of one context key, as stored (header verified)."""

    context_key: str
    version: int
    origin: str
    created_at: float
    data_time: float
    samples: int
    size: int
    sha256: str
    lineage: tuple[str, ...]
    history: int  # versions kept for rollback, this one included


def _index(store_root: Path) -> dict[str, Any]:
    path = store_root / STORE_DIR / "index.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise CompanionError(f"{path} is unreadable: {err}", reason="store_unreadable") from err
    keys = document.get("keys") if isinstance(document, dict) else None
    return keys if isinstance(keys, dict) else {}


def _current_file(entry: Any) -> tuple[str, int]:
    if isinstance(entry, dict):
        for version in entry.get("versions", []):
            if isinstance(version, dict) and version.get("version") == entry.get("current"):
                return str(version["file"]), len(entry["versions"])
    raise CompanionError("the store index is damaged", reason="store_unreadable")


def read_current(store_root: Path, context_key: str) -> bytes:
    """The stored bytes of the current model of `context_key`."""
    # the agent may replace a version between reading the index and the file: read again then
    for _ in range(3):
        entry = _index(store_root).get(context_key)
        if entry is None:
            raise CompanionError(
                f"the phone carries no model for {context_key!r}", reason="no_model"
            )
        file, _ = _current_file(entry)
        try:
            return (store_root / STORE_DIR / file).read_bytes()
        except FileNotFoundError:
            continue
    raise CompanionError(f"the model of {context_key} keeps changing; try again", reason="busy")


def carried_models(store_root: Path, identity: Verifier) -> list[CarriedModel]:
    """Every context key's current model; each header is verified against the phone's key."""
    models = []
    for context_key, entry in sorted(_index(store_root).items()):
        try:
            data = read_current(store_root, context_key)
            header = verify_container(data, trust=identity)
        except (MlmuleError, OSError) as err:
            _LOGGER.warning("the stored model of %s is unreadable: %s", context_key, err)
            continue
        meta = header.meta
        models.append(
            CarriedModel(
                context_key=context_key,
                version=meta.version,
                origin=header.origin,
                created_at=meta.created_at,
                data_time=meta.data_time,
                samples=meta.samples,
                size=header.size,
                sha256=header.sha256,
                lineage=meta.lineage,
                history=_current_file(entry)[1],
            )
        )
    return models


def cached_knowledge(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The knowledge cache's entries per context key, without their probabilities, read
    without opening the cache (which moves a damaged file aside: only the agent may)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise CompanionError(f"{path} is unreadable: {err}", reason="cache_unreadable") from err
    keys = document.get("keys") if isinstance(document, dict) else None
    shown = ("contributor", "family", "samples", "score", "trained_at", "received_at")
    return {
        str(key): [
            {name: entry.get(name) for name in shown}
            for entry in entries
            if isinstance(entry, dict)
        ]
        for key, entries in sorted(keys.items() if isinstance(keys, dict) else [])
        if isinstance(entries, list)
    }
