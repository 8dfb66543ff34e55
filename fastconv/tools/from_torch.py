"""PyTorch import: ``fc.from_torch(torch_module)`` builds the equivalent fastconv model.

An ``nn.Sequential`` (nested too) of the layers both libraries have becomes
a :class:`fastconv.Sequential` with the same weights and buffers, each layer
in the mode (train or eval) its PyTorch twin is in, so outputs agree. Each
PyTorch class has one small function in the table of :func:`_converters`;
a layer without a row, or with an option fastconv lacks (Conv2d's
padding_mode != "zeros", MaxPool2d's return_indices=True, ...), raises
ValueError naming its position and the option. torch is imported only here,
when called; fastconv never needs it otherwise.
"""

from __future__ import annotations

import numpy as np

import fastconv as fc


class FromTorchError(ValueError):
    """A PyTorch layer fastconv cannot reproduce; the message names its position."""


def _label(m, where: str) -> str:
    return f"layer {where} ({type(m).__name__})" if where else f"the model ({type(m).__name__})"


def _require(m, where: str, **expected) -> None:
    """Refuse ``m`` unless each attribute has the value fastconv implements."""
    for name, want in expected.items():
        got = getattr(m, name)
        if got != want and not (isinstance(got, tuple) and set(got) == {want}):
            raise FromTorchError(f"from_torch: {_label(m, where)}: `{name}` must be {want!r} "
                                 f"(the only value fastconv has); got {got!r}")


def _copy(param, tensor) -> None:
    param.data[...] = tensor.detach().cpu().numpy().astype(np.float32, copy=False)


def _sequential(m, where, convert):
    children = (convert(child, f"{where}.{name}" if where else name) for name, child in m.named_children())
    return fc.Sequential(*children)


def _conv2d(m, where, convert):
    _require(m, where, padding_mode="zeros")
    conv = fc.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                     dilation=m.dilation, groups=m.groups, bias=m.bias is not None)
    _copy(conv.weight, m.weight)
    if m.bias is not None:
        _copy(conv.bias, m.bias)
    return conv


def _maxpool2d(m, where, convert):
    _require(m, where, return_indices=False)  # fastconv keeps the argmax inside the layer
    return fc.MaxPool2d(m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                        ceil_mode=m.ceil_mode)


def _avgpool2d(m, where, convert):
    return fc.AvgPool2d(m.kernel_size, stride=m.stride, padding=m.padding, ceil_mode=m.ceil_mode,
                        count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)


def _linear(m, where, convert):
    linear = fc.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    _copy(linear.weight, m.weight)
    if m.bias is not None:
        _copy(linear.bias, m.bias)
    return linear


def _batchnorm(cls):
    def convert(m, where, _):
        bn = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                 track_running_stats=m.track_running_stats)
        if m.affine:
            _copy(bn.weight, m.weight)
            _copy(bn.bias, m.bias)
        if m.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(bn, name)[...] = getattr(m, name).detach().cpu().numpy()
        return bn
    return convert


def _same(cls, *attrs):
    """A layer whose arguments are the PyTorch layer's attributes of the same names."""
    return lambda m, where, convert: cls(*(getattr(m, a) for a in attrs))


def _converters(nn) -> dict:
    return {
        nn.Sequential: _sequential,
        nn.Conv2d: _conv2d,
        nn.MaxPool2d: _maxpool2d,
        nn.AvgPool2d: _avgpool2d,
        nn.ReLU: _same(fc.ReLU),
        nn.LeakyReLU: _same(fc.LeakyReLU, "negative_slope"),
        nn.ELU: _same(fc.ELU, "alpha"),
        nn.Sigmoid: _same(fc.Sigmoid),
        nn.Tanh: _same(fc.Tanh),
        nn.BatchNorm1d: _batchnorm(fc.BatchNorm1d),
        nn.BatchNorm2d: _batchnorm(fc.BatchNorm2d),
        nn.Dropout: _same(fc.Dropout, "p"),
        nn.Linear: _linear,
        nn.Flatten: _same(fc.Flatten, "start_dim", "end_dim"),
    }


def from_torch(module) -> fc.Module:
    """The fastconv model equivalent to PyTorch ``module``, weights and buffers copied.

    ``module`` is a ``torch.nn.Sequential`` (nested ones too) of Conv2d,
    MaxPool2d, AvgPool2d, ReLU, LeakyReLU, ELU, Sigmoid, Tanh, BatchNorm1d,
    BatchNorm2d, Dropout, Linear and Flatten, or one such layer. Each fastconv
    layer takes its PyTorch twin's train/eval mode. Weights are copied as
    float32. Raises FromTorchError (a ValueError) naming the first layer that
    cannot be mapped ("layer 2.1 (GELU)") or its unsupported option.

    >>> net = fc.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> net(np.ones((1, 4), np.float32)).shape
    (1, 2)
    """
    try:
        from torch import nn
    except ImportError:
        raise ImportError("from_torch needs PyTorch (pip install torch)") from None
    table = _converters(nn)

    def convert(m, where: str):
        row = table.get(type(m))
        if row is None:
            known = ", ".join(sorted(cls.__name__ for cls in table))
            raise FromTorchError(f"from_torch: {_label(m, where)} has no fastconv equivalent "
                                 f"(torch.nn layers mapped: {known})")
        try:
            layer = row(m, where, convert)
        except FromTorchError:
            raise
        except (ValueError, TypeError) as e:  # an argument a fastconv layer refuses
            raise FromTorchError(f"from_torch: {_label(m, where)}: {e}") from None
        object.__setattr__(layer, "training", bool(m.training))  # its own mode only, as in torch
        return layer

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch: `module` must be a torch.nn.Module; got {type(module).__name__}")
    return convert(module, "")
