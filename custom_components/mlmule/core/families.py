"""Model families: a small spec becomes weights, a numpy forward pass and one canonical ONNX graph.

Every context key has exactly one architecture: a `FamilySpec` plus a `FeatureSchema`. The
canonical graph is what travels between spaces and mules, so it is fixed down to the node and
tensor names; `from_onnx` refuses anything else, which is what lets two snapshots be merged
parameter by parameter.

Canonical graph (opset 17), input `features` float `[batch, n_inputs]`: the *unnormalised*
windowed frames (`features.window_frames` of extracted frames, lag-major), because the model
normalises them itself, so any ONNX runtime can use it without our feature code:

    Sub(features, input.mean) -> Div(input.std)          frozen normalisation of the schema
    temporal families only (graph format "mlmule-tcn/1"), a 1-D convolution over the lags:
      Reshape([-1, lags, F]) -> Transpose([0, 2, 1])      the window as F channels x lags
      Conv(conv.weight [channels, F, kernel], conv.bias) -> Relu -> Flatten(axis=1)
    Gemm(transB=1, body.i.weight [out, in], body.i.bias) -> Relu      per hidden layer
    Gemm(transB=1, head.weight, head.bias) -> logits
    binary:      Mul(calib.scale) -> Add(calib.bias) -> Sigmoid -> probability [batch, 1]
    multi-class: Softmax(axis=1) -> probability [batch, n_classes]

`calib.*` is Platt scaling fitted on the space's own validation data, so it is never merged;
`input.*` is the feature schema's mean and std repeated per lag, and is never trained.

A space picks a *model size* (`FAMILY_PRESETS`): "compact", the small MLPs every space ran
first, or "large", a wide MLP for occupancy and the temporal `activity-tcn` for activity. Each
size is its own architecture (arch hash), so weights merge only within a size; knowledge
(predictions on a shared proxy set) travels between sizes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .errors import FamilyError, MlmuleError, NonCanonicalModel
from .features import FeatureSchema
from .onnx import Node, OnnxModel, ValueInfo
from .weights import FloatArray, Weights

OPSET = 17
IR_VERSION = 8
PRODUCER = "mlmule"
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
# Bump when a canonical graph changes: it is part of every architecture hash.
GRAPH_FORMAT = "mlmule-mlp/1"
TCN_GRAPH_FORMAT = "mlmule-tcn/1"

OCCUPANCY_MLP = "occupancy-mlp"
ACTIVITY_MLP = "activity-mlp"
ACTIVITY_TCN = "activity-tcn"
TASKS_OF_FAMILY: Mapping[str, frozenset[str]] = {
    OCCUPANCY_MLP: frozenset({"occupancy"}),
    ACTIVITY_MLP: frozenset({"activity", "phone_activity"}),
    ACTIVITY_TCN: frozenset({"activity", "phone_activity"}),
}
BINARY_FAMILIES = frozenset({OCCUPANCY_MLP})
TEMPORAL_FAMILIES = frozenset({ACTIVITY_TCN})  # a convolution over the window's lags

# Metadata keys the canonical export owns; callers' metadata may not reuse them.
META_SPEC = "mlmule.family_spec"
META_SCHEMA = "mlmule.feature_schema"
META_ARCH_HASH = "mlmule.arch_hash"
META_LABELS = "mlmule.class_labels"
RESERVED_METADATA = frozenset({META_SPEC, META_SCHEMA, META_ARCH_HASH, META_LABELS})

# Bounds that keep a spec read from an untrusted model from allocating without limit.
MAX_INPUTS = 4096
MAX_WIDTH = 1024
MAX_HIDDEN_LAYERS = 8
MAX_CLASSES = 64
MAX_LABEL_LENGTH = 64
MAX_SPEC_JSON = 16_384
MAX_CONV_FEATURES = 16_384  # channels x positions after the convolution (the first dense input)


@dataclass(frozen=True)
class TemporalConv:
    """The convolution of a temporal family: `kernel` consecutive lags of `n_inputs / lags`
    features each, into `channels` feature maps, valid padding, stride 1."""

    lags: int
    channels: int
    kernel: int

    def __post_init__(self) -> None:
        if not _is_int_in(self.lags, 1, MAX_INPUTS):
            raise FamilyError(f"conv lags must be an integer in 1..{MAX_INPUTS}")
        if not _is_int_in(self.channels, 1, MAX_WIDTH):
            raise FamilyError(f"conv channels must be an integer in 1..{MAX_WIDTH}")
        if not _is_int_in(self.kernel, 1, self.lags):
            raise FamilyError(f"conv kernel must be an integer in 1..{self.lags} (the lags)")
        if self.flat_width > MAX_CONV_FEATURES:
            raise FamilyError(f"conv output must have at most {MAX_CONV_FEATURES} values")

    @property
    def positions(self) -> int:
        """Output positions along the lags."""
        return self.lags - self.kernel + 1

    @property
    def flat_width(self) -> int:
        """Width of the flattened output, the first dense layer's input."""
        return self.channels * self.positions

    def as_list(self) -> list[int]:
        return [self.lags, self.channels, self.kernel]


