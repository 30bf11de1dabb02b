"""A numpy executor for the ONNX operators small MLPs use, for where onnxruntime is missing.

Each operator follows the ONNX specification for default-domain opsets MIN_OPSET..MAX_OPSET:
`OP_VERSIONS` lists, per operator, the specification versions ("since versions") whose
semantics are implemented here, and the tests check that list against the `onnx` package's
schemas. Floating-point work stays in the tensor's own type (float32 for our models), as in
onnxruntime; only Erf is evaluated in float64 and rounded back.

A node's attributes are read and checked once, when the executor is built; `run` only calls
the prepared kernels in topological order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import (
    OnnxError,
    OnnxInputError,
    OnnxRunError,
    UnsupportedOperatorError,
    UnsupportedOperatorUsageError,
    UnsupportedOpsetError,
)
from .model import (
    DEFAULT_LIMITS,
    TOO_LARGE,
    Node,
    OnnxLimits,
    OnnxModel,
    ValueInfo,
    data_type_name,
    node_label,
    numpy_dtype,
    topological_order,
)

Array = npt.NDArray[Any]
Inputs = Sequence[Array | None]  # None for an omitted optional input
Kernel = Callable[[Inputs], tuple[Array, ...]]

MIN_OPSET = 13  # axes as inputs (Squeeze, Unsqueeze, ReduceSum), Softmax on one axis
MAX_OPSET = 26  # the newest opset onnxruntime 1.31 supports, so parity can be tested
_ANY_NUMBER = sys.maxsize  # of inputs or outputs, for variadic operators
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


@dataclass(frozen=True)
class _Context:
    """What a kernel's preparation sees: the node, where it is, and the model's opset."""

    node: Node
    label: str
    opset: int
    limits: OnnxLimits

    def invalid(self, problem: str) -> OnnxError:
        return OnnxError(f"node {self.label} ({self.node.op_type}): {problem}")

    def arity(self, inputs: tuple[int, int], outputs: tuple[int, int] = (1, 1)) -> None:
        """Check the input and output counts; required inputs must not be omitted ("")."""
        low, high = inputs
        count = len(self.node.inputs)
        if not low <= count <= high or not all(self.node.inputs[:low]):
            raise self.invalid(f"takes {low}..{high} inputs, got {list(self.node.inputs)}")
        low, high = outputs
        if not low <= len(self.node.outputs) <= high or not self.node.outputs[0]:
            raise self.invalid(f"has {low}..{high} outputs, got {list(self.node.outputs)}")

    def has_input(self, index: int) -> bool:
        return len(self.node.inputs) > index and bool(self.node.inputs[index])

    def has_output(self, index: int) -> bool:
        return len(self.node.outputs) > index and bool(self.node.outputs[index])

    def _wrong_attribute(self, name: str, kind: str, value: object) -> OnnxError:
        return self.invalid(f"attribute {name!r} must be {kind}, got {value!r}")

    def int_attr(self, name: str, default: int) -> int:
        value = self.node.attributes.get(name, default)
        if not isinstance(value, int | np.integer):
            raise self._wrong_attribute(name, "an int", value)
        return int(value)

    def float_attr(self, name: str, default: float) -> float:
        value = self.node.attributes.get(name, default)
        # An INT where a FLOAT is due is how hand-written graphs often say 1.0.
        if not isinstance(value, float | int | np.floating | np.integer):
            raise self._wrong_attribute(name, "a float", value)
        return float(value)

    def str_attr(self, name: str, default: str) -> str:
        value = self.node.attributes.get(name, default)
        if not isinstance(value, str):
            raise self._wrong_attribute(name, "a string", value)
        return value

    def ints_attr(self, name: str) -> list[int] | None:
        value = self.node.attributes.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(item, int | np.integer) for item in value
        ):
            raise self._wrong_attribute(name, "a list of ints", value)
        return [int(item) for item in value]

    def check_size(self, shape: Sequence[int]) -> None:
        """Refuse to create a value larger than the limits allow (before allocating it)."""
        count = math.prod(shape)
        if count > self.limits.max_value_elements:
            raise OnnxRunError(
                f"node {self.label} ({self.node.op_type}) would create {count} elements, over "
                f"the limit of {self.limits.max_value_elements}",
                reason=TOO_LARGE,
            )


@dataclass(frozen=True)
class _Operator:
    prepare: Callable[[_Context], Kernel]
    versions: tuple[int, ...]  # specification versions implemented; the first is the oldest


_OPERATORS: dict[str, _Operator] = {}


def _register(op_type: str, *versions: int) -> Callable[[Callable[[_Context], Kernel]], None]:
    def register(prepare: Callable[[_Context], Kernel]) -> None:
        _OPERATORS[op_type] = _Operator(prepare, versions)

    return register


# --------------------------------------------------------------------------- helpers


def _axis(axis: int, rank: int) -> int:
    """A possibly negative axis as an index into a shape of `rank` dimensions."""
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _axes(axes: Sequence[int], rank: int) -> tuple[int, ...]:
    normalized = tuple(_axis(int(axis), rank) for axis in axes)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"axes {list(axes)} repeat an axis")
    return normalized


def _ints(values: Array | None, what: str) -> list[int]:
    """A 1-D integer tensor input (axes, shape, repeats, ...) as Python ints."""
    if values is None:
        raise ValueError(f"{what} is missing")
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ValueError(f"{what} must be a 1-D integer tensor, got {values.dtype}{values.shape}")
    return [int(value) for value in values]


def _scalar(value: Array) -> Any:
    if value.size != 1:
        raise ValueError(f"expected a single value, got shape {value.shape}")
    return value.reshape(()).item()


def _required(value: Array | None) -> Array:
    if value is None:  # arity checks make this unreachable for required inputs
        raise ValueError("a required input is missing")
    return value


def _same_type(dtype: np.dtype[Any], value: float) -> Any:
    """A Python number as a scalar of `dtype`, so arithmetic does not widen float32."""
    return dtype.type(value)


# --------------------------------------------------------------------------- elementwise


def _sigmoid(x: Array) -> Array:
    # Split by sign so exp never overflows: 1 / (1 + e^-x) = e^x / (1 + e^x).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


_ERFC_COEFFICIENTS = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _erf(x: Array) -> Array:
    """erf in float64, rounded to the input's type (numpy has no erf).

    |x| < 0.5: the Maclaurin series (truncation error < 1e-11); otherwise 1 - erfc with the
    Chebyshev fit of Numerical Recipes (fractional error of erfc < 1.2e-7), so the float32
    result is within about one ulp.
    """
    value = x.astype(np.float64)
    magnitude = np.abs(value)
    t = 1.0 / (1.0 + 0.5 * magnitude)
    polynomial = np.zeros_like(t)
    for coefficient in reversed(_ERFC_COEFFICIENTS[1:]):
        polynomial = t * (coefficient + polynomial)
    erfc = t * np.exp(-magnitude * magnitude + _ERFC_COEFFICIENTS[0] + polynomial)
    squared = magnitude * magnitude
    term = magnitude.copy()
    series = magnitude.copy()
    for n in range(1, 10):
        term = -term * squared / n
        series = series + term / (2 * n + 1)
    result = np.where(magnitude < 0.5, series * (2 / math.sqrt(math.pi)), 1.0 - erfc)
    return np.asarray(np.sign(value) * result, dtype=x.dtype)


def _relu(x: Array) -> Array:
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def _softplus(x: Array) -> Array:
    return np.logaddexp(x, 0).astype(x.dtype, copy=False)  # log(1 + e^x) without overflow


def _hard_swish(x: Array) -> Array:
    gate: Array = np.clip(x * _same_type(x.dtype, 1 / 6) + _same_type(x.dtype, 0.5), 0, 1)
    return (x * gate).astype(x.dtype, copy=False)


_UNARY: dict[str, tuple[Callable[[Array], Array], tuple[int, ...]]] = {
    "Abs": (np.abs, (13,)),
    "Ceil": (np.ceil, (13,)),
    "Erf": (_erf, (13,)),
    "Exp": (np.exp, (13,)),
    "Floor": (np.floor, (13,)),
    "HardSwish": (_hard_swish, (14, 22)),
    "Identity": (lambda x: x, (13, 14, 16, 19, 21, 23, 24, 25)),
    "Log": (np.log, (13,)),
    "Neg": (np.negative, (13,)),
    "Not": (np.logical_not, (1,)),
    "Reciprocal": (np.reciprocal, (13,)),
    "Relu": (_relu, (13, 14)),
    "Sigmoid": (_sigmoid, (13,)),
    "Sign": (np.sign, (13,)),
    "Softplus": (_softplus, (1, 22)),
    "Sqrt": (np.sqrt, (13,)),
    "Tanh": (np.tanh, (13,)),
}


def _unary_preparer(function: Callable[[Array], Array]) -> Callable[[_Context], Kernel]:
    def prepare(context: _Context) -> Kernel:
        context.arity((1, 1))
        return lambda inputs: (function(_required(inputs[0])),)

    return prepare


for _op_type, (_function, _versions) in _UNARY.items():
    _register(_op_type, *_versions)(_unary_preparer(_function))


@_register("LeakyRelu", 6, 16)
def _leaky_relu(context: _Context) -> Kernel:
    context.arity((1, 1))
    alpha = context.float_attr("alpha", 0.01)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        return (np.where(x < 0, x * _same_type(x.dtype, alpha), x),)

    return kernel


@_register("Elu", 6, 22)
def _elu(context: _Context) -> Kernel:
    context.arity((1, 1))
    alpha = context.float_attr("alpha", 1.0)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        return (np.where(x < 0, _same_type(x.dtype, alpha) * np.expm1(x), x),)

    return kernel


@_register("Selu", 6, 22)
def _selu(context: _Context) -> Kernel:
    context.arity((1, 1))
    alpha = context.float_attr("alpha", 1.67326319217681884765625)
    gamma = context.float_attr("gamma", 1.05070102214813232421875)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        negative = _same_type(x.dtype, alpha) * np.expm1(x)
        return (_same_type(x.dtype, gamma) * np.where(x > 0, x, negative),)

    return kernel


@_register("HardSigmoid", 6, 22)
def _hard_sigmoid(context: _Context) -> Kernel:
    context.arity((1, 1))
    alpha = context.float_attr("alpha", 0.2)
    beta = context.float_attr("beta", 0.5)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        linear = x * _same_type(x.dtype, alpha) + _same_type(x.dtype, beta)
        return (np.clip(linear, 0, 1).astype(x.dtype, copy=False),)

    return kernel


@_register("Gelu", 20)
def _gelu(context: _Context) -> Kernel:
    context.arity((1, 1))
    approximate = context.str_attr("approximate", "none")
    if approximate not in {"none", "tanh"}:
        raise context.invalid(f"approximate={approximate!r} is neither 'none' nor 'tanh'")

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        half = _same_type(x.dtype, 0.5)
        if approximate == "tanh":
            inner = _same_type(x.dtype, math.sqrt(2 / math.pi)) * (
                x + _same_type(x.dtype, 0.044715) * x * x * x
            )
            return (half * x * (1 + np.tanh(inner)),)
        return (half * x * (1 + _erf(x * _same_type(x.dtype, 1 / math.sqrt(2)))),)

    return kernel


@_register("Clip", 13)
def _clip(context: _Context) -> Kernel:
    context.arity((1, 3))
    has_low, has_high = context.has_input(1), context.has_input(2)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        result = _required(inputs[0])
        # The specification's order: with min > max every value becomes max.
        if has_low:
            result = np.maximum(result, _scalar(_required(inputs[1]))).astype(result.dtype)
        if has_high:
            result = np.minimum(result, _scalar(_required(inputs[2]))).astype(result.dtype)
        return (result,)

    return kernel


# --------------------------------------------------------------------------- broadcasting


def _divide(a: Array, b: Array) -> Array:
    if a.dtype.kind in "iu":
        # C++ integer division truncates towards zero; numpy's // floors.
        quotient = np.floor_divide(a, b)
        inexact = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return np.asarray(quotient + inexact, dtype=a.dtype)
    return np.asarray(np.divide(a, b))


def _power(base: Array, exponent: Array) -> Array:
    # The result has the base's type; a float base keeps its precision (no float64 detour).
    if base.dtype.kind == "f":
        return np.asarray(np.power(base, exponent.astype(base.dtype)))
    return np.power(base.astype(np.float64), exponent.astype(np.float64)).astype(base.dtype)


def _prelu(x: Array, slope: Array) -> Array:
    result = np.where(x < 0, x * slope, x)
    if result.shape != x.shape:
        raise ValueError(f"slope {slope.shape} does not broadcast to X {x.shape}")
    return result


_BINARY: dict[str, tuple[Callable[[Array, Array], Array], tuple[int, ...]]] = {
    "Add": (np.add, (13, 14)),
    "And": (np.logical_and, (7,)),
    "Div": (_divide, (13, 14)),
    "Equal": (np.equal, (13, 19)),
    "Greater": (np.greater, (13,)),
    "GreaterOrEqual": (np.greater_equal, (12, 16)),
    "Less": (np.less, (13,)),
    "LessOrEqual": (np.less_equal, (12, 16)),
    "Mul": (np.multiply, (13, 14)),
    "Or": (np.logical_or, (7,)),
    "Pow": (_power, (13, 15)),
    "PRelu": (_prelu, (9, 16)),
    "Sub": (np.subtract, (13, 14)),
    "Xor": (np.logical_xor, (7,)),
}


def _binary_preparer(function: Callable[[Array, Array], Array]) -> Callable[[_Context], Kernel]:
    def prepare(context: _Context) -> Kernel:
        context.arity((2, 2))

        def kernel(inputs: Inputs) -> tuple[Array, ...]:
            a, b = _required(inputs[0]), _required(inputs[1])
            context.check_size(np.broadcast_shapes(a.shape, b.shape))
            return (np.asarray(function(a, b)),)

        return kernel

    return prepare


for _op_type, (_binary_function, _versions) in _BINARY.items():
    _register(_op_type, *_versions)(_binary_preparer(_binary_function))


def _variadic_preparer(
    function: Callable[[Array, Array], Array], mean: bool = False
) -> Callable[[_Context], Kernel]:
    def prepare(context: _Context) -> Kernel:
        context.arity((1, _ANY_NUMBER))
        if not all(context.node.inputs):
            raise context.invalid("an input is omitted")

        def kernel(inputs: Inputs) -> tuple[Array, ...]:
            arrays = [_required(value) for value in inputs]
            context.check_size(np.broadcast_shapes(*(array.shape for array in arrays)))
            result = arrays[0]
            for array in arrays[1:]:
                result = function(result, array)
            if mean:
                result = result / _same_type(result.dtype, len(arrays))
            return (np.asarray(result),)

        return kernel

    return prepare


_register("Max", 13)(_variadic_preparer(np.maximum))
_register("Min", 13)(_variadic_preparer(np.minimum))
_register("Sum", 13)(_variadic_preparer(np.add))
_register("Mean", 13)(_variadic_preparer(np.add, mean=True))


@_register("Where", 9, 16)
def _where(context: _Context) -> Kernel:
    context.arity((3, 3))

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        condition, x, y = (_required(value) for value in inputs)
        if condition.dtype != np.bool_:
            raise ValueError(f"condition must be bool, got {condition.dtype}")
        context.check_size(np.broadcast_shapes(condition.shape, x.shape, y.shape))
        return (np.where(condition, x, y),)

    return kernel


# --------------------------------------------------------------------------- linear algebra


@_register("MatMul", 13)
def _matmul(context: _Context) -> Kernel:
    context.arity((2, 2))

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        a, b = _required(inputs[0]), _required(inputs[1])
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("MatMul needs inputs of rank >= 1")
        rows = a.shape[-2] if a.ndim > 1 else 1
        columns = b.shape[-1] if b.ndim > 1 else 1
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        context.check_size((*batch, rows, columns))
        return (np.matmul(a, b),)

    return kernel


@_register("Gemm", 13)
def _gemm(context: _Context) -> Kernel:
    context.arity((2, 3))
    alpha = context.float_attr("alpha", 1.0)
    beta = context.float_attr("beta", 1.0)
    trans_a = context.int_attr("transA", 0)
    trans_b = context.int_attr("transB", 0)
    has_c = context.has_input(2)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        a, b = _required(inputs[0]), _required(inputs[1])
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"Gemm needs 2-D inputs, got {a.shape} and {b.shape}")
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        context.check_size((a.shape[0], b.shape[1]))
        result = np.matmul(a, b)
        if alpha != 1.0:
            result *= _same_type(result.dtype, alpha)
        if has_c:
            c = np.broadcast_to(_required(inputs[2]), result.shape)  # C broadcasts one way
            result += c if beta == 1.0 else c * _same_type(result.dtype, beta)
        return (result,)

    return kernel


_AUTO_PADS = frozenset({"NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"})


def _spatial_attr(name: str, given: list[int] | None, default: int, count: int) -> list[int]:
    values = [default] * count if given is None else given
    if len(values) != count:
        raise ValueError(f"{name} {values} does not have {count} entries")
    return values


def _conv_pads(
    auto_pad: str,
    pads: list[int] | None,
    sizes: Sequence[int],
    strides: Sequence[int],
    extents: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Padding before and after each spatial axis; SAME keeps ceil(size / stride) outputs,
    with the odd one at the end (SAME_UPPER) or the beginning (SAME_LOWER), as onnxruntime."""
    spatial = len(sizes)
    if auto_pad in {"SAME_UPPER", "SAME_LOWER"}:
        begins, ends = [], []
        for size, stride, extent in zip(sizes, strides, extents, strict=True):
            total = max(0, (-(-size // stride) - 1) * stride + extent - size)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins, ends
    explicit = [0] * (2 * spatial) if auto_pad == "VALID" else pads
    chosen = _spatial_attr("pads", explicit, 0, 2 * spatial)
    if min(chosen) < 0:
        raise ValueError(f"negative pads {chosen}")
    return chosen[:spatial], chosen[spatial:]


def _check_conv_operands(x: Array, w: Array, group: int, kernel_attr: list[int] | None) -> None:
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(f"Conv needs X [N, C, ...] and W of its rank, got {x.shape}, {w.shape}")
    if x.dtype.kind != "f" or w.dtype != x.dtype:
        raise ValueError(f"Conv needs X and W of one float type, got {x.dtype}, {w.dtype}")
    if kernel_attr is not None and tuple(kernel_attr) != w.shape[2:]:
        raise ValueError(f"kernel_shape {kernel_attr} differs from W's {w.shape[2:]}")
    if x.shape[1] != w.shape[1] * group or w.shape[0] % group:
        raise ValueError(f"X {x.shape} and W {w.shape} do not fit group={group}")


@_register("Conv", 11, 22)
def _conv(context: _Context) -> Kernel:
    """N-dimensional convolution (cross-correlation, as ONNX defines it), with groups."""
    context.arity((2, 3))
    auto_pad = context.str_attr("auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise context.invalid(f"auto_pad={auto_pad!r} is not one of {sorted(_AUTO_PADS)}")
    group = context.int_attr("group", 1)
    if group < 1:
        raise context.invalid(f"group must be >= 1, got {group}")
    kernel_attr = context.ints_attr("kernel_shape")
    strides_attr = context.ints_attr("strides")
    dilations_attr = context.ints_attr("dilations")
    pads_attr = context.ints_attr("pads")
    if auto_pad != "NOTSET" and pads_attr is not None:
        raise context.invalid("pads and auto_pad are both given")
    has_bias = context.has_input(2)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x, w = _required(inputs[0]), _required(inputs[1])
        _check_conv_operands(x, w, group, kernel_attr)
        spatial, sizes, kernel_shape = x.ndim - 2, x.shape[2:], w.shape[2:]
        strides = _spatial_attr("strides", strides_attr, 1, spatial)
        dilations = _spatial_attr("dilations", dilations_attr, 1, spatial)
        if min(strides) < 1 or min(dilations) < 1:
            raise ValueError("strides and dilations must be >= 1")
        channels, out_channels = x.shape[1], w.shape[0]
        extents = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
        begins, ends = _conv_pads(auto_pad, pads_attr, sizes, strides, extents)
        padded_sizes = [size + b + e for size, b, e in zip(sizes, begins, ends, strict=True)]
        outputs = [
            (padded - extent) // stride + 1
            for padded, extent, stride in zip(padded_sizes, extents, strides, strict=True)
        ]
        if min(outputs) < 1:
            raise ValueError(f"kernel {kernel_shape} does not fit the padded input {padded_sizes}")
        context.check_size((*x.shape[:2], *padded_sizes))
        context.check_size((x.shape[0], out_channels, *outputs))
        padded = np.pad(x, [(0, 0), (0, 0), *zip(begins, ends, strict=True)])
        grouped = padded.reshape(x.shape[0], group, channels // group, *padded_sizes)
        filters = w.reshape(group, out_channels // group, channels // group, *kernel_shape)
        result = np.zeros((x.shape[0], group, out_channels // group, *outputs), dtype=x.dtype)
        for offset in np.ndindex(*kernel_shape):
            window: tuple[slice, ...] = (slice(None),) * 3 + tuple(
                slice(o * d, o * d + (n - 1) * s + 1, s)
                for o, d, n, s in zip(offset, dilations, outputs, strides, strict=True)
            )
            taps = filters[(slice(None), slice(None), slice(None), *offset)]
            result += np.einsum("ngc...,gmc->ngm...", grouped[window], taps)
        result = result.reshape(x.shape[0], out_channels, *outputs)
        if has_bias:
            bias = _required(inputs[2])
            if bias.shape != (out_channels,):
                raise ValueError(f"B must have shape ({out_channels},), got {bias.shape}")
            result += bias.reshape(-1, *(1,) * spatial)
        return (result,)

    return kernel


# --------------------------------------------------------------------------- normalisation


def _softmax_preparer(log: bool) -> Callable[[_Context], Kernel]:
    def prepare(context: _Context) -> Kernel:
        context.arity((1, 1))
        axis = context.int_attr("axis", -1)

        def kernel(inputs: Inputs) -> tuple[Array, ...]:
            x = _required(inputs[0])
            index = _axis(axis, x.ndim)
            shifted = x - np.max(x, axis=index, keepdims=True)
            exponentials = np.exp(shifted)
            total = np.sum(exponentials, axis=index, keepdims=True)
            return (shifted - np.log(total) if log else exponentials / total,)

        return kernel

    return prepare


_register("Softmax", 13)(_softmax_preparer(log=False))
_register("LogSoftmax", 13)(_softmax_preparer(log=True))


@_register("LayerNormalization", 17)
def _layer_normalization(context: _Context) -> Kernel:
    context.arity((2, 3), (1, 3))
    axis = context.int_attr("axis", -1)
    epsilon = context.float_attr("epsilon", 1e-5)
    stash_type = context.int_attr("stash_type", 1)
    if stash_type not in {1, 11}:  # FLOAT, DOUBLE
        raise UnsupportedOperatorUsageError(
            "LayerNormalization", f"with stash_type={data_type_name(stash_type)}"
        )
    stash = numpy_dtype(stash_type)
    has_bias = context.has_input(2)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        axes = tuple(range(_axis(axis, x.ndim), x.ndim))
        values = x.astype(stash, copy=False)
        mean = np.mean(values, axis=axes, keepdims=True)
        centered = values - mean
        variance = np.mean(centered * centered, axis=axes, keepdims=True)
        inverse_std = 1 / np.sqrt(variance + _same_type(stash, epsilon))
        result = (centered * inverse_std).astype(x.dtype, copy=False) * _required(inputs[1])
        if has_bias:
            result = result + _required(inputs[2])
        return (result, mean, inverse_std)

    return kernel


@_register("BatchNormalization", 9, 14, 15)
def _batch_normalization(context: _Context) -> Kernel:
    context.arity((5, 5), (1, 5))
    epsilon = context.float_attr("epsilon", 1e-5)
    if context.int_attr("training_mode", 0) or any(
        context.has_output(index) for index in range(1, 5)
    ):
        raise UnsupportedOperatorUsageError("BatchNormalization", "in training mode")

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x, scale, bias, mean, variance = (_required(value) for value in inputs)
        if x.ndim < 2:
            raise ValueError(f"BatchNormalization needs an input of rank >= 2, got {x.shape}")
        channel = (-1,) + (1,) * (x.ndim - 2)  # parameters apply along axis 1
        factor = (scale / np.sqrt(variance + _same_type(variance.dtype, epsilon))).reshape(channel)
        return (((x - mean.reshape(channel)) * factor + bias.reshape(channel)).astype(x.dtype),)

    return kernel


# --------------------------------------------------------------------------- reductions


def _reduce_preparer(
    function: Callable[..., Array], axes_input_since: int
) -> Callable[[_Context], Kernel]:
    """A Reduce* operator; its axes are an attribute before `axes_input_since`, then an input
    (where empty axes mean "all", or "none" with noop_with_empty_axes)."""

    def prepare(context: _Context) -> Kernel:
        keepdims = bool(context.int_attr("keepdims", 1))
        axes_from_input = context.opset >= axes_input_since
        context.arity((1, 2) if axes_from_input else (1, 1))
        noop_with_empty_axes = axes_from_input and bool(context.int_attr("noop_with_empty_axes", 0))
        has_axes_input = axes_from_input and context.has_input(1)
        attribute_axes = None if axes_from_input else context.ints_attr("axes")

        def kernel(inputs: Inputs) -> tuple[Array, ...]:
            x = _required(inputs[0])
            axes = _ints(inputs[1], "axes") if has_axes_input else attribute_axes or []
            if not axes and noop_with_empty_axes:
                return (x,)
            chosen = _axes(axes, x.ndim) if axes else tuple(range(x.ndim))
            reduced = function(x, axis=chosen, keepdims=keepdims)
            return (np.asarray(reduced).astype(x.dtype, copy=False),)

        return kernel

    return prepare


_register("ReduceMax", 13, 18, 20)(_reduce_preparer(np.max, 18))
_register("ReduceMean", 13, 18)(_reduce_preparer(np.mean, 18))
_register("ReduceMin", 13, 18, 20)(_reduce_preparer(np.min, 18))
_register("ReduceProd", 13, 18)(_reduce_preparer(np.prod, 18))
_register("ReduceSum", 13)(_reduce_preparer(np.sum, 13))


def _arg_preparer(function: Callable[..., Array]) -> Callable[[_Context], Kernel]:
    def prepare(context: _Context) -> Kernel:
        context.arity((1, 1))
        axis = context.int_attr("axis", 0)
        keepdims = bool(context.int_attr("keepdims", 1))
        select_last_index = bool(context.int_attr("select_last_index", 0))

        def kernel(inputs: Inputs) -> tuple[Array, ...]:
            x = _required(inputs[0])
            index = _axis(axis, x.ndim)
            if select_last_index:
                found = x.shape[index] - 1 - function(np.flip(x, axis=index), axis=index)
            else:
                found = function(x, axis=index)
            if keepdims:
                found = np.expand_dims(found, index)
            return (np.asarray(found, dtype=np.int64),)

        return kernel

    return prepare


_register("ArgMax", 13)(_arg_preparer(np.argmax))
_register("ArgMin", 13)(_arg_preparer(np.argmin))


# --------------------------------------------------------------------------- shapes


@_register("Reshape", 13, 14, 19, 21, 23, 24, 25)
def _reshape(context: _Context) -> Kernel:
    context.arity((2, 2))
    allow_zero = bool(context.int_attr("allowzero", 0)) if context.opset >= 14 else False

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        shape = _ints(inputs[1], "shape")
        if allow_zero and 0 in shape and -1 in shape:
            raise ValueError("with allowzero, shape cannot hold both 0 and -1")
        if not allow_zero:  # 0 copies the input's dimension at the same index
            if any(dim == 0 and index >= x.ndim for index, dim in enumerate(shape)):
                raise ValueError(f"shape {shape} copies a dimension {x.shape} does not have")
            shape = [x.shape[index] if dim == 0 else dim for index, dim in enumerate(shape)]
        if any(dim < -1 for dim in shape):
            raise ValueError(f"invalid shape {shape}")
        return (np.reshape(x, shape),)

    return kernel


@_register("Flatten", 13, 21, 23, 24, 25)
def _flatten(context: _Context) -> Kernel:
    context.arity((1, 1))
    axis = context.int_attr("axis", 1)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        if not -x.ndim <= axis <= x.ndim:
            raise ValueError(f"axis {axis} is out of range for rank {x.ndim}")
        split = axis + x.ndim if axis < 0 else axis
        return (x.reshape(math.prod(x.shape[:split]), math.prod(x.shape[split:])),)

    return kernel


@_register("Transpose", 13, 21, 23, 24, 25)
def _transpose(context: _Context) -> Kernel:
    context.arity((1, 1))
    permutation = context.ints_attr("perm")

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        if permutation is not None and sorted(permutation) != list(range(x.ndim)):
            raise ValueError(f"perm {permutation} is not a permutation of {x.ndim} axes")
        return (np.transpose(x, permutation),)

    return kernel


@_register("Concat", 13)
def _concat(context: _Context) -> Kernel:
    context.arity((1, _ANY_NUMBER))
    if "axis" not in context.node.attributes:
        raise context.invalid("attribute 'axis' is required")
    axis = context.int_attr("axis", 0)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        arrays = [_required(value) for value in inputs]
        return (np.concatenate(arrays, axis=_axis(axis, arrays[0].ndim)),)

    return kernel


@_register("Squeeze", 13, 21, 23, 24, 25)
def _squeeze(context: _Context) -> Kernel:
    context.arity((1, 2))
    has_axes = context.has_input(1)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        if not has_axes:
            return (np.squeeze(x),)
        axes = _axes(_ints(inputs[1], "axes"), x.ndim)
        if any(x.shape[axis] != 1 for axis in axes):
            raise ValueError(f"cannot squeeze axes {list(axes)} of shape {x.shape}")
        return (np.squeeze(x, axis=axes),)

    return kernel


@_register("Unsqueeze", 13, 21, 23, 24, 25)
def _unsqueeze(context: _Context) -> Kernel:
    context.arity((2, 2))

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        axes = _ints(inputs[1], "axes")
        return (np.expand_dims(x, _axes(axes, x.ndim + len(axes))),)

    return kernel


@_register("Shape", 13, 15, 19, 21, 23, 24, 25)
def _shape(context: _Context) -> Kernel:
    context.arity((1, 1))
    start = context.int_attr("start", 0)
    end = context.node.attributes.get("end")
    if end is not None and not isinstance(end, int):
        raise context.invalid(f"attribute 'end' must be int, got {end!r}")

    # Python slicing clamps negative and out-of-range bounds exactly as the specification asks.
    return lambda inputs: (np.array(_required(inputs[0]).shape[start:end], dtype=np.int64),)


@_register("Size", 13, 19, 21, 23, 24, 25)
def _size(context: _Context) -> Kernel:
    context.arity((1, 1))
    return lambda inputs: (np.array(_required(inputs[0]).size, dtype=np.int64),)


@_register("Gather", 13)
def _gather(context: _Context) -> Kernel:
    context.arity((2, 2))
    axis = context.int_attr("axis", 0)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        data, indices = _required(inputs[0]), _required(inputs[1])
        if indices.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got {indices.dtype}")
        index = _axis(axis, data.ndim)
        size = data.shape[index]
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise ValueError(f"an index is out of range for a dimension of {size}")
        context.check_size((*data.shape[:index], *indices.shape, *data.shape[index + 1 :]))
        return (np.take(data, np.where(indices < 0, indices + size, indices), axis=index),)

    return kernel


@_register("Slice", 13)
def _slice(context: _Context) -> Kernel:
    context.arity((3, 5))
    has_axes, has_steps = context.has_input(3), context.has_input(4)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        data = _required(inputs[0])
        starts, ends = _ints(inputs[1], "starts"), _ints(inputs[2], "ends")
        axes = _ints(inputs[3], "axes") if has_axes else list(range(len(starts)))
        steps = _ints(inputs[4], "steps") if has_steps else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise ValueError("starts, ends, axes and steps differ in length")
        selection = [slice(None)] * data.ndim
        for start, end, axis, step in zip(starts, ends, _axes(axes, data.ndim), steps, strict=True):
            if step == 0:
                raise ValueError("a slice step is 0")
            selection[axis] = _clamped_slice(start, end, step, data.shape[axis])
        return (data[tuple(selection)],)

    return kernel


# An end of INT_MAX means "to the end" in the direction of the step, as in onnxruntime.
_OPEN_ENDS = frozenset({2**31 - 1, 2**63 - 1})


def _clamped_slice(start: int, end: int, step: int, size: int) -> slice:
    """The ONNX Slice bounds: negative ones count from the end, then clamp by direction."""
    start += size if start < 0 else 0
    end += size if end < 0 else 0
    if step > 0:
        return slice(min(max(start, 0), size), min(max(end, 0), size), step)
    start = min(max(start, 0), size - 1)
    end = -1 if end in _OPEN_ENDS else min(max(end, -1), size - 1)
    return slice(start, end if end >= 0 else None, step)  # -1: run past index 0


@_register("Expand", 13)
def _expand(context: _Context) -> Kernel:
    context.arity((2, 2))

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        shape = np.broadcast_shapes(x.shape, tuple(_ints(inputs[1], "shape")))
        context.check_size(shape)
        return (np.broadcast_to(x, shape),)

    return kernel


@_register("Tile", 13)
def _tile(context: _Context) -> Kernel:
    context.arity((2, 2))

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        repeats = _ints(inputs[1], "repeats")
        if len(repeats) != x.ndim or any(count < 0 for count in repeats):
            raise ValueError(f"repeats {repeats} do not fit shape {x.shape}")
        context.check_size([dim * count for dim, count in zip(x.shape, repeats, strict=True)])
        return (np.tile(x, repeats),)

    return kernel


@_register("Split", 13, 18)
def _split(context: _Context) -> Kernel:
    context.arity((1, 2), (1, _ANY_NUMBER))
    axis = context.int_attr("axis", 0)
    count = len(context.node.outputs)
    has_sizes = context.has_input(1)
    num_outputs = context.int_attr("num_outputs", 0) if context.opset >= 18 else 0
    if has_sizes and num_outputs:
        raise context.invalid("both the 'split' input and 'num_outputs' are given")
    if num_outputs and num_outputs != count:
        raise context.invalid(f"num_outputs={num_outputs} but {count} outputs")

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        index = _axis(axis, x.ndim)
        size = x.shape[index]
        if has_sizes:
            sizes = _ints(inputs[1], "split")
        elif num_outputs:
            chunk = -(-size // count)  # ceil: the last part is the smaller one
            sizes = [chunk] * (count - 1) + [size - chunk * (count - 1)]
        elif size % count == 0:
            sizes = [size // count] * count
        else:
            raise ValueError(f"cannot split {size} into {count} equal parts")
        if len(sizes) != count or sum(sizes) != size or any(part < 0 for part in sizes):
            raise ValueError(f"split sizes {sizes} do not fit {size} into {count} outputs")
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=index))

    return kernel


@_register("Range", 11)
def _range(context: _Context) -> Kernel:
    context.arity((3, 3))

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        start, limit, delta = (_required(value) for value in inputs)
        if not start.dtype == limit.dtype == delta.dtype:
            raise ValueError("start, limit and delta differ in type")
        first, last, step = _scalar(start), _scalar(limit), _scalar(delta)
        if step == 0:
            raise ValueError("delta is 0")
        count = max(math.ceil((last - first) / step), 0)
        context.check_size((count,))
        # onnxruntime accumulates (value += delta); a sequential cumsum rounds the same way.
        values = np.full(count, step, dtype=start.dtype)
        if count:
            values[0] = first
        return (np.cumsum(values, dtype=start.dtype),)

    return kernel


@_register("ConstantOfShape", 9, 20, 21, 23, 24, 25)
def _constant_of_shape(context: _Context) -> Kernel:
    context.arity((1, 1))
    value = context.node.attributes.get("value", np.zeros(1, dtype=np.float32))
    if not isinstance(value, np.ndarray) or value.size != 1:
        raise context.invalid("attribute 'value' must be a one-element tensor")

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        shape = _ints(inputs[0], "shape")
        if any(dim < 0 for dim in shape):
            raise ValueError(f"negative dimension in {shape}")
        context.check_size(shape)
        return (np.full(shape, value.reshape(()), dtype=value.dtype),)

    return kernel


# --------------------------------------------------------------------------- types and constants


def _cast_target(context: _Context, to: int) -> np.dtype[Any]:
    try:
        return numpy_dtype(to)
    except OnnxError:
        raise UnsupportedOperatorUsageError(
            context.node.op_type, f"to {data_type_name(to)}"
        ) from None


@_register("Cast", 13, 19, 21, 23, 24, 25)
def _cast(context: _Context) -> Kernel:
    # `saturate` and `round_mode` only concern float8 types, which are not supported here.
    context.arity((1, 1))
    if "to" not in context.node.attributes:
        raise context.invalid("attribute 'to' is required")
    dtype = _cast_target(context, context.int_attr("to", 0))
    return lambda inputs: (_required(inputs[0]).astype(dtype),)


@_register("CastLike", 15, 19, 21, 23, 24, 25)
def _cast_like(context: _Context) -> Kernel:
    context.arity((2, 2))
    return lambda inputs: (_required(inputs[0]).astype(_required(inputs[1]).dtype),)


@_register("Constant", 13, 19, 21, 23, 24, 25)
def _constant(context: _Context) -> Kernel:
    context.arity((0, 0))
    if len(context.node.attributes) != 1:
        raise context.invalid("needs exactly one value attribute")
    ((name, value),) = context.node.attributes.items()
    constant: Array
    if name == "value" and isinstance(value, np.ndarray):
        constant = value
    elif name == "value_float" and isinstance(value, float | int):
        constant = np.array(value, dtype=np.float32)
    elif name == "value_int" and isinstance(value, int):
        constant = np.array(value, dtype=np.int64)
    elif name == "value_floats" and isinstance(value, list):
        constant = np.array(value, dtype=np.float32).reshape(len(value))
    elif name == "value_ints" and isinstance(value, list):
        constant = np.array(value, dtype=np.int64).reshape(len(value))
    elif name in {"value_string", "value_strings", "sparse_value"}:
        raise UnsupportedOperatorUsageError("Constant", f"with {name}")
    else:
        raise context.invalid(f"attribute {name!r} is not a Constant value")
    return lambda inputs: (constant,)


@_register("Dropout", 13, 22)
def _dropout(context: _Context) -> Kernel:
    context.arity((1, 3), (1, 2))
    has_training_mode = context.has_input(2)

    def kernel(inputs: Inputs) -> tuple[Array, ...]:
        x = _required(inputs[0])
        if has_training_mode and _scalar(_required(inputs[2])):
            raise UnsupportedOperatorUsageError("Dropout", "in training mode")
        return (x, np.ones(x.shape, dtype=np.bool_))  # inference: nothing is dropped

    return kernel


# --------------------------------------------------------------------------- the executor

SUPPORTED_OPS: frozenset[str] = frozenset(_OPERATORS)
OP_VERSIONS: Mapping[str, tuple[int, ...]] = {
    op_type: operator.versions for op_type, operator in sorted(_OPERATORS.items())
}


@dataclass(frozen=True)
class _Step:
    kernel: Kernel
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    label: str
    op_type: str


def check_feeds(
    inputs: Sequence[ValueInfo], feeds: Mapping[str, Any], optional: Sequence[ValueInfo] = ()
) -> None:
    """Refuse feeds that do not match the declared inputs, as onnxruntime does, so that both
    backends accept and reject the same calls. `optional` inputs have an initializer as their
    default and may be fed to override it. Raises `OnnxInputError`."""
    declared = {info.name: info for info in (*inputs, *optional)}
    unknown = sorted(set(feeds) - set(declared))
    if unknown:
        raise OnnxInputError(f"unknown inputs {unknown}; the model takes {sorted(declared)}")
    for info in inputs:
        if info.name not in feeds:
            raise OnnxInputError(f"input {info.name!r} is missing")
    for name, value in feeds.items():
        info = declared[name]
        if not isinstance(value, np.ndarray):
            raise OnnxInputError(f"input {name!r} must be a numpy array")
        dtype = numpy_dtype(info.elem_type)
        if value.dtype != dtype:
            raise OnnxInputError(f"input {name!r} must be {dtype}, got {value.dtype}")
        if value.ndim != len(info.shape) or any(
            isinstance(dim, int) and dim != actual
            for dim, actual in zip(info.shape, value.shape, strict=True)
        ):
            raise OnnxInputError(
                f"input {name!r} must have shape {list(info.shape)}, got {value.shape}"
            )


def split_inputs(model: OnnxModel) -> tuple[tuple[ValueInfo, ...], tuple[ValueInfo, ...]]:
    """The required inputs, and the optional ones: those an initializer gives a default."""
    required = tuple(info for info in model.inputs if info.name not in model.initializers)
    optional = tuple(info for info in model.inputs if info.name in model.initializers)
    return required, optional


class NumpyExecutor:
    """Runs an `OnnxModel` with numpy. Construction validates everything that does not depend
    on the inputs: opset, graph structure and depth, operators and their attributes."""

    def __init__(self, model: OnnxModel, limits: OnnxLimits = DEFAULT_LIMITS) -> None:
        if not MIN_OPSET <= model.opset <= MAX_OPSET:
            raise UnsupportedOpsetError(
                f"opset {model.opset} is outside the supported {MIN_OPSET}..{MAX_OPSET}"
            )
        steps: list[_Step] = []
        for index in topological_order(model, limits.max_depth):
            node = model.nodes[index]
            operator = _OPERATORS.get(node.op_type)
            if (
                node.domain not in _DEFAULT_DOMAINS
                or operator is None
                or model.opset < operator.versions[0]
            ):
                raise UnsupportedOperatorError(node.op_type, node.domain)
            label = node_label(node, index)
            kernel = operator.prepare(_Context(node, label, model.opset, limits))
            steps.append(_Step(kernel, node.inputs, node.outputs, label, node.op_type))
        self._steps = tuple(steps)
        self._initializers = dict(model.initializers)
        self._inputs, self._optional_inputs = split_inputs(model)
        for info in (*self._inputs, *self._optional_inputs):
            numpy_dtype(info.elem_type)  # refuses input types the executor cannot take
        self.input_names = tuple(info.name for info in self._inputs)
        self.output_names = tuple(info.name for info in model.outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for `feeds` (every required input, exactly typed and shaped)."""
        check_feeds(self._inputs, feeds, self._optional_inputs)
        values: dict[str, Array | None] = {**self._initializers, **feeds}
        # Overflow to inf and NaN from invalid operations are results, as in onnxruntime.
        with np.errstate(all="ignore"):
            for step in self._steps:
                arguments = [values[name] if name else None for name in step.inputs]
                try:
                    results = step.kernel(arguments)
                except MemoryError as err:  # numpy's "unable to allocate" for one result
                    message = f"node {step.label} ({step.op_type}) ran out of memory: {err}"
                    raise OnnxRunError(message, reason=TOO_LARGE) from err
                except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError) as err:
                    raise OnnxRunError(f"node {step.label} ({step.op_type}) failed: {err}") from err
                values.update(
                    (name, result)
                    for name, result in zip(step.outputs, results, strict=False)
                    if name
                )
        # Copies: an output never aliases an initializer, a feed or another output.
        return {name: np.array(values[name]) for name in self.output_names}
