"""The companion's files: its data directory, its settings (`config.yaml`) and its homes.

Layout of the data directory (`--data-dir`, `$MLMULE_COMPANION_HOME`, or
`~/.local/share/mlmule-companion`):

    identity.pem       the phone's Ed25519 key (mode 0600; never leaves the phone)
    config.yaml        settings, written with their defaults by `init`; edit freely
    homes.yaml         the paired homes and how to reach their brokers (written by `pair`)
    trust.json         the homes' public keys (the core's trust list)
    credentials.json   broker passwords given at pairing (mode 0600), if any
    host/              the snapshot store: one current model per context key, with history
    data.sqlite        what the phone sensed (`log-data`); raw data never leaves it
    knowledge.json     the knowledge cache: the latest knowledge of each home, per model
    activity.json      exchanges, bytes moved, privacy spent, and the running agent's state
    agent.lock         held by the process that owns the store (the running agent)

Both YAML files are validated with voluptuous; every problem is reported with the dotted key it
concerns and the reason, e.g. `config.yaml: training.epochs: expected an integer >= 1`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

import voluptuous as vol
import yaml
from mlmule_core.clock import ReplayClock
from mlmule_core.errors import MlmuleError
from mlmule_core.families import DEFAULT_MODEL_SIZE, MODEL_SIZES, ModelSize, model_size
from mlmule_core.features import resolve_timezone
from mlmule_core.identity import TrustRole
from mlmule_core.protocol import (
    MULE_EXCHANGE_MODE,
    MULE_OWN_EXCHANGE_MODE,
    ExchangeMode,
    ProtocolConfig,
)
from mlmule_core.protocol.wire import check_id
from mlmule_core.storage import atomic_write_text
from mlmule_core.strategies import STRATEGIES, make_strategy
from mlmule_core.train_numpy import DPConfig

from .errors import ConfigError, NotInitialised
from .mqtt_link import BrokerOptions, TlsOptions

DATA_DIR_ENV: Final = "MLMULE_COMPANION_HOME"
CONFIG_VERSION: Final = 1
BACKENDS: Final = ("auto", "torch", "numpy")
ROLES: Final = tuple(TrustRole)
EXCHANGE_MODES: Final = tuple(mode.value for mode in ExchangeMode)
# The protocol settings a user may tune; the prefix is per home (homes.yaml).
PROTOCOL_KEYS: Final = (
    "max_payload",
    "chunk_size",
    "retry_after",
    "max_retries",
    "transfer_timeout",
    "session_timeout",
    "freshness",
)


def default_data_dir() -> Path:
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mlmule-companion"


@dataclass(frozen=True)
class CompanionPaths:
    """Where each of the companion's files lives under its data directory."""

    root: Path

    @property
    def identity(self) -> Path:
        return self.root / "identity.pem"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def homes(self) -> Path:
        return self.root / "homes.yaml"

    @property
    def trust(self) -> Path:
        return self.root / "trust.json"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def host(self) -> Path:
        return self.root / "host"

    @property
    def data(self) -> Path:
        return self.root / "data.sqlite"

    @property
    def knowledge(self) -> Path:
        return self.root / "knowledge.json"

    @property
    def activity(self) -> Path:
        return self.root / "activity.json"

    @property
    def lock(self) -> Path:
        return self.root / "agent.lock"

    def require_initialised(self) -> None:
        if not self.identity.exists() or not self.config.exists():
            raise NotInitialised(
                f"{self.root} is not set up: run `mlmule-companion init` first "
                "(or pass --data-dir to use another directory)"
            )


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TrainingSettings:
    """How the phone trains a model on what it sensed in a space (mobile-data mode).

    Training is bounded so the phone stays responsive: at most `max_seconds` and `epochs`, on at
    most `max_samples` of the latest minutes sensed in that space within `window_days`, using
    `threads` CPU threads.
    """

    backend: str = "auto"  # torch when installed, else the numpy trainer (DP needs torch)
    epochs: int = 5
    patience: int = 2
    max_seconds: float = 20.0
    max_samples: int = 20_000
    min_samples: int = 30
    window_days: float = 14.0
    batch_size: int = 64
    learning_rate: float = 1e-3
    prox_mu: float = 0.01  # keeps a phone's few minutes from dragging the shared model away
    val_fraction: float = 0.2
    threads: int = 1
    # None: fresh randomness every run, which DP-SGD's guarantee needs. A number makes every run
    # repeatable (tests, reproducible comparisons): anyone who knows it can replay the DP noise.
    seed: int | None = None


