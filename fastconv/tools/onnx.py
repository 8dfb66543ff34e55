"""ONNX export: a fastconv model as a graph of standard ONNX operators (opset 17).

``fc.export_onnx(model, "model.onnx", input_shape=(1, 28, 28))`` writes a file
that onnxruntime, OpenVINO or TensorRT read. The graph has one input,
"input" of shape (batch, *input_shape), and one output, "scores"; the batch
axis is dynamic. It computes the model's evaluation behaviour, whatever mode
the model is in: Dropout is the identity, batch norm uses its running
statistics.

Each layer class has one small function in :data:`EXPORTERS` that appends
its nodes to the graph, so a new layer is one new row. A function gets the
graph, the layer, the name of its input and that input's shape without the
batch axis, and returns (output name, output shape).

Semantics that must agree with fastconv's kernels (fastconv/reference.py):
MaxPool2d pads with -inf, as ONNX MaxPool ignores its pads; AvgPool2d's
count_include_pad is ONNX AveragePool's. ceil_mode=True is written as
ceil_mode=0 with the end padding that its last windows need: opset 17's
ceil_mode output size keeps a last window that starts in the end padding,
which PyTorch (and opset 22) drop, so runtimes differ on it. Where
count_include_pad counts the padding but not what those windows run past
it, a Pad node makes the padding real zeros; divisor_override is a
depthwise convolution with ones (the window sums), then a Div.

Needs the ``onnx`` package: ``pip install "fastconv[onnx]"``.
"""

from __future__ import annotations

import json
import os

import numpy as np

import fastconv as fc

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: older runtimes read the file too
INPUT, OUTPUT = "input", "scores"
INSTALL_HINT = 'pip install "fastconv[onnx]"'


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


