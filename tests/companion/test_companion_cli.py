"""The companion's commands, in process (fast) and, where it matters, as the installed script."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlmule_core.host import ModelHost
from mlmule_core.identity import BrokerInfo, Identity, PairingCode, TrustStore
from mlmule_core.onnx import load_model
from mlmule_core.snapshot import inspect
from mlmule_core.starter import load_starter, starter_index
from mlmule_core.train_numpy import TrainConfig

from mule_companion.agent import AgentLock
from mule_companion.cli import main
from tests.support.companion_process import companion_script

KEY = "occupancy/kitchen"


class Phone:
    """`mlmule-companion` run in process on one data directory."""

    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.data_dir = data_dir
        self._capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main(["--data-dir", str(self.data_dir), *args])
        out, err = self._capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out


@pytest.fixture
def phone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Phone:
    phone = Phone(tmp_path / "phone", capsys)
    phone.ok("init", "--name", "Ada's phone", "--timezone", "UTC")
    return phone


def home_code(home: Identity, *, host: str | None = "192.0.2.7", tls: bool = False) -> str:
    broker = None if host is None else BrokerInfo(host, 8883 if tls else 1883, tls, "phone")
    return PairingCode.for_identity(home, broker=broker).encode()


def test_init_prints_the_phones_pairing_code_and_keeps_its_identity(phone: Phone) -> None:
    again = phone.ok("init", "--name", "another name")
    assert "Already set up" in again
    [code_text] = [line for line in again.splitlines() if line.startswith("MLMULE-")]
    code = PairingCode.decode(code_text)
    assert (code.kind, code.name) == ("mule", "Ada's phone")
    identity = Identity.load_or_create(phone.data_dir / "identity.pem", kind="mule", name="x")
    assert code.peer_id == identity.id
    assert stat.S_IMODE((phone.data_dir / "identity.pem").stat().st_mode) == 0o600


def test_commands_before_init_say_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path / "nothing"), "status"]) == 1
    assert "run `mlmule-companion init` first" in capsys.readouterr().err


def test_pairing_stores_the_home_key_broker_and_password_apart(phone: Phone) -> None:
    home = Identity.generate(kind="space", name="Grandma's")
    code = home_code(home, tls=True)
    result = subprocess.run(
        [
            companion_script(),
            "--data-dir",
            str(phone.data_dir),
            "pair",
            code,
            "--password-stdin",
            "--guest",
            "--no-check",
            "--ca-certs",
            "/etc/ssl/ca.pem",
        ],
        input="hunter2\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"Paired with Grandma's ({home.id}), broker 192.0.2.7:8883 with TLS." in result.stdout
    homes = yaml.safe_load((phone.data_dir / "homes.yaml").read_text())["homes"]
    assert homes[home.id]["role"] == "guest"
    assert homes[home.id]["broker"] == {
        "host": "192.0.2.7",
        "port": 8883,
        "tls": True,
        "ca_certs": "/etc/ssl/ca.pem",
        "verify_hostname": True,
        "certfile": None,
        "keyfile": None,
        "username": "phone",
        "password_env": None,
    }
    assert "hunter2" not in (phone.data_dir / "homes.yaml").read_text()
    credentials = json.loads((phone.data_dir / "credentials.json").read_text())
    assert credentials == {"passwords": {home.id: "hunter2"}}
    for name in ("homes.yaml", "credentials.json", "trust.json"):
        assert stat.S_IMODE((phone.data_dir / name).stat().st_mode) == 0o600
    trust = TrustStore.load(phone.data_dir / "trust.json")
    entry = trust.get(home.id)
    assert entry is not None
    assert (entry.public_key, entry.kind, entry.role) == (home.public_key_bytes, "space", "guest")


def test_a_password_from_the_environment_is_never_written(phone: Phone) -> None:
    home = Identity.generate(kind="space", name="Home")
    phone.ok("pair", home_code(home), "--password-env", "HOME_MQTT_PASSWORD", "--no-check")
    homes = yaml.safe_load((phone.data_dir / "homes.yaml").read_text())["homes"]
    assert homes[home.id]["broker"]["password_env"] == "HOME_MQTT_PASSWORD"
    assert json.loads((phone.data_dir / "credentials.json").read_text()) == {"passwords": {}}


def test_pairing_refuses_what_it_cannot_use(phone: Phone) -> None:
    phone_code = PairingCode.for_identity(Identity.generate(kind="mule", name="other"))
    code, _, err = phone("pair", phone_code.encode(), "--no-check", "--no-password")
    assert code == 1
    assert "this is a phone's code" in err
    no_broker = home_code(Identity.generate(kind="space", name="Home"), host=None)
    code, _, err = phone("pair", no_broker, "--no-check", "--no-password")
    assert (code, "pass --host" in err) == (1, True)
    code, _, err = phone("pair", "MLMULE-AAAAA-BBBBB", "--no-check")
    assert code == 1
    assert "checksum" in err or "too short" in err
    phone.ok("pair", no_broker, "--host", "10.0.0.2", "--no-check", "--no-password")


def test_pair_tells_when_the_broker_cannot_be_reached(phone: Phone) -> None:
    home = Identity.generate(kind="space", name="Home")
    code = PairingCode.for_identity(home, broker=BrokerInfo("127.0.0.1", 9, False)).encode()
    out = phone.ok("pair", code, "--no-password")
    assert "Warning: cannot reach 127.0.0.1:9" in out
    assert "The pairing is kept" in out


def test_unpair_forgets_the_home_everywhere(phone: Phone) -> None:
    home = Identity.generate(kind="space", name="Home")
    phone.ok("pair", home_code(home), "--no-password", "--no-check")
    assert f"Forgot Home ({home.id})." in phone.ok("unpair", "home")
    assert yaml.safe_load((phone.data_dir / "homes.yaml").read_text())["homes"] == {}
    assert home.id not in TrustStore.load(phone.data_dir / "trust.json")
    code, _, err = phone("unpair", "Home")
    assert code == 1
    assert "no paired home is called 'Home'" in err


def test_status_of_a_new_phone(phone: Phone) -> None:
    document = json.loads(phone.ok("status", "--json"))
    assert document["phone"]["name"] == "Ada's phone"
    assert document["agent"]["running"] is False
    assert (document["homes"], document["models"], document["data"]["rows"]) == ([], [], 0)
    text = phone.ok("status")
    assert "Agent: not running" in text
    assert "Models carried (0):" in text


# ---------------------------------------------------------------------------------------------
# snapshots


def home_snapshot(root: Path, home: Identity, *, trained: bool = False) -> bytes:
    """A home's model for KEY, signed by the home, as its space would export it: the starter,
    or (`trained`) its next version after a round of training on the room's frames."""
    host = ModelHost(
        root,
        home,
        TrustStore(),
        known_arch={key: entry.arch_hash for key, entry in starter_index().items()},
    )
    now = time.time()
    starter = load_starter(KEY)
    host.install(
        load_model(starter.onnx_bytes), context_key=KEY, samples=50, data_time=now, now=now
    )
    if trained:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1000, starter.schema.n_inputs)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        # long enough that the promotion rule serves it
        config = TrainConfig(max_epochs=40, learning_rate=3e-2, seed=0)
        host.train(KEY, x, y, config=config, data_time=now, now=now)
        assert host.decisions[KEY].served
    return host.export(KEY)


