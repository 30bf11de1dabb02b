"""Starter models: pre-trained canonical ONNX files, so a new space predicts from minute one.

The files, a model card each and `index.json` live in this folder (HACS installs only
`custom_components/mlmule/`). `python -m mlmule_models.starter` regenerates all of them; the
index maps every supported context key to its file, the file's SHA-256 and its architecture
hash, which is the architecture every snapshot for that key must have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FamilyError
from ..families import FamilySpec, arch_hash, from_onnx
from ..features import FeatureSchema
from ..onnx import load_model
from ..weights import Weights

INDEX_FILE = "index.json"
INDEX_FORMAT = 1


@dataclass(frozen=True)
class StarterEntry:
    """One context key's starter: where it is and what it must hash to."""

    context_key: str
    file: str
    card: str
    sha256: str
    arch_hash: str


@dataclass(frozen=True)
class StarterModel:
    context_key: str
    spec: FamilySpec
    schema: FeatureSchema
    weights: Weights
    arch_hash: str
    onnx_bytes: bytes


def _read(name: str, directory: Path | None) -> bytes:
    try:
        if directory is None:
            return resources.files(__name__).joinpath(name).read_bytes()
        return (directory / name).read_bytes()
    except OSError as err:
        raise FamilyError(
            f"cannot read starter file {name}: {err}", reason="starter_missing"
        ) from err


def parse_index(text: str | bytes) -> dict[str, StarterEntry]:
    """The context keys of an index document; `FamilyError` when it is malformed."""
    try:
        document: Any = json.loads(text)
        version = document["format"]
        entries = {
            key: StarterEntry(
                context_key=key,
                file=str(entry["file"]),
                card=str(entry["card"]),
                sha256=str(entry["sha256"]),
                arch_hash=str(entry["arch_hash"]),
            )
            for key, entry in document["models"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FamilyError(f"starter index is malformed: {err}", reason="starter_index") from err
    if version != INDEX_FORMAT:
        raise FamilyError(
            f"starter index format {version!r} is not supported", reason="starter_index"
        )
    for entry in entries.values():
        # Plain names only: the index may not point outside the starter folder.
        if Path(entry.file).name != entry.file or Path(entry.card).name != entry.card:
            raise FamilyError(
                f"starter file names must be plain, got {entry.file!r}, {entry.card!r}",
                reason="starter_index",
            )
    return entries


def starter_index(directory: Path | None = None) -> dict[str, StarterEntry]:
    """Every context key with a starter, from the shipped folder unless `directory` is given."""
    return parse_index(_read(INDEX_FILE, directory))


def load_starter(context_key: str, directory: Path | None = None) -> StarterModel:
    """The starter of `context_key`, checked against the index (hash and architecture)."""
    entry = starter_index(directory).get(context_key)
    if entry is None:
        raise FamilyError(f"no starter model for {context_key!r}", reason="no_starter")
    data = _read(entry.file, directory)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise FamilyError(f"starter file {entry.file} is corrupt", reason="starter_corrupt")
    spec, schema, weights = from_onnx(load_model(data))
    task = context_key.partition("/")[0]
    if spec.task != task:
        raise FamilyError(f"starter {entry.file} serves {spec.task}, not {task}")
    if arch_hash(spec, schema) != entry.arch_hash:
        raise FamilyError(f"starter {entry.file} has another architecture than its index entry")
    return StarterModel(context_key, spec, schema, weights, entry.arch_hash, data)
