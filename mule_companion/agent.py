"""The companion's state on the phone (`Companion`) and its long-running agent (`Agent`).

The agent keeps one `MqttLink` per paired home, each on that home's broker, and answers the
encounters the home's spaces open. What it does with a snapshot depends on the mode the space
chose for the context key:

- fixed-data mode (the space trains): the phone offers what it carries, and takes back the
  space's merged, trained model as it is (`ModelHost.adopt`), re-signed as its next version;
- mobile-data mode (the phone trains): the phone merges the space's model into its own
  (`ModelHost.receive`, with the configured strategy), trains it on the minutes it sensed in that
  space, and offers the result back; the space merges it.

The labels of a mobile-data model are on the phone, so the phone judges every change to it: the
host's promotion rule scores a merge and a training run against the model carried now, on the
latest minutes sensed in that space that the model was not trained on, and keeps the better. A
fixed-data model reads the room's sensors, which the phone cannot: the space judged it, and the
phone takes it (`undecided_no_window`).

Every model the phone takes is verified (signature of a paired home, architecture, age, replay)
before anything uses it, and is written to the store before the phone says it accepted it. The
store is the only way models move between homes: each link offers the store's current model for
the context keys a space asks about, and nothing else. A home that has not paired with this phone
never gets an answer, and nothing it sends is even parsed past its signature.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

from mlmule_core import promotion
from mlmule_core.errors import MlmuleError, UnknownSigner
from mlmule_core.features import PHONE_FEATURES
from mlmule_core.host import (
    FineTuning,
    HostError,
    HostSettings,
    ModelHost,
    ModelSlot,
    Outcome,
    TrainingJob,
)
from mlmule_core.identity import Identity, PairingCode, PeerKind, TrustEntry, TrustRole, TrustStore
from mlmule_core.onnx import load_model
from mlmule_core.promotion import Change, HeldOut, split_holdout
from mlmule_core.protocol import (
    Closed,
    Completed,
    Deliver,
    EncounterRef,
    ExchangeMode,
    Failed,
    Mode,
    MuleEndpoint,
    PayloadKind,
    Publish,
)
from mlmule_core.protocol.wire import decode_chunk, is_chunk
from mlmule_core.starter import load_starter, starter_index
from mlmule_core.storage import atomic_write_bytes, atomic_write_text
from mlmule_core.train_numpy import Distillation, TrainReport
from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs in the environment

from .config import (
    BrokerSettings,
    CompanionConfig,
    CompanionPaths,
    HomeConfig,
    default_config_text,
    load_config,
    load_credentials,
    load_homes,
    password_for,
    save_credentials,
    save_homes,
)
from .datalog import DataStore, TrainingData
from .errors import AgentRunning, ConfigError, PairingError, UnknownHome
from .knowledge import PhoneKnowledge
from .mqtt_link import Event, MqttLink, Verdict
from .status import ActivityLedger, AgentState
from .training import PhoneTrainer

_LOGGER = logging.getLogger(__name__)
HOME_LOST = "home_lost"  # why an encounter ends when the phone loses its home's broker
STATUS_LINE_SECONDS = 1.0  # refresh of the live status line on a terminal
LEDGER_CHECK_SECONDS = 5.0  # otherwise: how soon counters and connections reach activity.json
LOCK_ATTEMPTS = 20


def known_architectures() -> dict[str, str]:
    """The architecture every context key must have: the starter models' (one per key)."""
    return {key: entry.arch_hash for key, entry in starter_index().items()}


class SelfAndHomes:
    """Whose snapshots the phone's store accepts: its own (backups it exported) and its homes'."""

    def __init__(self, identity: Identity, trust: TrustStore) -> None:
        self._identity = identity
        self._trust = trust

    def public_key_for(self, key_id: str) -> bytes:
        if key_id == self._identity.id:
            return self._identity.public_key_bytes
        return self._trust.public_key_for(key_id)


class OneHome:
    """The peers one link may talk to: only the home whose broker it is on.

    Two homes may share a broker; each link then ignores the other home's messages, which its
    own link answers.
    """

    def __init__(self, trust: TrustStore, home_id: str) -> None:
        self._trust = trust
        self._home_id = home_id

    def public_key_for(self, key_id: str) -> bytes:
        if key_id != self._home_id:
            raise UnknownSigner(f"{key_id} is not the home of this link")
        return self._trust.public_key_for(key_id)

    def is_allowed(self, peer_id: str, space_id: str) -> bool:
        return peer_id == self._home_id and self._trust.is_allowed(peer_id, space_id)


