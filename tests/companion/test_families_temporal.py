"""The temporal family (`activity-tcn`) and the model sizes: spec, canonical graph, parity with
onnxruntime and torch, gradients, both trainers, merging only within an architecture, and clean
refusals where it is not supported."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlmule_core import families
from mlmule_core.errors import FamilyError, IncompatibleSnapshot, NonCanonicalModel
from mlmule_core.families import (
    ACTIVITY_TCN,
    DEFAULT_MODEL_SIZE,
    FAMILY_PRESETS,
    META_SPEC,
    MODEL_SIZES,
    TCN_GRAPH_FORMAT,
    FamilySpec,
    TemporalConv,
    arch_hash,
    build_onnx,
    forward,
    from_onnx,
    init_weights,
    model_size_of,
    parameter_shapes,
    preset_spec,
    shared_names,
    trainable_names,
)
from mlmule_core.features import ACTIVITIES, FeatureSchema, phone_schema, room_schema
from mlmule_core.identity import Identity, PeerKind
from mlmule_core.onnx import NumpyExecutor, OnnxModel, create_session, load_model, save_model
from mlmule_core.snapshot import SnapshotMeta, pack, unpack
from mlmule_core.strategies import AggregationContext, FedAvg, ModelState, Reason
from mlmule_core.train_numpy import DPConfig, TrainConfig, loss_and_gradients, train
from mlmule_models import train as torch_train
from mlmule_models.export import torch_export
from mlmule_models.families import FamilyModule
from mlmule_models.train import weighted_loss

NOW = 1_790_000_000.0
OCCUPANCY_LABELS = ("vacant", "occupied")


def room(window: tuple[int, ...] = (0, 5, 15, 30), seed: int = 0) -> FeatureSchema:
    rng = np.random.default_rng(seed)
    base = room_schema(window=window)
    return base.with_normalisation(
        rng.normal(3.0, 2.0, size=(40, len(base.features))).astype(np.float32)
    )


ROOM = room()
PHONE = phone_schema(window=(0, 1, 2, 5, 10))
LABELS = ACTIVITIES
TCN = preset_spec("large", "activity", ROOM, LABELS)
MLP = preset_spec("compact", "activity", ROOM, LABELS)
# Edge cases of the convolution: the kernel spans every lag (one position), or one lag.
WHOLE_WINDOW = FamilySpec(
    ACTIVITY_TCN,
    "phone_activity",
    PHONE.n_inputs,
    (),
    3,
    ("a", "b", "c"),
    conv=TemporalConv(5, 4, 5),
)
POINTWISE = FamilySpec(
    ACTIVITY_TCN,
    "activity",
    ROOM.n_inputs,
    (8, 6),
    4,
    ("a", "b", "c", "d"),
    conv=TemporalConv(4, 3, 1),
)
SPECS = [TCN, WHOLE_WINDOW, POINTWISE]
SCHEMAS = {id(TCN): ROOM, id(WHOLE_WINDOW): PHONE, id(POINTWISE): ROOM}


def schema_of(spec: FamilySpec) -> FeatureSchema:
    return SCHEMAS[id(spec)]


def trained_looking(
    spec: FamilySpec, schema: FeatureSchema, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = init_weights(spec, rng, schema)
    for name in weights:
        if name.endswith(".bias"):
            weights[name] = rng.normal(scale=0.2, size=weights[name].shape).astype(np.float32)
    return weights


def inputs(schema: FeatureSchema, n: int = 40, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = np.tile(np.asarray(schema.mean, np.float32), len(schema.window))
    std = np.tile(np.asarray(schema.std, np.float32), len(schema.window))
    return (mean + std * rng.normal(size=(n, schema.n_inputs))).astype(np.float32)


# --- the spec ---------------------------------------------------------------------------------


def test_spec_json_round_trip_and_mlp_json_is_unchanged() -> None:
    assert FamilySpec.from_json(TCN.to_json()) == TCN
    assert json.loads(TCN.to_json())["conv"] == [4, 64, 2]
    # An MLP spec has no "conv" key: its JSON, and so every shipped model's, is what it was.
    assert "conv" not in json.loads(MLP.to_json())


@pytest.mark.parametrize(
    "changes",
    [
        {"conv": None},  # a temporal family needs its convolution
        {"family": "activity-mlp"},  # an MLP takes none
        {"task": "occupancy", "n_classes": 1, "labels": OCCUPANCY_LABELS},  # not its task
        {"n_inputs": ROOM.n_inputs + 1},  # not a whole number of lags
    ],
    ids=["no conv", "mlp with conv", "wrong task", "ragged lags"],
)
def test_invalid_temporal_specs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(FamilyError):
        dataclasses.replace(TCN, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "conv", [(4, 8, 5), (4, 8, 0), (0, 8, 1), (4, 0, 2), (4, 2000, 2), (4, 8, True)]
)
def test_invalid_convolutions_are_refused(conv: tuple[int, int, int]) -> None:
    with pytest.raises(FamilyError):
        TemporalConv(*conv)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(json.loads(TCN.to_json()) | {"conv": None}),
        json.dumps(json.loads(TCN.to_json()) | {"conv": [4, 64]}),
        json.dumps(json.loads(TCN.to_json()) | {"conv": {"lags": 4}}),
        json.dumps(json.loads(MLP.to_json()) | {"conv": None}),
    ],
    ids=["null", "short", "object", "mlp null"],
)
def test_malformed_conv_json_is_refused(text: str) -> None:
    with pytest.raises(FamilyError):
        FamilySpec.from_json(text)


def test_layout_is_the_torch_state_dict_and_conv_is_trained_and_shared() -> None:
    for spec in SPECS:
        module = FamilyModule(spec)
        assert list(module.state_dict()) == list(parameter_shapes(spec))
        assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == parameter_shapes(spec)
        assert trainable_names(spec)[:2] == ("conv.weight", "conv.bias")
    assert {"conv.weight", "conv.bias", "head.weight"} <= shared_names(TCN)
    personal = dataclasses.replace(TCN, personal_head=True)
    assert "conv.weight" in shared_names(personal)
    assert "head.weight" not in shared_names(personal)


# --- architecture -----------------------------------------------------------------------------


def test_arch_hash_separates_families_sizes_and_convolutions() -> None:
    hashes = {
        arch_hash(MLP, ROOM),
        arch_hash(TCN, ROOM),
        arch_hash(dataclasses.replace(TCN, conv=TemporalConv(4, 64, 3)), ROOM),
        arch_hash(dataclasses.replace(TCN, conv=TemporalConv(4, 32, 2)), ROOM),
        arch_hash(preset_spec("large", "occupancy", ROOM, OCCUPANCY_LABELS), ROOM),
        arch_hash(preset_spec("compact", "occupancy", ROOM, OCCUPANCY_LABELS), ROOM),
    }
    assert len(hashes) == 6
    assert families.graph_format(TCN) == TCN_GRAPH_FORMAT != families.graph_format(MLP)


def test_conv_lags_must_be_the_schema_window() -> None:
    # Same number of inputs (34 features x 4 lags), but the conv would see 2 lags of 68.
    wrong = dataclasses.replace(TCN, conv=TemporalConv(2, 64, 2))
    with pytest.raises(FamilyError) as caught:
        arch_hash(wrong, ROOM)
    assert caught.value.reason == "schema_mismatch"


# --- one function everywhere: numpy, the numpy executor, onnxruntime, torch --------------------


@pytest.mark.parametrize("spec", SPECS, ids=["large", "whole-window", "pointwise"])
def test_numpy_executor_onnxruntime_and_torch_agree(spec: FamilySpec) -> None:
    schema = schema_of(spec)
    weights = trained_looking(spec, schema)
    data = save_model(build_onnx(spec, weights, schema))
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    for batch in (1, 257):
        x = inputs(schema, batch)
        expected = forward(spec, weights, x)
        assert np.allclose(expected.sum(axis=1), 1.0, atol=1e-5)
        ours = NumpyExecutor(load_model(data)).run({"features": x})["probability"]
        theirs = ort.InferenceSession(data).run(None, {"features": x})[0]
        with torch.no_grad():
            module = FamilyModule.from_weights(spec, weights)
            torch_out = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-6)
        np.testing.assert_allclose(theirs, expected, atol=1e-6)
        np.testing.assert_allclose(torch_out, expected, atol=1e-6)


def test_torch_export_of_the_temporal_family_runs_in_the_numpy_executor() -> None:
    weights = trained_looking(TCN, ROOM)
    module = FamilyModule.from_weights(TCN, weights)
    data = torch_export(module)
    x = inputs(ROOM, 33)
    expected = forward(TCN, weights, x)
    for backend in ("numpy", "onnxruntime"):
        got = create_session(data, backend=backend).run({"features": x})["probability"]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # torch's graph is not the canonical one, so it cannot pass as a snapshot model.
    with pytest.raises(NonCanonicalModel):
        from_onnx(load_model(data))


# --- the canonical graph is strict ------------------------------------------------------------


def canonical() -> OnnxModel:
    return build_onnx(TCN, trained_looking(TCN, ROOM), ROOM)


def replace_node(model: OnnxModel, kind: str, **changes: object) -> OnnxModel:
    index = next(i for i, node in enumerate(model.nodes) if node.op_type == kind)
    nodes = list(model.nodes)
    nodes[index] = dataclasses.replace(nodes[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(model, nodes=tuple(nodes))


def tampered() -> dict[str, OnnxModel]:
    model = canonical()
    metadata = dict(model.metadata)
    as_mlp = json.loads(metadata[META_SPEC])
    del as_mlp["conv"]
    as_mlp["family"] = "activity-mlp"
    shape = np.array([-1, 4, 34], np.int64)
    return {
        "wider kernel attribute": replace_node(model, "Conv", attributes={"kernel_shape": [3]}),
        "padded conv": replace_node(
            model, "Conv", attributes={"kernel_shape": [2], "pads": [1, 1]}
        ),
        "strided conv": replace_node(
            model, "Conv", attributes={"kernel_shape": [2], "strides": [2]}
        ),
        "lags not transposed": replace_node(model, "Transpose", attributes={"perm": [0, 1, 2]}),
        "other reshape": replace_node(
            model, "Constant", attributes={"value": np.array([-1, 2, 68], np.int64)}
        ),
        # The same bytes as the canonical shape, read as six int32 values.
        "same bytes other type": replace_node(
            model, "Constant", attributes={"value": shape.view(np.int32)}
        ),
        "pooled not flattened": replace_node(
            model, "Flatten", op_type="GlobalAveragePool", attributes={}
        ),
        "spec says mlp": dataclasses.replace(
            model, metadata=metadata | {META_SPEC: json.dumps(as_mlp)}
        ),
        "conv weight transposed": dataclasses.replace(
            model,
            initializers=dict(model.initializers)
            | {"conv.weight": np.zeros((64, 2, 34), np.float32)},
        ),
    }


TAMPERED = tampered()


@pytest.mark.parametrize("name", TAMPERED)
def test_non_canonical_temporal_models_are_refused(name: str) -> None:
    with pytest.raises(NonCanonicalModel) as caught:
        from_onnx(TAMPERED[name])
    assert caught.value.reason == "non_canonical"


def test_the_unmodified_temporal_model_reads_back() -> None:
    weights = trained_looking(TCN, ROOM)
    spec, schema, got = from_onnx(load_model(save_model(build_onnx(TCN, weights, ROOM))))
    assert (spec, schema) == (TCN, ROOM)
    assert all(np.array_equal(got[name], weights[name]) for name in weights)


def test_an_older_reader_refuses_the_temporal_family_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader from before the family (it knows only the MLPs) refuses the model as
    non-canonical: an unknown family, never a crash or a misread."""
    data = save_model(build_onnx(TCN, trained_looking(TCN, ROOM), ROOM))
    older = {k: v for k, v in families.TASKS_OF_FAMILY.items() if k != ACTIVITY_TCN}
    monkeypatch.setattr(families, "TASKS_OF_FAMILY", older)
    families._declared.cache_clear()  # this process has read the family while it knew it
    with pytest.raises(NonCanonicalModel, match="unknown model family"):
        from_onnx(load_model(data))


