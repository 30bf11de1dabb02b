"""The companion's settings files: defaults as written by `init`, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlmule_core.features import resolve_timezone
from mlmule_core.protocol import ExchangeMode, PayloadKind, ProtocolConfig

from mule_companion.cli import main
from mule_companion.config import (
    CompanionConfig,
    TrainingSettings,
    default_config_text,
    load_config,
    load_homes,
    local_timezone,
)
from mule_companion.errors import ConfigError


def write_config(path: Path, **changes: object) -> Path:
    config = yaml.safe_load(default_config_text("phone", "UTC"))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is ...:
            del node[key]
        else:
            node[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return error.value.problems


def test_the_written_defaults_load_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(default_config_text("Ada's phone", "Europe/Berlin"))
    config = load_config(path)
    assert config == CompanionConfig(name="Ada's phone", timezone="Europe/Berlin")
    assert config.training == TrainingSettings()
    assert config.protocol == ProtocolConfig()
    assert config.dp is None


def test_a_minimal_config_takes_every_default(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nname: phone\ntimezone: UTC\n")
    assert load_config(path) == CompanionConfig(name="phone", timezone="UTC")


def test_settings_are_read_into_their_places(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.yaml",
        training__epochs=3,
        training__max_seconds=4.5,
        training__seed=42,
        privacy__dp={"noise_multiplier": 1.5, "max_epsilon": 8},
        protocol__retry_after=2,
        store__max_mib=1,
        strategy__name="fedasync",
    )
    config = load_config(path)
    assert (config.training.epochs, config.training.max_seconds) == (3, 4.5)
    assert config.training.seed == 42
    assert config.dp is not None
    assert (config.dp.noise_multiplier, config.dp.max_grad_norm) == (1.5, 1.0)
    assert config.dp_budget == 8.0
    assert config.protocol.retry_after == 2.0
    assert config.store_max_bytes == 2**20
    assert config.strategy == "fedasync"


def test_a_phone_exchanges_both_kinds_until_told_otherwise_and_the_mode_names_what_it_swaps(
    tmp_path: Path,
) -> None:
    # both: a phone follows each space it visits, whatever the space's exchange mode
    assert CompanionConfig(name="phone", timezone="UTC").exchange_mode is ExchangeMode.BOTH
    bare = write_config(tmp_path / "bare.yaml", exchange_mode=..., model_size=...)
    assert load_config(bare).exchange_mode is ExchangeMode.BOTH
    assert load_config(bare).model_size == "compact"  # what a phone runs unless it is told
    assert load_config(write_config(tmp_path / "large.yaml", model_size="large")).model_size == (
        "large"
    )
    for mode, kinds in (
        ("weights", {PayloadKind.WEIGHTS}),
        ("knowledge", {PayloadKind.KNOWLEDGE}),
        ("both", {PayloadKind.WEIGHTS, PayloadKind.KNOWLEDGE}),
    ):
        path = write_config(tmp_path / "config.yaml", exchange_mode=mode, knowledge__max_entries=4)
        config = load_config(path)
        assert config.exchange_mode.kinds == kinds
        assert config.knowledge_max_entries == 4


def test_a_phone_swaps_knowledge_alone_for_its_own_models_unless_dp_is_on(tmp_path: Path) -> None:
    """Measured in the learning benchmark (wire.py); DP-SGD does not distil, so under it the
    phone's own models swap both kinds, unless the user says otherwise."""
    assert load_config(write_config(tmp_path / "bare.yaml")).own_exchange_mode is (
        ExchangeMode.KNOWLEDGE
    )
    private = write_config(tmp_path / "dp.yaml", privacy__dp={"noise_multiplier": 1.0})
    assert load_config(private).own_exchange_mode is ExchangeMode.BOTH
    chosen = write_config(
        tmp_path / "chosen.yaml", privacy__dp={"noise_multiplier": 1.0}, own_exchange_mode="weights"
    )
    assert load_config(chosen).own_exchange_mode is ExchangeMode.WEIGHTS
    bad = write_config(tmp_path / "bad.yaml", own_exchange_mode="all")
    assert problems(bad) == [
        ("own_exchange_mode", "expected null or one of weights, knowledge, both")
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"training__epochs": 0}, ("training.epochs", "expected an integer >= 1 and <= 1000")),
        ({"training__epochs": True}, ("training.epochs", "expected an integer >= 1 and <= 1000")),
        ({"training__epoch": 5}, ("training.epoch", "unknown key")),
        (
            {"training__seed": -1},
            ("training.seed", "expected null or an integer from 0 to 2**31-1"),
        ),
        ({"colour": "blue"}, ("colour", "unknown key")),
        ({"name": ...}, ("name", "required, but missing")),
        ({"training__backend": "gpu"}, ("training.backend", "expected one of auto, torch, numpy")),
        (
            {"training__learning_rate": 0},
            ("training.learning_rate", "expected a number > 0 and <= 1"),
        ),
        (
            {"network__keepalive": "30s"},
            ("network.keepalive", "expected an integer >= 5 and <= 3600"),
        ),
        (
            {"privacy__dp": {"delta": 1e-5}},
            ("privacy.dp.noise_multiplier", "required, but missing"),
        ),
        (
            {"exchange_mode": "gradients"},
            ("exchange_mode", "expected one of weights, knowledge, both"),
        ),
        (
            {"model_size": "huge"},
            ("model_size", "expected one of compact, large"),
        ),
        (
            {"knowledge__max_entries": 0},
            ("knowledge.max_entries", "expected an integer >= 1 and <= 1024"),
        ),
    ],
)
def test_each_bad_value_is_named_with_its_reason(
    tmp_path: Path, changes: dict[str, object], expected: tuple[str, str]
) -> None:
    assert problems(write_config(tmp_path / "config.yaml", **changes)) == [expected]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", training__epochs=-1, data__keep_days=0)
    assert [key for key, _ in problems(path)] == ["data.keep_days", "training.epochs"]