class AgentLock:
    """An exclusive lock on the data directory, held by whoever writes the store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def __enter__(self) -> AgentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="ascii")
        for _ in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `status` may hold it for an instant to see whether the agent runs
                time.sleep(0.05)
        else:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise AgentRunning(
                f"the companion is running (pid {holder}) and owns {self.path.parent}; "
                "stop it first"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @staticmethod
    def holder(path: Path) -> int | None:
        """The pid of the process holding the lock, or None when nobody holds it."""
        try:
            handle = path.open("r", encoding="ascii")
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None


def check_home_code(code: PairingCode) -> None:
    if code.kind != "space":
        raise PairingError(
            "this is a phone's code; pair with the code the home's mlmule.pair_mule action "
            "returned (home_code)"
        )


class Companion:
    """Everything the phone keeps under its data directory, loaded and validated."""

    def __init__(self, root: Path) -> None:
        self.paths = CompanionPaths(root)
        self.paths.require_initialised()
        self.config: CompanionConfig = load_config(self.paths.config)
        self.identity = Identity.load_or_create(
            self.paths.identity, kind=PeerKind.MULE, name=self.config.name
        )
        self.trust = TrustStore.load(self.paths.trust)
        self.homes = load_homes(self.paths.homes)
        unpaired = [home for home in self.homes if home not in self.trust]
        if unpaired:
            raise ConfigError(
                "homes.yaml",
                [(f"homes.{home}", "has no key in trust.json: pair it again") for home in unpaired],
            )
        self.credentials = load_credentials(self.paths.credentials)
        self.data = DataStore(self.paths.data)
        self.ledger = ActivityLedger(self.paths.activity)

    @classmethod
    def initialise(cls, root: Path, *, name: str, timezone: str) -> tuple[Companion, bool]:
        """Create the identity and config if missing; returns the companion and whether it was
        created now. An existing identity is never replaced."""
        paths = CompanionPaths(root)
        created = not paths.identity.exists()
        if not paths.root.exists():
            paths.root.mkdir(mode=0o700, parents=True)
        if not paths.config.exists():
            atomic_write_text(paths.config, default_config_text(name, timezone), mode=0o600)
        Identity.load_or_create(paths.identity, kind=PeerKind.MULE, name=name)
        return cls(root), created

    def pairing_code(self) -> str:
        """The phone's code for the home's `mlmule.pair_mule` action."""
        return PairingCode.for_identity(self.identity).encode()

    def open_host(self) -> ModelHost:
        """The snapshot store; only the holder of the agent lock may open it."""
        config = self.config
        return ModelHost(
            self.paths.host,
            self.identity,
            SelfAndHomes(self.identity, self.trust),
            HostSettings(
                keep_versions=config.keep_versions,
                max_store_bytes=config.store_max_bytes,
                strategy=config.strategy,
                strategy_options=config.strategy_options,
                clock=config.replay_clock.now,
            ),
            known_arch=known_architectures(),
        )

    def home_aliases(self) -> dict[str, str]:
        """Each paired home's id and lower-cased name, mapped to its id."""
        aliases = {home.name.lower(): home.home_id for home in self.homes.values()}
        aliases.update({home_id: home_id for home_id in self.homes})
        return aliases

    def find_home(self, text: str) -> HomeConfig:
        """A paired home by its id or its name."""
        home_id = self.home_aliases().get(text, self.home_aliases().get(text.lower()))
        if home_id is None:
            known = ", ".join(f"{h.name} ({h.home_id})" for h in self.homes.values()) or "none"
            raise UnknownHome(f"no paired home is called {text!r}; paired: {known}")
        return self.homes[home_id]

    def pair(
        self,
        code: PairingCode,
        *,
        broker: BrokerSettings,
        role: TrustRole,
        prefix: str,
        password: str | None,
        now: float | None = None,
    ) -> HomeConfig:
        """Trust the home of `code` and remember how to reach its broker (pairing again
        replaces what was known)."""
        check_home_code(code)
        now = time.time() if now is None else now
        home = HomeConfig(code.peer_id, code.name or code.peer_id, broker, role, prefix, now)
        self.trust.add(
            TrustEntry.for_key(
                code.public_key,
                kind=PeerKind.SPACE,
                role=role,
                label=home.name,
                paired_at=now,
            )
        )
        self.homes[home.home_id] = home
        save_homes(self.paths.homes, self.homes)
        if password is not None:
            self.credentials[home.home_id] = password
        else:
            self.credentials.pop(home.home_id, None)
        save_credentials(self.paths.credentials, self.credentials)
        return home

    def unpair(self, text: str) -> HomeConfig:
        home = self.find_home(text)
        del self.homes[home.home_id]
        save_homes(self.paths.homes, self.homes)
        self.trust.remove(home.home_id)
        if self.credentials.pop(home.home_id, None) is not None:
            save_credentials(self.paths.credentials, self.credentials)
        return home