class _Graph:
    """The nodes and weights of the graph being built, with fresh names for both."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.weights, self._count = onnx, [], [], 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array) -> str:
        name = self._name(hint)
        self.weights.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs, hint: str | None = None, *, out: str | None = None, **attrs) -> str:
        out = out or self._name(hint or op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def layer(self, layer, x: str, shape: tuple, where: str) -> tuple[str, tuple]:
        """Append ``layer`` (at position ``where`` in the model) to the graph."""
        export = EXPORTERS.get(type(layer))
        if export is None:
            known = ", ".join(sorted(cls.__name__ for cls in EXPORTERS))
            raise ValueError(f"export_onnx: {_label(layer, where)} has no ONNX form in fastconv; "
                             f"the exported layers are {known}")
        return export(self, layer, x, tuple(shape), where)


def _label(layer, where: str) -> str:
    return f"layer {where} ({type(layer).__name__})" if where else f"the model ({type(layer).__name__})"


def _refuse(layer, where: str, why: str):
    raise ValueError(f"export_onnx: {_label(layer, where)} {why}")


def _need_rank(layer, where, shape, ranks, what):
    if len(shape) not in ranks:
        _refuse(layer, where, f"takes {what}; its input has shape {('N',) + shape}")


def _pool_window(pool, where, shape):
    """A pool's (C, OH, OW) on a (C, H, W) input, by fastconv's (PyTorch's) rule,
    and its ONNX pads: the padding, plus at the end what ceil_mode's last
    windows run past it (see the module docstring)."""
    _need_rank(pool, where, shape, (3,), "(N, C, H, W) images")
    out, extra = [], []
    dilation = getattr(pool, "dilation", (1, 1))
    for size, k, s, p, d in zip(shape[1:], pool.kernel_size, pool.stride, pool.padding, dilation):
        span, up = d * (k - 1) + 1, s - 1 if pool.ceil_mode else 0
        if size + 2 * p + up < span:
            _refuse(pool, where, f"has a window of {tuple(pool.kernel_size)} larger than its padded input "
                                 f"{tuple(n + 2 * q for n, q in zip(shape[1:], pool.padding))}")
        o = (size + 2 * p - span + up) // s + 1
        o -= pool.ceil_mode and (o - 1) * s >= size + p
        out.append(o)
        extra.append(max(0, (o - 1) * s + span - size - 2 * p))
    (ph, pw), (eh, ew) = pool.padding, extra
    return (shape[0],) + tuple(out), [ph, pw, ph + eh, pw + ew]  # ONNX: all begins, then all ends


# -- one function per layer class ---------------------------------------------------------------


def _sequential(g, seq, x, shape, where):
    for name, child in seq._modules.items():
        x, shape = g.layer(child, x, shape, f"{where}.{name}" if where else name)
    return x, shape


def _conv2d(g, conv, x, shape, where):
    # dilation and groups are read where the layer has them, so grouped and dilated convs need no new row
    dilation, groups = tuple(getattr(conv, "dilation", (1, 1))), int(getattr(conv, "groups", 1))
    if len(shape) != 3 or shape[0] != conv.in_channels:
        _refuse(conv, where, f"takes (N, {conv.in_channels}, H, W) images; its input has shape {('N',) + shape}")
    # padding: (ph, pw), or ((top, bottom), (left, right)) as padding="same" gives an even kernel
    sides = tuple(p if isinstance(p, tuple) else (p, p) for p in conv.padding)
    pads = [sides[0][0], sides[1][0], sides[0][1], sides[1][1]]  # ONNX: all begins, then all ends
    _need_rank(conv, where, shape, (3,), "(N, C, H, W) images")
    out = [shape[0]]
    for size, k, st, (a, b), d in zip(shape[1:], conv.kernel_size, conv.stride, sides, dilation):
        span = d * (k - 1) + 1
        if size + a + b < span:
            _refuse(conv, where, f"has a window of {tuple(conv.kernel_size)} larger than its padded input")
        out.append((size + a + b - span) // st + 1)
    inputs = [x, g.const("weight", conv.weight.data)]
    if conv.bias is not None:
        inputs.append(g.const("bias", conv.bias.data))
    y = g.node("Conv", inputs, kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
               pads=pads, dilations=list(dilation), group=groups)
    return y, (conv.out_channels,) + tuple(out[1:])


def _pad(g, x, pads, value):
    """x (N, C, H, W) padded by pads [top, left, bottom, right] of `value`."""
    sides = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
    return g.node("Pad", [x, g.const("pads", sides), g.const("pad_value", np.float32(value))])


def _maxpool(g, pool, x, shape, where):
    out, pads = _pool_window(pool, where, shape)
    if any(p >= k for p, k in zip(pads, pool.kernel_size * 2)):
        # dilated windows may need pads as long as the kernel, which runtimes refuse: the -inf apart
        x, pads = _pad(g, x, pads, -np.inf), [0, 0, 0, 0]
    return g.node("MaxPool", [x], kernel_shape=list(pool.kernel_size), strides=list(pool.stride), pads=pads,
                  dilations=list(pool.dilation), ceil_mode=0), out


def _avgpool(g, pool, x, shape, where):
    out, pads = _pool_window(pool, where, shape)
    window = dict(kernel_shape=list(pool.kernel_size), strides=list(pool.stride))
    if pool.divisor_override is not None:
        # AveragePool has no divisor of its own: the window sums by a depthwise convolution with
        # ones (zero padding adds nothing), then the division
        ones = np.ones((shape[0], 1) + tuple(pool.kernel_size), np.float32)
        sums = g.node("Conv", [x, g.const("ones", ones)], pads=pads, group=shape[0], **window)
        return g.node("Div", [sums, g.const("divisor", np.float32(pool.divisor_override))]), out
    (ph, pw), ends = pool.padding, pads[2:]
    if pool.count_include_pad and ends != [ph, pw]:
        # count the padding but not what ceil_mode's windows run past it: the padding as real zeros
        return g.node("AveragePool", [_pad(g, x, [ph, pw, ph, pw], 0.0)], pads=[0, 0, ends[0] - ph, ends[1] - pw], count_include_pad=0,
                      ceil_mode=0, **window), out
    return g.node("AveragePool", [x], pads=pads, count_include_pad=int(pool.count_include_pad), ceil_mode=0,
                  **window), out


def _elementwise(op, **attrs):
    """An activation: ``attrs`` maps ONNX attribute names to the layer's attribute names."""
    def export(g, layer, x, shape, where):
        return g.node(op, [x], **{k: float(getattr(layer, v)) for k, v in attrs.items()}), shape
    return export


def _affine(g, layer, x, shape, where, out_features):
    """x @ weight.T + bias over the last axis: Gemm for (N, F) input, MatMul and Add for more axes."""
    if not shape or shape[-1] != layer.in_features:
        _refuse(layer, where, f"takes (N, ..., {layer.in_features}) input; its input has shape {('N',) + shape}")
    weight, bias = layer.weight.data, getattr(layer, "bias", None)
    if len(shape) == 1:
        inputs = [x, g.const("weight", weight)] + ([g.const("bias", bias.data)] if bias is not None else [])
        return g.node("Gemm", inputs, transB=1), (out_features,)
    y = g.node("MatMul", [x, g.const("weight_t", weight.T)])
    if bias is not None:
        y = g.node("Add", [y, g.const("bias", bias.data)])
    return y, shape[:-1] + (out_features,)


def _linear(g, linear, x, shape, where):
    return _affine(g, linear, x, shape, where, linear.out_features)


def _maxout(g, maxout, x, shape, where):
    z, zshape = _affine(g, maxout, x, shape, where, maxout.out_features * maxout.pieces)
    # 0 keeps the batch and other leading axes as they are: the batch size is not known here
    target = g.const("shape", np.array([0] * len(zshape) + [maxout.out_features, maxout.pieces], np.int64))
    grouped = g.node("Reshape", [z, target])
    return g.node("ReduceMax", [grouped], axes=[-1], keepdims=0), zshape[:-1] + (maxout.out_features,)


def _flatten(g, flatten, x, shape, where):
    rank = len(shape) + 1
    start, end = flatten.start_dim, flatten.end_dim
    if not (-rank <= start < rank and -rank <= end < rank) or start % rank > end % rank:
        _refuse(flatten, where, f"cannot flatten dims {start}..{end} of its input of shape {('N',) + shape}")
    start, end = start % rank, end % rank
    if start == 0:
        _refuse(flatten, where, "flattens the batch axis into the others, which a dynamic batch axis cannot express")
    out = shape[:start - 1] + (int(np.prod(shape[start - 1:end])),) + shape[end:]
    if start == 1 and end == rank - 1:
        return g.node("Flatten", [x], axis=1), out
    return g.node("Reshape", [x, g.const("shape", np.array((0,) + out, np.int64))]), out


def _batchnorm(g, bn, x, shape, where):
    if not bn.track_running_stats:
        _refuse(bn, where, "has track_running_stats=False: it normalizes with each batch's own statistics, "
                           "which an inference graph does not compute")
    if len(shape) + 1 not in bn.ranks or shape[0] != bn.num_features:
        _refuse(bn, where, f"takes {bn.num_features} channels in axis 1 of rank {' or '.join(map(str, bn.ranks))} "
                           f"input; its input has shape {('N',) + shape}")
    c = bn.num_features
    scale = bn.weight.data if bn.weight is not None else np.ones(c, np.float32)
    shift = bn.bias.data if bn.bias is not None else np.zeros(c, np.float32)
    inputs = [x] + [g.const(hint, a) for hint, a in (("scale", scale), ("shift", shift),
                                                     ("mean", bn.running_mean), ("var", bn.running_var))]
    return g.node("BatchNormalization", inputs, epsilon=float(bn.eps)), shape


def _residual(g, res, x, shape, where):
    y, yshape = g.layer(res.body, x, shape, f"{where}.body" if where else "body")
    s, sshape = (x, shape) if res.shortcut is None else g.layer(res.shortcut, x, shape,
                                                               f"{where}.shortcut" if where else "shortcut")
    if yshape != sshape:
        _refuse(res, where, f"adds a body output of shape {('N',) + yshape} to a shortcut of {('N',) + sshape}")
    return g.node("Add", [y, s]), yshape


def _concat(g, cat, x, shape, where):
    outs = [g.layer(m, x, shape, f"{where}.{name}" if where else name) for name, m in cat._modules.items()]
    rank = len(outs[0][1]) + 1
    axis = cat.dim % rank
    if axis == 0 or any(len(o[1]) + 1 != rank for o in outs):
        _refuse(cat, where, f"concatenates along dim {cat.dim} outputs of shapes {[('N',) + o[1] for o in outs]}")
    out = list(outs[0][1])
    out[axis - 1] = sum(o[1][axis - 1] for o in outs)
    return g.node("Concat", [o[0] for o in outs], axis=axis), tuple(out)


def _adaptive(global_op, op):
    """A global pool for output 1x1; a plain pool where the windows tile the input exactly."""
    def export(g, pool, x, shape, where):
        _need_rank(pool, where, shape, (3,), "(N, C, H, W) images")
        (oh, ow), (h, w) = pool.output_size, shape[1:]
        if (oh, ow) == (1, 1):
            return g.node(global_op, [x]), (shape[0], 1, 1)
        if h % oh or w % ow:
            _refuse(pool, where, f"pools {h}x{w} to {oh}x{ow}: uneven windows, which ONNX pools cannot express")
        kernel = [h // oh, w // ow]
        return g.node(op, [x], kernel_shape=kernel, strides=kernel), (shape[0], oh, ow)
    return export


def _identity(g, layer, x, shape, where):
    return g.node("Identity", [x]), shape


EXPORTERS = {
    fc.Sequential: _sequential,
    fc.Conv2d: _conv2d,
    fc.MaxPool2d: _maxpool,
    fc.AvgPool2d: _avgpool,
    fc.ReLU: _elementwise("Relu"),
    fc.LeakyReLU: _elementwise("LeakyRelu", alpha="negative_slope"),
    fc.ELU: _elementwise("Elu", alpha="alpha"),
    fc.Sigmoid: _elementwise("Sigmoid"),
    fc.Tanh: _elementwise("Tanh"),
    fc.Maxout: _maxout,
    fc.BatchNorm1d: _batchnorm,
    fc.BatchNorm2d: _batchnorm,
    fc.Dropout: _identity,
    fc.Linear: _linear,
    fc.Flatten: _flatten,
    fc.Residual: _residual,
    fc.Concat: _concat,
    fc.AdaptiveAvgPool2d: _adaptive("GlobalAveragePool", "AveragePool"),
    fc.AdaptiveMaxPool2d: _adaptive("GlobalMaxPool", "MaxPool"),
}


# -- the entry points ------------------------------------------------------------------------------


def _check_input_shape(input_shape) -> tuple:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (shape is None or not 1 <= len(shape) <= 3
            or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in shape)):
        raise ValueError("export_onnx: `input_shape` must be one example's shape, 1 to 3 ints >= 1 such as "
                         f"(1, 28, 28) (the batch axis is added, dynamic); got {input_shape!r}")
    return tuple(int(d) for d in shape)


def export_onnx(model: fc.Module, path, input_shape, classes=None, metadata: dict | None = None) -> str:
    """Write ``model`` as an ONNX file (opset 17) at ``path``, atomically; returns the path.

    ``input_shape`` is one example's shape, e.g. (3, 32, 32); the file takes
    (batch, *input_shape) float32 input named "input", any batch size, and
    gives "scores" (batch, classes). ``classes`` (a list of names) is stored
    as JSON in the model's metadata under "classes"; ``metadata`` adds more
    string entries. The model is checked with ``onnx.checker`` before it is
    written. A layer without an ONNX form raises ValueError naming it and its
    position ("layer 3.1 (Foo)").

    >>> fc.export_onnx(model, "digits.onnx", (1, 8, 8), classes=[str(d) for d in range(10)])
    'digits.onnx'
    """
    from fastconv.train.checkpoint import atomic_write

    onnx = _onnx()
    shape = _check_input_shape(input_shape)
    if not isinstance(model, fc.Module):
        raise TypeError(f"export_onnx: `model` must be a fastconv Module; got {type(model).__name__}")
    g = _Graph(onnx)
    y, out_shape = g.layer(model, INPUT, shape, "")
    if classes is not None and (len(out_shape) != 1 or len(classes) != out_shape[0]):
        raise ValueError(f"export_onnx: `classes` names {len(classes)} classes; the model's output has shape "
                         f"{('N',) + out_shape}")
    g.node("Identity", [y], out=OUTPUT)  # the graph's output under its fixed name
    h, T = onnx.helper, onnx.TensorProto
    graph = h.make_graph(g.nodes, "fastconv", [h.make_tensor_value_info(INPUT, T.FLOAT, ["batch", *shape])],
                         [h.make_tensor_value_info(OUTPUT, T.FLOAT, ["batch", *out_shape])], g.weights)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="fastconv",
                         producer_version=str(fc.__version__), ir_version=IR_VERSION)
    props = {} if classes is None else {"classes": json.dumps([str(c) for c in classes])}
    props.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    h.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, proto.SerializeToString())
    return os.fspath(path)


def export_checkpoint(checkpoint: str, out: str) -> str:
    """``fastconv export CHECKPOINT --onnx OUT``: the checkpoint's model with its class names, input
    shape and normalization as metadata; returns the line the command prints."""
    from fastconv.models import load_model

    model, meta = load_model(checkpoint)
    user = meta["user"]
    extra = {k: user[k] for k in ("input_shape", "normalization", "arch") if k in user}
    export_onnx(model, out, user["input_shape"], classes=user.get("classes"), metadata=extra)
    norm = " (normalize inputs with the `normalization` metadata: (x - mean) / std per channel)" \
        if "normalization" in user else ""
    return f"wrote {out}: input (batch, {', '.join(map(str, user['input_shape']))}), " \
           f"{len(user.get('classes') or [])} class scores{norm}"