def test_import_export_verify_inspect_and_rollback(phone: Phone, tmp_path: Path) -> None:
    home = Identity.generate(kind="space", name="Home")
    phone.ok("pair", home_code(home), "--no-password", "--no-check")
    first = tmp_path / "first.snap"
    first.write_bytes(home_snapshot(tmp_path / "home", home))
    # nothing to merge with yet: the phone takes it as it is
    assert f"Imported {KEY} v1 from {home.id} (adopted); the phone now carries v1." in phone.ok(
        "snapshot", "import", str(first), "--merge"
    )
    newer = tmp_path / "newer.snap"
    newer.write_bytes(home_snapshot(tmp_path / "home2", home, trained=True))
    assert "(merged); the phone now carries v2" in phone.ok(
        "snapshot", "import", str(newer), "--merge"
    )
    code, _, err = phone("snapshot", "import", str(first))
    assert code == 1
    assert f"refused {first}: replayed" in err  # an older version of the same home's model

    exported = tmp_path / "out.snap"
    assert f"Wrote {KEY} v2" in phone.ok("snapshot", "export", KEY, "-o", str(exported))
    assert phone.ok("snapshot", "verify", str(exported)).startswith(f"ok: {KEY} v2 signed by ")
    small = tmp_path / "small.snap"
    phone.ok("snapshot", "export", KEY, "-o", str(small), "--compression", "int8")
    assert small.stat().st_size < exported.stat().st_size
    assert phone.ok("snapshot", "verify", str(small)).startswith("ok: ")
    described = json.loads(phone.ok("snapshot", "inspect", str(exported), "--json"))
    assert described["header"]["context_key"] == KEY
    assert described["header"]["version"] == 2
    assert described["verified"] is True
    assert "signature: valid" in phone.ok("snapshot", "inspect", str(exported))

    assert f"{KEY} is back at v1." in phone.ok("snapshot", "rollback", KEY)
    [model] = json.loads(phone.ok("status", "--json"))["models"]
    assert (model["version"], model["history"]) == (1, 1)


