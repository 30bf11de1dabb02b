"""Hypothesis feeds the snapshot decoder bad input; every case must end in a typed SnapshotError.

Raw corruption (random bytes, truncations, bit flips) dies at the framing or the signature.
To reach the layers behind the signature, the other cases are signed correctly: the header,
the tensor section and the ONNX model are what must catch them. Each test prints how many
cases it ran and how they ended.
"""

from __future__ import annotations

import itertools
import json
import string
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlmule_core.errors import SnapshotError
from mlmule_core.snapshot import COMPRESSIONS, SnapshotLimits, SnapshotMeta, pack, unpack
from onnx import TensorProto, helper, numpy_helper
from test_snapshot import EXPECTED, MODEL, MULE, NOW, TRUST, make_meta, resigned
from test_snapshot_models import mlp

from tests.support.forge import split

VALID = {
    compression: pack(MODEL, make_meta(), MULE, compression=compression)
    for compression in COMPRESSIONS
}
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same cases on every run, so the printed counts are comparable
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(data: bytes, **overrides: Any) -> str:
    """How unpacking ended: "accepted" or the rejection's reason. Anything else fails the test."""
    options: dict[str, Any] = {"trust": TRUST, "expected_arch": EXPECTED, "now": NOW}
    options.update(overrides)
    try:
        unpack(data, **options)
    except SnapshotError as err:
        return err.reason
    return "accepted"


