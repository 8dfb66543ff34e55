# cython: language_level=3
"""Native kernels: validate at the Python boundary, release the GIL, call csrc/.

Every kernel here has a twin of the same name and signature in
``fastconv.reference``; ``tests/`` compares the two. The wrappers live in
``fastconv/_native/``, one include per family, compiled as this one module:
runtime state (threads, ISA, the convolution algorithm mode, build
information), the shared argument checks, then the kernels by family; the
list of kernels is ``fastconv/_native/registry.py``.
"""

import math
import os
import warnings

import numpy as np

from fastconv import _guard

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uintptr_t

from fastconv._native.registry import KERNELS

cnp.import_array()

include "_native/runtime.pxi"
include "_native/checks.pxi"
include "_native/gemm.pxi"
include "_native/conv.pxi"
include "_native/locally_connected.pxi"
include "_native/pool.pxi"
include "_native/eltwise.pxi"
include "_native/adaptive_pool.pxi"
include "_native/norm.pxi"
include "_native/peak.pxi"