@dataclass(frozen=True)
class NetworkSettings:
    keepalive: int = 30
    reconnect_min_delay: int = 1
    reconnect_max_delay: int = 120


@dataclass(frozen=True)
class CompanionConfig:
    """Everything in `config.yaml`, validated."""

    name: str
    timezone: str
    store_max_bytes: int | None = 64 * 2**20
    keep_versions: int = 5
    data_keep_days: float = 60.0
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dp: DPConfig | None = None
    # stop training a context key on the phone once DP-SGD has spent this much on it
    dp_budget: float | None = None
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    strategy: str = "mlmule"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    status_interval: float = 60.0
    # what the phone swaps with homes: weights, knowledge (predictions on the shared proxy set,
    # which any model family can distil) or both; for the spaces' models it carries, and for
    # the models it learns itself (mobile-data mode; both by default under DP-SGD, which does
    # not distil)
    exchange_mode: ExchangeMode = MULE_EXCHANGE_MODE
    own_exchange_mode: ExchangeMode = MULE_OWN_EXCHANGE_MODE
    # the size of the models the phone learns itself (mobile-data mode); a model it only
    # carries for a space keeps that space's size
    model_size: ModelSize = DEFAULT_MODEL_SIZE
    knowledge_max_entries: int = 32  # contributors kept per context key in the knowledge cache
    # a developer option for replays (the demo): the scene time the phone's data lives in
    replay_clock: ReplayClock = field(default_factory=ReplayClock)


