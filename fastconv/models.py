"""The built-in architectures and the spec language that describes them.

One definition serves the command line (``fastconv train --arch``), the
Trainer's checkpoints (:func:`load_model` rebuilds a model from its spec) and
the benchmarks (which build the same spec in PyTorch: ``lib=torch.nn``).

>>> model = fc.models.build_model("cifar_small", (3, 32, 32), num_classes=10)
>>> torch_twin = fc.models.build_model("cifar_small", (3, 32, 32), 10, lib=torch.nn)

Networks with skip connections are built in Python: :func:`resnet` (and
:func:`resnet20`, :func:`resnet32`, :func:`resnet56`), whose names the
command line, the checkpoints and the benchmarks accept like the spec
built-ins (``--arch resnet20``).
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from fastconv.nn.checks import is_int, is_number
from fastconv.train import checkpoint as ckpt

__all__ = ["ARCHS", "RESNETS", "SPEC_HELP", "build_model", "containers", "load_model", "resnet", "resnet20",
           "resnet32", "resnet56", "resolve_arch", "vgg11"]


ARCHS = {
    "digits": "conv32x3p1-relu-conv32x3p1-relu-pool2-fc128-relu-fc{classes}",
    "lenet": "conv8x5p2-relu-pool2-conv16x5p2-relu-pool2-fc{classes}",
    "lenet5": "conv6x5p2-relu-pool2-conv16x5-relu-pool2-fc120-relu-fc84-relu-fc{classes}",
    "cifar_small": "conv32x3p1-relu-pool2-conv64x3p1-relu-pool2-conv128x3p1-relu-pool2-fc{classes}",
    "mlp": "fc128-relu-fc{classes}",
    # VGG-11 with batch norm (configuration A of Simonyan & Zisserman), shrunk for 32x32 inputs:
    # five 2x2 pools leave 512 x 1 x 1 for one Linear, as the common CIFAR versions.
    "vgg11": "-".join(f"conv{c}x3p1-bn-relu" if c else "pool2"
                      for c in (64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0)) + "-fc{classes}",
}

# The CIFAR ResNets of He et al. 2016 (section 4.2): depth 6n + 2, n basic blocks per stage.
RESNETS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}

SPEC_HELP = """\
An architecture is a built-in name or a spec string of layers joined by '-':
  conv<OUT>x<K>[s<S>][p<P>][d<D>][g<G>]
                             Conv2d: OUT filters of KxK, stride S (1), zero padding P (0),
                             dilation D (1), G groups of channels (1; G divides them and OUT)
  dwconv<K>[s<S>][p<P>]      depthwise Conv2d: one KxK filter per channel
  pool<K>[s<S>]              MaxPool2d: KxK windows, stride S (K)
  avgpool<K>[s<S>]           AvgPool2d: KxK windows, stride S (K)
  fc<N>                      Linear to N outputs (a Flatten is put in front of the first)
  relu, leakyrelu, tanh, sigmoid, elu       activations
  drop<P>                    Dropout with drop probability P, e.g. drop0.5
  bn                         BatchNorm2d after a conv, BatchNorm1d after an fc
The last layer must be fc<number of classes>. Input channels and sizes are
inferred from the data. Built-ins (K = the number of classes):
""" + "\n".join(f"  {k:12} {v.replace('{classes}', 'K')}" for k, v in ARCHS.items()) + """
  resnet20, resnet32, resnet56   the CIFAR ResNets of He et al. 2016 (built in Python:
               fastconv.models.resnet; they have skip connections, which specs do not)"""

_TOKENS = [
    ("conv", re.compile(r"conv(\d+)x(\d+)(?:s(\d+))?(?:p(\d+))?(?:d(\d+))?(?:g(\d+))?")),
    ("dwconv", re.compile(r"dwconv(\d+)(?:s(\d+))?(?:p(\d+))?")),
    ("avgpool", re.compile(r"avgpool(\d+)(?:s(\d+))?")),
    ("pool", re.compile(r"(?:max)?pool(\d+)(?:s(\d+))?")),
    ("fc", re.compile(r"fc(\d+)")),
    ("drop", re.compile(r"drop(?:out)?(0?\.\d+|0|1)")),
    ("act", re.compile(r"relu|leakyrelu|tanh|sigmoid|elu")),
    ("bn", re.compile(r"bn")),
    ("flatten", re.compile(r"flatten")),
]
_ACTIVATIONS = {"relu": "ReLU", "leakyrelu": "LeakyReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "ELU"}


def resolve_arch(arch: str, num_classes: int) -> str:
    """A built-in name's spec string for ``num_classes`` classes, or ``arch`` itself."""
    return ARCHS[arch].format(classes=num_classes) if arch in ARCHS else arch


