"""The PyTorch peer's view of the benchmarks' arrays, shared by bench_*.py."""

import pytest

try:
    import torch
except ImportError:  # PyTorch peers are skipped without it
    torch = None


def to_torch(a, impl):
    """``a`` as a tensor for peer ``impl``: channels_last for "torch_cl" (4-D
    arrays), NCHW otherwise. Skips the benchmark when PyTorch is missing."""
    if torch is None:
        pytest.skip("PyTorch is not installed")
    t = torch.from_numpy(a)
    return t.contiguous(memory_format=torch.channels_last) if impl == "torch_cl" and t.dim() == 4 else t