def local_timezone() -> str:
    """This device's time zone: `$TZ`, the IANA name behind /etc/localtime, else its offset."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
        candidates.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    except OSError:
        pass
    for candidate in candidates:
        if candidate:
            try:
                resolve_timezone(candidate)
            except MlmuleError:
                continue
            return candidate
    # a fixed offset is right today, but not across a daylight saving change
    minutes = round(time.localtime().tm_gmtoff / 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise vol.Invalid(_range_text("an integer", low, high))
        if value < low or (high is not None and value > high):
            raise vol.Invalid(_range_text("an integer", low, high))
        return value

    return check


def _number(
    low: float, high: float | None = None, *, exclusive: bool = False
) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise vol.Invalid(_range_text("a number", low, high, exclusive=exclusive))
        too_low = value <= low if exclusive else value < low
        if too_low or (high is not None and value > high):
            raise vol.Invalid(_range_text("a number", low, high, exclusive=exclusive))
        return float(value)

    return check


def _range_text(kind: str, low: float, high: float | None, *, exclusive: bool = False) -> str:
    lower = f"> {low:g}" if exclusive else f">= {low:g}"
    return f"expected {kind} {lower}" + ("" if high is None else f" and <= {high:g}")


def _text(max_length: int = 200) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > max_length:
            raise vol.Invalid(f"expected non-empty text of at most {max_length} characters")
        return value

    return check


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise vol.Invalid("expected a time zone name such as Europe/Berlin, UTC or +01:00")
    try:
        resolve_timezone(value)
    except MlmuleError as err:
        raise vol.Invalid(str(err)) from err
    return value


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise vol.Invalid(f"expected one of {', '.join(options)}")
        return str(value)

    return check


def _section(schema: Mapping[Any, Any]) -> vol.Schema:
    return vol.Schema(vol.Any(None, schema), extra=vol.PREVENT_EXTRA)


_TRAINING_DEFAULTS = TrainingSettings()
_NETWORK_DEFAULTS = NetworkSettings()
_CONFIG_SCHEMA = vol.Schema(
    {
        vol.Required("version"): vol.All(_integer(1), vol.In([CONFIG_VERSION])),
        vol.Required("name"): _text(64),
        vol.Optional("timezone"): _timezone,
        vol.Optional("store"): _section(
            {
                vol.Optional("max_mib"): vol.Any(None, _number(0.1, exclusive=False)),
                vol.Optional("keep_versions"): _integer(1, 100),
            }
        ),
        vol.Optional("data"): _section({vol.Optional("keep_days"): _number(1.0, 3660.0)}),
        vol.Optional("training"): _section(
            {
                vol.Optional("backend"): _one_of(BACKENDS),
                vol.Optional("epochs"): _integer(1, 1000),
                vol.Optional("patience"): _integer(1, 1000),
                vol.Optional("max_seconds"): _number(0.0, 3600.0, exclusive=True),
                vol.Optional("max_samples"): _integer(10, 10_000_000),
                vol.Optional("min_samples"): _integer(1, 1_000_000),
                vol.Optional("window_days"): _number(0.0, 3660.0, exclusive=True),
                vol.Optional("batch_size"): _integer(1, 65536),
                vol.Optional("learning_rate"): _number(0.0, 1.0, exclusive=True),
                vol.Optional("prox_mu"): _number(0.0, 1000.0),
                vol.Optional("val_fraction"): _number(0.0, 0.9),
                vol.Optional("threads"): _integer(1, 64),
                vol.Optional("seed"): vol.Any(
                    None,
                    _integer(0, 2**31 - 1),
                    msg="expected null or an integer from 0 to 2**31-1",
                ),
            }
        ),
        vol.Optional("privacy"): _section(
            {
                vol.Optional("dp"): vol.Any(
                    None,
                    vol.Schema(
                        {
                            vol.Required("noise_multiplier"): _number(0.0, 100.0, exclusive=True),
                            vol.Optional("max_grad_norm"): _number(0.0, 1000.0, exclusive=True),
                            vol.Optional("delta"): _number(0.0, 0.1, exclusive=True),
                            vol.Optional("max_epsilon"): _number(0.0, 1e6, exclusive=True),
                        },
                        extra=vol.PREVENT_EXTRA,
                    ),
                ),
            }
        ),
        vol.Optional("protocol"): _section(
            {
                vol.Optional("max_payload"): _integer(1024, 64 * 2**20),
                vol.Optional("chunk_size"): _integer(16, 256 * 1024),
                vol.Optional("retry_after"): _number(0.0, 3600.0, exclusive=True),
                vol.Optional("max_retries"): _integer(0, 1000),
                vol.Optional("transfer_timeout"): _number(0.0, 86400.0, exclusive=True),
                vol.Optional("session_timeout"): _number(0.0, 86400.0, exclusive=True),
                vol.Optional("freshness"): _number(0.0, 86400.0, exclusive=True),
            }
        ),
        vol.Optional("network"): _section(
            {
                vol.Optional("keepalive"): _integer(5, 3600),
                vol.Optional("reconnect_min_delay"): _integer(1, 3600),
                vol.Optional("reconnect_max_delay"): _integer(1, 86400),
            }
        ),
        vol.Optional("strategy"): _section(
            {
                vol.Optional("name"): _one_of(STRATEGIES),
                vol.Optional("options"): vol.Any(None, dict),
            }
        ),
        vol.Optional("status_interval"): _number(1.0, 86400.0),
        vol.Optional("exchange_mode"): _one_of(EXCHANGE_MODES),
        vol.Optional("own_exchange_mode"): vol.Any(
            None,
            _one_of(EXCHANGE_MODES),
            msg=f"expected null or one of {', '.join(EXCHANGE_MODES)}",
        ),
        vol.Optional("model_size"): _one_of(MODEL_SIZES),
        vol.Optional("knowledge"): _section({vol.Optional("max_entries"): _integer(1, 1024)}),
        # not written by `init`: a replay's scene clock (core/clock.py), for the demo
        vol.Optional("replay_clock"): vol.Schema(
            {vol.Required("origin"): _number(0.0), vol.Required("scale"): _number(1.0, 10_000.0)},
            extra=vol.PREVENT_EXTRA,
        ),
    },
    extra=vol.PREVENT_EXTRA,
)


def _problems(error: vol.MultipleInvalid) -> list[tuple[str, str]]:
    found = []
    for item in error.errors:
        key = ".".join(str(part) for part in item.path)
        message = item.msg
        if message == "extra keys not allowed":
            message = "unknown key"
        elif message.startswith("required key not provided"):
            message = "required, but missing"
        found.append((key, message))
    return sorted(found)


def _load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise NotInitialised(f"{path} is missing: run `mlmule-companion init`") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(path.name, [("", f"not valid YAML: {where}{problem}")]) from err


def load_config(path: Path) -> CompanionConfig:
    """Read and validate `config.yaml`; raises `ConfigError` listing every problem."""
    raw = _load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(path.name, [("", "expected a mapping of settings")])
    try:
        data = _CONFIG_SCHEMA(raw)
    except vol.MultipleInvalid as err:
        raise ConfigError(path.name, _problems(err)) from err
    return _config_from(data, path.name)


def _config_from(data: dict[str, Any], source: str) -> CompanionConfig:
    store = data.get("store") or {}
    training = data.get("training") or {}
    privacy = data.get("privacy") or {}
    protocol_values = data.get("protocol") or {}
    network = data.get("network") or {}
    strategy = data.get("strategy") or {}
    max_mib = store.get("max_mib", 64.0)
    settings = replace(_TRAINING_DEFAULTS, **training)
    dp = None
    dp_settings = dict(privacy.get("dp") or {})
    budget = dp_settings.pop("max_epsilon", None)
    if dp_settings:
        dp = DPConfig(**dp_settings)
        if settings.backend == "numpy":
            raise ConfigError(source, [("privacy.dp", "differential privacy needs torch")])
    try:
        protocol = ProtocolConfig(**protocol_values)
    except MlmuleError as err:
        raise ConfigError(source, [("protocol", str(err))]) from err
    strategy_name = strategy.get("name", "mlmule")
    options = dict(strategy.get("options") or {})
    try:
        make_strategy(strategy_name, **options)
    except (MlmuleError, TypeError, ValueError) as err:
        raise ConfigError(source, [("strategy.options", str(err))]) from err
    net = replace(_NETWORK_DEFAULTS, **network)
    if net.reconnect_max_delay < net.reconnect_min_delay:
        raise ConfigError(
            source, [("network.reconnect_max_delay", "must not be below reconnect_min_delay")]
        )
    return CompanionConfig(
        name=data["name"],
        timezone=data.get("timezone") or local_timezone(),
        store_max_bytes=None if max_mib is None else int(max_mib * 2**20),
        keep_versions=store.get("keep_versions", 5),
        data_keep_days=(data.get("data") or {}).get("keep_days", 60.0),
        training=settings,
        dp=dp,
        dp_budget=budget,
        protocol=protocol,
        network=net,
        strategy=strategy_name,
        strategy_options=options,
        status_interval=data.get("status_interval", 60.0),
        exchange_mode=ExchangeMode(data.get("exchange_mode", MULE_EXCHANGE_MODE)),
        own_exchange_mode=ExchangeMode(
            data.get("own_exchange_mode")
            or (MULE_OWN_EXCHANGE_MODE if dp is None else ExchangeMode.BOTH)
        ),
        model_size=model_size(data.get("model_size", DEFAULT_MODEL_SIZE)),
        knowledge_max_entries=(data.get("knowledge") or {}).get("max_entries", 32),
        replay_clock=ReplayClock.from_config(data.get("replay_clock")),
    )


def default_config_text(name: str, timezone: str) -> str:
    """`config.yaml` as `init` writes it: every setting with its default and what it does."""
    t = _TRAINING_DEFAULTS
    n = _NETWORK_DEFAULTS
    p = ProtocolConfig()
    return f"""\