# --- training ---------------------------------------------------------------------------------


def random_problem(
    spec: FamilySpec, seed: int, batch: int = 29
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = trained_looking(spec, schema_of(spec), seed)
    x = inputs(schema_of(spec), batch, seed + 1)
    y = rng.integers(0, spec.n_classes, size=batch).astype(np.int64)
    sample_weight = rng.uniform(0.2, 3.0, size=batch).astype(np.float32)
    return weights, x, y, sample_weight


@pytest.mark.parametrize("spec", SPECS, ids=["large", "whole-window", "pointwise"])
@pytest.mark.parametrize("prox_mu", [0.0, 0.3])
def test_gradients_match_torch_autograd(spec: FamilySpec, prox_mu: float) -> None:
    weights, x, y, sample_weight = random_problem(spec, 3)
    reference = {name: value * np.float32(0.9) for name, value in weights.items()}
    loss, grads = loss_and_gradients(
        spec, weights, x, y, sample_weight, prox_mu=prox_mu, reference=reference
    )
    module = FamilyModule.from_weights(spec, weights)
    torch_loss = weighted_loss(
        spec,
        module.raw_logits(torch.from_numpy(x)),
        torch.from_numpy(y),
        torch.from_numpy(sample_weight),
    )
    objective = torch_loss + prox_mu * torch_train.proximal_term(
        module, {name: torch.from_numpy(reference[name]) for name in trainable_names(spec)}
    )
    objective.backward()  # type: ignore[no-untyped-call]
    assert loss == pytest.approx(float(torch_loss.detach()), rel=1e-5)
    assert list(grads) == list(trainable_names(spec))
    parameters = dict(module.named_parameters())
    for name, grad in grads.items():
        expected = parameters[name].grad
        assert expected is not None
        np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-4, atol=2e-6, err_msg=name)
    assert float(np.abs(grads["conv.weight"]).max()) > 1e-3