def test_a_stranger_s_snapshot_is_refused(phone: Phone, tmp_path: Path) -> None:
    stranger = Identity.generate(kind="space", name="Stranger")
    path = tmp_path / "stranger.snap"
    path.write_bytes(home_snapshot(tmp_path / "stranger", stranger))
    code, _, err = phone("snapshot", "import", str(path))
    assert code == 1
    assert "unknown_signer" in err
    code, out, _ = phone("snapshot", "verify", str(path))
    assert code == 1
    assert out.startswith("invalid: unknown_signer: ")


def test_the_store_is_not_written_while_the_agent_owns_it(phone: Phone, tmp_path: Path) -> None:
    home = Identity.generate(kind="space", name="Home")
    phone.ok("pair", home_code(home), "--no-password", "--no-check")
    path = tmp_path / "model.snap"
    path.write_bytes(home_snapshot(tmp_path / "home", home))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); f.write('4242'); f.flush();"
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(phone.data_dir / "agent.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert AgentLock.holder(phone.data_dir / "agent.lock") == 4242
        code, _, err = phone("snapshot", "import", str(path))
        assert code == 1
        assert "the companion is running (pid 4242)" in err
        assert json.loads(phone.ok("status", "--json"))["agent"]["running"] is True
    finally:
        holder.kill()
        holder.wait()
    assert "Imported" in phone.ok("snapshot", "import", str(path))


# ---------------------------------------------------------------------------------------------
# verify never crashes


@pytest.fixture
def valid_snapshot(phone: Phone, tmp_path: Path) -> bytes:
    home = Identity.generate(kind="space", name="Home")
    phone.ok("pair", home_code(home), "--no-password", "--no-check")
    return home_snapshot(tmp_path / "home", home)


def verify_once(phone: Phone, path: Path) -> tuple[int, str, str]:
    code, out, err = phone("snapshot", "verify", str(path))
    assert len(out.splitlines()) == 1, out
    assert err == ""
    return code, out, err


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-1], "malformed"),
        (lambda data: data[: len(data) // 2], "malformed"),
        (lambda data: b"", "malformed"),
        (lambda data: b"not a snapshot at all", "malformed"),
        (lambda data: data[:200] + bytes([data[200] ^ 1]) + data[201:], "bad_signature"),
        (lambda data: data[:-64] + bytes(64), "bad_signature"),
    ],
)
def test_verify_gives_one_line_and_a_failure_for_a_bad_file(
    phone: Phone, valid_snapshot: bytes, tmp_path: Path, damage: object, reason: str
) -> None:
    path = tmp_path / "bad.snap"
    path.write_bytes(damage(valid_snapshot))  # type: ignore[operator]
    code, out, _ = verify_once(phone, path)
    assert code == 1
    assert out.startswith(f"invalid: {reason}: "), out


def test_verify_of_a_missing_file_or_a_directory_is_one_line_too(
    phone: Phone, tmp_path: Path
) -> None:
    assert verify_once(phone, tmp_path / "missing.snap")[1].startswith("invalid: unreadable: ")
    assert verify_once(phone, tmp_path)[1].startswith("invalid: unreadable: ")


def test_the_installed_verify_never_prints_a_traceback(phone: Phone, tmp_path: Path) -> None:
    path = tmp_path / "garbage.snap"
    path.write_bytes(b"MLMULE\x00\x01\xff\xff\xff\xff" + bytes(range(256)) * 4)
    result = subprocess.run(
        [companion_script(), "--data-dir", str(phone.data_dir), "snapshot", "verify", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("invalid: ")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_fails_verify_in_one_line(
    phone: Phone, valid_snapshot: bytes, tmp_path: Path, position: int, flip: int
) -> None:
    index = position % len(valid_snapshot)
    damaged = bytearray(valid_snapshot)
    damaged[index] ^= flip
    path = tmp_path / "flipped.snap"
    path.write_bytes(bytes(damaged))
    code, out, _ = verify_once(phone, path)
    assert code == 1
    assert out.startswith("invalid: ")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=4096))
def test_random_bytes_fail_verify_in_one_line(phone: Phone, tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.snap"
    path.write_bytes(data)
    code, out, _ = verify_once(phone, path)
    assert code == 1
    assert out.startswith("invalid: ")


def test_inspect_shows_an_unverified_header_of_a_stranger(phone: Phone, tmp_path: Path) -> None:
    stranger = Identity.generate(kind="space", name="Stranger")
    path = tmp_path / "stranger.snap"
    data = home_snapshot(tmp_path / "stranger", stranger)
    path.write_bytes(data)
    described = json.loads(phone.ok("snapshot", "inspect", str(path), "--json"))
    assert described["verified"] is False
    assert described["signature"].startswith("not valid: unknown_signer")
    assert described["header"] == inspect(data)["header"]