# mlmule-companion settings. Every key but `version` and `name` is optional; a removed key takes
# the default shown here. Check your edits with `mlmule-companion status`.
version: {CONFIG_VERSION}
name: {json.dumps(name)}          # how homes see this phone when they pair it
timezone: {json.dumps(timezone)}  # for the time-of-day features of your phone data

store:
  max_mib: 64        # size cap of the snapshot store; least recently used models go first
  keep_versions: 5   # older versions kept per model, for rollback

data:
  keep_days: 60      # sensing data older than this is deleted from data.sqlite

training:            # mobile-data mode: the phone trains on what it sensed in that space
  backend: {t.backend}     # auto (torch if installed), torch, or numpy
  epochs: {t.epochs}
  patience: {t.patience}         # epochs without improvement before stopping early
  max_seconds: {t.max_seconds:g}    # wall-clock bound per exchange
  max_samples: {t.max_samples}  # the latest minutes used, at most
  min_samples: {t.min_samples}    # fewer labelled minutes in a space: no training there
  window_days: {t.window_days:g}   # only data this recent
  batch_size: {t.batch_size}
  learning_rate: {t.learning_rate:g}
  prox_mu: {t.prox_mu:g}      # pull towards the model the space sent (FedProx)
  val_fraction: {t.val_fraction:g}  # the latest minutes held out for early stopping
  threads: {t.threads}          # CPU threads for training
  seed: null         # null: fresh randomness each run (DP needs it); a number repeats runs