def _check_sizes(token: str, *sizes) -> None:
    """Before any size arithmetic: a zero stride or kernel would divide by zero."""
    for name, v in sizes:
        if v < 1:
            raise ValueError(f"arch: {token!r}: the {name} must be >= 1; got {v}")


def build_model(arch: str, input_shape, num_classes: int | None = None, dropout: float = 0.0, lib=None):
    """A :class:`Sequential` from a built-in name or a spec string (see ``SPEC_HELP``).

    ``input_shape`` is one example's (C, H, W) (or (features,)); sizes flow
    through the layers, so a layer that does not fit raises ``ValueError``
    naming it. ``dropout`` > 0 puts a Dropout(dropout) before every fc layer.
    ``lib`` is where the layer classes come from: fastconv (the default), or
    ``torch.nn`` for the same network in PyTorch (the benchmarks' peer), whose
    layers take the same arguments.

    >>> build_model("conv8x3p1-relu-pool2-fc10", (1, 8, 8)).state_dict().keys()
    odict_keys(['0.weight', '0.bias', '4.weight', '4.bias'])
    """
    if lib is None:
        import fastconv as lib

    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"arch: must be a built-in name ({', '.join([*ARCHS, *RESNETS])}) or a spec string; "
                         f"got {arch!r}")
    spec = resolve_arch(arch.strip().lower(), num_classes if num_classes is not None else 10)
    if not 0 <= dropout < 1:
        raise ValueError(f"arch: `dropout` must be in [0, 1); got {dropout!r}")
    shape = tuple(int(s) for s in input_shape)
    if spec in RESNETS:
        if len(shape) != 3:
            raise ValueError(f"arch: {spec} needs an image (C, H, W) input; it gets shape {shape}")
        return resnet(6 * RESNETS[spec] + 2, num_classes if num_classes is not None else 10,
                      in_channels=shape[0], dropout=dropout, lib=lib)
    layers = []
    last_kind = None
    for token in spec.split("-"):
        kind, m = next(((k, r.fullmatch(token)) for k, r in _TOKENS if r.fullmatch(token)), (None, None))
        if kind is None:
            raise ValueError(f"arch: unknown layer {token!r} in {spec!r}; expected conv<OUT>x<K>[s<S>][p<P>][d<D>][g<G>], "
                             "dwconv<K>[s<S>][p<P>], "
                             "pool<K>[s<S>], fc<N>, relu, drop<P>, bn, ... (see `fastconv train --help`)")
        if kind in ("conv", "dwconv", "pool", "avgpool") and len(shape) != 3:
            raise ValueError(f"arch: {token!r} needs an image (C, H, W) input; it gets shape {shape}")
        if kind in ("conv", "dwconv"):
            if kind == "conv":
                out, k, s, p, d, g = int(m[1]), int(m[2]), int(m[3] or 1), int(m[4] or 0), int(m[5] or 1), int(m[6] or 1)
            else:
                out, k, s, p, d, g = shape[0], int(m[1]), int(m[2] or 1), int(m[3] or 0), 1, shape[0]
            _check_sizes(token, ("filters", out), ("kernel size", k), ("stride", s), ("dilation", d), ("groups", g))
            if shape[0] % g or out % g:
                raise ValueError(f"arch: {token!r}: the groups ({g}) must divide the input channels ({shape[0]}) "
                                 f"and the filters ({out})")
            span = d * (k - 1) + 1
            h, w = (shape[1] + 2 * p - span) // s + 1, (shape[2] + 2 * p - span) // s + 1
            if h < 1 or w < 1:
                raise ValueError(f"arch: {token!r} does not fit its input of shape {shape} (kernel {k}, padding {p})")
            layers.append(lib.Conv2d(shape[0], out, k, stride=s, padding=p, dilation=d, groups=g))
            shape = (out, h, w)
        elif kind in ("pool", "avgpool"):
            k = int(m[1])
            s = int(m[2] or k)
            _check_sizes(token, ("kernel size", k), ("stride", s))
            h, w = (shape[1] - k) // s + 1, (shape[2] - k) // s + 1
            if h < 1 or w < 1 or k < 1 or s < 1:
                raise ValueError(f"arch: {token!r} does not fit its input of shape {shape}")
            layers.append((lib.MaxPool2d if kind == "pool" else lib.AvgPool2d)(k, stride=s))
            shape = (shape[0], h, w)
        elif kind in ("fc", "flatten"):
            if len(shape) > 1:
                layers.append(lib.Flatten())
                shape = (int(np.prod(shape)),)
            if kind == "fc":
                if dropout > 0:
                    layers.append(lib.Dropout(dropout))
                out = int(m[1])
                if out < 1:
                    raise ValueError(f"arch: {token!r} must have at least one output")
                layers.append(lib.Linear(shape[0], out))
                shape = (out,)
        elif kind == "drop":
            layers.append(lib.Dropout(float(m[1])))
        elif kind == "act":
            layers.append(getattr(lib, _ACTIVATIONS[token])())
        elif kind == "bn":
            layers.append((lib.BatchNorm2d if len(shape) == 3 else lib.BatchNorm1d)(shape[0]))
        last_kind = kind
    if last_kind != "fc":
        raise ValueError(f"arch: {spec!r} must end with fc<number of classes> (class scores); it ends with {token!r}")
    if num_classes is not None and shape[0] != num_classes:
        raise ValueError(f"arch: {spec!r} ends with {shape[0]} outputs but the data has {num_classes} classes")
    return lib.Sequential(*layers)