# ---------------------------------------------------------------------------------------------
# The debug dump


class WireDump:
    """Writes what the phone publishes: each control message as a JSON line, and each snapshot
    it sends, reassembled from its chunks, as `sent-<sha256>.snap` (exactly the bytes that left).
    """

    MAX_OPEN_TRANSFERS = 8

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._lock = threading.Lock()
        self._parts: dict[str, dict[int, bytes]] = {}

    def __call__(self, message: Publish) -> None:
        with self._lock:
            if is_chunk(message.payload):
                self._chunk(message.payload)
                return
            line = json.dumps({"topic": message.topic, "message": json.loads(message.payload)})
            with (self.directory / "control.jsonl").open("a", encoding="utf-8") as log:
                log.write(line + "\n")

    def _chunk(self, payload: bytes) -> None:
        frame = decode_chunk(payload)
        parts = self._parts.setdefault(frame.transfer, {})
        parts.setdefault(frame.index, frame.data)
        if len(parts) == frame.total:
            del self._parts[frame.transfer]
            data = b"".join(parts[i] for i in range(frame.total))
            sha = hashlib.sha256(data).hexdigest()
            atomic_write_bytes(self.directory / f"sent-{sha}.snap", data)
        while len(self._parts) > self.MAX_OPEN_TRANSFERS:
            del self._parts[next(iter(self._parts))]


# ---------------------------------------------------------------------------------------------
# The agent


@dataclass
class HomeLink:
    home: HomeConfig
    link: MqttLink
    base_sent: int  # the ledger's totals before this run
    base_received: int
    base_connections: int


@dataclass(frozen=True)
class TrainRequest:
    """Train a merged model on the space's data and answer the space with it."""

    home: HomeConfig
    ref: EncounterRef
    context_key: str
    answer_to: str  # sha256 of the space's snapshot
    # the phone carries what the space does not hold (a merge with the phone's own model, or the
    # phone's own model when the merge was worse): worth sending back even untrained
    differs: bool


@dataclass(frozen=True)
class DistilRequest:
    """Distil the phone's model towards its knowledge cache on the space's data (mobile-data
    mode: the phone has the labels), and offer the space what it knows then."""

    home: HomeConfig
    ref: EncounterRef
    context_key: str