def test_a_time_zone_must_exist(tmp_path: Path) -> None:
    [(key, reason)] = problems(write_config(tmp_path / "config.yaml", timezone="Mars/Olympus"))
    assert key == "timezone"
    assert "Mars/Olympus" in reason


def test_settings_that_conflict_are_refused_with_the_rule(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.yaml", training__backend="numpy", privacy__dp={"noise_multiplier": 1.0}
    )
    assert problems(path) == [("privacy.dp", "differential privacy needs torch")]
    [(key, reason)] = problems(write_config(tmp_path / "c.yaml", protocol__chunk_size=1024))
    assert key == "protocol"
    assert "max_payload must fit in max_chunks chunks" in reason
    [(key, reason)] = problems(
        write_config(tmp_path / "c.yaml", strategy__options={"half_life": -1})
    )
    assert key == "strategy.options"


def test_broken_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nname: phone\ntraining: [1, 2\n")
    [(key, reason)] = problems(path)
    assert key == ""
    assert reason.startswith("not valid YAML: line 4, column 1:")


def test_homes_file_errors_name_the_home_and_key(tmp_path: Path) -> None:
    path = tmp_path / "homes.yaml"
    path.write_text(
        "version: 1\nhomes:\n  abcdefghijklmnop:\n    name: Home\n"
        "    broker: {host: example.org, port: 70000, tls: yes please}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_homes(path)
    assert error.value.problems == [
        ("homes.abcdefghijklmnop.broker.port", "expected an integer >= 1 and <= 65535"),
        ("homes.abcdefghijklmnop.broker.tls", "expected true or false"),
    ]


def test_the_command_line_lists_the_problems_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "phone"
    assert main(["--data-dir", str(data_dir), "init", "--name", "p", "--timezone", "UTC"]) == 0
    write_config(data_dir / "config.yaml", training__epochs="many", status_interval=0)
    capsys.readouterr()
    assert main(["--data-dir", str(data_dir), "status"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "mlmule-companion: invalid settings in config.yaml:",
        "  status_interval: expected a number >= 1 and <= 86400",
        "  training.epochs: expected an integer >= 1 and <= 1000",
    ]


def test_the_device_time_zone_is_one_the_features_understand() -> None:
    resolve_timezone(local_timezone())
