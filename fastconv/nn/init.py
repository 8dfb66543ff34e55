"""Weight initialization, in place on a Parameter or array.

fan_in = in_channels * kh * kw for a conv weight (in_features for Linear),
fan_out = out_channels * kh * kw. Layers default to He (Kaiming) normal for
weights and zeros for biases, the advice for ReLU networks:
std = sqrt(2 / fan_in).

The output layer is the exception. A Linear that is the last layer of a
``Sequential`` (no activation follows it: its outputs are the class scores)
starts with std = CLASSIFIER_GAIN / sqrt(fan_in) instead (see
:func:`classifier_normal_`), so the scores start small and the first
softmax loss is about ln(C) for C classes, where He's std, made to keep a
ReLU's input variance, gives scores of several units and a first loss far
above ln(C). The container scales the layer's own He draw when it is built
(no other draws are taken, so a seed gives the same hidden weights as
before), and only while the layer is fresh (never run, its weights still
that draw): weights that were set, loaded, used or trained are never touched.

Random draws come from fastconv's generator, seeded with :func:`manual_seed`.
"""

from __future__ import annotations

import math

import numpy as np

from fastconv.nn.module import Parameter

# Created on first use: numpy.random is a noticeable part of `import fastconv`.
_rng: np.random.Generator | None = None


def manual_seed(seed: int) -> None:
    """Seed the generator that initializes weights (and dropout masks)."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    global _rng
    if _rng is None:
        _rng = np.random.default_rng()
    return _rng


def _array(t):
    a = t.data if isinstance(t, Parameter) else t
    if not isinstance(a, np.ndarray):
        raise TypeError(f"init: `tensor` must be a Parameter or numpy array; got {type(t).__name__}")
    return a


def _fans(a):
    if a.ndim < 2:
        raise ValueError(f"init: fan in/out need a tensor of rank >= 2; got shape {a.shape}")
    receptive = int(np.prod(a.shape[2:])) if a.ndim > 2 else 1
    return a.shape[1] * receptive, a.shape[0] * receptive


def he_normal_(tensor, gain: float = math.sqrt(2.0), mode: str = "fan_in"):
    """Fill with N(0, std^2), std = gain / sqrt(fan) (He et al. 2015 for gain sqrt(2)); ``mode``
    picks fan_in (the default) or fan_out (torch's kaiming_normal_(mode="fan_out"), ResNets' init)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"he_normal_: `mode` must be 'fan_in' or 'fan_out'; got {mode!r}")
    a = _array(tensor)
    fan = _fans(a)[mode == "fan_out"]
    a[...] = generator().normal(0.0, gain / math.sqrt(fan), a.shape)
    return tensor


def he_uniform_(tensor, gain: float = math.sqrt(2.0)):
    """Fill with U(-b, b), b = gain * sqrt(3 / fan_in) (same variance as he_normal_)."""
    a = _array(tensor)
    fan_in, _ = _fans(a)
    bound = gain * math.sqrt(3.0 / fan_in)
    a[...] = generator().uniform(-bound, bound, a.shape)
    return tensor


def xavier_normal_(tensor, gain: float = 1.0):
    """Fill with N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    a = _array(tensor)
    fan_in, fan_out = _fans(a)
    a[...] = generator().normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), a.shape)
    return tensor


def xavier_uniform_(tensor, gain: float = 1.0):
    """Fill with U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))."""
    a = _array(tensor)
    fan_in, fan_out = _fans(a)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    a[...] = generator().uniform(-bound, bound, a.shape)
    return tensor


# Scores of std CLASSIFIER_GAIN * rms(h) for inputs h: with the features' rms
# about 1 to 3 (He keeps it near the data's, max-pools raise it), the first
# softmax loss is within 0.1 of ln(C), and the layer still passes a gradient
# a tenth of He's back to the layers below from the first step.
CLASSIFIER_GAIN = 0.1


def classifier_normal_(tensor, gain: float = CLASSIFIER_GAIN):
    """Fill with N(0, std^2), std = gain / sqrt(fan_in): an output layer's init (small initial scores)."""
    return he_normal_(tensor, gain)


def zeros_(tensor):
    """Fill with zeros."""
    _array(tensor)[...] = 0
    return tensor