class StatusDisplay:
    """A live status line on a terminal; a log line every `interval` seconds otherwise."""

    def __init__(self, *, interactive: bool, interval: float) -> None:
        self._interval = interval
        self._last_logged = 0.0
        self._bar: tqdm[Any] | None = None
        if interactive:
            self._bar = tqdm(total=0, bar_format="{desc}", position=0, leave=True)

    @property
    def live(self) -> bool:
        return self._bar is not None

    def show(self, line: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(line)
            return
        now = time.monotonic()
        if now - self._last_logged >= self._interval:
            self._last_logged = now
            _LOGGER.info("%s", line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class Agent:
    """Runs the phone's side of every encounter with every reachable paired home."""

    def __init__(
        self,
        companion: Companion,
        host: ModelHost,
        *,
        dump: WireDump | None = None,
        progress: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.companion = companion
        self.host = host
        self.ledger = companion.ledger
        self.links: dict[str, HomeLink] = {}
        self._config = companion.config
        self._dump = dump
        self._clock = clock  # wall time: the ledger, the agent's state
        self._replay = companion.config.replay_clock
        self._host_lock = threading.RLock()
        self._trainer = PhoneTrainer(self._config.training, self._config.dp, progress)
        if self._config.dp is not None and self._trainer.backend != "torch":
            raise ConfigError(
                "config.yaml", [("privacy.dp", "DP-SGD needs torch, which is not installed")]
            )
        if self._config.dp is not None and self._config.training.seed is not None:
            _LOGGER.warning(
                "training.seed is set: anyone who knows it can replay the DP noise; "
                "leave it null on a phone whose privacy rests on DP"
            )
        if self._config.dp is not None and self._config.own_exchange_mode is ExchangeMode.KNOWLEDGE:
            _LOGGER.warning(
                "own_exchange_mode is knowledge with privacy.dp on: DP-SGD does not distil, so "
                "the phone's own models learn nothing from homes; set it to both"
            )
        self._requests: queue.Queue[TrainRequest | DistilRequest | None] = queue.Queue()
        self.kinds = self._config.exchange_mode.kinds
        self.own_kinds = self._config.own_exchange_mode.kinds
        self.knowledge: PhoneKnowledge | None = None
        if PayloadKind.KNOWLEDGE in self.kinds | self.own_kinds:
            self.knowledge = PhoneKnowledge(
                companion.paths.knowledge,
                companion.identity,
                SelfAndHomes(companion.identity, companion.trust),
                max_entries=self._config.knowledge_max_entries,
                limits=host.settings.limits,
                replay=host.replay_guard,
                max_age=host.settings.max_age_seconds,
            )
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._changed = threading.Event()  # something to record, or a stop to notice
        self._connected: dict[str, bool] = {}
        self._losing: dict[str, threading.Timer] = {}  # home id -> ends its encounters if it fires
        self._losing_lock = threading.Lock()
        self.training_now: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every paired home (in the background, retrying) and carry the store."""
        companion = self.companion
        for home in companion.homes.values():
            try:
                password = password_for(home, companion.credentials)
            except ConfigError as err:
                _LOGGER.warning("not connecting to %s: %s", home.name, err)
                continue
            endpoint = MuleEndpoint(
                companion.identity,
                OneHome(companion.trust, home.home_id),
                config=replace(self._config.protocol, prefix=home.prefix),
                kinds=self.kinds,
                own_kinds=self.own_kinds,
            )
            options = home.broker_options(
                client_id=f"mlmule-{companion.identity.id}-{home.home_id[:6]}",
                network=self._config.network,
                password=password,
            )
            link = MqttLink(
                endpoint,
                options,
                on_delivery=partial(self._deliver, home),
                on_event=partial(self._event, home),
                on_publish=self._dump,
                on_connection=partial(self._connection_changed, home.home_id),
            )
            activity = self.ledger.home(home.home_id)
            self.links[home.home_id] = HomeLink(
                home, link, activity.bytes_sent, activity.bytes_received, activity.connections
            )
        with self._host_lock:
            for context_key in self.host.context_keys():
                self._carry(self.host.slot(context_key))
            if self.knowledge is not None:
                for context_key in self.knowledge.cache.context_keys():
                    self._carry_knowledge(context_key)
        self._worker = threading.Thread(target=self._training_loop, name="mlmule-training")
        self._worker.start()
        for home_link in self.links.values():
            home_link.link.start()
            _LOGGER.info(
                "connecting to %s at %s:%s",
                home_link.home.name,
                home_link.home.broker.host,
                home_link.home.broker.port,
            )
        now = self._clock()
        self.ledger.agent = AgentState(
            pid=os.getpid(), started_at=now, updated_at=now, running=True
        )
        self.ledger.save()

    def run(self, stop: threading.Event, display: StatusDisplay) -> None:
        """Show the status and keep the ledger current until `stop` is set (then `wake()`)."""
        last_saved = time.monotonic()
        check_every = STATUS_LINE_SECONDS if display.live else LEDGER_CHECK_SECONDS
        while not stop.is_set():
            self._changed.wait(check_every)  # an exchange event wakes it at once
            if stop.is_set():
                return
            line = self.status_line()
            display.show(line)
            if (
                self._refresh_stats()
                or time.monotonic() - last_saved >= self._config.status_interval
            ):
                self._save_ledger(line)
                last_saved = time.monotonic()

    def wake(self) -> None:
        """Make `run` look at its stop event now (from a signal handler)."""
        self._changed.set()

    def _connection_changed(self, home_id: str, ready: bool) -> None:
        """On paho's thread: the link reached its home's broker (True) or lost it (False).

        A broker that comes back within the protocol's retry window resumes the transfers it
        interrupted. Lost for longer, the phone has left the home: its encounters there end,
        so that the space's next one starts fresh instead of meeting a session that lingers
        until it times out.
        """
        with self._losing_lock:
            if (timer := self._losing.pop(home_id, None)) is not None:
                timer.cancel()
            if not ready and not self._stopping.is_set():
                protocol = self._config.protocol
                timer = threading.Timer(
                    protocol.retry_after * protocol.max_retries, self._home_lost, (home_id,)
                )
                timer.daemon = True
                self._losing[home_id] = timer
                timer.start()
        self.wake()

    def _home_lost(self, home_id: str) -> None:
        home_link = self.links.get(home_id)
        if home_link is None or home_link.link.connected:
            return
        ended = home_link.link.close_sessions(HOME_LOST)
        if ended:
            _LOGGER.info("%s is out of reach: ended %d encounter(s)", home_link.home.name, ended)

    def stop(self) -> None:
        """Abandon training in progress, disconnect, and save the ledger."""
        self._stopping.set()
        with self._losing_lock:
            for timer in self._losing.values():
                timer.cancel()
            self._losing.clear()
        self._requests.put(None)
        if self._worker is not None:
            self._worker.join()
        for home_link in self.links.values():
            home_link.link.stop()
        self._refresh_stats()
        self.ledger.agent.running = False
        self._save_ledger(self.status_line())

    # -- status ---------------------------------------------------------------------------

    def status_line(self) -> str:
        online = sum(1 for h in self.links.values() if h.link.connected)
        sent = sum(h.base_sent + h.link.stats.bytes_sent for h in self.links.values())
        received = sum(h.base_received + h.link.stats.bytes_received for h in self.links.values())
        sessions = sum(self.ledger.home(home_id).sessions for home_id in self.links)
        with self._host_lock:
            models = len(self.host.context_keys())
        parts = [
            f"{online}/{len(self.links)} homes online",
            f"carrying {models} models",
            f"{sessions} exchanges",
            f"sent {human_bytes(sent)}",
            f"received {human_bytes(received)}",
        ]
        if self.knowledge is not None:
            with self._host_lock:
                cache = self.knowledge.cache
                known = sum(len(cache.entries(key)) for key in cache.context_keys())
            parts.append(f"{known} knowledge cached")
        if self.training_now is not None:
            parts.append(f"training {self.training_now}")
        return " · ".join(parts)

    def _refresh_stats(self) -> bool:
        """Copy the links' counters into the ledger; True when anything changed."""
        changed = self._changed.is_set()
        self._changed.clear()
        now = self._clock()
        for home_id, home_link in self.links.items():
            stats, link = home_link.link.stats, home_link.link
            changed |= self.ledger.update_home(
                home_id,
                bytes_sent=home_link.base_sent + stats.bytes_sent,
                bytes_received=home_link.base_received + stats.bytes_received,
                connections=home_link.base_connections + link.connections,
            )
            if link.connected:
                self.ledger.update_home(home_id, last_connected=now)
            if self._connected.get(home_id) != link.connected:
                self._connected[home_id] = link.connected
                changed = True
        return changed

    def _save_ledger(self, line: str) -> None:
        agent = self.ledger.agent
        agent.updated_at = self._clock()
        agent.connected = dict(self._connected)
        agent.status_line = line
        self.ledger.save()

    def _scene_now(self) -> float:
        """ "Now" for models and sensing data: the wall clock, or a replay's scene time."""
        return self._replay.to_scene(self._clock())

    # -- encounters -----------------------------------------------------------------------

    def _carry(self, slot: ModelSlot) -> None:
        """Offer `slot` from now on to every home that asks for its context key (and what the
        phone knows of the key, where it exchanges knowledge)."""
        for home_link in self.links.values():
            try:
                home_link.link.carry(slot.offer(), slot.container)
            except MlmuleError as err:
                _LOGGER.warning("cannot offer %s: %s", slot.context_key, err)
        if self.knowledge is not None:
            try:
                self.knowledge.learn_own(slot)
            except MlmuleError as err:
                _LOGGER.warning("cannot compute the knowledge of %s: %s", slot.context_key, err)
            self._carry_knowledge(slot.context_key)

    def _carry_knowledge(self, context_key: str) -> None:
        """Offer each home the phone's knowledge of `context_key` without that home's own."""
        assert self.knowledge is not None
        now = self._scene_now()
        for home_id, home_link in self.links.items():
            try:
                sealed = self.knowledge.offer_for(home_id, context_key, now=now)
                if sealed is not None:
                    home_link.link.carry(sealed.info, sealed.container)
            except MlmuleError as err:
                _LOGGER.warning("cannot offer knowledge of %s: %s", context_key, err)

    def _deliver(self, home: HomeConfig, delivery: Deliver) -> Verdict:
        """A space's snapshot arrived whole: verify it, take or merge it, and decide."""
        if delivery.snapshot.kind is PayloadKind.KNOWLEDGE:
            return self._deliver_knowledge(home, delivery)
        ref, key = delivery.ref, delivery.snapshot.context_key
        now = self._scene_now()
        with self._host_lock:
            if (
                delivery.mode is Mode.MOBILE
                and not self.host.has(key)
                and delivery.snapshot.arch != self._own_arch(key)
            ):
                # a first model of another size than the phone's: it starts from its own
                # size's starter, and the space's weights are refused as incompatible below
                # (what that model knows still arrives as knowledge)
                self._seed(key)
            if delivery.mode is Mode.FIXED or not self.host.has(key):
                # the space's trained merge (fixed), or a first model for this key (mobile)
                outcome = self.host.adopt(delivery.payload, now=now)
                differs = False
            else:
                outcome = self.host.receive(
                    delivery.payload,
                    guest=home.role == TrustRole.GUEST,
                    now=now,
                    window=self._window(home, ref.space, self.host.slot(key)),
                )
                differs = True
            if outcome.accepted:
                self._carry(self.host.slot(key))
        self._record_outcome(home, ref, outcome)
        # a merge worse than the phone's own model on the phone's labels: the phone keeps its
        # own, trains it, and answers with it, so the space gets the better of the two
        kept_own = outcome.reason == promotion.Verdict.KEPT_CURRENT
        if delivery.mode is Mode.MOBILE and (outcome.accepted or kept_own):
            self._requests.put(TrainRequest(home, ref, key, delivery.snapshot.sha256, differs))
        if not outcome.accepted:
            return Verdict(accepted=False, reason=outcome.reason)
        return Verdict(accepted=True)

    def _deliver_knowledge(self, home: HomeConfig, delivery: Deliver) -> Verdict:
        """A space's knowledge arrived: verify it, cache it, and in mobile-data mode distil."""
        ref, key = delivery.ref, delivery.snapshot.context_key
        assert self.knowledge is not None  # the endpoint fetches knowledge only then
        with self._host_lock:
            try:
                snapshot, changed = self.knowledge.receive(delivery.payload, now=self._scene_now())
            except MlmuleError as err:
                self.ledger.count(home.home_id, "knowledge_refused")
                detail = f"refused: {err.reason} ({err})"
                self.ledger.note(
                    home.home_id,
                    "refused knowledge",
                    space=ref.space,
                    context_key=key,
                    detail=detail,
                )
                _LOGGER.warning("%s/%s: knowledge of %s %s", home.name, ref.space, key, detail)
                self._changed.set()
                return Verdict(accepted=False, reason=err.reason)
            if changed:
                self._carry_knowledge(key)
            distil = changed and delivery.mode is Mode.MOBILE
        self.ledger.count(home.home_id, "knowledge_received")
        detail = f"v{snapshot.meta.version} of {snapshot.contributor}" + (
            "" if changed else " (held as new already)"
        )
        self.ledger.note(
            home.home_id, "cached knowledge", space=ref.space, context_key=key, detail=detail
        )
        _LOGGER.info("%s/%s: cached knowledge of %s, %s", home.name, ref.space, key, detail)
        self._changed.set()
        if distil:
            self._requests.put(DistilRequest(home, ref, key))
        return Verdict(accepted=True)

    def _record_outcome(self, home: HomeConfig, ref: EncounterRef, outcome: Outcome) -> None:
        self.ledger.count(home.home_id, "received" if outcome.accepted else "refused")
        if outcome.accepted:
            detail = f"{outcome.reason} v{outcome.received_version} as v{outcome.version}"
            _LOGGER.info("%s/%s: %s %s", home.name, ref.space, outcome.context_key, detail)
        else:
            detail = f"refused: {outcome.reason} ({outcome.detail})"
            _LOGGER.warning("%s/%s: %s", home.name, ref.space, detail)
        self.ledger.note(
            home.home_id,
            "took" if outcome.accepted else "refused",
            space=ref.space,
            context_key=outcome.context_key or "",
            detail=detail,
        )
        self._changed.set()

    def _window(self, home: HomeConfig, space: str, slot: ModelSlot) -> HeldOut | None:
        """The latest labelled minutes sensed in this space: where a change is judged."""
        if tuple(slot.schema.features) != PHONE_FEATURES:
            return None
        data = self._space_data(home, space, slot)
        if data is None:
            return None
        return split_holdout(data.x, data.y, self.host.settings.promotion.holdout_fraction)[2]

    def _event(self, home: HomeConfig, event: Event) -> None:
        ref = event.ref
        if isinstance(event, Completed):
            key = event.snapshot.context_key
            knowledge = event.snapshot.kind is PayloadKind.KNOWLEDGE
            counter = "sent" if event.accepted else "refused"
            self.ledger.count(home.home_id, f"knowledge_{counter}" if knowledge else counter)
            what = " knowledge" if knowledge else ""
            if event.accepted:
                self.ledger.note(
                    home.home_id,
                    "sent" + what,
                    space=ref.space,
                    context_key=key,
                    detail=f"v{event.snapshot.version} accepted",
                )
            else:
                self.ledger.note(
                    home.home_id,
                    "refused by home" + what,
                    space=ref.space,
                    context_key=key,
                    detail=event.reason,
                )
                _LOGGER.warning("%s refused %s: %s", home.name, key, event.reason)
        elif isinstance(event, Failed):
            self.ledger.count(home.home_id, "failed")
            self.ledger.note(
                home.home_id,
                "failed",
                space=ref.space,
                context_key=event.context_key or "",
                detail=event.reason,
            )
            _LOGGER.warning("exchange with %s/%s failed: %s", home.name, ref.space, event.error)
        elif isinstance(event, Closed):
            self.ledger.count(home.home_id, "sessions")
            self.ledger.update_home(home.home_id, last_exchange=self._clock())
            self.ledger.note(home.home_id, "ended", space=ref.space, detail=event.reason)
            _LOGGER.info("exchange with %s/%s ended: %s", home.name, ref.space, event.reason)
        self._changed.set()

    # -- mobile-data training -------------------------------------------------------------

    def _space_data(self, home: HomeConfig, space: str, slot: ModelSlot) -> TrainingData | None:
        """What the phone sensed in this space, labelled, within the training window."""
        settings = self._config.training
        now = self._scene_now()
        kind = slot.context_key.split("/", 1)[1]
        return self.companion.data.training_data(
            homes={home.home_id, home.name, home.name.lower()},
            rooms={space, kind},
            schema=slot.schema,
            labels=slot.spec.labels,
            since=now - settings.window_days * 86_400.0,
            until=now + 60.0,
            max_samples=settings.max_samples,
            tz=self._config.timezone,
        )

    def _training_loop(self) -> None:
        while (request := self._requests.get()) is not None:
            if self._stopping.is_set():
                continue
            try:
                if isinstance(request, DistilRequest):
                    self._distil(request)
                else:
                    self._train_and_answer(request)
            except MlmuleError as err:
                _LOGGER.warning("training %s failed: %s", request.context_key, err)
                self.ledger.note(
                    request.home.home_id,
                    "training failed",
                    space=request.ref.space,
                    context_key=request.context_key,
                    detail=str(err),
                )
            except Exception:
                _LOGGER.exception("training %s failed", request.context_key)

    def _train_and_answer(self, request: TrainRequest) -> None:
        home, ref, key = request.home, request.ref, request.context_key
        with self._host_lock:
            slot = self.host.slot(key)
        trained = False
        if tuple(slot.schema.features) != PHONE_FEATURES:
            _LOGGER.info("%s does not read the phone's features; the phone cannot train it", key)
        else:
            data = self._space_data(home, ref.space, slot)
            needed = self._config.training.min_samples
            if data is None or data.samples < needed:
                found = 0 if data is None else data.samples
                _LOGGER.info(
                    "%s/%s: %d labelled minutes sensed here (need %d); not training %s",
                    home.name,
                    ref.space,
                    found,
                    needed,
                    key,
                )
            elif not self._within_budget(key, data.samples):
                _LOGGER.info("%s: training would exceed the privacy budget; merging only", key)
            else:
                trained = self._train(request, slot, data)
        if not (trained or request.differs):
            # the phone added nothing to the space's own model: nothing worth sending back
            return
        with self._host_lock:
            slot = self.host.slot(key)
        self.links[home.home_id].link.reply(
            ref.session, slot.offer(), slot.container, in_reply_to=request.answer_to
        )
        self.ledger.note(
            home.home_id,
            "answered",
            space=ref.space,
            context_key=key,
            detail=f"v{slot.version}" + (" trained here" if trained else " carried"),
        )

    def _within_budget(self, context_key: str, samples: int) -> bool:
        """Whether a DP run can spend its most and stay within `privacy.dp.max_epsilon`."""
        budget = self._config.dp_budget
        if budget is None or self._config.dp is None:
            return True
        spent = self.ledger.privacy.get(context_key)
        already = 0.0 if spent is None else spent.epsilon
        return already + self._trainer.planned_epsilon(samples) <= budget

    def _train(self, request: TrainRequest, slot: ModelSlot, data: TrainingData) -> bool:
        """Train on the space's minutes; True when the promotion rule serves the result."""
        key = request.context_key
        ran = self._run_job(key, slot, data)
        if ran is None:
            return False
        job, report = ran
        if job.decision is not None and not job.decision.served:
            self.ledger.note(
                request.home.home_id,
                "kept",
                space=request.ref.space,
                context_key=key,
                detail=job.decision.describe(),
            )
            return False
        _LOGGER.info(
            "%s: trained on %d minutes in %.1f s (%s)%s",
            key,
            data.samples,
            report.seconds,
            report.stop_reason,
            "" if report.epsilon is None else f", epsilon {report.epsilon:.2f}",
        )
        return True

    def _distil(self, request: DistilRequest) -> None:
        """Distil the phone's model towards what its visitors knew (DCCL's model over models),
        on the minutes sensed in this space; the promotion rule decides, as for training."""
        home, ref, key = request.home, request.ref, request.context_key
        assert self.knowledge is not None
        with self._host_lock:
            if not self.host.has(key):  # a knowledge-only space gave it no model to start from
                self._seed(key)
            slot = self.host.slot(key)
        if tuple(slot.schema.features) != PHONE_FEATURES:
            return
        data = self._space_data(home, ref.space, slot)
        needed = self._config.training.min_samples
        if data is None or data.samples < needed:
            _LOGGER.info("%s: too few labelled minutes here to distil (need %d)", key, needed)
            return
        if self._config.dp is not None:
            _LOGGER.info("%s: not distilling: DP-SGD does not account for the proxy term", key)
            return
        with self._host_lock:
            built = self.knowledge.distillation(
                key, now=self._scene_now(), exclude=frozenset({self.companion.identity.id})
            )
        if built is None:
            return
        distill, contributors = built
        ran = self._run_job(key, slot, data, distill=distill)
        if ran is None:
            return
        job, report = ran
        decision = job.decision
        served = decision is not None and decision.served
        self.ledger.distilled(
            key,
            samples=data.samples,
            contributors=contributors,
            seconds=report.seconds,
            decision=None if decision is None else decision.as_dict(),
            served=served,
            now=self._clock(),
        )
        self.ledger.note(
            home.home_id,
            "distilled" if served else "kept",
            space=ref.space,
            context_key=key,
            detail=f"from {contributors} contributors: "
            + ("served" if decision is None else decision.describe()),
        )
        _LOGGER.info("%s: distilled from %d contributors, %s", key, contributors, served)
        self._changed.set()
        if served:  # tell the space at once what the phone knows now
            with self._host_lock:
                sealed = self.knowledge.offer_for(home.home_id, key, now=self._scene_now())
            if sealed is not None:
                self.links[home.home_id].link.reply(
                    ref.session, sealed.info, sealed.container, in_reply_to=None
                )

    def _own_arch(self, context_key: str) -> str | None:
        """The architecture of the phone's own size for `context_key` (None: no such starter)."""
        entry = starter_index(model_size=self._config.model_size).get(context_key)
        return None if entry is None else entry.arch_hash

    def _seed(self, context_key: str) -> None:
        """Start the phone's own model of `context_key` from its size's starter (host lock held);
        installed fresh, so that spaces do not refuse it as stale before it has trained."""
        starter = load_starter(context_key, model_size=self._config.model_size)
        now = self._scene_now()
        slot = self.host.install(
            load_model(starter.onnx_bytes), context_key=context_key, data_time=now, now=now
        )
        _LOGGER.info("%s: starting from the %s starter model", context_key, slot.spec.family)
        self._carry(slot)

    def _run_job(
        self, key: str, slot: ModelSlot, data: TrainingData, *, distill: Distillation | None = None
    ) -> tuple[TrainingJob, TrainReport] | None:
        """Train `slot` on the space's minutes `data` (with `distill`: and towards the knowledge
        cache on the proxy set) and let the promotion rule judge it; None if stopped or
        superseded.

        The trainer validates on the latest `val_fraction` of the minutes, and the rule judges
        on the same ones: no gradient step saw them. A phone has too few labelled minutes of
        one space to set a second share aside for the rule alone."""
        window = split_holdout(data.x, data.y, self._config.training.val_fraction)[2]
        trainer = self._trainer.trainer(slot.spec, slot.weights, data, distill=distill)
        with self._host_lock:
            # a second run on the same minutes would spend the DP budget twice
            refused = self.host.take_refused_merge(key) if self._config.dp is None else None
            job = TrainingJob(
                self.host,
                key,
                trainer,
                samples=data.samples,
                data_time=data.data_time,
                window=window,
                change=Change.TRAINING if distill is None else Change.DISTILL,
                fine_tuning=None
                if refused is None
                else FineTuning(
                    refused,
                    self._trainer.trainer(slot.spec, refused.weights, data, distill=distill),
                ),
            )
        self.training_now = key
        try:
            finished = self._trainer.run(job, samples=data.samples, label=key, stop=self._stopping)
        finally:
            self.training_now = None
        if not finished:
            return None
        spent = trainer.result()[1].epsilon  # DP runs only `trainer` (see above)
        dp = self._config.dp
        if spent is not None and dp is not None:
            self.ledger.spend(key, spent, dp.delta)
        with self._host_lock:
            try:
                report = job.commit(now=self._scene_now())
            except HostError as err:
                _LOGGER.info("%s: %s", key, err)
                return None
            self._carry(self.host.slot(key))
        if distill is None:  # a distillation has its own ledger line
            self.ledger.trained(key, report, self._clock())
        return job, report


@contextlib.contextmanager
def running_agent(
    companion: Companion, *, dump: WireDump | None, progress: bool
) -> Iterator[Agent]:
    """Hold the lock, open the store, start the agent; stop it and release on the way out."""
    with AgentLock(companion.paths.lock):
        agent = Agent(companion, companion.open_host(), dump=dump, progress=progress)
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()
