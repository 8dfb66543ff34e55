"""Whole-network workloads of ../shared/workloads.md: one SGD training step of
`lenet` (batch 64), `cifar_small` and `resnet20` (batch 128), and `cifar_small`
inference at batch 1 and 256; fastconv against PyTorch on the CPU in
channels_last (its fastest configuration) and NCHW, same weights and batches.

The "-bf16" cases (workloads "... bf16") run the cifar_small and resnet20
steps and cifar_small inference at batch 256 in bf16 mixed precision:
fastconv under ``fc.autocast("bfloat16")``, PyTorch under
``torch.autocast("cpu", dtype=torch.bfloat16)``; ``-k bf16`` selects them.
"""

import pytest

from fastconv.tools.bench import (
    BF16_INFERENCE,
    BF16_NETS,
    NETS,
    PRECISIONS,
    batch,
    cifar_small,
    fastconv_inference,
    fastconv_step,
    torch_inference,
    torch_step,
)

try:
    import torch
except ImportError:
    torch = None

IMPLS = ["fastconv", "torch_cl", "torch_nchw"]
CIFAR_GFLOP = NETS["cifar_small"][2]


def _cases(names, bf16_names):
    """(name, precision) parameters: float32 for `names` (ids as before), bf16 for `bf16_names`."""
    return [pytest.param(n, "float32", id=str(n)) for n in names] + \
        [pytest.param(n, "bfloat16", id=f"{n}-bf16") for n in bf16_names]


def _skip_without_torch(impl):
    if impl != "fastconv" and torch is None:
        pytest.skip("PyTorch is not installed")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("net,precision", _cases(NETS, BF16_NETS))
def test_train_step(benchmark, record, net, precision, impl):
    _skip_without_torch(impl)
    build, shape, gflop = NETS[net]
    x, y = batch(shape)
    step = fastconv_step(build, x, y, precision) if impl == "fastconv" else torch_step(build, impl, x, y, precision)
    step()  # warm-up: workspaces, oneDNN primitives
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    record(impl, flop=gflop * 1e9, workload=f"{net} train step b{shape[0]}{PRECISIONS[precision]}",
           precision=precision)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n,precision", _cases([1, 256], BF16_INFERENCE))
def test_cifar_small_inference(benchmark, record, n, precision, impl):
    _skip_without_torch(impl)
    x, _ = batch((n, 3, 32, 32))
    run = fastconv_inference(cifar_small, x, precision) if impl == "fastconv" else \
        torch_inference(cifar_small, impl, x, precision)
    run()
    benchmark.pedantic(run, rounds=30 if n == 1 else 10, warmup_rounds=2)
    record(impl, flop=CIFAR_GFLOP / 3 * 1e9 * n / 128,
           workload=f"cifar_small inference b{n}{PRECISIONS[precision]}", precision=precision)