privacy:
  dp: null           # e.g. {{noise_multiplier: 1.1, max_grad_norm: 1.0, delta: 1.0e-5,
                     #        max_epsilon: 10}} enables DP-SGD (opacus); `status` shows the
                     # epsilon spent per model; past max_epsilon, the phone stops training it

protocol:            # the encounter protocol (docs/protocol.md)
  max_payload: {p.max_payload}
  chunk_size: {p.chunk_size}
  retry_after: {p.retry_after:g}
  max_retries: {p.max_retries}
  transfer_timeout: {p.transfer_timeout:g}
  session_timeout: {p.session_timeout:g}
  freshness: {p.freshness:g}

network:
  keepalive: {n.keepalive}
  reconnect_min_delay: {n.reconnect_min_delay}   # seconds; doubles after each failed attempt
  reconnect_max_delay: {n.reconnect_max_delay}

strategy:            # how a space's model is merged into the one the phone carries
  name: mlmule       # mlmule, fedasync or fedavg
  options: {{}}

exchange_mode: {MULE_EXCHANGE_MODE.value}  # weights, knowledge or both: what the phone swaps
                         # with homes for the spaces' models it carries (both: whatever each
                         # home's space exchanges); knowledge (predictions on a shared proxy
                         # set, distilled into the models) crosses model families
own_exchange_mode: null  # the same, for the models the phone learns itself (its activity
                         # model); null: {MULE_OWN_EXCHANGE_MODE.value}, or both when privacy.dp is
                         # on (DP-SGD does not distil)

model_size: {DEFAULT_MODEL_SIZE}  # compact or large: the models the phone learns itself (its
                     # activity model); large needs a recent phone and more labelled minutes

knowledge:           # the knowledge cache: the latest knowledge of each home, per model
  max_entries: 32    # homes kept per model; the least fresh and least accurate go first

status_interval: 60  # seconds between status lines when not on a terminal
"""


def default_name() -> str:
    return f"{socket.gethostname().split('.')[0] or 'phone'} companion"[:64]


# ---------------------------------------------------------------------------------------------
# Homes


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach a home's broker, as stored in homes.yaml (the password is kept apart)."""

    host: str
    port: int = 1883
    tls: bool = False
    ca_certs: str | None = None
    verify_hostname: bool = True
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password_env: str | None = None  # read the password from this variable when connecting


@dataclass(frozen=True)
class HomeConfig:
    """A paired home. Its public key is in trust.json under the same id."""

    home_id: str
    name: str
    broker: BrokerSettings
    role: TrustRole = TrustRole.OWNER  # the phone's own home, or a home it visits
    prefix: str = "mlmule"
    paired_at: float = 0.0

    def broker_options(
        self, *, client_id: str, network: NetworkSettings, password: str | None
    ) -> BrokerOptions:
        broker = self.broker
        tls = None
        if broker.tls:
            tls = TlsOptions(
                ca_certs=broker.ca_certs,
                certfile=broker.certfile,
                keyfile=broker.keyfile,
                verify_hostname=broker.verify_hostname,
            )
        return BrokerOptions(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password=password,
            tls=tls,
            client_id=client_id,
            keepalive=network.keepalive,
            reconnect_min_delay=network.reconnect_min_delay,
            reconnect_max_delay=network.reconnect_max_delay,
        )


def _home_id(value: Any) -> str:
    try:
        return check_id(value, "home id")
    except MlmuleError as err:
        raise vol.Invalid(str(err)) from err