def test_conv_gradient_matches_finite_differences() -> None:
    """Independent of torch: analytic gradients of the convolution against central differences."""
    spec = POINTWISE
    weights, x, y, sample_weight = random_problem(spec, 5)
    _, grads = loss_and_gradients(spec, weights, x, y, sample_weight)
    step = 1e-2
    checked = 0
    for name, index in [
        ("conv.weight", (1, 7, 0)),
        ("conv.weight", (2, 30, 0)),
        ("conv.bias", (0,)),
        ("body.0.weight", (3, 5)),
    ]:
        plus = {k: v.astype(np.float64) for k, v in weights.items()}
        minus = {k: v.astype(np.float64) for k, v in weights.items()}
        plus[name][index] += step
        minus[name][index] -= step
        numeric = (
            loss_and_gradients(spec, _as32(plus), x, y, sample_weight)[0]
            - loss_and_gradients(spec, _as32(minus), x, y, sample_weight)[0]
        ) / (2 * step)
        assert grads[name][index] == pytest.approx(numeric, rel=3e-2, abs=2e-4), name
        checked += abs(numeric) > 1e-3
    assert checked >= 2  # not only zeros compared


def _as32(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value.astype(np.float32) for name, value in weights.items()}


def temporal_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels that depend on how a feature changes across the lags, which the conv can see."""
    x = inputs(ROOM, n, seed)
    features = len(ROOM.features)
    trend = x[:, 0] - x[:, 2 * features]  # feature 0 now minus 15 minutes ago
    y = np.digitize(trend, np.quantile(trend, [0.25, 0.5, 0.75])).astype(np.int64)
    return x, y


def test_numpy_and_torch_trainers_follow_the_same_run() -> None:
    spec = preset_spec("large", "activity", ROOM, ("a", "b", "c", "d"))
    x, y = temporal_dataset(600, seed=2)
    start = init_weights(spec, np.random.default_rng(0), ROOM)
    config = TrainConfig(max_epochs=5, batch_size=32, learning_rate=0.01, weight_decay=1e-3)
    numpy_weights, numpy_report = train(spec, start, x, y, config)
    torch_weights, torch_report = torch_train.train(spec, start, x, y, config)
    for field in ("epochs", "steps", "best_epoch", "stop_reason"):
        assert getattr(numpy_report, field) == getattr(torch_report, field), field
    assert numpy_report.train_loss == pytest.approx(torch_report.train_loss, rel=1e-4)
    for name in numpy_weights:
        np.testing.assert_allclose(
            numpy_weights[name], torch_weights[name], rtol=1e-4, atol=1e-5, err_msg=name
        )
    assert numpy_report.val_macro_f1 is not None
    assert numpy_report.val_macro_f1 > 0.45  # learnt the trend (chance is 0.25)


# --- merging: parameter by parameter, only within one architecture ----------------------------


def state(weights: dict[str, np.ndarray], origin: str) -> ModelState:
    return ModelState(weights, NOW, NOW, samples=100, version=1, origin=origin, trained_at=NOW)


def test_merges_within_the_family_and_refuses_another_architecture() -> None:
    local = trained_looking(TCN, ROOM, seed=1)
    peer = trained_looking(TCN, ROOM, seed=2)
    mlp = init_weights(MLP, np.random.default_rng(3), ROOM)
    context = AggregationContext(shared=shared_names(TCN))
    result = FedAvg().aggregate(
        state(local, "me"), [state(peer, "peer"), state(mlp, "other")], now=NOW, context=context
    )
    assert result.decisions[0].accepted
    assert not result.decisions[1].accepted
    assert result.decisions[1].reason == Reason.INCOMPATIBLE
    share = result.decisions[0].weight
    expected = (1 - share) * local["conv.weight"] + share * peer["conv.weight"]
    np.testing.assert_allclose(result.weights["conv.weight"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.weights["input.mean"], local["input.mean"])


def test_a_snapshot_of_another_size_is_refused_for_the_key() -> None:
    identity = Identity.generate(kind=PeerKind.SPACE, name="kitchen")
    weights = trained_looking(TCN, ROOM)
    meta = SnapshotMeta(
        task="activity",
        context_key="activity/kitchen",
        arch_hash=arch_hash(TCN, ROOM),
        schema_hash=ROOM.schema_hash(),
        created_at=NOW,
        data_time=NOW,
        samples=10,
        version=1,
        trained_at=NOW,
    )
    container = pack(save_model(build_onnx(TCN, weights, ROOM)), meta, identity)
    accepted = unpack(
        container, trust=identity, expected_arch={"activity/kitchen": meta.arch_hash}, now=NOW
    )
    assert accepted.canonical is not None
    assert accepted.canonical[0] == TCN
    with pytest.raises(IncompatibleSnapshot):
        unpack(
            container,
            trust=identity,
            expected_arch={"activity/kitchen": arch_hash(MLP, ROOM)},
            now=NOW,
        )


# --- model sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", MODEL_SIZES)
@pytest.mark.parametrize(
    ("task", "schema", "labels"),
    [
        ("occupancy", ROOM, OCCUPANCY_LABELS),
        ("activity", ROOM, ACTIVITIES),
        ("phone_activity", PHONE, ACTIVITIES),
    ],
    ids=["occupancy", "activity", "phone_activity"],
)
def test_every_size_has_a_family_for_every_task(
    size: str, task: str, schema: FeatureSchema, labels: tuple[str, ...]
) -> None:
    spec = preset_spec(size, task, schema, labels)
    assert spec.task == task
    assert model_size_of(spec) == size
    assert FAMILY_PRESETS[model_size_of(spec) or "compact"][task].describes(spec)
    weights = init_weights(spec, np.random.default_rng(0), schema)
    assert forward(spec, weights, inputs(schema, 3)).shape == (3, spec.n_classes)


def test_large_is_larger_and_compact_is_the_default() -> None:
    assert DEFAULT_MODEL_SIZE == "compact"
    for task, schema, labels in [
        ("occupancy", ROOM, OCCUPANCY_LABELS),
        ("activity", ROOM, ACTIVITIES),
        ("phone_activity", PHONE, ACTIVITIES),
    ]:
        count = {
            size: sum(
                int(np.prod(shape))
                for name, shape in parameter_shapes(preset_spec(size, task, schema, labels)).items()
                if name in trainable_names(preset_spec(size, task, schema, labels))
            )
            for size in MODEL_SIZES
        }
        assert count["large"] > 1.5 * count["compact"], task
    assert preset_spec("large", "activity", ROOM, ACTIVITIES).family == ACTIVITY_TCN


def test_unknown_sizes_and_custom_specs() -> None:
    with pytest.raises(FamilyError) as caught:
        preset_spec("huge", "activity", ROOM, ACTIVITIES)
    assert caught.value.reason == "unknown_model_size"
    with pytest.raises(FamilyError):
        preset_spec("large", "garage_door", ROOM, ACTIVITIES)
    assert model_size_of(dataclasses.replace(MLP, hidden=(7,))) is None
    assert model_size_of(dataclasses.replace(TCN, conv=TemporalConv(4, 64, 3))) is None


def test_dp_sgd_trains_the_temporal_family() -> None:
    """Opacus's per-sample gradients cover the convolution too (the phone's DP training)."""
    spec = preset_spec("large", "activity", ROOM, ("a", "b", "c", "d"))
    x, y = temporal_dataset(300, seed=4)
    start = init_weights(spec, np.random.default_rng(1), ROOM)
    config = TrainConfig(max_epochs=2, batch_size=32, dp=DPConfig(noise_multiplier=1.0))
    weights, report = torch_train.train(spec, start, x, y, config)
    assert report.epsilon is not None
    assert report.epsilon > 0
    assert not np.array_equal(weights["conv.weight"], start["conv.weight"])
