"""Starter models: pre-trained canonical ONNX files, so a new space predicts from minute one.

The files, a model card each and `index.json` live in this folder (HACS installs only
`custom_components/mlmule/`). `python -m mlmule_models.starter` regenerates all of them; the
index maps every supported context key to its file, the file's SHA-256 and its architecture
hash, which is the architecture every snapshot for that key must have.

Each model size (`families.FAMILY_PRESETS`) has its own starters: the default size's under
`models`, the others' under `model_sizes[<size>]`, so a reader that knows only `models` sees
exactly the default size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FamilyError
from ..families import (
    DEFAULT_MODEL_SIZE,
    MODEL_SIZES,
    FamilySpec,
    ModelSize,
    arch_hash,
    family_preset,
    from_onnx,
)
from ..families import model_size as checked_size
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


def parse_index(
    text: str | bytes, *, model_size: ModelSize = DEFAULT_MODEL_SIZE
) -> dict[str, StarterEntry]:
    """The context keys of an index document with a starter of `model_size`; `FamilyError`
    when it is malformed."""
    model_size = checked_size(model_size)
    try:
        document: Any = json.loads(text)
        version = document["format"]
        models = (
            document["models"]
            if model_size == DEFAULT_MODEL_SIZE
            else document.get("model_sizes", {}).get(model_size, {})
        )
        entries = {
            key: StarterEntry(
                context_key=key,
                file=str(entry["file"]),
                card=str(entry["card"]),
                sha256=str(entry["sha256"]),
                arch_hash=str(entry["arch_hash"]),
            )
            for key, entry in models.items()
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


def starter_index(
    directory: Path | None = None, *, model_size: ModelSize = DEFAULT_MODEL_SIZE
) -> dict[str, StarterEntry]:
    """Every context key with a starter of `model_size`, from the shipped folder unless
    `directory` is given."""
    return parse_index(_read(INDEX_FILE, directory), model_size=model_size)


def model_sizes(context_key: str, directory: Path | None = None) -> tuple[ModelSize, ...]:
    """The model sizes with a starter for `context_key`, in `MODEL_SIZES` order."""
    text = _read(INDEX_FILE, directory)
    return tuple(size for size in MODEL_SIZES if context_key in parse_index(text, model_size=size))


def load_starter(
    context_key: str,
    directory: Path | None = None,
    *,
    model_size: ModelSize = DEFAULT_MODEL_SIZE,
) -> StarterModel:
    """The starter of `context_key` in `model_size`, checked against the index (hash,
    architecture, and that it is the size's family)."""
    entry = starter_index(directory, model_size=model_size).get(context_key)
    if entry is None:
        raise FamilyError(f"no {model_size} starter model for {context_key!r}", reason="no_starter")
    data = _read(entry.file, directory)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise FamilyError(f"starter file {entry.file} is corrupt", reason="starter_corrupt")
    spec, schema, weights = from_onnx(load_model(data))
    task = context_key.partition("/")[0]
    if spec.task != task:
        raise FamilyError(f"starter {entry.file} serves {spec.task}, not {task}")
    if arch_hash(spec, schema) != entry.arch_hash:
        raise FamilyError(f"starter {entry.file} has another architecture than its index entry")
    if not family_preset(model_size, task).describes(spec):
        raise FamilyError(f"starter {entry.file} is not a {model_size} model of {task}")
    return StarterModel(context_key, spec, schema, weights, entry.arch_hash, data)