@dataclass(frozen=True)
class FamilySpec:
    """The architecture of one model: what it predicts, from how many inputs, through which layers.

    `n_classes` is 1 for a binary task (one sigmoid output, `labels` = negative then positive
    class) and K >= 2 for a softmax over K classes (`labels` has K entries). With
    `personal_head` the last layer stays local to the space (FedPer / MetaPatch style): it is
    trained but not merged. That changes what is shared, not what is computed, so it is not part
    of the architecture hash.
    """

    family: str
    task: str
    n_inputs: int
    hidden: tuple[int, ...]
    n_classes: int
    labels: tuple[str, ...]
    personal_head: bool = False
    conv: TemporalConv | None = None  # exactly for the temporal families

    def __post_init__(self) -> None:
        tasks = TASKS_OF_FAMILY.get(self.family)
        if tasks is None:
            raise FamilyError(f"unknown model family {self.family!r}", reason="unknown_family")
        if self.task not in tasks:
            raise FamilyError(f"family {self.family} does not serve task {self.task!r}")
        if not _is_int_in(self.n_inputs, 1, MAX_INPUTS):
            raise FamilyError(f"n_inputs must be an integer in 1..{MAX_INPUTS}")
        if not isinstance(self.hidden, tuple) or len(self.hidden) > MAX_HIDDEN_LAYERS:
            raise FamilyError(f"hidden must be a tuple of at most {MAX_HIDDEN_LAYERS} widths")
        if not all(_is_int_in(width, 1, MAX_WIDTH) for width in self.hidden):
            raise FamilyError(f"hidden widths must be integers in 1..{MAX_WIDTH}")
        temporal = self.family in TEMPORAL_FAMILIES
        if not (isinstance(self.conv, TemporalConv) if temporal else self.conv is None):
            raise FamilyError(
                f"family {self.family} {'needs' if temporal else 'takes no'} a temporal conv"
            )
        if self.conv is not None and self.n_inputs % self.conv.lags:
            raise FamilyError(f"n_inputs {self.n_inputs} is not a multiple of the conv lags")
        binary = self.family in BINARY_FAMILIES
        if binary and self.n_classes != 1:
            raise FamilyError(f"{self.family} is binary: n_classes must be 1")
        if not binary and not _is_int_in(self.n_classes, 2, MAX_CLASSES):
            raise FamilyError(f"{self.family} needs n_classes in 2..{MAX_CLASSES}")
        expected_labels = 2 if binary else self.n_classes
        if not isinstance(self.labels, tuple) or len(self.labels) != expected_labels:
            raise FamilyError(f"{self.family} needs {expected_labels} class labels")
        if len(set(self.labels)) != len(self.labels) or not all(
            isinstance(label, str) and 0 < len(label) <= MAX_LABEL_LENGTH for label in self.labels
        ):
            raise FamilyError(
                f"class labels must be distinct strings of 1..{MAX_LABEL_LENGTH} characters"
            )
        if not isinstance(self.personal_head, bool):
            raise FamilyError("personal_head must be a boolean")

    @property
    def binary(self) -> bool:
        return self.n_classes == 1

    def to_json(self) -> str:
        # "conv" only where there is one: MLP specs keep the JSON (and the hashes) they had.
        conv = {} if self.conv is None else {"conv": self.conv.as_list()}
        return json.dumps(
            {
                "family": self.family,
                "task": self.task,
                "n_inputs": self.n_inputs,
                "hidden": list(self.hidden),
                "n_classes": self.n_classes,
                "labels": list(self.labels),
                "personal_head": self.personal_head,
                **conv,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> FamilySpec:
        """Parse and validate; anything malformed raises `FamilyError`."""
        if len(text) > MAX_SPEC_JSON:
            raise FamilyError("family spec JSON is too long")
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise FamilyError(f"family spec is not JSON: {err}") from err
        fields = {"family", "task", "n_inputs", "hidden", "n_classes", "labels", "personal_head"}
        if not isinstance(raw, dict) or set(raw) - {"conv"} != fields:
            raise FamilyError(
                f"family spec must be an object with exactly the keys {sorted(fields)}"
                " (and conv for a temporal family)"
            )
        if not isinstance(raw["hidden"], list) or not isinstance(raw["labels"], list):
            raise FamilyError("hidden and labels must be lists")
        conv = raw.get("conv")
        if "conv" in raw and (not isinstance(conv, list) or len(conv) != 3):
            raise FamilyError("conv must be a list [lags, channels, kernel]")
        return cls(
            family=raw["family"],
            task=raw["task"],
            n_inputs=raw["n_inputs"],
            hidden=tuple(raw["hidden"]),
            n_classes=raw["n_classes"],
            labels=tuple(raw["labels"]),
            personal_head=raw["personal_head"],
            conv=None if conv is None else TemporalConv(*conv),
        )


def _is_int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# --- parameters ---------------------------------------------------------------------------


def parameter_shapes(spec: FamilySpec) -> dict[str, tuple[int, ...]]:
    """The canonical parameter layout, in order (the same as the torch module's state_dict)."""
    shapes: dict[str, tuple[int, ...]] = {
        "input.mean": (spec.n_inputs,),
        "input.std": (spec.n_inputs,),
    }
    fan_in = spec.n_inputs
    if spec.conv is not None:
        conv = spec.conv
        shapes["conv.weight"] = (conv.channels, spec.n_inputs // conv.lags, conv.kernel)
        shapes["conv.bias"] = (conv.channels,)
        fan_in = conv.flat_width
    for index, width in enumerate(spec.hidden):
        shapes[f"body.{index}.weight"] = (width, fan_in)
        shapes[f"body.{index}.bias"] = (width,)
        fan_in = width
    shapes["head.weight"] = (spec.n_classes, fan_in)
    shapes["head.bias"] = (spec.n_classes,)
    if spec.binary:
        shapes["calib.scale"] = (1,)
        shapes["calib.bias"] = (1,)
    return shapes


def trainable_names(spec: FamilySpec) -> tuple[str, ...]:
    """What gradient descent updates: the convolution (temporal families), the body, the head."""
    return tuple(
        name for name in parameter_shapes(spec) if name.startswith(("conv.", "body.", "head."))
    )


def shared_names(spec: FamilySpec) -> frozenset[str]:
    """What aggregation strategies merge: conv and body, plus the head unless it is personal.

    Never `input.*` (frozen by the feature schema) nor `calib.*` (each space's own calibration).
    """
    return frozenset(
        name
        for name in trainable_names(spec)
        if not (spec.personal_head and name.startswith("head."))
    )


def init_weights(
    spec: FamilySpec, rng: np.random.Generator, schema: FeatureSchema | None = None
) -> Weights:
    """Fresh weights: He-uniform for the ReLU layers, Glorot-uniform for the head, zero biases.

    The normalisation comes from `schema` (identity without one); calibration starts neutral.
    """
    weights: Weights = {}
    for name, shape in parameter_shapes(spec).items():
        if name.endswith(".weight"):
            fan_out, fan_in = shape[0], math.prod(shape[1:])  # a conv kernel: F x kernel
            # ReLU layers keep activation variance with 6/fan_in; the linear head with Glorot.
            limit = (
                math.sqrt(6.0 / fan_in)
                if name.startswith(("conv.", "body."))
                else math.sqrt(6.0 / (fan_in + fan_out))
            )
            weights[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
        elif name in {"input.std", "calib.scale"}:
            weights[name] = np.ones(shape, dtype=np.float32)
        else:
            weights[name] = np.zeros(shape, dtype=np.float32)
    if schema is not None:
        _check_schema_fits(spec, schema)
        weights["input.mean"], weights["input.std"] = input_normalisation(schema)
    return weights


def input_normalisation(schema: FeatureSchema) -> tuple[FloatArray, FloatArray]:
    """`input.mean` / `input.std` of a model on this schema: its statistics repeated per lag.

    The model normalises inside its graph, so it is fed *unnormalised* windowed frames
    (`features.window_frames` of the extracted frames), lag-major like those.
    """
    repeat = len(schema.window)
    mean = np.tile(np.asarray(schema.mean, dtype=np.float32), repeat)
    std = np.tile(np.asarray(schema.std, dtype=np.float32), repeat)
    return mean, std


def check_weights(spec: FamilySpec, weights: Mapping[str, FloatArray]) -> None:
    """Raise `FamilyError` unless `weights` is exactly the family's layout, finite and usable."""
    shapes = parameter_shapes(spec)
    if list(weights) != list(shapes):
        raise FamilyError(
            f"weights must hold exactly {list(shapes)} in that order, got {list(weights)}",
            reason="weights_layout",
        )
    for name, shape in shapes.items():
        value = weights[name]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.shape != shape:
            raise FamilyError(
                f"{name} must be a float32 array of shape {shape}", reason="weights_layout"
            )
        if not np.isfinite(value).all():
            raise FamilyError(f"{name} holds non-finite values", reason="weights_non_finite")
    if not (weights["input.std"] > 0).all():
        raise FamilyError("input.std must be positive", reason="weights_layout")


# --- forward pass --------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardPass:
    """One forward pass, keeping what backpropagation needs.

    `activations` are the dense stack's input (the normalised features, or the flattened
    convolution output) followed by each hidden layer's ReLU output. Temporal families also
    keep `patches` `[batch, positions, F * kernel]` (the convolution's input windows) and
    `feature_maps` `[batch, channels, positions]` (its ReLU output).
    """

    activations: tuple[FloatArray, ...]
    logits: FloatArray  # uncalibrated, [batch, n_classes]
    patches: FloatArray | None = None
    feature_maps: FloatArray | None = None


def forward_pass(
    spec: FamilySpec, weights: Mapping[str, FloatArray], x: npt.ArrayLike
) -> ForwardPass:
    """The uncalibrated logits of `x` and the intermediate values, as the canonical graph."""
    features = np.asarray(x, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != spec.n_inputs:
        raise FamilyError(
            f"expected features of shape [batch, {spec.n_inputs}], got {features.shape}",
            reason="bad_input_shape",
        )
    normalised = (features - weights["input.mean"]) / weights["input.std"]
    patches = feature_maps = None
    dense = normalised
    if spec.conv is not None:
        patches = _conv_patches(spec.conv, normalised)
        kernel = weights["conv.weight"]
        linear = patches @ kernel.reshape(kernel.shape[0], -1).T + weights["conv.bias"]
        feature_maps = np.maximum(linear, np.float32(0.0)).transpose(0, 2, 1)
        dense = feature_maps.reshape(features.shape[0], -1)  # channel-major, as ONNX Flatten
    activations = [dense]
    for index in range(len(spec.hidden)):
        linear = activations[-1] @ weights[f"body.{index}.weight"].T + weights[f"body.{index}.bias"]
        activations.append(np.maximum(linear, np.float32(0.0)))
    raw = activations[-1] @ weights["head.weight"].T + weights["head.bias"]
    return ForwardPass(
        tuple(activations), raw.astype(np.float32, copy=False), patches, feature_maps
    )


def _conv_patches(conv: TemporalConv, normalised: FloatArray) -> FloatArray:
    """`[batch, positions, F * kernel]`: per output position, the kernel's lags as
    (feature, lag) pairs, the order of a Conv weight `[channels, F, kernel]`."""
    batch = normalised.shape[0]
    channels_first = normalised.reshape(batch, conv.lags, -1).transpose(0, 2, 1)  # [B, F, lags]
    windows = np.lib.stride_tricks.sliding_window_view(channels_first, conv.kernel, axis=2)
    # [B, F, positions, kernel] -> [B, positions, F, kernel]
    patches: FloatArray = np.ascontiguousarray(windows.transpose(0, 2, 1, 3)).reshape(
        batch, conv.positions, -1
    )
    return patches


def gradients(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    passed: ForwardPass,
    d_logits: FloatArray,
) -> Weights:
    """Backpropagate `d_logits` (d objective / d uncalibrated logits, `[batch, n_classes]`)
    through `passed`; the gradients of the trainable parameters, in their canonical order."""
    activations = passed.activations
    grads: Weights = {
        "head.weight": d_logits.T @ activations[-1],
        "head.bias": d_logits.sum(axis=0),
    }
    upstream = d_logits @ weights["head.weight"]
    for index in reversed(range(len(spec.hidden))):
        d_linear: FloatArray = np.where(activations[index + 1] > 0, upstream, np.float32(0.0))
        grads[f"body.{index}.weight"] = d_linear.T @ activations[index]
        grads[f"body.{index}.bias"] = d_linear.sum(axis=0)
        upstream = d_linear @ weights[f"body.{index}.weight"]
    if spec.conv is not None:
        assert passed.patches is not None
        assert passed.feature_maps is not None
        maps = passed.feature_maps
        d_maps = np.where(maps > 0, upstream.reshape(maps.shape), np.float32(0.0))
        d_conv = d_maps.transpose(0, 2, 1).reshape(-1, maps.shape[1])  # [B * positions, C]
        patches = passed.patches.reshape(d_conv.shape[0], -1)
        grads["conv.weight"] = (d_conv.T @ patches).reshape(weights["conv.weight"].shape)
        grads["conv.bias"] = d_conv.sum(axis=0)
    return {name: grads[name].astype(np.float32, copy=False) for name in trainable_names(spec)}


def logits(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    x: npt.ArrayLike,
    *,
    calibrated: bool = True,
) -> FloatArray:
    """Pre-activation outputs `[batch, n_classes]`; binary ones Platt-scaled unless told not to.

    Training works on the uncalibrated logits; prediction uses the calibrated ones.
    """
    raw = forward_pass(spec, weights, x).logits
    if spec.binary and calibrated:
        raw = raw * weights["calib.scale"] + weights["calib.bias"]
    return raw.astype(np.float32, copy=False)


def forward(spec: FamilySpec, weights: Mapping[str, FloatArray], x: npt.ArrayLike) -> FloatArray:
    """Probabilities, exactly what the canonical ONNX graph outputs."""
    return probabilities_from_logits(spec, logits(spec, weights, x))


def probabilities_from_logits(spec: FamilySpec, raw: FloatArray) -> FloatArray:
    if spec.binary:
        return sigmoid(raw)
    shifted = raw - raw.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: FloatArray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


def sigmoid(raw: FloatArray) -> FloatArray:
    # exp of a non-positive number only: no overflow for large |logit|.
    exp = np.exp(-np.abs(raw))
    probabilities: FloatArray = np.where(raw >= 0, 1.0 / (1.0 + exp), exp / (1.0 + exp)).astype(
        np.float32
    )
    return probabilities


def predict_classes(spec: FamilySpec, probabilities: FloatArray) -> npt.NDArray[np.int64]:
    """Class indices: binary at probability 0.5 (0 = negative, 1 = positive), else the argmax."""
    classes: npt.NDArray[np.int64] = (
        (probabilities[:, 0] >= 0.5) if spec.binary else probabilities.argmax(axis=1)
    ).astype(np.int64)
    return classes


# --- architecture hash and the canonical ONNX graph ------------------------------------------


def _check_schema_fits(spec: FamilySpec, schema: FeatureSchema) -> None:
    if schema.n_inputs != spec.n_inputs:
        raise FamilyError(
            f"feature schema {schema.name!r} gives {schema.n_inputs} inputs, the family "
            f"expects {spec.n_inputs}",
            reason="schema_mismatch",
        )
    if spec.conv is not None and spec.conv.lags != len(schema.window):
        raise FamilyError(
            f"the conv runs over {spec.conv.lags} lags, schema {schema.name!r} has "
            f"{len(schema.window)}",
            reason="schema_mismatch",
        )


def graph_format(spec: FamilySpec) -> str:
    """The version of the canonical graph of the spec's family (part of its arch hash)."""
    return TCN_GRAPH_FORMAT if spec.conv is not None else GRAPH_FORMAT


def arch_hash(spec: FamilySpec, schema: FeatureSchema) -> str:
    """SHA-256 of the structure, the parameter shapes and the schema hash; never the values."""
    _check_schema_fits(spec, schema)
    return _structure_hash(spec, schema.schema_hash())


@functools.lru_cache(maxsize=64)
def _structure_hash(spec: FamilySpec, schema_hash: str) -> str:
    """`arch_hash` once per spec and schema: every model a host writes or reads needs it."""
    # Temporal families add their graph format and conv; MLP hashes stay what they were.
    conv = {} if spec.conv is None else {"conv": spec.conv.as_list()}
    structure = {
        "format": graph_format(spec),
        **conv,
        "opset": OPSET,
        "family": spec.family,
        "task": spec.task,
        "n_inputs": spec.n_inputs,
        "hidden": list(spec.hidden),
        "n_classes": spec.n_classes,
        "labels": list(spec.labels),
        "parameters": [[name, list(shape)] for name, shape in parameter_shapes(spec).items()],
        "schema": schema_hash,
    }
    canonical = json.dumps(structure, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _graph(spec: FamilySpec) -> tuple[list[Node], ValueInfo, ValueInfo]:
    nodes = [
        Node("Sub", (INPUT_NAME, "input.mean"), ("centred",), {}, name="input.sub"),
        Node("Div", ("centred", "input.std"), ("normalised",), {}, name="input.div"),
    ]
    previous = "normalised"
    if spec.conv is not None:
        nodes += _conv_nodes(spec.conv, spec.n_inputs // spec.conv.lags)
        previous = "conv.flat"
    for index in range(len(spec.hidden)):
        layer = f"body.{index}"
        nodes.append(
            Node(
                "Gemm",
                (previous, f"{layer}.weight", f"{layer}.bias"),
                (f"{layer}.linear",),
                {"transB": 1},
                name=f"{layer}.gemm",
            )
        )
        nodes.append(
            Node("Relu", (f"{layer}.linear",), (f"{layer}.relu",), {}, name=f"{layer}.relu")
        )
        previous = f"{layer}.relu"
    nodes.append(
        Node(
            "Gemm",
            (previous, "head.weight", "head.bias"),
            ("logits",),
            {"transB": 1},
            name="head.gemm",
        )
    )
    if spec.binary:
        nodes += [
            Node("Mul", ("logits", "calib.scale"), ("calib.scaled",), {}, name="calib.mul"),
            Node("Add", ("calib.scaled", "calib.bias"), ("calib.logit",), {}, name="calib.add"),
            Node("Sigmoid", ("calib.logit",), (OUTPUT_NAME,), {}, name="output.sigmoid"),
        ]
    else:
        nodes.append(
            Node("Softmax", ("logits",), (OUTPUT_NAME,), {"axis": 1}, name="output.softmax")
        )
    graph_input = ValueInfo(INPUT_NAME, shape=("batch", spec.n_inputs))
    graph_output = ValueInfo(OUTPUT_NAME, shape=("batch", spec.n_classes))
    return nodes, graph_input, graph_output


def _conv_nodes(conv: TemporalConv, n_features: int) -> list[Node]:
    sequence_shape = np.array([-1, conv.lags, n_features], dtype=np.int64)
    return [
        Node("Constant", (), ("conv.shape",), {"value": sequence_shape}, name="conv.shape"),
        Node("Reshape", ("normalised", "conv.shape"), ("conv.lags",), {}, name="conv.reshape"),
        Node("Transpose", ("conv.lags",), ("conv.input",), {"perm": [0, 2, 1]}, name="conv.t"),
        Node(
            "Conv",
            ("conv.input", "conv.weight", "conv.bias"),
            ("conv.linear",),
            {"kernel_shape": [conv.kernel]},
            name="conv.conv",
        ),
        Node("Relu", ("conv.linear",), ("conv.relu",), {}, name="conv.relu"),
        Node("Flatten", ("conv.relu",), ("conv.flat",), {"axis": 1}, name="conv.flatten"),
    ]


def build_onnx(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    schema: FeatureSchema,
    metadata: Mapping[str, str] | None = None,
) -> OnnxModel:
    """The canonical ONNX model of `spec` with `weights`; `metadata` is added to its own keys."""
    check_weights(spec, weights)
    digest = arch_hash(spec, schema)
    mean, std = input_normalisation(schema)
    if not (
        np.array_equal(weights["input.mean"], mean) and np.array_equal(weights["input.std"], std)
    ):
        raise FamilyError(
            "input.mean / input.std differ from the feature schema's normalisation",
            reason="schema_mismatch",
        )
    extra = dict(metadata or {})
    clash = RESERVED_METADATA & set(extra)
    if clash:
        raise FamilyError(f"metadata keys {sorted(clash)} are reserved", reason="metadata")
    nodes, graph_input, graph_output = _graph(spec)
    props = {
        META_SPEC: spec.to_json(),
        META_SCHEMA: schema.to_json(),
        META_ARCH_HASH: digest,
        META_LABELS: json.dumps(list(spec.labels)),
        **extra,
    }
    return OnnxModel(
        nodes=tuple(nodes),
        inputs=(graph_input,),
        outputs=(graph_output,),
        initializers={name: np.array(weights[name], dtype=np.float32) for name in weights},
        opset=OPSET,
        ir_version=IR_VERSION,
        metadata=props,
        graph_name=f"mlmule_{spec.family.replace('-', '_')}",
        producer_name=PRODUCER,
    )


def from_onnx(model: OnnxModel) -> tuple[FamilySpec, FeatureSchema, Weights]:
    """Read a canonical model back; raise `NonCanonicalModel` for anything else.

    The graph is rebuilt from the spec in the metadata and compared node by node, so a model
    that computes something other than its declared family is refused.
    """
    metadata = dict(model.metadata)
    missing = RESERVED_METADATA - set(metadata)
    if missing:
        raise NonCanonicalModel(f"model metadata lacks {sorted(missing)}")
    try:
        spec, schema, digest = _declared(metadata[META_SPEC], metadata[META_SCHEMA])
    except MlmuleError as err:
        raise NonCanonicalModel(f"model metadata is unusable: {err}") from err
    if metadata[META_ARCH_HASH] != digest:
        raise NonCanonicalModel("architecture hash does not match the declared spec and schema")
    if metadata[META_LABELS] != json.dumps(list(spec.labels)):
        raise NonCanonicalModel("class labels do not match the declared spec")
    shapes = parameter_shapes(spec)
    initializers = model.initializers
    if set(initializers) != set(shapes):
        raise NonCanonicalModel(
            f"initializers {sorted(initializers)} are not the family's {sorted(shapes)}"
        )
    weights: Weights = {}
    for name, shape in shapes.items():
        value = np.asarray(initializers[name])
        if value.dtype != np.float32 or value.shape != shape:
            raise NonCanonicalModel(f"initializer {name} is not float32 of shape {shape}")
        weights[name] = np.array(value, dtype=np.float32)
    try:
        expected = build_onnx(spec, weights, schema, _caller_metadata(metadata))
    except MlmuleError as err:
        raise NonCanonicalModel(f"model cannot be rebuilt canonically: {err}") from err
    if _structure(model) != _structure(expected):
        raise NonCanonicalModel("graph differs from the canonical graph of its declared family")
    return spec, schema, weights


@functools.lru_cache(maxsize=64)
def _declared(spec_json: str, schema_json: str) -> tuple[FamilySpec, FeatureSchema, str]:
    """The spec, schema and architecture hash a model's metadata declares. A host reads the
    same few texts in every snapshot it receives; both objects are immutable, so one parse
    serves them all (a text that fails raises every time: errors are not cached)."""
    spec = FamilySpec.from_json(spec_json)
    schema = FeatureSchema.from_json(schema_json)
    return spec, schema, arch_hash(spec, schema)


def _caller_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in metadata.items() if key not in RESERVED_METADATA}


def _structure(model: OnnxModel) -> Any:
    """Everything about a model but the parameter values and the free-form metadata."""
    return (
        model.opset,
        dict(model.extra_opsets),
        [
            (node.op_type, node.domain, tuple(node.inputs), tuple(node.outputs), _attrs(node))
            for node in model.nodes
        ],
        [(value.name, value.elem_type, tuple(value.shape)) for value in model.inputs],
        [(value.name, value.elem_type, tuple(value.shape)) for value in model.outputs],
    )


def _attrs(node: Node) -> tuple[tuple[str, str, Any], ...]:
    # Typed and array-free, so that comparing a hostile model's attributes cannot raise.
    return tuple(
        sorted(
            (key, type(value).__name__, _comparable(value))
            for key, value in node.attributes.items()
        )
    )


def _comparable(value: object) -> object:
    if isinstance(value, np.ndarray):  # the same bytes in another type or shape differ
        return (value.dtype.str, value.shape, value.tobytes())
    return value


# --- model sizes: the family a space runs ----------------------------------------------------

ModelSize = Literal["compact", "large"]
MODEL_SIZES: tuple[ModelSize, ...] = ("compact", "large")
DEFAULT_MODEL_SIZE: ModelSize = "compact"


@dataclass(frozen=True)
class FamilyPreset:
    """A family and its layer sizes for one task; the feature schema gives inputs and lags."""

    family: str
    hidden: tuple[int, ...]
    conv: tuple[int, int] | None = None  # temporal families: (channels, kernel)

    def spec(
        self,
        task: str,
        schema: FeatureSchema,
        labels: tuple[str, ...],
        *,
        personal_head: bool = False,
    ) -> FamilySpec:
        conv = None
        if self.conv is not None:
            lags = len(schema.window)
            conv = TemporalConv(lags, self.conv[0], self._kernel(lags))
        return FamilySpec(
            family=self.family,
            task=task,
            n_inputs=schema.n_inputs,
            hidden=self.hidden,
            n_classes=1 if self.family in BINARY_FAMILIES else len(labels),
            labels=tuple(labels),
            personal_head=personal_head,
            conv=conv,
        )

    def _kernel(self, lags: int) -> int:
        assert self.conv is not None
        return min(self.conv[1], lags)  # a window shorter than the kernel: all of it

    def describes(self, spec: FamilySpec) -> bool:
        """Whether `spec` is this preset's, on whatever schema and labels."""
        if (spec.family, spec.hidden) != (self.family, self.hidden):
            return False
        if spec.conv is None or self.conv is None:
            return spec.conv is None and self.conv is None
        return (spec.conv.channels, spec.conv.kernel) == (
            self.conv[0],
            self._kernel(spec.conv.lags),
        )


# "compact": the small MLPs (about 4-11 k parameters), what every space ran first and the
# default. "large": a wide MLP for occupancy; for activity the temporal family, which sees the
# window's lags as a sequence instead of one flat vector (about 2-6 x the parameters).
FAMILY_PRESETS: Mapping[ModelSize, Mapping[str, FamilyPreset]] = {
    "compact": {
        "occupancy": FamilyPreset(OCCUPANCY_MLP, (32, 16)),
        "activity": FamilyPreset(ACTIVITY_MLP, (64, 32)),
        "phone_activity": FamilyPreset(ACTIVITY_MLP, (32, 16)),
    },
    "large": {
        "occupancy": FamilyPreset(OCCUPANCY_MLP, (64, 32)),
        "activity": FamilyPreset(ACTIVITY_TCN, (64,), conv=(64, 2)),
        "phone_activity": FamilyPreset(ACTIVITY_TCN, (32,), conv=(32, 3)),
    },
}


def model_size(value: object) -> ModelSize:
    """`value` as a model size; `FamilyError` (reason "unknown_model_size") if it is none."""
    for size in MODEL_SIZES:
        if value == size:
            return size
    raise FamilyError(
        f"unknown model size {value!r}, expected one of {list(MODEL_SIZES)}",
        reason="unknown_model_size",
    )


def family_preset(size: str, task: str) -> FamilyPreset:
    """The preset of a model size for a task; `FamilyError` for an unknown size or task."""
    preset = FAMILY_PRESETS[model_size(size)].get(task)
    if preset is None:
        raise FamilyError(f"model size {size} has no family for task {task!r}")
    return preset


def preset_spec(
    size: str,
    task: str,
    schema: FeatureSchema,
    labels: tuple[str, ...],
    *,
    personal_head: bool = False,
) -> FamilySpec:
    """The spec a space of model size `size` runs for `task` on `schema`."""
    return family_preset(size, task).spec(task, schema, labels, personal_head=personal_head)


def model_size_of(spec: FamilySpec) -> ModelSize | None:
    """Which size's preset `spec` is, None for a custom architecture."""
    for size in MODEL_SIZES:
        preset = FAMILY_PRESETS[size].get(spec.task)
        if preset is not None and preset.describes(spec):
            return size
    return None
