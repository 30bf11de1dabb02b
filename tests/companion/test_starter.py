"""The shipped starter models: complete, loadable, documented, and what the recipe produces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlmule_core.errors import FamilyError
from mlmule_core.families import DEFAULT_MODEL_SIZE, MODEL_SIZES, ModelSize, forward, model_size_of
from mlmule_core.onnx import create_session
from mlmule_core.starter import load_starter, model_sizes, parse_index, starter_index
from mlmule_models import starter as starter_tool
from mlmule_models.recipes import HELD_OUT_WORLD, TRAIN_WORLD, starters
from mlmule_world import World

SHIPPED = starter_tool.STARTER_DIR


@pytest.mark.parametrize("size", MODEL_SIZES)
def test_every_context_key_of_the_recipe_has_a_shipped_starter(size: ModelSize) -> None:
    expected = {
        key for starter in starters() if starter.model_size == size for key in starter.context_keys
    }
    assert set(starter_index(model_size=size)) == expected
    kinds = {"bedroom", "kitchen", "living_room", "office", "bathroom", "hallway"}
    assert {f"occupancy/{kind}" for kind in kinds | {"home"}} <= expected
    assert {f"activity/{kind}" for kind in kinds} <= expected
    assert {f"phone_activity/{kind}" for kind in kinds | {"home"}} <= expected
    assert all(model_sizes(key) == MODEL_SIZES for key in expected)


def test_the_folder_holds_only_what_the_index_lists() -> None:
    entries = [entry for size in MODEL_SIZES for entry in starter_index(model_size=size).values()]
    listed = {entry.file for entry in entries} | {entry.card for entry in entries}
    on_disk = {path.name for path in SHIPPED.iterdir() if path.suffix in {".onnx", ".md"}}
    assert on_disk == listed


def test_the_default_size_is_what_readers_of_models_alone_see() -> None:
    index = json.loads((SHIPPED / "index.json").read_text())
    assert set(index["models"]) == set(starter_index())
    assert starter_index() == starter_index(model_size=DEFAULT_MODEL_SIZE)


SIZED_KEYS = [(size, key) for size in MODEL_SIZES for key in sorted(starter_index(model_size=size))]


@pytest.mark.parametrize(("size", "key"), SIZED_KEYS)
def test_starter_loads_runs_and_has_a_card(size: ModelSize, key: str) -> None:
    model = load_starter(key, model_size=size)
    assert model.spec.task == key.split("/", maxsplit=1)[0]
    assert model_size_of(model.spec) == size
    rng = np.random.default_rng(0)
    mean, std = model.weights["input.mean"], model.weights["input.std"]
    x = (mean + std * rng.normal(size=(64, model.spec.n_inputs))).astype(np.float32)
    expected = forward(model.spec, model.weights, x)
    for backend in ("numpy", "onnxruntime"):
        got = create_session(model.onnx_bytes, backend=backend).run({"features": x})
        np.testing.assert_allclose(got["probability"], expected, atol=1e-5)
    entry = starter_index(model_size=size)[key]
    card = (SHIPPED / entry.card).read_text()
    index = json.loads((SHIPPED / "index.json").read_text())
    models = index["models"] if size == DEFAULT_MODEL_SIZE else index["model_sizes"][size]
    held_out = models[key]["held_out"]
    # The card states the held-out figures the index records, and the limits.
    assert f"{held_out['pooled']:.3f} pooled" in card
    assert "## Limits" in card
    assert f"`{key}`" in card
    assert model.arch_hash in card


def test_starters_beat_chance_on_held_out_homes() -> None:
    index = json.loads((SHIPPED / "index.json").read_text())
    sized = [index["models"], *index["model_sizes"].values()]
    for key, entry in ((key, entry) for models in sized for key, entry in models.items()):
        held = entry["held_out"]
        floor = 0.8 if key.startswith("occupancy/") else 0.5
        assert held["pooled"] > floor, key
        assert held["spaces"] >= 2, key


# A representative subset: one binary and one multi-class starter, and the temporal family,
# rebuilt from scratch.
REBUILT = ("occupancy-kitchen", "activity-bathroom", "activity-bathroom-large")


@pytest.fixture(scope="module")
def held_out_world() -> World:
    return HELD_OUT_WORLD.build()


@pytest.fixture(scope="module")
def rebuilt(held_out_world: World) -> list[starter_tool.StarterBuild]:
    train_world = TRAIN_WORLD.build()
    chosen = [starter for starter in starters() if starter.name in REBUILT]
    return [starter_tool.build(starter, train_world, held_out_world) for starter in chosen]


def test_shipped_files_match_what_the_recipe_produces(
    rebuilt: list[starter_tool.StarterBuild], held_out_world: World
) -> None:
    document = json.loads((SHIPPED / "index.json").read_text())
    index, sized = document["models"], document["model_sizes"]
    for built in rebuilt:
        shipped = (SHIPPED / f"{built.starter.name}.onnx").read_bytes()
        assert starter_tool.differences(built, shipped, held_out_world) == []
        models = index if built.starter.model_size == DEFAULT_MODEL_SIZE else sized["large"]
        recorded = models[built.starter.context_keys[0]]["held_out"]
        assert built.held_out.pooled == pytest.approx(recorded["pooled"], abs=2e-3)
        assert built.held_out.samples == recorded["samples"]


def test_check_detects_a_different_model(
    rebuilt: list[starter_tool.StarterBuild], held_out_world: World
) -> None:
    occupancy = rebuilt[0]
    other = (SHIPPED / "activity-bathroom.onnx").read_bytes()
    assert starter_tool.differences(occupancy, other, held_out_world)
    bathroom = (SHIPPED / "occupancy-bathroom.onnx").read_bytes()
    assert starter_tool.differences(occupancy, bathroom, held_out_world)


def test_written_files_load_through_the_core_loader(
    rebuilt: list[starter_tool.StarterBuild], tmp_path: Path
) -> None:
    starter_tool.write(rebuilt, tmp_path)
    for size in MODEL_SIZES:
        keys = {
            key
            for built in rebuilt
            if built.starter.model_size == size
            for key in built.starter.context_keys
        }
        assert set(starter_index(tmp_path, model_size=size)) == keys
    for built in rebuilt:
        model = load_starter(
            built.starter.context_keys[0], tmp_path, model_size=built.starter.model_size
        )
        assert model.spec == built.spec
        assert all(np.array_equal(model.weights[k], built.weights[k]) for k in built.weights)
    card = (tmp_path / "occupancy-kitchen.md").read_text()
    assert f"seed {TRAIN_WORLD.seed}" in card
    assert f"seed {HELD_OUT_WORLD.seed}" in card


def test_loader_refuses_damaged_folders(tmp_path: Path) -> None:
    folder = tmp_path / "starter"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    target = starter_index(folder)["occupancy/kitchen"]
    data = bytearray((folder / target.file).read_bytes())
    data[-1] ^= 0xFF
    (folder / target.file).write_bytes(bytes(data))
    with pytest.raises(FamilyError) as caught:
        load_starter("occupancy/kitchen", folder)
    assert caught.value.reason == "starter_corrupt"

    with pytest.raises(FamilyError) as caught:
        load_starter("occupancy/garage", folder)
    assert caught.value.reason == "no_starter"
    with pytest.raises(FamilyError) as caught:
        load_starter("occupancy/kitchen", folder, model_size="huge")  # type: ignore[arg-type]
    assert caught.value.reason == "unknown_model_size"

    # A compact model listed as the large one is refused: it is not that size's family.
    index = json.loads((folder / "index.json").read_text())
    index["model_sizes"]["large"]["activity/kitchen"] = index["models"]["activity/kitchen"]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(FamilyError, match="not a large model"):
        load_starter("activity/kitchen", folder, model_size="large")

    index = json.loads((folder / "index.json").read_text())
    swapped = index["models"]["occupancy/bedroom"] | {"arch_hash": "0" * 64}
    index["models"]["occupancy/bedroom"] = swapped
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(FamilyError):
        load_starter("occupancy/bedroom", folder)

    (folder / target.file).unlink()
    (folder / "index.json").write_text(
        json.dumps(index | {"models": {"occupancy/kitchen": index["models"]["occupancy/kitchen"]}})
    )
    with pytest.raises(FamilyError) as caught:
        load_starter("occupancy/kitchen", folder)
    assert caught.value.reason == "starter_missing"


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        json.dumps({"format": 2, "models": {}}),
        json.dumps({"format": 1}),
        json.dumps({"format": 1, "models": {"a/b": {"file": "x.onnx"}}}),
        json.dumps(
            {
                "format": 1,
                "models": {
                    "a/b": {"file": "../x.onnx", "card": "x.md", "sha256": "", "arch_hash": ""}
                },
            }
        ),
    ],
    ids=["truncated", "array", "future format", "no models", "missing fields", "path escape"],
)
def test_malformed_index_is_refused(text: str) -> None:
    with pytest.raises(FamilyError) as caught:
        parse_index(text)
    assert caught.value.reason == "starter_index"