def _prefix(value: Any) -> str:
    try:
        ProtocolConfig(prefix=value)
    except MlmuleError as err:
        raise vol.Invalid(str(err)) from err
    return str(value)


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise vol.Invalid("expected text or null")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise vol.Invalid("expected true or false")
    return value


_BROKER_SCHEMA = vol.Schema(
    {
        vol.Required("host"): _text(253),
        vol.Optional("port", default=1883): _integer(1, 65535),
        vol.Optional("tls", default=False): _boolean,
        vol.Optional("ca_certs", default=None): _optional_text,
        vol.Optional("verify_hostname", default=True): _boolean,
        vol.Optional("certfile", default=None): _optional_text,
        vol.Optional("keyfile", default=None): _optional_text,
        vol.Optional("username", default=None): _optional_text,
        vol.Optional("password_env", default=None): _optional_text,
    },
    extra=vol.PREVENT_EXTRA,
)
_HOMES_SCHEMA = vol.Schema(
    {
        vol.Required("version"): vol.All(_integer(1), vol.In([CONFIG_VERSION])),
        vol.Required("homes"): vol.Any(
            None,
            {
                _home_id: {
                    vol.Required("name"): _text(64),
                    vol.Required("broker"): _BROKER_SCHEMA,
                    vol.Optional("role", default=TrustRole.OWNER.value): _one_of(ROLES),
                    vol.Optional("prefix", default="mlmule"): _prefix,
                    vol.Optional("paired_at", default=0.0): _number(0.0),
                }
            },
        ),
    },
    extra=vol.PREVENT_EXTRA,
)


def load_homes(path: Path) -> dict[str, HomeConfig]:
    """The paired homes in homes.yaml (none if the file does not exist yet)."""
    if not path.exists():
        return {}
    raw = _load_yaml(path)
    try:
        data = _HOMES_SCHEMA(raw if isinstance(raw, dict) else {"homes": raw})
    except vol.MultipleInvalid as err:
        raise ConfigError(path.name, _problems(err)) from err
    return {
        home_id: HomeConfig(
            home_id=home_id,
            name=entry["name"],
            broker=BrokerSettings(**entry["broker"]),
            role=TrustRole(entry["role"]),
            prefix=entry["prefix"],
            paired_at=entry["paired_at"],
        )
        for home_id, entry in (data["homes"] or {}).items()
    }


def save_homes(path: Path, homes: Mapping[str, HomeConfig]) -> None:
    document = {
        "version": CONFIG_VERSION,
        "homes": {
            home.home_id: {
                "name": home.name,
                "role": str(home.role),
                "prefix": home.prefix,
                "paired_at": home.paired_at,
                "broker": {f.name: getattr(home.broker, f.name) for f in fields(BrokerSettings)},
            }
            for home in homes.values()
        },
    }
    header = (
        "# Homes this phone is paired with, written by `mlmule-companion pair`. You may edit the\n"
        "# broker settings; a home's key lives in trust.json. Passwords are not kept here.\n"
    )
    atomic_write_text(
        path, header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), mode=0o600
    )


# ---------------------------------------------------------------------------------------------
# Credentials


def load_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(path.name, [("", f"not valid JSON: {err}")]) from err
    passwords = document.get("passwords") if isinstance(document, dict) else None
    if not isinstance(passwords, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in passwords.items()
    ):
        raise ConfigError(path.name, [("passwords", "expected a mapping of home id to password")])
    return dict(passwords)


def save_credentials(path: Path, passwords: Mapping[str, str]) -> None:
    atomic_write_text(
        path, json.dumps({"passwords": dict(passwords)}, indent=1, sort_keys=True), mode=0o600
    )


def password_for(home: HomeConfig, credentials: Mapping[str, str]) -> str | None:
    """The broker password: from the named environment variable, else the stored one."""
    if home.broker.password_env is not None:
        value = os.environ.get(home.broker.password_env)
        if value is None:
            raise ConfigError(
                "homes.yaml",
                [
                    (
                        f"homes.{home.home_id}.broker.password_env",
                        f"the environment variable {home.broker.password_env} is not set",
                    )
                ],
            )
        return value
    return credentials.get(home.home_id)