def containers(lib=None) -> tuple:
    """(Residual, Concat) of ``lib``: fastconv's own (the default), or for ``lib=torch.nn``
    their PyTorch twins, which compute the same and have the same attribute names (so the
    same state_dict keys). :func:`fastconv.from_torch` maps the twins back; any torch module
    whose class declares ``fastconv_container`` as they do is mapped the same way.

    >>> Residual, Concat = fc.models.containers(torch.nn)
    >>> block = torch.nn.Sequential(Residual(torch.nn.Conv2d(4, 4, 3, padding=1)), torch.nn.ReLU())
    >>> type(fc.from_torch(block)[0]).__name__
    'Residual'
    """
    if lib is None:
        import fastconv as lib
    return (lib.Residual, lib.Concat) if hasattr(lib, "Residual") else _torch_containers()


@functools.lru_cache(maxsize=None)
def _torch_containers():
    import torch

    class Residual(torch.nn.Module):
        """body(x) + shortcut(x), or body(x) + x when ``shortcut`` is None: fastconv.Residual."""
        fastconv_container = "residual"  # what its forward computes, for fc.from_torch

        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class Concat(torch.nn.Module):
        """The branches' outputs concatenated along ``dim``; branches named "0", "1", ...: fastconv.Concat."""
        fastconv_container = "concat"

        def __init__(self, *branches, dim=1):
            super().__init__()
            for i, branch in enumerate(branches):
                self.add_module(str(i), branch)
            self.dim = dim

        def forward(self, x):
            return torch.cat([m(x) for m in self.children()], dim=self.dim)

        def extra_repr(self):
            return f"dim={self.dim}"

    return Residual, Concat