def run_cases(name: str, check: Callable[[Counter[str]], None], minimum: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    check(counts)
    print(f"{name}: {sum(counts.values())} cases, {dict(sorted(counts.items()))}")
    assert sum(counts.values()) >= minimum
    return counts


# --- raw corruption -------------------------------------------------------------------------------


def test_random_bytes_are_refused() -> None:
    prefixed = st.binary(max_size=2048).map(lambda tail: b"MLMULE" + struct.pack(">H", 1) + tail)

    def check(counts: Counter[str]) -> None:
        @SETTINGS
        @given(st.binary(max_size=2048) | prefixed)
        def case(data: bytes) -> None:
            result = outcome(data)
            assert result != "accepted"
            counts[result] += 1

        case()

    run_cases("random bytes", check, 300)


def test_truncations_and_bit_flips_are_refused() -> None:
    def check(counts: Counter[str]) -> None:
        @SETTINGS
        @given(
            st.sampled_from(COMPRESSIONS),
            st.floats(0, 1, exclude_max=True),
            st.integers(0, 7),
            st.booleans(),
        )
        def case(compression: str, where: float, bit: int, truncate: bool) -> None:
            data = VALID[compression]
            position = int(where * len(data))
            if truncate:
                mutated = data[:position]
            else:
                flipped = bytearray(data)
                flipped[position] ^= 1 << bit
                mutated = bytes(flipped)
            result = outcome(mutated)
            assert result != "accepted"
            counts[result] += 1

        case()

    counts = run_cases("truncations and bit flips", check, 300)
    assert counts["bad_signature"] > 0


# --- correctly signed, wrong inside ---------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
HEADER_KEYS = [*sorted(split(VALID["int8"])[1]), "critical", "unknown_field"]


def test_signed_headers_with_random_fields_end_typed() -> None:
    def check(counts: Counter[str]) -> None:
        @SETTINGS
        @given(
            st.sampled_from(COMPRESSIONS),
            st.lists(st.tuples(st.sampled_from(HEADER_KEYS), json_values), min_size=1, max_size=3),
            st.booleans(),
        )
        def case(compression: str, edits: list[tuple[str, Any]], delete: bool) -> None:
            def edit(header: dict[str, Any]) -> None:
                for key, value in edits:
                    if delete:
                        header.pop(key, None)
                    else:
                        header[key] = value

            counts[outcome(resigned(VALID[compression], edit))] += 1

        case()

    counts = run_cases("signed random header fields", check, 300)
    assert counts["malformed"] > 0


def tensor_section_edit(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        header["tensors"][0][field] = value

    return edit


def test_signed_tensor_sections_that_lie_end_typed() -> None:
    def check(counts: Counter[str]) -> None:
        @SETTINGS
        @given(
            st.sampled_from(["fp16", "int8"]),
            st.sampled_from(["name", "dtype", "shape", "scale"]),
            json_values
            | st.lists(st.integers(-5, 2**40), max_size=10)
            | st.sampled_from(["float16", "int8", "float32", "body.0.bias", "head.weight"])
            | st.floats(),
        )
        def case(compression: str, field: str, value: Any) -> None:
            counts[outcome(resigned(VALID[compression], tensor_section_edit(field, value)))] += 1

        case()

    counts = run_cases("signed lying tensor sections", check, 300)
    assert counts["malformed"] > 0


def test_signed_random_bodies_end_typed() -> None:
    onnx_prefix = MODEL[:64]

    def check(counts: Counter[str]) -> None:
        @SETTINGS
        @given(
            st.sampled_from(COMPRESSIONS),
            st.binary(max_size=4096) | st.binary(max_size=512).map(onnx_prefix.__add__),
        )
        def case(compression: str, body: bytes) -> None:
            result = outcome(resigned(VALID[compression], body=body))
            assert result != "accepted"
            counts[result] += 1

        case()

    run_cases("signed random bodies", check, 300)


# --- correctly signed, bad models -----------------------------------------------------------------


def model_bytes(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    *,
    inputs: tuple[str, ...] = ("features",),
    output: str = "probability",
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 32]) for name in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def with_tensor(source: bytes, name: str, value: np.ndarray) -> bytes:
    model = onnx.load_from_string(source)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model.SerializeToString()


def nan_weights(position: int, value: float) -> bytes:
    weight = numpy_helper.to_array(
        next(t for t in onnx.load_from_string(MODEL).graph.initializer if t.name == "body.0.weight")
    ).copy()
    weight.flat[position % weight.size] = value
    return with_tensor(MODEL, "body.0.weight", weight)


def wrong_shape(rows: int, columns: int) -> bytes:
    return with_tensor(MODEL, "body.0.weight", np.ones((rows, columns)))


def unknown_op(name: str) -> bytes:
    model = onnx.load_from_string(mlp())
    model.graph.node[1].op_type = name
    return model.SerializeToString()


def deep_chain(length: int) -> bytes:
    names = ["features"] + [f"v{i}" for i in range(length - 1)] + ["probability"]
    return model_bytes([helper.make_node("Relu", [a], [b]) for a, b in itertools.pairwise(names)])


def cycle(size: int) -> bytes:
    names = [f"v{i}" for i in range(size)]
    nodes = [helper.make_node("Add", ["features", names[i - 1]], [names[i]]) for i in range(size)]
    nodes.append(helper.make_node("Identity", [names[-1]], ["probability"]))
    return model_bytes(nodes)


def dangling(name: str) -> bytes:
    return model_bytes([helper.make_node("Add", ["features", "nowhere_" + name], ["probability"])])


def oversized(elements: int) -> bytes:
    big = numpy_helper.from_array(np.zeros(elements, np.float32), "big")
    return model_bytes([helper.make_node("Add", ["features", "big"], ["probability"])], [big])


def lying_dims(extra: int) -> bytes:
    tensor = numpy_helper.from_array(np.zeros(16, np.float32), "w")
    tensor.dims[0] = 16 + extra
    return model_bytes([helper.make_node("Add", ["features", "w"], ["probability"])], [tensor])


# Structural defects, caught whatever the receiver does with the model.
STRUCTURAL = st.one_of(
    st.builds(nan_weights, st.integers(0, 2**20), st.sampled_from([np.nan, np.inf, -np.inf])),
    st.builds(unknown_op, st.text(string.ascii_letters, min_size=1, max_size=12)),
    st.builds(deep_chain, st.integers(257, 700)),
    st.builds(cycle, st.integers(2, 20)),
    st.builds(dangling, st.text("abc", max_size=5)),
    st.builds(oversized, st.integers(1101, 5000)),
    st.builds(lying_dims, st.integers(1, 1000)),
)
# Well-formed graphs that compute the wrong thing: caught when the receiver is about to merge,
# by the check that the model is the canonical one of its architecture.
WRONG_SHAPES = (
    st.tuples(st.integers(1, 64), st.integers(1, 64))
    .filter(lambda shape: shape != (32, 32))  # body.0.weight's own shape
    .map(lambda shape: wrong_shape(*shape))
)
SMALL = SnapshotLimits(max_tensor_elements=1100)  # the largest tensor of MODEL has 1024


def test_signed_bad_models_are_caught_by_the_model_checks() -> None:
    def check(counts: Counter[str]) -> None:
        @SETTINGS
        @given(
            st.tuples(STRUCTURAL, st.booleans()) | st.tuples(WRONG_SHAPES, st.just(True)),
            st.sampled_from(COMPRESSIONS),
        )
        def case(bad: tuple[bytes, bool], compression: str) -> None:
            body, merging = bad
            if body == MODEL:  # an "unknown op" that happened to be the one it replaced
                return

            # pack refuses these; signed anyway, as a buggy or hostile peer would, they must
            # still be refused
            def plain(header: dict[str, Any]) -> None:
                header.pop("tensors", None)
                header["compression"] = "none"

            data = resigned(VALID[compression], plain, body=body)
            result = outcome(data, expected_arch=EXPECTED if merging else None, limits=SMALL)
            assert result != "accepted"
            counts[result] += 1

        case()

    counts = run_cases("signed bad models", check, 300)
    for reason in ("poisoned", "onnx_unsupported_op", "onnx_bad_graph", "too_large"):
        assert counts[reason] > 0, reason
    assert counts["non_canonical"] > 0


@settings(max_examples=100, deadline=None)
@given(
    meta=st.builds(
        lambda samples, version, created, lag, lineage, extra: make_meta(
            samples=samples,
            version=version,
            created_at=created,
            data_time=max(0.0, created - lag),
            lineage=tuple(lineage),
            extra=extra,
        ),
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**63 - 1),
        st.floats(0, NOW),
        st.floats(0, 1e6),
        st.lists(st.text(min_size=1, max_size=40), max_size=10),
        st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    ),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_any_valid_metadata_round_trips(meta: SnapshotMeta, compression: str) -> None:
    extra = dict(meta.extra)
    data = pack(MODEL, meta, MULE, compression=compression)  # type: ignore[arg-type]
    got: SnapshotMeta = unpack(data, trust=TRUST, expected_arch=EXPECTED, now=NOW).meta
    assert got == meta
    assert json.loads(json.dumps(got.extra)) == extra
