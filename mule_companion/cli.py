"""Command line of the mule companion: `mlmule-companion`."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from mlmule_core.errors import MlmuleError
from mlmule_core.features import ACTIVITIES
from mlmule_core.host import saved_promotions
from mlmule_core.identity import PairingCode, TrustRole
from mlmule_core.snapshot import (
    COMPRESSIONS,
    DEFAULT_LIMITS,
    Snapshot,
    inspect,
    pack,
    unpack,
    verify_container,
)
from mlmule_core.storage import atomic_write_bytes
from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

from . import __version__
from .agent import (
    AgentLock,
    Companion,
    SelfAndHomes,
    StatusDisplay,
    WireDump,
    check_home_code,
    human_bytes,
    known_architectures,
    running_agent,
)
from .config import (
    DATA_DIR_ENV,
    BrokerSettings,
    default_data_dir,
    default_name,
    local_timezone,
    password_for,
)
from .datalog import COLUMNS, RowParser, detect_format, open_text, read_records
from .errors import CompanionError, ConfigError, DataError, PairingError
from .mqtt_link import probe
from .status import cached_knowledge, carried_models, read_current

PROG = "mlmule-companion"
_LOGGER = logging.getLogger(PROG)
Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per thing a user does."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "The ML Mule phone companion: carries model snapshots between the Home Assistant "
            "spaces it visits, trains them on what the phone senses, and never sends raw data."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the phone's key, settings, models and data live (default: ${DATA_DIR_ENV} "
        "or ~/.local/share/mlmule-companion)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    init = commands.add_parser("init", help="create the phone's identity and settings")
    init.add_argument("--name", help="how homes see this phone (default: the host name)")
    init.add_argument("--timezone", help="IANA zone or offset (default: this device's)")
    init.set_defaults(handler=cmd_init)
    _add_pair(commands)
    unpair = commands.add_parser("unpair", help="forget a home (by id or name)")
    unpair.add_argument("home")
    unpair.set_defaults(handler=cmd_unpair)
    run = commands.add_parser("run", help="run the agent: exchange with every reachable home")
    run.add_argument(
        "--dump-dir",
        type=Path,
        help="debug: write every message the phone sends there, and each snapshot it sends as "
        "sent-<sha256>.snap (exactly the bytes that left the phone)",
    )
    run.add_argument("--no-status-line", action="store_true", help="log lines instead")
    run.set_defaults(handler=cmd_run)
    status = commands.add_parser("status", help="homes, models carried, exchanges, privacy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)
    _add_log_data(commands)
    _add_snapshot(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_pair(commands: Commands) -> None:
    pair = commands.add_parser("pair", help="pair with a home, from its mlmule.pair_mule code")
    pair.add_argument("code", help="the home_code returned by the home's mlmule.pair_mule action")
    pair.add_argument("--host", help="the broker's address (default: from the code)")
    pair.add_argument("--port", type=int, help="the broker's port (default: from the code)")
    pair.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use TLS (default: as the code says)",
    )
    pair.add_argument("--ca-certs", help="CA certificate file of the broker (private CA)")
    pair.add_argument("--certfile", help="client certificate, if the broker asks for one")
    pair.add_argument("--keyfile", help="key of the client certificate")
    pair.add_argument(
        "--insecure-no-hostname-check",
        action="store_true",
        help="accept a certificate that does not name the host (self-signed, reached by IP)",
    )
    pair.add_argument("--username", help="broker user (default: from the code)")
    secret = pair.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the broker password from this environment variable whenever connecting; "
        "it is never written to disk",
    )
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the broker password from standard input (kept in credentials.json, 0600)",
    )
    secret.add_argument("--no-password", action="store_true", help="the broker needs none")
    pair.add_argument("--prefix", default="mlmule", help="the home's MQTT topic prefix")
    pair.add_argument(
        "--guest",
        action="store_true",
        help="a home you visit rather than your own (its models are merged as a guest's)",
    )
    pair.add_argument("--no-check", action="store_true", help="do not try the broker now")
    pair.set_defaults(handler=cmd_pair)


def _add_log_data(commands: Commands) -> None:
    log_data = commands.add_parser(
        "log-data",
        help="ingest the phone's sensing data (CSV or JSON Lines)",
        description=(
            "Columns: " + ", ".join(COLUMNS) + ". `time` is epoch seconds or ISO 8601 with an "
            "offset; `home` a paired home's id or name; `room` the space's id or room kind; "
            "`activity` one of " + ", ".join(ACTIVITIES) + "; `label_source` user or detected. "
            "A file is stored whole or not at all."
        ),
    )
    log_data.add_argument("files", nargs="+", metavar="FILE", help="files, or - for stdin")
    log_data.add_argument("--format", choices=("csv", "jsonl"), help="default: from the name")
    log_data.add_argument("--home", default="", help="home for rows that name none")
    log_data.add_argument("--room", default="", help="room for rows that name none")
    log_data.add_argument(
        "--skip-invalid", action="store_true", help="store the valid rows, report the others"
    )
    log_data.set_defaults(handler=cmd_log_data)


def _add_snapshot(commands: Commands) -> None:
    snapshot = commands.add_parser("snapshot", help="look at, check, export or import models")
    actions = snapshot.add_subparsers(dest="action", metavar="ACTION", required=True)
    look = actions.add_parser("inspect", help="show a snapshot file's header")
    look.add_argument("file", type=Path)
    look.add_argument("--json", action="store_true")
    look.set_defaults(handler=cmd_inspect)
    check = actions.add_parser("verify", help="check a snapshot file fully; exit 1 if bad")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=cmd_verify)
    export = actions.add_parser("export", help="write a carried model to a file")
    export.add_argument("context_key", help="e.g. phone_activity/kitchen")
    export.add_argument("-o", "--output", type=Path, help="default: <task>__<kind>-v<N>.snap")
    export.add_argument("--compression", choices=COMPRESSIONS, help="default: as stored")
    export.set_defaults(handler=cmd_export)
    load = actions.add_parser("import", help="take a snapshot file into the store")
    load.add_argument("file", type=Path)
    load.add_argument(
        "--merge",
        action="store_true",
        help="merge it into the carried model instead of replacing that",
    )
    load.set_defaults(handler=cmd_import)
    back = actions.add_parser("rollback", help="make an older kept version current again")
    back.add_argument("context_key")
    back.add_argument("--version", type=int, help="default: the one before the current")
    back.set_defaults(handler=cmd_rollback)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if args.command == "run" else "%(message)s",
        stream=sys.stderr,
    )
    if args.command != "run" and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as err:
        print(f"{PROG}: invalid settings in {err.source}:", file=sys.stderr)
        for key, why in err.problems:
            print(f"  {key}: {why}" if key else f"  {why}", file=sys.stderr)
        return 1
    except DataError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except MlmuleError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------------
# init, pair, unpair


def cmd_init(args: argparse.Namespace) -> int:
    companion, created = Companion.initialise(
        args.data_dir,
        name=args.name or default_name(),
        timezone=args.timezone or local_timezone(),
    )
    if created:
        print(f"Created the phone's identity and settings in {companion.paths.root}.")
    else:
        print(f"Already set up in {companion.paths.root}; the identity is unchanged.")
    print(f"Phone: {companion.config.name} ({companion.identity.id})")
    print("In Home Assistant, call the action mlmule.pair_mule with this code, then run")
    print(f"`{PROG} pair <home_code>` with the home_code it returns:")
    print(companion.pairing_code())
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    code = PairingCode.decode(args.code)
    check_home_code(code)
    offered = code.broker
    host = args.host or (offered.host if offered else None)
    if host is None:
        raise PairingError("the code names no broker: pass --host (and --port) of the home's")
    username = args.username if args.username is not None else (offered and offered.username)
    broker = BrokerSettings(
        host=host,
        port=args.port or (offered.port if offered else 1883),
        tls=args.tls if args.tls is not None else bool(offered and offered.tls),
        ca_certs=args.ca_certs,
        verify_hostname=not args.insecure_no_hostname_check,
        certfile=args.certfile,
        keyfile=args.keyfile,
        username=username or None,
        password_env=args.password_env,
    )
    password = _password(args, broker)
    home = companion.pair(
        code,
        broker=broker,
        role=TrustRole.GUEST if args.guest else TrustRole.OWNER,
        prefix=args.prefix,
        password=password,
    )
    secured = " with TLS" if broker.tls else ""
    print(f"Paired with {home.name} ({home.home_id}), broker {host}:{broker.port}{secured}.")
    if not args.no_check:
        _check_broker(companion, home.home_id, password)
    if AgentLock.holder(companion.paths.lock) is not None:
        print(f"Restart `{PROG} run` to connect to it.")
    return 0


def _password(args: argparse.Namespace, broker: BrokerSettings) -> str | None:
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise PairingError("--password-stdin: standard input gave no password")
        return line
    if args.password_env or args.no_password or broker.username is None:
        return None
    if sys.stdin.isatty():
        return getpass.getpass(f"Password of {broker.username} on {broker.host}: ") or None
    return None


def _check_broker(companion: Companion, home_id: str, password: str | None) -> None:
    home = companion.homes[home_id]
    if home.broker.password_env is not None:
        with contextlib.suppress(ConfigError):
            password = password_for(home, companion.credentials)
    options = home.broker_options(
        client_id=f"mlmule-{companion.identity.id}-probe",
        network=companion.config.network,
        password=password,
    )
    problem = probe(options)
    if problem is None:
        print("The broker accepted the phone.")
    else:
        print(f"Warning: {problem}. The pairing is kept; the agent retries when it runs.")


def cmd_unpair(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    home = companion.unpair(args.home)
    print(f"Forgot {home.name} ({home.home_id}).")
    return 0


# ---------------------------------------------------------------------------------------------
# run


@dataclass
class _StopRequest:
    """Set by SIGINT or SIGTERM; wakes the agent so it notices at once."""

    event: threading.Event = field(default_factory=threading.Event)
    wake: Callable[[], None] = lambda: None

    def __call__(self, _signum: int, _frame: object) -> None:
        self.event.set()
        self.wake()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def cmd_run(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    interactive = sys.stderr.isatty() and not args.no_status_line
    dump = WireDump(args.dump_dir) if args.dump_dir else None
    if not companion.homes:
        _LOGGER.warning("no home is paired yet: see `%s pair --help`", PROG)
    redirect = logging_redirect_tqdm() if interactive else contextlib.nullcontext()
    with (
        _stop_on_signals() as stop,
        redirect,
        running_agent(companion, dump=dump, progress=interactive) as agent,
    ):
        stop.wake = agent.wake
        display = StatusDisplay(interactive=interactive, interval=companion.config.status_interval)
        try:
            agent.run(stop.event, display)
        finally:
            display.close()
    _LOGGER.info("stopped; the store and the ledger are saved")
    return 0


# ---------------------------------------------------------------------------------------------
# status


def _age(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "never"
    delta = max(0.0, now - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            return f"{delta / size:.0f} {unit} ago"
    return f"{delta:.0f} s ago"


def _decision_line(decision: dict[str, Any]) -> str:
    """`training: kept_current (challenger 0.8120 vs current 0.8400 on 300 held out)`."""
    line = f"{decision['change']}: {decision['reason']}"
    if decision["challenger_score"] is not None and decision["current_score"] is not None:
        line += (
            f" (challenger {decision['challenger_score']:.4f} vs current "
            f"{decision['current_score']:.4f} on {decision['samples']} held out)"
        )
    return line


def status_document(companion: Companion, now: float) -> dict[str, Any]:
    """Everything `status` shows, JSON-able."""
    ledger = companion.ledger
    holder = AgentLock.holder(companion.paths.lock)
    agent = asdict(ledger.agent)
    agent["running"] = holder is not None
    agent["pid"] = holder
    summary = companion.data.summary()
    promotions, decisions = saved_promotions(companion.paths.host)
    return {
        "phone": {
            "name": companion.config.name,
            "id": companion.identity.id,
            "data_dir": str(companion.paths.root),
            "timezone": companion.config.timezone,
        },
        "agent": agent,
        "homes": [
            {
                "id": home.home_id,
                "name": home.name,
                "role": home.role,
                "broker": f"{home.broker.host}:{home.broker.port}",
                "tls": home.broker.tls,
                "online": ledger.agent.connected.get(home.home_id) if holder else None,
                **asdict(ledger.home(home.home_id)),
            }
            for home in companion.homes.values()
        ],
        "models": [
            {
                **asdict(model),
                "lineage": list(model.lineage[-5:]),
                "age_seconds": now - model.created_at,
                "data_age_seconds": now - model.data_time if model.data_time else None,
                "privacy": asdict(ledger.privacy[model.context_key])
                if model.context_key in ledger.privacy
                else None,
                "training": asdict(ledger.training[model.context_key])
                if model.context_key in ledger.training
                else None,
                "last_decision": decisions[model.context_key].as_dict()
                if model.context_key in decisions
                else None,
            }
            for model in carried_models(companion.paths.host, companion.identity)
        ],
        "promotions": promotions,
        "knowledge": {
            "exchange_mode": companion.config.exchange_mode.value,
            "own_exchange_mode": companion.config.own_exchange_mode.value,
            "cache": cached_knowledge(companion.paths.knowledge),
            "distillation": {k: asdict(v) for k, v in sorted(ledger.distillation.items())},
        },
        "data": asdict(summary),
        "recent": ledger.events[-10:],
    }


def cmd_status(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    now = time.time()
    document = status_document(companion, now)
    if args.json:
        print(json.dumps(document, indent=1))
        return 0
    names = {home.home_id: home.name for home in companion.homes.values()}
    names[companion.identity.id] = "this phone"
    phone, agent = document["phone"], document["agent"]
    print(f"Phone: {phone['name']} ({phone['id']}), data in {phone['data_dir']}")
    if agent["running"]:
        print(f"Agent: running (pid {agent['pid']}), {agent['status_line']}")
    else:
        print(f"Agent: not running (last ran {_age(agent['updated_at'], now)})")
    print(f"Homes ({len(document['homes'])}):")
    for home in document["homes"]:
        online = {True: "online", False: "offline", None: "-"}[home["online"]]
        print(
            f"  {home['name']} ({home['id']}), {home['role']}, {home['broker']}"
            f"{' TLS' if home['tls'] else ''}, {online}; last exchange "
            f"{_age(home['last_exchange'], now)}, {home['sessions']} exchanges, took "
            f"{home['received']}, gave {home['sent']}, refused {home['refused']}, sent "
            f"{human_bytes(home['bytes_sent'])}, received {human_bytes(home['bytes_received'])}"
        )
    print(f"Models carried ({len(document['models'])}):")
    for model in document["models"]:
        privacy = model["privacy"]
        spent = (
            f", DP epsilon {privacy['epsilon']:.2f} (delta {privacy['delta']:.1e}, "
            f"{privacy['runs']} runs)"
            if privacy
            else ""
        )
        lineage = " < ".join(names.get(peer, peer) for peer in reversed(model["lineage"][-3:]))
        print(
            f"  {model['context_key']} v{model['version']}, made {_age(model['created_at'], now)}"
            f", data {_age(model['data_time'] or None, now)}, {model['samples']} samples, "
            f"{human_bytes(model['size'])}, {model['history']} kept{spent}"
            + (f"; from {lineage}" if lineage else "")
        )
        if model["last_decision"] is not None:
            print(f"    last change: {_decision_line(model['last_decision'])}")
    if document["promotions"]:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(document["promotions"].items()))
        print(f"Model changes judged: {counts}")
    _print_knowledge(document["knowledge"], names, now)
    data = document["data"]
    print(f"Sensing data: {data['rows']} rows, {data['labelled']} labelled")
    for place in data["places"]:
        print(
            f"  {names.get(place['home'], place['home'])} / {place['room'] or '-'}: "
            f"{place['rows']} rows, {place['labelled']} labelled, last {_age(place['last'], now)}"
        )
    if document["recent"]:
        print("Recent:")
        for event in document["recent"]:
            stamp = _clock_time(event["time"])
            where = f"{names.get(event['home'], event['home'])}/{event['space']}"
            what = f"{event['event']} {event['context_key']} {event['detail']}"
            print(f"  {stamp} {where}: {what.strip()}")
    return 0


def _print_knowledge(knowledge: dict[str, Any], names: dict[str, str], now: float) -> None:
    cache, distillation = knowledge["cache"], knowledge["distillation"]
    print(
        f"Knowledge (exchange mode {knowledge['exchange_mode']}, own models "
        f"{knowledge['own_exchange_mode']}): {len(cache)} models cached"
    )
    for key, entries in cache.items():
        held = ", ".join(
            f"{names.get(e['contributor'], e['contributor'])} "
            f"(trained {_age(e['trained_at'], now)}"
            + ("" if e["score"] is None else f", score {e['score']:.3f}")
            + ")"
            for e in entries
        )
        print(f"  {key}: {held}")
    for key, record in distillation.items():
        decision = record["last_decision"]
        print(
            f"  distilled {key}: {record['runs']} runs, {record['served']} served; last "
            f"{_age(record['last'], now)} from {record['last_contributors']} contributors on "
            f"{record['last_samples']} minutes"
            + ("" if decision is None else f": {_decision_line(decision)}")
        )


# ---------------------------------------------------------------------------------------------
# log-data


def cmd_log_data(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    parser = RowParser(
        home_aliases=companion.home_aliases(), default_home=args.home, default_room=args.room
    )

    def samples() -> Iterator[Any]:
        for name in args.files:
            source = "<stdin>" if name == "-" else name
            fmt = detect_format(source, args.format)
            try:
                stream = open_text(name)
            except OSError as err:
                raise DataError(f"{source}: {err.strerror}") from err
            with stream:
                yield from parser.samples(read_records(stream, fmt, source), source)

    def refuse_invalid() -> None:
        if parser.problems and not args.skip_invalid:
            listed = parser.problems[:20]
            more = len(parser.problems) - len(listed)
            raise DataError(
                f"{len(parser.problems)} invalid rows; nothing was stored "
                "(fix them, or pass --skip-invalid to store the valid rows)",
                problems=[*listed, *([f"... and {more} more"] if more else [])],
            )

    report = companion.data.ingest(
        samples(), keep_days=companion.config.data_keep_days, before_commit=refuse_invalid
    )
    for problem in parser.problems[:20]:
        print(f"skipped {problem}", file=sys.stderr)
    print(
        f"Stored {report.rows} rows ({report.new} new)"
        + (f", skipped {len(parser.problems)} invalid" if parser.problems else "")
        + (f", {parser.valid - report.rows} too old to keep" if parser.valid > report.rows else "")
        + (f", pruned {report.pruned} old rows" if report.pruned else "")
        + "."
    )
    return 0


# ---------------------------------------------------------------------------------------------
# snapshot


def _read_snapshot_file(path: Path) -> bytes:
    limit = DEFAULT_LIMITS.max_bytes
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise CompanionError(f"{path}: {err.strerror}", reason="unreadable") from err
    if len(data) > limit:
        raise CompanionError(f"{path} is larger than {limit} bytes", reason="too_large")
    return data


def _signers(data_dir: Path) -> SelfAndHomes | None:
    """The keys snapshots may be signed with: the phone's and its homes' (if initialised)."""
    try:
        companion = Companion(data_dir)
    except CompanionError:
        return None
    return SelfAndHomes(companion.identity, companion.trust)


def cmd_inspect(args: argparse.Namespace) -> int:
    data = _read_snapshot_file(args.file)
    document: dict[str, Any] = dict(inspect(data))
    signers = _signers(args.data_dir)
    if signers is None:
        document["signature"] = "not checked: the companion is not set up here"
    else:
        try:
            verified = verify_container(data, trust=signers)
            document["verified"] = True
            document["signature"] = f"valid, by {verified.origin}"
        except MlmuleError as err:
            document["signature"] = f"not valid: {err.reason}: {err}"
    if args.json:
        print(json.dumps(document, indent=1))
        return 0
    header = document["header"]
    print(f"{args.file}: {document['size']} bytes, sha256 {document['sha256']}")
    print(f"  signature: {document['signature']}")
    for key in ("context_key", "task", "version", "origin", "compression", "samples"):
        print(f"  {key}: {header.get(key)}")
    for key in ("created_at", "data_time"):
        value = header.get(key)
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
            if isinstance(value, int | float)
            else value
        )
        print(f"  {key}: {when}")
    print(f"  lineage: {', '.join(map(str, header.get('lineage') or [])) or '-'}")
    print(f"  arch_hash: {header.get('arch_hash')}")
    return 0


def _clock_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def cmd_verify(args: argparse.Namespace) -> int:
    """One line either way; never a traceback, whatever the file holds."""
    try:
        snapshot = _verified_file(args.file, args.data_dir)
    except MlmuleError as err:
        print(f"invalid: {err.reason}: {err}")
        return 1
    except Exception as err:  # a bad file must never produce a traceback
        print(f"invalid: internal_error: {type(err).__name__}: {err}")
        return 1
    meta = snapshot.meta
    print(
        f"ok: {meta.context_key} v{meta.version} signed by {snapshot.origin}, "
        f"{snapshot.size} bytes, sha256 {snapshot.sha256}"
    )
    return 0


def _verified_file(path: Path, data_dir: Path) -> Snapshot:
    """Every check a receiver makes before merging, except the age and replay of a live one."""
    data = _read_snapshot_file(path)
    signers = _signers(data_dir)
    if signers is None:
        raise CompanionError(
            f"no keys to check against: run `{PROG} init` first", reason="not_initialised"
        )
    return unpack(data, trust=signers, expected_arch=known_architectures())


def cmd_export(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    data = read_current(companion.paths.host, args.context_key)
    snapshot = unpack(data, trust=companion.identity, expected_arch=None)
    if args.compression is not None and args.compression != snapshot.compression:
        data = pack(
            snapshot.onnx_bytes, snapshot.meta, companion.identity, compression=args.compression
        )
    output: Path = args.output or Path(
        f"{args.context_key.replace('/', '__')}-v{snapshot.meta.version}.snap"
    )
    atomic_write_bytes(output, data)
    print(f"Wrote {args.context_key} v{snapshot.meta.version} ({len(data)} bytes) to {output}.")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    data = _read_snapshot_file(args.file)
    # only to choose between merging and taking; both verify everything before use
    header = inspect(data)["header"]
    claimed_key = header.get("context_key") if isinstance(header, dict) else None
    with AgentLock(companion.paths.lock):
        host = companion.open_host()
        merge = args.merge and isinstance(claimed_key, str) and host.has(claimed_key)
        outcome = host.receive(data) if merge else host.adopt(data)
    if not outcome.accepted:
        print(f"{PROG}: refused {args.file}: {outcome.reason}: {outcome.detail}", file=sys.stderr)
        return 1
    print(
        f"Imported {outcome.context_key} v{outcome.received_version} from {outcome.origin} "
        f"({outcome.reason}); the phone now carries v{outcome.version}."
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    companion = Companion(args.data_dir)
    with AgentLock(companion.paths.lock):
        slot = companion.open_host().rollback(args.context_key, args.version)
    print(f"{args.context_key} is back at v{slot.version}.")
    return 0
