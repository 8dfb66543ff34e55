"""Whole-network workloads of ../shared/workloads.md: one SGD training step of
`lenet` (batch 64) and `cifar_small` (batch 128), and `cifar_small`
inference at batch 1 and 256; fastconv against PyTorch on the CPU in
channels_last (its fastest configuration) and NCHW, same weights and batches.
"""

import pytest

import fastconv as fc
from fastconv.tools.bench import (
    NETS,
    batch,
    cifar_small,
    fastconv_step,
    torch_model,
    torch_step,
)

try:
    import torch
except ImportError:
    torch = None

IMPLS = ["fastconv", "torch_cl", "torch_nchw"]
CIFAR_GFLOP = NETS["cifar_small"][2]


def _torch_model(build, impl, x):
    if torch is None:
        pytest.skip("PyTorch is not installed")
    return torch_model(build, impl, x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("net", list(NETS))
def test_train_step(benchmark, record, net, impl):
    build, shape, gflop = NETS[net]
    x, y = batch(shape)
    if impl != "fastconv" and torch is None:
        pytest.skip("PyTorch is not installed")
    step = fastconv_step(build, x, y) if impl == "fastconv" else torch_step(build, impl, x, y)
    step()  # warm-up: workspaces, oneDNN primitives
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    record(impl, flop=gflop * 1e9, workload=f"{net} train step b{shape[0]}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [1, 256])
def test_cifar_small_inference(benchmark, record, n, impl):
    x, _ = batch((n, 3, 32, 32))
    if impl == "fastconv":
        model = cifar_small(fc).eval()
        run = lambda: model(x)
    else:
        model, tx = _torch_model(cifar_small, impl, x)
        model.eval()

        def run():
            with torch.no_grad():
                return model(tx)
    run()
    benchmark.pedantic(run, rounds=30 if n == 1 else 10, warmup_rounds=2)
    record(impl, flop=CIFAR_GFLOP / 3 * 1e9 * n / 128, workload=f"cifar_small inference b{n}")