def resnet(depth: int, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, lib=None):
    """The CIFAR ResNet of He et al. 2016 (section 4.2) of ``depth`` = 6n + 2 layers:
    a 3x3 conv to 16 channels, three stages of n basic blocks (two 3x3 convs)
    with 16, 32 and 64 channels, stride 2 at the first block of stages 2 and 3
    with a 1x1 projection shortcut (option B), batch norm after every conv, a
    global average pool and a Linear to ``num_classes``.

    A flat Sequential: Conv2d, BatchNorm2d, ReLU, then each block as
    ``Residual(body, shortcut)`` followed by a ReLU (which fuses with the add),
    then AdaptiveAvgPool2d(1), Flatten, Linear; state_dict keys read
    "3.body.0.weight". Convs have no bias (a batch norm follows each) and He
    normal weights with fan_out (torch's ``kaiming_normal_(mode="fan_out")``);
    batch norms start at weight 1, bias 0. ``dropout`` > 0 puts a Dropout
    before the Linear. ``lib=torch.nn`` builds the same network in PyTorch.

    >>> fc.models.resnet(20).state_dict()["3.body.0.weight"].shape
    (16, 16, 3, 3)
    """
    if lib is None:
        import fastconv as lib
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: `depth` must be 6n + 2 for an int n >= 1 (20, 32, 44, 56, 110); got {depth!r}")
    residual = containers(lib)[0]

    def conv_bn(cin, cout, k, stride):
        return [lib.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), lib.BatchNorm2d(cout)]

    layers, width = conv_bn(in_channels, 16, 3, 1) + [lib.ReLU()], 16
    for stage, out in enumerate((16, 32, 64)):
        for block in range((depth - 2) // 6):
            stride = 2 if stage and not block else 1
            body = lib.Sequential(*conv_bn(width, out, 3, stride), lib.ReLU(), *conv_bn(out, out, 3, 1))
            shortcut = lib.Sequential(*conv_bn(width, out, 1, stride)) if stride != 1 or width != out else None
            layers += [residual(body, shortcut), lib.ReLU()]
            width = out
    layers += [lib.AdaptiveAvgPool2d(1), lib.Flatten()] + ([lib.Dropout(dropout)] if dropout else [])
    model = lib.Sequential(*layers, lib.Linear(64, num_classes))
    for m in model.modules():
        if isinstance(m, lib.Conv2d):
            if hasattr(lib.init, "he_normal_"):
                lib.init.he_normal_(m.weight, mode="fan_out")
            else:  # torch.nn
                lib.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def resnet20(num_classes: int = 10, lib=None):
    """ResNet-20 for CIFAR (3 blocks per stage, 0.27 M parameters): :func:`resnet` (20)."""
    return resnet(20, num_classes, lib=lib)


def resnet32(num_classes: int = 10, lib=None):
    """ResNet-32 for CIFAR (5 blocks per stage): :func:`resnet` (32)."""
    return resnet(32, num_classes, lib=lib)


def resnet56(num_classes: int = 10, lib=None):
    """ResNet-56 for CIFAR (9 blocks per stage): :func:`resnet` (56)."""
    return resnet(56, num_classes, lib=lib)


def vgg11(num_classes: int = 10, lib=None):
    """The built-in ``vgg11`` spec (VGG-11 with batch norm, for 32x32 RGB inputs)."""
    return build_model("vgg11", (3, 32, 32), num_classes, lib=lib)


def load_model(path) -> tuple:
    """Rebuild the model of a checkpoint written by ``fastconv train`` and load its weights.

    Returns (model, metadata); metadata["user"] holds what the command stored:
    "arch", "input_shape", "classes", "normalization", "data", "config".
    """
    info = ckpt.read_metadata(path)
    user = info["meta"].get("user") or {}
    _check_user_meta(path, user)
    if "arch" not in user or "input_shape" not in user:
        raise ckpt.CheckpointError(f"checkpoint {os.fspath(path)} does not say how to rebuild its model (no arch); "
                                   "build the model in Python and use fastconv.train.checkpoint.load_checkpoint")
    model = build_model(user["arch"], user["input_shape"], len(user["classes"]), user.get("dropout", 0.0))
    ckpt.load_checkpoint(path, model)
    return model.eval(), info["meta"]


def _check_user_meta(path, user) -> None:
    """The fields ``fastconv train`` stores under meta.user, as far as they are present."""
    def need(key, ok, expected):
        ckpt.require(os.fspath(path), f"checkpoint.json `meta.user{'.' + key if key else ''}`",
                     user.get(key) if key else user, ok, expected)

    need("", isinstance(user, dict), "an object")
    checks = {
        "arch": (lambda v: isinstance(v, str) and v.strip() != "", "an architecture spec string"),
        "input_shape": (lambda v: isinstance(v, list) and 1 <= len(v) <= 3 and all(is_int(d, 1, 2**31) for d in v),
                        "a list of 1 to 3 ints >= 1"),
        "classes": (lambda v: isinstance(v, list) and 1 <= len(v) <= 2**20 and all(isinstance(c, str) for c in v),
                    "a list of class names (strings)"),
        "dropout": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "normalization": (lambda v: isinstance(v, dict) and all(
            isinstance(v.get(k), list) and all(is_number(x) for x in v[k]) for k in ("mean", "std"))
            and len(v["mean"]) == len(v["std"]) and all(x > 0 for x in v["std"]),
            "{mean, std}: lists of finite numbers of one length, std > 0"),
        "data": (lambda v: isinstance(v, str), "a data set name or path"),
        "data_dir": (lambda v: v is None or isinstance(v, str), "null or a folder path"),
        "val_fraction": (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    }
    for key, (ok, expected) in checks.items():
        if key in user:
            need(key, ok(user[key]), expected)
