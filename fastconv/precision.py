"""Mixed precision: ``with fc.autocast("bfloat16"):`` runs convolutions and
linear layers in bf16, as PyTorch's CPU autocast does.

Under the policy exactly these kernels run in bf16 (``AUTOCAST_KERNELS``):
Conv2d's forward (also fused with ReLU and with a 2x2 max-pool), its dx and
dW, and the ``sgemm`` calls of Linear's forward, dx and dW (and of Maxout, a
linear layer with pieces). Their inputs and weights are rounded to bf16 as
the kernels pack them, the products summed in float32 (the ``vdpbf16ps``
dot product on CPUs with AVX512_BF16). Everything else stays float32:
parameters and their gradients, optimizer state, biases, activations,
pooling, batch norm and its statistics, losses, and every array a layer
takes or returns.

On a CPU (or a forced ISA, ``FASTCONV_ISA``) without bf16 dot products the
same kernels run a C emulation of the instruction, with the same bits and
many times slower; entering the policy there warns once. The state is per
thread (and per asyncio task): autocast in one thread leaves the others in
float32.

>>> import fastconv as fc
>>> with fc.autocast("bfloat16"):
...     fc.get_autocast_dtype()
'bfloat16'
>>> fc.get_autocast_dtype()
'float32'
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import warnings

from fastconv import _kernels

DTYPES = ("bfloat16", "float32")
_ALIASES = {"bf16": "bfloat16", "fp32": "float32"}

# The kernels (fastconv/_native/registry.py names) that take the policy's precision.
AUTOCAST_KERNELS = ("sgemm", "conv2d_forward", "conv2d_maxpool_forward", "conv2d_backward")

_dtype = contextvars.ContextVar("fastconv_autocast_dtype", default="float32")
_warned = False
_warn_lock = threading.Lock()


def _dtype_of(fn: str, dtype) -> str:
    name = _ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"{fn}: `dtype` must be one of {DTYPES} (or {tuple(_ALIASES)}); got {dtype!r}")
    return name


def get_autocast_dtype() -> str:
    """The precision of this thread's autocast kernels: 'bfloat16' inside
    ``autocast("bfloat16")``, else 'float32'."""
    return _dtype.get()


def kernel_precision(name: str) -> str | None:
    """The `precision` the backend passes to kernel `name`: the policy's, for
    the kernels it covers while bf16 is on; None otherwise."""
    dtype = _dtype.get()
    return dtype if dtype != "float32" and name in AUTOCAST_KERNELS else None


def _warn_if_emulated() -> None:
    global _warned
    with _warn_lock:
        if _warned or _kernels.bf16_kernel() != "emulated":
            return
        _warned = True
    warnings.warn(
        f"fc.autocast('bfloat16'): the ISA in use ({_kernels.get_isa()!r}) has no bf16 dot products "
        "(AVX512_BF16), so the bf16 GEMMs run emulated in C: the same results as on a CPU that has "
        "them, but many times slower than float32", RuntimeWarning, stacklevel=3)


class autocast(contextlib.ContextDecorator):
    """Run the autocast kernels in `dtype` inside the block (or the decorated function).

    ``dtype``: ``"bfloat16"`` (or ``"bf16"``) or ``"float32"`` (``"fp32"``);
    ``enabled=False`` means float32 whatever `dtype` says. Blocks nest (an
    inner ``autocast("float32")`` turns bf16 off inside it), and leaving one,
    by an exception too, restores the precision that was in force before.

    >>> import numpy as np, fastconv as fc
    >>> layer = fc.Linear(4, 2)
    >>> with fc.autocast("bfloat16"):
    ...     y = layer(np.ones((3, 4), np.float32))
    >>> y.dtype
    dtype('float32')
    """

    def __init__(self, dtype: str = "bfloat16", enabled: bool = True):
        if not isinstance(enabled, bool):
            raise TypeError(f"autocast: `enabled` must be a bool; got {enabled!r}")
        self.dtype = _dtype_of("autocast", dtype)
        self.enabled = enabled
        # Per thread, a stack: one instance (a decorator) may be entered in several threads
        # at once, and again inside itself.
        self._local = threading.local()

    def _tokens(self) -> list:
        return self._local.__dict__.setdefault("tokens", [])

    def __enter__(self):
        dtype = self.dtype if self.enabled else "float32"
        if dtype == "bfloat16":
            _warn_if_emulated()
        self._tokens().append(_dtype.set(dtype))
        return self

    def __exit__(self, *exc):
        _dtype.reset(self._tokens().pop())
        return False

    def __repr__(self):
        return f"autocast({self.dtype!r}, enabled={self.enabled})"
