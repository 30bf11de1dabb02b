"""The companion's command line, run as a user runs it: the installed console script."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import mlmule_core


def companion_script() -> str:
    script = Path(sys.executable).with_name("mlmule-companion")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    return str(script)


def test_help_describes_the_companion() -> None:
    result = subprocess.run(
        [companion_script(), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mlmule-companion")
    assert "never sends raw data" in " ".join(result.stdout.split())


def test_version_is_the_package_version() -> None:
    result = subprocess.run(
        [companion_script(), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"mlmule-companion {version('mlmule')}"


def test_no_command_prints_usage_and_fails() -> None:
    result = subprocess.run(
        [companion_script()], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 2
    assert "usage: mlmule-companion" in result.stdout


def test_core_is_the_integration_source_not_a_copy() -> None:
    """The companion imports the HA-free core from the integration folder itself."""
    repo = Path(__file__).resolve().parents[2]
    core_dir = repo / "custom_components" / "mlmule" / "core"
    assert Path(mlmule_core.__file__).resolve().parent == core_dir
