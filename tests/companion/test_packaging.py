"""The distribution maps every package of the source tree, so nothing is left out of an install."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found: set[str] = set()
    for name, source in config["package-dir"].items():
        root = REPO / source
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root)
            found.add(".".join((name, *relative.parts)))
    assert found == listed, f"unlisted: {sorted(found - listed)}, missing: {sorted(listed - found)}"
